#include "ekd_system.h"

#include "atom.h"
#include "neigh_list.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace ekd_lammps {

namespace {

// Atoms closer than this (Angstrom) are "at the same position".
constexpr double COINCIDENT = 1e-8;

}  // namespace

void EKDSystem::coincident(int i, int j, double distance) const {
    char d[32];
    std::snprintf(d, sizeof d, "%.3g", distance);
    const auto id = [this](int k) {
        return atom->tag_enable ? "ID " + std::to_string(atom->tag[k]) : "index " + std::to_string(k);
    };
    throw std::runtime_error("atoms " + id(i) + " and " + id(j) + " are at the same position (distance " + d +
                             " Angstrom; periodic images included), where the model's energy and forces are "
                             "undefined; remove the duplicate atom or fix its coordinates in the input");
}

void EKDSystem::build(LAMMPS_NS::NeighList *list, double cutoff, GhostMode mode) {
    const bool fold_images = mode == GhostMode::IMAGES;
    // halo: each atom once (by ID), and only the ghosts that are partners of owned atoms
    const bool halo_fold = mode == GhostMode::HALO && atom->tag_enable;
    const double *const *x = atom->x;
    const int *type = atom->type;
    const LAMMPS_NS::tagint *tag = atom->tag;
    n_local_ = atom->nlocal;
    n_all_ = atom->nlocal + atom->nghost;
    n_model_ = fold_images || halo_fold ? n_local_ : n_all_;

    if (fold_images || halo_fold) {
        // ghosts carry the ID (tag) of the atom they are a copy of
        row_of_tag_.clear();
        row_of_tag_.reserve(static_cast<size_t>(n_all_));
        row_of_atom_.assign(n_all_, -1);
        for (int i = 0; i < n_local_; ++i) {
            row_of_tag_.emplace(tag[i], i);
            row_of_atom_[i] = i;
        }
    }
    if (fold_images) {
        for (int i = n_local_; i < n_all_; ++i) {
            const auto owner = row_of_tag_.find(tag[i]);
            if (owner == row_of_tag_.end())
                throw std::runtime_error("ghost atom with ID " + std::to_string(tag[i]) +
                                         " is not an image of an atom of this rank; use pair_style ekd mode halo");
            row_of_atom_[i] = owner->second;
        }
    }

    species_.resize(n_model_);
    for (int i = 0; i < n_model_; ++i) species_[i] = type_to_z_[type[i]];
    lammps_of_row_.resize(n_model_);
    for (int i = 0; i < n_model_; ++i) lammps_of_row_[i] = i;

    first_.clear();
    second_.clear();
    second_lammps_.clear();
    r_.clear();
    const double cutsq = cutoff * cutoff;
    // ghosts mode: inum owned atoms, then gnum ghost atoms, whose neighbors deeper layers need
    const int n_lists = mode == GhostMode::GHOSTS ? list->inum + list->gnum : list->inum;
    for (int ii = 0; ii < n_lists; ++ii) {
        const int i = list->ilist[ii];
        const int *jlist = list->firstneigh[i];
        const int jnum = list->numneigh[i];
        for (int jj = 0; jj < jnum; ++jj) {
            const int j = jlist[jj] & NEIGHMASK;  // strip the special-bond bits
            const double dx = x[j][0] - x[i][0];
            const double dy = x[j][1] - x[i][1];
            const double dz = x[j][2] - x[i][2];
            const double rsq = dx * dx + dy * dy + dz * dz;
            if (rsq >= cutsq) continue;
            // the model's radial functions are singular at r = 0 (NaN energies and forces)
            if (rsq < COINCIDENT * COINCIDENT) coincident(i, j, std::sqrt(rsq));
            int row = j;
            if (fold_images) {
                row = row_of_atom_[j];
            } else if (halo_fold && j >= n_local_) {
                // a periodic image of an owned atom is that atom; a copy of another rank's atom gets
                // one model row however many images of it are here (its features do not depend on
                // the image), represented by the first ghost copy met
                row = row_of_atom_[j];
                if (row < 0) {
                    const auto found = row_of_tag_.emplace(tag[j], n_model_);
                    if (found.second) {  // from now on: the atom's model row
                        ++n_model_;
                        lammps_of_row_.push_back(j);
                        species_.push_back(type_to_z_[type[j]]);
                    }
                    row = row_of_atom_[j] = found.first->second;
                }
            }
            first_.push_back(i);
            second_.push_back(row);
            second_lammps_.push_back(j);
            r_.push_back(dx);
            r_.push_back(dy);
            r_.push_back(dz);
        }
    }
}

void EKDSystem::select(double cutoff, PairSubset &out) const {
    out.index.clear();
    out.first.clear();
    out.second.clear();
    out.second_lammps.clear();
    out.r.clear();
    const double cutsq = cutoff * cutoff;
    for (size_t p = 0; p < first_.size(); ++p) {
        const double *d = &r_[3 * p];
        if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] >= cutsq) continue;
        out.index.push_back(static_cast<int64_t>(p));
        out.first.push_back(first_[p]);
        out.second.push_back(second_[p]);
        out.second_lammps.push_back(second_lammps_[p]);
        out.r.insert(out.r.end(), d, d + 3);
    }
}

PairInputs EKDSystem::inputs() const {
    PairInputs in;
    in.species = species_.data();
    in.n_atoms = n_model_;
    in.first = first_.data();
    in.second = second_.data();
    in.r = r_.data();
    in.n_pairs = n_pairs();
    return in;
}

PairInputs EKDSystem::inputs(const PairSubset &subset) const {
    PairInputs in = inputs();
    in.first = subset.first.data();
    in.second = subset.second.data();
    in.r = subset.r.data();
    in.n_pairs = static_cast<int64_t>(subset.first.size());
    return in;
}

PairInputs EKDSystem::lammps_pairs() const {
    PairInputs in = inputs();
    in.second = second_lammps_.data();
    return in;
}

PairInputs EKDSystem::lammps_pairs(const PairSubset &subset) const {
    PairInputs in = inputs(subset);
    in.second = subset.second_lammps.data();
    return in;
}

void add_pair_forces(const PairInputs &pairs, const std::vector<double> &grad, double scale, double **f, int col) {
    for (int64_t p = 0; p < pairs.n_pairs; ++p) {
        double *fi = f[pairs.first[p]] + col;
        double *fj = f[pairs.second[p]] + col;
        for (int k = 0; k < 3; ++k) {
            const double g = scale * grad[3 * p + k];
            fi[k] += g;
            fj[k] -= g;
        }
    }
}

void add_pair_virial(const PairInputs &pairs, const std::vector<double> &grad, double scale, double w[6],
                     double **vatom) {
    for (int64_t p = 0; p < pairs.n_pairs; ++p) {
        const double *r = pairs.r + 3 * p;
        const double *g = grad.data() + 3 * p;
        const double v[6] = {-scale * r[0] * g[0], -scale * r[1] * g[1], -scale * r[2] * g[2],
                             -scale * r[0] * g[1], -scale * r[0] * g[2], -scale * r[1] * g[2]};
        for (int k = 0; k < 6; ++k) w[k] += v[k];
        if (vatom) {
            double *vi = vatom[pairs.first[p]];
            double *vj = vatom[pairs.second[p]];
            for (int k = 0; k < 6; ++k) {
                vi[k] += 0.5 * v[k];
                vj[k] += 0.5 * v[k];
            }
        }
    }
}

}  // namespace ekd_lammps
