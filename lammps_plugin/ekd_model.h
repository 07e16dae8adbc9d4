// One deployed ekd model (TorchScript file, format ekd-model-2 or -1; see python/ekd/deploy/export.py) as
// the LAMMPS plugin runs it. This header has no torch and no LAMMPS types on purpose: torch's and
// LAMMPS's headers bundle different releases of {fmt}, so the torch code lives in its own
// translation unit (ekd_model.cpp) and everything else talks to it through plain C++.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ekd_lammps {

// A model file that cannot be used; what() names the file, the problem and what to do.
struct ModelError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Archive;  // ekd_archive.h

// A model file as the plugin reads it: ONCE, into memory, checked against the strict archive rule
// (ekd_archive.h). Every later step (metadata, trust check, loading) works on these bytes and
// never opens the path again, so a file swapped after the check cannot be loaded (issue 24).
struct ModelFile {
    std::string path;
    std::shared_ptr<const Archive> archive;
    bool aoti = false;          // an AOTInductor package (by content: <top>/archive_format is "pt2")
    std::string metadata_json;  // its extra/metadata.json (checked by ekd_metadata.cpp before the
                                // code is loaded, because the op library a model names must be loaded first)
};

// Reads and checks `path`; throws ModelError naming the file and the reason.
ModelFile read_model_file(const std::string &path);
// The same for the bytes of `path` read already (ekd_model_file.h: rank 0 reads, all ranks check).
ModelFile model_file(const std::string &path, std::string bytes);

// Model inputs in ekd's units (Angstrom): atomic numbers of local + ghost atoms, a full pair
// list, and pair vectors r_p = x[second[p]] - x[first[p]] (3 doubles per pair).
struct PairInputs {
    const int64_t *species = nullptr;
    int64_t n_atoms = 0;
    const int64_t *first = nullptr;
    const int64_t *second = nullptr;
    const double *r = nullptr;
    int64_t n_pairs = 0;
};

// Feature exchange between MPI ranks for the per-layer ("halo") evaluation; the pair style
// implements it with LAMMPS's forward and reverse communication. `rows` holds n_all x width
// doubles (owned atoms first, then ghosts, LAMMPS order).
class HaloExchange {
public:
    virtual ~HaloExchange() = default;
    // every ghost row <- its owner's row (ghosts of ghosts and several images of one owner included)
    virtual void forward(double *rows, int width) = 0;
    // every owner's row += the rows of all its ghost copies; ghost rows are zeroed
    virtual void reverse(double *rows, int width) = 0;
};

class Model {
public:
    // Loads the TorchScript code of `file` (its bytes, not the path); `ops_library` (may be empty) is the file name of the
    // op library the code calls, looked up next to this plugin and loaded first. Before loading,
    // the file must pass the trust check of ekd_trust.h unless `trust_code` (the user's opt-in).
    Model(const ModelFile &file, const std::string &ops_library, bool float32, bool trust_code = false);
    ~Model();
    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;

    // Runs the model: energies of the first n_local atoms (kcal/mol) into `local_energy`, and
    // g = d(sum of those energies)/d r_p (kcal/mol/Angstrom, 3 per pair) into `grad`.
    void evaluate(const PairInputs &in, int64_t n_local, std::vector<double> &local_energy,
                  std::vector<double> &grad);

    // Where evaluate() runs: "cpu" (default), "cuda" or "cuda:N" (pair_style ekd ... device cuda).
    // Inputs are copied to the device and results back every call. Throws ModelError when the
    // device cannot be had (a torch without CUDA or a GPU, an op library without its CUDA kernels,
    // an AOTInductor package, which is compiled for the CPU). UNVERIFIED: never run on a GPU yet.
    void set_device(const std::string &name);
    bool on_gpu() const;

    // Whether the file has the per-stage methods of format ekd-model-2 (embed, interaction,
    // n_interactions, feature_widths); format ekd-model-1 files have `forward` only.
    bool has_stages() const;
    // Whether evaluate_halo computes the pair geometry once (the file has geometry() and
    // interaction_geo()); files exported before those existed recompute it in every layer.
    bool shares_geometry() const;
    int n_interactions() const;            // valid when has_stages()
    // Whether the file predicts its teachers' per-atom force spread (a student exported with an
    // uncertainty head: has_sigma, atom_sigma, energy_and_sigma); then evaluate() and
    // evaluate_halo() also fill sigma() with that prediction for the owned atoms (kcal/mol/Angstrom).
    bool has_sigma() const;
    const std::vector<double> &sigma() const;
    std::vector<int64_t> feature_widths() const;  // n_interactions + 1 widths, when has_stages()

    // Same results as evaluate(), layer by layer: `in` holds owned + ghost atoms and the pairs
    // whose first atom is owned (a full list of the owned atoms, one cutoff of ghosts suffices).
    // After each interaction layer the ghost rows of the new features get their owners' values
    // (ex.forward); the backward pass runs the layers in reverse, sending the ghost rows of each
    // layer's feature gradient to their owners (ex.reverse). Energies and gradients as evaluate().
    // Files with geometry()/interaction_geo() compute the pair geometry once and differentiate it
    // once, after the last layer's backward pass; older files recompute it in every layer.
    void evaluate_halo(const PairInputs &in, int64_t n_local, HaloExchange &ex, std::vector<double> &local_energy,
                       std::vector<double> &grad);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// torch's intra-op thread count for this process (LAMMPS runs one thread per rank otherwise).
void set_torch_threads(int n);

// torch version the plugin was compiled against ("2.13.0") and this plugin's ekd version.
std::string torch_version();
std::string ekd_version();

}  // namespace ekd_lammps
