"""Model files for the trust tests (tests/unit/test_model_trust.py and
tests/integration/test_lammps_trust.py): ekd's own, and bad ones of every sort the model-trust
rule (ekd.deploy.model_file) must refuse. Everything is made with ekd's exporter and then altered the way
a hand or a hostile file would; nothing is stored.

:func:`bad_files` returns name -> (path, refused without the opt-in, refused with it), the table
both readers (Python and the LAMMPS plugin) must reproduce.
"""

from __future__ import annotations

import json
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import torch
from torch import Tensor

from ekd.deploy.model_file import FORMAT_1, OPS_LIBRARY, ModelMetadata, _quiet_jit, save_model
from ekd.scripted import available_ops, example_hipnn
from ekd.testing import toy_model

SPECIES = ("H", "C")
METADATA = "extra/metadata.json"


class SetStateWritesAFile(torch.nn.Module):
    """The attack of issue 14 (item 8): TorchScript runs a module's ``__setstate__`` while loading
    the file; this one creates ``target`` with ``torch.from_file(target, True, n)``."""

    def __init__(self, target: str, cutoff: float, n_interactions: int):
        super().__init__()
        self.target = target
        self.metadata_json = ""
        self.cutoff = cutoff  # disguised as an ekd model
        self.n_interactions = n_interactions

    @torch.jit.export
    def __getstate__(self) -> tuple[str, str, float, int, bool]:
        return (self.target, self.metadata_json, self.cutoff, self.n_interactions, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, str, float, int, bool]) -> None:
        self.target = state[0]
        self.metadata_json = state[1]
        self.cutoff = state[2]
        self.n_interactions = state[3]
        # the result feeds an attribute: TorchScript drops calls whose results are unused
        self.training = torch.from_file(self.target, True, 16).numel() >= 0 and state[4]

    def forward(self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> Tensor:
        energy = torch.zeros(species.shape[0], dtype=r_ij.dtype)
        return energy.index_add(0, pair_first, 0.0 * r_ij.sum(1))


class PairRepulsion(torch.nn.Module):
    """A module that is not one of ekd's classes (kind "custom"): e_i = 1/2 sum_j exp(-|r_ij|)."""

    def __init__(self):
        super().__init__()
        self.metadata_json = ""

    def forward(self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> Tensor:
        energy = torch.zeros(species.shape[0], dtype=r_ij.dtype)
        return energy.index_add(0, pair_first, 0.5 * torch.exp(-torch.linalg.vector_norm(r_ij, dim=1)))


def meta_text(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(METADATA))).decode()


def rewrite(src: Path, dst: Path, change=None, drop: str | None = None, add: dict[str, bytes] | None = None) -> Path:
    """A copy of the zip ``src``: ``change(name, data) -> data`` per entry, ``drop`` the entry ending
    so, ``add`` entries (names below the top folder)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        top = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            if drop is not None and name.endswith(drop):
                continue
            data = zin.read(name)
            zout.writestr(name, change(name, data) if change else data)
        for name, data in (add or {}).items():
            zout.writestr(f"{top}/{name}", data)
    return dst


def with_metadata(src: Path, dst: Path, **changes) -> Path:
    """``src`` with fields of metadata.json changed inside the zip (the weights' copy unchanged)."""
    meta = json.loads(meta_text(src))
    meta.update(changes)
    return rewrite(
        src, dst, lambda n, d: json.dumps(meta, indent=1, sort_keys=True).encode() if n.endswith(METADATA) else d
    )


def rebind(src: Path, dst: Path, **changes) -> Path:
    """``src`` with metadata.json AND the weights' bound copy of it (a string in data.pkl) changed
    alike: a file that passes the binding check, to test the metadata validators themselves."""
    old = meta_text(src)
    meta = json.loads(old)
    meta.update(changes)
    for k in [k for k, v in changes.items() if v is DROP]:
        del meta[k]
    new = json.dumps(meta, indent=1, sort_keys=True)

    def pickled(text: str) -> bytes:  # BINUNICODE: opcode X, 4-byte little-endian length, UTF-8
        data = text.encode()
        return b"X" + struct.pack("<I", len(data)) + data

    def change(name: str, data: bytes) -> bytes:
        if name.endswith(METADATA):
            return new.encode()
        if name.endswith("/data.pkl"):
            assert data.count(pickled(old)) == 1
            return data.replace(pickled(old), pickled(new))
        return data

    return rewrite(src, dst, change)


DROP = object()


def metadata_files(d: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, refused): ekd toy files whose metadata (bound copy included) is changed, for
    the metadata validators of both readers."""
    d.mkdir(parents=True, exist_ok=True)
    toy = toy_file(d / "toy.pt")
    cases = {
        "valid (role changed)": ({"role": "teacher"}, False),
        "format": ({"format": "ekd-model-0"}, True),
        "missing field": ({"description": DROP}, True),
        "unknown field": ({"colour": "blue"}, True),
        "kind unknown": ({"kind": "weird"}, True),
        "cutoff negative": ({"cutoff": -1.0}, True),
        "cutoff a string": ({"cutoff": "6.5"}, True),
        "cutoff not the model's": ({"cutoff": 3.0}, True),
        "n_interactions 1.5": ({"n_interactions": 1.5}, True),
        "n_interactions 0": ({"n_interactions": 0}, True),
        "n_interactions not the model's": ({"n_interactions": 1}, True),
        "species unknown": ({"species": ["H", "Q"]}, True),
        "species twice": ({"species": ["H", "H"]}, True),
        "species empty": ({"species": []}, True),
        "dtype": ({"dtype": "float16"}, True),
        "energy unit": ({"energy_unit": "eV"}, True),
        "ekd version": ({"ekd_version": "9.1.0"}, True),
        "torch version": ({"torch_version": "1.13.1"}, True),
        "ops library": ({"ops_library": "libother.so"}, True),
        "torch.classes in the description": ({"description": "torch.classes"}, True),
        # schema facts both readers take from ekd/deploy/model_format.json
        "valid (species ends with the table's last element)": ({"species": ["H", "C", "Og"]}, False),
        "species X (atomic number 0)": ({"species": ["X", "C"]}, True),
        "length unit": ({"length_unit": "bohr"}, True),
        "kind missing": ({"kind": DROP}, True),
        "kind in an ekd-model-1 file": ({"format": "ekd-model-1"}, True),
        # a TorchScript archive naming the AOTInductor package format: the format must match the file
        "format ekd-aoti-1 in a TorchScript file": ({"format": "ekd-aoti-1"}, True),
        "dtype float32 (the module's is float64)": ({"dtype": "float32"}, True),
        # types: every field as the schema says
        "species a string": ({"species": "HC"}, True),
        "cutoff true": ({"cutoff": True}, True),
        "n_interactions -1": ({"n_interactions": -1}, True),
        "role a number": ({"role": 5}, True),
        "ekd_version a number": ({"ekd_version": 0.1}, True),
        "ops_library a number": ({"ops_library": 5}, True),
    }
    return {
        name: (rebind(toy, d / f"meta{i}.pt", **changes), refused)
        for i, (name, (changes, refused)) in enumerate(cases.items())
    }


def toy_file(path: Path, cutoff: float = 6.5, n_interactions: int = 2) -> Path:
    module, meta = toy_model(SPECIES, cutoff=cutoff, n_interactions=n_interactions, seed=3)
    save_model(module, path, meta)
    return path


def hipnn_file(path: Path, envsum: str) -> Path:
    module = example_hipnn(envsum, l_max=1, n_interactions=2)
    meta = ModelMetadata(2.5, 2, SPECIES, ops_library=None if envsum == "torch" else OPS_LIBRARY, role="test")
    save_model(module, path, meta)
    return path


def _torchscript_file(module, path: Path, metadata: dict, bind: bool = True) -> Path:
    """``module`` written by plain torch.jit.save with ``metadata`` (as a model's author could)."""
    text = json.dumps(metadata, indent=1, sort_keys=True)
    with _quiet_jit():
        scripted = torch.jit.script(module)
        if bind:
            scripted.metadata_json = text
        torch.jit.save(scripted, str(path), _extra_files={"metadata.json": text})
    return path


def evil_file(path: Path, target: Path, like: Path) -> Path:
    """:class:`SetStateWritesAFile` dressed as an ekd toy model (``like``'s metadata)."""
    meta = json.loads(meta_text(like))
    return _torchscript_file(SetStateWritesAFile(str(target), meta["cutoff"], meta["n_interactions"]), path, meta)


def bad_files(d: Path, target: Path) -> dict[str, tuple[Path, bool, bool]]:
    """name -> (file, refused without trust_code, refused with trust_code)."""
    d.mkdir(parents=True, exist_ok=True)
    toy = toy_file(d / "toy.pt")
    out = {
        "ekd toy": (toy, False, False),
        "ekd hipnn-torch": (hipnn_file(d / "hipnn_torch.pt", "torch"), False, False),
        "metadata edited: cutoff 6.5 -> 3.0": (with_metadata(toy, d / "cutoff.pt", cutoff=3.0), True, True),
        "metadata edited: role": (with_metadata(toy, d / "role.pt", role="teacher"), True, True),
        "metadata edited: kind hipnn": (with_metadata(toy, d / "kind.pt", kind="hipnn"), True, True),
        "code edited": (
            rewrite(toy, d / "code.pt", lambda n, b: b.replace(b"0.5", b"0.4") if n.endswith("scripted.py") else b),
            True,
            False,
        ),
        "code entry added": (rewrite(toy, d / "code_added.pt", add={"code/__torch__/x.py": b"pass\n"}), True, False),
        "code entry missing": (
            rewrite(hipnn_file(d / "h2.pt", "torch"), d / "missing.pt", drop="functional.py"),
            True,
            True,
        ),
        "unexpected entry": (rewrite(toy, d / "entry.pt", add={"extra/readme.txt": b"hello"}), True, False),
        "directory entry": (rewrite(toy, d / "directory.pt", add={"code/": b""}), True, False),
        "entry named twice": (rewrite(toy, d / "twice.pt", add={"constants.pkl": b"\x80\x02)."}), True, True),
        "torch.classes in a pickle": (
            rewrite(toy, d / "classes.pt", lambda n, b: b + b"torch.classes" if n.endswith("constants.pkl") else b),
            True,
            False,
        ),
        "re-saved by torch.jit.save": (_resaved(toy, d / "resaved.pt"), True, False),
        "ekd-model-1 file": (_format1(toy, d / "format1.pt"), True, False),
        "custom module": (_custom(d / "custom.pt"), True, False),
        "__setstate__ writes a file": (evil_file(d / "evil.pt", target, toy), True, False),
        "truncated": (_truncated(toy, d / "truncated.pt"), True, True),
        "no metadata.json": (rewrite(toy, d / "nometa.pt", drop=METADATA), True, True),
    }
    # issue 24: archives that break the strict archive rule, refused with or without the opt-in
    strict = d / "strict"
    strict.mkdir()
    for name, (path, _) in strict_files(strict, toy, out["__setstate__ writes a file"][0]).items():
        out[name] = (path, True, True)
    out["pickle naming os.system"] = (foreign_global(toy, d / "os_system.pt"), True, True)
    if "envsum" in available_ops():
        out["ekd hipnn (op library)"] = (hipnn_file(d / "hipnn.pt", "ekd"), False, False)
    return out


def _resaved(src: Path, dst: Path) -> Path:
    with _quiet_jit():
        torch.jit.save(torch.jit.load(str(src)), str(dst), _extra_files={"metadata.json": meta_text(src)})
    return dst


def _format1(src: Path, dst: Path) -> Path:
    meta = json.loads(meta_text(src))
    del meta["kind"]
    meta["format"] = FORMAT_1
    with _quiet_jit():
        torch.jit.save(torch.jit.load(str(src)), str(dst), _extra_files={"metadata.json": json.dumps(meta)})
    return dst


def _custom(dst: Path) -> Path:
    module = torch.jit.script(PairRepulsion())
    save_model(module, dst, ModelMetadata(3.0, 1, SPECIES, role="test"))
    return dst


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


# ---------------------------------------------------------------------------------------------
# archives that break the strict archive rule (issue 24, items 1 and 3): built byte by byte


def records_of(path: Path, drop: str | None = None) -> list[tuple[str, bytes, int, int, int]]:
    """The entries of a zip as (name, payload, method, uncompressed size, CRC-32), stored."""
    with zipfile.ZipFile(path) as z:
        out = []
        for name in z.namelist():
            if drop is not None and name.endswith(drop):
                continue
            data = z.read(name)
            out.append((name, data, 0, len(data), zlib.crc32(data)))
        return out


def build_zip(
    records, before: bytes = b"", gap_after: int | None = None, gap: bytes = b"", comment: bytes = b""
) -> bytes:
    """A zip archive of ``records`` (see :func:`records_of`; a method-8 payload is already deflated)
    with consistent offsets, ``before`` ahead of the first entry and ``gap`` after entry
    ``gap_after``: readers that tolerate such bytes load it; the strict rule refuses it."""
    out, cd = bytearray(before), bytearray()
    for i, (name, payload, method, size, crc) in enumerate(records):
        offset, raw = len(out), name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size, len(raw), 0)
        out += raw + payload
        cd += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            method,
            0,
            0x21,
            crc,
            len(payload),
            size,
            len(raw),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        cd += raw
        if gap_after == i:
            out += gap
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(cd), len(out), len(comment))
    return bytes(out + cd + end + comment)


#: how far the bombs inflate: beyond the 200 MB the memory tests allow, small enough that
#: today's readers survive inflating it
BOMB_BYTES = 384 << 20


def deflated_zeros(n: int = BOMB_BYTES) -> tuple[bytes, int]:
    """(raw deflate stream of n zero bytes, their CRC-32), made 1 MiB at a time (~1,000:1)."""
    co, crc, out, chunk = zlib.compressobj(9, zlib.DEFLATED, -15), 0, bytearray(), bytes(1 << 20)
    for _ in range(n >> 20):
        out += co.compress(chunk)
        crc = zlib.crc32(chunk, crc)
    return bytes(out + co.flush()), crc


def bomb(src: Path, dst: Path, entry: str, zeros: tuple[bytes, int]) -> Path:
    """``src`` with the entry ending ``entry`` replaced by deflated zeros (BOMB_BYTES when inflated)."""
    stream, crc = zeros
    records = [
        (n, stream, 8, BOMB_BYTES, crc) if n.endswith(entry) else (n, d, m, s, c) for n, d, m, s, c in records_of(src)
    ]
    dst.write_bytes(build_zip(records))
    return dst


def _directory(z: bytes) -> tuple[int, int, int]:
    """(entry count, size, offset) of a zip's central directory, zip64 records read if present."""
    end = len(z) - 22
    assert struct.unpack_from("<I", z, end)[0] == 0x06054B50
    if struct.unpack_from("<I", z, end - 20)[0] == 0x07064B50:
        rec = struct.unpack_from("<Q", z, end - 12)[0]
        return struct.unpack_from("<QQQ", z, rec + 32)
    return struct.unpack_from("<HII", z, end + 10)


def two_directories(shown: Path, loaded: Path, dst: Path) -> Path:
    """Issue 24, item 1: ``loaded`` (a whole zip) followed by ``shown``'s entries and directory,
    under one end record: Python's zipfile (the directory just before the end record) lists
    ``shown``, torch's miniz (the directory at the recorded offset) reads ``loaded``."""
    s = shown.read_bytes()
    n_s, size_s, off_s = _directory(s)
    # loaded's directory must start at or after shown's (zipfile's offsets stay >= 0) and be no
    # longer (miniz reads it within shown's directory size): pad its first entry, drop debug info
    loaded_bytes = build_zip(records_of(loaded, drop=".debug_pkl"), gap_after=0, gap=bytes(off_s))
    n_l, size_l, off_l = _directory(loaded_bytes)
    assert off_l >= off_s and size_l <= size_s, (off_l, off_s, size_l, size_s)
    base = len(loaded_bytes)
    shift = base + off_s - off_l  # what zipfile adds to every offset it reads
    cd, at = bytearray(s[off_s : off_s + size_s]), 0
    while at < len(cd):
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", cd, at + 28)
        (offset,) = struct.unpack_from("<I", cd, at + 42)
        struct.pack_into("<I", cd, at + 42, base + offset - shift)
        at += 46 + name_len + extra_len + comment_len
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n_l, n_l, size_s, off_l, 0)
    dst.write_bytes(loaded_bytes + s[:off_s] + bytes(cd) + end)
    return dst


def foreign_global(src: Path, dst: Path) -> Path:
    """Issue 24, item 4: data.pkl's first global (the model's class) renamed os.system."""

    def change(name: str, data: bytes) -> bytes:
        if not name.endswith("/data.pkl"):
            return data
        start = data.index(b"c__torch__")
        end = data.index(b"\n", data.index(b"\n", start) + 1) + 1
        return data[:start] + b"cos\nsystem\n" + data[end:]

    return rewrite(src, dst, change)


def local_name_differs(src: Path, dst: Path) -> Path:
    """The local header of metadata.json names another entry than its directory record."""
    data = bytearray(build_zip(records_of(src)))
    at = data.index(b"extra/metadata.json")  # the first occurrence is the local header's
    data[at + len("extra/metadata.jso")] = ord("N")
    dst.write_bytes(bytes(data))
    return dst


def _upper_below_top(name: str) -> str:
    top, rest = name.split("/", 1)
    return f"{top}/{rest.upper()}"


def strict_files(d: Path, toy: Path, evil: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words of the refusal): archives that break the strict archive rule (refused
    with or without trust_code, by both readers)."""
    zeros = deflated_zeros()
    records = records_of(toy)

    def write(name: str, data: bytes) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return {
        "two central directories": (two_directories(toy, evil, d / "two_directories.pt"), "central directory"),
        "bytes before the first entry": (write("before.pt", build_zip(records, before=bytes(64))), "before the first"),
        "bytes between entries": (
            write("gap.pt", build_zip(records, gap_after=1, gap=bytes(64))),
            "does not start where",
        ),
        "data appended": (write("appended.pt", toy.read_bytes() + bytes(100)), "end record"),
        "zip comment": (write("comment.pt", build_zip(records, comment=b"hello")), "comment"),
        "local header differs": (local_name_differs(toy, d / "local.pt"), "local header"),
        "name twice ignoring case": (
            write("case.pt", build_zip([*records, (_upper_below_top(records[0][0]), b"{}", 0, 2, zlib.crc32(b"{}"))])),
            "twice",
        ),
        "bomb: metadata.json": (bomb(toy, d / "bomb_metadata.pt", METADATA, zeros), "metadata.json of a model file"),
        "bomb: data.pkl": (bomb(toy, d / "bomb_pickle.pt", "/data.pkl", zeros), "a pickle of a model file"),
        "bomb: weight record": (bomb(toy, d / "bomb_weight.pt", "/data/0", zeros), "is compressed"),
    }


def bad_files_in(tmp_path_factory) -> tuple[dict[str, tuple[Path, bool, bool]], Path]:
    """(:func:`bad_files` in a fresh folder, the file the ``__setstate__`` payload creates): the
    module fixture of the Python and the LAMMPS trust tests."""
    d = tmp_path_factory.mktemp("trust")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name" (on purpose)
        return bad_files(d / "files", d / "written_by_setstate"), d / "written_by_setstate"
