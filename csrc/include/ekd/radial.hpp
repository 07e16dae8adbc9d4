// ekd::radial_sensitivity: hippynn's Inverse/GaussianSensitivityModule with its CosCutoff,
//   s[p, n] = exp(max(-0.5 * (1/r_p - 1/mu_n)^2 / sigma_n^-2, log(2 tiny))) * cos(pi/2 r_p / hard)^2 * (r_p <= hard)
// (tiny: the smallest normal number of the dtype; see ekd.kernels.sensitivity for why the clamp).
// Argument checks, the output shape and the differentiable (at:: ops) gradient shared by the CPU
// and Meta kernels (cpu/radial.cpp), the ATen formula that serves CUDA tensors (composite.cpp) and
// the autograd function (autograd.cpp).
#pragma once

#include "ekd/checks.hpp"

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Exception.h>

#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace ekd {

// dist [P] float32/float64; mu, sigma [1, N] (the module's parameters) or [N], dist's dtype and device.
inline void check_radial_args(const char* op, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma,
                              double hard_max) {
    TORCH_CHECK(dist.dim() == 1, op, ": `dist` must be a vector of pair distances [n_pairs], got shape ",
                dist.sym_sizes());
    check_dtype(op, "dist", dist, {at::kFloat, at::kDouble});
    TORCH_CHECK(mu.dim() == 1 || (mu.dim() == 2 && mu.sym_size(0) == 1), op,
                ": `mu` must be 1 x n_sensitivities (the module's parameter) or a vector, got shape ",
                mu.sym_sizes());
    TORCH_CHECK(sigma.sym_sizes() == mu.sym_sizes(), op, ": `sigma` must have the shape of `mu` ", mu.sym_sizes(),
                ", got shape ", sigma.sym_sizes());
    const char* names[2] = {"mu", "sigma"};
    const at::Tensor* ts[2] = {&mu, &sigma};
    for (int k = 0; k < 2; ++k) {
        TORCH_CHECK(ts[k]->scalar_type() == dist.scalar_type(), op, ": `", names[k], "` has dtype ",
                    ts[k]->scalar_type(), " but `dist` has dtype ", dist.scalar_type(),
                    "; convert the module or the distances to one dtype");
        check_same_device(op, names[k], *ts[k], "dist", dist);
    }
    TORCH_CHECK(std::isfinite(hard_max) && hard_max > 0.0, op,
                ": `hard_max` (the cutoff's hard_max_dist) must be a finite positive number, got ", hard_max);
}

// np.pi / 2, the constant of hippynn's CosCutoff.
constexpr double kHalfPi = 1.5707963267948966;

// The arguments of a backward op (`op`, named in the messages): grad [P, N] plus the forward's.
inline void check_backward_args(const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu,
                                const at::Tensor& sigma, double hard_max,
                                const char* op = "ekd::radial_sensitivity_backward") {
    check_radial_args(op, dist, mu, sigma, hard_max);
    TORCH_CHECK(grad.dim() == 2 && grad.sym_size(0) == dist.sym_size(0) && grad.sym_size(1) == mu.sym_size(-1), op,
                ": `grad` must be n_pairs x n_sensitivities [", dist.sym_size(0), ", ", mu.sym_size(-1), "], got shape ",
                grad.sym_sizes());
    TORCH_CHECK(grad.scalar_type() == dist.scalar_type(), op, ": `grad` has dtype ", grad.scalar_type(),
                " but `dist` has dtype ", dist.scalar_type());
    check_same_device(op, "grad", grad, "dist", dist);
}

// [P, N]
inline std::vector<c10::SymInt> radial_shape(const at::Tensor& dist, const at::Tensor& mu) {
    return {dist.sym_size(0), mu.sym_size(-1)};
}

// exp's argument is clamped below here (the same number Python's math.log(2 * finfo.tiny) gives).
inline double radial_lowest(at::ScalarType dtype) {
    return dtype == at::kFloat ? std::log(2.0 * double(std::numeric_limits<float>::min()))
                               : std::log(2.0 * std::numeric_limits<double>::min());
}

// Gradients of sum(grad * s) wrt (dist, mu, sigma), written with differentiable ATen ops so that
// they can be differentiated again (double backward: force training). Undefined where
// output_mask is false. Defined in composite.cpp (any device).
std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_grads_differentiable(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma, double hard_max,
    std::array<bool, 3> output_mask);

// The same for ekd::radial_sensitivity_dr (ds/dr): its gradients (second derivatives of s) with
// differentiable ATen ops, for derivatives of third order.
std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_dr_grads_differentiable(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma, double hard_max,
    std::array<bool, 3> output_mask);

}  // namespace ekd
