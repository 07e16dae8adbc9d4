// CPU (and Meta) kernels of ekd::radial_sensitivity and its fused backward (formula in
// include/ekd/radial.hpp, schema in register.cpp, autograd in autograd.cpp).
//
// Why a kernel for an elementwise formula: written with ATen ops, hippynn's sensitivity and its
// backward are ~25 passes over [P, N] tensors (20 MB each for a 3,136-atom box in float32), each
// memory bound; here the forward writes the output once and the backward reads the incoming
// gradient once. The cutoff factor is computed once per pair instead of once per entry, and the
// loops over the sensitivities vectorise (exp is inlined, below). Measured on the 3,136-atom box
// (253,568 pairs x 20, float32, 1 thread, kernel CPU time): forward ~6 ms, backward ~10 ms (wrt
// dist) / ~12 ms (also mu, sigma), against ~17-30 ms and ~40-80 ms for the ATen formula and its
// autograd backward.
//
// Numerics follow hippynn's expression operation by operation (1/r - 1/mu, squared, divided by
// sigma^-2 = 1/(sigma*sigma), times -0.5; cos(pi/2 * r / hard)^2), so float64 results agree with
// the ATen formula to rounding of exp/cos (<= 1e-12 relative, tested), except that results below
// the smallest normal number are flushed to 0 (FlushSubnormals says why).
//
// Threads (include/ekd/parallel.hpp): one parallel region per call over pair chunks, only when
// the work pays for it. The backward's sums over pairs (mu and sigma gradients) are accumulated in
// double per chunk and reduced in chunk order; the chunk count depends on the problem size only,
// so results are bit-identical for any thread count.
//
// On CUDA tensors the same four ops run as the ATen formula (csrc/composite.cpp): elementwise and
// memory bound, where a GPU's bandwidth makes the extra passes cheap.
#include "ekd/cpu_kernels.hpp"
#include "ekd/parallel.hpp"
#include "ekd/radial.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace ekd {
namespace {

constexpr const char* kOp = "ekd::radial_sensitivity";
constexpr const char* kBackOp = "ekd::radial_sensitivity_backward";
// Rough cost of one [p, n] entry in multiply-adds (a division and the inlined exp, vectorised):
// decides whether a second thread pays (parallel.hpp).
constexpr int64_t kWorkPerEntry = 8;

// Flushes subnormal results and operands to zero on this thread while it lives (restores the
// caller's mode). Entries whose exp argument is clamped are ~2 tiny times the cutoff factor, i.e.
// subnormal for most pairs, and x86 cores take a microcode assist on every subnormal result:
// measured on the 3,136-atom box (float32, 1 thread, with an earlier, less vectorised version of
// these loops) forward 21 -> 14 ms, backward 46 -> 33 ms.
// Values that would be subnormal (below 1.2e-38 in float32, 2.2e-308 in float64) become 0: within
// the clamp's own deviation from hippynn (< 2 tiny, ekd.kernels.sensitivity's docstring).
struct FlushSubnormals {
#if defined(__SSE__)
    unsigned int saved = _mm_getcsr();
    FlushSubnormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ (bit 15) | DAZ (bit 6)
    ~FlushSubnormals() { _mm_setcsr(saved); }
#endif
};

// Per-sensitivity constants, as hippynn's expression computes them: mu**-1 and sigma**-2 (and
// sigma**2, for ds/dr).
template <typename T>
struct Widths {
    std::vector<T> inv_mu, sm2, sig2;
    Widths(const T* mu, const T* sigma, int64_t n) : inv_mu(n), sm2(n), sig2(n) {
        for (int64_t k = 0; k < n; ++k) {
            inv_mu[k] = T(1) / mu[k];
            sig2[k] = sigma[k] * sigma[k];
            sm2[k] = T(1) / sig2[k];
        }
    }
};

template <typename T>
struct Clamp {
    T lowest;  // exp's argument floor
    explicit Clamp(at::ScalarType dtype) : lowest(static_cast<T>(radial_lowest(dtype))) {}
};

// hippynn's CosCutoff factor cos(pi/2 * r / hard)^2 * (r <= hard) (NaN distances stay NaN).
template <typename T>
EKD_INLINE T cos_cutoff(T r, T hard) {
    const T c = std::cos(T(kHalfPi) * r / hard);
    return c * c * T(r <= hard);
}

// exp(x) for x in [lowest, 0] (or NaN), without branches or calls so that the loops over the
// sensitivities vectorise (std::exp is an opaque call: one entry at a time, most of the kernel's
// time). x = k ln2 + r with |r| <= ln2 / 2 (k rounded by adding 1.5 2^m: it lands in the low bits
// of the sum), exp(r) by its Taylor polynomial (degree 12 in double, 7 in float: truncation below
// 2e-16 resp. 6e-9 relative), times 2^k built in the exponent bits; k >= -1021 (-125 in float) on
// this range, so 2^k is a normal number. Relative error a few ulp (float64: < 1e-15, tested
// against torch's exp through the formula test).
constexpr double kInvFactorial[13] = {1.0,
                                      1.0,
                                      1.0 / 2,
                                      1.0 / 6,
                                      1.0 / 24,
                                      1.0 / 120,
                                      1.0 / 720,
                                      1.0 / 5040,
                                      1.0 / 40320,
                                      1.0 / 362880,
                                      1.0 / 3628800,
                                      1.0 / 39916800,
                                      1.0 / 479001600};
template <typename T>
struct ExpConsts;
template <>
struct ExpConsts<double> {
    using U = uint64_t;
    static constexpr double log2e = 1.4426950408889634;
    static constexpr double ln2_hi = 6.93147180369123816490e-01;  // 32 significant bits: k ln2_hi is exact
    static constexpr double ln2_lo = 1.90821492927058770002e-10;
    static constexpr double shifter = 6755399441055744.0;  // 1.5 * 2^52
    static constexpr int kMantissa = 52;
    static constexpr U kBias = 1023;
    static constexpr int kDegree = 12;
};
template <>
struct ExpConsts<float> {
    using U = uint32_t;
    static constexpr float log2e = 1.44269504f;
    static constexpr float ln2_hi = 0.693359375f;  // 9 significant bits
    static constexpr float ln2_lo = -2.12194440e-4f;
    static constexpr float shifter = 12582912.0f;  // 1.5 * 2^23
    static constexpr int kMantissa = 23;
    static constexpr U kBias = 127;
    static constexpr int kDegree = 7;
};

template <typename T>
EKD_INLINE T exp_nonpositive(T x) {
    using C = ExpConsts<T>;
    using U = typename C::U;
    const T t = x * C::log2e + C::shifter;
    const T k = t - C::shifter;
    const T r = (x - k * C::ln2_hi) - k * C::ln2_lo;
    // Horner: sum_i r^i / i!
    T p = T(kInvFactorial[C::kDegree]);
    for (int i = C::kDegree - 1; i >= 0; --i) p = p * r + T(kInvFactorial[i]);
    U tb, sb;
    std::memcpy(&tb, &t, sizeof(T));
    const T shifter = C::shifter;
    std::memcpy(&sb, &shifter, sizeof(T));
    const U scale_bits = (tb - sb + C::kBias) << C::kMantissa;  // (k + bias) in the exponent field
    T scale;
    std::memcpy(&scale, &scale_bits, sizeof(T));
    return p * scale;
}

// 1 if a >= lowest (or a is NaN), else 0: the sign bit of a - lowest. A comparison would be
// vectorised too, but GCC (with its default -ftrapping-math) keeps a compare-and-select in a
// loop with more than one of them as a branch, and then does not vectorise the loop at all.
template <typename T>
EKD_INLINE T not_below(T a, T lowest) {
    using U = typename ExpConsts<T>::U;
    const T diff = a - lowest, one = T(1);
    U bits, one_bits;
    std::memcpy(&bits, &diff, sizeof(T));
    std::memcpy(&one_bits, &one, sizeof(T));
    // all ones where the sign bit is clear; bits of 1.0 or of 0.0 (no int -> float conversion:
    // AVX2 has none for 64-bit integers)
    const U keep = (bits >> (8 * sizeof(T) - 1)) - U(1);
    const U out_bits = keep & one_bits;
    T out;
    std::memcpy(&out, &out_bits, sizeof(T));
    return out;
}

// The loops over the sensitivities take R pairs at a time: one pair's entries form a dependency
// chain (exp is ~10 dependent multiply-adds) over only N = 20 entries, so one pair at a time the
// kernel waits on latency; R independent chains fill the pipeline (measured 2x on the box).
constexpr int kRows = 4;

template <typename T, int R>
EKD_INLINE void forward_rows(const T* __restrict r, const T* __restrict inv_mu, const T* __restrict sm2, int64_t N,
                             T hard, T lowest, T* __restrict out, int64_t p) {
    T cut[R], inv_r[R];
    for (int k = 0; k < R; ++k) {
        cut[k] = cos_cutoff(r[p + k], hard);
        inv_r[k] = T(1) / r[p + k];
    }
    T* __restrict o = out + p * N;
    // ivdep: the R rows and the scratch rows never overlap (GCC would need more run-time alias
    // checks than it allows and leave the loop scalar)
#pragma GCC ivdep
    for (int64_t n = 0; n < N; ++n) {
#pragma GCC unroll 8
        for (int k = 0; k < R; ++k) {
            const T d = inv_r[k] - inv_mu[n];
            const T a = T(-0.5) * ((d * d) / sm2[n]);
            // `a < lowest` is false for NaN, so NaN propagates as through torch's clamp
            o[k * N + n] = exp_nonpositive(a < lowest ? lowest : a) * cut[k];
        }
    }
}

template <typename T>
EKD_INLINE void forward_pairs_impl(const T* r, const T* inv_mu, const T* sm2, int64_t N, T hard, T lowest, T* out,
                                   int64_t p0, int64_t p1) {
    int64_t p = p0;
    for (; p + kRows <= p1; p += kRows) forward_rows<T, kRows>(r, inv_mu, sm2, N, hard, lowest, out, p);
    for (; p < p1; ++p) forward_rows<T, 1>(r, inv_mu, sm2, N, hard, lowest, out, p);
}

// The backward of R pairs from p: grad_r[p + k] (if grad_r), and for the parameter gradients (if
// kParams) acc_d[n] += dL/dd and acc_dd[n] += dL/dnondim * d^2 pair after pair, with
// d = 1/r - 1/mu_n and nondim = d^2 / sigma^-2 (zero where exp's argument was clamped, as torch's
// clamp backward). buf: 3 R N scratch numbers.
template <typename T, int R, bool kParams>
EKD_INLINE void backward_rows(const T* __restrict g, const T* __restrict r, const T* __restrict inv_mu,
                              const T* __restrict sm2, int64_t N, T hard, T lowest, T* __restrict grad_r,
                              double* __restrict acc_d, double* __restrict acc_dd, T* __restrict buf, int64_t p) {
    T* __restrict ge = buf;          // [R, N] g * exp(...): its sum multiplies d cut / dr
    T* __restrict gd = buf + R * N;  // [R, N] gradient wrt d = 1/r - 1/mu
    T* __restrict gn = buf + 2 * R * N;  // [R, N] gradient wrt nondim (kParams only)
    T x[R], inside[R], cs[R], cut[R], inv_r[R];
    for (int k = 0; k < R; ++k) {
        const T rp = r[p + k];
        x[k] = T(kHalfPi) * rp / hard;
        inside[k] = T(rp <= hard);
        cs[k] = std::cos(x[k]);
        cut[k] = cs[k] * cs[k] * inside[k];
        inv_r[k] = T(1) / rp;
    }
    const T* __restrict gp = g + p * N;
    // Products in the order of the chain rule torch's autograd applies to hippynn's expression:
    // where the two terms of grad_r nearly cancel, that keeps float64 results within ~1e-13 (of
    // the gradient's scale) of the ATen formula's.
    // ivdep: the R rows and the scratch rows never overlap (GCC would need more run-time alias
    // checks than it allows and leave the loop scalar)
#pragma GCC ivdep
    for (int64_t n = 0; n < N; ++n) {
#pragma GCC unroll 8
        for (int k = 0; k < R; ++k) {
            const T gk = gp[k * N + n];
            const T d = inv_r[k] - inv_mu[n];
            const T a = T(-0.5) * ((d * d) / sm2[n]);
            const T e = exp_nonpositive(a < lowest ? lowest : a);
            ge[k * N + n] = gk * e;
            // gradient wrt nondim, times 0 where the clamp was active (a < lowest)
            const T ga = gk * cut[k] * e * not_below(a, lowest) * T(-0.5);
            gd[k * N + n] = ga / sm2[n] * (T(2) * d);
            if (kParams) gn[k * N + n] = ga;
        }
    }
    // in a loop of its own: read-modify-writes of acc_* in the loop above keep it from vectorising
    if (kParams) {
        for (int64_t n = 0; n < N; ++n) {
            for (int k = 0; k < R; ++k) {
                const double d = double(inv_r[k] - inv_mu[n]);
                acc_d[n] += double(gd[k * N + n]);
                acc_dd[n] += double(gn[k * N + n]) * d * d;
            }
        }
    }
    if (grad_r == nullptr) return;
    for (int k = 0; k < R; ++k) {
        T sum_ge = 0, sum_gd = 0;
        for (int64_t n = 0; n < N; ++n) {
            sum_ge += ge[k * N + n];
            sum_gd += gd[k * N + n];
        }
        // d(1/r)/dr = -1/r^2; d cut/dr = 2 cos(x) * -sin(x) * (pi/2) / hard (inside the cutoff)
        const T rp = r[p + k];
        const T via_base = sum_gd * -(T(1) / (rp * rp));
        const T via_cut = sum_ge * inside[k] * (T(2) * cs[k]) * -std::sin(x[k]) / hard * T(kHalfPi);
        grad_r[p + k] = via_base + via_cut;
    }
}

template <typename T, bool kParams>
EKD_INLINE void backward_pairs_impl(const T* g, const T* r, const T* inv_mu, const T* sm2, int64_t N, T hard,
                                    T lowest, T* grad_r, double* acc_d, double* acc_dd, T* buf, int64_t p0,
                                    int64_t p1) {
    int64_t p = p0;
    for (; p + kRows <= p1; p += kRows) {
        backward_rows<T, kRows, kParams>(g, r, inv_mu, sm2, N, hard, lowest, grad_r, acc_d, acc_dd, buf, p);
    }
    for (; p < p1; ++p) backward_rows<T, 1, kParams>(g, r, inv_mu, sm2, N, hard, lowest, grad_r, acc_d, acc_dd, buf, p);
}

// The loops above compiled for AVX2+FMA and for baseline x86-64, chosen at load time.
#define EKD_RADIAL_KERNELS(T)                                                                                      \
    EKD_CLONES void forward_pairs(const T* r, const T* inv_mu, const T* sm2, int64_t N, T hard, T lowest,   \
                                         T* out, int64_t p0, int64_t p1) {                                         \
        forward_pairs_impl<T>(r, inv_mu, sm2, N, hard, lowest, out, p0, p1);                                       \
    }                                                                                                              \
    EKD_CLONES void backward_pairs(const T* g, const T* r, const T* inv_mu, const T* sm2, int64_t N, T hard, \
                                          T lowest, T* grad_r, double* acc_d, double* acc_dd, T* buf, int64_t p0,  \
                                          int64_t p1) {                                                            \
        if (acc_d != nullptr) {                                                                                    \
            backward_pairs_impl<T, true>(g, r, inv_mu, sm2, N, hard, lowest, grad_r, acc_d, acc_dd, buf, p0, p1);  \
        } else {                                                                                                   \
            backward_pairs_impl<T, false>(g, r, inv_mu, sm2, N, hard, lowest, grad_r, acc_d, acc_dd, buf, p0, p1); \
        }                                                                                                          \
    }
EKD_RADIAL_KERNELS(float)
EKD_RADIAL_KERNELS(double)
#undef EKD_RADIAL_KERNELS

// ------------------------------------------------------------------------------------------------
// Second order (force training): D = ds/dr and the gradients of sum(gD * D). With A the clamped
// exp argument (dA/d arg = pass, 0 or 1), u = dA/dr = pass d sigma^2 / r^2, C the cutoff factor:
//   D = E (u C + C'),  dD/dq = dA/dq (u C + C') E + E (du/dq C + [q = r] (u C' + C''))
// for q in r, mu, sigma (C depends on r only):
//   du/dr = pass sigma^2 (-1/r^4 - 2 d / r^3),  dA/dmu = -pass d sigma^2 / mu^2,
//   du/dmu = pass sigma^2 / (r^2 mu^2),  dA/dsigma = -pass d^2 sigma,  du/dsigma = 2 pass sigma d / r^2.

template <typename T>
struct PairCut {
    T c, c1, c2;  // C, dC/dr, d2C/dr2
    PairCut(T rp, T hard) {
        const T k = T(kHalfPi) / hard;
        const T x = T(kHalfPi) * rp / hard;
        const T in = T(rp <= hard);
        const T cs = std::cos(x), sn = std::sin(x);
        c = cs * cs * in;
        c1 = T(-2) * k * cs * sn * in;
        c2 = T(-2) * k * k * (cs * cs - sn * sn) * in;
    }
};

template <typename T>
EKD_INLINE void dr_forward_impl(const T* __restrict r, const T* __restrict inv_mu, const T* __restrict sm2,
                                const T* __restrict sig2, int64_t N, T hard, T lowest, T* __restrict out, int64_t p0,
                                int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
        const T rp = r[p];
        const PairCut<T> cut(rp, hard);
        const T inv_r = T(1) / rp, inv_r2 = inv_r * inv_r;
        T* __restrict o = out + p * N;
#pragma GCC ivdep
        for (int64_t n = 0; n < N; ++n) {
            const T d = inv_r - inv_mu[n];
            const T a = T(-0.5) * ((d * d) / sm2[n]);
            const T e = exp_nonpositive(a < lowest ? lowest : a);
            const T u = not_below(a, lowest) * d * sig2[n] * inv_r2;
            o[n] = e * (u * cut.c + cut.c1);
        }
    }
}

// buf: 3 N scratch numbers; acc_mu / acc_sigma: null unless the parameter gradients are wanted.
template <typename T>
EKD_INLINE void dr_backward_impl(const T* __restrict g, const T* __restrict r, const T* __restrict inv_mu,
                                 const T* __restrict sm2, const T* __restrict sig2, const T* __restrict sigma,
                                 int64_t N, T hard, T lowest, T* __restrict grad_r, double* __restrict acc_mu,
                                 double* __restrict acc_sigma, T* __restrict buf, int64_t p0, int64_t p1) {
    T* __restrict br = buf;
    T* __restrict bm = buf + N;
    T* __restrict bs = buf + 2 * N;
    for (int64_t p = p0; p < p1; ++p) {
        const T rp = r[p];
        const PairCut<T> cut(rp, hard);
        const T inv_r = T(1) / rp, inv_r2 = inv_r * inv_r;
        const T* __restrict gp = g + p * N;
#pragma GCC ivdep
        for (int64_t n = 0; n < N; ++n) {
            const T d = inv_r - inv_mu[n];
            const T a = T(-0.5) * ((d * d) / sm2[n]);
            const T e = exp_nonpositive(a < lowest ? lowest : a);
            const T pass = not_below(a, lowest);
            const T s2 = sig2[n], im2 = inv_mu[n] * inv_mu[n];
            const T u = pass * d * s2 * inv_r2;
            const T common = e * (u * cut.c + cut.c1);
            const T du_dr = pass * s2 * (-inv_r2 * inv_r2 - T(2) * d * inv_r2 * inv_r);
            br[n] = gp[n] * (u * common + e * (du_dr * cut.c + u * cut.c1 + cut.c2));
            bm[n] = gp[n] * (-pass * d * s2 * im2 * common + e * (pass * s2 * inv_r2 * im2) * cut.c);
            bs[n] = gp[n] * (-pass * d * d * sigma[n] * common + e * (T(2) * pass * sigma[n] * d * inv_r2) * cut.c);
        }
        if (grad_r != nullptr) {
            T sum = 0;
            for (int64_t n = 0; n < N; ++n) sum += br[n];
            grad_r[p] = sum;
        }
        if (acc_mu != nullptr) {
            for (int64_t n = 0; n < N; ++n) {
                acc_mu[n] += double(bm[n]);
                acc_sigma[n] += double(bs[n]);
            }
        }
    }
}

#define EKD_RADIAL_DR_KERNELS(T)                                                                                    \
    EKD_CLONES void dr_forward(const T* r, const T* inv_mu, const T* sm2, const T* sig2, int64_t N, T hard,  \
                                      T lowest, T* out, int64_t p0, int64_t p1) {                                   \
        dr_forward_impl<T>(r, inv_mu, sm2, sig2, N, hard, lowest, out, p0, p1);                                     \
    }                                                                                                               \
    EKD_CLONES void dr_backward(const T* g, const T* r, const T* inv_mu, const T* sm2, const T* sig2,        \
                                       const T* sigma, int64_t N, T hard, T lowest, T* grad_r, double* acc_mu,      \
                                       double* acc_sigma, T* buf, int64_t p0, int64_t p1) {                         \
        dr_backward_impl<T>(g, r, inv_mu, sm2, sig2, sigma, N, hard, lowest, grad_r, acc_mu, acc_sigma, buf, p0, p1); \
    }
EKD_RADIAL_DR_KERNELS(float)
EKD_RADIAL_DR_KERNELS(double)
#undef EKD_RADIAL_DR_KERNELS

// ------------------------------------------------------------------------------------------------
// Entry points

// The forward ops: checked, contiguous inputs, a [P, N] output and pair chunks on the threads (per-pair
// outputs: the chunking cannot change a result). kernel(r, widths, N, hard, lowest, out, p0, p1)
// calls one of the cloned loops above.
template <typename Kernel>
at::Tensor forward_entry(const char* op, const at::Tensor& dist_in, const at::Tensor& mu_in, const at::Tensor& sigma_in,
                         double hard_max, int64_t work_per_entry, const Kernel& kernel) {
    check_radial_args(op, dist_in, mu_in, sigma_in, hard_max);
    const at::Tensor dist = dist_in.contiguous(), mu = mu_in.contiguous(), sigma = sigma_in.contiguous();
    const int64_t P = dist.size(0), N = mu.size(-1);
    at::Tensor out = at::empty({P, N}, dist.options());
    if (P == 0 || N == 0) return out;
    dispatch_float(dist, [&](auto tag) {
        using T = decltype(tag);
        const Widths<T> w(mu.data_ptr<T>(), sigma.data_ptr<T>(), N);
        const T lowest = Clamp<T>(dist.scalar_type()).lowest;
        const T* r = dist.data_ptr<T>();
        T* o = out.data_ptr<T>();
        const ParallelPlan plan = parallel_plan(P * N * work_per_entry, P);
        run_chunks(plan.chunks, plan.threads, [&](int64_t c) {
            const FlushSubnormals ftz;
            kernel(r, w, N, static_cast<T>(hard_max), lowest, o, P * c / plan.chunks, P * (c + 1) / plan.chunks);
        });
    });
    return out;
}

at::Tensor radial_sensitivity_cpu(const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma,
                                  double hard_max) {
    return forward_entry(kOp, dist, mu, sigma, hard_max, kWorkPerEntry,
                         [](const auto* r, const auto& w, int64_t N, auto hard, auto lowest, auto* o, int64_t p0,
                            int64_t p1) { forward_pairs(r, w.inv_mu.data(), w.sm2.data(), N, hard, lowest, o, p0, p1); });
}

// What the two backward entry points share: checked, contiguous inputs, the gradient wrt dist if
// asked for, and a chunking of the pairs fixed by the problem size (never by the thread count), so
// the per-chunk partial sums over pairs (for the mu and sigma gradients), reduced in chunk order,
// are reproducible.
struct BackwardPlan {
    at::Tensor grad, dist, mu, sigma, grad_r;
    int64_t P, N, K, threads;
    bool params;
    std::vector<double> partial;  // [K][2 N]: two sums over each chunk's pairs per sensitivity

    BackwardPlan(const char* op, const at::Tensor& grad_in, const at::Tensor& dist_in, const at::Tensor& mu_in,
                 const at::Tensor& sigma_in, double hard_max, std::array<bool, 3> mask, int64_t work_per_entry) {
        check_backward_args(grad_in, dist_in, mu_in, sigma_in, hard_max, op);
        grad = grad_in.contiguous(), dist = dist_in.contiguous(), mu = mu_in.contiguous(), sigma = sigma_in.contiguous();
        P = dist.size(0), N = mu.size(-1);
        if (mask[0]) grad_r = at::empty({P}, dist.options());
        params = mask[1] || mask[2];
        const int64_t work = P * N * work_per_entry;
        K = params ? chunks_for(work, std::max<int64_t>(P, 1)) : parallel_plan(work, P).chunks;
        threads = parallel_plan(work, P).threads;
        partial.assign(params ? 2 * K * N : 0, 0.0);
    }
    double* chunk_sums(int64_t c) { return params ? partial.data() + 2 * c * N : nullptr; }
    // The chunks' sums, added in chunk order: (first sums [N], second sums [N]).
    std::array<std::vector<double>, 2> sums() const {
        std::array<std::vector<double>, 2> out{std::vector<double>(N, 0.0), std::vector<double>(N, 0.0)};
        for (int64_t c = 0; c < K; ++c) {
            for (int64_t n = 0; n < N; ++n) {
                out[0][n] += partial[2 * c * N + n];
                out[1][n] += partial[2 * c * N + N + n];
            }
        }
        return out;
    }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& dist_in, const at::Tensor& mu_in, const at::Tensor& sigma_in,
    double hard_max, std::array<bool, 3> mask) {
    BackwardPlan b(kBackOp, grad_in, dist_in, mu_in, sigma_in, hard_max, mask, kWorkPerEntry);
    const at::Tensor &grad = b.grad, &dist = b.dist, &mu = b.mu, &sigma = b.sigma;
    const int64_t P = b.P, N = b.N, K = b.K;
    const bool params = b.params;
    at::Tensor grad_r = b.grad_r, grad_mu, grad_sigma;
    if (!mask[0] && !params) return {grad_r, grad_mu, grad_sigma};
    dispatch_float(dist, [&](auto tag) {
        using T = decltype(tag);
        const T* mup = mu.data_ptr<T>();
        const T* sgp = sigma.data_ptr<T>();
        const Widths<T> w(mup, sgp, N);
        const T lowest = Clamp<T>(dist.scalar_type()).lowest;
        const T* r = dist.data_ptr<T>();
        const T* g = grad.data_ptr<T>();
        T* gr = mask[0] ? grad_r.data_ptr<T>() : nullptr;
        const T hard = static_cast<T>(hard_max);
        if (P > 0) {
            run_chunks(K, b.threads, [&](int64_t c) {
                const int64_t p0 = P * c / K, p1 = P * (c + 1) / K;
                const FlushSubnormals ftz;
                std::vector<T> buf(3 * kRows * N);
                double* acc = b.chunk_sums(c);
                backward_pairs(g, r, w.inv_mu.data(), w.sm2.data(), N, hard, lowest, gr, acc, params ? acc + N : nullptr,
                               buf.data(), p0, p1);
            });
        }
        if (!params) return;
        const auto sums = b.sums();
        const std::vector<double>&sum_d = sums[0], &sum_dd = sums[1];
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

constexpr const char* kDrOp = "ekd::radial_sensitivity_dr";
constexpr const char* kDrBackOp = "ekd::radial_sensitivity_dr_backward";

at::Tensor radial_sensitivity_dr_cpu(const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma,
                                     double hard_max) {
    return forward_entry(kDrOp, dist, mu, sigma, hard_max, 2 * kWorkPerEntry,
                         [](const auto* r, const auto& w, int64_t N, auto hard, auto lowest, auto* o, int64_t p0,
                            int64_t p1) {
                             dr_forward(r, w.inv_mu.data(), w.sm2.data(), w.sig2.data(), N, hard, lowest, o, p0, p1);
                         });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_dr_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& dist_in, const at::Tensor& mu_in, const at::Tensor& sigma_in,
    double hard_max, std::array<bool, 3> mask) {
    BackwardPlan b(kDrBackOp, grad_in, dist_in, mu_in, sigma_in, hard_max, mask, 3 * kWorkPerEntry);
    const at::Tensor &grad = b.grad, &dist = b.dist, &mu = b.mu, &sigma = b.sigma;
    const int64_t P = b.P, N = b.N, K = b.K;
    const bool params = b.params;
    at::Tensor grad_r = b.grad_r, grad_mu, grad_sigma;
    if (!mask[0] && !params) return {grad_r, grad_mu, grad_sigma};
    dispatch_float(dist, [&](auto tag) {
        using T = decltype(tag);
        const T* sg = sigma.data_ptr<T>();
        const Widths<T> w(mu.data_ptr<T>(), sg, N);
        const T lowest = Clamp<T>(dist.scalar_type()).lowest;
        T* gr = mask[0] ? grad_r.data_ptr<T>() : nullptr;
        if (P > 0) {
            run_chunks(K, b.threads, [&](int64_t c) {
                const FlushSubnormals ftz;
                std::vector<T> buf(3 * N);
                double* acc = b.chunk_sums(c);
                dr_backward(grad.data_ptr<T>(), dist.data_ptr<T>(), w.inv_mu.data(), w.sm2.data(), w.sig2.data(), sg, N,
                            static_cast<T>(hard_max), lowest, gr, acc, params ? acc + N : nullptr, buf.data(),
                            P * c / K, P * (c + 1) / K);
            });
        }
        if (!params) return;
        const auto sums = b.sums();
        if (mask[1]) grad_mu = at::empty(mu.sizes(), mu.options());
        if (mask[2]) grad_sigma = at::empty(sigma.sizes(), sigma.options());
        for (int64_t n = 0; n < N; ++n) {
            if (mask[1]) grad_mu.data_ptr<T>()[n] = static_cast<T>(sums[0][n]);
            if (mask[2]) grad_sigma.data_ptr<T>()[n] = static_cast<T>(sums[1][n]);
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

// ds/dr and its backward have the shapes of s and of its backward; the messages name the dr ops
at::Tensor radial_sensitivity_dr_meta(const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma,
                                      double hard_max) {
    check_radial_args(kDrOp, dist, mu, sigma, hard_max);
    return at::empty_symint(radial_shape(dist, mu), dist.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> radial_sensitivity_dr_backward_meta(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& mu, const at::Tensor& sigma, double hard_max,
    std::array<bool, 3> mask) {
    check_backward_args(grad, dist, mu, sigma, hard_max, kDrBackOp);
    return radial_sensitivity_backward_meta(grad, dist, mu, sigma, hard_max, mask);
}

}  // namespace
}  // namespace ekd

TORCH_LIBRARY_IMPL(ekd, CPU, m) {
    m.impl("radial_sensitivity", &ekd::radial_sensitivity_cpu);
    m.impl("radial_sensitivity_backward", &ekd::radial_sensitivity_backward_cpu);
    m.impl("radial_sensitivity_dr", &ekd::radial_sensitivity_dr_cpu);
    m.impl("radial_sensitivity_dr_backward", &ekd::radial_sensitivity_dr_backward_cpu);
}

TORCH_LIBRARY_IMPL(ekd, Meta, m) {
    m.impl("radial_sensitivity", &ekd::radial_sensitivity_meta);
    m.impl("radial_sensitivity_backward", &ekd::radial_sensitivity_backward_meta);
    m.impl("radial_sensitivity_dr", &ekd::radial_sensitivity_dr_meta);
    m.impl("radial_sensitivity_dr_backward", &ekd::radial_sensitivity_dr_backward_meta);
}
