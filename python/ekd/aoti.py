"""Deployed models as AOTInductor packages (``ekd export --format aoti``, format ``ekd-aoti-1``).

TorchScript (:mod:`ekd.model_file`, format ``ekd-model-2``) stays ekd's default deployment
format; this is the second one, for the torch releases after TorchScript. A ``.pt2`` package
holds one compiled function, the energy *and its gradient*::

    run(species [N] int64, pair_first [P] int64, pair_second [P] int64, r_ij [P, 3] dtype,
        atom_weights [N] dtype) -> (energies [N] kcal/mol, g [P, 3] = d(sum_i w_i e_i)/d r_ij)

with the pair-list conventions of ``ekd-model-2`` (FULL list, ``r_ij = x_j - x_i`` with images,
Angstrom; pairs at or beyond the cutoff contribute nothing). The weights pick the atoms whose
energies count (1 for every atom in ASE, 1 for owned and 0 for ghost atoms in LAMMPS); forces and
virial follow from ``g`` as for TorchScript files. How it is made: the model (the same class as
the TorchScript export, :mod:`ekd.scripted`) is traced together with its autograd backward into
one ATen graph (``make_fx``, symbolic shapes; ekd's ops enter through their Meta kernels and C++
backward), ``torch.export``-ed with dynamic numbers of atoms and pairs (>= 2: callers pad with an
extra weight-0 atom and pairs beyond the cutoff), and compiled by AOTInductor for this machine's
CPU. The package's ``extra/metadata.json`` is the :class:`~ekd.model_file.ModelMetadata` (format
``ekd-aoti-1``); the same text is compiled into the shared library (AOTInductor metadata key
``ekd_metadata_json``) and a package whose two copies differ is refused.

Trust
-----
A package is a compiled shared library: loading it runs machine code, and no byte comparison
with ekd's own code is possible. ekd therefore runs a ``.pt2`` only when

* its entries are exactly what this exporter writes (checked on the zip before anything is
  loaded: the top folder's ``archive_format``, ``archive_version``, ``byteorder``, ``version``,
  ``.data/version``, ``.data/serialization_id``, ``extra/metadata.json`` and one compiled model
  under ``data/aotinductor/model/``: its library, C++ sources, metadata and the list of ekd ops
  it calls), and
* its SHA-256 is in the local registry of packages ekd compiled on this machine (appended by
  :func:`export_module`; ``$EKD_TRUSTED_PACKAGES`` or ``$XDG_DATA_HOME/ekd/trusted-packages``,
  default ``~/.local/share/ekd/trusted-packages``; one ``<sha256>  <path>`` line per package),
  or the user opts in for a file they trust (:data:`ekd.model_file.OPT_IN`).

A package copied from elsewhere is refused with both fixes named: re-export it here (which also
compiles it for this CPU: AOTInductor code is specific to the CPU's instruction set), or opt in.
The LAMMPS plugin applies the same rule (``lammps_plugin/ekd_model_aoti.cpp``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

from .model_file import (
    FORMAT,
    KINDS,
    METADATA_FILE,
    OPT_IN,
    ModelFileError,
    ModelMetadata,
    UntrustedModelError,
    _kind_of,
    _write_atomically,
    check_metadata,
)

#: the format name in a package's metadata.json
FORMAT_AOTI = "ekd-aoti-1"
SUFFIX = ".pt2"
#: AOTInductor metadata key holding the metadata text compiled into the library
SO_METADATA_KEY = "ekd_metadata_json"
#: environment variable naming the trust registry file
REGISTRY_ENV = "EKD_TRUSTED_PACKAGES"
#: smallest number of atoms and of pairs the compiled function takes (callers pad)
MIN_ROWS = 2

_PLAIN = {"archive_format", "archive_version", "byteorder", "version", ".data/version", ".data/serialization_id"}
_MODEL_ENTRY = re.compile(
    r"data/aotinductor/model/[a-z0-9]+\.(wrapper\.cpp|kernel\.cpp|wrapper\.json|wrapper_metadata\.json|kernel_metadata\.json"
    r"|wrapper\.so)"
)
_EXTRA = "extra/" + METADATA_FILE


# ---------------------------------------------------------------------------------------------
# the registry of packages compiled here


def registry_path() -> Path:
    """The trust registry file (see the module docstring)."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ekd" / "trusted-packages"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def register(path: str | Path) -> str:
    """Record ``path``'s SHA-256 in the registry (one appended line: concurrent exporters do not
    lose each other's lines). Returns the hash."""
    digest = sha256(path)
    reg = registry_path()
    reg.parent.mkdir(parents=True, exist_ok=True)
    line = f"{digest}  {Path(path).resolve()}\n".encode()
    fd = os.open(reg, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return digest


def is_registered(digest: str) -> bool:
    reg = registry_path()
    if not reg.is_file():
        return False
    with open(reg, encoding="utf-8", errors="replace") as f:
        return any(line.split()[:1] == [digest] for line in f)


# ---------------------------------------------------------------------------------------------
# reading packages


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a torch ``.pt2`` archive (by content: an ``archive_format`` entry
    reading ``pt2``), whatever its name."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.count("/") == 1 and name.endswith("/archive_format"):
                    return z.read(name).strip() == b"pt2"
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
    return False


def _entries(z: zipfile.ZipFile, source: str) -> dict[str, str]:
    names = z.namelist()
    if len(set(names)) != len(names):
        raise UntrustedModelError(f"{source}: the archive names an entry twice; not a package written by ekd")
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or any("/" not in n for n in names):
        raise UntrustedModelError(f"{source}: entries are not in one top folder; not a package written by ekd")
    return {n.split("/", 1)[1]: n for n in names}


def check_package(path: str | Path, trust_code: bool = False) -> str:
    """The trust check of a ``.pt2`` (module docstring); nothing of it is loaded. Returns the
    text of its metadata.json. Raises :class:`UntrustedModelError` / :class:`ModelFileError`."""
    source = str(path)
    try:
        with zipfile.ZipFile(path) as z:
            entries = _entries(z, source)
            if _EXTRA not in entries:
                raise ModelFileError(
                    f"{source}: an AOTInductor package without {_EXTRA}: not written by `ekd export --format aoti`; "
                    "export the model with ekd"
                )
            odd = [
                entries[n]
                for n in sorted(entries)
                if n not in _PLAIN and n != _EXTRA and not _MODEL_ENTRY.fullmatch(n) and not n.endswith("/")
            ]
            libraries = [n for n in entries if n.endswith(".wrapper.so")]
            if not trust_code and (odd or len(libraries) != 1):
                what = f"unexpected entry {odd[0]!r}" if odd else f"{len(libraries)} compiled libraries (ekd writes 1)"
                raise UntrustedModelError(
                    f"{source}: {what}; not a package as `ekd export --format aoti` writes it. "
                    f"If you trust this file (loading it runs its compiled code), load it with {OPT_IN}"
                )
            text = z.read(entries[_EXTRA])
    except (zipfile.BadZipFile, EOFError) as e:
        raise ModelFileError(f"{source}: not a readable .pt2 archive ({e}); copy it again or re-export it") from e
    if not trust_code:
        digest = sha256(path)
        if not is_registered(digest):
            raise UntrustedModelError(
                f"{source}: this AOTInductor package (sha256 {digest[:16]}...) was not compiled by ekd on this "
                f"machine (it is not in {registry_path()}), and loading it runs its compiled code. Re-export it "
                f"here (`ekd export MEMBER --format aoti -o {Path(source).name}`), or, if you trust the file, "
                f"load it with {OPT_IN}"
            )
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{source}: metadata.json is not UTF-8 text ({e}); re-export the model") from e


def parse_metadata(text: str, source: str) -> ModelMetadata:
    """metadata.json of a package -> checked :class:`ModelMetadata` (format ekd-aoti-1)."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ModelFileError(f"{source}: metadata.json is not valid JSON ({e}); re-export the model") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT_AOTI:
        got = d.get("format") if isinstance(d, dict) else None
        raise ModelFileError(
            f"{source}: an AOTInductor package whose metadata format is {got!r}, not {FORMAT_AOTI!r}; "
            "re-export the model with this ekd (ekd export --format aoti)"
        )
    # the fields and checks are those of ekd-model-2
    meta = ModelMetadata.from_json(json.dumps({**d, "format": FORMAT}), source)
    if meta.kind not in KINDS:
        raise ModelFileError(f"{source}: kind {meta.kind!r} in an AOTInductor package (ekd exports {list(KINDS)})")
    return replace(meta, format=FORMAT_AOTI)


def read_metadata(path: str | Path) -> ModelMetadata:
    """The checked metadata of a package without loading it (nothing of it runs)."""
    return parse_metadata(check_package(path, trust_code=True), str(path))


class AOTIModel:
    """A loaded package: :meth:`energy_and_gradient`. Attributes ``metadata``, ``path``."""

    def __init__(self, runner, metadata: ModelMetadata, path: Path):
        import torch

        self._runner = runner
        self.metadata = metadata
        self.path = path
        self.dtype = getattr(torch, metadata.dtype)
        self._pad_species = metadata.atomic_numbers[0]
        self._far = 2.0 * metadata.cutoff + 1.0

    def energy_and_gradient(self, species, pair_first, pair_second, r_ij, atom_weights=None):
        """Per-atom energies [N] and g = d(sum_i w_i e_i)/d r_ij [P, 3] (model dtype; kcal/mol,
        Angstrom). ``atom_weights`` [N]: default all ones. Any N >= 1, P >= 0 (padded here)."""
        import torch

        n, p = int(species.shape[0]), int(pair_first.shape[0])
        if n < 1:
            raise ValueError(f"{self.path}: at least one atom is needed")
        r = r_ij.detach().to(self.dtype).contiguous()
        w = torch.ones(n, dtype=self.dtype) if atom_weights is None else atom_weights.to(self.dtype)
        species = species.to(torch.long)
        first, second = pair_first.to(torch.long), pair_second.to(torch.long)
        if n < MIN_ROWS:
            # an extra atom of a known element with weight 0 (and no pairs): its energy is dropped
            extra = MIN_ROWS - n
            species = torch.cat([species, torch.full((extra,), self._pad_species, dtype=torch.long)])
            w = torch.cat([w, torch.zeros(extra, dtype=self.dtype)])
        if p < MIN_ROWS:
            # pairs beyond the cutoff contribute nothing (the format's rule)
            extra = MIN_ROWS - p
            zeros = torch.zeros(extra, dtype=torch.long)
            far = torch.zeros(extra, 3, dtype=self.dtype)
            far[:, 0] = self._far
            first, second, r = torch.cat([first, zeros]), torch.cat([second, zeros]), torch.cat([r, far])
        e, g = self._runner(species, first, second, r, w.contiguous())
        return e[:n], g[:p]


def load_package(path: str | Path, trust_code: bool = False) -> tuple[AOTIModel, ModelMetadata]:
    """Load a ``.pt2`` written by :func:`export_module`: ``(AOTIModel, metadata)``. Runs nothing
    of the file before the trust check; refuses a package whose metadata.json differs from the
    copy compiled into it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; export one with `ekd export --format aoti`")
    text = check_package(path, trust_code=trust_code)
    meta = parse_metadata(text, str(path))
    if meta.ops_library is not None:
        from . import _ops  # noqa: F401  (the compiled code calls torch.ops.ekd through the dispatcher)
    try:
        runner = torch._inductor.aoti_load_package(str(path))
    except Exception as e:  # torch raises RuntimeError / AssertionError / KeyError here
        raise ModelFileError(
            f"{path}: AOTInductor cannot load it ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "the file is truncated, corrupt or compiled for another torch or CPU: re-export it here "
            "(ekd export --format aoti)"
        ) from e
    compiled = runner.loader.get_metadata().get(SO_METADATA_KEY)
    if compiled != text:
        raise ModelFileError(
            f"{path}: metadata.json was edited or does not belong to this compiled model (it differs from the "
            "copy compiled into it); re-export the model (ekd export --format aoti)"
        )
    return AOTIModel(runner, meta, path), meta


# ---------------------------------------------------------------------------------------------
# writing packages


def _export_view(module):
    """The energy-and-gradient function of an (unscripted) ekd.scripted module as an nn.Module
    that torch.export can trace: the module's own stage code, minus its data-dependent input
    checks (callers validate; an unknown element gives NaN energies here, never a silent number)."""
    import torch

    from .scripted import ScriptedHipnn, ScriptedToy

    class EnergyAndGradient(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def _embed(self, species):
            m = self.m
            table, offsets = (m.z_index, m.e0) if isinstance(m, ScriptedToy) else (m.species_index, m.offsets)
            inside = (species >= 0) & (species < table.shape[0])
            idx = table[species.clamp(0, table.shape[0] - 1)]
            known = inside & (idx >= 0)
            idx = idx.clamp(min=0)
            e0 = torch.where(known, offsets[idx], torch.full_like(offsets[idx], float("nan")))
            if isinstance(m, ScriptedToy):
                return m.embedding[idx], e0
            one_hot = idx.unsqueeze(1) == torch.arange(m.n_species, device=idx.device).unsqueeze(0)
            return one_hot.to(offsets.dtype), e0

        def energies(self, species, first, second, r):
            m = self.m
            z, energy = self._embed(species)
            if isinstance(m, ScriptedToy):
                d, fc, basis = m._basis(r)
                for k in range(m.n_interactions):
                    z, e = m._interaction(k, z, first, second, d, fc, basis, -1)
                    energy = energy + e
            else:
                d = torch.linalg.vector_norm(r, dim=1)
                angular = m._angular(r, d)
                for k in range(m.n_interactions):
                    z, e = m._interaction(k, z, first, second, d, angular, -1)
                    energy = energy + e
            return energy

        def forward(self, species, first, second, r, weights):
            # ties the symbolic sizes of the inputs together (make_fx gives each its own symbol)
            torch._check(weights.shape[0] == species.shape[0])
            torch._check(first.shape[0] == r.shape[0])
            torch._check(second.shape[0] == r.shape[0])
            with torch.enable_grad():
                r = r.detach().requires_grad_(True)
                e = self.energies(species, first, second, r)
                (g,) = torch.autograd.grad((e * weights).sum(), r)
            return e.detach(), g

    if not isinstance(module, ScriptedHipnn | ScriptedToy) or isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            f"AOTInductor export takes an unscripted ekd.scripted model (ScriptedHipnn, ScriptedHipnnTorch, "
            f"ScriptedToy), got {type(module).__name__}"
        )
    return EnergyAndGradient(module).eval()


def _example(module, dtype, n_atoms: int, n_pairs: int, seed: int):
    """Inputs of n_atoms atoms of the model's elements, n_pairs random pairs with lengths inside
    the cutoff (numbers chosen by the caller to differ from every weight dimension)."""
    import torch

    from .scripted import ScriptedToy

    table = module.z_index if isinstance(module, ScriptedToy) else module.species_index
    numbers = torch.nonzero(table >= 0).flatten()
    g = torch.Generator().manual_seed(seed)
    species = numbers[torch.randint(0, len(numbers), (n_atoms,), generator=g)]
    first = torch.randint(0, n_atoms, (n_pairs,), generator=g)
    second = (first + torch.randint(1, n_atoms, (n_pairs,), generator=g)) % n_atoms
    u = torch.randn(n_pairs, 3, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    length = 0.8 + (float(module.cutoff) - 0.9) * torch.rand(n_pairs, 1, generator=g, dtype=torch.float64)
    return species, first, second, (u * length).to(dtype), torch.ones(n_atoms, dtype=dtype)


@contextlib.contextmanager
def _quiet_compile():
    """torch 2.13's export and inductor warn about their own internals (FutureWarning: pytree
    LeafSpec, torch._prims_common.check); nothing a user of ekd can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


@contextlib.contextmanager
def _no_duck_shapes():
    # make_fx's symbolic tracing otherwise gives equal example sizes one symbol, and would fold
    # e.g. the number of atoms into a weight dimension of the same size
    import torch.fx.experimental._config as fx_config

    old = fx_config.use_duck_shape
    fx_config.use_duck_shape = False
    try:
        yield
    finally:
        fx_config.use_duck_shape = old


def export_module(module, path: str | Path, metadata: ModelMetadata | dict) -> ModelMetadata:
    """Write ``module`` (an unscripted :mod:`ekd.scripted` model: ScriptedHipnn,
    ScriptedHipnnTorch or ScriptedToy) as an AOTInductor package to ``path`` (format
    ``ekd-aoti-1``), check it against the module on inputs of another size, and register its
    SHA-256 as compiled here. Takes minutes (inductor compiles C++). Returns the metadata."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    path = Path(path)
    if isinstance(metadata, dict):
        metadata = ModelMetadata(**{**metadata, "species": tuple(metadata["species"])})
    view = _export_view(module)
    dtype = module.offsets.dtype if hasattr(module, "offsets") else module.e0.dtype
    meta = replace(
        metadata,
        format=FORMAT,
        kind=_kind_of(module),
        torch_version=torch.__version__,
        cutoff=float(metadata.cutoff),
        dtype=str(dtype).removeprefix("torch."),
    )
    from . import __version__

    meta = replace(meta, ekd_version=__version__)
    check_metadata(meta, str(path))
    if int(module.n_interactions) != meta.n_interactions or float(module.cutoff) != meta.cutoff:
        raise ModelFileError(
            f"{path}: metadata says cutoff {meta.cutoff}, n_interactions {meta.n_interactions} but the module has "
            f"{float(module.cutoff)}, {int(module.n_interactions)}; fix the metadata"
        )
    meta = replace(meta, format=FORMAT_AOTI)
    text = meta.to_json()
    if meta.ops_library is not None:
        from . import _ops  # noqa: F401

    # sizes unlike any weight dimension and unlike each other (see _no_duck_shapes)
    example = _example(module, dtype, 37, 211, seed=0)
    with _quiet_compile():
        with _no_duck_shapes(), torch.no_grad():
            graph = make_fx(view, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
        atoms = torch.export.Dim("n_atoms", min=MIN_ROWS)
        pairs = torch.export.Dim("n_pairs", min=MIN_ROWS)
        program = torch.export.export(
            graph, example, dynamic_shapes=({0: atoms}, {0: pairs}, {0: pairs}, {0: pairs}, {0: atoms})
        )
        buf = io.BytesIO()
        try:
            torch._inductor.aoti_compile_and_package(
                program, package_path=buf, inductor_configs={"aot_inductor.metadata": {SO_METADATA_KEY: text}}
            )
        except Exception as e:  # inductor raises its own error classes (compiler missing, codegen)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(
                f"{path}: AOTInductor could not compile the model ({type(e).__name__}: {first}); it needs a "
                "working C++ compiler (g++, or $CXX) and the torch headers; nothing was written. The TorchScript "
                "export (ekd export, the default format) needs neither"
            ) from e
    data = _with_metadata(buf.getvalue(), text)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.check{SUFFIX}")
    try:
        tmp.write_bytes(data)
        _check_compiled(view, tmp, module, dtype, path)
        _write_atomically(path, data)
    finally:
        tmp.unlink(missing_ok=True)
    register(path)
    return meta


def _with_metadata(package: bytes, text: str) -> bytes:
    """The package with ``extra/metadata.json`` added (written through torch's archive writer,
    which keeps the entries' alignment)."""
    import torch

    reader = torch._C.PyTorchFileReader(io.BytesIO(package))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    own = {"version", ".data/version", ".data/serialization_id"}
    for name in reader.get_all_records():
        if name in own:
            continue
        record = reader.get_record(name)
        writer.write_record(name, record, len(record))
    payload = text.encode()
    writer.write_record(_EXTRA, payload, len(payload))
    writer.write_end_of_file()
    del writer
    return out.getvalue()


def _check_compiled(view, package: Path, module, dtype, path: Path) -> None:
    """Refuse to write a package whose numbers differ from the module's on inputs of a size it
    was not traced with (a shape the tracer wrongly fixed would show here)."""
    import torch

    runner = torch._inductor.aoti_load_package(str(package))
    inputs = _example(module, dtype, 23, 97, seed=1)
    want = view(*inputs)
    have = runner(*inputs)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for name, a, b in zip(("energies", "gradient"), have, want, strict=True):
        scale = float(b.abs().max()) + 1.0
        if a.shape != b.shape or float((a - b).abs().max()) > tol * scale:
            raise ModelFileError(
                f"{path}: the compiled package's {name} differ from the model's on a test input "
                f"(shape {tuple(a.shape)} vs {tuple(b.shape)}); not written. Please report this (torch "
                f"{torch.__version__})"
            )


def export_member(member_dir: str | Path, path: str | Path, dtype: str = "float32", envsum: str = "auto"):
    """``ekd export --format aoti``: a trained member -> an AOTInductor package (the model of
    :func:`ekd.export.export_member`, same metadata apart from the format). Returns the metadata."""
    import torch

    from .scripted import build_module, metadata

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
    module = build_module(Path(member_dir), dtype=dtypes[dtype], envsum=envsum)
    return export_module(module, path, metadata(Path(member_dir), module))
