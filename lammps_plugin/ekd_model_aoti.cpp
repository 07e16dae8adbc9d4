// See ekd_model_aoti.h.
#include "ekd_model_aoti.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

namespace ekd_lammps {

namespace {

const char *const SO_METADATA_KEY = "ekd_metadata_json";
const char *const EXTRA = "extra/metadata.json";
// the compiled function takes at least this many atoms and pairs (ekd.deploy.aoti.MIN_ROWS)
constexpr int64_t MIN_ROWS = 2;
// length of the padding pairs: far beyond any cutoff, so they contribute nothing
constexpr double FAR = 1.0e4;

std::string first_line(const std::string &s) { return s.substr(0, s.find('\n')); }

const char *const OPT_IN = "add trust_code yes to the pair_style line (pair_style ekd ... trust_code yes)";

// SHA-256 (FIPS 180-4) of a file, lower-case hex.
std::string sha256_file(const std::string &path) {
    static const uint32_t K[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
    auto block = [&](const unsigned char *p) {
        uint32_t w[64];
        for (int i = 0; i < 16; ++i)
            w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) | (uint32_t(p[4 * i + 2]) << 8) |
                   uint32_t(p[4 * i + 3]);
        for (int i = 16; i < 64; ++i) {
            uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
        for (int i = 0; i < 64; ++i) {
            uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
            uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
    };
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ModelError("cannot read model file " + path);
    std::array<unsigned char, 64> buf{};
    uint64_t bits = 0;
    size_t fill = 0;
    std::vector<char> chunk(1 << 16);
    while (in) {
        in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
        const auto got = static_cast<size_t>(in.gcount());
        for (size_t i = 0; i < got; ++i) {
            buf[fill++] = static_cast<unsigned char>(chunk[i]);
            if (fill == 64) block(buf.data()), fill = 0;
        }
        bits += 8 * static_cast<uint64_t>(got);
    }
    buf[fill++] = 0x80;
    if (fill > 56) {
        while (fill < 64) buf[fill++] = 0;
        block(buf.data()), fill = 0;
    }
    while (fill < 56) buf[fill++] = 0;
    for (int i = 7; i >= 0; --i) buf[fill++] = static_cast<unsigned char>(bits >> (8 * i));
    block(buf.data());
    std::ostringstream hex;
    static const char *digits = "0123456789abcdef";
    for (auto v : h)
        for (int i = 28; i >= 0; i -= 4) hex << digits[(v >> i) & 0xf];
    return hex.str();
}

std::string registry_path() {
    if (const char *p = std::getenv("EKD_TRUSTED_PACKAGES"); p && *p) return p;
    std::string base;
    if (const char *x = std::getenv("XDG_DATA_HOME"); x && *x)
        base = x;
    else if (const char *home = std::getenv("HOME"); home && *home)
        base = std::string(home) + "/.local/share";
    else
        return "";
    return base + "/ekd/trusted-packages";
}

bool is_registered(const std::string &digest) {
    const auto reg = registry_path();
    if (reg.empty()) return false;
    std::ifstream in(reg);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string first;
        if (words >> first && first == digest) return true;
    }
    return false;
}

std::string record(caffe2::serialize::PyTorchStreamReader &reader, const std::string &name) {
    auto [data, size] = reader.getRecord(name);
    return std::string(static_cast<const char *>(data.get()), size);
}

// The entries check (and the metadata text) of a package; nothing is loaded.
std::string check_package(const std::string &path, bool trust_code) {
    const std::string where = "model " + path + ": ";
    std::string text;
    try {
        caffe2::serialize::PyTorchStreamReader reader(path);
        const auto names = reader.getAllRecords();
        std::set<std::string> unique(names.begin(), names.end());
        if (unique.size() != names.size())
            throw ModelError(where + "the archive names an entry twice; not a package written by ekd");
        if (!unique.count(EXTRA))
            throw ModelError(where + "an AOTInductor package without extra/metadata.json: not written by "
                                     "`ekd export --format aoti`; export the model with ekd");
        static const std::set<std::string> plain = {"archive_format", "archive_version",        "byteorder", "version",
                                                    ".data/version",  ".data/serialization_id", EXTRA};
        static const std::regex model(
            "data/aotinductor/model/[a-z0-9]+\\.(wrapper\\.cpp|kernel\\.cpp|wrapper\\.json|wrapper_metadata\\.json|"
            "kernel_metadata\\.json|wrapper\\.so)");
        int libraries = 0;
        std::string odd;
        for (const auto &n : names) {
            if (n.size() > 11 && n.compare(n.size() - 11, 11, ".wrapper.so") == 0) ++libraries;
            if (!plain.count(n) && !std::regex_match(n, model) && odd.empty()) odd = n;
        }
        if (!trust_code && (!odd.empty() || libraries != 1))
            throw ModelError(where +
                             (odd.empty() ? std::to_string(libraries) + " compiled libraries (ekd writes 1)"
                                          : "unexpected entry '" + odd + "'") +
                             "; not a package as `ekd export --format aoti` writes it. If you trust this file "
                             "(loading it runs its compiled code), " +
                             OPT_IN);
        text = record(reader, EXTRA);
    } catch (const c10::Error &e) {
        throw ModelError("cannot read model file " + path + " (" + first_line(e.what_without_backtrace()) +
                         "): truncated or corrupt; copy it again or re-export it with `ekd export --format aoti`");
    }
    if (!trust_code) {
        const auto digest = sha256_file(path);
        if (!is_registered(digest))
            throw ModelError(where + "this AOTInductor package (sha256 " + digest.substr(0, 16) +
                             "...) was not compiled by ekd on this machine (it is not in " +
                             (registry_path().empty() ? std::string("the registry") : registry_path()) +
                             "), and loading it runs its compiled code. Re-export it here (`ekd export MEMBER "
                             "--format aoti`), or, if you trust the file, " +
                             OPT_IN);
    }
    return text;
}

}  // namespace

bool is_aoti_package(const std::string &path) {
    try {
        caffe2::serialize::PyTorchStreamReader reader(path);
        if (!reader.hasRecord("archive_format")) return false;
        auto s = record(reader, "archive_format");
        while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
        return s == "pt2";
    } catch (const c10::Error &) {
        return false;
    }
}

std::string aoti_metadata_json(const std::string &path) {
    // parse_metadata checks that the text names MODEL_FORMAT_AOTI (ekd-aoti-1) for a package
    return check_package(path, /*trust_code=*/true);
}

struct AotiModel::Impl {
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
    torch::ScalarType dtype;
    std::string path;
};

AotiModel::AotiModel(const std::string &path, bool float32, bool trust_code) : impl_(std::make_unique<Impl>()) {
    impl_->path = path;
    impl_->dtype = float32 ? torch::kFloat32 : torch::kFloat64;
    const auto text = check_package(path, trust_code);  // nothing of the file runs before this
    try {
        impl_->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model");
    } catch (const std::exception &e) {
        throw ModelError("cannot load the AOTInductor package " + path + " (" + first_line(e.what()) +
                         "); it is corrupt or compiled for another torch or CPU: re-export it here with "
                         "`ekd export --format aoti`");
    }
    const auto meta = impl_->loader->get_metadata();
    const auto it = meta.find(SO_METADATA_KEY);
    if (it == meta.end() || it->second != text)
        throw ModelError("model " + path + ": metadata.json was edited or does not belong to this compiled model "
                         "(it differs from the copy compiled into it); re-export the model (`ekd export --format aoti`)");
}

AotiModel::~AotiModel() = default;

void AotiModel::evaluate(const PairInputs &in, int64_t n_local, std::vector<double> &local_energy,
                         std::vector<double> &grad) {
    const auto lopt = torch::TensorOptions().dtype(torch::kLong);
    const auto N = std::max(in.n_atoms, MIN_ROWS), P = std::max(in.n_pairs, MIN_ROWS);
    // padding: atoms of atom 0's element with weight 0, pairs (0, 0) far beyond the cutoff
    auto species = torch::full({N}, in.n_atoms > 0 ? in.species[0] : 1, lopt);
    auto first = torch::zeros({P}, lopt);
    auto second = torch::zeros({P}, lopt);
    auto r = torch::zeros({P, 3}, torch::kDouble);
    r.select(1, 0).fill_(FAR);
    if (in.n_atoms > 0)
        species.narrow(0, 0, in.n_atoms).copy_(torch::from_blob(const_cast<int64_t *>(in.species), {in.n_atoms}, lopt));
    if (in.n_pairs > 0) {
        first.narrow(0, 0, in.n_pairs).copy_(torch::from_blob(const_cast<int64_t *>(in.first), {in.n_pairs}, lopt));
        second.narrow(0, 0, in.n_pairs).copy_(torch::from_blob(const_cast<int64_t *>(in.second), {in.n_pairs}, lopt));
        r.narrow(0, 0, in.n_pairs)
            .copy_(torch::from_blob(const_cast<double *>(in.r), {in.n_pairs, 3}, torch::kDouble));
    }
    auto weights = torch::zeros({N}, impl_->dtype);
    weights.narrow(0, 0, n_local).fill_(1.0);
    std::vector<torch::Tensor> out;
    try {
        out = impl_->loader->run({species, first, second, r.to(impl_->dtype), weights});
    } catch (const std::exception &e) {
        throw ModelError("model " + impl_->path + " failed: " + first_line(e.what()));
    }
    if (out.size() != 2 || out[0].dim() != 1 || out[0].size(0) != N || out[1].dim() != 2 || out[1].size(0) != P)
        throw ModelError("model " + impl_->path + " returned outputs of unexpected shapes; re-export it with "
                         "`ekd export --format aoti`");
    auto e = out[0].narrow(0, 0, n_local).to(torch::kDouble).contiguous();
    auto g = out[1].narrow(0, 0, in.n_pairs).to(torch::kDouble).contiguous();
    local_energy.assign(e.data_ptr<double>(), e.data_ptr<double>() + n_local);
    grad.assign(g.data_ptr<double>(), g.data_ptr<double>() + 3 * in.n_pairs);
}

}  // namespace ekd_lammps
