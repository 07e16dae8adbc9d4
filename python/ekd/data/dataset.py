"""Configurations in ekd's internal units, flattened over molecules and padded over atoms.

Internal units: kcal/mol (energies), Angstrom (lengths), kcal/mol/Angstrom (forces).

Which file key plays which role ("energy", "reference_forces", "ensemble_forces", ...) comes
from the caller (the configuration), never from the file: ANI-1ccx's ``ccsd(t)_cbs.energy`` and
ekd's ``gfn2_xtb.energy`` are read by the same code. Values missing for a key (NaN in the file)
are masked for that key only: a configuration without coupled-cluster energy keeps its DFT
forces.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from ..units import energy_factor, length_factor
from .ani import DataFileError, MoleculeGroup, read_ani, read_file_attrs, write_ani


@dataclass(frozen=True)
class Units:
    """Units of a data file. Forces are in energy/length."""

    energy: str = "hartree"
    length: str = "angstrom"

    def energy_to_internal(self) -> float:
        return energy_factor(self.energy)

    def length_to_internal(self) -> float:
        return length_factor(self.length)

    def force_to_internal(self) -> float:
        return energy_factor(self.energy) / length_factor(self.length)


@dataclass(frozen=True)
class Dataset:
    """n configurations, padded to A atoms.

    species: (n, A) int64 atomic numbers, 0 in padding.
    coordinates: (n, A, 3) float64 Angstrom, 0 in padding.
    properties: name -> (n,) per-configuration values (kcal/mol) or (n, A, 3) per-atom vectors
        (kcal/mol/Angstrom); NaN where the file has no value for that configuration.
    molecule: (n,) int64 index into ``molecule_names`` (the file group: molecule identity).
    conformer: (n,) int64 index of the configuration within its group.
    """

    species: np.ndarray
    coordinates: np.ndarray
    properties: dict[str, np.ndarray]
    molecule: np.ndarray
    conformer: np.ndarray
    molecule_names: tuple[str, ...]
    source: str = ""
    molecule_attrs: tuple[dict, ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return int(self.species.shape[0])

    @property
    def n_atoms(self) -> np.ndarray:
        """(n,) number of real atoms per configuration."""
        return (self.species > 0).sum(axis=1)

    @property
    def elements(self) -> tuple[int, ...]:
        """Sorted atomic numbers present."""
        z = np.unique(self.species)
        return tuple(int(v) for v in z[z > 0])

    def mask(self, name: str) -> np.ndarray:
        """(n,) True where property ``name`` is known (finite) for the configuration."""
        arr = self._get(name)
        if arr.ndim == 1:
            return np.isfinite(arr)
        real = self.species > 0
        ok = np.isfinite(arr).all(axis=-1) | ~real
        return ok.all(axis=1)

    def _get(self, name: str) -> np.ndarray:
        try:
            return self.properties[name]
        except KeyError:
            raise KeyError(
                f"dataset {self.source or '(in memory)'} has no property {name!r}; it has {sorted(self.properties)}"
            ) from None

    def subset(self, index: np.ndarray | Sequence[int]) -> Dataset:
        """Configurations ``index`` (integer indices or a boolean mask), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return replace(
            self,
            species=self.species[index],
            coordinates=self.coordinates[index],
            properties={k: v[index] for k, v in self.properties.items()},
            molecule=self.molecule[index],
            conformer=self.conformer[index],
        )

    def require(self, *names: str) -> Dataset:
        """Only the configurations where every named property is known; error if none is."""
        keep = np.ones(len(self), dtype=bool)
        for name in names:
            keep &= self.mask(name)
        if not keep.any():
            raise DataFileError(
                f"{self.source or 'dataset'}: no configuration has all of {list(names)} after masking "
                "missing (NaN) values"
            )
        return self.subset(keep)

    def with_properties(self, **new: np.ndarray) -> Dataset:
        """A copy with properties added or replaced; arrays must have this dataset's shapes."""
        props = dict(self.properties)
        for name, arr in new.items():
            arr = np.asarray(arr, dtype=np.float64)
            if arr.shape not in {(len(self),), self.coordinates.shape}:
                raise ValueError(
                    f"property {name!r}: expected shape {(len(self),)} or {self.coordinates.shape}, got {arr.shape}"
                )
            props[name] = arr
        return replace(self, properties=props)

    def to_groups(self, file_keys: Mapping[str, str], units: Units = Units()) -> list[MoleculeGroup]:
        """Back to file groups (file units), one per molecule, configurations in conformer order.

        file_keys: property name -> key to write (e.g. {"energy": "gfn2_xtb.energy"}).
        """
        groups = []
        for m in np.unique(self.molecule):
            idx = np.flatnonzero(self.molecule == m)
            idx = idx[np.argsort(self.conformer[idx], kind="stable")]
            n = int(self.n_atoms[idx[0]])
            props = {}
            for name, key in file_keys.items():
                arr = self._get(name)[idx]
                if arr.ndim == 1:
                    props[key] = arr / units.energy_to_internal()
                else:
                    props[key] = arr[:, :n] / units.force_to_internal()
            attrs = self.molecule_attrs[m] if m < len(self.molecule_attrs) else {}
            groups.append(
                MoleculeGroup(
                    self.molecule_names[m],
                    self.species[idx[0], :n].copy(),
                    self.coordinates[idx, :n] / units.length_to_internal(),
                    props,
                    dict(attrs),
                )
            )
        return groups

    def save(self, path: str | os.PathLike, file_keys: Mapping[str, str], units: Units = Units(), attrs=None):
        """Write in the ANI layout (atomically); see :meth:`to_groups`."""
        attrs = {"energy_unit": units.energy, "length_unit": units.length, **(attrs or {})}
        return write_ani(path, self.to_groups(file_keys, units), attrs)

    def summary(self) -> str:
        n_at = self.n_atoms
        heavy = (self.species > 1).sum(axis=1)
        lines = [
            f"{self.source or 'dataset'}: {len(self)} configurations of {len(np.unique(self.molecule))} molecules",
            f"  atoms per configuration: {n_at.min()}..{n_at.max()} (heavy {heavy.min()}..{heavy.max()})",
            f"  elements: {' '.join(chemical_symbols[z] for z in self.elements)}",
        ]
        for name, arr in sorted(self.properties.items()):
            known = self.mask(name)
            if arr.ndim == 1:
                v = arr[known]
                stats = f"mean {v.mean():.2f}, std {v.std():.2f} kcal/mol" if v.size else "-"
            else:
                v = arr[known][self.species[known] > 0]
                stats = f"rms {np.sqrt((v**2).mean()):.2f} kcal/mol/A" if v.size else "-"
            lines.append(f"  {name}: known for {known.sum()}/{len(self)}; {stats}")
        return "\n".join(lines)


def from_groups(
    groups: Sequence[MoleculeGroup],
    keys: Mapping[str, str],
    units: Units = Units(),
    source: str = "",
) -> Dataset:
    """Flatten file groups into a :class:`Dataset`; ``keys`` maps property name -> file key."""
    if not groups:
        raise DataFileError(f"{source or 'dataset'}: no molecule groups")
    n = sum(g.n_conf for g in groups)
    a = max(g.n_atoms for g in groups)
    species = np.zeros((n, a), dtype=np.int64)
    coords = np.zeros((n, a, 3), dtype=np.float64)
    molecule = np.zeros(n, dtype=np.int64)
    conformer = np.zeros(n, dtype=np.int64)
    props: dict[str, np.ndarray] = {}
    kinds: dict[str, int] = {}
    lf, ef, ff = units.length_to_internal(), units.energy_to_internal(), units.force_to_internal()
    start = 0
    for m, g in enumerate(groups):
        c, k = g.n_conf, g.n_atoms
        sl = slice(start, start + c)
        species[sl, :k] = g.species
        coords[sl, :k] = g.coordinates * lf
        molecule[sl] = m
        conformer[sl] = np.arange(c)
        for name, key in keys.items():
            arr = g.properties.get(key)
            if arr is None:
                continue
            kind = 1 if arr.ndim == 1 else 3
            if kinds.setdefault(name, kind) != kind:
                raise DataFileError(
                    f"{source}: group {g.name!r}, key {key!r}: per-configuration in some groups and per-atom in others"
                )
            if name not in props:
                props[name] = np.full((n,) if kind == 1 else (n, a, 3), np.nan)
            if kind == 1:
                props[name][sl] = arr * ef
            else:
                if arr.shape[1:] != (k, 3):
                    raise DataFileError(
                        f"{source}: group {g.name!r}, key {key!r}: expected ({c}, {k}, 3), got {arr.shape}"
                    )
                props[name][sl, :k] = arr * ff
                props[name][sl, k:] = 0.0
        start += c
    missing = [f"{name} ({key!r})" for name, key in keys.items() if name not in props]
    if missing:
        raise DataFileError(f"{source or 'dataset'}: configured key(s) {missing} found in no group")
    return Dataset(
        species,
        coords,
        props,
        molecule,
        conformer,
        tuple(g.name for g in groups),
        source,
        tuple(dict(g.attrs) for g in groups),
    )


def load_dataset(
    path: str | os.PathLike,
    keys: Mapping[str, str],
    units: Units | None = None,
) -> Dataset:
    """Read an ANI-layout file into internal units.

    keys: property name -> file key, e.g. ``{"energy": "ccsd(t)_cbs.energy",
    "reference_forces": "wb97x_dz.forces"}``. Units default to the file's ``energy_unit`` /
    ``length_unit`` attributes (written by ekd) and otherwise to the ANI releases' Hartree and
    Angstrom.
    """
    if units is None:
        attrs = read_file_attrs(path)
        units = Units(str(attrs.get("energy_unit", "hartree")), str(attrs.get("length_unit", "angstrom")))
    groups = read_ani(path, keys.values())
    return from_groups(groups, keys, units, source=str(Path(path)))


def random_split(index: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into (rest, part) with ``part`` a random ``fraction`` of it (at least one).

    Deterministic for a seed; both outputs sorted.
    """
    index = np.asarray(index)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be between 0 and 1, got {fraction}")
    if len(index) < 2:
        raise ValueError(f"cannot split {len(index)} configuration(s) into two non-empty parts")
    rng = np.random.default_rng(seed)
    k = min(len(index) - 1, max(1, int(round(fraction * len(index)))))
    chosen = np.zeros(len(index), dtype=bool)
    chosen[rng.permutation(len(index))[:k]] = True
    return np.sort(index[~chosen]), np.sort(index[chosen])
