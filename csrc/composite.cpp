// The ops whose CUDA implementation is written with other ops instead of a kernel of its own:
//   * the four radial-sensitivity ops (include/ekd/radial.hpp) as hippynn's formula in ATen ops.
//     Elementwise and memory bound: the ~25 passes over [P, N] that the fused CPU kernel
//     (cpu/radial.cpp) saves cost little at a GPU's bandwidth (~0.5 GB of traffic for the paper's
//     3,136-atom box in float32, well under a millisecond on an H100), so a CUDA kernel would buy
//     little and be one more thing to keep equal to the CPU's numbers.
//   * tensor_envsum_backward as its two tensor_sensesums (the CUDA kernels of cuda/sensitivity.cu):
//     the fused CPU pass exists to read each neighbour block once from the CPU's caches.
// The same ATen formulas give the differentiable gradients the autograd functions use on every
// device (autograd.cpp: force training's double backward, and third order).
//
// Registered for the CUDA key from plain C++ (no nvcc needed), so a CUDA torch finds them even in
// a library built without the CUDA kernels; tensor_envsum_backward then fails in tensor_sensesum,
// as every pair-sum op does there (ekd.ops.library says which build it is).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ekd/radial.hpp"
#include "ekd/sensitivity.hpp"

namespace ekd {
namespace {

constexpr const char* kOp = "ekd::radial_sensitivity";
constexpr const char* kDrOp = "ekd::radial_sensitivity_dr";
constexpr const char* kDrBackOp = "ekd::radial_sensitivity_dr_backward";

// The terms of hippynn's expression that s, ds/dr and their gradients share, term by term in the
// order the CPU kernels and hippynn's expression compute them (so float64 results agree with the
// fused kernels to rounding of exp/cos):
//   d = 1/r - 1/mu, arg = -0.5 d^2 / sigma^-2, e = exp(max(arg, lowest)), x = pi/2 r / hard.
struct RadialTerms {
    double lowest, k;
    at::Tensor mu_row, sigma_row;  // [1, N]
    at::Tensor inv_r;              // [P]
    at::Tensor d, sm2, arg, e;     // [P, N] ([1, N] for sm2)
    at::Tensor x, inside, cs;      // [P]

    RadialTerms(const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma, double hard_max)
        : lowest(radial_lowest(dist.scalar_type())), k(kHalfPi / hard_max) {
        mu_row = mu.reshape({1, -1}), sigma_row = sigma.reshape({1, -1});
        inv_r = dist.reciprocal();
        d = inv_r.unsqueeze(1) - mu_row.reciprocal();
        sm2 = sigma_row.pow(-2);
        arg = d.square().div(sm2).mul(-0.5);
        e = arg.clamp_min(lowest).exp();
        x = dist.mul(kHalfPi).div(hard_max);
        inside = dist.le(hard_max).to(dist.scalar_type());
        cs = x.cos();
    }
    // 1 where exp's argument was not clamped (its derivative passes), else 0
    at::Tensor pass() const { return arg.ge(lowest).to(arg.scalar_type()); }
    // the cutoff factor C = cos(x)^2 (r <= hard) and dC/dr, [P]
    at::Tensor cut() const { return cs.square().mul(inside); }
    at::Tensor dcut() const { return cs.mul(x.sin()).mul(-2.0 * k).mul(inside); }
    // ds/dr = e (u C + C'), u = d arg/dr = pass d sigma^2 / r^2; [P, N]
    at::Tensor u() const { return pass().mul(d).mul(sigma_row.square()).mul(inv_r.square().unsqueeze(1)); }
    at::Tensor ds_dr() const { return e.mul(u().mul(cut().unsqueeze(1)) + dcut().unsqueeze(1)); }
};

// ---- the CUDA implementations (ATen ops run on the tensors' device)

at::Tensor radial_sensitivity_aten(const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma,
                                   double hard_max) {
    check_radial_args(kOp, dist, mu, sigma, hard_max);
    const RadialTerms t(dist, mu, sigma, hard_max);
    return t.e.mul(t.cut().unsqueeze(1)).contiguous();
}

at::Tensor radial_sensitivity_dr_aten(const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma,
                                      double hard_max) {
    check_radial_args(kDrOp, dist, mu, sigma, hard_max);
    return RadialTerms(dist, mu, sigma, hard_max).ds_dr().contiguous();
}

using Sig6 = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, const at::Tensor&);
using Sig5 = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);

// (grad_a, grad_b) = (tensor_sensesum(b, x, grad, second, first), tensor_sensesum(a, grad, x, first, second)):
// dPhi/da and dPhi/db of autograd.cpp's multilinear Phi with grad in G's place.
std::tuple<at::Tensor, at::Tensor> tensor_envsum_backward_composite(const at::Tensor& grad, const at::Tensor& a,
                                                                    const at::Tensor& b, const at::Tensor& x,
                                                                    const at::Tensor& first,
                                                                    const at::Tensor& second) {
    tensor_envsum_backward_shapes(grad, a, b, x, first, second);  // the CPU op's checks and messages
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("ekd::tensor_sensesum", "").typed<Sig5>();
    // a kernel's callees must not record a graph (the dispatcher has excluded autograd here already
    // when it came through the Autograd fallback; a direct redispatch may not have)
    at::AutoDispatchBelowADInplaceOrView guard;
    return {op.call(b, x, grad, second, first), op.call(a, grad, x, first, second)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_grads_differentiable(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma, double hard_max,
    std::array<bool, 3> mask) {
    check_backward_args(grad, dist, mu, sigma, hard_max);
    const RadialTerms t(dist, mu, sigma, hard_max);
    const at::Tensor cut = t.cut();
    const at::Tensor ge = grad.mul(t.e);
    // clamp's derivative is 1 where arg >= lowest (torch's clamp backward), 0 elsewhere
    const at::Tensor ga = at::where(t.arg.ge(t.lowest), ge.mul(cut.unsqueeze(1)), 0.0);  // d/d arg
    at::Tensor grad_r, grad_mu, grad_sigma;
    if (mask[0]) grad_r = ga.mul(t.d).div(t.sm2).sum(1).mul(t.inv_r.square()) + ge.sum(1).mul(t.dcut());
    if (mask[1]) grad_mu = ga.mul(t.d).sum(0, true).mul(t.mu_row.pow(-2)).div(t.sm2).neg().reshape(mu.sizes());
    if (mask[2]) grad_sigma = ga.mul(t.d.square()).sum(0, true).mul(t.sigma_row).neg().reshape(sigma.sizes());
    return {grad_r, grad_mu, grad_sigma};
}

// Second order, as the dr kernels of cpu/radial.cpp (whose comment derives the formulas): with
// D = ds/dr = E (u C + C'),  dD/dq = dA/dq (u C + C') E + E (du/dq C + [q = r] (u C' + C'')).
std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_dr_grads_differentiable(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma, double hard_max,
    std::array<bool, 3> mask) {
    check_backward_args(grad, dist, mu, sigma, hard_max, kDrBackOp);
    const RadialTerms t(dist, mu, sigma, hard_max);
    const at::Tensor pass = t.pass();
    const at::Tensor inv_r = t.inv_r.unsqueeze(1), inv_r2 = inv_r.square();
    const at::Tensor im2 = t.mu_row.reciprocal().square();
    const at::Tensor s2 = t.sigma_row.square();
    const at::Tensor c = t.cut().unsqueeze(1), c1 = t.dcut().unsqueeze(1);
    const at::Tensor u = t.u();
    const at::Tensor common = t.e.mul(u.mul(c) + c1);  // ds/dr
    at::Tensor grad_r, grad_mu, grad_sigma;
    if (mask[0]) {
        const at::Tensor sn = t.x.sin();
        const at::Tensor c2 = (t.cs.square() - sn.square()).mul(-2.0 * t.k * t.k).mul(t.inside).unsqueeze(1);
        const at::Tensor du_dr = pass.mul(s2).mul(inv_r2.square().neg() - t.d.mul(inv_r2).mul(inv_r).mul(2.0));
        grad_r = grad.mul(u.mul(common) + t.e.mul(du_dr.mul(c) + u.mul(c1) + c2)).sum(1);
    }
    if (mask[1]) {
        const at::Tensor q = pass.mul(s2).mul(im2);
        grad_mu = grad.mul(t.e.mul(q).mul(inv_r2).mul(c) - q.mul(t.d).mul(common)).sum(0, true).reshape(mu.sizes());
    }
    if (mask[2]) {
        const at::Tensor q = pass.mul(t.sigma_row).mul(t.d);
        grad_sigma = grad.mul(t.e.mul(q).mul(inv_r2).mul(c).mul(2.0) - q.mul(t.d).mul(common))
                         .sum(0, true)
                         .reshape(sigma.sizes());
    }
    return {grad_r, grad_mu, grad_sigma};
}

}  // namespace ekd

// The backward ops on CUDA are the differentiable formulas run without a graph: the autograd
// functions call them under no_grad (autograd.cpp), exactly where the CPU takes its fused kernels.
TORCH_LIBRARY_IMPL(ekd, CUDA, m) {
    m.impl("radial_sensitivity", &ekd::radial_sensitivity_aten);
    m.impl("radial_sensitivity_backward", &ekd::radial_sensitivity_grads_differentiable);
    m.impl("radial_sensitivity_dr", &ekd::radial_sensitivity_dr_aten);
    m.impl("radial_sensitivity_dr_backward", &ekd::radial_sensitivity_dr_grads_differentiable);
    m.impl("tensor_envsum_backward", &ekd::tensor_envsum_backward_composite);
}
