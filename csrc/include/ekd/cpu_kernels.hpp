// What ekd's CPU kernel files share: the CPU clones of their hot loops, forced inlining of the
// micro-kernels into those clones, and the float / double dispatch of their entry points.
#pragma once

#include <ATen/ATen.h>

// The hot loops compiled twice, for x86-64-v3 (AVX2 + FMA) and baseline x86-64, chosen at load time
// by GCC's target_clones: the library runs on any x86-64 and uses AVX2 where there is.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EKD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define EKD_CLONES
#endif
// Forced inlining: a helper compiled out of line is compiled for the baseline target, not for the
// clone that calls it (a lambda is such a helper too: pass loops into clones as template code).
#if defined(__GNUC__)
#define EKD_INLINE inline __attribute__((always_inline))
#else
#define EKD_INLINE inline
#endif

namespace ekd {

// Calls fn(double{}) for a float64 tensor and fn(float{}) otherwise (the entry points have checked
// that their floating-point arguments are float32 or float64).
template <typename Fn>
void dispatch_float(const at::Tensor& t, const Fn& fn) {
    if (t.scalar_type() == at::kDouble) {
        fn(double{});
    } else {
        fn(float{});
    }
}

}  // namespace ekd
