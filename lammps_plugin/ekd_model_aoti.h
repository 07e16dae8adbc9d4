// AOTInductor packages (.pt2, format ekd-aoti-1, written by `ekd export --format aoti`; see
// python/ekd/deploy/aoti/) as the LAMMPS plugin runs them. Torch side of the plugin (no LAMMPS headers;
// see ekd_model.h for why).
//
// A package is compiled machine code, so the TorchScript trust rule (code byte-identical to
// ekd's) cannot apply. The plugin runs a package only when its zip entries are exactly what ekd's
// exporter writes and its SHA-256 is in the registry of packages ekd compiled on this machine
// ($EKD_TRUSTED_PACKAGES, else $XDG_DATA_HOME/ekd/trusted-packages, else
// ~/.local/share/ekd/trusted-packages), or with `trust_code yes`; the metadata.json in the zip must
// equal the copy compiled into the library. Same rule as ekd.deploy.aoti.check_package / load_package.
#pragma once

#include "ekd_model.h"

#include <memory>
#include <string>
#include <vector>

namespace ekd_lammps {

class Archive;  // ekd_archive.h

// Whether a checked archive is a torch .pt2 package (by content: <top>/archive_format reads "pt2").
bool is_aoti_package(const Archive &archive);

// metadata.json of a package, for parse_metadata (which requires its format to be ekd-aoti-1, with
// the fields and checks of ekd-model-2); nothing of the package is loaded. Throws ModelError.
std::string aoti_metadata_json(const Archive &archive);

class AotiModel {
public:
    // Checks the package (entries, registry or trust_code), loads it, checks the metadata binding.
    // The op library the package calls must be loaded before (Model does that). torch loads a
    // package from a path only: the checked bytes are written to a private copy (a fresh 0700
    // directory), whose SHA-256 is the one checked against the registry, and that copy is loaded
    // and removed; the user's path is never opened again.
    AotiModel(const ModelFile &file, bool float32, bool trust_code);
    ~AotiModel();
    AotiModel(const AotiModel &) = delete;
    AotiModel &operator=(const AotiModel &) = delete;

    // As Model::evaluate: energies of the first n_local atoms and g = d(their sum)/d r_p.
    void evaluate(const PairInputs &in, int64_t n_local, std::vector<double> &local_energy, std::vector<double> &grad);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace ekd_lammps
