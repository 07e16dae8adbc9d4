// CUDA kernels of the HIPNN interaction ops (same names, schemas and argument checks as
// csrc/cpu/sensitivity.cpp; formulas in csrc/register.cpp).
//
// Determinism as on the CPU: ops that scatter onto atoms first group the pairs by destination
// atom with a stable sort (torch's), then one thread block owns each destination atom and sums its
// pairs in input order, so there are no atomics and results are reproducible run to run.
// Threads of a block run over the feature axis (coalesced rows); per-pair outputs
// (sensesum, tensor_sensesum) use one warp per (pair, sensitivity) with a shuffle reduction.
//
// Built only when CMake finds nvcc and torch has CUDA (EKD_WITH_CUDA); on the CPU-only machines
// this project is developed on it is compiled to an object by tests/unit/test_cuda_compile.py
// but never linked or run.
#include "ekd/sensitivity.hpp"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace ekd {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxComponents = 16;  // tensor_envsum keeps C accumulators per thread in registers

struct Grouping {
    at::Tensor order;  // [P] pair ids sorted (stably) by destination atom
    at::Tensor ptr;    // [A + 1] pairs of atom a: order[ptr[a] .. ptr[a+1])
};

Grouping group_pairs(const at::Tensor& idx, int64_t n_atoms) {
    auto sorted = at::sort(idx, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    auto counts = at::bincount(idx, /*weights=*/{}, n_atoms);
    auto ptr = at::zeros({n_atoms + 1}, idx.options());
    if (n_atoms > 0) ptr.slice(0, 1).copy_(at::cumsum(counts, 0));
    return {std::get<1>(sorted).contiguous(), ptr};
}

// Pair indices must lie in [0, n_atoms): one reduction and a host sync, the price of a clear error
// instead of an illegal memory access.
void check_range(const char* op, const char* name, const at::Tensor& idx, int64_t n_atoms) {
    if (idx.numel() == 0) return;
    const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < n_atoms, op, ": `", name, "` entries must lie in [0, ", n_atoms,
                ") (the number of atoms), got values in [", lo, ", ", hi, "]");
}

template <typename T>
__device__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// env[a, n, f] = sum_{q in group a} s[p, n] z[second[p], f];  grid (A, N), threads over f
template <typename T>
__global__ void envsum_kernel(const T* __restrict__ s, const T* __restrict__ z, const int64_t* __restrict__ second,
                              const int64_t* __restrict__ order, const int64_t* __restrict__ ptr, int64_t N, int64_t F,
                              T* __restrict__ out) {
    const int64_t a = blockIdx.x, n = blockIdx.y;
    for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
        T acc = 0;
        for (int64_t q = ptr[a]; q < ptr[a + 1]; ++q) {
            const int64_t p = order[q];
            acc += s[p * N + n] * z[second[p] * F + f];
        }
        out[(a * N + n) * F + f] = acc;
    }
}

// feat[a, f] = sum_{q in group a (by second)} sum_n sense[p, n] env[first[p], n, f];  grid A
template <typename T>
__global__ void featsum_kernel(const T* __restrict__ env, const T* __restrict__ sense,
                               const int64_t* __restrict__ first, const int64_t* __restrict__ order,
                               const int64_t* __restrict__ ptr, int64_t N, int64_t F, T* __restrict__ out) {
    const int64_t a = blockIdx.x;
    for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
        T acc = 0;
        for (int64_t q = ptr[a]; q < ptr[a + 1]; ++q) {
            const int64_t p = order[q];
            const T* e = env + first[p] * N * F + f;
            for (int64_t n = 0; n < N; ++n) acc += sense[p * N + n] * e[n * F];
        }
        out[a * F + f] = acc;
    }
}

// out[p, n] = sum_f rows(p)[n, f] * vec(p)[f]: one warp per (p, n); blocks of kThreads / 32 warps
template <typename T>
__global__ void sensesum_kernel(const T* __restrict__ env, const T* __restrict__ z, const int64_t* __restrict__ first,
                                const int64_t* __restrict__ second, int64_t P, int64_t N, int64_t F,
                                T* __restrict__ out) {
    const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (warp >= P * N) return;  // whole warps exit together
    const int64_t p = warp / N, n = warp % N;
    const T* e = env + (first[p] * N + n) * F;
    const T* zr = z + second[p] * F;
    T acc = 0;
    for (int64_t f = lane; f < F; f += 32) acc += e[f] * zr[f];
    acc = warp_sum(acc);
    if (lane == 0) out[p * N + n] = acc;
}

// out[a, c, o] = sum_{q in group a} a_[p, c] sum_n b[p, n] x[second[p], n, o];  grid A, threads over o
template <typename T>
__global__ void tensor_envsum_kernel(const T* __restrict__ av, const T* __restrict__ bv, const T* __restrict__ x,
                                     const int64_t* __restrict__ second, const int64_t* __restrict__ order,
                                     const int64_t* __restrict__ ptr, int64_t C, int64_t N, int64_t O,
                                     T* __restrict__ out) {
    const int64_t a = blockIdx.x;
    for (int64_t o = threadIdx.x; o < O; o += blockDim.x) {
        T acc[kMaxComponents];
        for (int c = 0; c < kMaxComponents; ++c) acc[c] = 0;
        for (int64_t q = ptr[a]; q < ptr[a + 1]; ++q) {
            const int64_t p = order[q];
            const T* xr = x + second[p] * N * O + o;
            T m = 0;
            for (int64_t n = 0; n < N; ++n) m += bv[p * N + n] * xr[n * O];
            for (int c = 0; c < kMaxComponents; ++c)
                if (c < C) acc[c] += av[p * C + c] * m;
        }
        for (int c = 0; c < kMaxComponents; ++c)
            if (c < C) out[(a * C + c) * O + o] = acc[c];
    }
}

// out[p, n] = sum_o x[second[p], n, o] g[o],  g[o] = sum_c a_[p, c] y[first[p], c, o];
// one block per pair: g in shared memory, then one warp per n.
template <typename T>
__global__ void tensor_sensesum_kernel(const T* __restrict__ av, const T* __restrict__ y, const T* __restrict__ x,
                                       const int64_t* __restrict__ first, const int64_t* __restrict__ second,
                                       int64_t C, int64_t N, int64_t O, T* __restrict__ out) {
    extern __shared__ unsigned char smem[];
    T* g = reinterpret_cast<T*>(smem);
    const int64_t p = blockIdx.x;
    const T* yr = y + first[p] * C * O;
    for (int64_t o = threadIdx.x; o < O; o += blockDim.x) {
        T acc = 0;
        for (int64_t c = 0; c < C; ++c) acc += av[p * C + c] * yr[c * O + o];
        g[o] = acc;
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    for (int64_t n = warp; n < N; n += n_warps) {
        const T* xr = x + (second[p] * N + n) * O;
        T acc = 0;
        for (int64_t o = lane; o < O; o += 32) acc += xr[o] * g[o];
        acc = warp_sum(acc);
        if (lane == 0) out[p * N + n] = acc;
    }
}

std::vector<int64_t> concrete(const std::vector<c10::SymInt>& s) {
    std::vector<int64_t> out;
    for (const auto& v : s) out.push_back(v.expect_int());
    return out;
}

unsigned blocks_for(int64_t n_threads) { return static_cast<unsigned>((n_threads + kThreads - 1) / kThreads); }

at::Tensor envsum_cuda(const at::Tensor& sens_, const at::Tensor& feat_, const at::Tensor& first_,
                       const at::Tensor& second_) {
    auto out = at::empty(concrete(envsum_shape(sens_, feat_, first_, second_)), sens_.options());
    const c10::cuda::CUDAGuard guard(sens_.device());
    auto sens = sens_.contiguous(), feat = feat_.contiguous(), second = second_.contiguous();
    const int64_t N = sens.size(1), A = feat.size(0), F = feat.size(1);
    check_range("ekd::envsum", "pair_first", first_, A);
    check_range("ekd::envsum", "pair_second", second, A);
    if (out.numel() == 0) return out;
    const Grouping g = group_pairs(first_.contiguous(), A);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(sens.scalar_type(), "ekd::envsum", [&] {
        envsum_kernel<scalar_t><<<dim3(A, N), kThreads, 0, stream>>>(
            sens.data_ptr<scalar_t>(), feat.data_ptr<scalar_t>(), second.data_ptr<int64_t>(),
            g.order.data_ptr<int64_t>(), g.ptr.data_ptr<int64_t>(), N, F, out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
}

at::Tensor featsum_cuda(const at::Tensor& env_, const at::Tensor& sense_, const at::Tensor& first_,
                        const at::Tensor& second_) {
    auto out = at::empty(concrete(featsum_shape(env_, sense_, first_, second_)), env_.options());
    const c10::cuda::CUDAGuard guard(env_.device());
    auto env = env_.contiguous(), sense = sense_.contiguous(), first = first_.contiguous();
    const int64_t A = env.size(0), N = env.size(1), F = env.size(2);
    check_range("ekd::featsum", "pair_first", first, A);
    check_range("ekd::featsum", "pair_second", second_, A);
    if (out.numel() == 0) return out;
    const Grouping g = group_pairs(second_.contiguous(), A);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(env.scalar_type(), "ekd::featsum", [&] {
        featsum_kernel<scalar_t><<<static_cast<unsigned>(A), kThreads, 0, stream>>>(
            env.data_ptr<scalar_t>(), sense.data_ptr<scalar_t>(), first.data_ptr<int64_t>(),
            g.order.data_ptr<int64_t>(), g.ptr.data_ptr<int64_t>(), N, F, out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
}

at::Tensor sensesum_cuda(const at::Tensor& env_, const at::Tensor& feat_, const at::Tensor& first_,
                         const at::Tensor& second_) {
    auto out = at::empty(concrete(sensesum_shape(env_, feat_, first_, second_)), env_.options());
    const c10::cuda::CUDAGuard guard(env_.device());
    auto env = env_.contiguous(), feat = feat_.contiguous();
    auto first = first_.contiguous(), second = second_.contiguous();
    const int64_t A = env.size(0), N = env.size(1), F = env.size(2), P = first.size(0);
    check_range("ekd::sensesum", "pair_first", first, A);
    check_range("ekd::sensesum", "pair_second", second, A);
    if (out.numel() == 0) return out;
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(env.scalar_type(), "ekd::sensesum", [&] {
        sensesum_kernel<scalar_t><<<blocks_for(P * N * 32), kThreads, 0, stream>>>(
            env.data_ptr<scalar_t>(), feat.data_ptr<scalar_t>(), first.data_ptr<int64_t>(),
            second.data_ptr<int64_t>(), P, N, F, out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
}

at::Tensor tensor_envsum_cuda(const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& x_,
                              const at::Tensor& first_, const at::Tensor& second_) {
    auto out = at::empty(concrete(tensor_envsum_shape(a_, b_, x_, first_, second_)), a_.options());
    const c10::cuda::CUDAGuard guard(a_.device());
    auto a = a_.contiguous(), b = b_.contiguous(), x = x_.contiguous(), second = second_.contiguous();
    const int64_t C = a.size(1), N = b.size(1), A = x.size(0), O = x.size(2);
    TORCH_CHECK(C <= kMaxComponents, "ekd::tensor_envsum: `a` may have at most ", kMaxComponents,
                " components (columns) on CUDA, got ", C);
    check_range("ekd::tensor_envsum", "pair_first", first_, A);
    check_range("ekd::tensor_envsum", "pair_second", second, A);
    if (out.numel() == 0) return out;
    const Grouping g = group_pairs(first_.contiguous(), A);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ekd::tensor_envsum", [&] {
        tensor_envsum_kernel<scalar_t><<<static_cast<unsigned>(A), kThreads, 0, stream>>>(
            a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), second.data_ptr<int64_t>(),
            g.order.data_ptr<int64_t>(), g.ptr.data_ptr<int64_t>(), C, N, O, out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
}

at::Tensor tensor_sensesum_cuda(const at::Tensor& a_, const at::Tensor& y_, const at::Tensor& x_,
                                const at::Tensor& first_, const at::Tensor& second_) {
    auto out = at::empty(concrete(tensor_sensesum_shape(a_, y_, x_, first_, second_)), a_.options());
    const c10::cuda::CUDAGuard guard(a_.device());
    auto a = a_.contiguous(), y = y_.contiguous(), x = x_.contiguous();
    auto first = first_.contiguous(), second = second_.contiguous();
    const int64_t P = a.size(0), C = a.size(1), A = y.size(0), N = x.size(1), O = x.size(2);
    check_range("ekd::tensor_sensesum", "pair_first", first, A);
    check_range("ekd::tensor_sensesum", "pair_second", second, A);
    if (out.numel() == 0) return out;
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ekd::tensor_sensesum", [&] {
        const size_t shared = static_cast<size_t>(O) * sizeof(scalar_t);
        tensor_sensesum_kernel<scalar_t><<<static_cast<unsigned>(P), kThreads, shared, stream>>>(
            a.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), first.data_ptr<int64_t>(),
            second.data_ptr<int64_t>(), C, N, O, out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
}

}  // namespace
}  // namespace ekd

TORCH_LIBRARY_IMPL(ekd, CUDA, m) {
    m.impl("envsum", &ekd::envsum_cuda);
    m.impl("sensesum", &ekd::sensesum_cuda);
    m.impl("featsum", &ekd::featsum_cuda);
    m.impl("tensor_envsum", &ekd::tensor_envsum_cuda);
    m.impl("tensor_sensesum", &ekd::tensor_sensesum_cuda);
}
