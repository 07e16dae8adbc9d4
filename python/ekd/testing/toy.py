"""The toy model: a TEST model of kind "toy" (:class:`ekd.scripted.ScriptedToy`) with random
weights and no chemistry, but the deployed-model interface and the stage methods, so that model
files, the ASE calculator and the LAMMPS plugin (ghost depth, per-layer halo exchange) can be
tested without training anything. Does not import torch at import time.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..deploy.model_file import ATOMIC_NUMBERS, DTYPES, ModelMetadata, _quiet_jit


def toy_class():
    """The toy module class (:class:`ekd.scripted.ScriptedToy`), imported on first use (keeps
    torch out of this module's import). Its constructor: (atomic_numbers, cutoff, n_interactions,
    width, n_basis, dtype=torch.float64)."""
    from ..scripted import ScriptedToy

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
    Returns ``(scripted module, ModelMetadata)`` ready for :func:`ekd.deploy.model_file.save_model`.
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
        module = toy_class()(numbers, cutoff, n_interactions, width, n_basis, getattr(torch, dtype))
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
