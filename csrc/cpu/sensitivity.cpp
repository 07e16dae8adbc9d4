// CPU (and Meta) kernels of the HIPNN interaction ops: envsum, sensesum, featsum (hippynn's
// semantics, see hippynn/custom_kernels/env_pytorch.py) and the factorised tensor pair
// tensor_envsum / tensor_sensesum (csrc/register.cpp gives the formulas).
//
// Design:
// * No races, no atomics, deterministic: every op that scatters onto atoms first groups the pairs
//   by their destination atom with a stable counting sort (O(P + A)); each output row is then
//   owned by one thread and accumulated in input pair order, so the result does not depend on the
//   number of threads. Per-pair outputs (sensesum, tensor_sensesum) need no grouping.
// * Threads split the destination atoms into chunks of equal *pair* count (not atom count), so
//   a periodic box and a batch of small molecules load-balance alike.
// * The inner loops are register-blocked (several output rows x one SIMD-wide column chunk kept
//   in registers across the pair loop) and compiled twice (x86-64-v3, i.e. AVX2+FMA, and baseline x86-64, chosen at
//   load time by GCC's target_clones), so the library runs on any x86-64 but uses AVX2 where there is.
// * Never materialises pairs x sensitivities x features (hippynn's pure-torch kernels do): memory
//   is the output plus O(P + A) indices.
#include "ekd/sensitivity.hpp"

#include "ekd/cpu_kernels.hpp"

#include "ekd/parallel.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

namespace ekd {
namespace {

// ------------------------------------------------------------------------------------------------
// Pair grouping

// Pairs grouped by a destination atom: the pairs of atom a are order[ptr[a] .. ptr[a+1]), in
// input order (stable), so sums over them are reproducible.
struct Groups {
    std::vector<int64_t> ptr;    // [A + 1]
    std::vector<int64_t> order;  // [P]
};

Groups group_pairs(const char* op, const char* name, const int64_t* idx, int64_t n_pairs, int64_t n_atoms) {
    Groups g;
    g.ptr.assign(n_atoms + 1, 0);
    for (int64_t p = 0; p < n_pairs; ++p) {
        const int64_t a = idx[p];
        TORCH_CHECK(a >= 0 && a < n_atoms, op, ": `", name, "` entries must lie in [0, ", n_atoms,
                    ") (the number of atoms), got ", a, " at pair ", p);
        g.ptr[a + 1] += 1;
    }
    for (int64_t a = 0; a < n_atoms; ++a) g.ptr[a + 1] += g.ptr[a];
    g.order.resize(n_pairs);
    std::vector<int64_t> next(g.ptr.begin(), g.ptr.end() - 1);
    for (int64_t p = 0; p < n_pairs; ++p) g.order[next[idx[p]]++] = p;
    return g;
}

void check_index_range(const char* op, const char* name, const int64_t* idx, int64_t n_pairs, int64_t n_atoms) {
    for (int64_t p = 0; p < n_pairs; ++p) {
        TORCH_CHECK(idx[p] >= 0 && idx[p] < n_atoms, op, ": `", name, "` entries must lie in [0, ", n_atoms,
                    ") (the number of atoms), got ", idx[p], " at pair ", p);
    }
}

// Splits the atoms into k consecutive ranges of roughly equal pair count: [bounds[c], bounds[c+1]).
std::vector<int64_t> chunk_bounds(const Groups& g, int64_t k) {
    const int64_t n_atoms = static_cast<int64_t>(g.ptr.size()) - 1;
    const int64_t n_pairs = g.ptr.back();
    std::vector<int64_t> bounds(k + 1, n_atoms);
    bounds[0] = 0;
    for (int64_t c = 1; c < k; ++c) {
        const int64_t target = n_pairs * c / k;
        bounds[c] = std::lower_bound(g.ptr.begin(), g.ptr.end(), target) - g.ptr.begin();
        bounds[c] = std::min(n_atoms, std::max(bounds[c], bounds[c - 1]));
    }
    return bounds;
}

// Runs body(a0, a1) over the atoms (pairs grouped by atom) in chunks of roughly equal pair count.
template <typename Body>
void for_atom_chunks(const Groups& g, int64_t work_per_pair, const Body& body) {
    const int64_t n_atoms = static_cast<int64_t>(g.ptr.size()) - 1;
    const ParallelPlan plan = parallel_plan(g.ptr.back() * work_per_pair, n_atoms);
    if (plan.threads == 1 || plan.chunks == 1) {
        body(0, n_atoms);
        return;
    }
    const std::vector<int64_t> bounds = chunk_bounds(g, plan.chunks);
    run_chunks(plan.chunks, plan.threads, [&](int64_t c) { body(bounds[c], bounds[c + 1]); });
}

// Runs body(p0, p1) over consecutive pair ranges.
template <typename Body>
void for_pairs(int64_t n_pairs, int64_t work_per_pair, const Body& body) {
    const ParallelPlan plan = parallel_plan(n_pairs * work_per_pair, n_pairs);
    run_chunks(plan.chunks, plan.threads, [&](int64_t c) {
        body(n_pairs * c / plan.chunks, n_pairs * (c + 1) / plan.chunks);
    });
}

}  // namespace

ParallelPlan parallel_plan(int64_t work, int64_t units) {
    const int64_t threads = threads_for(work, at::in_parallel_region() ? 1 : at::get_num_threads());
    return {threads, threads == 1 ? 1 : chunks_for(work, units)};
}

namespace {

// ------------------------------------------------------------------------------------------------
// Micro-kernels, written with GCC/Clang vector extensions: Vec<T> is 256 bits (one AVX register in
// the haswell clone, two SSE registers in the baseline one). Left to itself the auto-vectoriser
// vectorised the register blocks along the wrong axis (shuffles everywhere, ~1 GFLOP/s).

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
    typedef float type __attribute__((vector_size(32)));
    typedef float unaligned __attribute__((vector_size(32), aligned(4), may_alias));
};
template <>
struct VecOf<double> {
    typedef double type __attribute__((vector_size(32)));
    typedef double unaligned __attribute__((vector_size(32), aligned(8), may_alias));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int kL = 32 / sizeof(T);  // lanes per Vec

template <typename T>
EKD_INLINE Vec<T> vload(const T* p) {
    return *reinterpret_cast<const typename VecOf<T>::unaligned*>(p);
}
template <typename T>
EKD_INLINE void vstore(T* p, Vec<T> v) {
    *reinterpret_cast<typename VecOf<T>::unaligned*>(p) = v;
}
template <typename T>
EKD_INLINE Vec<T> vsplat(T s) {
    return Vec<T>{} + s;
}
template <typename T>
EKD_INLINE T vsum(Vec<T> v) {
    T s = 0;
    for (int l = 0; l < kL<T>; ++l) s += v[l];
    return s;
}

// out[r, :] (r < R, row stride F) = sum over the listed pairs of s[p*N + r] * z[second[p]*F + :].
// R rows x 2 vectors of accumulators stay in registers over the whole pair loop.
template <typename T, int R>
EKD_INLINE void outer_rows(const T* s, int64_t N, const T* z, int64_t F, const int64_t* second,
                           const int64_t* pairs, int64_t np, T* out) {
    constexpr int L = kL<T>;
    int64_t f = 0;
    for (; f + 2 * L <= F; f += 2 * L) {
        Vec<T> acc[R][2];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec<T>{};
        for (int64_t q = 0; q < np; ++q) {
            const int64_t p = pairs[q];
            const T* zr = z + second[p] * F + f;
            const Vec<T> z0 = vload(zr), z1 = vload(zr + L);
            const T* sr = s + p * N;
            for (int r = 0; r < R; ++r) {
                const Vec<T> sv = vsplat(sr[r]);
                acc[r][0] += sv * z0;
                acc[r][1] += sv * z1;
            }
        }
        for (int r = 0; r < R; ++r) {
            vstore(out + r * F + f, acc[r][0]);
            vstore(out + r * F + f + L, acc[r][1]);
        }
    }
    for (; f < F; ++f) {
        T acc[R] = {};
        for (int64_t q = 0; q < np; ++q) {
            const int64_t p = pairs[q];
            const T zv = z[second[p] * F + f];
            for (int r = 0; r < R; ++r) acc[r] += s[p * N + r] * zv;
        }
        for (int r = 0; r < R; ++r) out[r * F + f] = acc[r];
    }
}

// out[r] = sum_f rows[r*F + f] * z[f] for r < R; lane-parallel partial sums, fixed summation order.
template <typename T, int R>
EKD_INLINE void dot_rows(const T* rows, int64_t F, const T* z, T* out) {
    constexpr int L = kL<T>;
    Vec<T> acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec<T>{};
    int64_t f = 0;
    for (; f + 2 * L <= F; f += 2 * L) {
        const Vec<T> z0 = vload(z + f), z1 = vload(z + f + L);
        for (int r = 0; r < R; ++r) {
            acc[r][0] += vload(rows + r * F + f) * z0;
            acc[r][1] += vload(rows + r * F + f + L) * z1;
        }
    }
    for (int r = 0; r < R; ++r) {
        T tail = 0;
        for (int64_t g = f; g < F; ++g) tail += rows[r * F + g] * z[g];
        out[r] = vsum<T>(acc[r][0] + acc[r][1]) + tail;
    }
}

template <typename T>
EKD_INLINE void dot_all_rows(const T* rows, int64_t N, int64_t F, const T* z, T* out) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) dot_rows<T, 4>(rows + n * F, F, z, out + n);
    for (; n < N; ++n) dot_rows<T, 1>(rows + n * F, F, z, out + n);
}

// y[0:F] = sum_n c[n] * rows[n*F + 0:F]   (4 vectors of columns kept in registers over n)
template <typename T>
EKD_INLINE void combine_rows(const T* c, const T* rows, int64_t N, int64_t F, T* y) {
    constexpr int L = kL<T>;
    int64_t f = 0;
    // 8 independent accumulator chains hide the FMA latency (4 did not: ~0.8 FMA per cycle)
    for (; f + 8 * L <= F; f += 8 * L) {
        Vec<T> acc[8] = {};
        for (int64_t n = 0; n < N; ++n) {
            const Vec<T> cv = vsplat(c[n]);
            const T* r = rows + n * F + f;
            for (int k = 0; k < 8; ++k) acc[k] += cv * vload(r + k * L);
        }
        for (int k = 0; k < 8; ++k) vstore(y + f + k * L, acc[k]);
    }
    for (; f + 4 * L <= F; f += 4 * L) {
        Vec<T> acc[4] = {};
        for (int64_t n = 0; n < N; ++n) {
            const Vec<T> cv = vsplat(c[n]);
            const T* r = rows + n * F + f;
            for (int k = 0; k < 4; ++k) acc[k] += cv * vload(r + k * L);
        }
        for (int k = 0; k < 4; ++k) vstore(y + f + k * L, acc[k]);
    }
    for (; f + L <= F; f += L) {
        Vec<T> acc{};
        for (int64_t n = 0; n < N; ++n) acc += vsplat(c[n]) * vload(rows + n * F + f);
        vstore(y + f, acc);
    }
    for (; f < F; ++f) {
        T acc = 0;
        for (int64_t n = 0; n < N; ++n) acc += c[n] * rows[n * F + f];
        y[f] = acc;
    }
}

// combine_rows over the listed rows only: y[0:F] = sum_m c[n_m] * rows[n_m*F + 0:F] (n_m = nz[m],
// m < k), in list order, with the same blocking.
template <typename T>
EKD_INLINE void combine_listed_rows(const T* c, const T* rows, const int64_t* nz, int64_t k, int64_t F, T* y) {
    constexpr int L = kL<T>;
    int64_t f = 0;
    for (; f + 8 * L <= F; f += 8 * L) {
        Vec<T> acc[8] = {};
        for (int64_t m = 0; m < k; ++m) {
            const Vec<T> cv = vsplat(c[nz[m]]);
            const T* r = rows + nz[m] * F + f;
            for (int u = 0; u < 8; ++u) acc[u] += cv * vload(r + u * L);
        }
        for (int u = 0; u < 8; ++u) vstore(y + f + u * L, acc[u]);
    }
    for (; f + 4 * L <= F; f += 4 * L) {
        Vec<T> acc[4] = {};
        for (int64_t m = 0; m < k; ++m) {
            const Vec<T> cv = vsplat(c[nz[m]]);
            const T* r = rows + nz[m] * F + f;
            for (int u = 0; u < 4; ++u) acc[u] += cv * vload(r + u * L);
        }
        for (int u = 0; u < 4; ++u) vstore(y + f + u * L, acc[u]);
    }
    for (; f + L <= F; f += L) {
        Vec<T> acc{};
        for (int64_t m = 0; m < k; ++m) acc += vsplat(c[nz[m]]) * vload(rows + nz[m] * F + f);
        vstore(y + f, acc);
    }
    for (; f < F; ++f) {
        T acc = 0;
        for (int64_t m = 0; m < k; ++m) acc += c[nz[m]] * rows[nz[m] * F + f];
        y[f] = acc;
    }
}

// y[0:F] += c * x[0:F]
template <typename T>
EKD_INLINE void axpy(T c, const T* x, int64_t F, T* y) {
    constexpr int L = kL<T>;
    const Vec<T> cv = vsplat(c);
    int64_t f = 0;
    for (; f + L <= F; f += L) vstore(y + f, vload(y + f) + cv * vload(x + f));
    for (; f < F; ++f) y[f] += c * x[f];
}

// ------------------------------------------------------------------------------------------------
// Per-atom / per-pair bodies, instantiated for float and double with CPU-specific clones.

// hippynn's sensitivities may be mostly exact zeros (its kernel harness: ~3 of n_nu per pair; a
// sensitivity with a hard cutoff per shell). Where they are, the envsum and featsum bodies add up
// only the non-zero terms. They add the same terms in the same order as the dense loops (a zero
// term adds nothing), so which path runs never changes a result. (Like hippynn's numba kernels,
// a skipped zero then also skips 0 * inf = NaN from a non-finite feature.)

// Number of non-zero sensitivities among the listed pairs (rows of N).
template <typename T>
EKD_INLINE int64_t count_nonzero(const T* s, int64_t N, const int64_t* pairs, int64_t np) {
    int64_t nnz = 0;
    for (int64_t q = 0; q < np; ++q) {
        const T* sr = s + pairs[q] * N;
        for (int64_t n = 0; n < N; ++n) nnz += sr[n] != T(0);
    }
    return nnz;
}

// Per destination atom: out[a] (N x F) = sum over its pairs p of s[p, :] (x) z[second[p], :].
// Dense: R = 4 output rows x 2 vectors of accumulators in registers over the pair loop. Sparse
// (fewer than about half the terms non-zero, where one read-modify-write of a cached output row
// per non-zero term costs less than the dense loop's 2 FMAs per term): the atom's block is zeroed
// and each non-zero term added to its row.
template <typename T>
EKD_INLINE void envsum_body(const T* sens, const T* feat, const int64_t* second, const Groups* g, int64_t N,
                            int64_t F, T* out, int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
        const int64_t* pairs = g->order.data() + g->ptr[a];
        const int64_t np = g->ptr[a + 1] - g->ptr[a];
        T* o = out + a * N * F;
        if (2 * (count_nonzero<T>(sens, N, pairs, np) + N) < np * N) {
            std::fill(o, o + N * F, T(0));
            for (int64_t q = 0; q < np; ++q) {
                const int64_t p = pairs[q];
                const T* sr = sens + p * N;
                const T* zr = feat + second[p] * F;
                for (int64_t n = 0; n < N; ++n) {
                    if (sr[n] != T(0)) axpy<T>(sr[n], zr, F, o + n * F);
                }
            }
            continue;
        }
        int64_t n = 0;
        for (; n + 4 <= N; n += 4) outer_rows<T, 4>(sens + n, N, feat, F, second, pairs, np, o + n * F);
        for (; n < N; ++n) outer_rows<T, 1>(sens + n, N, feat, F, second, pairs, np, o + n * F);
    }
}

// For the pairs of source atoms a0..a1 (grouped by pair_first, so env[i] stays in cache):
// out[second[p] - lo, :] += sense[p, :] @ env[i]   (out: this chunk's rows lo.. of the output).
// Only the rows of env[i] with a non-zero sensitivity are read (`nz`: scratch of N indices).
template <typename T>
EKD_INLINE void featsum_body(const T* env, const T* sense, const int64_t* second, const Groups* g, int64_t N,
                             int64_t F, T* out, int64_t lo, T* tmp, int64_t* nz, int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
        const T* e = env + a * N * F;
        for (int64_t q = g->ptr[a]; q < g->ptr[a + 1]; ++q) {
            const int64_t p = g->order[q];
            const T* sr = sense + p * N;
            int64_t k = 0;
            for (int64_t n = 0; n < N; ++n) {  // branch-free: the zeros fall anywhere
                nz[k] = n;
                k += sr[n] != T(0);
            }
            if (k == 0) continue;
            // one routine for any k (the index costs one load per row, next to F / 8 FMAs): a
            // second, dense one was compiled with a different rounding in its tail columns
            combine_listed_rows<T>(sr, e, nz, k, F, tmp);
            axpy<T>(T(1), tmp, F, out + (second[p] - lo) * F);
        }
    }
}

// sense[p, :] = env[first[p]] (N x F) @ feat[second[p]]
// (pairs grouped by pair_first, so env[i] stays in cache)
template <typename T>
EKD_INLINE void sensesum_body(const T* env, const T* feat, const int64_t* second, const Groups* g, int64_t N,
                              int64_t F, T* out, int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
        for (int64_t q = g->ptr[a]; q < g->ptr[a + 1]; ++q) {
            const int64_t p = g->order[q];
            dot_all_rows<T>(env + a * N * F, N, F, feat + second[p] * F, out + p * N);
        }
    }
}

// o[c, :] (c < R, row stride O) = sum over the listed pairs q of av[pairs[q]*C + c] * m[q*O + :],
// R rows x 2 vectors of accumulators in registers across the pair loop, stored once.
template <typename T, int R>
EKD_INLINE void outer_sum_rows(const T* av, int64_t C, const T* m, int64_t O, const int64_t* pairs, int64_t np,
                               T* o) {
    constexpr int L = kL<T>;
    int64_t f = 0;
    for (; f + 2 * L <= O; f += 2 * L) {
        Vec<T> acc[R][2];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec<T>{};
        for (int64_t q = 0; q < np; ++q) {
            const Vec<T> m0 = vload(m + q * O + f), m1 = vload(m + q * O + f + L);
            const T* ap = av + pairs[q] * C;
            for (int r = 0; r < R; ++r) {
                const Vec<T> sv = vsplat(ap[r]);
                acc[r][0] += sv * m0;
                acc[r][1] += sv * m1;
            }
        }
        for (int r = 0; r < R; ++r) {
            vstore(o + r * O + f, acc[r][0]);
            vstore(o + r * O + f + L, acc[r][1]);
        }
    }
    for (; f < O; ++f) {
        T acc[R] = {};
        for (int64_t q = 0; q < np; ++q)
            for (int r = 0; r < R; ++r) acc[r] += av[pairs[q] * C + r] * m[q * O + f];
        for (int r = 0; r < R; ++r) o[r * O + f] = acc[r];
    }
}

// out[a, c, :] = sum_{p in group a} a_[p, c] * (b[p, :] @ x[second[p]])   (x[j]: N x O)
// Two passes per atom: m[q] = b[p] @ x[j] for its pairs (into `m`, np x O, cache-resident), then
// the C outputs as register-blocked sums over the pairs, writing the output once instead of once
// per pair (with C = 20 that read-modify-write made the force-training backward 1.5x slower).
template <typename T>
EKD_INLINE void tensor_envsum_body(const T* av, const T* bv, const T* x, const int64_t* second, const Groups* g,
                                   int64_t C, int64_t N, int64_t O, T* out, std::vector<T>& m, int64_t a0,
                                   int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
        const int64_t* pairs = g->order.data() + g->ptr[a];
        const int64_t np = g->ptr[a + 1] - g->ptr[a];
        T* o = out + a * C * O;
        if (static_cast<int64_t>(m.size()) < np * O) m.resize(np * O);
        for (int64_t q = 0; q < np; ++q) {
            const int64_t p = pairs[q];
            combine_rows<T>(bv + p * N, x + second[p] * N * O, N, O, m.data() + q * O);
        }
        int64_t c = 0;
        if (C % 3 == 0) {  // C = 9 (l_max = 2): three passes of 3 rather than 4 + 4 + 1
            for (; c < C; c += 3) outer_sum_rows<T, 3>(av + c, C, m.data(), O, pairs, np, o + c * O);
        }
        for (; c + 4 <= C; c += 4) outer_sum_rows<T, 4>(av + c, C, m.data(), O, pairs, np, o + c * O);
        for (; c < C; ++c) outer_sum_rows<T, 1>(av + c, C, m.data(), O, pairs, np, o + c * O);
    }
}

// out[p, :] = x[second[p]] (N x O) @ (a_[p, :] @ y[first[p]])   (y[i]: C x O)
template <typename T>
EKD_INLINE void tensor_sensesum_body(const T* av, const T* y, const T* x, const int64_t* first, const int64_t* second,
                                     int64_t C, int64_t N, int64_t O, T* out, T* gbuf, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
        combine_rows<T>(av + p * C, y + first[p] * C * O, C, O, gbuf);
        dot_all_rows<T>(x + second[p] * N * O, N, O, gbuf, out + p * N);
    }
}

// The gradients of tensor_envsum with respect to a and b in one pass over the pairs (inference:
// forces without a graph). Separately they are tensor_sensesum(b, x, h, second, first) and
// tensor_sensesum(a, h, x, first, second), and each reads the neighbour's N x O block x[j] (10 KB
// for the paper's model) once per pair, from L2 or beyond; here the second use finds it in L1. Same
// primitives in the same order as those two calls, so the same bits.
template <typename T>
EKD_INLINE void tensor_envsum_grad_ab_body(const T* av, const T* bv, const T* x, const T* h, const int64_t* first,
                                           const int64_t* second, int64_t C, int64_t N, int64_t O, T* ga, T* gb,
                                           T* mbuf, T* gbuf, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
        const T* xj = x + second[p] * N * O;
        const T* hi = h + first[p] * C * O;
        combine_rows<T>(bv + p * N, xj, N, O, mbuf);    // b[p] @ x[j]
        dot_all_rows<T>(hi, C, O, mbuf, ga + p * C);    // grad a[p] = h[i] @ (b[p] @ x[j])
        combine_rows<T>(av + p * C, hi, C, O, gbuf);    // a[p] @ h[i]
        dot_all_rows<T>(xj, N, O, gbuf, gb + p * N);    // grad b[p] = x[j] @ (a[p] @ h[i])
    }
}

#define EKD_INSTANTIATE(T)                                                                                        \
    EKD_CLONES void envsum_run(const T* s, const T* z, const int64_t* sec, const Groups* g, int64_t N, int64_t F, \
                               T* out, int64_t a0, int64_t a1) {                                                  \
        envsum_body<T>(s, z, sec, g, N, F, out, a0, a1);                                                          \
    }                                                                                                             \
    EKD_CLONES void featsum_run(const T* e, const T* s, const int64_t* sec, const Groups* g, int64_t N,           \
                                int64_t F, T* out, int64_t lo, T* tmp, int64_t* nz, int64_t a0, int64_t a1) {     \
        featsum_body<T>(e, s, sec, g, N, F, out, lo, tmp, nz, a0, a1);                                            \
    }                                                                                                             \
    EKD_CLONES void sensesum_run(const T* e, const T* z, const int64_t* sec, const Groups* g, int64_t N,          \
                                 int64_t F, T* out, int64_t a0, int64_t a1) {                                     \
        sensesum_body<T>(e, z, sec, g, N, F, out, a0, a1);                                                        \
    }                                                                                                             \
    EKD_CLONES void tensor_envsum_run(const T* a, const T* b, const T* x, const int64_t* sec, const Groups* g,    \
                                      int64_t C, int64_t N, int64_t O, T* out, std::vector<T>& m, int64_t a0,     \
                                      int64_t a1) {                                                               \
        tensor_envsum_body<T>(a, b, x, sec, g, C, N, O, out, m, a0, a1);                                          \
    }                                                                                                             \
    EKD_CLONES void tensor_envsum_grad_ab_run(const T* a, const T* b, const T* x, const T* h, const int64_t* fi,   \
                                              const int64_t* sec, int64_t C, int64_t N, int64_t O, T* ga, T* gb,    \
                                              T* mb, T* gbf, int64_t p0, int64_t p1) {                              \
        tensor_envsum_grad_ab_body<T>(a, b, x, h, fi, sec, C, N, O, ga, gb, mb, gbf, p0, p1);                     \
    }                                                                                                             \
    EKD_CLONES void tensor_sensesum_run(const T* a, const T* y, const T* x, const int64_t* fi, const int64_t* sec, \
                                        int64_t C, int64_t N, int64_t O, T* out, T* gb, int64_t p0, int64_t p1) {  \
        tensor_sensesum_body<T>(a, y, x, fi, sec, C, N, O, out, gb, p0, p1);                                      \
    }

EKD_INSTANTIATE(float)
EKD_INSTANTIATE(double)
#undef EKD_INSTANTIATE

// ------------------------------------------------------------------------------------------------
// Op entry points (CPU)

at::IntArrayRef concrete(const std::vector<c10::SymInt>& s, std::vector<int64_t>& buf) {
    buf.clear();
    for (const auto& v : s) buf.push_back(v.expect_int());
    return buf;
}

at::Tensor envsum_cpu(const at::Tensor& sens_, const at::Tensor& feat_, const at::Tensor& first_,
                      const at::Tensor& second_) {
    std::vector<int64_t> shape;
    auto out = empty_output(concrete(envsum_shape(sens_, feat_, first_, second_), shape), sens_.options());
    auto sens = sens_.contiguous(), feat = feat_.contiguous();
    auto first = first_.contiguous(), second = second_.contiguous();
    const int64_t P = sens.size(0), N = sens.size(1), A = feat.size(0), F = feat.size(1);
    check_index_range("ekd::envsum", "pair_second", second.data_ptr<int64_t>(), P, A);
    const Groups g = group_pairs("ekd::envsum", "pair_first", first.data_ptr<int64_t>(), P, A);
    dispatch_float(sens, [&](auto tag) {
        using T = decltype(tag);
        const T* s = sens.data_ptr<T>();
        const T* z = feat.data_ptr<T>();
        const int64_t* sec = second.data_ptr<int64_t>();
        T* o = out.data_ptr<T>();
        for_atom_chunks(g, N * F, [&](int64_t a0, int64_t a1) { envsum_run(s, z, sec, &g, N, F, o, a0, a1); });
    });
    return out;
}

at::Tensor featsum_cpu(const at::Tensor& env_, const at::Tensor& sense_, const at::Tensor& first_,
                       const at::Tensor& second_) {
    std::vector<int64_t> shape;
    auto out = empty_output(concrete(featsum_shape(env_, sense_, first_, second_), shape), env_.options());
    auto env = env_.contiguous(), sense = sense_.contiguous();
    auto first = first_.contiguous(), second = second_.contiguous();
    const int64_t A = env.size(0), N = env.size(1), F = env.size(2), P = sense.size(0);
    check_index_range("ekd::featsum", "pair_second", second.data_ptr<int64_t>(), P, A);
    const Groups g = group_pairs("ekd::featsum", "pair_first", first.data_ptr<int64_t>(), P, A);
    // Scatter onto pair_second without races: K pair chunks (K from the problem size, never from
    // the thread count, so results do not depend on it) each sum into a private buffer, reduced in
    // chunk order. Reading env[i] once per source atom instead of once per pair is what makes this
    // fast: env is N times larger than the output. A chunk's buffer spans only the destination
    // atoms its pairs reach (for a batch of molecules, a few rows beyond its own source atoms;
    // for a box, up to all of them): the rows left out would only have added zeros.
    const int64_t work = P * N * F;
    const int64_t K = chunks_for(work, A, 8);
    const int64_t threads = parallel_plan(work, A).threads;
    const std::vector<int64_t> bounds = chunk_bounds(g, K);
    dispatch_float(env, [&](auto tag) {
        using T = decltype(tag);
        const T* e = env.data_ptr<T>();
        const T* s = sense.data_ptr<T>();
        const int64_t* sec = second.data_ptr<int64_t>();
        T* o = out.data_ptr<T>();
        std::vector<std::vector<T>> bufs(K);  // chunk 0 sums straight into the output
        std::vector<int64_t> lo(K, 0), hi(K, 0);  // destination rows [lo, hi) of each chunk
        run_chunks(K, threads, [&](int64_t k) {
            std::vector<T> tmp(F);
            std::vector<int64_t> nz(N);
            T* dst = o;
            if (k == 0) {
                std::fill(o, o + A * F, T(0));
            } else {
                int64_t l = A, h = 0;
                for (int64_t q = g.ptr[bounds[k]]; q < g.ptr[bounds[k + 1]]; ++q) {
                    const int64_t j = sec[g.order[q]];
                    l = std::min(l, j);
                    h = std::max(h, j + 1);
                }
                lo[k] = std::min(l, h);
                hi[k] = h;
                bufs[k].assign(static_cast<size_t>((h - lo[k]) * F), T(0));
                dst = bufs[k].data();
            }
            featsum_run(e, s, sec, &g, N, F, dst, lo[k], tmp.data(), nz.data(), bounds[k], bounds[k + 1]);
        });
        if (K > 1) {
            const int64_t n = A * F;
            const ParallelPlan plan = parallel_plan(n * (K - 1), n);
            run_chunks(plan.chunks, plan.threads, [&](int64_t c) {
                const int64_t i0 = n * c / plan.chunks, i1 = n * (c + 1) / plan.chunks;
                for (int64_t k = 1; k < K; ++k) {
                    const int64_t b0 = std::max(i0, lo[k] * F), b1 = std::min(i1, hi[k] * F);
                    const T* src = bufs[k].data();
                    const int64_t off = lo[k] * F;
                    for (int64_t i = b0; i < b1; ++i) o[i] += src[i - off];
                }
            });
        }
    });
    return out;
}

at::Tensor sensesum_cpu(const at::Tensor& env_, const at::Tensor& feat_, const at::Tensor& first_,
                        const at::Tensor& second_) {
    std::vector<int64_t> shape;
    auto out = empty_output(concrete(sensesum_shape(env_, feat_, first_, second_), shape), env_.options());
    auto env = env_.contiguous(), feat = feat_.contiguous();
    auto first = first_.contiguous(), second = second_.contiguous();
    const int64_t A = env.size(0), N = env.size(1), F = env.size(2), P = first.size(0);
    check_index_range("ekd::sensesum", "pair_second", second.data_ptr<int64_t>(), P, A);
    const Groups g = group_pairs("ekd::sensesum", "pair_first", first.data_ptr<int64_t>(), P, A);
    dispatch_float(env, [&](auto tag) {
        using T = decltype(tag);
        const T* e = env.data_ptr<T>();
        const T* z = feat.data_ptr<T>();
        const int64_t* sec = second.data_ptr<int64_t>();
        T* o = out.data_ptr<T>();
        for_atom_chunks(g, N * F, [&](int64_t a0, int64_t a1) { sensesum_run(e, z, sec, &g, N, F, o, a0, a1); });
    });
    return out;
}

at::Tensor tensor_envsum_cpu(const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& x_,
                             const at::Tensor& first_, const at::Tensor& second_) {
    std::vector<int64_t> shape;
    auto out = empty_output(concrete(tensor_envsum_shape(a_, b_, x_, first_, second_), shape), a_.options());
    auto a = a_.contiguous(), b = b_.contiguous(), x = x_.contiguous();
    auto first = first_.contiguous(), second = second_.contiguous();
    const int64_t P = a.size(0), C = a.size(1), N = b.size(1), A = x.size(0), O = x.size(2);
    check_index_range("ekd::tensor_envsum", "pair_second", second.data_ptr<int64_t>(), P, A);
    const Groups g = group_pairs("ekd::tensor_envsum", "pair_first", first.data_ptr<int64_t>(), P, A);
    dispatch_float(a, [&](auto tag) {
        using T = decltype(tag);
        const T* ap = a.data_ptr<T>();
        const T* bp = b.data_ptr<T>();
        const T* xp = x.data_ptr<T>();
        const int64_t* sec = second.data_ptr<int64_t>();
        T* o = out.data_ptr<T>();
        for_atom_chunks(g, (N + C) * O, [&](int64_t a0, int64_t a1) {
            std::vector<T> m;
            tensor_envsum_run(ap, bp, xp, sec, &g, C, N, O, o, m, a0, a1);
        });
    });
    return out;
}

at::Tensor tensor_sensesum_cpu(const at::Tensor& a_, const at::Tensor& y_, const at::Tensor& x_,
                               const at::Tensor& first_, const at::Tensor& second_) {
    std::vector<int64_t> shape;
    auto out = empty_output(concrete(tensor_sensesum_shape(a_, y_, x_, first_, second_), shape), a_.options());
    auto a = a_.contiguous(), y = y_.contiguous(), x = x_.contiguous();
    auto first = first_.contiguous(), second = second_.contiguous();
    const int64_t P = a.size(0), C = a.size(1), A = y.size(0), N = x.size(1), O = x.size(2);
    check_index_range("ekd::tensor_sensesum", "pair_first", first.data_ptr<int64_t>(), P, A);
    check_index_range("ekd::tensor_sensesum", "pair_second", second.data_ptr<int64_t>(), P, A);
    dispatch_float(a, [&](auto tag) {
        using T = decltype(tag);
        const T* ap = a.data_ptr<T>();
        const T* yp = y.data_ptr<T>();
        const T* xp = x.data_ptr<T>();
        const int64_t* fi = first.data_ptr<int64_t>();
        const int64_t* sec = second.data_ptr<int64_t>();
        T* o = out.data_ptr<T>();
        for_pairs(P, (N + C) * O, [&](int64_t p0, int64_t p1) {
            std::vector<T> gbuf(O);
            tensor_sensesum_run(ap, yp, xp, fi, sec, C, N, O, o, gbuf.data(), p0, p1);
        });
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor> tensor_envsum_backward_cpu(const at::Tensor& h_, const at::Tensor& a_,
                                                              const at::Tensor& b_, const at::Tensor& x_,
                                                              const at::Tensor& first_, const at::Tensor& second_) {
    const auto shapes = tensor_envsum_backward_shapes(h_, a_, b_, x_, first_, second_);
    std::vector<int64_t> shape;
    auto ga = empty_output(concrete(shapes[0], shape), a_.options());
    auto gb = empty_output(concrete(shapes[1], shape), a_.options());
    auto a = a_.contiguous(), b = b_.contiguous(), x = x_.contiguous(), h = h_.contiguous();
    auto first = first_.contiguous(), second = second_.contiguous();
    const int64_t P = a.size(0), C = a.size(1), N = b.size(1), A = x.size(0), O = x.size(2);
    check_index_range("ekd::tensor_envsum_backward", "pair_first", first.data_ptr<int64_t>(), P, A);
    check_index_range("ekd::tensor_envsum_backward", "pair_second", second.data_ptr<int64_t>(), P, A);
    dispatch_float(a, [&](auto tag) {
        using T = decltype(tag);
        const T* ap = a.data_ptr<T>();
        const T* bp = b.data_ptr<T>();
        const T* xp = x.data_ptr<T>();
        const T* hp = h.data_ptr<T>();
        const int64_t* fi = first.data_ptr<int64_t>();
        const int64_t* sec = second.data_ptr<int64_t>();
        T* gap = ga.data_ptr<T>();
        T* gbp = gb.data_ptr<T>();
        for_pairs(P, 2 * (N + C) * O, [&](int64_t p0, int64_t p1) {
            std::vector<T> mbuf(O), gbuf(O);
            tensor_envsum_grad_ab_run(ap, bp, xp, hp, fi, sec, C, N, O, gap, gbp, mbuf.data(), gbuf.data(), p0, p1);
        });
    });
    return {ga, gb};
}

// ------------------------------------------------------------------------------------------------
// Meta kernels: shapes only (same checks as the CPU entry points). They give FakeTensor /
// torch.compile / opcheck the output shapes without a Python registration, so TorchScript and the
// LAMMPS plugin see the very same library.

at::Tensor envsum_meta(const at::Tensor& s, const at::Tensor& z, const at::Tensor& f, const at::Tensor& c) {
    return at::empty_symint(envsum_shape(s, z, f, c), s.options());
}
at::Tensor sensesum_meta(const at::Tensor& e, const at::Tensor& z, const at::Tensor& f, const at::Tensor& c) {
    return at::empty_symint(sensesum_shape(e, z, f, c), e.options());
}
at::Tensor featsum_meta(const at::Tensor& e, const at::Tensor& s, const at::Tensor& f, const at::Tensor& c) {
    return at::empty_symint(featsum_shape(e, s, f, c), e.options());
}
at::Tensor tensor_envsum_meta(const at::Tensor& a, const at::Tensor& b, const at::Tensor& x, const at::Tensor& f,
                              const at::Tensor& c) {
    return at::empty_symint(tensor_envsum_shape(a, b, x, f, c), a.options());
}
at::Tensor tensor_sensesum_meta(const at::Tensor& a, const at::Tensor& y, const at::Tensor& x, const at::Tensor& f,
                                const at::Tensor& c) {
    return at::empty_symint(tensor_sensesum_shape(a, y, x, f, c), a.options());
}
std::tuple<at::Tensor, at::Tensor> tensor_envsum_backward_meta(const at::Tensor& h, const at::Tensor& a,
                                                               const at::Tensor& b, const at::Tensor& x,
                                                               const at::Tensor& f, const at::Tensor& c) {
    const auto shapes = tensor_envsum_backward_shapes(h, a, b, x, f, c);
    return {at::empty_symint(shapes[0], a.options()), at::empty_symint(shapes[1], a.options())};
}

}  // namespace
}  // namespace ekd

TORCH_LIBRARY_IMPL(ekd, CPU, m) {
    m.impl("envsum", &ekd::envsum_cpu);
    m.impl("sensesum", &ekd::sensesum_cpu);
    m.impl("featsum", &ekd::featsum_cpu);
    m.impl("tensor_envsum", &ekd::tensor_envsum_cpu);
    m.impl("tensor_sensesum", &ekd::tensor_sensesum_cpu);
    m.impl("tensor_envsum_backward", &ekd::tensor_envsum_backward_cpu);
}

TORCH_LIBRARY_IMPL(ekd, Meta, m) {
    m.impl("envsum", &ekd::envsum_meta);
    m.impl("sensesum", &ekd::sensesum_meta);
    m.impl("featsum", &ekd::featsum_meta);
    m.impl("tensor_envsum", &ekd::tensor_envsum_meta);
    m.impl("tensor_sensesum", &ekd::tensor_sensesum_meta);
    m.impl("tensor_envsum_backward", &ekd::tensor_envsum_backward_meta);
}
