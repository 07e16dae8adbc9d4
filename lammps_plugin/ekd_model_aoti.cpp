// See ekd_model_aoti.h.
#include "ekd_model_aoti.h"

#include "ekd_archive.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <unistd.h>  // rmdir

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// SHA-256 (FIPS 180-4) of a buffer, lower-case hex.
std::string sha256(const std::string &data) {
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
    std::array<unsigned char, 64> buf{};
    size_t fill = 0;
    for (char ch : data) {
        buf[fill++] = static_cast<unsigned char>(ch);
        if (fill == 64) block(buf.data()), fill = 0;
    }
    const uint64_t bits = 8 * static_cast<uint64_t>(data.size());
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

// The entries check (and the metadata text) of a package; nothing is loaded. The archive rule
// (ekd_archive.h) already holds: one directory, every entry stored and within the file.
std::string check_package(const Archive &archive, bool trust_code) {
    const std::string &path = archive.path();
    const std::string where = "model " + path + ": ";
    std::set<std::string> names;
    for (const auto &e : archive.entries()) names.insert(e.name.substr(e.name.find('/') + 1));
    std::set<std::string> tops;
    bool flat = false;  // an entry outside any folder
    for (const auto &e : archive.entries()) {
        tops.insert(e.name.substr(0, e.name.find('/')));
        flat = flat || e.name.find('/') == std::string::npos;
    }
    if (tops.size() != 1 || flat)
        throw ModelError(where + "entries are not in one top folder; not a package written by ekd");
    const ArchiveEntry *extra = archive.find_below_top(EXTRA);
    if (extra == nullptr)
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
        if (!plain.count(n) && !std::regex_match(n, model) && (n.empty() || n.back() != '/') && odd.empty()) odd = n;
    }
    if (!trust_code && (!odd.empty() || libraries != 1))
        throw ModelError(where +
                         (odd.empty() ? std::to_string(libraries) + " compiled libraries (ekd writes 1)"
                                      : "unexpected entry '" + odd + "'") +
                         "; not a package as `ekd export --format aoti` writes it. If you trust this file "
                         "(loading it runs its compiled code), " +
                         OPT_IN);
    if (extra->method != 0)
        throw ModelError(where + "refused: its metadata.json is compressed (ekd stores it); re-export it");
    const std::string text = archive.stored(*extra);
    if (!trust_code) {
        const auto digest = sha256(*archive.bytes());
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

// A private copy of a package's checked bytes, for torch's loader (which takes a path): a fresh
// directory only this user can enter, removed with the copy when this goes out of scope.
class PrivateCopy {
public:
    PrivateCopy(const Archive &archive) {
        const char *tmp = std::getenv("TMPDIR");
        std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/ekd-package-XXXXXX";
        std::vector<char> dir(pattern.begin(), pattern.end());
        dir.push_back('\0');
        if (mkdtemp(dir.data()) == nullptr)  // mode 0700
            throw ModelError("model " + archive.path() + ": cannot make a private directory for loading it (" +
                             pattern + ": " + std::strerror(errno) + "); set TMPDIR to a writable directory");
        dir_ = dir.data();
        file_ = dir_ + "/model.pt2";
        std::ofstream out(file_, std::ios::binary);
        out.write(archive.bytes()->data(), static_cast<std::streamsize>(archive.bytes()->size()));
        out.close();
        if (!out)
            throw ModelError("model " + archive.path() + ": cannot write its private copy " + file_ +
                             "; free space in TMPDIR (" + dir_ + ")");
    }
    ~PrivateCopy() {
        if (!file_.empty()) std::remove(file_.c_str());
        if (!dir_.empty()) rmdir(dir_.c_str());
    }
    PrivateCopy(const PrivateCopy &) = delete;
    PrivateCopy &operator=(const PrivateCopy &) = delete;
    const std::string &path() const { return file_; }

private:
    std::string dir_, file_;
};

}  // namespace

bool is_aoti_package(const Archive &archive) {
    const ArchiveEntry *e = archive.find_below_top("archive_format");
    if (e == nullptr || e->method != 0) return false;
    auto s = archive.stored(*e);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s == "pt2";
}

std::string aoti_metadata_json(const Archive &archive) {
    // parse_metadata checks that the text names MODEL_FORMAT_AOTI (ekd-aoti-1) for a package
    return check_package(archive, /*trust_code=*/true);
}

struct AotiModel::Impl {
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
    torch::ScalarType dtype;
    std::string path;
};

AotiModel::AotiModel(const ModelFile &file, bool float32, bool trust_code) : impl_(std::make_unique<Impl>()) {
    const std::string &path = file.path;
    impl_->path = path;
    impl_->dtype = float32 ? torch::kFloat32 : torch::kFloat64;
    const auto text = check_package(*file.archive, trust_code);  // nothing of the file runs before this
    try {
        // the loader unpacks the package into a directory of its own: the copy is not needed after
        PrivateCopy copy(*file.archive);
        impl_->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(copy.path(), "model");
    } catch (const ModelError &) {
        throw;
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
