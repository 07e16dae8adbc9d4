"""What one group of the generator yields: :class:`MoleculeRecord`, the contract between the
chemistry (:mod:`.molecule`, :mod:`.cluster`, :mod:`.levels`), the part files (:mod:`.parts`) and
the assembled HDF5 files (:mod:`.assemble`)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MoleculeRecord:
    """One molecule's (or cluster's) configurations and labels.

    task: the :class:`~.selection.MoleculeTask` as a plain dict (as stored in its part file).
    numbers: (n,) int64 atomic numbers; coordinates: (n_conf, n, 3) Angstrom (n_conf may be 0:
    the molecule was skipped, ``stats["skipped"]`` says why). properties: file key -> array in
    Hartree and Hartree/Angstrom (NaN where a calculation failed). n_relaxed: the first n_relaxed
    configurations are the GFN2-xTB minima, lowest first. levels: the levels whose labels
    ``properties`` holds. stats: counters and timings of the computation (JSON-serialisable).
    """

    task: dict[str, Any]
    numbers: np.ndarray
    coordinates: np.ndarray
    properties: dict[str, np.ndarray]
    n_relaxed: int
    levels: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_conf(self) -> int:
        return int(self.coordinates.shape[0])


def finish(task, numbers, coordinates, properties, n_relaxed, stats, t0: float, levels) -> MoleculeRecord:
    """The record of a computation that started at ``time.perf_counter() == t0`` (its wall time
    goes into ``stats["seconds"]``); ``numbers`` None for a molecule that could not be embedded."""
    return MoleculeRecord(
        task=dataclasses.asdict(task),
        numbers=np.zeros(0, dtype=np.int64) if numbers is None else np.asarray(numbers, dtype=np.int64),
        coordinates=coordinates,
        properties=properties,
        n_relaxed=int(n_relaxed),
        levels=list(levels),
        stats={**stats, "seconds": round(time.perf_counter() - t0, 3)},
    )
