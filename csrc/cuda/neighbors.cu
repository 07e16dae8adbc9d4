// CUDA kernel of ekd::neighbor_list (same schema, checks and output convention as
// csrc/cpu/neighbors.cpp: full list, r_ij = x_j - x_i + shift @ cell).
//
// Algorithm: brute force within each structure, documented trade-off. Atoms are wrapped into the
// cell along periodic directions; every atom i (one thread) tests every atom j of its structure
// in every periodic image s with |s_k| <= ceil(cutoff / h_k) + 1 (h_k: face-to-face height), the
// bound the reference oracle (ekd.reference.neighbor_list_reference) uses. Two passes: count
// per atom, exclusive scan, then write. Each thread writes its pairs in (j, s) loop order, so the
// list comes out sorted by (first, second, shift): deterministic, and comparable with the CPU op
// after sorting the latter. Cost O(sum over structures of n^2 x images): trivial for training
// batches of small molecules and a few milliseconds for a 3,136-atom box on a GPU; a cell list
// would be needed for boxes of ~10^5 atoms.
//
// Host side: cells and pbc are copied to the host (B x 3 x 3, tiny) to build, per structure,
// a non-singular matrix whose inverse gives fractional coordinates along periodic directions
// (non-periodic rows replaced by an orthonormal complement) and the image ranges.
#include "ekd/checks.hpp"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

namespace ekd {
namespace {

constexpr const char* kOp = "ekd::neighbor_list";
constexpr int kThreads = 128;

struct StructureInfo {
    double cell[9];      // rows: lattice vectors (as given)
    int n_images[3];     // shifts tested along each direction: -n..n (0 if not periodic)
};

// Per atom: fractional-wrapped position w_i = x_i - wrap_i @ cell, and wrap_i (integers).
__global__ void wrap_kernel(const double* __restrict__ x, const int64_t* __restrict__ batch,
                            const double* __restrict__ inverse, const bool* __restrict__ pbc, const double* __restrict__ cells,
                            int64_t n, double* __restrict__ wrapped, int64_t* __restrict__ wrap) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t s = batch[i];
    const double* inv = inverse + 9 * s;
    const double* h = cells + 9 * s;
    double w[3];
    for (int k = 0; k < 3; ++k) {
        const double frac = x[3 * i] * inv[k] + x[3 * i + 1] * inv[3 + k] + x[3 * i + 2] * inv[6 + k];
        w[k] = pbc[3 * s + k] ? floor(frac) : 0.0;
        wrap[3 * i + k] = static_cast<int64_t>(w[k]);
    }
    for (int d = 0; d < 3; ++d) wrapped[3 * i + d] = x[3 * i + d] - (w[0] * h[d] + w[1] * h[3 + d] + w[2] * h[6 + d]);
}

// Pass 1 (write == false): count[i] = number of neighbours of i. Pass 2: write them at offset[i].
template <bool write>
__global__ void pair_kernel(const double* __restrict__ wpos, const int64_t* __restrict__ wrap,
                            const int64_t* __restrict__ batch, const int64_t* __restrict__ ptr,
                            const double* __restrict__ cells, const int* __restrict__ n_images, int64_t n,
                            double cutoff2, int64_t* __restrict__ count, const int64_t* __restrict__ offset,
                            int64_t* __restrict__ first, int64_t* __restrict__ second, int64_t* __restrict__ shifts) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t s = batch[i];
    const double* h = cells + 9 * s;
    const int* m = n_images + 3 * s;
    int64_t k = write ? offset[i] : 0;
    for (int64_t j = ptr[s]; j < ptr[s + 1]; ++j) {
        const double d0 = wpos[3 * j] - wpos[3 * i], d1 = wpos[3 * j + 1] - wpos[3 * i + 1],
                     d2 = wpos[3 * j + 2] - wpos[3 * i + 2];
        for (int a = -m[0]; a <= m[0]; ++a)
            for (int b = -m[1]; b <= m[1]; ++b)
                for (int c = -m[2]; c <= m[2]; ++c) {
                    if (i == j && a == 0 && b == 0 && c == 0) continue;
                    const double r0 = d0 + a * h[0] + b * h[3] + c * h[6];
                    const double r1 = d1 + a * h[1] + b * h[4] + c * h[7];
                    const double r2 = d2 + a * h[2] + b * h[5] + c * h[8];
                    if (r0 * r0 + r1 * r1 + r2 * r2 >= cutoff2) continue;
                    if (write) {
                        first[k] = i;
                        second[k] = j;
                        // relative to the unwrapped input positions
                        shifts[3 * k] = a - wrap[3 * j] + wrap[3 * i];
                        shifts[3 * k + 1] = b - wrap[3 * j + 1] + wrap[3 * i + 1];
                        shifts[3 * k + 2] = c - wrap[3 * j + 2] + wrap[3 * i + 2];
                    }
                    ++k;
                }
    }
    if (!write) count[i] = k;
}

void normalise(double* v) {
    const double l = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    for (int k = 0; k < 3; ++k) v[k] /= l;
}

void cross(const double* a, const double* b, double* out) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

bool invert3(const double* m, double* inv) {
    const double det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) +
                       m[2] * (m[3] * m[7] - m[4] * m[6]);
    double scale = 0;
    for (int k = 0; k < 9; ++k) scale = std::max(scale, std::abs(m[k]));
    if (!(std::abs(det) > 1e-12 * scale * scale * scale)) return false;
    inv[0] = (m[4] * m[8] - m[5] * m[7]) / det;
    inv[1] = (m[2] * m[7] - m[1] * m[8]) / det;
    inv[2] = (m[1] * m[5] - m[2] * m[4]) / det;
    inv[3] = (m[5] * m[6] - m[3] * m[8]) / det;
    inv[4] = (m[0] * m[8] - m[2] * m[6]) / det;
    inv[5] = (m[2] * m[3] - m[0] * m[5]) / det;
    inv[6] = (m[3] * m[7] - m[4] * m[6]) / det;
    inv[7] = (m[1] * m[6] - m[0] * m[7]) / det;
    inv[8] = (m[0] * m[4] - m[1] * m[3]) / det;
    return true;
}

// Inverse of the cell with non-periodic rows replaced by an orthonormal complement of the
// periodic ones, and the image ranges.
void structure_frame(const double* cell, const bool* pbc, double cutoff, int64_t s, double* inverse, int* n_images) {
    double full[9];
    std::copy(cell, cell + 9, full);
    int periodic[3], n_per = 0, other[3], n_other = 0;
    for (int k = 0; k < 3; ++k) (pbc[k] ? periodic[n_per++] : other[n_other++]) = k;
    const double axes[3][3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}};
    if (n_per == 0) {
        std::copy(&axes[0][0], &axes[0][0] + 9, full);
    } else if (n_per == 1) {
        double a[3] = {cell[3 * periodic[0]], cell[3 * periodic[0] + 1], cell[3 * periodic[0] + 2]}, u[3], v[3];
        normalise(a);
        // the axis least aligned with a, made orthogonal to it
        int best = 0;
        for (int k = 1; k < 3; ++k)
            if (std::abs(a[k]) < std::abs(a[best])) best = k;
        cross(a, axes[best], u);
        normalise(u);
        cross(a, u, v);
        std::copy(u, u + 3, full + 3 * other[0]);
        std::copy(v, v + 3, full + 3 * other[1]);
    } else if (n_per == 2) {
        double w[3];
        cross(cell + 3 * periodic[0], cell + 3 * periodic[1], w);
        normalise(w);
        std::copy(w, w + 3, full + 3 * other[0]);
    }
    TORCH_CHECK(invert3(full, inverse), kOp, ": structure ", s,
                ": the periodic lattice vectors of `cells` are zero or linearly dependent");
    for (int k = 0; k < 3; ++k) {
        // |column k of the inverse| = 1 / (face-to-face height along k)
        const double b = std::sqrt(inverse[k] * inverse[k] + inverse[3 + k] * inverse[3 + k] +
                                   inverse[6 + k] * inverse[6 + k]);
        n_images[k] = pbc[k] ? static_cast<int>(std::ceil(cutoff * b)) + 1 : 0;
    }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> neighbor_list_cuda(const at::Tensor& positions,
                                                                  const at::Tensor& batch,
                                                                  const at::Tensor& cells,
                                                                  const at::Tensor& pbc, double cutoff) {
    check_neighbor_list_args(kOp, positions, batch, cells, pbc, cutoff);
    const c10::cuda::CUDAGuard guard(positions.device());
    const int64_t n = positions.size(0), n_struct = cells.size(0);
    auto long_opts = batch.options();
    if (n == 0) {
        return {at::empty({0}, long_opts), at::empty({0}, long_opts), at::empty({0, 3}, long_opts)};
    }
    auto bt = batch.contiguous();
    {
        const int64_t lo = bt.min().item<int64_t>(), hi = bt.max().item<int64_t>();
        TORCH_CHECK(lo >= 0 && hi < n_struct, kOp, ": `batch` values must lie in [0, ", n_struct,
                    ") (one per cell), got values in [", lo, ", ", hi, "]");
        TORCH_CHECK(n < 2 || (bt.slice(0, 1) >= bt.slice(0, 0, n - 1)).all().item<bool>(), kOp,
                    ": `batch` must be non-decreasing (atoms of a structure contiguous)");
    }

    // Host: per-structure frames.
    auto cells_host = cells.to(at::kDouble).cpu().contiguous();
    auto pbc_host = pbc.cpu().contiguous();
    auto inverse_host = at::empty({n_struct, 3, 3}, cells_host.options());
    auto images_host = at::empty({n_struct, 3}, at::TensorOptions().dtype(at::kInt));
    for (int64_t s = 0; s < n_struct; ++s) {
        structure_frame(cells_host.data_ptr<double>() + 9 * s, pbc_host.data_ptr<bool>() + 3 * s, cutoff, s,
                        inverse_host.data_ptr<double>() + 9 * s, images_host.data_ptr<int>() + 3 * s);
    }
    const auto dev = positions.device();
    auto h = cells_host.to(dev), inverse = inverse_host.to(dev), images = images_host.to(dev), p = pbc.contiguous();
    auto counts = at::bincount(bt, /*weights=*/{}, n_struct);
    auto ptr = at::zeros({n_struct + 1}, long_opts);
    ptr.slice(0, 1).copy_(at::cumsum(counts, 0));

    auto x = positions.to(at::kDouble).contiguous();
    auto wrapped = at::empty_like(x);
    auto wrap = at::empty({n, 3}, long_opts);
    auto stream = c10::cuda::getCurrentCUDAStream();
    const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
    wrap_kernel<<<blocks, kThreads, 0, stream>>>(x.data_ptr<double>(), bt.data_ptr<int64_t>(),
                                                 inverse.data_ptr<double>(), p.data_ptr<bool>(), h.data_ptr<double>(),
                                                 n, wrapped.data_ptr<double>(), wrap.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    auto count = at::empty({n}, long_opts);
    pair_kernel<false><<<blocks, kThreads, 0, stream>>>(
        wrapped.data_ptr<double>(), wrap.data_ptr<int64_t>(), bt.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(),
        h.data_ptr<double>(), images.data_ptr<int>(), n, cutoff * cutoff, count.data_ptr<int64_t>(), nullptr,
        nullptr, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto inclusive = at::cumsum(count, 0);
    const int64_t total = inclusive[n - 1].item<int64_t>();
    auto offset = inclusive - count;
    auto first = at::empty({total}, long_opts);
    auto second = at::empty({total}, long_opts);
    auto shifts = at::empty({total, 3}, long_opts);
    pair_kernel<true><<<blocks, kThreads, 0, stream>>>(
        wrapped.data_ptr<double>(), wrap.data_ptr<int64_t>(), bt.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(),
        h.data_ptr<double>(), images.data_ptr<int>(), n, cutoff * cutoff, count.data_ptr<int64_t>(),
        offset.data_ptr<int64_t>(), first.data_ptr<int64_t>(), second.data_ptr<int64_t>(),
        shifts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {first, second, shifts};
}

}  // namespace
}  // namespace ekd

TORCH_LIBRARY_IMPL(ekd, CUDA, m) { m.impl("neighbor_list", &ekd::neighbor_list_cuda); }
