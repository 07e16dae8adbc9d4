/* pair_style ekd: deployed ekd models (TorchScript, formats ekd-model-2 and -1) in LAMMPS.

   pair_style ekd [threads N] [mode auto|halo|ghosts|images]
   pair_coeff * * model.pt [more.pt ...] E1 E2 ... En      (one element symbol per atom type)

   Units real (kcal/mol, Angstrom: the models' own) or metal (eV, Angstrom). newton pair on.
   Several models: energy, forces and virial are the ensemble means; the per-atom force spread
   sqrt(mean_m |F_m - <F>|^2) (force units) is the per-atom vector "force_std", e.g.
       fix spread all pair 1 ekd force_std 0
       dump d all custom 10 dump.ekd id type x y z fx fy fz f_spread
   and each member's total energy is in the pair style's extra vector: compute pair ekd -> c_ID[m].
   See lammps_plugin/README.md. */
#pragma once

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace ekd_lammps {
class EKDSystem;
class Model;
struct ModelInfo;
enum class GhostMode;
}  // namespace ekd_lammps

namespace LAMMPS_NS {

class PairEKD : public Pair {
public:
    explicit PairEKD(class LAMMPS *);
    ~PairEKD() override;

    void compute(int, int) override;
    void settings(int, char **) override;
    void coeff(int, char **) override;
    void init_style() override;
    void finish() override;
    double init_one(int, int) override;
    void *extract(const char *, int &) override;
    void *extract_peratom(const char *, int &) override;
    int pack_forward_comm(int, int *, double *, int, int *) override;
    void unpack_forward_comm(int, int, double *) override;
    int pack_reverse_comm(int, int, double *) override;
    void unpack_reverse_comm(int, int *, double *) override;
    double memory_usage() override;

protected:
    void allocate();
    double energy_factor() const;  // model kcal/mol -> LAMMPS energy units, or error
    void force_spread();

    std::vector<std::unique_ptr<ekd_lammps::Model>> models;
    std::vector<ekd_lammps::ModelInfo> infos;
    std::unique_ptr<ekd_lammps::EKDSystem> system;
    double cut_max;      // largest model cutoff (Angstrom)
    double ghost_depth;  // largest n_interactions * cutoff (Angstrom)
    int nthreads;
    bool trust_code = false;  // load model files whose code is not ekd's own (ekd_trust.h)
    std::string device = "cpu";  // where the models run: cpu, cuda, cuda:N (`device`; unverified on a GPU)
    // see ekd_system.h; auto = images on one rank, else halo (or ghosts for format-1 models)
    enum { AUTO, HALO, GHOSTS, IMAGES } mode;
    ekd_lammps::GhostMode ghost_mode;  // the mode in use (decided in init_style)
    void check_all_pairs();  // refuses settings that drop pairs from the neighbor lists
    void check_masses();
    void check_comm_width(int width, int limit, const char *direction) const;
    std::string mass_warnings;  // given once per distinct text
    std::vector<std::string> type_elements;  // pair_coeff's element of each atom type (1..ntypes)

    // rows exchanged by pack/unpack_forward/reverse_comm: n_all x comm_width doubles
    friend class HaloComm;
    double *comm_rows;
    int comm_width;
    double halo_time;  // wall seconds spent in the per-layer exchange (this rank, this run)
    double halo_cpu;   // CPU seconds of this thread in the exchange (MPI polls while it waits)
    double pair_cpu;   // CPU seconds of this thread in compute()

    double *force_std;  // per-atom ensemble force spread (owned atoms)
    double **fmodel;    // per-model forces, 3 columns per model (owned + ghost rows)
    int nmax_std, nmax_fmodel;
    int force_std_flag;  // set by `fix pair ... force_std 1`; the spread is computed either way
};

}  // namespace LAMMPS_NS
