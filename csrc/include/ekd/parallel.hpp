// How ekd's CPU kernels use threads.
//
// A parallel region is not free: waking the team and the closing barrier cost microseconds on an
// idle machine, and when another process holds a core the barrier waits for a scheduler time slice
// (milliseconds). So
// * a kernel uses a second thread only for at least kMinWorkPerThread multiply-adds per thread,
//   and one parallel region per call (not one per loop);
// * the work is cut into more chunks than threads and handed out first come, first served, so a
//   thread slowed down by a neighbour process takes fewer chunks instead of holding up the rest.
// Which thread runs a chunk never changes a result: chunks own disjoint outputs (or private
// buffers reduced in chunk order) and their count depends on the problem size only.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace ekd {

// ~0.1-0.3 ms of work: well above the cost of a parallel region with sleeping waits.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 20;

// Threads worth using for `work` multiply-adds when `max_threads` are available (>= 1).
inline int64_t threads_for(int64_t work, int64_t max_threads) {
    const int64_t by_work = work / kMinWorkPerThread;
    const int64_t t = by_work < max_threads ? by_work : max_threads;
    return t < 1 ? 1 : t;
}

// Number of work chunks for `work` multiply-adds over `units` independent units (atoms, pairs):
// a function of the problem size only (so results do not depend on the thread count), up to
// `max_chunks` chunks of at least kMinWorkPerThread / 4 each, never more than `units`.
inline int64_t chunks_for(int64_t work, int64_t units, int64_t max_chunks = 16) {
    int64_t k = work / (kMinWorkPerThread / 4);
    if (k > max_chunks) k = max_chunks;
    if (k > units) k = units;
    return k < 1 ? 1 : k;
}

// The plan above for the current torch thread count (defined in cpu/sensitivity.cpp):
// {threads, chunks} a kernel with `work` multiply-adds over `units` units would use.
struct ParallelPlan {
    int64_t threads;
    int64_t chunks;
};
ParallelPlan parallel_plan(int64_t work, int64_t units);

// Runs body(c) for every chunk c in [0, n_chunks) on up to `threads` threads, in one parallel
// region; chunks are taken first come, first served (see the top of this file for why).
template <typename Body>
void run_chunks(int64_t n_chunks, int64_t threads, const Body& body) {
    if (threads <= 1 || n_chunks <= 1) {
        for (int64_t c = 0; c < n_chunks; ++c) body(c);
        return;
    }
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min(threads, n_chunks), 1, [&](int64_t, int64_t) {
        for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1)) body(c);
    });
}

}  // namespace ekd
