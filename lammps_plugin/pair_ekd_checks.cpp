// pair_style ekd's input checks: settings under which LAMMPS's neighbor lists lack pairs the
// model needs, and pair_coeff elements that contradict the atom types' masses. Each is a wrong
// energy with exit code 0 if let through.
#include "pair_ekd.h"

#include "ekd_system.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "neighbor.h"

#include <cmath>
#include <string>

using namespace LAMMPS_NS;

namespace {

// Standard atomic weights (g/mol) of H..Xe, for checking the pair_coeff elements against the
// types' masses; 0 = not checked.
double standard_mass(int z) {
    static const double mass[] = {
        0.0,     1.008,   4.0026,  6.94,    9.0122,  10.81,   12.011,  14.007,  15.999,  18.998,  20.180,
        22.990,  24.305,  26.982,  28.085,  30.974,  32.06,   35.45,   39.948,  39.098,  40.078,  44.956,
        47.867,  50.942,  51.996,  54.938,  55.845,  58.933,  58.693,  63.546,  65.38,   69.723,  72.630,
        74.922,  78.971,  79.904,  83.798,  85.468,  87.62,   88.906,  91.224,  92.906,  95.95,   97.0,
        101.07,  102.91,  106.42,  107.87,  112.41,  114.82,  118.71,  121.76,  127.60,  126.90,  131.29};
    return z > 0 && z < static_cast<int>(sizeof(mass) / sizeof(mass[0])) ? mass[z] : 0.0;
}

}  // namespace

// The model needs every pair within its cutoff, at full weight: LAMMPS settings that drop pairs
// from the neighbor lists (or weight them, which the model cannot do) would give wrong energies
// and forces without any sign.
void PairEKD::check_all_pairs() {
    // special bonds: LAMMPS finds 1-2, 1-3 and 1-4 partners from the bonds alone (angles and
    // dihedrals need not exist), drops pairs of weight 0 and marks the others
    const bool bonded = atom->molecular != Atom::ATOMIC &&
                        (atom->nbonds > 0 || atom->nangles > 0 || atom->ndihedrals > 0 || atom->nimpropers > 0);
    bool full_weight = true;
    for (int k = 1; k <= 3; ++k) full_weight = full_weight && force->special_lj[k] == 1.0 && force->special_coul[k] == 1.0;
    if (bonded && !full_weight)
        error->all(FLERR, fmt::format("pair_style ekd needs every pair within the cutoff at full weight, bonded or "
                                      "not, but the system has bonds and special_bonds is lj {:g} {:g} {:g} coul {:g} "
                                      "{:g} {:g}: LAMMPS removes the 1-2, 1-3 and 1-4 pairs of weight 0 from the "
                                      "neighbor lists (1-3 and 1-4 follow from the bonds alone), and the model "
                                      "cannot weight pairs; use special_bonds lj/coul 1.0 1.0 1.0",
                                      force->special_lj[1], force->special_lj[2], force->special_lj[3],
                                      force->special_coul[1], force->special_coul[2], force->special_coul[3]));
    if (neighbor->nex_type > 0 || neighbor->nex_group > 0 || neighbor->nex_mol > 0)
        error->all(FLERR, fmt::format("pair_style ekd needs every pair within the cutoff, but neigh_modify exclude "
                                      "removes pairs from the neighbor lists ({} type, {} group and {} molecule "
                                      "exclusions) and the model would silently miss them; remove them with "
                                      "neigh_modify exclude none",
                                      neighbor->nex_type, neighbor->nex_group, neighbor->nex_mol));
    if (neighbor->includegroup)
        error->all(FLERR, "pair_style ekd needs the pairs of every atom, but neigh_modify include limits the "
                          "neighbor lists to one group and the model would silently miss the others; remove it "
                          "with neigh_modify include all");
}

// A pair_coeff element order that does not follow the atom types gives plausible-looking but
// wrong energies; the types' masses tell which element each type is.
void PairEKD::check_masses() {
    const int ntypes = atom->ntypes;
    const auto &z_of_type = system->type_map();
    if (atom->rmass_flag || atom->mass == nullptr) {
        if (comm->me == 0)
            error->warning(FLERR, "pair_style ekd: per-atom masses; cannot check that the pair_coeff elements match "
                                  "the atom types");
        return;
    }
    std::string warnings;
    for (int t = 1; t <= ntypes; ++t) {
        const int z = static_cast<int>(z_of_type[t]);
        const double expected = standard_mass(z);
        const std::string element = type_elements[t];
        if (expected == 0.0) continue;
        if (!atom->mass_setflag[t]) {
            warnings += "pair_style ekd: the mass of atom type " + std::to_string(t) + " is not set; cannot check "
                        "that it is " + element + " as pair_coeff says\n";
            continue;
        }
        const double m = atom->mass[t];
        const double tol = 0.005;  // relative; standard atomic weights vs. the masses tools write
        if (std::fabs(m - expected) <= tol * expected) continue;
        // the mass of another element of the pair_coeff line: the elements are in the wrong order
        for (int u = 1; u <= ntypes; ++u) {
            const double other = standard_mass(static_cast<int>(z_of_type[u]));
            if (z_of_type[u] != z && other > 0.0 && std::fabs(m - other) <= tol * other) {
                std::string order;
                for (int v = 1; v <= ntypes; ++v) order += " " + type_elements[v];
                error->all(FLERR, "pair_coeff ekd: atom type " + std::to_string(t) + " has mass " + fmt::format("{:.6g}", m) +
                                      ", the mass of " + type_elements[u] +
                                      ", but pair_coeff gives it element " + element + " (" + fmt::format("{:.6g}", expected) +
                                      "); the elements after the model files name the atom types in order (now:" + order +
                                      "): reorder them to match the types' masses, or fix the masses");
            }
        }
        warnings += "pair_style ekd: atom type " + std::to_string(t) + " has mass " + fmt::format("{:.6g}", m) +
                    " but pair_coeff gives it element " + element + " (" + fmt::format("{:.6g}", expected) +
                    "); fine for an isotope or repartitioned masses, otherwise check the pair_coeff element order\n";
    }
    if (!warnings.empty() && comm->me == 0 && warnings != mass_warnings) error->warning(FLERR, warnings);
    mass_warnings = warnings;
}
