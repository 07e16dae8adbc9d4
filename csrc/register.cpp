// Operator signatures of the ekd library, and nothing else: kernels are registered per device
// in cpu/*.cpp and cuda/*.cu, autograd in autograd.cpp. TorchScript, Python and the LAMMPS
// plugin all reach the ops through this one schema.
#include <torch/library.h>

#ifndef EKD_VERSION
#define EKD_VERSION "unknown"
#endif
#ifndef EKD_TORCH_VERSION
#define EKD_TORCH_VERSION "unknown"
#endif

namespace {
// Version strings as ops, so an exported TorchScript model or the LAMMPS plugin can check the
// library it runs against without Python.
std::string ekd_version() { return EKD_VERSION; }
std::string ekd_torch_version() { return EKD_TORCH_VERSION; }
}  // namespace

TORCH_LIBRARY(ekd, m) {
    // All pairs |r_ij| < cutoff of a batch of structures (full list, both directions).
    //   positions [N, 3] float; batch [N] int64, non-decreasing structure index of each atom;
    //   cells [B, 3, 3] (rows: lattice vectors); pbc [B, 3] bool.
    // Returns pair_first [P], pair_second [P] (int64, global atom indices) and shifts [P, 3]
    // (int64) with r_ij = positions[j] - positions[i] + shifts @ cells[batch[i]].
    m.def("neighbor_list(Tensor positions, Tensor batch, Tensor cells, Tensor pbc, float cutoff)"
          " -> (Tensor, Tensor, Tensor)");

    // HIPNN interaction ops: exactly hippynn.custom_kernels.env_pytorch. With P pairs (i = pair_first[p],
    // j = pair_second[p], int64 [P]), A atoms, N sensitivities, F features:
    //   envsum:   sensitivities [P, N], features [A, F] -> env [A, N, F],
    //             env[i, n, f] = sum_{p: first=i} sensitivities[p, n] * features[j, f]
    m.def("envsum(Tensor sensitivities, Tensor features, Tensor pair_first, Tensor pair_second) -> Tensor");
    //   sensesum: env [A, N, F], features [A, F] -> sense [P, N],  sense[p, n] = sum_f env[i, n, f] features[j, f]
    m.def("sensesum(Tensor env, Tensor features, Tensor pair_first, Tensor pair_second) -> Tensor");
    //   featsum:  env [A, N, F], sense [P, N] -> feat [A, F],
    //             feat[j, f] = sum_{p: second=j} sum_n sense[p, n] env[i, n, f]
    m.def("featsum(Tensor env, Tensor sense, Tensor pair_first, Tensor pair_second) -> Tensor");
    // Factorised tensor interaction (HipnnVec/HipnnQuad with the weights applied before the pair
    // sum; see python/ekd/ops/kernels.py). With C tensor components, N sensitivities, O features:
    //   tensor_envsum:   a [P, C], b [P, N], x [A, N, O] -> [A, C, O],
    //                    out[i, c, o] = sum_{p: first=i} a[p, c] sum_n b[p, n] x[j, n, o]
    m.def("tensor_envsum(Tensor a, Tensor b, Tensor x, Tensor pair_first, Tensor pair_second) -> Tensor");
    //   tensor_sensesum: a [P, C], y [A, C, O], x [A, N, O] -> [P, N],
    //                    out[p, n] = sum_o x[j, n, o] sum_c a[p, c] y[i, c, o]
    m.def("tensor_sensesum(Tensor a, Tensor y, Tensor x, Tensor pair_first, Tensor pair_second) -> Tensor");
    //   tensor_envsum_backward: grad [A, C, O] of tensor_envsum(a, b, x, ...) -> (grad_a [P, C], grad_b [P, N]),
    //                    i.e. tensor_sensesum(b, x, grad, pair_second, pair_first) and
    //                    tensor_sensesum(a, grad, x, pair_first, pair_second) in one pass over the pairs (CPU; on CUDA
    //                    the two tensor_sensesums, composite.cpp;
    //                    what tensor_envsum's autograd uses when no graph of the gradient is asked for)
    m.def("tensor_envsum_backward(Tensor grad, Tensor a, Tensor b, Tensor x, Tensor pair_first, Tensor pair_second)"
          " -> (Tensor, Tensor)");
    // hippynn's Inverse/GaussianSensitivityModule with CosCutoff (include/ekd/radial.hpp):
    //   radial_sensitivity: dist [P], mu [1, N], sigma [1, N] -> [P, N],
    //     s[p, n] = exp(max(-0.5 (1/r_p - 1/mu_n)^2 / sigma_n^-2, log(2 tiny))) cos(pi/2 r_p/hard_max)^2 (r_p <= hard_max)
    m.def("radial_sensitivity(Tensor dist, Tensor mu, Tensor sigma, float hard_max) -> Tensor");
    //   its fused backward (no autograd of its own): gradients of sum(grad * s) wrt dist, mu, sigma,
    //   undefined where output_mask is false
    m.def("radial_sensitivity_backward(Tensor grad, Tensor dist, Tensor mu, Tensor sigma, float hard_max,"
          " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
    //   radial_sensitivity_dr: ds/dr [P, N] (the backward of radial_sensitivity under create_graph,
    //   i.e. force training, is sum_n grad * ds/dr) and its fused backward (second derivatives)
    m.def("radial_sensitivity_dr(Tensor dist, Tensor mu, Tensor sigma, float hard_max) -> Tensor");
    m.def("radial_sensitivity_dr_backward(Tensor grad, Tensor dist, Tensor mu, Tensor sigma, float hard_max,"
          " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
    m.def("version() -> str", &ekd_version);
    m.def("torch_version() -> str", &ekd_torch_version);
}
