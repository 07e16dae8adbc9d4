// LAMMPS atoms, ghosts and neighbor lists -> inputs of a deployed ekd model, and the model's
// pair gradients -> LAMMPS forces and virial. The pair style (pair_ekd.cpp) stays thin.
//
// Ghost atoms: a model with n interaction layers gives owned atom i an energy that depends on
// every atom up to n * cutoff away, and on the pairs among them. Two correct ways (see build()):
//  * "ghosts": LAMMPS supplies ghost atoms out to n * cutoff (+ skin) and a neighbor list that
//    includes the ghosts' own neighbors (the pair style arranges both). The model runs on owned +
//    ghost atoms and only the owned atoms' energies are summed: ghosts near the edge of the shell
//    get wrong energies of their own, but those are never used, and the gradient of the owned
//    energies with respect to every pair vector (ghost pairs included) gives forces on owned and
//    ghost atoms; LAMMPS's reverse communication adds the ghosts' forces to their owners.
//  * "images" (one rank): ghosts are periodic images of owned atoms; folding them onto their
//    owners gives the periodic system itself, and the model needs no ghost shell at all.
//  * "halo" (format ekd-model-2, any number of ranks): one cutoff (+ skin) of ghosts and the
//    pairs of the owned atoms only; the model runs layer by layer and the pair style overwrites
//    the ghosts' features with their owners' after each layer (LAMMPS forward communication),
//    and sums the ghosts' feature gradients on their owners in the backward pass (reverse
//    communication). See Model::evaluate_halo.
#pragma once

#include "ekd_model.h"

#include "pointers.h"

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace LAMMPS_NS {
class NeighList;
}  // namespace LAMMPS_NS

namespace ekd_lammps {

enum class GhostMode { GHOSTS, IMAGES, HALO };

// Pairs of a shorter cutoff, for ensemble members with a smaller cutoff than the largest one.
struct PairSubset {
    std::vector<int64_t> index;  // position of each selected pair in the full list
    std::vector<int64_t> first, second, second_lammps;
    std::vector<double> r;
};

class EKDSystem : protected LAMMPS_NS::Pointers {
public:
    explicit EKDSystem(LAMMPS_NS::LAMMPS *lmp) : Pointers(lmp) {}

    // atomic number of each LAMMPS atom type (index 1..ntypes; index 0 unused)
    void set_type_map(const std::vector<int64_t> &type_to_z) { type_to_z_ = type_to_z; }
    const std::vector<int64_t> &type_map() const { return type_to_z_; }

    // Gathers the model's atoms and every pair closer than `cutoff` (Angstrom; LAMMPS real and
    // metal units are both Angstrom); r_p = x_j - x_i from LAMMPS's (image) coordinates.
    //  * fold_images = false ("ghosts" mode, any number of ranks): the model's atoms are owned +
    //    ghost atoms (owned first, LAMMPS order); `list` is a full list that includes the ghost
    //    atoms' neighbors.
    //  * fold_images = true ("images" mode, one rank only): every ghost is a periodic image of an
    //    owned atom, so each pair (i, ghost j) becomes (i, owner of j) with the image's r_p, and
    //    the model runs on the owned atoms only, exactly like the ASE calculator: no ghost shell
    //    of n_interactions x cutoff to evaluate. `list` is a full list of the owned atoms.
    //  * HALO (any number of ranks): the pairs of the owned atoms (`list` is a full list of the
    //    owned atoms); the model's atoms are the owned atoms, then (with atom IDs) one row per atom
    //    of another rank that is a partner of an owned atom: periodic images of owned atoms are
    //    folded onto them as in IMAGES, several images of one atom of another rank share a row,
    //    and ghosts in the skin that are nobody's partner are left out. Without atom IDs: owned +
    //    all ghost atoms. lammps_row() maps model rows back to LAMMPS atoms for the exchange.
    // Throws std::runtime_error naming both atom IDs if two atoms sit at the same position.
    void build(LAMMPS_NS::NeighList *list, double cutoff, GhostMode mode);

    // The pairs of the last build() shorter than `cutoff`.
    void select(double cutoff, PairSubset &out) const;

    PairInputs inputs() const;
    PairInputs inputs(const PairSubset &subset) const;
    // the same pairs with LAMMPS's atom indices as second atoms (for forces and per-atom virials:
    // a ghost's force goes to its owner by LAMMPS's reverse communication)
    PairInputs lammps_pairs() const;
    PairInputs lammps_pairs(const PairSubset &subset) const;
    // LAMMPS index of each model row (owned atoms: themselves; others: a ghost copy)
    const std::vector<int> &lammps_row() const { return lammps_of_row_; }

    int n_local() const { return n_local_; }
    int n_all() const { return n_all_; }        // owned + ghost atoms in LAMMPS
    int n_model() const { return n_model_; }    // atoms the model sees
    int64_t n_pairs() const { return static_cast<int64_t>(first_.size()); }
    const std::vector<int64_t> &first() const { return first_; }
    const std::vector<int64_t> &second() const { return second_; }
    const std::vector<double> &r() const { return r_; }

private:
    [[noreturn]] void coincident(int i, int j, double distance) const;

    std::vector<int64_t> type_to_z_;
    int n_local_ = 0, n_all_ = 0, n_model_ = 0;
    std::vector<int64_t> species_, first_, second_, second_lammps_;
    // images and halo: atom ID -> model row, and the model row of each LAMMPS atom (-1: not looked
    // up yet). A hash map, so memory follows the atoms of this rank, not the largest atom ID
    // (IDs may be sparse, up to 2^31 - 1)
    std::unordered_map<LAMMPS_NS::tagint, int> row_of_tag_;
    std::vector<int> row_of_atom_, lammps_of_row_;
    std::vector<double> r_;
};

// f[i][col..col+2] += scale * g_p and f[j][col..col+2] -= scale * g_p for every pair p = (i, j)
// (g = dE/dr_ij, so these are the forces -dE/dx).
void add_pair_forces(const PairInputs &pairs, const std::vector<double> &grad, double scale, double **f, int col = 0);

// Virial W = -scale * sum_p r_p (x) g_p in LAMMPS's order xx, yy, zz, xy, xz, yz, added to `w`;
// with `vatom` (owned + ghost rows) each pair's share is split evenly between its two atoms.
void add_pair_virial(const PairInputs &pairs, const std::vector<double> &grad, double scale, double w[6],
                     double **vatom);

}  // namespace ekd_lammps
