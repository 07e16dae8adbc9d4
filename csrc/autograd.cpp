// Autograd of the HIPNN interaction ops, in C++ so that it works from TorchScript and from the
// LAMMPS plugin without Python.
//
// Each family of ops is the set of partial derivatives of one multilinear scalar:
//   hippynn's ops:  Theta(s, z, E) = sum_p sum_{n,f} s[p,n] z[j_p,f] E[i_p,n,f]
//                   envsum = dTheta/dE,  sensesum = dTheta/ds,  featsum = dTheta/dz
//   tensor ops:     Phi(a, b, x, G) = sum_p sum_{c,n,o} a[p,c] b[p,n] x[j_p,n,o] G[i_p,c,o]
//                   tensor_envsum(a, b, x, i, j) = dPhi/dG,   dPhi/dx = tensor_envsum(b, a, G, j, i)
//                   tensor_sensesum(a, G, x, i, j) = dPhi/db, dPhi/da = tensor_sensesum(b, x, G, j, i)
// so the backward of every op is made of its siblings, called through the dispatcher *with*
// autograd: the backward graph is itself differentiable and double backward (force training:
// the loss contains forces, i.e. first derivatives) works to any order.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ekd/radial.hpp"

namespace ekd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using at::Tensor;

using Op4 = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&);
using Op5 = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&);

template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Dispatching entry points (go through Autograd again when called in a backward with create_graph).
Tensor envsum(const Tensor& s, const Tensor& z, const Tensor& f, const Tensor& c) {
    static auto op = handle<Op4>("ekd::envsum");
    return op.call(s, z, f, c);
}
Tensor sensesum(const Tensor& e, const Tensor& z, const Tensor& f, const Tensor& c) {
    static auto op = handle<Op4>("ekd::sensesum");
    return op.call(e, z, f, c);
}
Tensor featsum(const Tensor& e, const Tensor& s, const Tensor& f, const Tensor& c) {
    static auto op = handle<Op4>("ekd::featsum");
    return op.call(e, s, f, c);
}
Tensor tensor_envsum(const Tensor& a, const Tensor& b, const Tensor& x, const Tensor& f, const Tensor& c) {
    static auto op = handle<Op5>("ekd::tensor_envsum");
    return op.call(a, b, x, f, c);
}
Tensor tensor_sensesum(const Tensor& a, const Tensor& y, const Tensor& x, const Tensor& f, const Tensor& c) {
    static auto op = handle<Op5>("ekd::tensor_sensesum");
    return op.call(a, y, x, f, c);
}

// Gradient slots for the two integer pair-index arguments.
inline void no_index_grads(tensor_list& grads) {
    grads.emplace_back();
    grads.emplace_back();
}

struct EnvsumFn : torch::autograd::Function<EnvsumFn> {
    static Tensor forward(AutogradContext* ctx, const Tensor& s, const Tensor& z, const Tensor& f, const Tensor& c) {
        ctx->save_for_backward({s, z, f, c});
        at::AutoDispatchBelowADInplaceOrView guard;
        return envsum(s, z, f, c);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list g) {
        auto v = ctx->get_saved_variables();
        tensor_list out;
        out.push_back(ctx->needs_input_grad(0) ? sensesum(g[0], v[1], v[2], v[3]) : Tensor());
        out.push_back(ctx->needs_input_grad(1) ? featsum(g[0], v[0], v[2], v[3]) : Tensor());
        no_index_grads(out);
        return out;
    }
};

struct SensesumFn : torch::autograd::Function<SensesumFn> {
    static Tensor forward(AutogradContext* ctx, const Tensor& e, const Tensor& z, const Tensor& f, const Tensor& c) {
        ctx->save_for_backward({e, z, f, c});
        at::AutoDispatchBelowADInplaceOrView guard;
        return sensesum(e, z, f, c);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list g) {
        auto v = ctx->get_saved_variables();
        tensor_list out;
        out.push_back(ctx->needs_input_grad(0) ? envsum(g[0], v[1], v[2], v[3]) : Tensor());
        out.push_back(ctx->needs_input_grad(1) ? featsum(v[0], g[0], v[2], v[3]) : Tensor());
        no_index_grads(out);
        return out;
    }
};

struct FeatsumFn : torch::autograd::Function<FeatsumFn> {
    static Tensor forward(AutogradContext* ctx, const Tensor& e, const Tensor& s, const Tensor& f, const Tensor& c) {
        ctx->save_for_backward({e, s, f, c});
        at::AutoDispatchBelowADInplaceOrView guard;
        return featsum(e, s, f, c);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list g) {
        auto v = ctx->get_saved_variables();
        tensor_list out;
        out.push_back(ctx->needs_input_grad(0) ? envsum(v[1], g[0], v[2], v[3]) : Tensor());
        out.push_back(ctx->needs_input_grad(1) ? sensesum(v[0], g[0], v[2], v[3]) : Tensor());
        no_index_grads(out);
        return out;
    }
};

// out = dPhi(a, b, x, G)/dG; the grad H plays the role of G.
struct TensorEnvsumFn : torch::autograd::Function<TensorEnvsumFn> {
    static Tensor forward(AutogradContext* ctx, const Tensor& a, const Tensor& b, const Tensor& x, const Tensor& f,
                          const Tensor& c) {
        ctx->save_for_backward({a, b, x, f, c});
        at::AutoDispatchBelowADInplaceOrView guard;
        return tensor_envsum(a, b, x, f, c);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list g) {
        auto v = ctx->get_saved_variables();
        const Tensor &a = v[0], &b = v[1], &x = v[2], &f = v[3], &c = v[4], &h = g[0];
        tensor_list out;
        if (!at::GradMode::is_enabled() && ctx->needs_input_grad(0) && ctx->needs_input_grad(1) && a.device().is_cpu()) {
            // no graph of these gradients wanted (forces for MD, not force training): both pair
            // gradients in one pass that reads each neighbour block once (same numbers)
            static auto op = handle<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                               const Tensor&, const Tensor&)>("ekd::tensor_envsum_backward");
            auto ab = op.call(h, a, b, x, f, c);
            out.push_back(std::get<0>(ab));
            out.push_back(std::get<1>(ab));
        } else {
            out.push_back(ctx->needs_input_grad(0) ? tensor_sensesum(b, x, h, c, f) : Tensor());
            out.push_back(ctx->needs_input_grad(1) ? tensor_sensesum(a, h, x, f, c) : Tensor());
        }
        out.push_back(ctx->needs_input_grad(2) ? tensor_envsum(b, a, h, c, f) : Tensor());
        no_index_grads(out);
        return out;
    }
};

// out = dPhi(a, B, x, y)/dB; the grad H plays the role of B.
struct TensorSensesumFn : torch::autograd::Function<TensorSensesumFn> {
    static Tensor forward(AutogradContext* ctx, const Tensor& a, const Tensor& y, const Tensor& x, const Tensor& f,
                          const Tensor& c) {
        ctx->save_for_backward({a, y, x, f, c});
        at::AutoDispatchBelowADInplaceOrView guard;
        return tensor_sensesum(a, y, x, f, c);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list g) {
        auto v = ctx->get_saved_variables();
        const Tensor &a = v[0], &y = v[1], &x = v[2], &f = v[3], &c = v[4], &h = g[0];
        tensor_list out;
        out.push_back(ctx->needs_input_grad(0) ? tensor_sensesum(h, x, y, c, f) : Tensor());
        out.push_back(ctx->needs_input_grad(1) ? tensor_envsum(a, h, x, f, c) : Tensor());
        out.push_back(ctx->needs_input_grad(2) ? tensor_envsum(h, a, y, c, f) : Tensor());
        no_index_grads(out);
        return out;
    }
};

// hippynn's radial sensitivity (include/ekd/radial.hpp). Not multilinear, so its backward is
// its own: a fused kernel when the gradient is not differentiated again, else the analytic
// derivative written with ATen ops (differentiable: force training's double backward).
struct RadialSensitivityFn : torch::autograd::Function<RadialSensitivityFn> {
    static Tensor forward(AutogradContext* ctx, const Tensor& dist, const Tensor& mu, const Tensor& sigma,
                          double hard_max) {
        ctx->save_for_backward({dist, mu, sigma});
        ctx->saved_data["hard_max"] = hard_max;
        at::AutoDispatchBelowADInplaceOrView guard;
        static auto op = handle<Tensor(const Tensor&, const Tensor&, const Tensor&, double)>("ekd::radial_sensitivity");
        return op.call(dist, mu, sigma, hard_max);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list g) {
        auto v = ctx->get_saved_variables();
        const double hard_max = ctx->saved_data["hard_max"].toDouble();
        const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
        std::tuple<Tensor, Tensor, Tensor> grads;
        if (at::GradMode::is_enabled() && !mask[1] && !mask[2]) {
            // forces (create_graph): sum_n grad * ds/dr with ds/dr an op of its own, whose fused
            // backward gives the second derivatives force training needs
            static auto dr = handle<Tensor(const Tensor&, const Tensor&, const Tensor&, double)>(
                "ekd::radial_sensitivity_dr");
            std::get<0>(grads) = g[0].mul(dr.call(v[0], v[1], v[2], hard_max)).sum(1);
        } else if (at::GradMode::is_enabled()) {
            grads = radial_sensitivity_grads_differentiable(g[0], v[0], v[1], v[2], hard_max, mask);
        } else {
            using Sig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                           double, std::array<bool, 3>);
            static auto op = handle<Sig>("ekd::radial_sensitivity_backward");
            grads = op.call(g[0], v[0], v[1], v[2], hard_max, mask);
        }
        return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads), Tensor()};
    }
};

// ds/dr of the radial sensitivity: its backward (second derivatives of s) is a fused kernel, or
// ATen ops when it is itself differentiated (third order).
struct RadialSensitivityDrFn : torch::autograd::Function<RadialSensitivityDrFn> {
    static Tensor forward(AutogradContext* ctx, const Tensor& dist, const Tensor& mu, const Tensor& sigma,
                          double hard_max) {
        ctx->save_for_backward({dist, mu, sigma});
        ctx->saved_data["hard_max"] = hard_max;
        at::AutoDispatchBelowADInplaceOrView guard;
        static auto op =
            handle<Tensor(const Tensor&, const Tensor&, const Tensor&, double)>("ekd::radial_sensitivity_dr");
        return op.call(dist, mu, sigma, hard_max);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list g) {
        auto v = ctx->get_saved_variables();
        const double hard_max = ctx->saved_data["hard_max"].toDouble();
        const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
        if (at::GradMode::is_enabled()) {  // third order and beyond: ATen ops
            auto grads = radial_sensitivity_dr_grads_differentiable(g[0], v[0], v[1], v[2], hard_max, mask);
            return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads), Tensor()};
        }
        using Sig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                       double, std::array<bool, 3>);
        static auto op = handle<Sig>("ekd::radial_sensitivity_dr_backward");
        auto grads = op.call(g[0], v[0], v[1], v[2], hard_max, mask);
        return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads), Tensor()};
    }
};

Tensor radial_sensitivity_dr_ad(const Tensor& dist, const Tensor& mu, const Tensor& sigma, double hard_max) {
    return RadialSensitivityDrFn::apply(dist, mu, sigma, hard_max);
}

Tensor radial_sensitivity_ad(const Tensor& dist, const Tensor& mu, const Tensor& sigma, double hard_max) {
    return RadialSensitivityFn::apply(dist, mu, sigma, hard_max);
}

Tensor envsum_ad(const Tensor& s, const Tensor& z, const Tensor& f, const Tensor& c) {
    return EnvsumFn::apply(s, z, f, c);
}
Tensor sensesum_ad(const Tensor& e, const Tensor& z, const Tensor& f, const Tensor& c) {
    return SensesumFn::apply(e, z, f, c);
}
Tensor featsum_ad(const Tensor& e, const Tensor& s, const Tensor& f, const Tensor& c) {
    return FeatsumFn::apply(e, s, f, c);
}
Tensor tensor_envsum_ad(const Tensor& a, const Tensor& b, const Tensor& x, const Tensor& f, const Tensor& c) {
    return TensorEnvsumFn::apply(a, b, x, f, c);
}
Tensor tensor_sensesum_ad(const Tensor& a, const Tensor& y, const Tensor& x, const Tensor& f, const Tensor& c) {
    return TensorSensesumFn::apply(a, y, x, f, c);
}

}  // namespace
}  // namespace ekd

TORCH_LIBRARY_IMPL(ekd, Autograd, m) {
    m.impl("envsum", &ekd::envsum_ad);
    m.impl("sensesum", &ekd::sensesum_ad);
    m.impl("featsum", &ekd::featsum_ad);
    m.impl("tensor_envsum", &ekd::tensor_envsum_ad);
    m.impl("tensor_sensesum", &ekd::tensor_sensesum_ad);
    m.impl("radial_sensitivity", &ekd::radial_sensitivity_ad);
    m.impl("radial_sensitivity_dr", &ekd::radial_sensitivity_dr_ad);
}
