// See ekd_trust.h.
#include "ekd_trust.h"

#include "ekd_metadata.h"
#include "ekd_model.h"

#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <map>
#include <set>
#include <vector>

namespace ekd_lammps {

namespace {

std::string first_line(const std::string &s) { return s.substr(0, s.find('\n')); }

const char *const OPT_IN =
    "If you trust this file (loading it runs its own code), add trust_code yes to the pair_style line: "
    "pair_style ekd ... trust_code yes";

const std::string METADATA_ENTRY = std::string("extra/") + METADATA_FILE;

bool plain_entry(const std::string &name) {
    static const std::set<std::string> plain(std::begin(PLAIN_ENTRIES), std::end(PLAIN_ENTRIES));
    if (plain.count(name) || name == METADATA_ENTRY) return true;
    if (name.rfind("data/", 0) == 0 && name.size() > 5)
        return std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; });
    return false;
}

std::string record(caffe2::serialize::PyTorchStreamReader &reader, const std::string &name) {
    auto [data, size] = reader.getRecord(name);
    return std::string(static_cast<const char *>(data.get()), size);
}

ModelError corrupt(const std::string &path, const std::string &why) {
    return ModelError("cannot read model file " + path + " (" + why +
                      "): truncated or corrupt; copy it again or re-export it with `ekd export`");
}

// The bytes of an archive as torch's reader sees them (the archive keeps them alive).
class BufferAdapter : public caffe2::serialize::ReadAdapterInterface {
public:
    explicit BufferAdapter(std::shared_ptr<const std::string> bytes) : bytes_(std::move(bytes)) {}
    size_t size() const override { return bytes_->size(); }
    size_t read(uint64_t pos, void *buf, size_t n, const char *) const override {
        if (pos >= bytes_->size()) return 0;
        n = std::min<size_t>(n, bytes_->size() - pos);
        std::memcpy(buf, bytes_->data() + pos, n);
        return n;
    }

private:
    std::shared_ptr<const std::string> bytes_;
};

}  // namespace

std::shared_ptr<caffe2::serialize::ReadAdapterInterface> archive_adapter(const Archive &archive) {
    return std::make_shared<BufferAdapter>(archive.bytes());
}

void check_model_file(const Archive &archive, bool trust_code) {
    const std::string &path = archive.path();
    const std::string where = "model " + path + ": ";
    try {
        caffe2::serialize::PyTorchStreamReader reader(archive_adapter(archive));
        const auto names = reader.getAllRecords();
        std::set<std::string> unique(names.begin(), names.end());
        if (unique.size() != names.size())
            throw ModelError(where + "the archive names an entry twice; not a file written by ekd. " + OPT_IN);
        if (!unique.count(METADATA_ENTRY))
            throw ModelError("model file " + path + " has no " + METADATA_FILE +
                             ": it was not written by ekd (ekd.deploy.model_file.save_model); export it with `ekd export`");
        const std::string kind = metadata_kind(record(reader, METADATA_ENTRY), path);
        if (trust_code) return;
        if (!is_known_kind(kind))
            throw ModelError(where + (kind.empty() ? "an " + std::string(MODEL_FORMAT_1) + " file" : "model kind '" + kind + "'") +
                             ": its code is not code this ekd writes, and loading a model runs its code. Re-export it "
                             "with this ekd (`ekd export`), or: " + OPT_IN);
        std::map<std::string, const CanonicalCode *> want;
        for (const CanonicalCode *c = CANONICAL_CODE; c->kind != nullptr; ++c)
            if (kind == c->kind) want[c->name] = c;
        if (want.empty())
            throw ModelError(where + "this plugin has no canonical code for model kind '" + kind + "'. " + OPT_IN);
        // the code of an earlier ekd (python/ekd/deploy/model_code/<kind>@<tag>, kind "<kind>@<tag>" in the
        // table), entry for entry, is trusted like today's (mirrors ekd.deploy.model_file.earlier_code)
        std::map<std::string, std::map<std::string, const CanonicalCode *>> earlier;
        for (const CanonicalCode *c = CANONICAL_CODE; c->kind != nullptr; ++c)
            if (std::string(c->kind).rfind(kind + "@", 0) == 0) earlier[c->kind][c->name] = c;
        // whether a code variant names exactly the file's code entries
        const auto same_entries = [&](const std::map<std::string, const CanonicalCode *> &code) {
            size_t n_code = 0;
            for (const auto &name : unique)
                if (name.rfind("code/", 0) == 0) {
                    if (!code.count(name)) return false;
                    ++n_code;
                }
            return n_code == code.size();
        };
        // today's code, then earlier ekds': several may name the same entries (a change inside one
        // code file), so the file's bytes pick among those; a file matching none is compared with
        // the first (today's if its entries match)
        const auto same_bytes = [&](const std::map<std::string, const CanonicalCode *> &code) {
            for (const auto &[name, c] : code) {
                const std::string have = record(reader, name);
                const char *bytes = reinterpret_cast<const char *>(c->data);
                if (have.size() != c->size || !std::equal(have.begin(), have.end(), bytes)) return false;
            }
            return true;
        };
        std::vector<const std::map<std::string, const CanonicalCode *> *> same;
        if (same_entries(want)) same.push_back(&want);
        for (const auto &[tag, code] : earlier)
            if (same_entries(code)) same.push_back(&code);
        if (!same.empty()) {
            const auto *pick = same.front();
            for (const auto *code : same)
                if (same_bytes(*code)) {
                    pick = code;
                    break;
                }
            want = *pick;
        }
        for (const auto &name : unique) {
            const bool code = name.rfind("code/", 0) == 0;
            if (!code && !plain_entry(name))
                throw ModelError(where + "unexpected archive entry '" + name +
                                 "' (ekd's exporter writes only weights, metadata and the code of its model "
                                 "classes). " + OPT_IN);
            if (code && !want.count(name))
                throw ModelError(where + "unexpected code entry '" + name + "': not part of the " + kind +
                                 " model code this ekd writes. " + OPT_IN);
        }
        for (const auto &[name, c] : want) {
            if (!unique.count(name))
                throw ModelError(where + "code entry '" + name + "' of the " + kind +
                                 " model code this ekd writes is missing. " + OPT_IN);
            const std::string have = record(reader, name);
            if (have.size() != c->size || !std::equal(have.begin(), have.end(), reinterpret_cast<const char *>(c->data)))
                throw ModelError(where + "code file '" + name + "' differs from the " + kind +
                                 " model code this ekd (" + ekd_version() + ") writes. " + OPT_IN);
        }
        for (const auto &name : unique) {
            if (name.size() < 4 || name.compare(name.size() - 4, 4, ".pkl") != 0) continue;
            if (record(reader, name).find("torch.classes") != std::string::npos)
                throw ModelError(where + "'" + name +
                                 "' refers to torch.classes (custom C++ classes run their own code when loaded). " +
                                 OPT_IN);
        }
    } catch (const c10::Error &e) {
        throw corrupt(path, first_line(e.what_without_backtrace()));
    }
}

void check_binding(const torch::jit::Module &module, const std::string &text, const std::string &path) {
    std::string kind;
    kind = metadata_kind(text, path);
    if (kind.empty()) return;  // ekd-model-1: no binding
    if (!module.hasattr("metadata_json")) {
        if (is_known_kind(kind))
            throw ModelError("model " + path + ": a " + kind +
                             " model without metadata_json; re-export it with `ekd export`");
        return;
    }
    const auto bound = module.attr("metadata_json");
    if (!bound.isString() || bound.toStringRef() != text)
        throw ModelError("model " + path +
                         ": metadata.json was edited or does not belong to these weights (it differs from the copy "
                         "stored with the weights); re-export the model with `ekd export`");
    if (!is_known_kind(kind)) return;
    double cutoff = 0.0;
    int n_interactions = 0;
    metadata_cutoff_depth(text, path, cutoff, n_interactions);
    bool same = false;
    try {
        same = module.attr("cutoff").toDouble() == cutoff && module.attr("n_interactions").toInt() == n_interactions;
    } catch (const std::exception &) {  // no such attribute, or not a number
        same = false;
    }
    if (!same)
        throw ModelError("model " + path + ": metadata.json's cutoff / n_interactions are not the model's (" +
                         std::to_string(cutoff) + ", " + std::to_string(n_interactions) +
                         "); re-export the model with `ekd export`");
}

}  // namespace ekd_lammps
