#include "ekd_metadata.h"

#include "ekd_model.h"

#include "json.h"  // LAMMPS's copy of nlohmann::json

#include <cmath>
#include <set>

namespace ekd_lammps {

using LAMMPS_NS::json;

namespace {

const char *const ELEMENTS[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si", "P",  "S",
    "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As",
    "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn",
    "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho",
    "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",  "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po",
    "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md",
    "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};

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
    for (int z = 1; z < static_cast<int>(sizeof(ELEMENTS) / sizeof(ELEMENTS[0])); ++z)
        if (symbol == ELEMENTS[z]) return z;
    return 0;
}

ModelInfo parse_metadata(const std::string &text, const std::string &path, const std::string &ekd_version,
                         const std::string &torch_version) {
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
    if (format != MODEL_FORMAT && format != MODEL_FORMAT_1)
        throw ModelError(where + "model format is '" + format + "' but this plugin (ekd " + ekd_version +
                         ") reads '" + MODEL_FORMAT + "' and '" + MODEL_FORMAT_1 + "'" + reexport);
    // the same field set as ekd.model_file.ModelMetadata: a missing or unknown field is refused
    std::set<std::string> fields = {"cutoff",      "n_interactions", "species",     "dtype",
                                    "ops_library", "role",           "description", "format",
                                    "energy_unit", "length_unit",    "ekd_version", "torch_version"};
    if (format == MODEL_FORMAT) fields.insert("kind");
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
        if (format == MODEL_FORMAT) info.kind = j.at("kind").get<std::string>();
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
        if (energy_unit != "kcal/mol" || length_unit != "angstrom")
            throw ModelError(where + "units are " + energy_unit + "/" + length_unit +
                             " but deployed models use kcal/mol/angstrom" + reexport);
    } catch (const json::exception &e) {
        throw ModelError(where + "metadata.json is incomplete or mistyped (" + e.what() + ")" + reexport);
    }
    if (!(info.cutoff > 0.0) || !std::isfinite(info.cutoff))
        throw ModelError(where + "cutoff must be a positive number of Angstrom, got " + std::to_string(info.cutoff));
    if (format == MODEL_FORMAT && !info.known_kind() && info.kind != "custom")
        throw ModelError(where + "kind must be hipnn, hipnn-torch, toy or custom, got '" + info.kind + "'" + reexport);
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
    if (info.dtype != "float32" && info.dtype != "float64")
        throw ModelError(where + "dtype must be float32 or float64, got '" + info.dtype + "'" + reexport);
    if (major_minor(info.ekd_version) != major_minor(ekd_version))
        throw ModelError(where + "exported by ekd " + info.ekd_version + " but this plugin belongs to ekd " +
                         ekd_version + reexport + ", or install ekd " + major_minor(info.ekd_version) + ".*");
    if (major_minor(info.torch_version) != major_minor(torch_version))
        throw ModelError(where + "exported with torch " + info.torch_version + " but the plugin runs torch " +
                         torch_version + "; re-export the model with this torch");
    if (!info.ops_library.empty() && info.ops_library != "libekd_ops.so")
        throw ModelError(where + "needs op library '" + info.ops_library +
                         "' but this plugin provides only libekd_ops.so");
    return info;
}

}  // namespace ekd_lammps
