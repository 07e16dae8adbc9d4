// pair_style ekd: argument parsing, mode choice, compute() and the virial. The input checks are in
// pair_ekd_checks.cpp, the halo exchange in pair_ekd_comm.cpp, converting LAMMPS data to model
// inputs in ekd_system.cpp, running models in ekd_model.cpp.
#include "pair_ekd.h"

#include "ekd_metadata.h"
#include "ekd_model.h"
#include "ekd_model_file.h"
#include "ekd_system.h"
#include "pair_ekd_comm.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

using namespace LAMMPS_NS;
using ekd_lammps::GhostMode;
using ekd_lammps::ModelError;

PairEKD::PairEKD(LAMMPS *lmp)
    : Pair(lmp), cut_max(0.0), ghost_depth(0.0), nthreads(1), mode(AUTO), ghost_mode(GhostMode::GHOSTS),
      comm_rows(nullptr), comm_width(0), halo_time(0.0), halo_cpu(0.0), pair_cpu(0.0), force_std(nullptr), fmodel(nullptr), nmax_std(0),
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
            else if (m == "halo") mode = HALO;
            else if (m == "ghosts") mode = GHOSTS;
            else if (m == "images") mode = IMAGES;
            else error->all(FLERR, "pair_style ekd: mode must be auto, halo, ghosts or images, got " + m);
            iarg += 2;
        } else if (strcmp(arg[iarg], "device") == 0) {
            if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "pair_style ekd device", error);
            device = arg[iarg + 1];
            if (device != "cpu" && device.rfind("cuda", 0) != 0)
                error->all(FLERR, "pair_style ekd: device must be cpu, cuda or cuda:N, got " + device);
            iarg += 2;
        } else if (strcmp(arg[iarg], "trust_code") == 0) {
            if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "pair_style ekd trust_code", error);
            trust_code = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
            iarg += 2;
        } else {
            error->all(FLERR, std::string("pair_style ekd: unknown keyword ") + arg[iarg] +
                                  "; usage: pair_style ekd [threads N] [mode auto|halo|ghosts|images] [device cpu|cuda|cuda:N] "
                                  "[trust_code no|yes]");
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
        try {
            // read once, by rank 0 for all: the checks and the load see these bytes (issue 24)
            const auto file = ekd_lammps::read_model_file(path, world);
            auto info = ekd_lammps::parse_metadata(file, ekd_lammps::ekd_version(), ekd_lammps::torch_version());
            models.push_back(std::make_unique<ekd_lammps::Model>(file, info.ops_library, info.dtype == "float32", trust_code));
            if (device != "cpu") models.back()->set_device(device);  // inputs copied there every step
            infos.push_back(info);
        } catch (const ModelError &e) {
            error->all(FLERR, std::string("pair_coeff ekd: ") + e.what());
        }
    }

    std::vector<int64_t> type_to_z(ntypes + 1, 0);
    type_elements.assign(ntypes + 1, "");
    mass_warnings.clear();
    for (int t = 1; t <= ntypes; ++t) {
        const std::string element = arg[narg - ntypes + t - 1];
        type_elements[t] = element;
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

    // reverse: per-model forces of ghosts go back to their owners before the spread is taken, and
    // in mode halo the feature gradients; forward: the features (set in init_style)
    comm_reverse = n_models > 1 ? 3 * n_models : 0;
    comm_forward = 0;
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
    check_all_pairs();

    if (mode == IMAGES && comm->nprocs > 1)
        error->all(FLERR, "pair_style ekd mode images needs a single MPI rank (ghost atoms of other ranks are "
                          "not images of owned atoms); use mode halo, ghosts or auto");
    if (mode == IMAGES && !atom->tag_enable)
        error->all(FLERR, "pair_style ekd mode images needs atom IDs (atom_modify id yes)");
    // format ekd-model-1 files and AOTInductor packages (ekd-aoti-1) have no per-layer methods:
    // they run in mode ghosts (or images) only
    std::string no_stages;
    for (size_t m = 0; m < models.size(); ++m)
        if (!models[m]->has_stages())
            no_stages += (no_stages.empty() ? "" : ", ") + infos[m].path + " (format " + infos[m].format + ")";
    if (mode == HALO && !no_stages.empty())
        error->all(FLERR, "pair_style ekd mode halo needs models with per-layer methods (format ekd-model-2), but " +
                          no_stages + " has none; use pair_style ekd mode ghosts for it, or re-export the "
                          "model with this ekd as TorchScript (`ekd export`)");
    std::string why;
    if (mode == IMAGES || (mode == AUTO && comm->nprocs == 1 && atom->tag_enable)) {
        ghost_mode = GhostMode::IMAGES;
    } else if (mode == HALO || (mode == AUTO && no_stages.empty() && device == "cpu")) {
        ghost_mode = GhostMode::HALO;
    } else {
        ghost_mode = GhostMode::GHOSTS;
        if (mode == AUTO && device != "cpu")
            why = " (auto: device " + device + " runs the whole model per step; mode halo exchanges on the CPU)";
        else if (mode == AUTO)
            why = comm->nprocs == 1 ? " (auto: no atom IDs for mode images, and " + no_stages +
                                          " has no per-layer methods, which mode halo needs)"
                                    : " (auto: " + no_stages + " has no per-layer methods, which mode halo needs; "
                                      "re-export it with this ekd as TorchScript for the faster mode halo)";
    }
    // the per-layer exchange of mode halo runs on the CPU; on a GPU the whole model runs per step
    if (device != "cpu" && ghost_mode == GhostMode::HALO)
        error->all(FLERR, "pair_style ekd device " + device + " runs the whole model once per step (modes images and "
                          "ghosts); mode halo exchanges features between layers on the CPU: use mode ghosts or auto");

    comm_forward = 0;
    comm_reverse = models.size() > 1 ? 3 * static_cast<int>(models.size()) : 0;
    if (ghost_mode == GhostMode::IMAGES) {
        // one rank: ghosts are periodic images of owned atoms and are folded onto them, so the
        // model sees the owned atoms only and an ordinary full list within the cutoff suffices
        ghostneigh = 0;
        neighbor->add_request(this, NeighConst::REQ_FULL);
    } else if (ghost_mode == GhostMode::HALO) {
        // one cutoff (+ skin, LAMMPS's default ghost cutoff) of ghosts and a full list of the owned
        // atoms; the features of the deeper layers come from the ghosts' owners (HaloComm)
        ghostneigh = 0;
        neighbor->add_request(this, NeighConst::REQ_FULL);
        for (const auto &model : models)
            for (auto w : model->feature_widths()) {
                comm_forward = std::max(comm_forward, static_cast<int>(w));
                comm_reverse = std::max(comm_reverse, static_cast<int>(w));
            }
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
    // Inside pair_style hybrid(/overlay) LAMMPS sizes its communication buffers from the hybrid
    // style's comm_forward/comm_reverse, which it took from the sub-styles when pair_style was
    // read, before the models and the mode were known here; the exchange would write past the
    // buffers (heap corruption). Comm::init() reads them after init_style(): raise them now.
    if (force->pair != this) {
        force->pair->comm_forward = std::max(force->pair->comm_forward, comm_forward);
        force->pair->comm_reverse = std::max(force->pair->comm_reverse, comm_reverse);
    }
    if (comm->me == 0) {
        const char *what = ghost_mode == GhostMode::IMAGES ? "images (one rank: ghosts folded onto their owners)"
                           : ghost_mode == GhostMode::HALO
                               ? "halo (one cutoff of ghosts; features exchanged after every interaction layer)"
                               : "ghosts (model on owned + ghost atoms)";
        utils::logmesg(lmp, std::string("pair_style ekd: mode ") + what + why + "\n");
        if (ghost_mode == GhostMode::HALO)
            for (size_t m = 0; m < models.size(); ++m)
                if (!models[m]->shares_geometry())
                    utils::logmesg(lmp, "pair_style ekd: model " + infos[m].path +
                                            " was exported before the layers shared one pair geometry: mode halo "
                                            "recomputes it in every layer (same results; re-export the model with "
                                            "`ekd export` for a faster step)\n");
    }
    check_masses();
    halo_time = halo_cpu = pair_cpu = 0.0;
    ekd_lammps::set_torch_threads(nthreads);
}

double PairEKD::init_one(int i, int j) {
    cutghost[i][j] = cutghost[j][i] = cut_max;
    return cut_max;
}

void PairEKD::compute(int eflag, int vflag) {
    ev_init(eflag, vflag);
    const double cpu0 = thread_cpu();

    // never silently wrong: the ghost shell must cover the receptive field
    if (ghost_mode == GhostMode::GHOSTS && comm->get_comm_cutoff() < ghost_depth + neighbor->skin - 1e-9)
        error->all(FLERR, "pair_style ekd: communication cutoff " + std::to_string(comm->get_comm_cutoff()) +
                          " is below n_interactions x cutoff + skin = " + std::to_string(ghost_depth + neighbor->skin) +
                          "; something reset comm_modify cutoff after the pair style was initialised");

    // pair_style hybrid gives a sub-style a list without the type pairs assigned to other styles
    if (list->ijskip)
        error->all(FLERR, "pair_style ekd needs every type pair, but pair_style hybrid assigns some to another "
                          "sub-style (a pair_coeff after `pair_coeff * * ekd ...`), so the model would silently "
                          "miss those pairs; use pair_style hybrid/overlay to add a style to ekd");

    const double scale = energy_factor();
    const int n_models = static_cast<int>(models.size());
    try {
        system->build(list, cut_max, ghost_mode);
    } catch (const std::exception &e) {
        error->one(FLERR, std::string("pair_style ekd: ") + e.what());
    }
    const int nlocal = system->n_local();
    const int nall = system->n_all();
    const auto all_pairs = system->inputs();
    const auto all_lammps_pairs = system->lammps_pairs();

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
    HaloComm halo(this, system->lammps_row());
    for (int m = 0; m < n_models; ++m) {
        const bool shorter = infos[m].cutoff < cut_max;
        if (shorter) system->select(infos[m].cutoff, subset);
        const auto pairs = shorter ? system->inputs(subset) : all_pairs;
        try {
            if (ghost_mode == GhostMode::HALO) models[m]->evaluate_halo(pairs, nlocal, halo, e_m, g_m);
            else models[m]->evaluate(pairs, nlocal, e_m, g_m);
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
        if (n_models > 1)
            ekd_lammps::add_pair_forces(shorter ? system->lammps_pairs(subset) : all_lammps_pairs, g_m, scale, fmodel,
                                        3 * m);
    }

    ekd_lammps::add_pair_forces(all_lammps_pairs, grad, scale, atom->f);
    if (eflag_global)
        for (int i = 0; i < nlocal; ++i) eng_vdwl += scale * energy[i];
    if (eflag_atom)
        for (int i = 0; i < nlocal; ++i) eatom[i] += scale * energy[i];
    if (vflag_global || vflag_atom) {
        double w[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        ekd_lammps::add_pair_virial(all_lammps_pairs, grad, scale, w, vflag_atom ? vatom : nullptr);
        if (vflag_global)
            for (int k = 0; k < 6; ++k) virial[k] += w[k];
    }
    force_spread();
    pair_cpu += thread_cpu() - cpu0;
}

// sqrt(mean_m |F_m - <F>|^2) of the owned atoms, after the ghosts' per-model forces are summed
// on their owners; for a single model, its predicted teachers' spread if it has an uncertainty
// head (a student exported with one), else 0.
void PairEKD::force_spread() {
    const int nlocal = atom->nlocal;
    if (atom->nmax > nmax_std) {
        memory->destroy(force_std);
        nmax_std = atom->nmax;
        memory->create(force_std, nmax_std, "pair:force_std");
    }
    const int n_models = static_cast<int>(models.size());
    if (n_models < 2) {
        const bool head = n_models == 1 && models[0]->has_sigma();
        const auto &sigma = head ? models[0]->sigma() : std::vector<double>();
        if (head && static_cast<int>(sigma.size()) != nlocal)
            error->one(FLERR, "pair_style ekd: the model's sigma covers " + std::to_string(sigma.size()) +
                                  " atoms, not the " + std::to_string(nlocal) + " owned ones");
        // the model's kcal/mol/Angstrom -> LAMMPS force units (lengths are Angstrom in real and metal)
        const double scale = energy_factor();
        for (int i = 0; i < nlocal; ++i) force_std[i] = head ? scale * sigma[i] : 0.0;
        return;
    }
    comm_rows = fmodel[0];
    comm_width = 3 * n_models;
    check_comm_width(comm_width, force->pair->comm_reverse, "reverse");
    comm->reverse_comm(this, comm_width);
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

// Per-rank ghost counts and time in the halo exchange, after each run's timing breakdown.
void PairEKD::finish() {
    const int nprocs = comm->nprocs;
    constexpr int n = 4;
    double mine[n] = {static_cast<double>(atom->nghost), static_cast<double>(system->n_model() - system->n_local()),
                      halo_time, pair_cpu - halo_cpu};
    std::vector<double> all(n * nprocs);
    MPI_Gather(mine, n, MPI_DOUBLE, all.data(), n, MPI_DOUBLE, 0, world);
    if (comm->me != 0) return;
    std::string ghosts, rows, times, cpu;
    for (int r = 0; r < nprocs; ++r) {
        ghosts += " " + std::to_string(static_cast<long>(all[n * r]));
        rows += " " + std::to_string(static_cast<long>(all[n * r + 1]));
        times += " " + fmt::format("{:.4g}", all[n * r + 2]);
        cpu += " " + fmt::format("{:.4g}", all[n * r + 3]);
    }
    utils::logmesg(lmp, "pair_style ekd: ghost atoms per rank:" + ghosts + "\n");
    utils::logmesg(lmp, "pair_style ekd: CPU seconds per rank in the pair style outside the exchange:" + cpu + "\n");
    if (ghost_mode == GhostMode::HALO) {
        utils::logmesg(lmp, "pair_style ekd: model rows beyond the owned atoms per rank (partners owned by other "
                            "ranks):" + rows + "\n");
        utils::logmesg(lmp, "pair_style ekd: halo exchange seconds per rank (part of Pair time):" + times + "\n");
    }
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
