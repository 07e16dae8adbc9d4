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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols, covalent_radii

from ..units import HARTREE_TO_KCALMOL, energy_factor, energy_unit, length_factor, length_unit
from .ani import DataFileError, MoleculeGroup, check_key_kind, write_ani
from .ase_files import read_attrs, read_groups


class DataUnitWarning(UserWarning):
    """Energies or distances of a data file look wrong for its declared units."""


@dataclass(frozen=True)
class Units:
    """Units of a data file. Forces are in energy/length.

    energy: "hartree", "ev" or "kcal/mol"; length: "angstrom" or "bohr", also as people write them
    (``eV``, ``Hartree``, ``Bohr``, ...: :func:`ekd.units.energy_unit`); stored as ekd's names.
    None means "not declared": :func:`resolve_units` takes the file's own attribute, else the ANI
    releases' Hartree / Angstrom. A Units with a None field cannot convert anything.
    """

    energy: str | None = "hartree"
    length: str | None = "angstrom"

    def __post_init__(self):
        for name, canonical in (("energy", energy_unit), ("length", length_unit)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, canonical(value))

    def energy_to_internal(self) -> float:
        return energy_factor(self._declared("energy"))

    def length_to_internal(self) -> float:
        return length_factor(self._declared("length"))

    def force_to_internal(self) -> float:
        return self.energy_to_internal() / self.length_to_internal()

    def _declared(self, name: str) -> str:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"Units: the {name} unit is not declared; resolve it first (ekd.data.resolve_units)")
        return value


#: file attributes that declare a file's units (ekd writes them; the ANI releases have none)
UNIT_ATTRS = {"energy": "energy_unit", "length": "length_unit"}


def resolve_units(
    path: str | os.PathLike,
    declared: Units | None = None,
    declared_as: tuple[str, str] = ("the declared energy unit", "the declared length unit"),
) -> Units:
    """The units of data file ``path``: what the caller declares, checked against the file's own
    ``energy_unit`` / ``length_unit`` attributes.

    For each of energy and length: a declared unit must agree with the file's attribute when the
    file has one (a contradiction is an error naming both); an undeclared one (None) is the
    attribute's, else Hartree / Angstrom. ``declared_as`` names where the declaration came from
    in messages (e.g. ``("data.energy_unit", "data.length_unit")`` or ``("--energy-unit",
    "--length-unit")``).
    """
    declared = Units(None, None) if declared is None else declared
    attrs = read_attrs(path)
    out = {}
    for (name, attr), origin in zip(UNIT_ATTRS.items(), declared_as, strict=True):
        canonical = energy_unit if name == "energy" else length_unit
        raw = attrs.get(attr)
        stated = None
        if raw is not None:
            try:
                stated = canonical(str(raw))
            except ValueError as e:
                raise DataFileError(
                    f"{path}: file attribute {attr} = {raw!r} is not a unit ekd knows ({e}); correct the attribute, "
                    "or convert the file"
                ) from None
        mine = getattr(declared, name)
        if mine is not None and stated is not None and mine != stated:
            raise DataFileError(
                f"{path}: {origin} is {mine!r} but the file's attribute {attr} says {stated!r}; "
                "declare the file's unit, or correct the attribute if the file is wrong"
            )
        out[name] = mine or stated or getattr(Units(), name)
    return Units(**out)


@dataclass(frozen=True)
class Dataset:
    """n configurations, padded to A atoms.

    species: (n, A) int64 atomic numbers, 0 in padding.
    coordinates: (n, A, 3) float64 Angstrom, 0 in padding.
    properties: name -> (n,) per-configuration values (kcal/mol) or (n, A, 3) per-atom vectors
        (kcal/mol/Angstrom); NaN where the file has no value for that configuration.
    molecule: (n,) int64 index into ``molecule_names`` (the file group: molecule identity).
    conformer: (n,) int64 index of the configuration within its group of the original file; with
        the molecule name it identifies a configuration across filters and files (:meth:`ids`).
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

    def ids(self, index: np.ndarray | Sequence[int] | None = None) -> list[tuple[str, int]]:
        """Stable identities (molecule name, conformer index in its file group) of configurations
        ``index`` (all if None). Unlike positions, they survive masking, subsetting and files
        written by :meth:`save` (which records the conformer index)."""
        index = np.arange(len(self)) if index is None else np.asarray(index, dtype=np.int64)
        pairs = zip(self.molecule[index], self.conformer[index], strict=True)
        return [(self.molecule_names[m], int(c)) for m, c in pairs]

    def positions(self, ids: Sequence[Sequence], what: str = "configurations") -> np.ndarray:
        """(k,) int64 positions of configurations ``ids`` (see :meth:`ids`) in this dataset; an
        identity this dataset does not hold is an error naming it."""
        where = {key: i for i, key in enumerate(self.ids())}
        out = np.empty(len(ids), dtype=np.int64)
        for k, (name, conformer) in enumerate(ids):
            i = where.get((str(name), int(conformer)))
            if i is None:
                raise DataFileError(
                    f"{self.source or 'dataset'}: has no configuration {conformer} of molecule {name!r}, named by "
                    f"{what}; the data file changed after the splits were made (use a new run directory)"
                )
            out[k] = i
        return out

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
            conformers = self.conformer[idx]
            groups.append(
                MoleculeGroup(
                    self.molecule_names[m],
                    self.species[idx[0], :n].copy(),
                    self.coordinates[idx, :n] / units.length_to_internal(),
                    props,
                    dict(attrs),
                    # recorded only when it is not 0..n-1, so that full files keep the ANI layout
                    None if np.array_equal(conformers, np.arange(len(idx))) else conformers.copy(),
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
    key_names: Mapping[str, str] | None = None,
) -> Dataset:
    """Flatten file groups into a :class:`Dataset`; ``keys`` maps property name -> file key;
    key_names: as :func:`load_dataset`'s."""
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
        conformer[sl] = np.arange(c) if g.conformers is None else g.conformers
        for name, key in keys.items():
            arr = g.properties.get(key)
            if arr is None:
                continue
            label = (key_names or {}).get(name) or f"the {name.replace('_', ' ')} key"
            check_key_kind(name, key, arr, k, label, f"{source}: group {g.name!r}")
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
    *,
    declared_as: tuple[str, str] | None = None,
    check_plausible: bool = True,
    key_names: Mapping[str, str] | None = None,
) -> Dataset:
    """Read a data file into internal units (kcal/mol, Angstrom): THE loader, for every process
    that reads a data file, so that units are decided in one place. The file is an ANI-layout HDF5
    file or any file ASE reads (extxyz, ASE database: :mod:`ekd.data.ase_files`), told apart by
    content.

    keys: property name -> file key, e.g. ``{"energy": "ccsd(t)_cbs.energy",
        "reference_forces": "wb97x_dz.forces"}``.
    units: the file's units as declared by the caller (a config, a command-line option); a None
        field (or None) is not declared. See :func:`resolve_units`: a declaration must agree with
        the file's ``energy_unit`` / ``length_unit`` attribute; undeclared units are the
        attribute's, else the ANI releases' Hartree and Angstrom.
    declared_as: how messages name where units are declared, e.g. ``("data.energy_unit",
        "data.length_unit")`` or ``("--energy-unit", "--length-unit")``.
    check_plausible: warn (:class:`DataUnitWarning`) when energies per atom or nearest-neighbour
        distances do not fit the units (see :func:`check_plausible_units`).
    key_names: how messages name the option that chose each key (``{"energy": "--energy-key"}``);
        a key of the wrong kind (forces or coordinates as the energy, ...) is refused.
    """
    units = resolve_units(path, units, declared_as or ("the declared energy unit", "the declared length unit"))
    groups = read_groups(path, keys.values())
    dataset = from_groups(groups, keys, units, source=str(Path(path)), key_names=key_names)
    if check_plausible:
        check_plausible_units(dataset, units, keys, declared_as)
    return dataset


# all-electron total energy of a free atom, roughly: -Z**2.4 / 2 Hartree (within 3 % for H..Br)
def _atom_energy_scale(z: np.ndarray) -> np.ndarray:
    return 0.5 * np.asarray(z, dtype=np.float64) ** 2.4 * HARTREE_TO_KCALMOL


def check_plausible_units(
    dataset: Dataset,
    units: Units,
    keys: Mapping[str, str] | None = None,
    declared_as: tuple[str, str] | None = None,
) -> list[str]:
    """Warn (:class:`DataUnitWarning`) when the data do not look like their declared units;
    returns the warnings' texts.

    * energies: a molecule's total energy can be no lower than about the sum of its free atoms'
      all-electron energies (-Z^2.4/2 Hartree each); energies far below it (median ratio > 1.5)
      were most likely stored in kcal/mol or eV but read as Hartree. Small energies are mostly
      valence-only (xTB), atomization or relative energies and are not judged, except in the
      narrow band that all-electron totals in Hartree fall into when read as kcal/mol (ratio
      1/627 within 20 %: CHNO molecules' totals are 1.02-1.04x the estimate; atomization energies
      in kcal/mol are 3-10x larger).
    * lengths: each configuration's closest pair, over the sum of its covalent radii, is ~1 in
      a molecule; a median > 1.5 means Bohr coordinates read as Angstrom, < 0.6 the reverse.

    Medians over at most 2000 evenly spaced configurations, so one odd configuration is no alarm.
    """
    keys = keys or {}
    where = declared_as or ("the config's data.energy_unit", "the config's data.length_unit")
    fix = [
        f"declare the file's unit with {w}, or set the file's {a} attribute"
        for w, a in zip(where, UNIT_ATTRS.values(), strict=True)
    ]
    found = []
    n = len(dataset)
    pick = np.unique(np.linspace(0, n - 1, min(n, 2000)).astype(np.int64)) if n else np.zeros(0, np.int64)
    species = dataset.species[pick]
    real = species > 0
    energy = dataset.properties.get("energy")
    if energy is not None:
        e = energy[pick]
        scale = (_atom_energy_scale(species) * real).sum(axis=1)
        ok = np.isfinite(e)
        if ok.any():
            ratio = float(np.median(-e[ok] / scale[ok]))
            if ratio > 1.5:
                found.append(
                    f"{dataset.source or 'dataset'}: energies ({keys.get('energy', 'energy')!r}, read as "
                    f"{units.energy}) are {ratio:.0f}x lower than the free atoms' total energies, which is "
                    f"impossible; is the file in kcal/mol or eV? If so, {fix[0]}"
                )
            elif units.energy != "hartree" and 0.8 < ratio * HARTREE_TO_KCALMOL / energy_factor(units.energy) < 1.25:
                found.append(
                    f"{dataset.source or 'dataset'}: energies ({keys.get('energy', 'energy')!r}, read as "
                    f"{units.energy}) are {ratio * HARTREE_TO_KCALMOL / energy_factor(units.energy):.2f}x the "
                    f"free atoms' all-electron total energies if they were Hartree: is the file in Hartree? "
                    f"If so, {fix[0]}"
                )
    radii = covalent_radii[species]
    xyz = dataset.coordinates[pick]
    multi = real.sum(axis=1) >= 2
    if multi.any():
        ratios = []
        for i in np.flatnonzero(multi):
            k = int(real[i].sum())
            d = np.linalg.norm(xyz[i, :k, None] - xyz[i, None, :k], axis=-1)
            r = radii[i, :k, None] + radii[i, None, :k]
            np.fill_diagonal(d, np.inf)
            if d.min() > 0.1:  # overlapping atoms are a defect of their own, not a unit
                ratios.append((d / r).min())
        ratio = float(np.median(ratios)) if ratios else 1.0
        if ratio > 1.5 or ratio < 0.6:
            guess = "Bohr read as Angstrom" if ratio > 1.5 else "Angstrom read as Bohr"
            found.append(
                f"{dataset.source or 'dataset'}: the closest atoms of a configuration are typically {ratio:.2f}x "
                f"the sum of their covalent radii (read as {units.length}; ~1 expected in "
                f"molecules): {guess}? If so, {fix[1]}"
            )
    for text in found:
        warnings.warn(text, DataUnitWarning, stacklevel=3)
    return found


def random_split(index: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into (rest, part) with ``part`` a random ``fraction`` of it (at least one).

    Deterministic for a seed; both outputs sorted.
    """
    index = np.asarray(index)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be between 0 and 1, got {fraction}")
    if len(index) < 2:
        raise ValueError(f"cannot split {len(index)} configuration(s) into two non-empty parts (need at least 2)")
    rng = np.random.default_rng(seed)
    k = min(len(index) - 1, max(1, int(round(fraction * len(index)))))
    chosen = np.zeros(len(index), dtype=bool)
    chosen[rng.permutation(len(index))[:k]] = True
    return np.sort(index[~chosen]), np.sort(index[chosen])
