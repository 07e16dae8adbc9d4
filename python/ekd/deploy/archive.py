"""The strict archive rule of a model file (TorchScript ``.pt`` or AOTInductor ``.pt2``); the
LAMMPS plugin's copy is ``lammps_plugin/ekd_archive.cpp``, and tests/integration/test_lammps_trust.py
feeds both the same crafted files.

Zip readers disagree on damaged or doctored archives: Python's :mod:`zipfile` reads the central
directory just before the end record, torch's miniz the one at the offset the end record names, so
a file with two directories showed the trust check ekd's code and TorchScript a foreign module
(issue 24). ekd therefore reads a model file ONCE (:func:`read_archive`), checks those bytes here,
and hands torch the same bytes (``torch.jit.load(io.BytesIO(data))``; a ``.pt2`` goes through a
private copy, :mod:`ekd.deploy.aoti.package`). The rule leaves no room for two readings:

* one end record, the file's last 22 bytes, without a comment (with its zip64 record and locator
  right before it when present, as torch writes them);
* the central directory exactly where the end record says, ending where the end records begin,
  holding exactly the number of entries they state;
* the entries tile the file from byte 0 to the directory, in directory order: no bytes before
  the first local header, none between entries; each local header repeats its directory record
  (name, flags, method, CRC and sizes, in the header or in its data descriptor);
* names are printable ASCII and unique even ignoring case (miniz looks names up ignoring case);
  no encryption, no comments, one disk;
* sizes by role, checked before anything is inflated (``archive_limits`` of
  ``model_format.json``): metadata.json at most ``metadata_bytes``, a pickle at most
  ``pickle_bytes``; only code text (``code/...`` and ``*.debug_pkl``, which ``torch.jit.save``
  compresses) may be compressed (deflate), declaring at most ``compressed_bytes``; every other entry
  (the weights above all) is stored, as torch stores it, so it costs no more memory than the file's
  own bytes; stored entries must match their CRC-32, inflated ones their size and CRC-32.

Does not import torch.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from .model_metadata import METADATA_FILE, SCHEMA, ModelFileError

_LIMITS = SCHEMA["archive_limits"]
#: the most bytes metadata.json, a pickle and a compressed code entry may declare (uncompressed)
METADATA_BYTES: int = _LIMITS["metadata_bytes"]
PICKLE_BYTES: int = _LIMITS["pickle_bytes"]
COMPRESSED_BYTES: int = _LIMITS["compressed_bytes"]

_LOCAL, _CENTRAL, _END = 0x04034B50, 0x02014B50, 0x06054B50
_END64, _LOCATOR, _DESCRIPTOR = 0x06064B50, 0x07064B50, 0x08074B50
_END_SIZE, _LOCATOR_SIZE, _END64_SIZE, _CENTRAL_SIZE, _LOCAL_SIZE = 22, 20, 56, 46, 30
# deflate options (bits 1, 2), data descriptor (3), UTF-8 names (11); encryption (0, 6) and masked
# headers (13) are refused
_FLAGS_ALLOWED = 0x080E
_FLAG_DESCRIPTOR = 0x0008
ADVICE = "the file is truncated, corrupt or was altered after export: copy it again or re-export it (ekd export)"


class ArchiveError(ModelFileError):
    """A model file that breaks the strict archive rule; the message names the file and the reason."""


@dataclass(frozen=True)
class Entry:
    name: str  # full name, "<top>/data.pkl"
    method: int  # 0 stored, 8 deflate
    data: int  # offset of its (compressed) bytes in the file
    size: int  # compressed size
    uncompressed: int
    crc: int


class Archive:
    """A model file's bytes (``data``), read once and checked; ``entries`` in file order."""

    def __init__(self, source: str, data: bytes):
        self.source = source
        self.data = data
        self.entries: list[Entry] = _check(data, source)
        self._by_name = {e.name: e for e in self.entries}

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def find_below_top(self, rest: str) -> Entry | None:
        """The entry named ``<top>/<rest>``, or None."""
        return next((e for e in self.entries if e.name.split("/", 1)[-1] == rest and "/" in e.name), None)

    def read(self, name: str) -> bytes:
        """The bytes of entry ``name`` (inflated within its declared size, checked against its CRC-32)."""
        e = self._by_name[name]
        raw = self.data[e.data : e.data + e.size]
        if e.method == 0:
            return raw  # the CRC was checked with the archive
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(raw, e.uncompressed + 1)
        except zlib.error as err:
            raise ArchiveError(f"{self.source}: refused: entry {name!r} does not inflate ({err}); {ADVICE}") from err
        if len(out) != e.uncompressed or not d.eof or zlib.crc32(out) != e.crc:
            raise ArchiveError(
                f"{self.source}: refused: entry {name!r} does not inflate to its declared {e.uncompressed} bytes "
                f"and CRC-32; {ADVICE}"
            )
        return out


def read_archive(path: str | Path) -> Archive:
    """Read ``path`` once (the only time ekd opens it) and check it. Raises FileNotFoundError or
    :class:`ArchiveError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; export one with `ekd export`")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path} ({e}); copy it again") from e
    return Archive(str(path), data)


def _size_limit(rest: str, compressed_code: bool) -> tuple[int, str]:
    """(the most bytes an entry named ``rest`` below the top folder may declare, its role); 0: no
    limit beyond the file's size (a stored entry)."""
    if rest == "extra/" + METADATA_FILE:
        return METADATA_BYTES, "metadata.json"
    if rest.endswith(".pkl"):
        return PICKLE_BYTES, "a pickle"
    if compressed_code:
        return COMPRESSED_BYTES, "a compressed code file"
    return 0, ""


def _zip64_values(data: bytes, at: int, length: int) -> tuple[bool, list[int]]:
    """(whether the extra field at ``at`` holds a zip64 block (id 1), its 8-byte values)."""
    end, present, values = at + length, False, []
    while at + 4 <= end:
        ident, n = struct.unpack_from("<HH", data, at)
        if at + 4 + n > end:
            break
        if ident == 1:
            present = True
            values += [struct.unpack_from("<Q", data, at + 4 + k)[0] for k in range(0, n - 7, 8)]
        at += 4 + n
    return present, values


def _check(data: bytes, source: str) -> list[Entry]:  # noqa: C901  (one rule, checked in file order)
    refused = f"{source}: refused: "

    def bad(why: str) -> ArchiveError:
        return ArchiveError(f"{refused}{why}; {ADVICE}")

    def need(at: int, n: int, what: str) -> None:
        if at > len(data) or n > len(data) - at:
            raise bad(f"{what} lies beyond the end of the file ({len(data)} bytes)")

    def u16(at):
        return struct.unpack_from("<H", data, at)[0]

    def u32(at):
        return struct.unpack_from("<I", data, at)[0]

    def u64(at):
        return struct.unpack_from("<Q", data, at)[0]

    n = len(data)
    if n < _END_SIZE or u32(n - _END_SIZE) != _END:
        if n == 0:
            raise bad("the file is empty")
        # an end record with a comment of at most 64 KiB would start within the last 65,557 bytes
        if data.rfind(b"PK\x05\x06", max(0, n - 65557)) < 0:
            raise bad("not a TorchScript archive, or corrupt (it has no zip end record)")
        raise bad("the zip archive's end record is not the file's last 22 bytes (a zip comment, or data appended)")
    end = n - _END_SIZE
    if u16(end + 20) != 0:
        raise bad("the zip archive has a comment (ekd and torch write none)")
    if u16(end + 4) != 0 or u16(end + 6) != 0 or u16(end + 8) != u16(end + 10):
        raise bad("the zip archive spans several disks")
    count, cd_size, cd_offset = u16(end + 10), u32(end + 12), u32(end + 16)
    cd_end = end
    if end >= _LOCATOR_SIZE and u32(end - _LOCATOR_SIZE) == _LOCATOR:
        loc = end - _LOCATOR_SIZE
        rec = u64(loc + 8)
        if (
            u32(loc + 4) != 0
            or u32(loc + 16) != 1
            or loc < _END64_SIZE
            or rec != loc - _END64_SIZE
            or u32(rec) != _END64
            or u64(rec + 4) != _END64_SIZE - 12
        ):
            raise bad("the zip64 end record is not where its locator says, right before the locator")
        if u32(rec + 16) != 0 or u32(rec + 20) != 0 or u64(rec + 24) != u64(rec + 32):
            raise bad("the zip archive spans several disks")
        count64, size64, offset64 = u64(rec + 32), u64(rec + 40), u64(rec + 48)
        if (
            (count != 0xFFFF and count != count64)
            or (cd_size != 0xFFFFFFFF and cd_size != size64)
            or (cd_offset != 0xFFFFFFFF and cd_offset != offset64)
        ):
            raise bad("the zip archive's end record and zip64 end record disagree about its central directory")
        count, cd_size, cd_offset, cd_end = count64, size64, offset64, rec
    elif count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise bad("the zip archive's end record refers to a zip64 end record that is not there")
    if cd_offset > cd_end or cd_size != cd_end - cd_offset:
        raise bad(
            f"the zip archive's central directory is not where its end record says ({cd_size} bytes at offset "
            f"{cd_offset}, but the end records begin at {cd_end}): a second central directory, or data between the "
            "directory and the end record"
        )

    # the central directory: exactly `count` records filling [cd_offset, cd_end)
    central, seen, at = [], set(), cd_offset
    for i in range(count):
        need(at, _CENTRAL_SIZE, "a central directory record")
        if at + _CENTRAL_SIZE > cd_end or u32(at) != _CENTRAL:
            raise bad(f"the central directory holds fewer records than its end record says ({i} of {count})")
        flags, method = u16(at + 8), u16(at + 10)
        crc, size, usize = u32(at + 16), u32(at + 20), u32(at + 24)
        name_len, extra_len, comment_len, disk = u16(at + 28), u16(at + 30), u16(at + 32), u16(at + 34)
        local = u32(at + 42)
        if at + _CENTRAL_SIZE + name_len + extra_len + comment_len > cd_end:
            raise bad("a central directory record runs past the directory's end")
        raw = data[at + _CENTRAL_SIZE : at + _CENTRAL_SIZE + name_len]
        name = raw.decode("latin-1")
        zip64, values = _zip64_values(data, at + _CENTRAL_SIZE + name_len, extra_len)
        fields = [usize, size, local]
        for k, sentinel in enumerate((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)):
            if fields[k] == sentinel:
                if not values:
                    raise bad(f"entry {name!r} lacks its zip64 sizes")
                fields[k] = values.pop(0)
        usize, size, local = fields
        if disk != 0:
            raise bad("the zip archive spans several disks")
        if comment_len:
            raise bad(f"entry {name!r} has a comment (ekd and torch write none)")
        if not raw:
            raise bad("an entry has an empty name")
        if any(c < 0x20 or c > 0x7E or c == 0x5C for c in raw):
            raise bad("an entry's name is not printable ASCII (readers may decode it differently)")
        if name.lower() in seen:
            raise bad(
                f"the archive names {name!r} twice (or twice ignoring case): readers differ on which copy they read"
            )
        seen.add(name.lower())
        if flags & ~_FLAGS_ALLOWED:
            raise bad(f"entry {name!r} is encrypted or has unknown flags")
        at += _CENTRAL_SIZE + name_len + extra_len + comment_len
        central.append((name, flags, method, crc, size, usize, local, zip64))
    if at != cd_end:
        raise bad(
            f"the central directory holds more than the {count} records its end record says: a second central "
            "directory, or data hidden in it"
        )

    # sizes by role before anything is inflated, then the entries tile [0, cd_offset)
    entries, nxt = [], 0
    for name, flags, method, crc, size, usize, local, zip64 in central:
        rest = name.split("/", 1)[-1]
        if method not in (0, 8):
            raise bad(
                f"entry {name!r} uses compression method {method} (ekd's files store entries, or deflate code text)"
            )
        compressed = method == 8
        code = rest.startswith("code/") or rest.endswith(".debug_pkl")
        limit, role = _size_limit(rest, compressed and code)
        if limit and usize > limit:
            raise ArchiveError(
                f"{refused}entry {name!r} declares {usize} bytes uncompressed, more than {role} of a model file may "
                f"hold ({limit} bytes); not a file written by ekd (a small compressed file that inflates this far "
                "would exhaust memory)"
            )
        if compressed and not code:
            raise ArchiveError(
                f"{refused}entry {name!r} is compressed ({usize} bytes when inflated); torch stores it uncompressed, "
                "so it can cost no more memory than the file's size, and only code text may be compressed; not a "
                "file written by ekd"
            )
        if not compressed and size != usize:
            raise bad(f"stored entry {name!r} has different compressed and uncompressed sizes")
        if local != nxt:
            raise bad(
                f"there are bytes before the first entry ({local})"
                if nxt == 0
                else f"entry {name!r} does not start where the previous entry ends (offset {local}, expected {nxt}): "
                "hidden data, or entries out of order"
            )
        need(local, _LOCAL_SIZE, "a local header")
        if u32(local) != _LOCAL:
            raise bad(f"entry {name!r} has no local header at its offset")
        lflags, lmethod = u16(local + 6), u16(local + 8)
        lcrc, lsize, lusize = u32(local + 14), u32(local + 18), u32(local + 22)
        name_len, extra_len = u16(local + 26), u16(local + 28)
        need(local + _LOCAL_SIZE, name_len + extra_len, "a local header")
        mismatch = f"the local header of entry {name!r} differs from its directory record"
        local_name = data[local + _LOCAL_SIZE : local + _LOCAL_SIZE + name_len].decode("latin-1")
        if local_name != name:
            raise bad(f"{mismatch} (name {local_name!r})")
        if (lflags, lmethod) != (flags, method):
            raise bad(f"{mismatch} (flags or method)")
        lzip64, values = _zip64_values(data, local + _LOCAL_SIZE + name_len, extra_len)
        if lusize == 0xFFFFFFFF and values:
            lusize = values.pop(0)
        if lsize == 0xFFFFFFFF and values:
            lsize = values.pop(0)
        described = bool(flags & _FLAG_DESCRIPTOR)
        # with a data descriptor the header may leave CRC and sizes zero (torch does)
        blank = described and lcrc == lsize == lusize == 0
        if not blank and (lcrc, lsize, lusize) != (crc, size, usize):
            raise bad(f"{mismatch} (CRC or sizes)")
        start = local + _LOCAL_SIZE + name_len + extra_len
        need(start, size, f"the data of entry {name!r}")
        nxt = start + size
        if described:
            if nxt + 4 <= cd_offset and u32(nxt) == _DESCRIPTOR:
                nxt += 4
            wide = lzip64 or zip64
            length = 20 if wide else 12
            if nxt + length > cd_offset:
                raise bad(f"the data descriptor of entry {name!r} is missing")
            dsize, dusize = (u64(nxt + 4), u64(nxt + 12)) if wide else (u32(nxt + 4), u32(nxt + 8))
            if (u32(nxt), dsize, dusize) != (crc, size, usize):
                raise bad(f"the data descriptor of entry {name!r} differs from its directory record")
            nxt += length
        if nxt > cd_offset:
            raise bad(f"entry {name!r} overlaps the central directory")
        if not compressed and zlib.crc32(memoryview(data)[start : start + size]) != crc:
            raise bad(f"entry {name!r} does not match its CRC-32")
        entries.append(Entry(name, method, start, size, usize, crc))
    if nxt != cd_offset:
        raise bad(
            f"there are {cd_offset - nxt} bytes between the last entry and the central directory (a second archive?)"
        )
    return entries
