// What ekd's CPU kernel files share: the CPU clones of their hot loops, forced inlining of the
// micro-kernels into those clones, and the float / double dispatch of their entry points.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// at::empty for an output the kernel writes in full right after, backed by transparent huge pages
// where the system offers them. A fresh allocation of many MB is mapped page by page on first
// touch, one page fault per 4 KiB: ~2.4 us each in the VMs measured here, 0.3 s for the 538 MB of
// hippynn's "mega" envsum output, far more than the arithmetic that fills it. One fault per 2 MiB
// instead (what numpy asks for its arrays) removes that cost. A hint only: the memory and its
// owner (torch's allocator) are unchanged, and where the hint is refused nothing else changes.
inline at::Tensor empty_output(at::IntArrayRef shape, const at::TensorOptions& options) {
    at::Tensor t = at::empty(shape, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr uintptr_t kPage = 4096;
    const size_t bytes = t.nbytes();
    if (bytes >= (size_t(4) << 20)) {  // below a few huge pages there is little to gain
        const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data_ptr()) + kPage - 1) & ~(kPage - 1);
        const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data_ptr()) + bytes) & ~(kPage - 1);
        if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    }
#endif
    return t;
}

}  // namespace ekd
