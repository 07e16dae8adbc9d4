"""The ekd model file: one self-describing TorchScript archive per deployed model, run by the ASE
calculator (:mod:`ekd.deploy.calculator`) and by LAMMPS (``pair_style ekd``, ``lammps_plugin/``) alike.

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
  pair_second, r_ij, n_out=-1) -> (z [M, F_{k+1}], e_k [M])`` (row i depends only on z[i] and on
  the pairs with first atom i; M = n_out rows, all for -1), with ``forward = e0 + sum_k e_k``;
  ``geometry(r_ij) -> list[Tensor]`` (what every block reads of the pairs) and ``interaction_geo(k,
  z, pair_first, pair_second, geometry, n_out=-1)``, the same block on that shared geometry (files
  of the code before it, ``model_code/<kind>@before-geometry``, lack these two); attributes
  ``n_interactions``, ``cutoff``, ``feature_widths`` (F_0 .. F_n) and ``metadata_json``.

Forces and the virial are not part of the model: they are the gradient of the summed energies of
the owned atoms with respect to ``r_ij`` (``g = dE/dr_ij``), applied as ``f_i += g, f_j -= g``,
and ``W = -sum_p r_ij (x) g`` (LAMMPS's virial; ASE's stress is ``-W / volume``).

Model files and trust
---------------------
Loading TorchScript runs the code stored in the archive (e.g. a class's ``__setstate__``), so a
downloaded model file could do anything. ekd therefore opens a model only when, before TorchScript
sees it, the archive checks out (:func:`check_archive`; the LAMMPS plugin does the same in C++):

* the file is read once, and those bytes are what is checked and what TorchScript loads; they
  obey the strict archive rule (:mod:`ekd.deploy.archive`: one central directory where the end
  record says, entries tiling the file, local headers agreeing with it, sizes bounded by each
  entry's role before anything is inflated), opt-in or not;
* its entries are within ``data.pkl``, ``constants.pkl``, ``data/<digits>``, ``extra/metadata.json``,
  ``code/...`` and TorchScript's bookkeeping entries (the schema's ``plain_entries``,
  :mod:`ekd.deploy.model_metadata`);
* its ``code/`` entries are byte-identical to the code this ekd writes for the model's ``kind``
  (``hipnn``, ``hipnn-torch``, ``toy``): weights and hyper-parameters live in data.pkl, so every
  model of a kind has the same code. The canonical code is committed in ``ekd/deploy/model_code/<kind>/``
  (regenerate with ``python -m ekd.deploy.model_file --regenerate`` after changing :mod:`ekd.scripted`;
  a test checks it);
* no pickle entry names ``torch.classes`` (custom C++ classes run their own ``__setstate__``).

A file that fails (an ``ekd-model-1`` file, whose code varies per model; a model of kind
``custom``; a file from another ekd) is refused with an error naming it, unless the caller opts
in for a file it trusts: ``trust_code=True`` here and in :class:`ekd.deploy.calculator.EKDCalculator`,
``--trust-code`` on the command line, ``pair_style ekd ... trust_code yes`` in LAMMPS.

The metadata is bound to the weights: the module's ``metadata_json`` attribute (in data.pkl) holds
the text of ``extra/metadata.json``; a file where the two differ is refused (the metadata was
edited, or moved onto other weights), opt-in or not.

The metadata schema (fields, kinds, units, element table), shared with the plugin through one
data file, is :mod:`ekd.deploy.model_metadata`; its names are re-exported here. This module does not
import torch at import time.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..store import atomic_write
from .archive import Archive, read_archive
from .model_metadata import (  # noqa: F401  (the schema's names are part of this module's API)
    ATOMIC_NUMBERS,
    CUSTOM,
    DTYPES,
    ELEMENTS,
    ENERGY_UNIT,
    FORMAT,
    FORMAT_1,
    FORMATS,
    KINDS,
    LENGTH_UNIT,
    METADATA_FILE,
    OPS_LIBRARY,
    PLAIN_ENTRIES,
    ModelFileError,
    ModelMetadata,
    UntrustedModelError,
    check_metadata,
)

#: where the canonical code of each kind lives (package data, not importable)
CODE_DIR = Path(__file__).parent / "model_code"
CODE_SUFFIX = ".txt"
#: the opt-in, as each interface spells it (for messages)
OPT_IN = "trust_code=True (Python), --trust-code (ekd CLI), `pair_style ekd ... trust_code yes` (LAMMPS)"

# entries (below the archive's top folder) a model file may hold besides code/...
_DATA_ENTRY = re.compile(r"data/[0-9]+")
_EXTRA_ENTRY = "extra/" + METADATA_FILE


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
    top folder: bytes}, read from ``ekd/deploy/model_code/<kind>/``."""
    root = CODE_DIR / kind
    if kind not in KINDS or not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.rglob("*" + CODE_SUFFIX)):
        rel = p.relative_to(root).as_posix()[: -len(CODE_SUFFIX)]
        out["code/" + rel] = p.read_bytes()
    return out


def earlier_code(kind: str) -> list[dict[str, bytes]]:
    """The code this ekd's earlier releases wrote for ``kind`` and that it still accepts, as
    :func:`canonical_code`: ``ekd/deploy/model_code/<kind>@<tag>/`` (kept when the classes change, e.g.
    ``@before-geometry``, whose files run without the newer stage methods, ``hipnn@before-radial``,
    whose files compute the sensitivities with ATen ops instead of ``ekd::radial_sensitivity``, and
    ``@before-sigma``, whose HIPNN classes have no uncertainty head: no ``has_sigma``,
    ``atom_sigma``, ``energy_and_sigma``)."""
    if kind not in KINDS:
        return []
    out = []
    for root in sorted(CODE_DIR.glob(kind + "@*")):
        files = sorted(root.rglob("*" + CODE_SUFFIX))
        out.append({"code/" + p.relative_to(root).as_posix()[: -len(CODE_SUFFIX)]: p.read_bytes() for p in files})
    return out


def check_archive(path: str | Path | Archive, kind: str, trust_code: bool = False) -> None:
    """The trust check (see the module docstring) of a model file whose metadata names ``kind``:
    a path (read and checked against the strict archive rule here) or an :class:`Archive` already
    read. Raises :class:`UntrustedModelError` naming the file, what differs and the opt-in; with
    ``trust_code=True`` only the archive rule and the entries' top folder are checked."""
    z = path if isinstance(path, Archive) else read_archive(path)
    source = z.source
    entries = _archive_entries(z.names(), source)
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
        if name in PLAIN_ENTRIES or name == _EXTRA_ENTRY or _DATA_ENTRY.fullmatch(name) or name.startswith("code/"):
            continue
        raise UntrustedModelError(
            f"{source}: unexpected archive entry {entries[name]!r} (ekd's exporter writes only weights, metadata "
            f"and the code of its model classes). {opt_in}"
        )
    want = canonical_code(kind)
    if not want:
        raise UntrustedModelError(
            f"{source}: this ekd has no canonical code for model kind {kind!r} "
            f"(ekd/deploy/model_code is missing from "
            f"the installation?). {opt_in}"
        )
    have = {n for n in entries if n.startswith("code/")}
    # today's code, then earlier ekds' (trusted like today's if one matches byte for byte); several
    # may name the same entries (a change inside one code file), so the file's bytes pick among
    # those, and a file matching none is compared with the first (today's if its entries match)
    same = [code for code in (want, *earlier_code(kind)) if set(code) == have]
    if same:
        want = next((c for c in same if all(z.read(entries[n]) == c[n] for n in c)), same[0])
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
    written = Archive(str(path), data)  # never a file the archive rule would refuse
    if metadata.kind in KINDS:
        if any(b"torch.classes" in written.read(n) for n in written.names() if n.endswith(".pkl")):
            raise ModelFileError(
                f"{path}: the text 'torch.classes' (in the metadata's role or description?) would make readers "
                "refuse the file; remove it"
            )
        # refuse to write a file this ekd would refuse to load (e.g. a class TorchScript renamed
        # because another version of it was loaded into this process first)
        entries = _archive_entries(written.names(), str(path))
        have = {n: written.read(entries[n]) for n in entries if n.startswith("code/")}
        if have != canonical_code(metadata.kind):
            raise ModelFileError(
                f"{path}: the scripted {metadata.kind} module's code differs from "
                f"ekd/deploy/model_code/{metadata.kind} "
                "(ekd.scripted changed: regenerate with `python -m ekd.deploy.model_file --regenerate`; "
                "or this process "
                "loaded another version of the class before scripting: export in a fresh process)"
            )
    atomic_write(path, data)
    return metadata


def read_metadata(path: str | Path) -> ModelMetadata:
    """The checked metadata of a model file, without loading its module (nothing of it runs)."""
    return ModelMetadata.from_json(_metadata_text(_read(Path(path))), str(path))


def _read(path: Path) -> Archive:
    """The model file's bytes, read once and checked against the strict archive rule."""
    if not path.is_file():
        raise FileNotFoundError(
            f"model file {path} not found; export one with `ekd export` (ekd.deploy.model_file.save_model)"
        )
    return read_archive(path)


def _metadata_text(archive: Archive) -> str:
    """The text of a model file's metadata.json (UTF-8, as the LAMMPS plugin reads it)."""
    entries = [n for n in archive.names() if n.endswith("/extra/" + METADATA_FILE)]
    if not entries:
        raise ModelFileError(
            f"{archive.source}: no {METADATA_FILE} in the archive: not an ekd model; export it with `ekd export` "
            "(or ekd.deploy.model_file.save_model)"
        )
    try:
        return archive.read(entries[0]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{archive.source}: metadata.json is not UTF-8 text ({e}); re-export the model") from e


def load_model(path: str | Path, device: str = "cpu", trust_code: bool = False):
    """Load a deployed model: returns ``(module, metadata)`` with the module in eval mode on
    ``device``. Raises :class:`ModelFileError` (or FileNotFoundError) naming what is wrong.

    The file is read once; those bytes pass the strict archive rule (:mod:`ekd.deploy.archive`)
    and the trust check (:func:`check_archive`) before TorchScript loads them, the same bytes (a
    file replaced after the check is not what runs). ``trust_code=True`` skips the trust check for
    a file the caller trusts (e.g. an ekd-model-1 file), not the archive rule. The metadata's
    binding to the weights (``metadata_json``) is checked either way."""
    import torch

    path = Path(path)
    archive = _read(path)
    text = _metadata_text(archive)
    meta = ModelMetadata.from_json(text, str(path))
    check_archive(archive, meta.kind, trust_code=trust_code)
    if meta.ops_library is not None:
        from ..ops import library as _ops  # noqa: F401  (registers torch.ops.ekd before TorchScript resolves calls)
    try:
        with _quiet_jit():
            module = torch.jit.load(io.BytesIO(archive.data), map_location=device)
    except Exception as e:  # RuntimeError mostly; torch raises others for some damaged files
        # torch's message may start with a blank line ("Unknown type name 'os.system'" came second)
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ModelFileError(
            f"{path}: refused: TorchScript cannot load it ({reason}); the file is truncated or corrupt, or not "
            "written by ekd: copy it again or re-export it (ekd export)"
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
    from ..scripted import ScriptedToy, example_hipnn

    out = {kind: example_hipnn(envsum) for kind, envsum in (("hipnn", "ekd"), ("hipnn-torch", "torch"))}
    out["toy"] = ScriptedToy([1, 6], 3.0, 1, 4, 3)
    return out


def generated_code() -> dict[str, dict[str, bytes]]:
    """{kind: {code entry: bytes}} as this ekd's classes compile now (run in a fresh process:
    a class loaded from a file before it is scripted here gets a renamed copy)."""
    out = {}
    for kind, module in _example_modules().items():
        z = Archive(kind, _archive_bytes(_script(module), "{}"))
        entries = _archive_entries(z.names(), kind)
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
        sys.exit(
            "usage: python -m ekd.deploy.model_file --regenerate   (rewrites ekd/deploy/model_code/ from ekd.scripted)"
        )
    regenerate()
    print(f"wrote the canonical model code of {list(KINDS)} to {CODE_DIR}")
