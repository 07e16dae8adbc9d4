// The model-trust rule of the LAMMPS plugin (mirrors ekd.deploy.model_file.check_archive and
// check_binding; tests/integration/test_lammps_trust.py feeds both the same files). Opening a TorchScript
// file runs the code stored in it, so before torch::jit::load the archive must hold only ekd's
// entries, and its code/ entries must be byte-identical to the code this ekd writes for the
// model's kind (compiled in from python/ekd/deploy/model_code by embed_model_code.cmake). A file that
// fails is refused unless the input opts in: `pair_style ekd ... trust_code yes`.
// Torch side of the plugin (see ekd_model.h for why torch and LAMMPS headers are kept apart).
#pragma once

#include <cstddef>
#include <string>

#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/script.h>

#include "ekd_archive.h"

namespace ekd_lammps {

// One canonical code entry: the kind ("hipnn", "hipnn-torch", "toy"), the entry below the
// archive's top folder ("code/__torch__/ekd/scripted.py") and its bytes. The generated table
// ends with an entry whose kind is nullptr.
struct CanonicalCode {
    const char *kind;
    const char *name;
    const unsigned char *data;
    std::size_t size;
};
extern const CanonicalCode CANONICAL_CODE[];

// torch's reader over the bytes of a checked archive (never over the path: see ekd_archive.h).
std::shared_ptr<caffe2::serialize::ReadAdapterInterface> archive_adapter(const Archive &archive);

// Throws ModelError naming the file, what is wrong and the opt-in, unless the archive passes the
// trust check (with trust_code: only that it has metadata.json; the archive rule holds either way).
void check_model_file(const Archive &archive, bool trust_code);

// After loading: the module's metadata_json must equal the file's extra/metadata.json `text`
// (format ekd-model-2; an edited metadata.json is refused, trust_code or not).
void check_binding(const torch::jit::Module &module, const std::string &text, const std::string &path);

}  // namespace ekd_lammps
