// Argument checks and output shapes of the HIPNN interaction ops (envsum, sensesum, featsum and
// the factorised tensor pair tensor_envsum / tensor_sensesum), shared by the CPU, Meta and CUDA
// kernels so that every device rejects the same inputs with the same message.
//
// Sizes are compared as SymInts: the Meta kernels run under torch.compile / opcheck with symbolic
// shapes, where plain size() would throw. For ordinary tensors a SymInt is just an int64.
#pragma once

#include "ekd/checks.hpp"

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Exception.h>

#include <vector>

namespace ekd {

inline void check_sym_size(const char* op, const char* name, const at::Tensor& t, int64_t d,
                           const c10::SymInt& size, const char* expected) {
    TORCH_CHECK(t.sym_size(d) == size, op, ": `", name, "` must be ", expected, ", got shape ", t.sym_sizes());
}

// A floating tensor of `dim` dimensions, of the dtype and device of `ref` (the op's first argument).
inline void check_float_arg(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                            const char* expected, const char* ref_name, const at::Tensor& ref) {
    TORCH_CHECK(t.dim() == dim, op, ": `", name, "` must be ", expected, ", got shape ", t.sym_sizes());
    check_dtype(op, name, t, {at::kFloat, at::kDouble});
    if (&t != &ref) {
        TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": `", name, "` has dtype ", t.scalar_type(),
                    " but `", ref_name, "` has dtype ", ref.scalar_type(), "; all float arguments must share one dtype");
        check_same_device(op, name, t, ref_name, ref);
    }
}

// pair_first / pair_second: int64 vectors of n_pairs entries on the device of `ref`.
inline void check_pair_args(const char* op, const at::Tensor& first, const at::Tensor& second,
                            const c10::SymInt& n_pairs, const char* pairs_from, const at::Tensor& ref,
                            const char* ref_name) {
    const char* names[2] = {"pair_first", "pair_second"};
    const at::Tensor* ts[2] = {&first, &second};
    for (int k = 0; k < 2; ++k) {
        const at::Tensor& t = *ts[k];
        TORCH_CHECK(t.dim() == 1, op, ": `", names[k], "` must be a vector of pair indices, got shape ",
                    t.sym_sizes());
        check_dtype(op, names[k], t, {at::kLong});
        TORCH_CHECK(t.sym_size(0) == n_pairs, op, ": `", names[k], "` has ", t.sym_size(0), " entries but `",
                    pairs_from, "` has ", n_pairs, " rows (one per pair)");
        check_same_device(op, names[k], t, ref_name, ref);
    }
}

// envsum(sensitivities [P, N], features [A, F], pair_first, pair_second) -> [A, N, F]
inline std::vector<c10::SymInt> envsum_shape(const at::Tensor& sens, const at::Tensor& feat,
                                             const at::Tensor& first, const at::Tensor& second) {
    constexpr const char* op = "ekd::envsum";
    check_float_arg(op, "sensitivities", sens, 2, "n_pairs x n_sensitivities", "sensitivities", sens);
    check_float_arg(op, "features", feat, 2, "n_atoms x n_features", "sensitivities", sens);
    check_pair_args(op, first, second, sens.sym_size(0), "sensitivities", sens, "sensitivities");
    return {feat.sym_size(0), sens.sym_size(1), feat.sym_size(1)};
}

// sensesum(env [A, N, F], features [A, F], pair_first, pair_second) -> [P, N]
inline std::vector<c10::SymInt> sensesum_shape(const at::Tensor& env, const at::Tensor& feat,
                                               const at::Tensor& first, const at::Tensor& second) {
    constexpr const char* op = "ekd::sensesum";
    check_float_arg(op, "env", env, 3, "n_atoms x n_sensitivities x n_features", "env", env);
    check_float_arg(op, "features", feat, 2, "n_atoms x n_features", "env", env);
    check_sym_size(op, "features", feat, 0, env.sym_size(0), "n_atoms x n_features with the n_atoms of `env`");
    check_sym_size(op, "features", feat, 1, env.sym_size(2), "n_atoms x n_features with the n_features of `env`");
    check_pair_args(op, first, second, first.sym_size(0), "pair_first", env, "env");
    return {first.sym_size(0), env.sym_size(1)};
}

// featsum(env [A, N, F], sense [P, N], pair_first, pair_second) -> [A, F]
inline std::vector<c10::SymInt> featsum_shape(const at::Tensor& env, const at::Tensor& sense,
                                              const at::Tensor& first, const at::Tensor& second) {
    constexpr const char* op = "ekd::featsum";
    check_float_arg(op, "env", env, 3, "n_atoms x n_sensitivities x n_features", "env", env);
    check_float_arg(op, "sense", sense, 2, "n_pairs x n_sensitivities", "env", env);
    check_sym_size(op, "sense", sense, 1, env.sym_size(1), "n_pairs x n_sensitivities with the n_sensitivities of `env`");
    check_pair_args(op, first, second, sense.sym_size(0), "sense", env, "env");
    return {env.sym_size(0), env.sym_size(2)};
}

// tensor_envsum(a [P, C], b [P, N], x [A, N, O], pair_first, pair_second) -> [A, C, O]
inline std::vector<c10::SymInt> tensor_envsum_shape(const at::Tensor& a, const at::Tensor& b,
                                                    const at::Tensor& x, const at::Tensor& first,
                                                    const at::Tensor& second) {
    constexpr const char* op = "ekd::tensor_envsum";
    check_float_arg(op, "a", a, 2, "n_pairs x n_components", "a", a);
    check_float_arg(op, "b", b, 2, "n_pairs x n_sensitivities", "a", a);
    check_float_arg(op, "x", x, 3, "n_atoms x n_sensitivities x n_features", "a", a);
    check_sym_size(op, "b", b, 0, a.sym_size(0), "n_pairs x n_sensitivities with the n_pairs of `a`");
    check_sym_size(op, "x", x, 1, b.sym_size(1), "n_atoms x n_sensitivities x n_features with the n_sensitivities of `b`");
    check_pair_args(op, first, second, a.sym_size(0), "a", a, "a");
    return {x.sym_size(0), a.sym_size(1), x.sym_size(2)};
}

// tensor_sensesum(a [P, C], y [A, C, O], x [A, N, O], pair_first, pair_second) -> [P, N]
inline std::vector<c10::SymInt> tensor_sensesum_shape(const at::Tensor& a, const at::Tensor& y,
                                                      const at::Tensor& x, const at::Tensor& first,
                                                      const at::Tensor& second) {
    constexpr const char* op = "ekd::tensor_sensesum";
    check_float_arg(op, "a", a, 2, "n_pairs x n_components", "a", a);
    check_float_arg(op, "y", y, 3, "n_atoms x n_components x n_features", "a", a);
    check_float_arg(op, "x", x, 3, "n_atoms x n_sensitivities x n_features", "a", a);
    check_sym_size(op, "y", y, 1, a.sym_size(1), "n_atoms x n_components x n_features with the n_components of `a`");
    check_sym_size(op, "x", x, 0, y.sym_size(0), "n_atoms x n_sensitivities x n_features with the n_atoms of `y`");
    check_sym_size(op, "x", x, 2, y.sym_size(2), "n_atoms x n_sensitivities x n_features with the n_features of `y`");
    check_pair_args(op, first, second, a.sym_size(0), "a", a, "a");
    return {a.sym_size(0), x.sym_size(1)};
}

// tensor_envsum_backward(grad [A, C, O], a [P, C], b [P, N], x [A, N, O], pair_first, pair_second)
//   -> ([P, C], [P, N]): the gradients of tensor_envsum(a, b, x, ...) with respect to a and b.
inline std::vector<std::vector<c10::SymInt>> tensor_envsum_backward_shapes(const at::Tensor& grad, const at::Tensor& a,
                                                                          const at::Tensor& b, const at::Tensor& x,
                                                                          const at::Tensor& first,
                                                                          const at::Tensor& second) {
    constexpr const char* op = "ekd::tensor_envsum_backward";
    const std::vector<c10::SymInt> out = tensor_envsum_shape(a, b, x, first, second);
    check_float_arg(op, "grad", grad, 3, "n_atoms x n_components x n_features (tensor_envsum's output)", "a", a);
    for (int64_t d = 0; d < 3; ++d) {
        check_sym_size(op, "grad", grad, d, out[d], "the shape of tensor_envsum(a, b, x, ...): n_atoms x n_components x n_features");
    }
    return {{a.sym_size(0), a.sym_size(1)}, {b.sym_size(0), b.sym_size(1)}};
}

}  // namespace ekd
