// See ekd_archive.h. Mirrors python/ekd/deploy/archive.py check for check, message for message.
#include "ekd_archive.h"

#include "ekd_model.h"         // ModelError
#include "ekd_model_format.h"  // ARCHIVE_*_BYTES, METADATA_FILE (python/ekd/deploy/model_format.json)

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

namespace ekd_lammps {

namespace {

constexpr uint32_t LOCAL_SIG = 0x04034b50, CENTRAL_SIG = 0x02014b50, END_SIG = 0x06054b50;
constexpr uint32_t END64_SIG = 0x06064b50, LOCATOR_SIG = 0x07064b50, DESCRIPTOR_SIG = 0x08074b50;
constexpr uint64_t END_SIZE = 22, LOCATOR_SIZE = 20, END64_SIZE = 56, CENTRAL_SIZE = 46, LOCAL_SIZE = 30;
// general-purpose flags a reader may see: deflate options (1, 2), data descriptor (3), UTF-8 names (11);
// encryption (0, 6) and masked headers (13) are refused
constexpr uint16_t FLAGS_ALLOWED = 0x080E;
constexpr uint16_t FLAG_DESCRIPTOR = 0x0008;

const char *const ADVICE =
    "the file is truncated, corrupt or was altered after export: copy it again or re-export it with `ekd export`";

uint32_t crc32(const unsigned char *p, uint64_t n) {
    static const auto table = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    uint32_t c = 0xFFFFFFFFu;
    for (uint64_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

// Little-endian reads with bounds: every offset comes from the file itself.
struct Bytes {
    const std::string &s;
    const std::string &path;
    uint64_t size() const { return s.size(); }
    void need(uint64_t at, uint64_t n, const char *what) const {
        if (at > s.size() || n > s.size() - at)
            throw ModelError(path + ": refused: " + what + " lies beyond the end of the file (" +
                             std::to_string(s.size()) + " bytes); " + ADVICE);
    }
    uint64_t le(uint64_t at, int n) const {
        uint64_t v = 0;
        for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
        return v;
    }
    uint16_t u16(uint64_t at) const { return static_cast<uint16_t>(le(at, 2)); }
    uint32_t u32(uint64_t at) const { return static_cast<uint32_t>(le(at, 4)); }
    uint64_t u64(uint64_t at) const { return le(at, 8); }
};

// The zip64 extended-information extra field (id 1) of a header: the 8-byte values of the fields
// whose 32-bit (16-bit) slot holds the sentinel, in the order usize, csize, offset.
struct Zip64Fields {
    bool present = false;
    std::vector<uint64_t> values;
};

Zip64Fields zip64_extra(const Bytes &b, uint64_t at, uint64_t len) {
    Zip64Fields out;
    uint64_t end = at + len;
    while (at + 4 <= end) {
        const uint16_t id = b.u16(at), n = b.u16(at + 2);
        if (at + 4 + n > end) break;
        if (id == 1) {
            out.present = true;
            for (uint64_t k = 0; k + 8 <= n; k += 8) out.values.push_back(b.u64(at + 4 + k));
        }
        at += 4 + n;
    }
    return out;
}

std::string lower(std::string s) {
    for (auto &c : s)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return s;
}

bool ends_with(const std::string &s, const std::string &tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The most a declared uncompressed size may be for an entry of this name (below the top folder),
// and what the limit is called in messages; 0 = no limit beyond the file's size (stored only).
uint64_t size_limit(const std::string &rest, bool compressed_code, std::string &role) {
    if (rest == std::string("extra/") + METADATA_FILE) {
        role = "metadata.json";
        return ARCHIVE_METADATA_BYTES;
    }
    if (ends_with(rest, ".pkl")) {
        role = "a pickle";
        return ARCHIVE_PICKLE_BYTES;
    }
    if (compressed_code) {
        role = "a compressed code file";
        return ARCHIVE_COMPRESSED_BYTES;
    }
    return 0;
}

}  // namespace

Archive::Archive(std::string path, std::shared_ptr<const std::string> bytes)
    : path_(std::move(path)), bytes_(std::move(bytes)) {
    const Bytes b{*bytes_, path_};
    const std::string refused = path_ + ": refused: ";
    auto bad = [&](const std::string &why) { return ModelError(refused + why + "; " + ADVICE); };
    const uint64_t n = b.size();
    if (n < END_SIZE || b.u32(n - END_SIZE) != END_SIG) {
        if (n == 0) throw bad("the file is empty");
        // an end record with a comment of at most 64 KiB would start within the last 65,557 bytes
        const auto found = b.s.rfind(std::string("PK\x05\x06", 4));
        if (found == std::string::npos || found + 65557 < n)
            throw bad("not a TorchScript archive, or corrupt (it has no zip end record)");
        throw bad("the zip archive's end record is not the file's last 22 bytes (a zip comment, or data appended)");
    }
    const uint64_t end = n - END_SIZE;
    if (b.u16(end + 20) != 0) throw bad("the zip archive has a comment (ekd and torch write none)");
    if (b.u16(end + 4) != 0 || b.u16(end + 6) != 0 || b.u16(end + 8) != b.u16(end + 10))
        throw bad("the zip archive spans several disks");
    uint64_t count = b.u16(end + 10), cd_size = b.u32(end + 12), cd_offset = b.u32(end + 16);
    uint64_t cd_end = end;  // where the central directory must end
    if (end >= LOCATOR_SIZE && b.u32(end - LOCATOR_SIZE) == LOCATOR_SIG) {
        // zip64, as torch writes every archive: the record the locator points to lies right before it
        const uint64_t loc = end - LOCATOR_SIZE;
        const uint64_t rec = b.u64(loc + 8);
        if (b.u32(loc + 4) != 0 || b.u32(loc + 16) != 1 || loc < END64_SIZE || rec != loc - END64_SIZE ||
            b.u32(rec) != END64_SIG || b.u64(rec + 4) != END64_SIZE - 12)
            throw bad("the zip64 end record is not where its locator says, right before the locator");
        if (b.u32(rec + 16) != 0 || b.u32(rec + 20) != 0 || b.u64(rec + 24) != b.u64(rec + 32))
            throw bad("the zip archive spans several disks");
        const uint64_t count64 = b.u64(rec + 32), size64 = b.u64(rec + 40), offset64 = b.u64(rec + 48);
        // the 32-bit fields must hold the zip64 values or the "see zip64" sentinel: two readers may
        // otherwise take different ones
        if ((count != 0xFFFF && count != count64) || (cd_size != 0xFFFFFFFF && cd_size != size64) ||
            (cd_offset != 0xFFFFFFFF && cd_offset != offset64))
            throw bad("the zip archive's end record and zip64 end record disagree about its central directory");
        count = count64, cd_size = size64, cd_offset = offset64;
        cd_end = rec;
    } else if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
        throw bad("the zip archive's end record refers to a zip64 end record that is not there");
    }
    if (cd_offset > cd_end || cd_size != cd_end - cd_offset)
        throw bad("the zip archive's central directory is not where its end record says (" +
                  std::to_string(cd_size) + " bytes at offset " + std::to_string(cd_offset) +
                  ", but the end records begin at " + std::to_string(cd_end) +
                  "): a second central directory, or data between the directory and the end record");

    // the central directory: exactly `count` records filling [cd_offset, cd_end)
    struct Central {
        ArchiveEntry e;
        uint16_t flags;
        uint64_t local;
        bool zip64;
    };
    std::vector<Central> central;
    std::set<std::string> names;
    uint64_t at = cd_offset;
    for (uint64_t i = 0; i < count; ++i) {
        b.need(at, CENTRAL_SIZE, "a central directory record");
        if (at + CENTRAL_SIZE > cd_end || b.u32(at) != CENTRAL_SIG)
            throw bad("the central directory holds fewer records than its end record says (" + std::to_string(i) +
                      " of " + std::to_string(count) + ")");
        Central c;
        c.flags = b.u16(at + 8);
        c.e.method = b.u16(at + 10);
        c.e.crc = b.u32(at + 16);
        c.e.size = b.u32(at + 20);
        c.e.uncompressed = b.u32(at + 24);
        const uint64_t name_len = b.u16(at + 28), extra_len = b.u16(at + 30), comment_len = b.u16(at + 32);
        const uint16_t disk = b.u16(at + 34);
        c.local = b.u32(at + 42);
        if (at + CENTRAL_SIZE + name_len + extra_len + comment_len > cd_end)
            throw bad("a central directory record runs past the directory's end");
        c.e.name = b.s.substr(at + CENTRAL_SIZE, name_len);
        const auto z64 = zip64_extra(b, at + CENTRAL_SIZE + name_len, extra_len);
        c.zip64 = z64.present;
        size_t k = 0;
        auto take = [&](uint64_t &field) {
            if (k >= z64.values.size()) throw bad("entry '" + c.e.name + "' lacks its zip64 sizes");
            field = z64.values[k++];
        };
        if (c.e.uncompressed == 0xFFFFFFFF) take(c.e.uncompressed);
        if (c.e.size == 0xFFFFFFFF) take(c.e.size);
        if (c.local == 0xFFFFFFFF) take(c.local);
        if (disk != 0) throw bad("the zip archive spans several disks");
        if (comment_len != 0) throw bad("entry '" + c.e.name + "' has a comment (ekd and torch write none)");
        if (c.e.name.empty()) throw bad("an entry has an empty name");
        for (unsigned char ch : c.e.name)
            if (ch < 0x20 || ch > 0x7e || ch == '\\')
                throw bad("an entry's name is not printable ASCII (readers may decode it differently)");
        if (!names.insert(lower(c.e.name)).second)
            throw bad("the archive names '" + c.e.name + "' twice (or twice ignoring case): readers differ on "
                      "which copy they read");
        if (c.flags & ~FLAGS_ALLOWED) throw bad("entry '" + c.e.name + "' is encrypted or has unknown flags");
        at += CENTRAL_SIZE + name_len + extra_len + comment_len;
        central.push_back(std::move(c));
    }
    if (at != cd_end)
        throw bad("the central directory holds more than the " + std::to_string(count) +
                  " records its end record says: a second central directory, or data hidden in it");

    // sizes by role before anything is inflated, then the entries tile [0, cd_offset)
    uint64_t next = 0;
    for (auto &c : central) {
        ArchiveEntry &e = c.e;
        const auto slash = e.name.find('/');
        const std::string rest = slash == std::string::npos ? e.name : e.name.substr(slash + 1);
        if (e.method != 0 && e.method != 8)
            throw bad("entry '" + e.name + "' uses compression method " + std::to_string(e.method) +
                      " (ekd's files store entries, or deflate code text)");
        const bool compressed = e.method == 8;
        const bool code = rest.rfind("code/", 0) == 0 || ends_with(rest, ".debug_pkl");
        std::string role;
        const uint64_t limit = size_limit(rest, compressed && code, role);
        if (limit && e.uncompressed > limit)
            throw ModelError(refused + "entry '" + e.name + "' declares " + std::to_string(e.uncompressed) +
                             " bytes uncompressed, more than " + role + " of a model file may hold (" +
                             std::to_string(limit) + " bytes); not a file written by ekd (a small compressed file "
                             "that inflates this far would exhaust memory)");
        if (compressed && !code)
            throw ModelError(refused + "entry '" + e.name + "' is compressed (" + std::to_string(e.uncompressed) +
                             " bytes when inflated); torch stores it uncompressed, so it can cost no more memory "
                             "than the file's size, and only code text may be compressed; not a file written by "
                             "ekd");
        if (!compressed && e.size != e.uncompressed)
            throw bad("stored entry '" + e.name + "' has different compressed and uncompressed sizes");
        if (c.local != next)
            throw bad(next == 0 ? "there are bytes before the first entry (" + std::to_string(c.local) + ")"
                                : "entry '" + e.name + "' does not start where the previous entry ends (offset " +
                                      std::to_string(c.local) + ", expected " + std::to_string(next) +
                                      "): hidden data, or entries out of order");
        b.need(c.local, LOCAL_SIZE, "a local header");
        if (b.u32(c.local) != LOCAL_SIG) throw bad("entry '" + e.name + "' has no local header at its offset");
        const uint16_t flags = b.u16(c.local + 6), method = b.u16(c.local + 8);
        const uint64_t name_len = b.u16(c.local + 26), extra_len = b.u16(c.local + 28);
        b.need(c.local + LOCAL_SIZE, name_len + extra_len, "a local header");
        const std::string local_name = b.s.substr(c.local + LOCAL_SIZE, name_len);
        const std::string mismatch = "the local header of entry '" + e.name + "' differs from its directory record (";
        if (local_name != e.name) throw bad(mismatch + "name '" + local_name + "')");
        if (flags != c.flags || method != e.method) throw bad(mismatch + "flags or method)");
        uint64_t crc = b.u32(c.local + 14), size = b.u32(c.local + 18), usize = b.u32(c.local + 22);
        const auto z64 = zip64_extra(b, c.local + LOCAL_SIZE + name_len, extra_len);
        size_t k = 0;
        if (usize == 0xFFFFFFFF && k < z64.values.size()) usize = z64.values[k++];
        if (size == 0xFFFFFFFF && k < z64.values.size()) size = z64.values[k++];
        const bool described = flags & FLAG_DESCRIPTOR;
        // with a data descriptor the header may leave CRC and sizes zero (torch does)
        const bool blank = described && crc == 0 && size == 0 && usize == 0;
        if (!blank && (crc != e.crc || size != e.size || usize != e.uncompressed))
            throw bad(mismatch + "CRC or sizes)");
        e.data = c.local + LOCAL_SIZE + name_len + extra_len;
        b.need(e.data, e.size, ("the data of entry '" + e.name + "'").c_str());
        next = e.data + e.size;
        if (described) {
            // [signature] crc, sizes (8 bytes each for a zip64 entry)
            if (next + 4 <= cd_offset && b.u32(next) == DESCRIPTOR_SIG) next += 4;
            const bool wide = z64.present || c.zip64;
            const uint64_t len = wide ? 20 : 12;
            if (next + len > cd_offset) throw bad("the data descriptor of entry '" + e.name + "' is missing");
            const uint64_t dsize = wide ? b.u64(next + 4) : b.u32(next + 4);
            const uint64_t dusize = wide ? b.u64(next + 12) : b.u32(next + 8);
            if (b.u32(next) != e.crc || dsize != e.size || dusize != e.uncompressed)
                throw bad("the data descriptor of entry '" + e.name + "' differs from its directory record");
            next += len;
        }
        if (next > cd_offset) throw bad("entry '" + e.name + "' overlaps the central directory");
        if (!compressed && crc32(reinterpret_cast<const unsigned char *>(b.s.data()) + e.data, e.size) != e.crc)
            throw bad("entry '" + e.name + "' does not match its CRC-32");
        entries_.push_back(e);
    }
    if (next != cd_offset)
        throw bad("there are " + std::to_string(cd_offset - next) +
                  " bytes between the last entry and the central directory (a second archive?)");
}

const ArchiveEntry *Archive::find_below_top(const std::string &rest) const {
    for (const auto &e : entries_) {
        const auto slash = e.name.find('/');
        if (slash != std::string::npos && e.name.compare(slash + 1, std::string::npos, rest) == 0) return &e;
    }
    return nullptr;
}

std::string Archive::stored(const ArchiveEntry &e) const {
    if (e.method != 0)
        throw ModelError(path_ + ": entry '" + e.name + "' is compressed; read it through torch's reader");
    return bytes_->substr(e.data, e.size);
}

std::string read_file(const std::string &path) {
    std::FILE *f = std::fopen(path.c_str(), "rb");
    if (f == nullptr)
        throw ModelError("cannot open model file " + path + " (" + std::strerror(errno) +
                         "); export a model with `ekd export`");
    std::string bytes;
    std::array<char, 1 << 16> chunk{};
    size_t got = 0;
    while ((got = std::fread(chunk.data(), 1, chunk.size(), f)) > 0) bytes.append(chunk.data(), got);
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    if (failed) throw ModelError("cannot read model file " + path + " (read error); copy it again");
    return bytes;
}

std::shared_ptr<const Archive> read_archive(const std::string &path) {
    return std::make_shared<const Archive>(path, std::make_shared<const std::string>(read_file(path)));
}

}  // namespace ekd_lammps
