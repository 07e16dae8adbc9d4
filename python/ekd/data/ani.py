"""Read and write the HDF5 layout of the public ANI-1x / ANI-1ccx / COMP6 releases.

Layout: groups (top-level, or nested as in COMP6 / pyanitools files), each holding the
configurations of one formula or molecule:

* ``atomic_numbers`` (n_atoms,) int, or ``species`` (n_atoms,) element symbols (bytes/str) or ints
* ``coordinates`` (n_conf, n_atoms, 3), Angstrom
* property arrays named by level of theory, e.g. ``ccsd(t)_cbs.energy`` (n_conf,) Hartree,
  ``wb97x_dz.forces`` (n_conf, n_atoms, 3) Hartree/Angstrom. Missing values are NaN.

This module only moves arrays between files and :class:`MoleculeGroup` objects, in the file's
units; unit conversion and masking live in :mod:`ekd.data.dataset`.

A file is read only when everything in it is what it claims to be, checked before any array is
read (issue 24): no external links and no virtual datasets or external storage reading other
files (a missing file would silently drop a group or read as zeros: copy the data into the
file), no dangling soft links, no group reached twice (a link cycle, or the same configurations
under two names), and no dataset declaring more data than is stored (unwritten storage reads as
its fill value; a shape of 10^9 configurations in an 8 KB file would ask for gigabytes).
"""

from __future__ import annotations

import math
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
# The most a filtered (compressed) dataset may expand: deflate's ratio is bounded near 1032:1,
# so a gzip-compressed ANI file never comes close; a larger ratio is a decompression bomb.
MAX_COMPRESSION = 2000.0


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


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _in_file(file: str, name: str, path: str) -> str:
    """How a message names HDF5 ``path`` in a file that ``file`` points to, and whether that file
    exists (HDF5 looks next to the pointing file and in the working directory)."""
    there = Path(name).exists() or (Path(file).parent / name).exists()
    return f"{path} in {name}{'' if there else ', which does not exist'}"


_SELF_CONTAINED = (
    "ekd reads self-contained files only: data in another file is not followed (a missing file would "
    "drop that data without a word); copy the data into this file"
)


def _links(h5: h5py.Group, file: str, prefix: str) -> dict[str, object]:
    """``h5``'s members by name, each link checked: external links are refused, a soft link
    must lead somewhere."""
    out = {}
    for key in sorted(h5.keys()):
        path = f"{prefix}/{key}" if prefix else key
        link = h5.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise DataFileError(
                f"{file}: {path!r} is an external link to {_in_file(file, link.filename, link.path)}; {_SELF_CONTAINED}"
            )
        item = h5.get(key)
        if item is None:
            target = link.path if isinstance(link, h5py.SoftLink) else "?"
            raise DataFileError(f"{file}: {path!r} is a soft link to {target}, and there is nothing there")
        out[key] = item
    return out


def check_dataset(dset: h5py.Dataset, file: str, path: str, _depth: int = 0) -> h5py.Dataset:
    """``dset`` if its declared data is all stored in ``file`` (see the module docstring), else
    a :class:`DataFileError` naming the file and HDF5 path; reads nothing of the data."""
    where = f"{file}: {path!r}"
    if dset.shape is None:  # an empty dataspace (h5py.Empty): no data to be missing
        return dset
    declared = int(dset.size) * dset.dtype.itemsize
    shape = " x ".join(str(n) for n in dset.shape) or "scalar"
    what = f"declares {shape} {dset.dtype} ({_size(declared)})"
    if dset.is_virtual:
        sources = dset.virtual_sources()
        for src in sources:
            if src.file_name != ".":
                raise DataFileError(
                    f"{where} is a virtual dataset reading {_in_file(file, src.file_name, src.dset_name)}; "
                    f"{_SELF_CONTAINED}"
                )
            source = dset.file.get(src.dset_name)
            if not isinstance(source, h5py.Dataset) or _depth > 8:
                raise DataFileError(f"{where} is a virtual dataset reading {src.dset_name}, which is not a dataset")
            check_dataset(source, file, src.dset_name.lstrip("/"), _depth + 1)
        mapped = sum(src.vspace.get_select_npoints() for src in sources)
        if mapped < dset.size:
            raise DataFileError(
                f"{where} is a virtual dataset that {what} but maps only {mapped} of its {dset.size} elements; "
                "the rest would read as the fill value"
            )
        return dset
    if dset.external:
        names = sorted({str(name) for name, *_ in dset.external})
        raise DataFileError(f"{where} keeps its data in external raw file(s) {names}; {_SELF_CONTAINED}")
    if declared == 0:
        return dset
    stored = dset.id.get_storage_size()
    unwritten = "data never written, or the file is damaged; unwritten data would read as the fill value (zeros)"
    if dset.chunks is None:
        if stored < declared:
            raise DataFileError(f"{where} {what} but stores {_size(stored)}: {unwritten}")
        offset = dset.id.get_offset()
        if offset is not None and offset + declared > os.path.getsize(file):
            raise DataFileError(f"{where} {what} past the end of the file ({_size(os.path.getsize(file))}): truncated")
    else:
        expected = math.prod(math.ceil(n / c) for n, c in zip(dset.shape, dset.chunks, strict=True))
        have = dset.id.get_num_chunks()
        if have < expected:
            raise DataFileError(f"{where} {what} but only {have} of its {expected} chunks are stored: {unwritten}")
        if dset.id.get_create_plist().get_nfilters() and declared > MAX_COMPRESSION * max(stored, 1):
            raise DataFileError(
                f"{where} {what} compressed to {_size(stored)}: it would expand more than {MAX_COMPRESSION:g}x "
                "(gzip never does: a decompression bomb, or real data of a few repeated values, e.g. all NaN: "
                "rewrite that dataset uncompressed or with gzip)"
            )
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if declared > memory // 2:
        raise DataFileError(
            f"{where} {what}, more than half of this machine's memory ({_size(memory)}); ekd reads whole "
            "datasets: split the file"
        )
    return dset


def read_dataset(dset: h5py.Dataset, file: str, path: str):
    """``dset[()]`` after :func:`check_dataset`."""
    return check_dataset(dset, file, path)[()]


def check_key_kind(name: str, key: str, arr: np.ndarray, n_atoms: int, label: str, where: str) -> None:
    """Property ``name`` (``energy``, ``reference_forces``, ``x.energy``, ...) read from file key
    ``key`` as ``arr``: an energy is one number per configuration, forces a vector per atom; a key
    of the other kind (or the coordinates) is a mistake in the configuration or command line.
    label: how the message names the option that chose the key; where: file and group."""
    if name == "energy" or name.endswith((".energy", "_energy")):
        ok, expected = arr.ndim == 1, "one number per configuration, shape (n_conf,)"
    elif name.endswith("forces"):
        ok, expected = arr.shape[1:] == (n_atoms, 3), "a vector per atom, shape (n_conf, n_atoms, 3)"
    else:
        return
    if ok:
        return
    if key == COORDINATE_KEY:
        found = f"the atoms' coordinates (shape {arr.shape})"
    elif arr.ndim == 1:
        found = f"one number per configuration (shape {arr.shape}), like an energy"
    elif arr.shape[1:] == (n_atoms, 3):
        found = f"a vector per atom (shape {arr.shape}), like forces"
    else:
        found = f"an array of shape {arr.shape}"
    raise DataFileError(f"{where}: {label} {key!r} holds {found}; expected {expected}")


def iter_groups(
    h5: h5py.Group, file: str, wanted: Sequence[str] = (), prefix: str = "", _seen: dict | None = None
) -> Iterator[tuple[str, h5py.Group]]:
    """Groups that hold configurations (have a ``coordinates`` dataset), depth first, sorted.

    A group without ``coordinates`` is a folder of groups (COMP6 nests them) unless it holds a
    species array or one of the ``wanted`` property keys: then it is configuration data that
    lost its coordinates, and skipping it would silently shrink the data set. Links are checked
    on the way (see the module docstring); a group reached twice is an error.
    """
    seen = {h5.id: prefix or "/"} if _seen is None else _seen
    for key, item in _links(h5, file, prefix).items():
        if not isinstance(item, h5py.Group):
            continue
        path = f"{prefix}/{key}" if prefix else key
        if item.id in seen:
            raise DataFileError(
                f"{file}: {path!r} is the group {seen[item.id]!r} again (a hard or soft link): its configurations "
                "would be read twice (or, in a cycle, forever); remove the link"
            )
        seen[item.id] = path
        if COORDINATE_KEY in item:
            _links(item, file, path)
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
        yield from iter_groups(item, file, wanted, path, seen)


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
            species = _species_to_z(read_dataset(g[skey], str(path), f"{name}/{skey}"), f"{where}, key {skey!r}")
            raw = read_dataset(g[COORDINATE_KEY], str(path), f"{name}/{COORDINATE_KEY}")
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
                arr = read_dataset(item, str(path), f"{name}/{key}")
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
            conformers = _conformer_index(g, coords.shape[0], where, (str(path), f"{name}/{CONFORMER_KEY}"))
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


def _conformer_index(g: h5py.Group, n_conf: int, where: str, at: tuple[str, str]) -> np.ndarray | None:
    if CONFORMER_KEY not in g:
        return None
    item = g[CONFORMER_KEY]
    if not isinstance(item, h5py.Dataset):
        raise DataFileError(f"{where}, key {CONFORMER_KEY!r}: is a group, expected a dataset")
    idx = np.asarray(read_dataset(item, *at))
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
