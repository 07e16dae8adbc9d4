// Cell-list neighbor search (see include/ekd/neighbors.hpp for the contract).
//
// The search runs in fractional coordinates of the cell, which makes orthorhombic and
// triclinic cells one code path: for a reciprocal vector b_k (|b_k| = 1 / h_k, h_k the distance
// between the cell's faces normal to k) two atoms closer than the cutoff differ by at most
// cutoff / h_k in fractional coordinate k. Bins are at least that wide (or, for cells thinner
// than the cutoff, several bins/images are searched), so a fixed window of bins around each
// atom holds every neighbor. Non-periodic structures use the identity as their "cell".

#include "ekd/neighbors.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <sstream>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace ekd {
namespace {

using Mat3 = std::array<std::array<double, 3>, 3>;

double dot3(const double* a, const double* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

std::array<double, 3> cross3(const std::array<double, 3>& a, const std::array<double, 3>& b) {
    return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}

double norm3(const std::array<double, 3>& a) { return std::sqrt(dot3(a.data(), a.data())); }

int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// The cell used for the search. Only the periodic lattice vectors matter for the pairs: no shift
// is ever taken along a non-periodic direction, whose vector may be zero (a slab written with
// c = 0), or anything else. Each non-periodic row is therefore replaced by a unit vector
// orthogonal to the rows kept before it: the matrix stays invertible and the row only shapes the
// bins. (Projecting a coordinate axis out of the other rows one after the other is not enough:
// they are not orthogonal to each other, and the result can stay in their plane.)
Mat3 effective_cell(const double* cell, const bool* pbc) {
    Mat3 h{};
    const bool any_pbc = pbc[0] || pbc[1] || pbc[2];
    if (!any_pbc) {
        for (int k = 0; k < 3; ++k) h[k][k] = 1.0;
        return h;
    }
    for (int k = 0; k < 3; ++k)
        for (int d = 0; d < 3; ++d) h[k][d] = cell[3 * k + d];

    double scale = 0.0;
    for (int k = 0; k < 3; ++k) scale = std::max(scale, norm3(h[k]));
    for (int k = 0; k < 3; ++k) {
        if (pbc[k] && !(norm3(h[k]) > 1e-12 * std::max(scale, 1.0))) {
            std::ostringstream msg;
            msg << "cell: lattice vector " << k << " is zero but the structure is periodic along it";
            throw InputError(msg.str());
        }
    }
    for (int k = 0; k < 3; ++k) {
        if (pbc[k]) continue;
        // Orthonormal basis (Gram-Schmidt) of the rows kept so far: the periodic ones and the
        // non-periodic ones already replaced. Dependent periodic rows are skipped here and
        // reported by the volume check of make_geometry.
        std::array<std::array<double, 3>, 2> basis{};
        int n_basis = 0;
        for (int o = 0; o < 3; ++o) {
            if (o == k || (!pbc[o] && o > k)) continue;
            std::array<double, 3> v = h[o];
            const double n0 = norm3(v);
            for (int q = 0; q < n_basis; ++q) {
                double p = dot3(v.data(), basis[q].data());
                for (int d = 0; d < 3; ++d) v[d] -= p * basis[q][d];
            }
            const double n = norm3(v);
            if (n > 1e-9 * n0 && n_basis < 2) {
                for (int d = 0; d < 3; ++d) basis[n_basis][d] = v[d] / n;
                ++n_basis;
            }
        }
        // The coordinate axis with the largest part orthogonal to that basis (>= 1/sqrt(3)).
        std::array<double, 3> best{};
        double best_norm = -1.0;
        for (int axis = 0; axis < 3; ++axis) {
            std::array<double, 3> v{0.0, 0.0, 0.0};
            v[axis] = 1.0;
            for (int q = 0; q < n_basis; ++q) {
                double p = dot3(v.data(), basis[q].data());
                for (int d = 0; d < 3; ++d) v[d] -= p * basis[q][d];
            }
            const double n = norm3(v);
            if (n > best_norm) {
                best_norm = n;
                for (int d = 0; d < 3; ++d) best[d] = v[d] / n;
            }
        }
        h[k] = best;
    }
    return h;
}

struct Geometry {
    Mat3 h;       // rows: lattice vectors
    Mat3 inv;     // inverse of h: fractional = cartesian @ inv
    double height[3];
    double volume;  // |det h|
};

Geometry make_geometry(const double* cell, const bool* pbc) {
    Geometry g;
    g.h = effective_cell(cell, pbc);
    auto bc = cross3(g.h[1], g.h[2]);
    auto ca = cross3(g.h[2], g.h[0]);
    auto ab = cross3(g.h[0], g.h[1]);
    double det = dot3(g.h[0].data(), bc.data());
    double na = norm3(g.h[0]), nb = norm3(g.h[1]), nc = norm3(g.h[2]);
    if (!(std::abs(det) > 1e-10 * na * nb * nc)) {
        throw InputError("cell: the lattice vectors are linearly dependent (volume " +
                         std::to_string(det) + "); a periodic structure needs a non-singular cell");
    }
    // inverse = adjugate / det, columns are the reciprocal vectors
    for (int d = 0; d < 3; ++d) {
        g.inv[d][0] = bc[d] / det;
        g.inv[d][1] = ca[d] / det;
        g.inv[d][2] = ab[d] / det;
    }
    g.height[0] = std::abs(det) / norm3(bc);
    g.height[1] = std::abs(det) / norm3(ca);
    g.height[2] = std::abs(det) / norm3(ab);
    g.volume = std::abs(det);
    return g;
}

// Atoms sorted into bins, with their positions wrapped into the cell along periodic directions.
// Everything the inner loop reads about atom j (wrapped position, index, wrap shift) is stored in
// bin order, so the atoms of one bin are contiguous in memory.
struct Bins {
    int64_t n[3];                     // bins per direction
    int64_t reach[3];                 // bins searched on each side
    std::vector<int64_t> start;       // CSR offsets, size n0*n1*n2 + 1
    std::vector<int64_t> atom;        // atom index in bin order
    std::vector<double> wx, wy, wz;   // wrapped cartesian positions, in bin order
    std::vector<int64_t> slot_shift;  // image shift removed from each atom, in bin order (3 per atom)
    std::vector<int64_t> slot_of;     // position of each atom in bin order (original order)
    std::vector<int64_t> bin_of;      // bin coordinates of each atom (3 per atom, original order)
    double pairs_per_atom = 0.0;      // expected neighbors of an atom at uniform density
};

Bins make_bins(const double* x, int64_t n_atoms, const Geometry& g, const bool* pbc, double cutoff) {
    Bins b;
    std::vector<double> frac(3 * n_atoms);
    std::vector<int64_t> wrap_shift(3 * n_atoms, 0);
    double lo[3], hi[3];
    for (int k = 0; k < 3; ++k) {
        lo[k] = std::numeric_limits<double>::infinity();
        hi[k] = -lo[k];
    }
    for (int64_t i = 0; i < n_atoms; ++i) {
        const double* r = x + 3 * i;
        for (int k = 0; k < 3; ++k) {
            double f = r[0] * g.inv[0][k] + r[1] * g.inv[1][k] + r[2] * g.inv[2][k];
            if (!std::isfinite(f)) {
                throw InputError("positions: atom " + std::to_string(i) + " has a non-finite coordinate");
            }
            if (pbc[k]) {
                double s = std::floor(f);
                f -= s;
                if (f >= 1.0) {  // f was a tiny negative number: f - floor(f) rounds to 1
                    f -= 1.0;
                    s += 1.0;
                }
                wrap_shift[3 * i + k] = static_cast<int64_t>(s);
            }
            frac[3 * i + k] = f;
            lo[k] = std::min(lo[k], f);
            hi[k] = std::max(hi[k], f);
        }
    }

    // Bin widths: at least cutoff / height (one bin of reach) where the cell allows it.
    double width[3];  // fractional width of a bin
    double volume = g.volume;  // of the region the atoms occupy (+ the cutoff along open directions)
    for (int k = 0; k < 3; ++k) {
        if (pbc[k]) {
            lo[k] = 0.0;
            hi[k] = 1.0;
        }
        double extent = hi[k] - lo[k];
        double extent_cart = extent * g.height[k];
        b.n[k] = std::max<int64_t>(1, static_cast<int64_t>(std::floor(extent_cart / cutoff)));
        if (!pbc[k]) volume *= extent + cutoff / g.height[k];
    }
    // A sparse non-periodic structure would ask for more bins than atoms: coarsen.
    const double max_bins = 8.0 * static_cast<double>(n_atoms) + 27.0;
    double total = static_cast<double>(b.n[0]) * b.n[1] * b.n[2];
    if (total > max_bins) {
        double f = std::cbrt(max_bins / total);
        for (int k = 0; k < 3; ++k)
            b.n[k] = std::max<int64_t>(1, static_cast<int64_t>(std::floor(b.n[k] * f)));
    }
    for (int k = 0; k < 3; ++k) {
        double extent = hi[k] - lo[k];
        width[k] = extent / static_cast<double>(b.n[k]);
        if (extent <= 0.0) {
            b.reach[k] = 0;
            width[k] = 1.0;
        } else {
            double need = cutoff / g.height[k];  // fractional distance to cover
            b.reach[k] = static_cast<int64_t>(std::ceil(need / width[k] * (1.0 + 1e-12)));
            if (!pbc[k]) b.reach[k] = std::min(b.reach[k], b.n[k] - 1);
        }
    }
    // Only a capacity hint for the output arrays.
    const double sphere = 4.0 / 3.0 * 3.141592653589793 * cutoff * cutoff * cutoff;
    b.pairs_per_atom = static_cast<double>(n_atoms) / volume * sphere;
    if (!(pbc[0] || pbc[1] || pbc[2])) b.pairs_per_atom = std::min(b.pairs_per_atom, n_atoms - 1.0);

    const int64_t n_bins = b.n[0] * b.n[1] * b.n[2];
    b.bin_of.resize(3 * n_atoms);
    std::vector<int64_t> flat(n_atoms);
    b.start.assign(n_bins + 1, 0);
    for (int64_t i = 0; i < n_atoms; ++i) {
        int64_t id = 0;
        for (int k = 0; k < 3; ++k) {
            int64_t c = static_cast<int64_t>(std::floor((frac[3 * i + k] - lo[k]) / width[k]));
            c = std::min(std::max<int64_t>(c, 0), b.n[k] - 1);
            b.bin_of[3 * i + k] = c;
            id = id * b.n[k] + c;
        }
        flat[i] = id;
        b.start[id + 1] += 1;
    }
    for (int64_t c = 0; c < n_bins; ++c) b.start[c + 1] += b.start[c];
    std::vector<int64_t> fill(b.start.begin(), b.start.end() - 1);
    b.atom.resize(n_atoms);
    b.slot_of.resize(n_atoms);
    b.wx.resize(n_atoms);
    b.wy.resize(n_atoms);
    b.wz.resize(n_atoms);
    b.slot_shift.resize(3 * n_atoms);
    for (int64_t i = 0; i < n_atoms; ++i) {
        int64_t slot = fill[flat[i]]++;
        b.atom[slot] = i;
        b.slot_of[i] = slot;
        for (int d = 0; d < 3; ++d) {
            double w = x[3 * i + d];
            for (int k = 0; k < 3; ++k) w -= static_cast<double>(wrap_shift[3 * i + k]) * g.h[k][d];
            (d == 0 ? b.wx : d == 1 ? b.wy : b.wz)[slot] = w;
            b.slot_shift[3 * slot + d] = wrap_shift[3 * i + d];
        }
    }
    return b;
}

constexpr int kBlock = 64;  // candidates whose distances are computed together

// Pairs of atoms [begin, end) of one structure, in atom order.
// `visit(i, j, shift, d2)` is called for each pair.
template <typename Visit>
void search_atoms(int64_t begin, int64_t end, const Geometry& g, const bool* pbc, const Bins& b,
                  double cutoff, Visit&& visit) {
    const double cutoff2 = cutoff * cutoff;
    for (int64_t i = begin; i < end; ++i) {
        const int64_t slot_i = b.slot_of[i];
        const double xi[3] = {b.wx[slot_i], b.wy[slot_i], b.wz[slot_i]};
        const int64_t* wi = &b.slot_shift[3 * slot_i];
        const int64_t* bi = &b.bin_of[3 * i];
        for (int64_t dx = -b.reach[0]; dx <= b.reach[0]; ++dx) {
            int64_t tx = bi[0] + dx, ix = 0;
            if (pbc[0]) {
                ix = floor_div(tx, b.n[0]);
                tx -= ix * b.n[0];
            } else if (tx < 0 || tx >= b.n[0]) {
                continue;
            }
            for (int64_t dy = -b.reach[1]; dy <= b.reach[1]; ++dy) {
                int64_t ty = bi[1] + dy, iy = 0;
                if (pbc[1]) {
                    iy = floor_div(ty, b.n[1]);
                    ty -= iy * b.n[1];
                } else if (ty < 0 || ty >= b.n[1]) {
                    continue;
                }
                for (int64_t dz = -b.reach[2]; dz <= b.reach[2]; ++dz) {
                    int64_t tz = bi[2] + dz, iz = 0;
                    if (pbc[2]) {
                        iz = floor_div(tz, b.n[2]);
                        tz -= iz * b.n[2];
                    } else if (tz < 0 || tz >= b.n[2]) {
                        continue;
                    }
                    // r = w_j + image @ h - w_i; shift relative to the unwrapped inputs:
                    // x_j - x_i + shift @ h with shift = image + W_i - W_j.
                    double origin[3];
                    for (int d = 0; d < 3; ++d)
                        origin[d] = ix * g.h[0][d] + iy * g.h[1][d] + iz * g.h[2][d] - xi[d];
                    const int64_t base[3] = {ix + wi[0], iy + wi[1], iz + wi[2]};
                    const bool same_image = (ix == 0 && iy == 0 && iz == 0);
                    const int64_t bin = (tx * b.n[1] + ty) * b.n[2] + tz;
                    // Distances of a block of the bin's atoms first, then the pairs: only ~15% of
                    // the candidates are within the cutoff, and a branch per candidate mispredicts.
                    for (int64_t s0 = b.start[bin]; s0 < b.start[bin + 1]; s0 += kBlock) {
                        const int m = static_cast<int>(std::min<int64_t>(kBlock, b.start[bin + 1] - s0));
                        const double* wx = &b.wx[s0];
                        const double* wy = &b.wy[s0];
                        const double* wz = &b.wz[s0];
                        double d2[kBlock];
                        for (int t = 0; t < m; ++t) {
                            const double r0 = wx[t] + origin[0], r1 = wy[t] + origin[1], r2 = wz[t] + origin[2];
                            d2[t] = r0 * r0 + r1 * r1 + r2 * r2;
                        }
                        int hits[kBlock];
                        int n_hits = 0;
                        for (int t = 0; t < m; ++t) {
                            hits[n_hits] = t;
                            n_hits += d2[t] < cutoff2;
                        }
                        for (int h = 0; h < n_hits; ++h) {
                            const int64_t s = s0 + hits[h];
                            if (same_image && s == slot_i) continue;
                            const int64_t* wj_shift = &b.slot_shift[3 * s];
                            const int64_t shift[3] = {base[0] - wj_shift[0], base[1] - wj_shift[1],
                                                      base[2] - wj_shift[2]};
                            visit(i, b.atom[s], shift, d2[hits[h]]);
                        }
                    }
                }
            }
        }
    }
}

void check_common(int64_t n_atoms, double cutoff) {
    if (n_atoms < 0) throw InputError("positions: negative number of atoms");
    if (!(cutoff > 0.0) || !std::isfinite(cutoff)) {
        throw InputError("cutoff: must be a finite positive number, got " + std::to_string(cutoff));
    }
}

// Large output arrays are written once into fresh memory; with 4 KiB pages the kernel's page
// faults (zeroing and mapping ~25,000 pages per 100 MB) cost more than the search. Ask for
// transparent huge pages on the unused capacity (a hint: ignored where THP is off or absent).
void advise_huge_pages(std::vector<int64_t>& v) {
#ifdef __linux__
    constexpr uintptr_t kHuge = uintptr_t(1) << 21;
    const size_t unused = (v.capacity() - v.size()) * sizeof(int64_t);
    if (unused < 4 * kHuge) return;
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(v.data() + v.size()) + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t hi = reinterpret_cast<uintptr_t>(v.data() + v.capacity()) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
    (void)v;
#endif
}

// Pairs of atoms [begin, end) appended to `out`, with `expected` pairs reserved up front: growing
// the three arrays by doubling copies them and touches fresh pages several times, which costs
// more than the search itself for large lists.
void search_into(int64_t begin, int64_t end, const Geometry& g, const bool* pbc, const Bins& b,
                 double cutoff, int64_t atom_offset, PairList& out) {
    const double expected = 1.1 * b.pairs_per_atom * static_cast<double>(end - begin) + 64.0;
    const size_t capacity = out.size() + static_cast<size_t>(std::min(expected, 1e10));
    out.first.reserve(capacity);
    out.second.reserve(capacity);
    out.shifts.reserve(3 * capacity);
    advise_huge_pages(out.first);
    advise_huge_pages(out.second);
    advise_huge_pages(out.shifts);
    search_atoms(begin, end, g, pbc, b, cutoff, [&](int64_t i, int64_t j, const int64_t* s, double) {
        out.first.push_back(i + atom_offset);
        out.second.push_back(j + atom_offset);
        out.shifts.push_back(s[0]);
        out.shifts.push_back(s[1]);
        out.shifts.push_back(s[2]);
    });
}

}  // namespace

void neighbor_search(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                     double cutoff, int64_t atom_offset, bool parallel, PairList& out) {
    check_common(n_atoms, cutoff);
    if (n_atoms == 0) return;
    const Geometry g = make_geometry(cell, pbc);
    const Bins b = make_bins(positions, n_atoms, g, pbc, cutoff);

    // Chunks of consecutive atoms, concatenated in order: the output (pairs sorted by first atom,
    // then by the search order) is the same whatever the number of chunks or threads. One
    // thread writes straight into `out`; several get a few chunks each for load balance.
    constexpr int64_t kMinChunk = 256;
    const int64_t threads = parallel ? at::get_num_threads() : 1;
    const int64_t n_chunks = std::min((n_atoms + kMinChunk - 1) / kMinChunk, 4 * threads);
    if (threads <= 1 || n_chunks <= 1) {
        search_into(0, n_atoms, g, pbc, b, cutoff, atom_offset, out);
        return;
    }
    const int64_t chunk = (n_atoms + n_chunks - 1) / n_chunks;
    std::vector<PairList> parts(n_chunks);
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            search_into(std::min(n_atoms, c * chunk), std::min(n_atoms, (c + 1) * chunk), g, pbc, b, cutoff,
                        atom_offset, parts[c]);
        }
    });
    size_t total = out.size();
    for (const auto& p : parts) total += p.size();
    out.first.reserve(total);
    out.second.reserve(total);
    out.shifts.reserve(3 * total);
    advise_huge_pages(out.first);
    advise_huge_pages(out.second);
    advise_huge_pages(out.shifts);
    for (const auto& p : parts) {
        out.first.insert(out.first.end(), p.first.begin(), p.first.end());
        out.second.insert(out.second.end(), p.second.begin(), p.second.end());
        out.shifts.insert(out.shifts.end(), p.shifts.begin(), p.shifts.end());
    }
}

double min_pair_distance(const double* positions, int64_t n_atoms, const double* cell,
                         const bool* pbc, double cutoff, int64_t* i_out, int64_t* j_out) {
    check_common(n_atoms, cutoff);
    double best = std::numeric_limits<double>::infinity();
    int64_t bi = -1, bj = -1;
    if (n_atoms > 0) {
        const Geometry g = make_geometry(cell, pbc);
        const Bins b = make_bins(positions, n_atoms, g, pbc, cutoff);
        search_atoms(0, n_atoms, g, pbc, b, cutoff, [&](int64_t i, int64_t j, const int64_t*, double d2) {
            if (d2 < best) {
                best = d2;
                bi = i;
                bj = j;
            }
        });
        best = std::sqrt(best);
    }
    if (i_out) *i_out = bi;
    if (j_out) *j_out = bj;
    return best;
}

}  // namespace ekd
