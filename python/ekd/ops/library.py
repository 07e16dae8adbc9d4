"""The one place Python gets ekd's native code from.

* the op library (``libekd_ops.so``): tensor ops registered with torch's dispatcher under
  ``torch.ops.ekd``; the same library serves TorchScript models and the LAMMPS plugin;
* ``ekd._C``: a small pybind11 module for what is not a tensor op.

Both are checked against the installed torch before anything is loaded: the op library is tied
to the torch release it was compiled with, and a mismatch would otherwise surface as an
undefined-symbol error that names neither version.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import torch

_REBUILD = "reinstall ekd against the installed torch (pip install --no-build-isolation --force-reinstall .)"


def _native_dir() -> Path:
    spec = importlib.util.find_spec("ekd._C")
    if spec is None or spec.origin is None:
        raise ImportError(
            "ekd's native extension (ekd._C) is not installed; build the package with "
            "`pip install .` (needs g++, cmake and a torch from 2.11 to 2.13)"
        )
    return Path(spec.origin).parent


def _load():
    where = _native_dir()
    info_file = where / "build_info.json"
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError) as e:
        raise ImportError(f"ekd: cannot read {info_file} ({e}); the native build is incomplete: {_REBUILD}") from e
    if info["torch_version"] != torch.__version__:
        raise ImportError(
            f"ekd's op library was built with torch {info['torch_version']} but torch {torch.__version__} "
            f"is installed; the C++ ABI differs between releases: {_REBUILD}"
        )
    candidates = sorted(where.glob("libekd_ops*.so")) + sorted(where.glob("libekd_ops*.dylib"))
    if not candidates:
        raise ImportError(f"ekd: no libekd_ops library next to {where / 'build_info.json'}: {_REBUILD}")
    library = candidates[0]
    torch.ops.load_library(str(library))
    module = importlib.import_module("ekd._C")
    return library, info, module


LIBRARY_PATH, BUILD_INFO, _C = _load()
ops = torch.ops.ekd


def check_cell(cell) -> None:
    """A cell with a NaN or infinite entry is named here: past this point it reads as a zero or
    degenerate lattice vector, or gives NaN pair vectors (issue 24)."""
    finite = torch.isfinite(torch.as_tensor(cell)).reshape(-1, 3, 3).all(dim=-1)
    if not bool(finite.all()):
        b, k = (int(i) for i in (~finite).nonzero()[0])
        which = f"structure {b}: " if finite.shape[0] > 1 else ""
        raise ValueError(f"cell: {which}lattice vector {k} has a NaN or infinite component; a cell must be finite")


def neighbor_list(
    positions: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | bool | None = None,
    batch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs (i, j) with |r_ij| < cutoff, both directions.

    positions: [N, 3] Angstrom. Single structure: ``cell`` [3, 3] (rows are lattice vectors) or
    None, ``pbc`` a bool or [3] bools (default: periodic where a cell is given). Several
    structures: ``batch`` [N] non-decreasing structure index, ``cell`` [B, 3, 3], ``pbc`` [B, 3].

    Returns ``pair_first`` [P], ``pair_second`` [P] (int64) and ``shifts`` [P, 3] (int64) with
    ``r_ij = positions[j] - positions[i] + shifts @ cell``.
    """
    dev, dt = positions.device, positions.dtype
    if batch is None:
        batch = torch.zeros(positions.shape[0], dtype=torch.long, device=dev)
        if cell is None:
            cell = torch.zeros(3, 3, dtype=dt, device=dev)
            pbc = False if pbc is None else pbc
        elif pbc is None:
            pbc = True
        cell = torch.as_tensor(cell, dtype=dt, device=dev).reshape(1, 3, 3)
        pbc = torch.as_tensor(pbc, dtype=torch.bool, device=dev).expand(3).reshape(1, 3)
    else:
        if cell is None or pbc is None:
            raise ValueError("neighbor_list: with `batch`, give `cell` [B, 3, 3] and `pbc` [B, 3] as well")
        cell = torch.as_tensor(cell, dtype=dt, device=dev)
        pbc = torch.as_tensor(pbc, dtype=torch.bool, device=dev)
    check_cell(cell)
    return ops.neighbor_list(positions, batch, cell, pbc, float(cutoff))


def pair_vectors(
    positions: torch.Tensor, first: torch.Tensor, second: torch.Tensor, shifts: torch.Tensor, cell: torch.Tensor
) -> torch.Tensor:
    """r_ij = x_j - x_i + shift @ cell for one structure ([P, 3], differentiable in positions/cell)."""
    return positions[second] - positions[first] + shifts.to(positions.dtype) @ cell.to(positions.dtype)


def min_pair_distance(positions, cell=None, pbc=False, cutoff: float = 1.0) -> tuple[float, int, int]:
    """Smallest interatomic distance below ``cutoff`` in one structure: (distance, i, j).

    (inf, -1, -1) when no pair is closer than ``cutoff``. O(N); numpy or torch input, Angstrom.
    """
    import numpy as np

    positions = np.asarray(positions, dtype=np.float64)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    check_cell(cell)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    return _C.min_pair_distance(positions, cell, np.ascontiguousarray(pbc), float(cutoff))
