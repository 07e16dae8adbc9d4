// The torch side of the plugin: reading model files and running them. No LAMMPS headers here
// (see ekd_model.h for why).
#include "ekd_model.h"

#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/version.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/script.h>

#include <dlfcn.h>

#include <cstring>
#include <map>
#include <mutex>

#ifndef EKD_VERSION
#define EKD_VERSION "unknown"
#endif

namespace ekd_lammps {

namespace {

std::string first_line(const std::string &s) { return s.substr(0, s.find('\n')); }

// Directory this plugin was loaded from: the op library is installed next to it (site-packages/ekd).
std::string plugin_dir() {
    Dl_info info;
    if (dladdr(reinterpret_cast<void *>(&plugin_dir), &info) == 0 || info.dli_fname == nullptr) return ".";
    std::string file = info.dli_fname;
    auto slash = file.rfind('/');
    return slash == std::string::npos ? "." : file.substr(0, slash);
}

// Loads (once per process) the op library a model's TorchScript code calls: its static
// initialisers register torch.ops.ekd with the dispatcher, which TorchScript needs at load time.
void load_ops_library(const std::string &name, const std::string &model_path) {
    static std::mutex mutex;
    static std::map<std::string, void *> loaded;
    std::lock_guard<std::mutex> lock(mutex);
    if (loaded.count(name)) return;
    std::string path = plugin_dir() + "/" + name;
    dlerror();
    void *handle = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (handle == nullptr) {
        const char *why = dlerror();
        throw ModelError("model " + model_path + " needs the op library " + name + " but " + path +
                         " cannot be loaded (" + (why ? why : "unknown error") +
                         "); reinstall ekd so that the plugin and its op library sit side by side");
    }
    loaded[name] = handle;
}

}  // namespace

std::string read_metadata_json(const std::string &path) {
    try {
        caffe2::serialize::PyTorchStreamReader reader(path);
        const std::string record = "extra/metadata.json";
        if (!reader.hasRecord(record))
            throw ModelError("model file " + path +
                             " has no metadata.json: it was not written by ekd.export.save_model; "
                             "export it with `ekd export`");
        auto [data, size] = reader.getRecord(record);
        return std::string(static_cast<const char *>(data.get()), size);
    } catch (const c10::Error &e) {
        throw ModelError("cannot read model file " + path + " (" + first_line(e.what_without_backtrace()) +
                         "): not a TorchScript archive, or corrupt; re-export it with `ekd export`");
    }
}

struct Model::Impl {
    torch::jit::Module module;
    torch::ScalarType dtype;
    std::string path;
};

Model::Model(const std::string &path, const std::string &ops_library, bool float32)
    : impl_(std::make_unique<Impl>()) {
    impl_->path = path;
    impl_->dtype = float32 ? torch::kFloat32 : torch::kFloat64;
    if (!ops_library.empty()) load_ops_library(ops_library, path);
    // The pair count changes every step: the profiling executor would re-specialise the graph
    // on new shapes; the plain interpreter has a steady cost per call.
    torch::jit::setGraphExecutorOptimize(false);
    try {
        impl_->module = torch::jit::load(path, torch::kCPU);
    } catch (const c10::Error &e) {
        throw ModelError("cannot load the TorchScript code of " + path + " (" + first_line(e.what_without_backtrace()) +
                         "); re-export the model with this ekd and torch");
    }
    impl_->module.eval();
}

Model::~Model() = default;

void Model::evaluate(const PairInputs &in, int64_t n_local, std::vector<double> &local_energy,
                     std::vector<double> &grad) {
    const auto lopt = torch::TensorOptions().dtype(torch::kLong);
    // from_blob does not copy; the model only reads its inputs
    auto species = torch::from_blob(const_cast<int64_t *>(in.species), {in.n_atoms}, lopt);
    auto first = torch::from_blob(const_cast<int64_t *>(in.first), {in.n_pairs}, lopt);
    auto second = torch::from_blob(const_cast<int64_t *>(in.second), {in.n_pairs}, lopt);
    auto r = torch::from_blob(const_cast<double *>(in.r), {in.n_pairs, 3}, torch::TensorOptions().dtype(torch::kDouble))
                 .to(impl_->dtype)
                 .detach()
                 .requires_grad_(true);
    torch::Tensor energy;
    try {
        energy = impl_->module.forward({species, first, second, r}).toTensor();
    } catch (const std::exception &e) {
        throw ModelError("model " + impl_->path + " failed: " + first_line(e.what()));
    }
    if (energy.dim() != 1 || energy.size(0) != in.n_atoms)
        throw ModelError("model " + impl_->path + " returned shape " + c10::str(energy.sizes()) +
                         " but per-atom energies of shape [" + std::to_string(in.n_atoms) +
                         "] are required (format ekd-model-1)");
    auto local = energy.narrow(0, 0, n_local);
    auto total = local.sum();
    torch::Tensor g;
    if (total.requires_grad() && in.n_pairs > 0) {
        auto gs = torch::autograd::grad({total}, {r}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                        /*create_graph=*/false, /*allow_unused=*/true);
        g = gs[0];
    }
    if (!g.defined()) g = torch::zeros({in.n_pairs, 3}, torch::kDouble);
    g = g.to(torch::kDouble).contiguous();
    auto e = local.detach().to(torch::kDouble).contiguous();
    local_energy.assign(e.data_ptr<double>(), e.data_ptr<double>() + n_local);
    grad.assign(g.data_ptr<double>(), g.data_ptr<double>() + 3 * in.n_pairs);
}

void set_torch_threads(int n) {
    at::set_num_threads(n);
    // only possible before torch has used its inter-op pool; a second call would throw
    static std::once_flag once;
    std::call_once(once, [] {
        try {
            at::set_num_interop_threads(1);
        } catch (const c10::Error &) {
        }
    });
}

std::string torch_version() { return TORCH_VERSION; }

std::string ekd_version() { return EKD_VERSION; }

}  // namespace ekd_lammps
