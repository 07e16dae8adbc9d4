// The strict archive rule of a model file (TorchScript .pt or AOTInductor .pt2), the plugin's copy
// of ekd.deploy.archive (tests/integration/test_lammps_trust.py feeds both the same crafted files).
//
// Zip readers disagree on damaged or doctored archives: Python's zipfile reads the central
// directory just before the end record, torch's miniz the one at the offset the end record
// names, so a file with two directories showed one reader ekd's code and the other a foreign
// module (issue 24). The plugin therefore reads a model file ONCE into memory, checks those bytes
// here, and hands torch the same bytes; the rule leaves no room for two readings:
//
// * one end record, the file's last 22 bytes, without a comment (with its zip64 record and
//   locator right before it when present, as torch writes them);
// * the central directory exactly where the end record says, ending where the end records begin,
//   holding exactly the number of entries they state;
// * the entries tile the file from byte 0 to the directory, in directory order: no bytes before
//   the first local header, none between entries; each local header repeats its directory
//   record (name, flags, method, CRC and sizes, in the header or in its data descriptor);
// * names are printable ASCII, unique even ignoring case (miniz looks names up ignoring case);
//   no encryption, no comments, one disk;
// * sizes by role, checked before anything is inflated: metadata.json at most
//   ARCHIVE_METADATA_BYTES, a pickle at most ARCHIVE_PICKLE_BYTES; only code text (code/...,
//   *.debug_pkl, which torch.jit.save compresses) may be compressed (deflate), declaring at most
//   ARCHIVE_COMPRESSED_BYTES; every other entry is stored as torch stores it, so it costs no more
//   memory than the file's own bytes; stored entries must match their CRC-32.
//
// Plain C++: no torch and no LAMMPS types (see ekd_model.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ekd_lammps {

struct ArchiveEntry {
    std::string name;      // full name, "<top>/data.pkl"
    uint16_t method = 0;   // 0 stored, 8 deflate
    uint64_t data = 0;     // offset of its (compressed) bytes in the file
    uint64_t size = 0;     // compressed size
    uint64_t uncompressed = 0;
    uint32_t crc = 0;
};

class Archive {
public:
    // Checks `bytes`, the content of `path`, against the rule; throws ModelError naming the file
    // and the reason ("<path>: refused: ...").
    Archive(std::string path, std::shared_ptr<const std::string> bytes);

    const std::string &path() const { return path_; }
    const std::shared_ptr<const std::string> &bytes() const { return bytes_; }
    const std::vector<ArchiveEntry> &entries() const { return entries_; }
    // The entry whose name below the archive's top folder is `rest` ("extra/metadata.json"), or nullptr.
    const ArchiveEntry *find_below_top(const std::string &rest) const;
    // The bytes of a stored entry (a compressed one throws ModelError: read it through torch).
    std::string stored(const ArchiveEntry &e) const;

private:
    std::string path_;
    std::shared_ptr<const std::string> bytes_;
    std::vector<ArchiveEntry> entries_;
};

// The bytes of `path` (the only time the plugin opens it). Throws ModelError.
std::string read_file(const std::string &path);

// Reads `path` once and checks it. Throws ModelError.
std::shared_ptr<const Archive> read_archive(const std::string &path);

}  // namespace ekd_lammps
