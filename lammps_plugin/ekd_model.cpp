// The torch side of the plugin: reading model files and running them. No LAMMPS headers here
// (see ekd_model.h for why).
#include "ekd_model.h"
#include "ekd_archive.h"
#include "ekd_model_format.h"  // METADATA_FILE
#include "ekd_model_aoti.h"
#include "ekd_trust.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/version.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/cuda.h>
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

// The first non-empty line of `s` (torch's messages may begin with a newline).
std::string first_line(const std::string &s) {
    size_t start = s.find_first_not_of("\n\r ");
    if (start == std::string::npos) return "";
    return s.substr(start, s.find('\n', start) - start);
}

// A c10::Error's message without torch's C++ backtrace, else what().
std::string what_of(const std::exception &e) {
    if (const auto *c = dynamic_cast<const c10::Error *>(&e)) return c->what_without_backtrace();
    return e.what();
}

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

ModelFile read_model_file(const std::string &path) { return model_file(path, read_file(path)); }

ModelFile model_file(const std::string &path, std::string bytes) {
    ModelFile file;
    file.path = path;
    file.archive = std::make_shared<const Archive>(path, std::make_shared<const std::string>(std::move(bytes)));
    file.aoti = is_aoti_package(*file.archive);
    if (file.aoti) {
        file.metadata_json = aoti_metadata_json(*file.archive);  // format ekd-aoti-1 (.pt2)
        return file;
    }
    const ArchiveEntry *entry = file.archive->find_below_top(std::string("extra/") + METADATA_FILE);
    if (entry == nullptr)
        throw ModelError("model file " + path + " has no " + METADATA_FILE +
                         ": it was not written by ekd.deploy.export.save_model; export it with `ekd export`");
    if (entry->method != 0)
        throw ModelError("model " + path + ": refused: its " + METADATA_FILE +
                         " is compressed (ekd stores it); re-export it with `ekd export`");
    file.metadata_json = file.archive->stored(*entry);
    return file;
}

struct Model::Impl {
    torch::jit::Module module;
    torch::Device device = torch::kCPU;  // of evaluate() (set_device)
    std::unique_ptr<AotiModel> aoti;  // set for an AOTInductor package (then `module` is unused)
    torch::ScalarType dtype;
    std::string path;
    bool staged = false;
    // whether interaction() takes n_out (computes the owned rows only); files made by an earlier
    // ekd-model-2 exporter (trust_code opt-in) compute every row
    bool rows_arg = false;
    // whether the file has geometry(r_ij) and interaction_geo(k, z, first, second, geometry, n_out):
    // the pair geometry is then computed and differentiated once per evaluation instead of once
    // per layer (files of the previous ekd-model-2 code have interaction() only)
    bool geometry = false;
    int n_interactions = 0;
    std::vector<int64_t> widths;
    // the uncertainty head (has_sigma() of the file) and its last prediction, owned atoms
    bool sigma = false;
    std::vector<double> sigma_values;

    ModelError failed(const std::exception &e) const {
        return ModelError("model " + path + " failed: " + first_line(e.what()));
    }
    ModelError bad_shape(const std::string &what, const torch::Tensor &t, const std::string &want) const {
        return ModelError("model " + path + ": " + what + " has shape " + c10::str(t.sizes()) + " but " + want +
                          " is required (format ekd-model-2); re-export the model with `ekd export`");
    }
};

namespace {

// A double tensor holding `t`'s values in memory of its own (the exchange writes into it).
torch::Tensor own_double(const torch::Tensor &t) {
    auto d = t.detach().to(torch::kDouble).contiguous();
    return d.data_ptr() == t.data_ptr() ? d.clone() : d;
}

}  // namespace

Model::Model(const ModelFile &file, const std::string &ops_library, bool float32, bool trust_code)
    : impl_(std::make_unique<Impl>()) {
    const std::string &path = file.path;
    impl_->path = path;
    impl_->dtype = float32 ? torch::kFloat32 : torch::kFloat64;
    if (!ops_library.empty()) load_ops_library(ops_library, path);
    if (file.aoti) {  // chosen by content, not by the file name
        impl_->aoti = std::make_unique<AotiModel>(file, float32, trust_code);
        return;
    }
    // The pair count changes every step: the profiling executor would re-specialise the graph
    // on new shapes; the plain interpreter has a steady cost per call.
    torch::jit::setGraphExecutorOptimize(false);
    check_model_file(*file.archive, trust_code);  // nothing of the file runs before this
    try {
        // the bytes just checked, not the path: a file swapped since is not what runs
        impl_->module = torch::jit::load(archive_adapter(*file.archive), torch::kCPU);
    } catch (const std::exception &e) {
        // c10::Error, or torch::jit::ErrorReport (not a c10::Error) for a pickle naming a global
        // TorchScript does not know, e.g. os.system
        throw ModelError("model " + path + ": refused: TorchScript cannot load it (" + first_line(what_of(e)) +
                         "); it is corrupt or was not written by ekd: re-export the model with this ekd and torch");
    }
    check_binding(impl_->module, file.metadata_json, path);
    impl_->module.eval();
    // format ekd-model-2: per-stage methods, for the per-layer halo exchange
    auto &m = impl_->module;
    if (m.find_method("embed") && m.find_method("interaction") && m.hasattr("n_interactions") &&
        m.hasattr("feature_widths")) {
        try {
            impl_->n_interactions = static_cast<int>(m.attr("n_interactions").toInt());
            impl_->widths = m.attr("feature_widths").toIntVector();
        } catch (const c10::Error &e) {
            throw ModelError("model " + path + ": n_interactions / feature_widths are not an int and a list of ints (" +
                             first_line(e.what_without_backtrace()) + "); re-export the model with `ekd export`");
        }
        if (impl_->n_interactions < 1 || impl_->widths.size() != static_cast<size_t>(impl_->n_interactions) + 1)
            throw ModelError("model " + path + ": n_interactions = " + std::to_string(impl_->n_interactions) +
                             " needs n_interactions + 1 feature widths, got " + std::to_string(impl_->widths.size()) +
                             "; re-export the model with `ekd export`");
        for (auto w : impl_->widths)
            if (w < 1)
                throw ModelError("model " + path + ": feature width " + std::to_string(w) +
                                 " is not positive; re-export the model with `ekd export`");
        impl_->staged = true;
        for (const auto &a : m.get_method("interaction").function().getSchema().arguments())
            if (a.name() == "n_out") impl_->rows_arg = true;
        impl_->geometry = impl_->rows_arg && m.find_method("geometry") && m.find_method("interaction_geo");
    }
    // files of the code before the head have no has_sigma; files with it say whether it holds weights
    if (m.hasattr("has_sigma") && m.find_method("atom_sigma") && m.find_method("energy_and_sigma")) {
        const auto flag = m.attr("has_sigma");
        impl_->sigma = flag.isBool() && flag.toBool();
    }
}

bool Model::has_sigma() const { return impl_->sigma; }

const std::vector<double> &Model::sigma() const { return impl_->sigma_values; }

namespace {
// The first n rows of a per-atom prediction [>= n] as doubles on the CPU.
void take_rows(const torch::Tensor &t, int64_t n, std::vector<double> &out) {
    auto d = t.detach().narrow(0, 0, n).to(torch::kCPU, torch::kDouble).contiguous();
    out.assign(d.data_ptr<double>(), d.data_ptr<double>() + n);
}
}  // namespace

bool Model::has_stages() const { return impl_->staged; }

bool Model::shares_geometry() const { return impl_->geometry; }

int Model::n_interactions() const { return impl_->n_interactions; }

std::vector<int64_t> Model::feature_widths() const { return impl_->widths; }

void Model::evaluate_halo(const PairInputs &in, int64_t n_local, HaloExchange &ex, std::vector<double> &local_energy,
                          std::vector<double> &grad) {
    if (impl_->aoti)
        throw ModelError("model " + impl_->path + " is an AOTInductor package (format ekd-aoti-1), which has no "
                         "per-layer methods for mode halo: use pair_style ekd mode ghosts (any number of ranks) "
                         "or mode images (1 rank), or its TorchScript export (`ekd export`) for mode halo");
    const auto lopt = torch::TensorOptions().dtype(torch::kLong);
    const auto dopt = torch::TensorOptions().dtype(torch::kDouble);
    auto species = torch::from_blob(const_cast<int64_t *>(in.species), {in.n_atoms}, lopt);
    auto first = torch::from_blob(const_cast<int64_t *>(in.first), {in.n_pairs}, lopt);
    auto second = torch::from_blob(const_cast<int64_t *>(in.second), {in.n_pairs}, lopt);
    auto r = torch::from_blob(const_cast<double *>(in.r), {in.n_pairs, 3}, dopt).to(impl_->dtype).detach().requires_grad_(true);
    const int K = impl_->n_interactions;
    const auto &F = impl_->widths;
    const auto N = in.n_atoms;

    // forward, keeping each layer's graph: z_in[k] (a leaf, all N rows) -> (z_out[k], e_out[k]) for
    // the M first rows: the owned atoms (rows 0..n_local-1 of PairInputs, and the pairs' first atoms
    // are owned). The other rows' outputs would be overwritten by the exchange, so the model computes
    // them only when its code cannot skip them (M = N).
    const int64_t M = impl_->rows_arg ? n_local : N;
    std::vector<torch::Tensor> z_in(K), z_out(K), e_out(K);
    torch::Tensor z, energy;
    // with geometry(): its outputs (graph to r kept for the end) and detached copies that the layers
    // read, whose gradients the layers' backward passes accumulate
    std::vector<torch::Tensor> geo_out, geo_in, geo_grad;
    c10::List<torch::Tensor> geo_arg;
    try {
        if (impl_->geometry) {
            for (const auto &g : impl_->module.get_method("geometry")({r}).toTensorVector()) {
                geo_out.push_back(g);
                geo_in.push_back(g.detach().requires_grad_(g.requires_grad()));
                geo_arg.push_back(geo_in.back());
            }
            geo_grad.resize(geo_in.size());
        }
        auto emb = impl_->module.get_method("embed")({species}).toTuple();
        z = emb->elements().at(0).toTensor();
        auto e0 = emb->elements().at(1).toTensor();
        if (z.dim() != 2 || z.size(0) != N || z.size(1) != F[0])
            throw impl_->bad_shape("embed's features", z, "[" + std::to_string(N) + ", " + std::to_string(F[0]) + "]");
        if (e0.dim() != 1 || e0.size(0) != N)
            throw impl_->bad_shape("embed's energies", e0, "[" + std::to_string(N) + "]");
        energy = e0.narrow(0, 0, n_local).detach().to(torch::kDouble);
        auto interaction = impl_->module.get_method(impl_->geometry ? "interaction_geo" : "interaction");
        for (int k = 0; k < K; ++k) {
            // embed's features of ghosts are already their owners' (they depend on the species only)
            z_in[k] = z.detach().requires_grad_(k > 0);
            std::vector<c10::IValue> args{static_cast<int64_t>(k), z_in[k], first, second};
            if (impl_->geometry) args.emplace_back(geo_arg);
            else args.emplace_back(r);
            if (impl_->rows_arg) args.emplace_back(M);
            auto out = interaction(args).toTuple();
            z_out[k] = out->elements().at(0).toTensor();
            e_out[k] = out->elements().at(1).toTensor();
            if (z_out[k].dim() != 2 || z_out[k].size(0) != M || z_out[k].size(1) != F[k + 1])
                throw impl_->bad_shape("interaction " + std::to_string(k) + "'s features", z_out[k],
                                       "[" + std::to_string(M) + ", " + std::to_string(F[k + 1]) + "]");
            if (e_out[k].dim() != 1 || e_out[k].size(0) != M)
                throw impl_->bad_shape("interaction " + std::to_string(k) + "'s energies", e_out[k],
                                       "[" + std::to_string(M) + "]");
            energy += e_out[k].narrow(0, 0, n_local).detach().to(torch::kDouble);
            if (k + 1 == K && impl_->sigma) {
                // the head reads the last features of the owned rows (exact there), no gradient
                auto s = impl_->module.get_method("atom_sigma")({z_out[k].detach().narrow(0, 0, n_local)}).toTensor();
                if (s.dim() != 1 || s.size(0) != n_local)
                    throw impl_->bad_shape("atom_sigma's result", s, "[" + std::to_string(n_local) + "]");
                take_rows(s, n_local, impl_->sigma_values);
            }
            if (k + 1 < K) {
                // the other rows (not computed, or wrong: those atoms have no pairs here) <- owners' values
                auto zd = torch::zeros({N, F[k + 1]}, dopt);
                zd.narrow(0, 0, n_local).copy_(z_out[k].detach().narrow(0, 0, n_local));
                ex.forward(zd.data_ptr<double>(), static_cast<int>(F[k + 1]));
                z = zd.to(impl_->dtype);
            }
        }
    } catch (const ModelError &) {
        throw;
    } catch (const std::exception &e) {
        throw impl_->failed(e);
    }

    // backward, layer by layer in reverse: at layer k the gradient of
    //   sum of owned e_k + <g_{k+1}, z_{k+1}>   w.r.t. (r, z_k),
    // where g_{k+1} = dE/dz_{k+1} with the ghosts' rows summed on their owners (and zeroed)
    auto g_r = torch::zeros({in.n_pairs, 3}, dopt);
    torch::Tensor g_next;
    try {
        for (int k = K - 1; k >= 0; --k) {
            std::vector<torch::Tensor> outputs, grad_outputs, inputs;
            if (impl_->geometry) {
                for (const auto &g : geo_in)
                    if (g.requires_grad()) inputs.push_back(g);
            } else {
                inputs.push_back(r);
            }
            const size_t n_geo = inputs.size();
            auto e_owned = e_out[k].narrow(0, 0, n_local).sum();
            if (e_owned.requires_grad()) {
                outputs.push_back(e_owned);
                grad_outputs.push_back(torch::ones_like(e_owned));
            }
            if (g_next.defined() && z_out[k].requires_grad()) {
                // g_next's rows beyond the owned ones are zero (ex.reverse moved them to their owners)
                outputs.push_back(z_out[k].narrow(0, 0, n_local));
                grad_outputs.push_back(g_next.narrow(0, 0, n_local));
            }
            if (k > 0) inputs.push_back(z_in[k]);
            std::vector<torch::Tensor> gs;
            if (!outputs.empty())
                gs = torch::autograd::grad(outputs, inputs, grad_outputs, /*retain_graph=*/false,
                                           /*create_graph=*/false, /*allow_unused=*/true);
            if (impl_->geometry) {
                for (size_t i = 0, j = 0; i < geo_in.size() && !gs.empty(); ++i) {
                    if (!geo_in[i].requires_grad()) continue;
                    const auto &g = gs[j++];
                    if (g.defined()) geo_grad[i] = geo_grad[i].defined() ? geo_grad[i] + g : g;
                }
            } else if (!gs.empty() && gs[0].defined()) {
                g_r += gs[0].to(torch::kDouble);
            }
            if (k > 0) {
                torch::Tensor gz =
                    gs.size() > n_geo && gs[n_geo].defined() ? gs[n_geo] : torch::zeros({N, F[k]}, impl_->dtype);
                auto gd = own_double(gz);
                ex.reverse(gd.data_ptr<double>(), static_cast<int>(F[k]));
                g_next = gd.to(impl_->dtype);
            }
            z_out[k] = torch::Tensor();
            e_out[k] = torch::Tensor();
        }
        // the pair geometry's share, once for all layers
        std::vector<torch::Tensor> outputs, grad_outputs;
        for (size_t i = 0; i < geo_out.size(); ++i)
            if (geo_grad[i].defined() && geo_out[i].requires_grad()) {
                outputs.push_back(geo_out[i]);
                grad_outputs.push_back(geo_grad[i]);
            }
        if (!outputs.empty()) {
            auto gs = torch::autograd::grad(outputs, {r}, grad_outputs, /*retain_graph=*/false,
                                            /*create_graph=*/false, /*allow_unused=*/true);
            if (gs[0].defined()) g_r += gs[0].to(torch::kDouble);
        }
    } catch (const std::exception &e) {
        throw impl_->failed(e);
    }
    g_r = g_r.contiguous();
    energy = energy.contiguous();
    local_energy.assign(energy.data_ptr<double>(), energy.data_ptr<double>() + n_local);
    grad.assign(g_r.data_ptr<double>(), g_r.data_ptr<double>() + 3 * in.n_pairs);
}

Model::~Model() = default;

void Model::evaluate(const PairInputs &in, int64_t n_local, std::vector<double> &local_energy,
                     std::vector<double> &grad) {
    if (impl_->aoti) {
        impl_->aoti->evaluate(in, n_local, local_energy, grad);
        return;
    }
    const auto lopt = torch::TensorOptions().dtype(torch::kLong);
    // from_blob does not copy; the model only reads its inputs
    // on the CPU .to() returns the blob itself; on a GPU it copies this step's inputs there
    const torch::Device dev = impl_->device;
    auto species = torch::from_blob(const_cast<int64_t *>(in.species), {in.n_atoms}, lopt).to(dev);
    auto first = torch::from_blob(const_cast<int64_t *>(in.first), {in.n_pairs}, lopt).to(dev);
    auto second = torch::from_blob(const_cast<int64_t *>(in.second), {in.n_pairs}, lopt).to(dev);
    auto r = torch::from_blob(const_cast<double *>(in.r), {in.n_pairs, 3}, torch::TensorOptions().dtype(torch::kDouble))
                 .to(dev, impl_->dtype)
                 .detach()
                 .requires_grad_(true);
    torch::Tensor energy, sigma;
    try {
        if (impl_->sigma) {
            // one evaluation gives both (the head reads the last features)
            auto out = impl_->module.get_method("energy_and_sigma")({species, first, second, r}).toTuple();
            energy = out->elements().at(0).toTensor();
            sigma = out->elements().at(1).toTensor();
        } else {
            energy = impl_->module.forward({species, first, second, r}).toTensor();
        }
    } catch (const std::exception &e) {
        throw ModelError("model " + impl_->path + " failed: " + first_line(e.what()));
    }
    if (energy.dim() != 1 || energy.size(0) != in.n_atoms)
        throw ModelError("model " + impl_->path + " returned shape " + c10::str(energy.sizes()) +
                         " but per-atom energies of shape [" + std::to_string(in.n_atoms) +
                         "] are required (format ekd-model-1)");
    if (sigma.defined()) {
        if (sigma.dim() != 1 || sigma.size(0) != in.n_atoms)
            throw impl_->bad_shape("energy_and_sigma's sigma", sigma, "[" + std::to_string(in.n_atoms) + "]");
        take_rows(sigma, n_local, impl_->sigma_values);
    }
    auto local = energy.narrow(0, 0, n_local);
    auto total = local.sum();
    torch::Tensor g;
    if (total.requires_grad() && in.n_pairs > 0) {
        auto gs = torch::autograd::grad({total}, {r}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                        /*create_graph=*/false, /*allow_unused=*/true);
        g = gs[0];
    }
    if (!g.defined()) g = torch::zeros({in.n_pairs, 3}, torch::kDouble);
    g = g.to(torch::kCPU, torch::kDouble).contiguous();  // back from the device (a copy only off the CPU)
    auto e = local.detach().to(torch::kCPU, torch::kDouble).contiguous();
    local_energy.assign(e.data_ptr<double>(), e.data_ptr<double>() + n_local);
    grad.assign(g.data_ptr<double>(), g.data_ptr<double>() + 3 * in.n_pairs);
}

void Model::set_device(const std::string &name) {
    torch::Device device = torch::kCPU;
    try {
        device = torch::Device(name);
    } catch (const std::exception &) {
        throw ModelError("device must be cpu, cuda or cuda:N, got " + name);
    }
    if (device.is_cuda()) {
        if (impl_->aoti)
            throw ModelError("model " + impl_->path + ": device " + name +
                             ": an AOTInductor package is compiled for the CPU; use device cpu or a TorchScript export");
        if (!torch::cuda::is_available())
            throw ModelError("device " + name + ": the torch this plugin runs (" + torch_version() +
                             ") sees no CUDA device (a CPU-only build of torch, or no GPU visible); use device cpu");
        const auto count = static_cast<int64_t>(torch::cuda::device_count());
        if (device.has_index() && device.index() >= count)
            throw ModelError("device " + name + ": " + std::to_string(count) + " GPU(s) are visible");
        // ekd's ops have CUDA kernels only in a library built with nvcc
        auto op = c10::Dispatcher::singleton().findSchema({"ekd::envsum", ""});
        if (op.has_value() && !op->hasKernelForDispatchKey(c10::DispatchKey::CUDA))
            throw ModelError("device " + name + ": ekd's op library was built without its CUDA kernels; rebuild ekd "
                             "with the CUDA toolkit (nvcc) found by CMake against a CUDA torch");
        if (!device.has_index()) device = torch::Device(torch::kCUDA, 0);
    }
    if (!impl_->aoti) impl_->module.to(device);
    impl_->device = device;
}

bool Model::on_gpu() const { return impl_->device.is_cuda(); }

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
