// Plain C++ API of ekd's neighbor search, shared by the torch op (csrc/cpu/neighbors.cpp) and the
// Python helper module (ekd._C); the LAMMPS plugin uses LAMMPS's own neighbor lists instead. No
// torch types here on purpose: a caller that is not a torch op (pybind11) should not need the
// dispatcher to find pairs.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ekd {

// Pairs of one or more structures. Pair p connects atom first[p] to atom second[p] with the
// displacement   r_p = x[second[p]] - x[first[p]] + shifts[3p..3p+2] @ cell   (cell rows are
// the lattice vectors). The list is "full": both (i, j) and (j, i) appear.
struct PairList {
    std::vector<int64_t> first;
    std::vector<int64_t> second;
    std::vector<int64_t> shifts;  // 3 per pair

    size_t size() const { return first.size(); }
};

// Thrown for inputs that cannot describe a structure (e.g. a singular periodic cell). The
// message names the argument; the op wrapper turns it into a torch error, ekd._C into a Python ValueError.
struct InputError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// All pairs with |r| < cutoff in one structure of n_atoms atoms.
//   positions: n_atoms x 3, row-major, Angstrom (any length unit, consistent with cutoff)
//   cell:      3 x 3 row-major, rows are lattice vectors; ignored when no direction is periodic
//   pbc:       3 flags; a non-periodic direction may have a zero cell vector
//   atom_offset is added to every atom index written to `out` (batched callers).
//   parallel: split the atoms over torch's intra-op threads (output order does not depend on it).
// Appends to `out`. O(n_atoms) with a cell list; cells smaller than the cutoff give every image.
void neighbor_search(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                     double cutoff, int64_t atom_offset, bool parallel, PairList& out);

// Smallest distance between two atoms of one structure among pairs closer than `cutoff`;
// returns +inf when there is no such pair. Used by MD stability checks (O(N) per frame).
// If i_out / j_out are not null they receive the pair's atoms (or -1).
double min_pair_distance(const double* positions, int64_t n_atoms, const double* cell,
                         const bool* pbc, double cutoff, int64_t* i_out, int64_t* j_out);

}  // namespace ekd
