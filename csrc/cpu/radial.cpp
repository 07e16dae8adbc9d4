// CPU (and Meta) kernels of ekd::radial_sensitivity and its fused backward (formula in
// include/ekd/radial.hpp, schema in register.cpp, autograd in autograd.cpp).
//
// Why a kernel for an elementwise formula: written with ATen ops, hippynn's sensitivity and its
// backward are ~25 passes over [P, N] tensors (20 MB each for a 3,136-atom box in float32), each
// memory bound; here the forward writes the output once and the backward reads the incoming
// gradient once. The cutoff factor is computed once per pair instead of once per entry, and exp
// runs only on unclamped entries (with the paper's widths most entries of a box are clamped).
//
// Numerics follow hippynn's expression operation by operation (1/r - 1/mu, squared, divided by
// sigma^-2 = 1/(sigma*sigma), times -0.5; cos(pi/2 * r / hard)^2), so float64 results agree with
// the ATen formula to rounding of exp/cos (<= 1e-12 relative, tested).
//
// Threads (include/ekd/parallel.hpp): one parallel region per call over pair chunks, only when
// the work pays for it. The backward's sums over pairs (mu and sigma gradients) are accumulated in
// double per chunk and reduced in chunk order; the chunk count depends on the problem size only,
// so results are bit-identical for any thread count.
//
// No CUDA kernel: ekd.kernels.sensitivity() calls this op for CPU tensors only and keeps the ATen
// formula on GPUs; the CUDA registration below only turns a direct call into a clear error.
#include "ekd/parallel.hpp"
#include "ekd/radial.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace ekd {
namespace {

constexpr const char* kOp = "ekd::radial_sensitivity";
constexpr const char* kBackOp = "ekd::radial_sensitivity_backward";
// np.pi / 2, the constant of hippynn's CosCutoff.
constexpr double kHalfPi = 1.5707963267948966;
// Rough cost of one [p, n] entry in multiply-adds (a division and, for unclamped entries, an exp):
// decides whether a second thread pays (parallel.hpp).
constexpr int64_t kWorkPerEntry = 8;

// Runs body(c) for every chunk c in [0, n_chunks) on up to `threads` threads, one parallel region,
// chunks taken first come first served (a thread slowed down by another process takes fewer).
template <typename Body>
void run_chunks(int64_t n_chunks, int64_t threads, const Body& body) {
    if (threads <= 1 || n_chunks <= 1) {
        for (int64_t c = 0; c < n_chunks; ++c) body(c);
        return;
    }
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min(threads, n_chunks), 1, [&](int64_t, int64_t) {
        for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1)) body(c);
    });
}

template <typename F>
void dispatch_float(const at::Tensor& t, const F& f) {
    if (t.scalar_type() == at::kDouble) {
        f(double{});
    } else {
        f(float{});
    }
}

// Per-sensitivity constants, as hippynn's expression computes them: mu**-1 and sigma**-2.
template <typename T>
struct Widths {
    std::vector<T> inv_mu, sm2;
    Widths(const T* mu, const T* sigma, int64_t n) : inv_mu(n), sm2(n) {
        for (int64_t k = 0; k < n; ++k) {
            inv_mu[k] = T(1) / mu[k];
            sm2[k] = T(1) / (sigma[k] * sigma[k]);
        }
    }
};

template <typename T>
struct Clamp {
    T lowest, e_lowest;  // exp's argument floor and exp of it
    explicit Clamp(at::ScalarType dtype) {
        lowest = static_cast<T>(radial_lowest(dtype));
        e_lowest = std::exp(lowest);
    }
};

// hippynn's CosCutoff factor cos(pi/2 * r / hard)^2 * (r <= hard) (NaN distances stay NaN).
template <typename T>
inline T cos_cutoff(T r, T hard) {
    const T c = std::cos(T(kHalfPi) * r / hard);
    return c * c * T(r <= hard);
}

template <typename T>
void forward_pairs(const T* r, const Widths<T>& w, const Clamp<T>& cl, int64_t N, T hard, T* out, int64_t p0,
                   int64_t p1) {
    const T* inv_mu = w.inv_mu.data();
    const T* sm2 = w.sm2.data();
    for (int64_t p = p0; p < p1; ++p) {
        const T rp = r[p];
        const T cut = cos_cutoff(rp, hard);
        const T inv_r = T(1) / rp;
        T* o = out + p * N;
        for (int64_t n = 0; n < N; ++n) {
            const T d = inv_r - inv_mu[n];
            const T a = T(-0.5) * ((d * d) / sm2[n]);
            // `a < lowest` is false for NaN, so NaN propagates through exp as in torch's clamp
            o[n] = (a < cl.lowest ? cl.e_lowest : std::exp(a)) * cut;
        }
    }
}

// One pass of the backward over pairs [p0, p1): grad_r[p] (if grad_r), and for the parameter
// gradients (if kParams) acc_d[n] += sum_p dL/dd and acc_dd[n] += sum_p dL/dnondim * d^2, with
// d = 1/r - 1/mu_n and nondim = d^2 / sigma^-2 (zero where exp's argument was clamped, as torch's
// clamp backward).
template <typename T, bool kParams>
void backward_pairs(const T* g, const T* r, const Widths<T>& w, const Clamp<T>& cl, int64_t N, T hard, T* grad_r,
                    double* acc_d, double* acc_dd, int64_t p0, int64_t p1) {
    const T* inv_mu = w.inv_mu.data();
    const T* sm2 = w.sm2.data();
    for (int64_t p = p0; p < p1; ++p) {
        const T rp = r[p];
        const T x = T(kHalfPi) * rp / hard;
        const T inside = T(rp <= hard);
        const T cs = std::cos(x);
        const T cut = cs * cs * inside;
        const T inv_r = T(1) / rp;
        const T* gp = g + p * N;
        // The products below are in the order of the chain rule torch's autograd applies to
        // hippynn's expression: where the two terms of grad_r nearly cancel, that keeps float64
        // results within ~1e-13 of the ATen formula's.
        T sum_ge = 0;   // sum_n g * exp(...), the gradient wrt the cutoff factor
        T sum_arg = 0;  // sum_n gradient wrt (1/r)
        for (int64_t n = 0; n < N; ++n) {
            const T d = inv_r - inv_mu[n];
            const T a = T(-0.5) * ((d * d) / sm2[n]);
            if (a < cl.lowest) {
                sum_ge += gp[n] * cl.e_lowest;
                continue;
            }
            const T e = std::exp(a);
            sum_ge += gp[n] * e;
            if (!(a >= cl.lowest)) continue;  // NaN: torch's clamp backward masks it too
            const T ga = gp[n] * cut * e * T(-0.5);  // gradient wrt nondim
            const T gd = ga / sm2[n] * (T(2) * d);   // ... wrt d = 1/r - 1/mu
            sum_arg += gd;
            if (kParams) {
                acc_d[n] += double(gd);
                acc_dd[n] += double(ga) * double(d) * double(d);
            }
        }
        if (grad_r != nullptr) {
            // d(1/r)/dr = -1/r^2; d cut/dr = 2 cos(x) * -sin(x) * (pi/2) / hard (inside the cutoff)
            const T via_base = sum_arg * -(T(1) / (rp * rp));
            const T via_cut = sum_ge * inside * (T(2) * cs) * -std::sin(x) / hard * T(kHalfPi);
            grad_r[p] = via_base + via_cut;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Entry points

at::Tensor radial_sensitivity_cpu(const at::Tensor& dist_in, const at::Tensor& mu_in, const at::Tensor& sigma_in,
                                  double hard_max) {
    check_radial_args(kOp, dist_in, mu_in, sigma_in, hard_max);
    const at::Tensor dist = dist_in.contiguous(), mu = mu_in.contiguous(), sigma = sigma_in.contiguous();
    const int64_t P = dist.size(0), N = mu.size(-1);
    at::Tensor out = at::empty({P, N}, dist.options());
    if (P == 0 || N == 0) return out;
    dispatch_float(dist, [&](auto tag) {
        using T = decltype(tag);
        const Widths<T> w(mu.data_ptr<T>(), sigma.data_ptr<T>(), N);
        const Clamp<T> cl(dist.scalar_type());
        const T* r = dist.data_ptr<T>();
        T* o = out.data_ptr<T>();
        const T hard = static_cast<T>(hard_max);
        // per-pair outputs: the chunking cannot change a result, one chunk when single-threaded
        const ParallelPlan plan = parallel_plan(P * N * kWorkPerEntry, P);
        run_chunks(plan.chunks, plan.threads, [&](int64_t c) {
            forward_pairs<T>(r, w, cl, N, hard, o, P * c / plan.chunks, P * (c + 1) / plan.chunks);
        });
    });
    return out;
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma,
                         double hard_max) {
    check_radial_args(kBackOp, dist, mu, sigma, hard_max);
    TORCH_CHECK(grad.dim() == 2 && grad.sym_size(0) == dist.sym_size(0) && grad.sym_size(1) == mu.sym_size(-1), kBackOp,
                ": `grad` must be n_pairs x n_sensitivities [", dist.sym_size(0), ", ", mu.sym_size(-1), "], got shape ",
                grad.sym_sizes());
    TORCH_CHECK(grad.scalar_type() == dist.scalar_type(), kBackOp, ": `grad` has dtype ", grad.scalar_type(),
                " but `dist` has dtype ", dist.scalar_type());
    check_same_device(kBackOp, "grad", grad, "dist", dist);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& dist_in, const at::Tensor& mu_in, const at::Tensor& sigma_in,
    double hard_max, std::array<bool, 3> mask) {
    check_backward_args(grad_in, dist_in, mu_in, sigma_in, hard_max);
    const at::Tensor grad = grad_in.contiguous(), dist = dist_in.contiguous();
    const at::Tensor mu = mu_in.contiguous(), sigma = sigma_in.contiguous();
    const int64_t P = dist.size(0), N = mu.size(-1);
    at::Tensor grad_r, grad_mu, grad_sigma;
    if (mask[0]) grad_r = at::empty({P}, dist.options());
    const bool params = mask[1] || mask[2];
    if (!mask[0] && !params) return {grad_r, grad_mu, grad_sigma};
    // Fixed by the problem size (not the thread count): the chunked sums below are reproducible.
    const int64_t work = P * N * kWorkPerEntry;
    const int64_t K = params ? chunks_for(work, std::max<int64_t>(P, 1)) : parallel_plan(work, P).chunks;
    const int64_t threads = parallel_plan(work, P).threads;
    std::vector<double> partial(params ? 2 * K * N : 0, 0.0);  // [K][acc_d N | acc_dd N]
    dispatch_float(dist, [&](auto tag) {
        using T = decltype(tag);
        const T* mup = mu.data_ptr<T>();
        const T* sgp = sigma.data_ptr<T>();
        const Widths<T> w(mup, sgp, N);
        const Clamp<T> cl(dist.scalar_type());
        const T* r = dist.data_ptr<T>();
        const T* g = grad.data_ptr<T>();
        T* gr = mask[0] ? grad_r.data_ptr<T>() : nullptr;
        const T hard = static_cast<T>(hard_max);
        if (P > 0) {
            run_chunks(K, threads, [&](int64_t c) {
                const int64_t p0 = P * c / K, p1 = P * (c + 1) / K;
                if (params) {
                    double* acc = partial.data() + 2 * c * N;
                    backward_pairs<T, true>(g, r, w, cl, N, hard, gr, acc, acc + N, p0, p1);
                } else {
                    backward_pairs<T, false>(g, r, w, cl, N, hard, gr, nullptr, nullptr, p0, p1);
                }
            });
        }
        if (!params) return;
        std::vector<double> sum_d(N, 0.0), sum_dd(N, 0.0);
        for (int64_t c = 0; c < K; ++c) {
            for (int64_t n = 0; n < N; ++n) {
                sum_d[n] += partial[2 * c * N + n];
                sum_dd[n] += partial[2 * c * N + N + n];
            }
        }
        // d = 1/r - 1/mu: dd/dmu = mu^-2;  nondim = d^2 / sigma^-2 = d^2 sigma^2: d nondim/d sigma = 2 d^2 sigma
        if (mask[1]) {
            grad_mu = at::empty(mu.sizes(), mu.options());
            T* o = grad_mu.data_ptr<T>();
            for (int64_t n = 0; n < N; ++n) {
                const double im = double(w.inv_mu[n]);
                o[n] = static_cast<T>(sum_d[n] * im * im);
            }
        }
        if (mask[2]) {
            grad_sigma = at::empty(sigma.sizes(), sigma.options());
            T* o = grad_sigma.data_ptr<T>();
            for (int64_t n = 0; n < N; ++n) o[n] = static_cast<T>(sum_dd[n] * 2.0 * double(sgp[n]));
        }
    });
    return {grad_r, grad_mu, grad_sigma};
}

// ------------------------------------------------------------------------------------------------
// Meta kernels (shapes only, same checks): FakeTensor / torch.compile / opcheck.

at::Tensor radial_sensitivity_meta(const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma,
                                   double hard_max) {
    check_radial_args(kOp, dist, mu, sigma, hard_max);
    return at::empty_symint(radial_shape(dist, mu), dist.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_backward_meta(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma, double hard_max,
    std::array<bool, 3> mask) {
    check_backward_args(grad, dist, mu, sigma, hard_max);
    return {mask[0] ? at::empty_symint(dist.sym_sizes(), dist.options()) : at::Tensor(),
            mask[1] ? at::empty_symint(mu.sym_sizes(), mu.options()) : at::Tensor(),
            mask[2] ? at::empty_symint(sigma.sym_sizes(), sigma.options()) : at::Tensor()};
}

at::Tensor radial_sensitivity_cuda(const at::Tensor& dist, const at::Tensor&, const at::Tensor&, double) {
    TORCH_CHECK(false, kOp, ": no CUDA kernel (`dist` is on ", dist.device(),
                "); ekd.kernels.sensitivity() uses the ATen formula for GPU tensors, call that instead");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_backward_cuda(const at::Tensor&,
                                                                               const at::Tensor& dist,
                                                                               const at::Tensor&, const at::Tensor&,
                                                                               double, std::array<bool, 3>) {
    TORCH_CHECK(false, kBackOp, ": no CUDA kernel (`dist` is on ", dist.device(), ")");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_grads_differentiable(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma, double hard_max,
    std::array<bool, 3> mask) {
    check_backward_args(grad, dist, mu, sigma, hard_max);
    const double lowest = radial_lowest(dist.scalar_type());
    const at::Tensor mu_row = mu.reshape({1, -1}), sigma_row = sigma.reshape({1, -1});
    const at::Tensor inv_r = dist.reciprocal();                       // [P]
    const at::Tensor d = inv_r.unsqueeze(1) - mu_row.reciprocal();    // [P, N]
    const at::Tensor sm2 = sigma_row.pow(-2);                         // [1, N]
    const at::Tensor arg = d.square().div(sm2).mul(-0.5);
    // clamp's derivative is 1 where arg >= lowest (torch's clamp backward), 0 elsewhere
    const at::Tensor e = arg.clamp_min(lowest).exp();
    const at::Tensor x = dist.mul(kHalfPi).div(hard_max);
    const at::Tensor inside = dist.le(hard_max).to(dist.scalar_type());
    const at::Tensor cs = x.cos();
    const at::Tensor cut = cs.square().mul(inside);
    const at::Tensor ge = grad.mul(e);
    const at::Tensor ga = at::where(arg.ge(lowest), ge.mul(cut.unsqueeze(1)), 0.0);  // d/d arg
    at::Tensor grad_r, grad_mu, grad_sigma;
    if (mask[0]) {
        const at::Tensor dcut = cs.mul(x.sin()).mul(-2.0 * kHalfPi / hard_max).mul(inside);
        grad_r = ga.mul(d).div(sm2).sum(1).mul(inv_r.square()) + ge.sum(1).mul(dcut);
    }
    if (mask[1]) grad_mu = ga.mul(d).sum(0, true).mul(mu_row.pow(-2)).div(sm2).neg().reshape(mu.sizes());
    if (mask[2]) grad_sigma = ga.mul(d.square()).sum(0, true).mul(sigma_row).neg().reshape(sigma.sizes());
    return {grad_r, grad_mu, grad_sigma};
}

}  // namespace ekd

TORCH_LIBRARY_IMPL(ekd, CPU, m) {
    m.impl("radial_sensitivity", &ekd::radial_sensitivity_cpu);
    m.impl("radial_sensitivity_backward", &ekd::radial_sensitivity_backward_cpu);
}

TORCH_LIBRARY_IMPL(ekd, Meta, m) {
    m.impl("radial_sensitivity", &ekd::radial_sensitivity_meta);
    m.impl("radial_sensitivity_backward", &ekd::radial_sensitivity_backward_meta);
}

TORCH_LIBRARY_IMPL(ekd, CUDA, m) {
    m.impl("radial_sensitivity", &ekd::radial_sensitivity_cuda);
    m.impl("radial_sensitivity_backward", &ekd::radial_sensitivity_backward_cuda);
}
