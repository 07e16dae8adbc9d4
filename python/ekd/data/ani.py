"""Read and write the HDF5 layout of the public ANI-1x / ANI-1ccx / COMP6 releases.

Layout: groups (top-level, or nested as in COMP6 / pyanitools files), each holding the
configurations of one formula or molecule:

* ``atomic_numbers`` (n_atoms,) int, or ``species`` (n_atoms,) element symbols (bytes/str) or ints
* ``coordinates`` (n_conf, n_atoms, 3), Angstrom
* property arrays named by level of theory, e.g. ``ccsd(t)_cbs.energy`` (n_conf,) Hartree,
  ``wb97x_dz.forces`` (n_conf, n_atoms, 3) Hartree/Angstrom. Missing values are NaN.

This module only moves arrays between files and :class:`MoleculeGroup` objects, in the file's
units; unit conversion and masking live in :mod:`ekd.data.dataset`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from ase.data import atomic_numbers as _SYMBOL_TO_Z
from ase.data import chemical_symbols

from ..store import atomic_write

SPECIES_KEYS = ("atomic_numbers", "species")
COORDINATE_KEY = "coordinates"
# Written by ekd when a group holds a subset of a file's configurations (e.g. a label file of the
# configurations with known energies): each configuration's index in its group of the original
# file, so that the identity (group, conformer) survives the filter.
CONFORMER_KEY = "conformer_index"
# Per-group arrays that are descriptions, not per-configuration properties.
NON_PROPERTY_KEYS = {*SPECIES_KEYS, COORDINATE_KEY, CONFORMER_KEY, "smiles", "name"}


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file, group and key."""


@dataclass
class MoleculeGroup:
    """The configurations of one molecule (or formula) as stored in the file.

    name: group path in the file, e.g. ``"C2H6O"`` or ``"gdb11_s10/gdb11_s10-3"``; it is the
        molecule identity used for conformer energy differences.
    species: (n_atoms,) int64 atomic numbers.
    coordinates: (n_conf, n_atoms, 3) float64, Angstrom.
    properties: file key -> (n_conf,) or (n_conf, n_atoms, 3) array, in the file's units.
    attrs: free-form metadata (e.g. SMILES), written as HDF5 attributes.
    conformers: (n_conf,) int64 index of each configuration in its group of the original file
        (stored as ``conformer_index``); None: 0 .. n_conf - 1.
    """

    name: str
    species: np.ndarray
    coordinates: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)
    conformers: np.ndarray | None = None

    @property
    def n_conf(self) -> int:
        return int(self.coordinates.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.species.shape[0])


def _species_to_z(raw: np.ndarray, where: str) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim != 1:
        raise DataFileError(f"{where}: species must be a 1-d array (one entry per atom), got shape {raw.shape}")
    if raw.dtype.kind in "SUO":
        out = []
        for s in raw:
            sym = s.decode() if isinstance(s, bytes) else str(s)
            sym = sym.strip()
            if sym not in _SYMBOL_TO_Z or sym == "X":
                raise DataFileError(f"{where}: unknown element symbol {sym!r}")
            out.append(_SYMBOL_TO_Z[sym])
        return np.asarray(out, dtype=np.int64)
    if raw.dtype.kind not in "iu":
        raise DataFileError(f"{where}: species must be integers or element symbols, got dtype {raw.dtype}")
    z = raw.astype(np.int64)
    bad = z[(z < 1) | (z >= len(chemical_symbols))]
    if bad.size:
        raise DataFileError(f"{where}: unknown atomic number {int(bad[0])} (expected 1..{len(chemical_symbols) - 1})")
    return z


def iter_groups(
    h5: h5py.Group, file: str, wanted: Sequence[str] = (), prefix: str = ""
) -> Iterator[tuple[str, h5py.Group]]:
    """Groups that hold configurations (have a ``coordinates`` dataset), depth first, sorted.

    A group without ``coordinates`` is a folder of groups (COMP6 nests them) unless it holds a
    species array or one of the ``wanted`` property keys: then it is configuration data that
    lost its coordinates, and skipping it would silently shrink the data set.
    """
    for key in sorted(h5.keys()):
        item = h5.get(key)
        if not isinstance(item, h5py.Group):
            continue
        path = f"{prefix}/{key}" if prefix else key
        if COORDINATE_KEY in item:
            if not isinstance(item.get(COORDINATE_KEY), h5py.Dataset):
                raise DataFileError(
                    f"{file}: group {path!r}: 'coordinates' is a group, expected a dataset of shape "
                    "(n_conf, n_atoms, 3)"
                )
            yield path, item
            continue
        data_keys = [k for k in (*SPECIES_KEYS, *wanted) if isinstance(item.get(k), h5py.Dataset)]
        if data_keys:
            raise DataFileError(
                f"{file}: group {path!r} holds {data_keys} but no 'coordinates' dataset; every group with "
                "configuration data needs 'coordinates' of shape (n_conf, n_atoms, 3) (fix or remove the group)"
            )
        yield from iter_groups(item, file, wanted, path)


def open_file(path: str | os.PathLike) -> h5py.File:
    """``path`` opened read-only, or an error naming it (missing, a directory, not HDF5)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataFileError(f"{path}: is a directory, expected an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataFileError(f"{path}: not a readable HDF5 file ({e})") from e


def read_ani(path: str | os.PathLike, keys: Iterable[str] | None = None) -> list[MoleculeGroup]:
    """Read every configuration group of an ANI-layout HDF5 file.

    keys: property keys to load (others are skipped, which keeps large files cheap); None loads
    every per-configuration array. A key missing from one group is NaN-filled for that group;
    a key absent from *every* group is an error (a typo in the configuration, most likely).
    """
    wanted = None if keys is None else list(dict.fromkeys(keys))
    groups: list[MoleculeGroup] = []
    found: set[str] = set()
    with open_file(path) as h5:
        for name, g in iter_groups(h5, str(path), wanted or ()):
            where = f"{path}: group {name!r}"
            skey = next((k for k in SPECIES_KEYS if k in g), None)
            if skey is None:
                raise DataFileError(f"{where}: has 'coordinates' but no 'atomic_numbers' or 'species' dataset")
            if not isinstance(g.get(skey), h5py.Dataset):
                raise DataFileError(f"{where}: {skey!r} is a group, expected a dataset (one entry per atom)")
            species = _species_to_z(g[skey][()], f"{where}, key {skey!r}")
            raw = g[COORDINATE_KEY][()]
            if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "fiu":
                raise DataFileError(f"{where}, key 'coordinates': expected numbers, got {_describe_dtype(raw)}")
            coords = np.asarray(raw, dtype=np.float64)
            if coords.ndim == 2 and coords.shape[1] == 3 and coords.shape[0] == species.shape[0]:
                coords = coords[None]  # a single configuration stored without the conformer axis
            if coords.ndim != 3 or coords.shape[1:] != (species.shape[0], 3):
                raise DataFileError(
                    f"{where}, key 'coordinates': expected shape (n_conf, {species.shape[0]}, 3) "
                    f"for {species.shape[0]} atoms, got {coords.shape}"
                )
            bad = ~np.isfinite(coords).all(axis=(1, 2))
            if bad.any():
                raise DataFileError(
                    f"{where}, key 'coordinates': configuration {int(np.flatnonzero(bad)[0])} has NaN or "
                    "infinite coordinates"
                )
            props: dict[str, np.ndarray] = {}
            names = wanted if wanted is not None else [k for k in g if k not in NON_PROPERTY_KEYS]
            for key in names:
                if key not in g:
                    continue
                item = g.get(key)
                if not isinstance(item, h5py.Dataset):
                    if wanted is None:
                        continue
                    raise DataFileError(f"{where}, key {key!r}: is a group, expected a dataset of numbers")
                arr = item[()]
                if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim == 0:
                    if wanted is None:
                        continue  # strings and scalars (e.g. SMILES) are not properties
                    # a configured key that cannot be read as numbers per configuration
                    raise DataFileError(
                        f"{where}, key {key!r}: expected numbers, one per configuration (first axis "
                        f"{coords.shape[0]}), got {_describe_dtype(arr)}"
                    )
                arr = np.asarray(arr, dtype=np.float64)
                if arr.shape[:1] != (coords.shape[0],):
                    raise DataFileError(
                        f"{where}, key {key!r}: expected {coords.shape[0]} configurations (first axis), "
                        f"got shape {arr.shape}"
                    )
                if arr.ndim > 1 and arr.shape[1:] not in {(species.shape[0], 3), (species.shape[0],)}:
                    raise DataFileError(
                        f"{where}, key {key!r}: per-atom arrays must be (n_conf, {species.shape[0]}[, 3]), "
                        f"got {arr.shape}"
                    )
                props[key] = arr
                found.add(key)
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            conformers = _conformer_index(g, coords.shape[0], where)
            groups.append(MoleculeGroup(name, species, coords, props, attrs, conformers))
    if not groups:
        raise DataFileError(f"{path}: no group with a 'coordinates' dataset; not an ANI-layout file")
    if wanted is not None:
        missing = [k for k in wanted if k not in found]
        if missing:
            example = sorted({k for g in groups[:50] for k in _peek_keys(path, g.name)})
            raise DataFileError(f"{path}: key(s) {missing} found in no group; keys present include {example}")
    return groups


def _describe_dtype(arr) -> str:
    if not isinstance(arr, np.ndarray):
        return f"a scalar {type(arr).__name__}"
    kind = {"S": "strings", "U": "strings", "O": "strings or objects", "b": "booleans"}.get(arr.dtype.kind)
    what = kind or f"dtype {arr.dtype}"
    return f"{what} of shape {arr.shape}" if arr.ndim else f"a scalar ({what})"


def _conformer_index(g: h5py.Group, n_conf: int, where: str) -> np.ndarray | None:
    if CONFORMER_KEY not in g:
        return None
    idx = np.asarray(g[CONFORMER_KEY][()])
    if idx.dtype.kind not in "iu" or idx.shape != (n_conf,) or len(np.unique(idx)) != n_conf or (idx < 0).any():
        raise DataFileError(
            f"{where}, key {CONFORMER_KEY!r}: expected {n_conf} distinct non-negative integers, got "
            f"{_describe_dtype(idx)}"
        )
    return idx.astype(np.int64)


def _peek_keys(path, name) -> list[str]:
    with h5py.File(path, "r") as h5:
        return [k for k in h5[name].keys() if k not in NON_PROPERTY_KEYS]


def property_keys(path: str | os.PathLike) -> list[str]:
    """Names of the per-configuration arrays of an ANI-layout file (every group's, sorted)."""
    keys: set[str] = set()
    with open_file(path) as h5:
        for _, g in iter_groups(h5, str(path)):
            keys.update(k for k, v in g.items() if isinstance(v, h5py.Dataset) and k not in NON_PROPERTY_KEYS)
    return sorted(keys)


def read_file_attrs(path: str | os.PathLike) -> dict[str, object]:
    """Top-level HDF5 attributes (ekd writes its units and provenance there)."""
    with open_file(path) as h5:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}


def write_ani(path: str | os.PathLike, groups: Iterable[MoleculeGroup], attrs: dict | None = None) -> Path:
    """Write groups in the ANI layout (``atomic_numbers``, ``coordinates``, properties).

    Atomic: the file is written next to its destination and renamed into place, so an
    interrupted write never leaves a truncated file under the final name.
    """

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            for k, v in (attrs or {}).items():
                h5.attrs[k] = v
            seen = set()
            for g in groups:
                if g.name in seen:
                    raise ValueError(f"write_ani: group name {g.name!r} used twice")
                seen.add(g.name)
                grp = h5.create_group(g.name)
                grp.create_dataset("atomic_numbers", data=np.asarray(g.species, dtype=np.int64))
                grp.create_dataset("coordinates", data=np.asarray(g.coordinates, dtype=np.float64))
                if g.conformers is not None:
                    grp.create_dataset(CONFORMER_KEY, data=np.asarray(g.conformers, dtype=np.int64))
                for key, arr in g.properties.items():
                    grp.create_dataset(key, data=np.asarray(arr, dtype=np.float64))
                for k, v in g.attrs.items():
                    grp.attrs[k] = v

    return atomic_write(path, write)
