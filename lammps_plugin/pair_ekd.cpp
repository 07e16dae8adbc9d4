// pair_style ekd: argument parsing, checks, compute() and the virial. Converting LAMMPS data to
// model inputs is in ekd_system.cpp, running models in ekd_model.cpp.
#include "pair_ekd.h"

#include "ekd_metadata.h"
#include "ekd_model.h"
#include "ekd_system.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <cmath>
#include <cstring>
#include <fstream>

using namespace LAMMPS_NS;
using ekd_lammps::ModelError;

PairEKD::PairEKD(LAMMPS *lmp)
    : Pair(lmp), cut_max(0.0), ghost_depth(0.0), nthreads(1), mode(AUTO), fold_images(false), force_std(nullptr), fmodel(nullptr), nmax_std(0),
      nmax_fmodel(0), force_std_flag(0) {
    single_enable = 0;
    restartinfo = 0;
    one_coeff = 1;
    manybody_flag = 1;
    ghostneigh = 1;  // in "ghosts" mode the model needs the neighbors of ghost atoms (init_style)
    // forces on ghosts are summed on their owners; the virial comes from the pair vectors
    no_virial_fdotr_compute = 1;
    centroidstressflag = CENTROID_NOTAVAIL;
    system = std::make_unique<ekd_lammps::EKDSystem>(lmp);
}

PairEKD::~PairEKD() {
    if (allocated) {
        memory->destroy(setflag);
        memory->destroy(cutsq);
        memory->destroy(cutghost);
    }
    memory->destroy(force_std);
    memory->destroy(fmodel);
    delete[] pvector;
}

void PairEKD::allocate() {
    allocated = 1;
    const int n = atom->ntypes + 1;
    memory->create(setflag, n, n, "pair:setflag");
    memory->create(cutsq, n, n, "pair:cutsq");
    memory->create(cutghost, n, n, "pair:cutghost");
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) setflag[i][j] = 0;
}

double PairEKD::energy_factor() const {
    const std::string units = update->unit_style;
    if (units == "real") return 1.0;
    if (units == "metal") return 1.0 / ekd_lammps::EV_TO_KCALMOL;
    error->all(FLERR, "pair_style ekd supports units real and metal (models are in kcal/mol and Angstrom), "
                      "not units " + units);
}

void PairEKD::settings(int narg, char **arg) {
    int iarg = 0;
    while (iarg < narg) {
        if (strcmp(arg[iarg], "threads") == 0) {
            if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "pair_style ekd threads", error);
            nthreads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
            if (nthreads < 1) error->all(FLERR, "pair_style ekd: threads must be >= 1");
            iarg += 2;
        } else if (strcmp(arg[iarg], "mode") == 0) {
            if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "pair_style ekd mode", error);
            const std::string m = arg[iarg + 1];
            if (m == "auto") mode = AUTO;
            else if (m == "ghosts") mode = GHOSTS;
            else if (m == "images") mode = IMAGES;
            else error->all(FLERR, "pair_style ekd: mode must be auto, ghosts or images, got " + m);
            iarg += 2;
        } else {
            error->all(FLERR, std::string("pair_style ekd: unknown keyword ") + arg[iarg] +
                                  "; usage: pair_style ekd [threads N] [mode auto|ghosts|images]");
        }
    }
    ekd_lammps::set_torch_threads(nthreads);
}

void PairEKD::coeff(int narg, char **arg) {
    const std::string usage = "usage: pair_coeff * * model.pt [more.pt ...] E1 ... En (one element per atom type)";
    energy_factor();  // fails early for units other than real / metal
    if (narg < 4) error->all(FLERR, "pair_coeff ekd: too few arguments; " + usage);
    if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
        error->all(FLERR, "pair_coeff ekd: the first two arguments must be * *; " + usage);
    if (!allocated) allocate();

    // trailing element symbols name the atom types; everything before them is a model file
    const int ntypes = atom->ntypes;
    int n_elements = 0;
    while (n_elements < narg - 3 && ekd_lammps::atomic_number(arg[narg - 1 - n_elements]) > 0) ++n_elements;
    if (n_elements != ntypes) {
        std::string found;
        for (int k = narg - n_elements; k < narg; ++k) found += std::string(" ") + arg[k];
        error->all(FLERR, "pair_coeff ekd: the system has " + std::to_string(ntypes) + " atom types, so the line "
                          "must end with " + std::to_string(ntypes) + " element symbols (one per type); found " +
                          std::to_string(n_elements) + ":" + found + "; " + usage);
    }
    const int n_models = narg - 2 - n_elements;

    models.clear();
    infos.clear();
    for (int m = 0; m < n_models; ++m) {
        const std::string path = arg[2 + m];
        if (!std::ifstream(path).good())
            error->all(FLERR, "pair_coeff ekd: cannot open model file " + path +
                              " (missing or unreadable); export a model with `ekd export`");
        try {
            auto json = ekd_lammps::read_metadata_json(path);
            auto info = ekd_lammps::parse_metadata(json, path, ekd_lammps::ekd_version(), ekd_lammps::torch_version());
            models.push_back(std::make_unique<ekd_lammps::Model>(path, info.ops_library, info.dtype == "float32"));
            infos.push_back(info);
        } catch (const ModelError &e) {
            error->all(FLERR, std::string("pair_coeff ekd: ") + e.what());
        }
    }

    std::vector<int64_t> type_to_z(ntypes + 1, 0);
    for (int t = 1; t <= ntypes; ++t) {
        const std::string element = arg[narg - ntypes + t - 1];
        type_to_z[t] = ekd_lammps::atomic_number(element);
        for (const auto &info : infos) {
            bool found = false;
            std::string known;
            for (const auto &s : info.species) {
                found = found || s == element;
                known += " " + s;
            }
            if (!found)
                error->all(FLERR, "pair_coeff ekd: element " + element + " (atom type " + std::to_string(t) +
                                  ") is not among the species of model " + info.path + ":" + known);
        }
    }
    system->set_type_map(type_to_z);

    cut_max = ghost_depth = 0.0;
    for (const auto &info : infos) {
        cut_max = std::max(cut_max, info.cutoff);
        ghost_depth = std::max(ghost_depth, info.receptive_field());
    }
    for (int i = 1; i <= ntypes; ++i)
        for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;

    // per-model forces of ghosts go back to their owners before the spread is taken
    comm_reverse = n_models > 1 ? 3 * n_models : 0;
    // each member's total energy, for `compute pair ekd` (summed over ranks by the compute)
    delete[] pvector;
    nextra = n_models;
    pvector = new double[nextra];

    if (comm->me == 0) {
        for (const auto &info : infos)
            utils::logmesg(lmp, "pair_style ekd: model " + info.path + " (" + info.role + ", " + info.dtype +
                                    ", cutoff " + std::to_string(info.cutoff) + " A, " +
                                    std::to_string(info.n_interactions) + " interaction layers)\n");
    }
}

void PairEKD::init_style() {
    energy_factor();
    if (models.empty()) error->all(FLERR, "pair_style ekd: no model loaded; use pair_coeff * * model.pt E1 ... En");
    if (force->newton_pair == 0)
        error->all(FLERR, "pair_style ekd requires newton pair on: forces on ghost atoms are sent back to their "
                          "owners (remove `newton off`)");
    // LAMMPS drops excluded (weight 0) bonded pairs from neighbor lists and the model would
    // silently lose them; weights other than 1 would be silently ignored
    if (atom->molecular != Atom::ATOMIC) {
        const bigint n_special[4] = {0, atom->nbonds, atom->nangles, atom->ndihedrals};
        for (int k = 1; k <= 3; ++k)
            if (n_special[k] > 0 && (force->special_lj[k] != 1.0 || force->special_coul[k] != 1.0))
                error->all(FLERR, "pair_style ekd needs every pair within the cutoff, bonded or not: use "
                                  "special_bonds lj/coul 1.0 1.0 1.0");
    }

    if (mode == IMAGES && comm->nprocs > 1)
        error->all(FLERR, "pair_style ekd mode images needs a single MPI rank (ghost atoms of other ranks are "
                          "not images of owned atoms); use mode ghosts or auto");
    if (mode == IMAGES && !atom->tag_enable)
        error->all(FLERR, "pair_style ekd mode images needs atom IDs (atom_modify id yes)");
    fold_images = mode == IMAGES || (mode == AUTO && comm->nprocs == 1 && atom->tag_enable);

    if (fold_images) {
        // one rank: ghosts are periodic images of owned atoms and are folded onto them, so the
        // model sees the owned atoms only and an ordinary full list within the cutoff suffices
        ghostneigh = 0;
        neighbor->add_request(this, NeighConst::REQ_FULL);
    } else {
        // Ghost atoms out to the model's receptive field (n_interactions * cutoff) plus the skin
        // (atoms move up to skin/2 between rebuilds), and the ghosts' own neighbors within the
        // cutoff (a ghost list) for the deeper message-passing layers.
        if (comm->mode != Comm::SINGLE)
            error->all(FLERR, "pair_style ekd needs comm_modify mode single in mode ghosts (it sets the ghost "
                              "cutoff itself)");
        ghostneigh = 1;
        neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
        const double need = ghost_depth + neighbor->skin;
        if (comm->cutghostuser < need) {
            comm->cutghostuser = need;
            if (comm->me == 0)
                utils::logmesg(lmp, "pair_style ekd: communication cutoff set to " + std::to_string(need) +
                                        " (interaction layers x cutoff + skin)\n");
        }
    }
    if (comm->me == 0)
        utils::logmesg(lmp, std::string("pair_style ekd: mode ") +
                                (fold_images ? "images (one rank: ghosts folded onto their owners)\n"
                                             : "ghosts (model on owned + ghost atoms)\n"));
    ekd_lammps::set_torch_threads(nthreads);
}

double PairEKD::init_one(int i, int j) {
    cutghost[i][j] = cutghost[j][i] = cut_max;
    return cut_max;
}

void PairEKD::compute(int eflag, int vflag) {
    ev_init(eflag, vflag);

    // never silently wrong: the ghost shell must cover the receptive field
    if (!fold_images && comm->get_comm_cutoff() < ghost_depth + neighbor->skin - 1e-9)
        error->all(FLERR, "pair_style ekd: communication cutoff " + std::to_string(comm->get_comm_cutoff()) +
                          " is below n_interactions x cutoff + skin = " + std::to_string(ghost_depth + neighbor->skin) +
                          "; something reset comm_modify cutoff after the pair style was initialised");

    const double scale = energy_factor();
    const int n_models = static_cast<int>(models.size());
    try {
        system->build(list, cut_max, fold_images);
    } catch (const std::exception &e) {
        error->one(FLERR, std::string("pair_style ekd: ") + e.what());
    }
    const int nlocal = system->n_local();
    const int nall = system->n_all();
    const auto all_pairs = system->inputs();

    if (n_models > 1 && atom->nmax > nmax_fmodel) {
        memory->destroy(fmodel);
        nmax_fmodel = atom->nmax;
        memory->create(fmodel, nmax_fmodel, 3 * n_models, "pair:fmodel");
    }
    if (n_models > 1)
        for (int i = 0; i < nall; ++i)
            for (int k = 0; k < 3 * n_models; ++k) fmodel[i][k] = 0.0;

    std::vector<double> energy(nlocal, 0.0), grad(3 * system->n_pairs(), 0.0);
    std::vector<double> e_m, g_m;
    ekd_lammps::PairSubset subset;
    for (int m = 0; m < n_models; ++m) {
        const bool shorter = infos[m].cutoff < cut_max;
        if (shorter) system->select(infos[m].cutoff, subset);
        const auto pairs = shorter ? system->inputs(subset) : all_pairs;
        try {
            models[m]->evaluate(pairs, nlocal, e_m, g_m);
        } catch (const ModelError &e) {
            error->one(FLERR, std::string("pair_style ekd: ") + e.what());
        }
        double e_total = 0.0;
        for (int i = 0; i < nlocal; ++i) {
            energy[i] += e_m[i] / n_models;
            e_total += e_m[i];
        }
        pvector[m] = scale * e_total;
        for (int64_t p = 0; p < pairs.n_pairs; ++p) {
            const int64_t q = shorter ? subset.index[p] : p;
            for (int k = 0; k < 3; ++k) grad[3 * q + k] += g_m[3 * p + k] / n_models;
        }
        if (n_models > 1) ekd_lammps::add_pair_forces(pairs, g_m, scale, fmodel, 3 * m);
    }

    ekd_lammps::add_pair_forces(all_pairs, grad, scale, atom->f);
    if (eflag_global)
        for (int i = 0; i < nlocal; ++i) eng_vdwl += scale * energy[i];
    if (eflag_atom)
        for (int i = 0; i < nlocal; ++i) eatom[i] += scale * energy[i];
    if (vflag_global || vflag_atom) {
        double w[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        ekd_lammps::add_pair_virial(all_pairs, grad, scale, w, vflag_atom ? vatom : nullptr);
        if (vflag_global)
            for (int k = 0; k < 6; ++k) virial[k] += w[k];
    }
    force_spread();
}

// sqrt(mean_m |F_m - <F>|^2) of the owned atoms, after the ghosts' per-model forces are summed
// on their owners (0 for a single model).
void PairEKD::force_spread() {
    const int nlocal = atom->nlocal;
    if (atom->nmax > nmax_std) {
        memory->destroy(force_std);
        nmax_std = atom->nmax;
        memory->create(force_std, nmax_std, "pair:force_std");
    }
    const int n_models = static_cast<int>(models.size());
    if (n_models < 2) {
        for (int i = 0; i < nlocal; ++i) force_std[i] = 0.0;
        return;
    }
    comm->reverse_comm(this);
    for (int i = 0; i < nlocal; ++i) {
        double mean[3] = {0.0, 0.0, 0.0}, var = 0.0;
        for (int m = 0; m < n_models; ++m)
            for (int k = 0; k < 3; ++k) mean[k] += fmodel[i][3 * m + k] / n_models;
        for (int m = 0; m < n_models; ++m)
            for (int k = 0; k < 3; ++k) {
                const double d = fmodel[i][3 * m + k] - mean[k];
                var += d * d / n_models;
            }
        force_std[i] = std::sqrt(var);
    }
}

int PairEKD::pack_reverse_comm(int n, int first, double *buf) {
    int m = 0;
    for (int i = first; i < first + n; ++i)
        for (int k = 0; k < comm_reverse; ++k) buf[m++] = fmodel[i][k];
    return m;
}

void PairEKD::unpack_reverse_comm(int n, int *list, double *buf) {
    int m = 0;
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < comm_reverse; ++k) fmodel[list[i]][k] += buf[m++];
}

void *PairEKD::extract(const char *name, int &dim) {
    if (strcmp(name, "force_std_flag") == 0) {
        dim = 0;
        return &force_std_flag;
    }
    if (strcmp(name, "cut_ghost") == 0) {
        dim = 0;
        return &ghost_depth;
    }
    return nullptr;
}

void *PairEKD::extract_peratom(const char *name, int &ncol) {
    if (strcmp(name, "force_std") == 0) {
        ncol = 0;
        return force_std;
    }
    return nullptr;
}

double PairEKD::memory_usage() {
    double bytes = Pair::memory_usage();
    bytes += static_cast<double>(nmax_std) * sizeof(double);
    bytes += static_cast<double>(nmax_fmodel) * 3 * models.size() * sizeof(double);
    return bytes;
}
