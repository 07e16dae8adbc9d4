// metadata.json of a deployed ekd model (formats ekd-model-2 and ekd-model-1, written by
// ekd.deploy.model_file.save_model) and the checks the plugin applies before running a model. Mirrors
// ekd.deploy.model_metadata.check_metadata; the schema both read (format names, fields, kinds, units,
// element table, eV -> kcal/mol) is python/ekd/deploy/model_format.json, compiled into
// ekd_model_format.h by embed_model_format.cmake. tests/integration/test_lammps_trust.py feeds both
// readers the same files. Every message names the file, the problem and what to do.
#pragma once

#include <string>
#include <vector>

#include "ekd_model_format.h"  // generated: MODEL_FORMAT, EV_TO_KCALMOL, KINDS, ELEMENTS, ...

namespace ekd_lammps {

// Whether `kind` is one of the kinds whose code this ekd writes (KINDS).
inline bool is_known_kind(const std::string &kind) {
    for (const char *k : KINDS)
        if (kind == k) return true;
    return false;
}

struct ModelInfo {
    std::string path;
    double cutoff = 0.0;     // Angstrom
    int n_interactions = 0;  // message-passing depth
    std::vector<std::string> species;
    std::string dtype;        // "float32" or "float64"
    std::string ops_library;  // empty: none
    std::string role, description, ekd_version, torch_version;
    std::string format;  // MODEL_FORMAT, MODEL_FORMAT_1 or MODEL_FORMAT_AOTI (a .pt2 package)
    // ekd-model-2 and ekd-aoti-1: one of KINDS (code this ekd writes, with the stage methods) or CUSTOM_KIND (any
    // other module: needs trust_code yes); empty for ekd-model-1
    std::string kind;
    std::string metadata_json;  // the text of metadata.json as read (bound to the weights)

    bool known_kind() const { return is_known_kind(kind); }

    // How far out (Angstrom) atoms influence an owned atom's energy: n_interactions * cutoff
    // (a model without interactions still needs its pairs' partners).
    double receptive_field() const { return (n_interactions > 0 ? n_interactions : 1) * cutoff; }
};

struct ModelFile;  // ekd_model.h

// Parses and checks the metadata.json of `file` (read once by read_model_file) against this
// plugin's ekd and torch versions. Throws ekd_lammps::ModelError.
ModelInfo parse_metadata(const ModelFile &file, const std::string &ekd_version, const std::string &torch_version);

// The model kind named by metadata.json `json` of `path`: "" for ekd-model-1 files (no kind),
// else the kind field (one of KINDS or CUSTOM_KIND). Throws ModelError if unreadable.
std::string metadata_kind(const std::string &json, const std::string &path);

// cutoff and n_interactions of metadata.json `json` of `path` (already checked by parse_metadata).
void metadata_cutoff_depth(const std::string &json, const std::string &path, double &cutoff, int &n_interactions);

// Atomic number of an element symbol ("C" -> 6), 0 if it is not one.
int atomic_number(const std::string &symbol);

}  // namespace ekd_lammps
