// Argument checks shared by every op entry point (CPU and CUDA). Messages name the argument,
// what was expected and what was found, e.g. "ekd::neighbor_list: `positions` must be n x 3,
// got [5, 2]".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

}  // namespace ekd
