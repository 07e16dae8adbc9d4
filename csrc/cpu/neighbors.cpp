// CPU kernel of ekd::neighbor_list: argument checks, then the plain C++ search per structure.
#include "ekd/checks.hpp"
#include "ekd/neighbors.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

namespace ekd {
namespace {

constexpr const char* kOp = "ekd::neighbor_list";

std::tuple<at::Tensor, at::Tensor, at::Tensor> neighbor_list_cpu(const at::Tensor& positions,
                                                                 const at::Tensor& batch,
                                                                 const at::Tensor& cells,
                                                                 const at::Tensor& pbc, double cutoff) {
    check_neighbor_list_args(kOp, positions, batch, cells, pbc, cutoff);

    const int64_t n = positions.size(0);
    const int64_t n_struct = cells.size(0);
    auto x = positions.to(at::kDouble).contiguous();
    auto h = cells.to(at::kDouble).contiguous();
    auto p = pbc.contiguous();
    auto bt = batch.contiguous();
    const double* xp = x.data_ptr<double>();
    const double* hp = h.data_ptr<double>();
    const bool* pp = p.data_ptr<bool>();
    const int64_t* bp = bt.data_ptr<int64_t>();

    // Structure boundaries from the (sorted) batch vector.
    std::vector<int64_t> ptr(n_struct + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
        TORCH_CHECK(bp[i] >= 0 && bp[i] < n_struct, kOp, ": `batch` values must lie in [0, ", n_struct,
                    ") (one per cell), got ", bp[i], " at atom ", i);
        TORCH_CHECK(i == 0 || bp[i] >= bp[i - 1], kOp,
                    ": `batch` must be non-decreasing (atoms of a structure contiguous), got ", bp[i - 1],
                    " then ", bp[i], " at atom ", i);
        ptr[bp[i] + 1] += 1;
    }
    for (int64_t s = 0; s < n_struct; ++s) ptr[s + 1] += ptr[s];

    std::vector<PairList> lists(n_struct);
    auto run = [&](int64_t s, bool parallel) {
        try {
            neighbor_search(xp + 3 * ptr[s], ptr[s + 1] - ptr[s], hp + 9 * s, pp + 3 * s, cutoff, ptr[s],
                            parallel, lists[s]);
        } catch (const InputError& e) {
            TORCH_CHECK(false, kOp, ": structure ", s, ": ", e.what());
        }
    };
    // Many small structures (training batches): one structure per task. Few large ones (MD):
    // split each structure over the threads.
    if (n_struct >= 2 * at::get_num_threads()) {
        at::parallel_for(0, n_struct, 1, [&](int64_t s0, int64_t s1) {
            for (int64_t s = s0; s < s1; ++s) run(s, false);
        });
    } else {
        for (int64_t s = 0; s < n_struct; ++s) run(s, true);
    }

    int64_t total = 0;
    for (const auto& l : lists) total += static_cast<int64_t>(l.size());
    auto opts = at::TensorOptions().dtype(at::kLong);
    auto first = at::empty({total}, opts);
    auto second = at::empty({total}, opts);
    auto shifts = at::empty({total, 3}, opts);
    int64_t* f = first.data_ptr<int64_t>();
    int64_t* sc = second.data_ptr<int64_t>();
    int64_t* sh = shifts.data_ptr<int64_t>();
    for (const auto& l : lists) {
        std::copy(l.first.begin(), l.first.end(), f);
        std::copy(l.second.begin(), l.second.end(), sc);
        std::copy(l.shifts.begin(), l.shifts.end(), sh);
        f += l.size();
        sc += l.size();
        sh += 3 * l.size();
    }
    return {first, second, shifts};
}

}  // namespace
}  // namespace ekd

TORCH_LIBRARY_IMPL(ekd, CPU, m) { m.impl("neighbor_list", &ekd::neighbor_list_cpu); }
