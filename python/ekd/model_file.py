"""The ekd model file: one self-describing TorchScript archive per deployed model, run by the ASE
calculator (:mod:`ekd.calculator`) and by LAMMPS (``pair_style ekd``, ``lammps_plugin/``) alike.

Format ``ekd-model-2``
----------------------
A TorchScript archive written by :func:`save_model` with ``extra/metadata.json``
(:class:`ModelMetadata`) whose module has

* the deployed-model interface (unchanged from ``ekd-model-1``)::

    forward(species: Tensor[N] int64,        atomic numbers of local + ghost atoms
            pair_first: Tensor[P] int64,     i of each pair
            pair_second: Tensor[P] int64,    j of each pair
            r_ij: Tensor[P, 3]) -> Tensor[N] per-atom energies, kcal/mol

  lengths in Angstrom, energies in kcal/mol; ``r_ij`` and the result in the model's dtype
  (``metadata.dtype``); the pair list is FULL (both (i, j) and (j, i)) and holds every pair with
  |r_ij| < cutoff, ``r_ij = x_j - x_i`` with the periodic image applied (an atom may pair with its
  own image); pairs at or beyond the cutoff may be present and contribute nothing; the energy of
  atom i may depend on atoms up to ``n_interactions * cutoff`` away;
* the stage methods (every model of a known ``kind``), for per-layer halo exchange in LAMMPS:
  ``embed(species) -> (z0 [N, F_0], e0 [N])`` and ``interaction(k, z [N, F_k], pair_first,
  pair_second, r_ij) -> (z [N, F_{k+1}], e_k [N])`` (row i depends only on z[i] and on the pairs
  with first atom i), with ``forward = e0 + sum_k e_k``; attributes ``n_interactions``, ``cutoff``,
  ``feature_widths`` (F_0 .. F_n) and ``metadata_json``.

Forces and the virial are not part of the model: they are the gradient of the summed energies of
the owned atoms with respect to ``r_ij`` (``g = dE/dr_ij``), applied as ``f_i += g, f_j -= g``,
and ``W = -sum_p r_ij (x) g`` (LAMMPS's virial; ASE's stress is ``-W / volume``).

Model files and trust
---------------------
Loading TorchScript runs the code stored in the archive (e.g. a class's ``__setstate__``), so a
downloaded model file could do anything. ekd therefore opens a model only when, before TorchScript
sees it, the archive checks out (:func:`check_archive`; the LAMMPS plugin does the same in C++):

* its entries are within ``version, byteorder, .data/version, .data/serialization_id, data.pkl,
  constants.pkl, data/<digits>, extra/metadata.json, code/...``;
* its ``code/`` entries are byte-identical to the code this ekd writes for the model's ``kind``
  (``hipnn``, ``hipnn-torch``, ``toy``): weights and hyper-parameters live in data.pkl, so every
  model of a kind has the same code. The canonical code is committed in ``ekd/model_code/<kind>/``
  (regenerate with ``python -m ekd.model_file --regenerate`` after changing :mod:`ekd.scripted`;
  a test checks it);
* no pickle entry names ``torch.classes`` (custom C++ classes run their own ``__setstate__``).

A file that fails (an ``ekd-model-1`` file, whose code varies per model; a model of kind
``custom``; a file from another ekd) is refused with an error naming it, unless the caller opts
in for a file it trusts: ``trust_code=True`` here and in :class:`ekd.calculator.EKDCalculator`,
``--trust-code`` on the command line, ``pair_style ekd ... trust_code yes`` in LAMMPS.

The metadata is bound to the weights: the module's ``metadata_json`` attribute (in data.pkl) holds
the text of ``extra/metadata.json``; a file where the two differ is refused (the metadata was
edited, or moved onto other weights), opt-in or not.

This module does not import torch at import time (:mod:`ekd.export` imports it for the
``lammps.plugins`` entry point in the ``lmp`` wrapper).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import warnings
import zipfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import __version__

#: the format this ekd writes; it also reads FORMAT_1 files (only with trust_code=True)
FORMAT = "ekd-model-2"
FORMAT_1 = "ekd-model-1"
FORMATS = (FORMAT_1, FORMAT)
ENERGY_UNIT = "kcal/mol"
LENGTH_UNIT = "angstrom"
DTYPES = ("float32", "float64")
#: name of the op library a model may call (torch.ops.ekd); the LAMMPS plugin loads the same file
OPS_LIBRARY = "libekd_ops.so"
METADATA_FILE = "metadata.json"
#: model kinds whose code ekd writes (ekd.scripted's classes); "custom" = any other module
KINDS = ("hipnn", "hipnn-torch", "toy")
CUSTOM = "custom"
#: where the canonical code of each kind lives (package data, not importable)
CODE_DIR = Path(__file__).parent / "model_code"
CODE_SUFFIX = ".txt"
#: the opt-in, as each interface spells it (for messages)
OPT_IN = "trust_code=True (Python), --trust-code (ekd CLI), `pair_style ekd ... trust_code yes` (LAMMPS)"

# element symbols by atomic number (index 0 unused)
ELEMENTS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf "
    "Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
ATOMIC_NUMBERS = {s: z for z, s in enumerate(ELEMENTS) if z > 0}

# entries (below the archive's top folder) a model file may hold besides code/...
_PLAIN_ENTRIES = {"version", "byteorder", ".data/version", ".data/serialization_id", "data.pkl", "constants.pkl"}
_DATA_ENTRY = re.compile(r"data/[0-9]+")
_EXTRA_ENTRY = "extra/" + METADATA_FILE


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file, the problem and the fix."""


class UntrustedModelError(ModelFileError):
    """A model file whose code is not the code this ekd writes (refused without the opt-in)."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a deployed model says about itself (``metadata.json`` inside the TorchScript file).

    cutoff: pair cutoff, Angstrom. n_interactions: message-passing depth (an atom's energy sees
    atoms up to n_interactions * cutoff away). species: element symbols in model order.
    dtype: "float32" or "float64" (of r_ij and of the energies). ops_library: file name of the op
    library the TorchScript code calls (``libekd_ops.so``) or None. kind: which of ekd's model
    classes the code is ("hipnn", "hipnn-torch", "toy") or "custom" (any other module: loads only
    with the trust opt-in); empty in ekd-model-1 files. role / description: free text ("student",
    "teacher", "toy", ...). Format, versions and units are filled in by :func:`save_model`.
    """

    cutoff: float
    n_interactions: int
    species: tuple[str, ...]
    dtype: str = "float64"
    ops_library: str | None = None
    role: str = ""
    description: str = ""
    kind: str = CUSTOM
    format: str = FORMAT
    energy_unit: str = ENERGY_UNIT
    length_unit: str = LENGTH_UNIT
    ekd_version: str = __version__
    torch_version: str = ""

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return tuple(ATOMIC_NUMBERS[s] for s in self.species)

    def to_json(self) -> str:
        d = asdict(self)
        d["species"] = list(self.species)
        if self.format == FORMAT_1:
            del d["kind"]  # ekd-model-1 has no kind field
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "metadata") -> ModelMetadata:
        """Parse and check (see :func:`check_metadata`); ``source`` names the file in messages."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ModelFileError(f"{source}: metadata.json is not valid JSON ({e}); re-export the model") from e
        if not isinstance(d, dict):
            raise ModelFileError(f"{source}: metadata.json must hold a JSON object; re-export the model")
        if d.get("format") not in FORMATS:
            raise ModelFileError(
                f"{source}: model format is {d.get('format')!r} but this ekd ({__version__}) reads {list(FORMATS)}; "
                "re-export the model with this ekd (ekd export)"
            )
        names = {f.name for f in fields(cls)}
        if d["format"] == FORMAT_1:
            names.discard("kind")
        missing = sorted(names - set(d))
        if missing:
            raise ModelFileError(f"{source}: metadata.json lacks {missing}; re-export the model with this ekd")
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelFileError(f"{source}: metadata.json has unknown fields {unknown}; re-export the model")
        species = d["species"]
        if not isinstance(species, list):
            raise ModelFileError(f"{source}: species must be a list of element symbols, got {species!r}")
        if d["format"] == FORMAT_1:
            d["kind"] = ""
        meta = cls(**{**d, "species": tuple(species)})
        check_metadata(meta, source)
        return meta


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def check_metadata(meta: ModelMetadata, source: str = "metadata") -> None:
    """Raise :class:`ModelFileError` unless every field is usable by this ekd and torch."""
    import torch

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{source}: {what}")

    if meta.format not in FORMATS:
        raise bad(f"model format is {meta.format!r} but this ekd reads {list(FORMATS)}; re-export the model")
    if meta.format == FORMAT and meta.kind not in (*KINDS, CUSTOM):
        raise bad(f"kind must be one of {[*KINDS, CUSTOM]}, got {meta.kind!r}; re-export the model (ekd export)")
    if meta.format == FORMAT_1 and meta.kind:
        raise bad(f"kind {meta.kind!r} in an {FORMAT_1} file (that format has no kind); re-export the model")
    if (
        isinstance(meta.cutoff, bool)
        or not isinstance(meta.cutoff, int | float)
        or not math.isfinite(meta.cutoff)
        or meta.cutoff <= 0
    ):
        raise bad(f"cutoff must be a positive number of Angstrom, got {meta.cutoff!r}")
    if not isinstance(meta.n_interactions, int) or isinstance(meta.n_interactions, bool) or meta.n_interactions < 0:
        raise bad(f"n_interactions must be a non-negative integer, got {meta.n_interactions!r}")
    if meta.format == FORMAT and meta.kind in KINDS and meta.n_interactions < 1:
        raise bad(f"n_interactions must be >= 1 for a {meta.kind} model, got {meta.n_interactions}")
    if not meta.species:
        raise bad("species is empty: name the model's elements in model order")
    unknown = [s for s in meta.species if s not in ATOMIC_NUMBERS]
    if unknown:
        raise bad(f"species {unknown} are not element symbols (expected e.g. ['C', 'H', 'N', 'O'])")
    if len(set(meta.species)) != len(meta.species):
        raise bad(f"species {list(meta.species)} lists an element twice")
    if meta.energy_unit != ENERGY_UNIT or meta.length_unit != LENGTH_UNIT:
        raise bad(
            f"units are {meta.energy_unit!r}/{meta.length_unit!r} but deployed models use "
            f"{ENERGY_UNIT!r}/{LENGTH_UNIT!r}; convert the model's output in the exporter and re-export"
        )
    if meta.dtype not in DTYPES:
        raise bad(f"dtype must be one of {DTYPES}, got {meta.dtype!r}")
    if _major_minor(meta.ekd_version) != _major_minor(__version__):
        raise bad(
            f"exported by ekd {meta.ekd_version} but this is ekd {__version__}; re-export the model with this ekd "
            f"or install ekd {'.'.join(_major_minor(meta.ekd_version))}.*"
        )
    if _major_minor(meta.torch_version) != _major_minor(torch.__version__):
        raise bad(
            f"exported with torch {meta.torch_version} but torch {torch.__version__} is installed; re-export the "
            "model with this torch (TorchScript and the op library are tied to a torch release)"
        )
    if meta.ops_library not in (None, OPS_LIBRARY):
        raise bad(f"needs op library {meta.ops_library!r}; this ekd provides only {OPS_LIBRARY!r}")


@contextlib.contextmanager
def _quiet_jit():
    """torch 2.13 deprecates torch.jit.script/save/load with a warning on every call; TorchScript
    is still the only format LAMMPS can run without Python, so the warning is not actionable here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*", category=DeprecationWarning)
        yield


def _check_module_dtype(module, meta: ModelMetadata, source: str) -> None:
    import torch

    want = getattr(torch, meta.dtype)
    tensors = [*module.parameters(), *module.buffers()]
    found = {t.dtype for t in tensors if t.is_floating_point()}
    if found and found != {want}:
        raise ModelFileError(
            f"{source}: metadata says dtype {meta.dtype} but the module's tensors are {sorted(map(str, found))}; "
            "build the module in that dtype or fix the metadata, and re-export"
        )


# ---------------------------------------------------------------------------------------------
# the archive


def _archive_entries(names: list[str], source: str) -> dict[str, str]:
    """Zip entry names -> {name below the archive's top folder: zip name}. TorchScript puts every
    entry in one top folder (named after the file it was first written to)."""
    out = {}
    if len(set(names)) != len(names):
        # zip readers disagree on which copy of a twice-named entry they read: the copy checked
        # here might not be the copy TorchScript loads
        twice = sorted({n for n in names if names.count(n) > 1})
        raise UntrustedModelError(f"{source}: the archive names {twice[0]!r} twice; not a model file written by ekd")
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or any("/" not in n for n in names):
        raise UntrustedModelError(
            f"{source}: the archive's entries are not in one top folder, as TorchScript writes them; "
            f"not a model file written by ekd. If you trust this file, load it with {OPT_IN}"
        )
    for n in names:
        # directory entries too: torch never writes them, and the plugin's reader lists them
        out[n.split("/", 1)[1]] = n
    return out


def canonical_code(kind: str) -> dict[str, bytes]:
    """The ``code/`` entries this ekd writes for a model of ``kind``: {entry below the archive's
    top folder: bytes}, read from ``ekd/model_code/<kind>/``."""
    root = CODE_DIR / kind
    if kind not in KINDS or not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.rglob("*" + CODE_SUFFIX)):
        rel = p.relative_to(root).as_posix()[: -len(CODE_SUFFIX)]
        out["code/" + rel] = p.read_bytes()
    return out


def check_archive(path: str | Path, kind: str, trust_code: bool = False) -> None:
    """The trust check (see the module docstring) of a model file whose metadata names ``kind``.
    Raises :class:`UntrustedModelError` naming the file, what differs and the opt-in; with
    ``trust_code=True`` it only checks that the file is a zip archive."""
    source = str(path)
    with zipfile.ZipFile(path) as z:
        entries = _archive_entries(z.namelist(), source)
        if trust_code:
            return
        opt_in = f"If you trust this file (it runs its own code when loaded), load it with {OPT_IN}"
        if kind not in KINDS:
            what = "an ekd-model-1 file" if not kind else f"model kind {kind!r}"
            raise UntrustedModelError(
                f"{source}: {what}: its code is not code this ekd writes, and loading a model runs its code. "
                f"Re-export it with this ekd (ekd export), or: {opt_in}"
            )
        for name in sorted(entries):
            if (
                name in _PLAIN_ENTRIES
                or name == _EXTRA_ENTRY
                or _DATA_ENTRY.fullmatch(name)
                or name.startswith("code/")
            ):
                continue
            raise UntrustedModelError(
                f"{source}: unexpected archive entry {entries[name]!r} (ekd's exporter writes only weights, metadata "
                f"and the code of its model classes). {opt_in}"
            )
        want = canonical_code(kind)
        if not want:
            raise UntrustedModelError(
                f"{source}: this ekd has no canonical code for model kind {kind!r} (ekd/model_code is missing from "
                f"the installation?). {opt_in}"
            )
        have = {n for n in entries if n.startswith("code/")}
        for name in sorted(have | set(want)):
            if name not in want:
                raise UntrustedModelError(
                    f"{source}: unexpected code entry {entries[name]!r}: not part of the {kind} model code this ekd "
                    f"writes. {opt_in}"
                )
            if name not in have:
                raise UntrustedModelError(
                    f"{source}: code entry {name!r} of the {kind} model code this ekd writes is missing. {opt_in}"
                )
            if z.read(entries[name]) != want[name]:
                raise UntrustedModelError(
                    f"{source}: code file {entries[name]!r} differs from the {kind} model code this ekd "
                    f"({__version__}) writes. {opt_in}"
                )
        for name in sorted(entries):
            if name.endswith(".pkl") and b"torch.classes" in z.read(entries[name]):
                raise UntrustedModelError(
                    f"{source}: {entries[name]!r} refers to torch.classes (custom C++ classes run their own code "
                    f"when loaded). {opt_in}"
                )


def _archive_bytes(module, metadata_text: str) -> bytes:
    """``torch.jit.save`` of ``module`` rewritten without the ``*.debug_pkl`` entries (source
    positions and file paths of the exporting machine, not needed to load), entries under the top
    folder ``archive``."""
    import torch

    buf = io.BytesIO()
    with _quiet_jit():
        torch.jit.save(module, buf, _extra_files={METADATA_FILE: metadata_text})
    reader = torch._C.PyTorchFileReader(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    # the writer adds these itself when it closes
    own = {"version", ".data/version", ".data/serialization_id"}
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name in own:
            continue
        data = reader.get_record(name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    del writer
    return out.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _kind_of(module) -> str:
    """The model kind of a (scripted) module: which ekd.scripted class it is, else "custom"."""
    name = type(module).__name__
    if hasattr(module, "original_name"):  # a ScriptModule
        name = module.original_name
    return {"ScriptedHipnn": "hipnn", "ScriptedHipnnTorch": "hipnn-torch", "ScriptedToy": "toy"}.get(name, CUSTOM)


def save_model(module, path: str | Path, metadata: ModelMetadata | dict[str, Any]) -> ModelMetadata:
    """Write ``module`` (an ``nn.Module`` obeying the interface above, scripted here if needed)
    with its metadata to ``path`` in format ``ekd-model-2``. Format, versions and units are
    filled in, ``kind`` from the module's class; the metadata is checked and bound to the weights
    (``module.metadata_json`` is set to its text) before anything is written, and a model of a
    known kind must come out with this ekd's canonical code. Returns the metadata as stored."""
    import torch

    path = Path(path)
    if isinstance(metadata, dict):
        metadata = ModelMetadata(**{**metadata, "species": tuple(metadata["species"])})
    with _quiet_jit():
        if not isinstance(module, torch.jit.ScriptModule):
            module = torch.jit.script(module)
    metadata = replace(
        metadata,
        format=FORMAT,
        kind=_kind_of(module),
        energy_unit=ENERGY_UNIT,
        length_unit=LENGTH_UNIT,
        ekd_version=__version__,
        torch_version=torch.__version__,
        cutoff=float(metadata.cutoff),
    )
    check_metadata(metadata, str(path))
    _check_module_dtype(module, metadata, str(path))
    text = metadata.to_json()
    if metadata.kind in KINDS:
        if int(module.n_interactions) != metadata.n_interactions or float(module.cutoff) != metadata.cutoff:
            raise ModelFileError(
                f"{path}: metadata says cutoff {metadata.cutoff}, n_interactions {metadata.n_interactions} but the "
                f"module has {float(module.cutoff)}, {int(module.n_interactions)}; fix the metadata"
            )
    if hasattr(module, "metadata_json"):
        module.metadata_json = text
    elif metadata.kind in KINDS:
        raise ModelFileError(f"{path}: a {metadata.kind} module without a metadata_json attribute")
    data = _archive_bytes(module, text)
    if metadata.kind in KINDS:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if any(b"torch.classes" in z.read(n) for n in z.namelist() if n.endswith(".pkl")):
                raise ModelFileError(
                    f"{path}: the text 'torch.classes' (in the metadata's role or description?) would make readers "
                    "refuse the file; remove it"
                )
        # refuse to write a file this ekd would refuse to load (e.g. a class TorchScript renamed
        # because another version of it was loaded into this process first)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            entries = _archive_entries(z.namelist(), str(path))
            have = {n: z.read(entries[n]) for n in entries if n.startswith("code/")}
        if have != canonical_code(metadata.kind):
            raise ModelFileError(
                f"{path}: the scripted {metadata.kind} module's code differs from ekd/model_code/{metadata.kind} "
                "(ekd.scripted changed: regenerate with `python -m ekd.model_file --regenerate`; or this process "
                "loaded another version of the class before scripting: export in a fresh process)"
            )
    _write_atomically(path, data)
    return metadata


def read_metadata(path: str | Path) -> ModelMetadata:
    """The checked metadata of a model file, without loading its module (nothing of it runs)."""
    return ModelMetadata.from_json(_metadata_text(Path(path)), str(path))


def _metadata_text(path: Path) -> str:
    """The text of a model file's metadata.json (UTF-8, as the LAMMPS plugin reads it)."""
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; export one with `ekd export` (ekd.export.save_model)")
    try:
        with zipfile.ZipFile(path) as z:
            entries = [n for n in z.namelist() if n.endswith("/extra/" + METADATA_FILE)]
            if not entries:
                raise ModelFileError(
                    f"{path}: no {METADATA_FILE} in the archive: not an ekd model; export it with ekd.export.save_model"
                )
            text = z.read(entries[0])
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ModelFileError(
            f"{path}: not a readable TorchScript archive (truncated or corrupt: {e}); copy it again or re-export "
            "it (ekd export)"
        ) from e
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{path}: metadata.json is not UTF-8 text ({e}); re-export the model") from e


def load_model(path: str | Path, device: str = "cpu", trust_code: bool = False):
    """Load a deployed model: returns ``(module, metadata)`` with the module in eval mode on
    ``device``. Raises :class:`ModelFileError` (or FileNotFoundError) naming what is wrong.

    Nothing of the file runs before it passes the trust check (:func:`check_archive`);
    ``trust_code=True`` skips that check for a file the caller trusts (e.g. an ekd-model-1 file).
    The metadata's binding to the weights (``metadata_json``) is checked either way."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; export one with `ekd export` (ekd.export.save_model)")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path}: not a TorchScript archive (truncated, corrupt, or not written by ekd.export.save_model); "
            "copy it again or re-export it (ekd export)"
        )
    text = _metadata_text(path)
    meta = ModelMetadata.from_json(text, str(path))
    try:
        check_archive(path, meta.kind, trust_code=trust_code)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ModelFileError(
            f"{path}: not a readable TorchScript archive (truncated or corrupt: {e}); copy it again or re-export it"
        ) from e
    if meta.ops_library is not None:
        from . import _ops  # noqa: F401  (registers torch.ops.ekd before TorchScript resolves calls)
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as e:
        raise ModelFileError(
            f"{path}: TorchScript cannot load it ({str(e).splitlines()[0]}); the file is truncated or corrupt: "
            "copy it again or re-export it (ekd export)"
        ) from e
    check_binding(module, meta, path, text)
    _check_module_dtype(module, meta, str(path))
    module.eval()
    return module, meta


def check_binding(module, meta: ModelMetadata, path: str | Path, text: str | None = None) -> None:
    """Refuse a module whose ``metadata_json`` differs from the file's metadata.json ``text``
    (default: ``meta`` as save_model writes it): an edited metadata.json, e.g. a changed cutoff,
    must not run with the weights it was not exported with."""
    if meta.format == FORMAT_1:
        return  # that format has no binding
    if not hasattr(module, "metadata_json"):
        if meta.kind in KINDS:
            raise ModelFileError(f"{path}: a {meta.kind} model without metadata_json; re-export it (ekd export)")
        return
    if str(module.metadata_json) != (meta.to_json() if text is None else text):
        raise ModelFileError(
            f"{path}: metadata.json was edited or does not belong to these weights (it differs from the copy "
            "stored with the weights); re-export the model (ekd export)"
        )
    if meta.kind in KINDS:
        has = (getattr(module, "cutoff", None), getattr(module, "n_interactions", None))
        if has != (meta.cutoff, meta.n_interactions):
            raise ModelFileError(
                f"{path}: metadata.json's cutoff {meta.cutoff} and n_interactions {meta.n_interactions} are not the "
                f"model's {has}; re-export the model (ekd export)"
            )


# ---------------------------------------------------------------------------------------------
# canonical code


def _example_modules() -> dict[str, Any]:
    """One small module of each kind (their code is the same for every model of the kind)."""
    from .scripted import ScriptedToy, example_hipnn

    out = {kind: example_hipnn(envsum) for kind, envsum in (("hipnn", "ekd"), ("hipnn-torch", "torch"))}
    out["toy"] = ScriptedToy([1, 6], 3.0, 1, 4, 3)
    return out


def generated_code() -> dict[str, dict[str, bytes]]:
    """{kind: {code entry: bytes}} as this ekd's classes compile now (run in a fresh process:
    a class loaded from a file before it is scripted here gets a renamed copy)."""
    out = {}
    for kind, module in _example_modules().items():
        with zipfile.ZipFile(io.BytesIO(_archive_bytes(_script(module), "{}"))) as z:
            entries = _archive_entries(z.namelist(), kind)
            out[kind] = {n: z.read(entries[n]) for n in sorted(entries) if n.startswith("code/")}
    return out


def _script(module):
    import torch

    with _quiet_jit():
        return torch.jit.script(module)


def regenerate(directory: Path = CODE_DIR) -> None:
    """Write :func:`generated_code` to ``directory/<kind>/`` (replacing what is there)."""
    import shutil

    for kind, code in generated_code().items():
        root = directory / kind
        if root.exists():
            shutil.rmtree(root)
        for name, data in code.items():
            target = root / (name.removeprefix("code/") + CODE_SUFFIX)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python -m ekd.model_file --regenerate   (rewrites ekd/model_code/ from ekd.scripted)")
    regenerate()
    print(f"wrote the canonical model code of {list(KINDS)} to {CODE_DIR}")
