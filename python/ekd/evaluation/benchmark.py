"""A benchmark file for ``ekd score``: an ANI-layout HDF5 file, or any file ASE reads (extxyz, ASE
database: :mod:`ekd.data.ase_files`), with its own keys and units, read into internal units with
the marks of the configurations that may form conformer pairs.

* The file is read by ekd's one loader (:func:`ekd.data.load_dataset`): its units are what the
  caller declares (``--energy-unit`` / ``--length-unit``), checked against the file's
  ``energy_unit`` / ``length_unit`` attributes (a contradiction is an error), else the attribute's,
  else the ANI releases' Hartree / Angstrom. Keys: ``energy_key`` or the file's only ``*.energy``
  key; ``forces_key`` or, when the file has it, the forces of the energy's level (``<level>.forces``).
  Configurations without a reference energy are left out, as in a run's evaluation.
* When the file has a per-configuration ``kind`` dataset (strings; in an ASE file, ``info["kind"]``
  of each frame), only configurations with ``kind == "conformer"`` form ΔE pairs
  (:mod:`ekd.evaluation.score` uses every configuration for the energy and force errors).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..data import DataFileError, Dataset, Units, load_dataset, resolve_units
from ..data.ani import iter_groups, open_file, read_dataset
from ..data.ase_files import any_property_keys, is_hdf5
from ..data.ase_files import kinds as ase_kinds

#: the per-configuration dataset that marks conformers (only these form ΔE pairs when present)
KIND_KEY = "kind"
CONFORMER = "conformer"


class ScoreError(ValueError):
    """A scoring request that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class TestSet:
    """A benchmark file in internal units.

    data: the configurations with a known reference energy (``energy``, ``reference_forces`` if
        a forces key is used). conformer: (n,) bool, the configurations that may form ΔE pairs.
    """

    path: Path
    data: Dataset
    keys: dict[str, str]
    units: Units
    conformer: np.ndarray
    has_kind: bool
    n_without_energy: int = 0
    skipped: tuple[dict, ...] = ()

    def subset(self, keep: np.ndarray, skipped: Sequence[dict]) -> TestSet:
        return TestSet(
            self.path,
            self.data.subset(keep),
            self.keys,
            self.units,
            self.conformer[keep],
            self.has_kind,
            self.n_without_energy,
            tuple(skipped),
        )


def choose_keys(
    path: str | os.PathLike, energy_key: str | None = None, forces_key: str | None = None
) -> dict[str, str]:
    """{"energy": key[, "reference_forces": key]} of data file ``path`` (see the module docstring)."""
    path = Path(path)
    if energy_key and forces_key:
        return {"energy": energy_key, "reference_forces": forces_key}
    present = any_property_keys(path)
    if not energy_key:
        energies = [k for k in present if k.endswith(".energy") or k == "energy"]
        if len(energies) != 1:
            found = f"it has {energies}" if energies else f"it has no '*.energy' key (keys: {present})"
            raise ScoreError(f"{path}: which energy to score against? {found}; choose one with --energy-key")
        energy_key = energies[0]
    keys = {"energy": energy_key}
    if forces_key:
        keys["reference_forces"] = forces_key
    else:
        level = energy_key[: -len("energy")] if energy_key.endswith("energy") else None
        if level is not None and f"{level}forces" in present:
            keys["reference_forces"] = f"{level}forces"
    return keys


def _conformer_marks(path: Path, data: Dataset) -> tuple[np.ndarray, bool]:
    """(n,) True where a configuration may form ΔE pairs, and whether the file has ``kind``.

    Called on the dataset as loaded (before any subset): its rows are the file's groups in order,
    each group's configurations in file order."""
    kinds = _hdf5_kinds(path) if is_hdf5(path) else ase_kinds(path)
    marked = [name for name, k in kinds.items() if k is not None]
    if not marked:
        return np.ones(len(data), dtype=bool), False
    unmarked = [name for name in data.molecule_names if kinds.get(name) is None]
    if unmarked:
        raise DataFileError(
            f"{path}: groups {marked[:3]} mark their configurations with a {KIND_KEY!r} dataset but "
            f"{unmarked[:3]}{' and more' if len(unmarked) > 3 else ''} do not; give every group a {KIND_KEY!r} "
            f"dataset ('{CONFORMER}' for the configurations that form ΔE pairs) or none"
        )
    rows = np.concatenate([kinds[name] for name in data.molecule_names])
    if rows.shape != (len(data),):
        raise DataFileError(f"{path}: {KIND_KEY!r} datasets hold {rows.size} entries for {len(data)} configurations")
    return rows == CONFORMER, True


def _hdf5_kinds(path: Path) -> dict[str, np.ndarray | None]:
    """{group: (n_conf,) text of its ``kind`` dataset, or None}, in file order."""
    kinds: dict[str, np.ndarray | None] = {}
    with open_file(path) as h5:
        for name, g in iter_groups(h5, str(path)):
            item = g.get(KIND_KEY)
            if item is None:
                kinds[name] = None
                continue
            raw = read_dataset(item, str(path), f"{name}/{KIND_KEY}") if isinstance(item, h5py.Dataset) else None
            n_conf = g["coordinates"].shape[0] if g["coordinates"].ndim == 3 else 1
            if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "SUO" or raw.shape != (n_conf,):
                raise DataFileError(
                    f"{path}: group {name!r}, key {KIND_KEY!r}: expected {n_conf} strings (one per configuration, "
                    f"e.g. 'conformer'), got {raw.dtype if isinstance(raw, np.ndarray) else type(raw).__name__} "
                    f"of shape {getattr(raw, 'shape', ())}"
                )
            kinds[name] = np.array([(s.decode() if isinstance(s, bytes) else str(s)).strip() for s in raw])
    return kinds


def load_test(
    path: str | os.PathLike,
    energy_key: str | None = None,
    forces_key: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
) -> TestSet:
    """Read a benchmark file (see the module docstring for keys and units)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--test {path}: no such file")
    keys = choose_keys(path, energy_key, forces_key)
    try:
        declared = Units(energy_unit, length_unit)
    except ValueError as e:
        raise ScoreError(f"{e} (--energy-unit / --length-unit)") from None
    options = ("--energy-unit", "--length-unit")
    # resolved here only to be reported; the loader checks the same declaration against the file
    units = resolve_units(path, declared, options)
    named = {"energy": "--energy-key" if energy_key else "", "reference_forces": "--forces-key" if forces_key else ""}
    data = load_dataset(path, keys, declared, declared_as=options, key_names=named)
    conformer, has_kind = _conformer_marks(path, data)
    known = data.mask("energy")
    if not known.any():
        raise DataFileError(f"{path}: no configuration has a reference energy under {keys['energy']!r} (all NaN)")
    return TestSet(path, data.subset(known), keys, units, conformer[known], has_kind, int((~known).sum()))


__all__ = ["CONFORMER", "KIND_KEY", "ScoreError", "TestSet", "choose_keys", "load_test"]
