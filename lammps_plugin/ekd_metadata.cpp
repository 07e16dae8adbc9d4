#include "ekd_metadata.h"

#include "ekd_model.h"

#include "json.h"  // LAMMPS's copy of nlohmann::json

#include <cmath>
#include <iterator>
#include <set>

namespace ekd_lammps {

using LAMMPS_NS::json;

namespace {

// "a, b or c" of a generated list of names, plus `extra`
template <std::size_t N>
std::string one_of(const char *const (&names)[N], const char *extra = nullptr) {
    std::string out;
    for (std::size_t i = 0; i < N; ++i) out += (i ? ", " : "") + std::string(names[i]);
    if (extra) out += std::string(", ") + extra;
    return out;
}

template <std::size_t N>
bool contains(const char *const (&names)[N], const std::string &name) {
    for (const char *n : names)
        if (name == n) return true;
    return false;
}

// "2.13.0+cpu" -> "2.13"
std::string major_minor(const std::string &v) {
    auto dot = v.find('.');
    if (dot == std::string::npos) return v;
    auto dot2 = v.find_first_of(".+", dot + 1);
    return v.substr(0, dot2);
}

}  // namespace

std::string metadata_kind(const std::string &text, const std::string &path) {
    const std::string reexport = "; re-export the model with this ekd (`ekd export`)";
    try {
        const json j = json::parse(text);
        if (j.is_object() && j.value("format", std::string()) == MODEL_FORMAT_1) return "";
        if (j.is_object() && j.value("format", std::string()) == MODEL_FORMAT) return j.at("kind").get<std::string>();
    } catch (const json::exception &e) {
        throw ModelError("model " + path + ": metadata.json is not readable (" + e.what() + ")" + reexport);
    }
    throw ModelError("model " + path + ": metadata.json names no format this plugin reads" + reexport);
}

void metadata_cutoff_depth(const std::string &text, const std::string &path, double &cutoff, int &n_interactions) {
    try {
        const json j = json::parse(text);
        cutoff = j.at("cutoff").get<double>();
        n_interactions = j.at("n_interactions").get<int>();
    } catch (const json::exception &e) {
        throw ModelError("model " + path + ": metadata.json is not readable (" + e.what() +
                         "); re-export the model with this ekd (`ekd export`)");
    }
}

int atomic_number(const std::string &symbol) {
    for (int z = 1; z < ELEMENTS_COUNT; ++z)
        if (symbol == ELEMENTS[z]) return z;
    return 0;
}

ModelInfo parse_metadata(const ModelFile &file, const std::string &ekd_version, const std::string &torch_version) {
    const std::string &text = file.metadata_json;
    const std::string &path = file.path;
    const std::string where = "model " + path + ": ";
    const std::string reexport = "; re-export the model with this ekd (`ekd export`)";
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception &e) {
        throw ModelError(where + "metadata.json is not valid JSON (" + e.what() + ")" + reexport);
    }
    if (!j.is_object()) throw ModelError(where + "metadata.json must hold a JSON object" + reexport);
    std::string format = "<missing>";
    if (j.contains("format") && j.at("format").is_string()) format = j.at("format").get<std::string>();
    if (format != MODEL_FORMAT && format != MODEL_FORMAT_1 && format != MODEL_FORMAT_AOTI)
        throw ModelError(where + "model format is '" + format + "' but this plugin (ekd " + ekd_version +
                         ") reads '" + MODEL_FORMAT + "', '" + MODEL_FORMAT_1 + "' and '" + MODEL_FORMAT_AOTI + "'" +
                         reexport);
    // the format must match the file: an AOTInductor package names MODEL_FORMAT_AOTI, a TorchScript
    // archive one of the others (a renamed format would pick the wrong loader's checks)
    if ((format == MODEL_FORMAT_AOTI) != file.aoti)
        throw ModelError(where + "metadata.json names format '" + format + "' but the file is " +
                         (format == MODEL_FORMAT_AOTI ? "not an AOTInductor package" : "an AOTInductor package") +
                         reexport);
    // the field set of the schema: a missing or unknown field is refused
    std::set<std::string> fields(std::begin(METADATA_FIELDS), std::end(METADATA_FIELDS));
    if (format == MODEL_FORMAT_1)
        for (const char *f : FIELDS_NOT_IN_FORMAT_1) fields.erase(f);
    for (const auto &f : fields)
        if (!j.contains(f)) throw ModelError(where + "metadata.json lacks '" + f + "'" + reexport);
    for (auto it = j.begin(); it != j.end(); ++it)
        if (!fields.count(it.key()))
            throw ModelError(where + "metadata.json has an unknown field '" + it.key() + "'" + reexport);

    ModelInfo info;
    info.path = path;
    info.format = format;
    info.metadata_json = text;
    try {
        if (format != MODEL_FORMAT_1) info.kind = j.at("kind").get<std::string>();
        if (!j.at("cutoff").is_number())
            throw ModelError(where + "cutoff must be a positive number of Angstrom, got " + j.at("cutoff").dump());
        if (!j.at("n_interactions").is_number_integer())
            throw ModelError(where + "n_interactions must be a non-negative integer, got " +
                             j.at("n_interactions").dump());
        info.cutoff = j.at("cutoff").get<double>();
        info.n_interactions = j.at("n_interactions").get<int>();
        info.species = j.at("species").get<std::vector<std::string>>();
        info.dtype = j.at("dtype").get<std::string>();
        if (!j.at("ops_library").is_null()) info.ops_library = j.at("ops_library").get<std::string>();
        info.role = j.at("role").get<std::string>();
        info.description = j.at("description").get<std::string>();
        info.ekd_version = j.at("ekd_version").get<std::string>();
        info.torch_version = j.at("torch_version").get<std::string>();
        auto energy_unit = j.at("energy_unit").get<std::string>();
        auto length_unit = j.at("length_unit").get<std::string>();
        if (energy_unit != ENERGY_UNIT || length_unit != LENGTH_UNIT)
            throw ModelError(where + "units are " + energy_unit + "/" + length_unit + " but deployed models use " +
                             ENERGY_UNIT + "/" + LENGTH_UNIT + reexport);
    } catch (const json::exception &e) {
        throw ModelError(where + "metadata.json is incomplete or mistyped (" + e.what() + ")" + reexport);
    }
    if (!(info.cutoff > 0.0) || !std::isfinite(info.cutoff))
        throw ModelError(where + "cutoff must be a positive number of Angstrom, got " + std::to_string(info.cutoff));
    if (format != MODEL_FORMAT_1 && !info.known_kind() && info.kind != CUSTOM_KIND)
        throw ModelError(where + "kind must be one of " + one_of(KINDS, CUSTOM_KIND) + ", got '" + info.kind + "'" +
                         reexport);
    if (info.n_interactions < 0)
        throw ModelError(where + "n_interactions must be >= 0, got " + std::to_string(info.n_interactions));
    if (info.known_kind() && info.n_interactions < 1)
        throw ModelError(where + "n_interactions must be >= 1 for a " + info.kind + " model" + reexport);
    if (info.species.empty()) throw ModelError(where + "species is empty" + reexport);
    std::set<std::string> seen;
    for (const auto &s : info.species) {
        if (atomic_number(s) == 0) throw ModelError(where + "species '" + s + "' is not an element symbol" + reexport);
        if (!seen.insert(s).second) throw ModelError(where + "species lists '" + s + "' twice" + reexport);
    }
    if (!contains(DTYPES, info.dtype))
        throw ModelError(where + "dtype must be one of " + one_of(DTYPES) + ", got '" + info.dtype + "'" + reexport);
    if (major_minor(info.ekd_version) != major_minor(ekd_version))
        throw ModelError(where + "exported by ekd " + info.ekd_version + " but this plugin belongs to ekd " +
                         ekd_version + reexport + ", or install ekd " + major_minor(info.ekd_version) + ".*");
    if (major_minor(info.torch_version) != major_minor(torch_version))
        throw ModelError(where + "exported with torch " + info.torch_version + " but the plugin runs torch " +
                         torch_version + "; re-export the model with this torch");
    if (!info.ops_library.empty() && info.ops_library != OPS_LIBRARY)
        throw ModelError(where + "needs op library '" + info.ops_library + "' but this plugin provides only " +
                         OPS_LIBRARY);
    return info;
}

}  // namespace ekd_lammps
