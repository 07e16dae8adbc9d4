// Argument checks shared by every op entry point (CPU and CUDA). Messages name the argument,
// what was expected and what was found, e.g. "ekd::neighbor_list: `positions` must be n x 3,
// got [5, 2]".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
#include <string>

namespace ekd {

inline std::string shape_str(const at::Tensor& t) {
    std::string s = "[";
    for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
    return s + "]";
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                      const char* expected) {
    TORCH_CHECK(t.dim() == dim, op, ": `", name, "` must be ", expected, ", got shape ", shape_str(t));
}

inline void check_size(const char* op, const char* name, const at::Tensor& t, int64_t d, int64_t size,
                       const char* expected) {
    TORCH_CHECK(t.size(d) == size, op, ": `", name, "` must be ", expected, ", got shape ", shape_str(t));
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t,
                        std::initializer_list<at::ScalarType> allowed) {
    std::string names;
    for (auto s : allowed) {
        if (t.scalar_type() == s) return;
        names += (names.empty() ? "" : " or ") + std::string(c10::toString(s));
    }
    TORCH_CHECK(false, op, ": `", name, "` must have dtype ", names, ", got ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const char* ref_name, const at::Tensor& ref) {
    TORCH_CHECK(t.device() == ref.device(), op, ": `", name, "` is on ", t.device(), " but `", ref_name,
                "` is on ", ref.device(), "; all arguments must be on one device");
}

// Shapes, dtypes and devices of ekd::neighbor_list's arguments (the CPU and CUDA kernels share
// them, so the messages are the same on every device).
inline void check_neighbor_list_args(const char* kOp, const at::Tensor& positions, const at::Tensor& batch,
                                     const at::Tensor& cells, const at::Tensor& pbc, double cutoff) {
    check_dim(kOp, "positions", positions, 2, "n x 3");
    check_size(kOp, "positions", positions, 1, 3, "n x 3");
    check_dtype(kOp, "positions", positions, {at::kFloat, at::kDouble});
    check_dim(kOp, "batch", batch, 1, "a vector of length n (one structure index per atom)");
    check_size(kOp, "batch", batch, 0, positions.size(0), "a vector of length n (one structure index per atom)");
    check_dtype(kOp, "batch", batch, {at::kLong});
    check_dim(kOp, "cells", cells, 3, "n_structures x 3 x 3");
    check_size(kOp, "cells", cells, 1, 3, "n_structures x 3 x 3");
    check_size(kOp, "cells", cells, 2, 3, "n_structures x 3 x 3");
    check_dtype(kOp, "cells", cells, {at::kFloat, at::kDouble});
    check_dim(kOp, "pbc", pbc, 2, "n_structures x 3");
    check_size(kOp, "pbc", pbc, 0, cells.size(0), "n_structures x 3 (same n_structures as `cells`)");
    check_size(kOp, "pbc", pbc, 1, 3, "n_structures x 3");
    check_dtype(kOp, "pbc", pbc, {at::kBool});
    check_same_device(kOp, "batch", batch, "positions", positions);
    check_same_device(kOp, "cells", cells, "positions", positions);
    check_same_device(kOp, "pbc", pbc, "positions", positions);
    TORCH_CHECK(std::isfinite(cutoff) && cutoff > 0.0, kOp, ": `cutoff` must be a finite positive number, got ",
                cutoff);
}

}  // namespace ekd
