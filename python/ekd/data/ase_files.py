"""Data files that ASE reads (extended XYZ, ASE databases, ...), in and out, beside the ANI HDF5
layout of :mod:`ekd.data.ani`: the same :class:`MoleculeGroup` objects, so units, masks and checks
are decided in one place (:mod:`ekd.data.dataset`) whatever the file.

Reading (:func:`read_ase`): every frame is one configuration of an isolated molecule (a periodic
frame is refused: ekd has no periodic data). A property named by the configuration (e.g.
``data.energy_key``) is looked up in the frame's ``atoms.info`` (an ASE database: the row's key-value
pairs), ``atoms.arrays`` (a database: the row's ``data``) and the results ASE attaches for the
standard names (``energy``, ``forces``); a number is a per-configuration value, an (n_atoms, 3)
array a per-atom vector. A frame without the key has NaN there (masked, as in an HDF5 group without
it); a key in no frame is an error.

Molecules (for ΔE pairs and per-molecule tables):

* frames with ``info["molecule"]`` (any value, compared as text) belong to that molecule; every
  frame of the file must have one then, and a molecule's frames must list the same elements in the
  same order. ``info["conformer"]`` (optional, distinct integers within a molecule) is each
  configuration's identity within its molecule (ekd writes both);
* without ids, frames are the same molecule when they list the same elements in the same order
  and the same atom pairs are bonded, a bond being a distance below 1.25 x the sum of the two
  covalent radii (ASE's table, Cordero et al. 2008). A molecule is named by its Hill formula
  (``C2H6O``), a second bonding pattern of the same formula ``C2H6O-2``, and so on, in the order
  of first appearance. Conformers keep their molecule; a stretched geometry that breaks or makes a
  bond, or the same molecule with its atoms listed in another order, is another molecule.

Units: the file's ``energy_unit`` / ``length_unit`` "attributes" are the frames' ``info`` entries
of those names (all frames must agree); ekd writes them.

Writing (:func:`write_extxyz`): extended XYZ with every float at full precision (``repr``), so
that a file read back holds the same numbers bit for bit, and written atomically after the file
has been read back and compared (a name ASE's reader would turn into a number is caught there).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols, covalent_radii

from ..store import atomic_write
from .ani import DataFileError, MoleculeGroup, read_ani, read_file_attrs
from .ani import property_keys as hdf5_property_keys

MOLECULE_KEY = "molecule"
CONFORMER_KEY = "conformer"
UNIT_KEYS = ("energy_unit", "length_unit")
#: per-configuration text that marks conformers in benchmark files (as the HDF5 ``kind`` dataset)
KIND_KEY = "kind"
#: a bond: distance < BOND_FACTOR x (sum of covalent radii)
BOND_FACTOR = 1.25
#: keys a frame's description uses; never properties
RESERVED = {"numbers", "positions", "species", "pos", "pbc", "Lattice", "Properties", MOLECULE_KEY, CONFORMER_KEY,
            *UNIT_KEYS, KIND_KEY}  # fmt: skip
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file, by content (the signature at 0, 512, 1024, ... bytes)."""
    import h5py

    try:
        return bool(h5py.is_hdf5(str(path)))
    except OSError:
        return False


@dataclass
class Frame:
    """One configuration as read: numbers (n,), positions (n, 3) in the file's length unit, and
    every value ASE gives for it (info, arrays, calculator results; database key-value pairs and data)."""

    numbers: np.ndarray
    positions: np.ndarray
    values: dict


_CACHE: dict[tuple, list[Frame]] = {}


def read_frames(path: str | os.PathLike) -> list[Frame]:
    """Every frame of an ASE-readable file, checked (isolated, finite coordinates); cached per
    file version, since a run reads the units, the keys and the data of the same file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataFileError(f"{path}: is a directory, expected a data file (ANI HDF5, extxyz, ASE database)")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE.clear()  # one file at a time is what the callers need
        _CACHE[key] = _read(path)
    return _CACHE[key]


def _read(path: Path) -> list[Frame]:
    from ase.io.formats import filetype

    try:
        fmt = filetype(str(path), guess=True)
    except Exception as e:  # ASE raises UnknownFileTypeError, and others for odd content
        raise DataFileError(
            f"{path}: neither an HDF5 file nor a file ASE recognises ({e}); expected an ANI-layout HDF5 file, "
            "an extended XYZ file or an ASE database"
        ) from None
    frames = []
    if fmt in ("db", "json", "postgresql"):
        import ase.db

        try:
            rows = list(ase.db.connect(str(path), type=fmt).select())
        except Exception as e:
            raise DataFileError(f"{path}: not a readable ASE database ({type(e).__name__}: {e})") from None
        for row in rows:
            atoms = row.toatoms()
            values = {}
            if atoms.calc is not None:
                values.update(atoms.calc.results)
            values.update(row.data)
            values.update(row.key_value_pairs)
            frames.append(_frame(path, len(frames), atoms, values))
    else:
        import ase.io

        try:
            images = ase.io.read(str(path), index=":", format=fmt)
        except Exception as e:
            raise DataFileError(
                f"{path}: not an HDF5 file, and ASE could not read it as {fmt} (the format it guessed from the name "
                f"and content; {type(e).__name__}: {e}); expected an ANI-layout HDF5 file, an extended XYZ file or "
                "an ASE database"
            ) from None
        for atoms in images:
            values = dict(atoms.calc.results) if atoms.calc is not None else {}
            values.update({k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")})
            values.update(atoms.info)
            frames.append(_frame(path, len(frames), atoms, values))
    if not frames:
        raise DataFileError(f"{path}: holds no configuration")
    return frames


def _frame(path: Path, i: int, atoms, values: dict) -> Frame:
    where = f"{path}: frame {i}"
    if atoms.pbc.any():
        raise DataFileError(
            f"{where}: is periodic (pbc={atoms.pbc.tolist()}); ekd's data are isolated configurations: write the "
            "frame with pbc=F (coordinates unwrapped, no cell)"
        )
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    if numbers.size == 0:
        raise DataFileError(f"{where}: has no atoms")
    bad = numbers[(numbers < 1) | (numbers >= len(chemical_symbols))]
    if bad.size:
        raise DataFileError(f"{where}: unknown atomic number {int(bad[0])} (expected 1..{len(chemical_symbols) - 1})")
    positions = np.asarray(atoms.positions, dtype=np.float64)
    if not np.isfinite(positions).all():
        raise DataFileError(f"{where}: has NaN or infinite coordinates")
    return Frame(numbers, positions, values)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_groups(path: str | os.PathLike, keys: Iterable[str] | None = None) -> list[MoleculeGroup]:
    """The molecule groups of any data file: ANI-layout HDF5 (:func:`ekd.data.ani.read_ani`) or a
    file ASE reads (:func:`read_ase`), told apart by content."""
    if is_hdf5(path) or not Path(path).exists():
        return read_ani(path, keys)  # which names a missing file, as always
    return read_ase(path, keys)


def read_attrs(path: str | os.PathLike) -> dict:
    """The file-level declarations (``energy_unit``, ``length_unit``) of any data file."""
    if is_hdf5(path) or not Path(path).exists():
        return read_file_attrs(path)
    return file_attrs(path)


def any_property_keys(path: str | os.PathLike) -> list[str]:
    """The property keys of any data file (sorted)."""
    if is_hdf5(path) or not Path(path).exists():
        return hdf5_property_keys(path)
    return property_keys(path)


def file_attrs(path: str | os.PathLike) -> dict[str, str]:
    """The file's unit declarations: ``energy_unit`` / ``length_unit`` from the frames' info, which
    must agree across frames (absent in every frame: not declared)."""
    frames = read_frames(path)
    out = {}
    for key in UNIT_KEYS:
        seen = [(i, _text(f.values[key]).strip()) for i, f in enumerate(frames) if key in f.values]
        if not seen:
            continue
        if len(seen) != len(frames):
            missing = next(i for i, f in enumerate(frames) if key not in f.values)
            raise DataFileError(
                f"{path}: frame {seen[0][0]} declares {key}={seen[0][1]!r} but frame {missing} declares none; "
                f"declare {key} in every frame or in none"
            )
        first = seen[0][1]
        for i, v in seen:
            if v.lower() != first.lower():
                raise DataFileError(f"{path}: frame {i} declares {key}={v!r}, frame 0 {first!r}; one file, one unit")
        out[key] = first
    return out


def property_keys(path: str | os.PathLike) -> list[str]:
    """Names of the numeric per-configuration values and per-atom arrays of the frames (sorted)."""
    keys = set()
    for f in read_frames(path):
        for k, v in f.values.items():
            if k in RESERVED or isinstance(v, str | bytes | bool | np.bool_):
                continue
            if np.asarray(v).dtype.kind in "fiu":
                keys.add(k)
    return sorted(keys)


def _value(path, i: int, frame: Frame, key: str):
    """A frame's value for ``key``: a float (per configuration), an (n, 3) array, or None (absent)."""
    if key not in frame.values:
        return None
    v = frame.values[key]
    n = len(frame.numbers)
    where = f"{path}: frame {i}, key {key!r}"
    if isinstance(v, str | bytes | bool | np.bool_):
        raise DataFileError(f"{where}: expected a number or an ({n}, 3) array of numbers, got {v!r}")
    arr = np.asarray(v)
    if arr.dtype.kind not in "fiu":
        raise DataFileError(f"{where}: expected numbers, got an array of dtype {arr.dtype}")
    if arr.size == 1 and arr.shape != (n, 3):
        return float(arr.reshape(()))
    if arr.shape != (n, 3):
        raise DataFileError(
            f"{where}: expected a number (per configuration) or an array of shape ({n}, 3) (per atom), got shape "
            f"{arr.shape}"
        )
    return arr.astype(np.float64)


def _bonds(numbers: np.ndarray, positions: np.ndarray) -> bytes:
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    r = covalent_radii[numbers]
    bonded = np.triu(d < BOND_FACTOR * (r[:, None] + r[None]), k=1)
    return np.packbits(bonded).tobytes()


def group_frames(path: str | os.PathLike, frames: Sequence[Frame]) -> list[tuple[str, list[int]]]:
    """(molecule name, frame indices) in order of first appearance (see the module docstring)."""
    from ase.formula import Formula

    has_id = [MOLECULE_KEY in f.values for f in frames]
    groups: dict[object, list[int]] = {}
    names: dict[object, str] = {}
    if any(has_id):
        if not all(has_id):
            raise DataFileError(
                f"{path}: frame {has_id.index(True)} names its molecule (info {MOLECULE_KEY!r}) but frame "
                f"{has_id.index(False)} does not; name the molecule of every frame, or of none (then frames are "
                "grouped by elements and bonds)"
            )
        for i, f in enumerate(frames):
            name = _text(f.values[MOLECULE_KEY]).strip()
            if not name:
                raise DataFileError(f"{path}: frame {i}, key {MOLECULE_KEY!r}: empty molecule name")
            first = groups.setdefault(name, [])
            if first and not np.array_equal(frames[first[0]].numbers, f.numbers):
                raise DataFileError(
                    f"{path}: frame {i}, molecule {name!r}: its elements {_symbols(f.numbers)} differ from those of "
                    f"frame {first[0]} of the same molecule ({_symbols(frames[first[0]].numbers)}); the frames of a "
                    "molecule must list the same atoms in the same order"
                )
            first.append(i)
            names[name] = name
        return [(names[k], v) for k, v in groups.items()]
    per_formula: dict[str, int] = {}
    for i, f in enumerate(frames):
        key = (f.numbers.tobytes(), _bonds(f.numbers, f.positions))
        if key not in groups:
            formula = Formula.from_list([chemical_symbols[z] for z in f.numbers]).format("hill")
            per_formula[formula] = per_formula.get(formula, 0) + 1
            k = per_formula[formula]
            names[key] = formula if k == 1 else f"{formula}-{k}"
            groups[key] = []
        groups[key].append(i)
    return [(names[k], v) for k, v in groups.items()]


def _symbols(numbers) -> str:
    return "".join(chemical_symbols[z] for z in numbers)


def read_ase(path: str | os.PathLike, keys: Iterable[str] | None = None) -> list[MoleculeGroup]:
    """Every configuration of an ASE-readable file as molecule groups, in the file's units.

    keys: property keys to load; None loads every numeric value of the frames
    (:func:`property_keys`). A key absent from some frames is NaN there; from every frame, an error.
    """
    frames = read_frames(path)
    wanted = property_keys(path) if keys is None else list(dict.fromkeys(keys))
    for key in wanted:
        if key in RESERVED:
            raise DataFileError(f"{path}: key {key!r} describes a frame (molecule, units, kind); it is not a property")
    missing = [k for k in wanted if not any(k in f.values for f in frames)]
    if missing:
        raise DataFileError(
            f"{path}: key(s) {missing} found in no frame; keys present include {property_keys(path)[:20]}"
        )
    groups = []
    for name, idx in group_frames(path, frames):
        first = frames[idx[0]]
        n = len(first.numbers)
        props = {}
        for key in wanted:
            values = [_value(path, i, frames[i], key) for i in idx]
            kinds = {"scalar" if isinstance(v, float) else "atoms" for v in values if v is not None}
            if len(kinds) > 1:
                i = next(i for i, v in zip(idx, values, strict=True) if not isinstance(v, float) and v is not None)
                raise DataFileError(
                    f"{path}: frame {i}, key {key!r}: an array here but a number in other frames of molecule {name!r}"
                )
            if not kinds:
                continue  # this molecule lacks the key: from_groups fills NaN
            if kinds == {"scalar"}:
                props[key] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            else:
                props[key] = np.stack([np.full((n, 3), np.nan) if v is None else v for v in values])
        groups.append(
            MoleculeGroup(
                name,
                first.numbers.copy(),
                np.stack([frames[i].positions for i in idx]),
                props,
                {},
                _conformers(path, name, idx, frames),
            )
        )
    return groups


def _conformers(path, name: str, idx: list[int], frames: Sequence[Frame]) -> np.ndarray | None:
    has = [CONFORMER_KEY in frames[i].values for i in idx]
    if not any(has):
        return None
    if not all(has):
        raise DataFileError(
            f"{path}: frame {idx[has.index(False)]} of molecule {name!r} has no {CONFORMER_KEY!r} but frame "
            f"{idx[has.index(True)]} has; give every frame of a molecule a conformer index, or none"
        )
    raw = [frames[i].values[CONFORMER_KEY] for i in idx]
    ok = all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) and v >= 0 for v in raw)
    out = np.asarray(raw, dtype=np.int64) if ok else None
    if out is None or len(np.unique(out)) != len(idx):
        raise DataFileError(
            f"{path}: molecule {name!r}, key {CONFORMER_KEY!r}: expected distinct non-negative integers, one per "
            f"frame, got {raw[:10]}"
        )
    return None if np.array_equal(out, np.arange(len(idx))) else out


def kinds(path: str | os.PathLike) -> dict[str, np.ndarray | None]:
    """{molecule: (n_conf,) text of ``info["kind"]`` per configuration, or None} in group order."""
    frames = read_frames(path)
    out = {}
    for name, idx in group_frames(path, frames):
        has = [KIND_KEY in frames[i].values for i in idx]
        out[name] = np.array([_text(frames[i].values[KIND_KEY]).strip() for i in idx]) if all(has) else None
        if any(has) and not all(has):
            raise DataFileError(
                f"{path}: molecule {name!r}: frame {idx[has.index(False)]} has no {KIND_KEY!r} but frame "
                f"{idx[has.index(True)]} has; mark every configuration of a molecule, or none"
            )
    return out


# ------------------------------------------------------------------------------------------
# writing


def _check_key(key: str) -> str:
    if not key or any(c.isspace() or c in "=\"'" for c in key) or ":" in key:
        raise ValueError(f"write_extxyz: {key!r} cannot be an extxyz key (no spaces, '=', quotes or ':')")
    if key in RESERVED:
        raise ValueError(f"write_extxyz: {key!r} is a key ekd uses to describe frames; rename the property")
    return key


def _quote(text: str) -> str:
    if any(c in text for c in '"\\\n'):
        raise ValueError(f"write_extxyz: {text!r} holds a quote, backslash or newline; extxyz cannot hold it as text")
    return f'"{text}"'


def write_extxyz(
    path: str | os.PathLike,
    groups: Sequence[MoleculeGroup],
    attrs: Mapping[str, str] | None = None,
    rename: Mapping[str, str] | None = None,
) -> Path:
    """Write molecule groups as extended XYZ, one frame per configuration, in group order.

    Per frame: ``molecule`` (the group name) and ``conformer`` (its identity within the group) in
    info; each property of the groups under ``rename.get(key, key)``: per-configuration values in
    info, (n_atoms, 3) arrays as columns; ``attrs`` (e.g. ``{"energy_unit": "eV", "length_unit":
    "Angstrom"}``) in every frame's info. Numbers as given (convert units before), NaN as ``nan``.
    Atomic, and read back and compared before it replaces ``path``.
    """
    rename = dict(rename or {})
    names = {}
    for g in groups:
        for key in g.properties:
            names[key] = _check_key(rename.get(key, key))
    if len(set(names.values())) != len(names):
        raise ValueError(f"write_extxyz: two properties would share an extxyz key: {names}")
    extra = [f"{_check_unit_key(k)}={_quote(str(v))}" for k, v in (attrs or {}).items()]

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            for g in groups:
                conformers = np.arange(g.n_conf) if g.conformers is None else g.conformers
                per_atom = [k for k, v in g.properties.items() if np.asarray(v).ndim == 3]
                scalar = [k for k, v in g.properties.items() if np.asarray(v).ndim == 1]
                columns = "species:S:1:pos:R:3" + "".join(f":{names[k]}:R:3" for k in per_atom)
                symbols = [chemical_symbols[z] for z in g.species]
                for c in range(g.n_conf):
                    info = [f"{MOLECULE_KEY}={_quote(g.name)}", f"{CONFORMER_KEY}={int(conformers[c])}"]
                    info += [f"{names[k]}={float(g.properties[k][c])!r}" for k in scalar]
                    out.write(f'{g.n_atoms}\nProperties={columns} {" ".join(info + extra)} pbc="F F F"\n')
                    blocks = [g.coordinates[c]] + [g.properties[k][c] for k in per_atom]
                    rows = np.concatenate(blocks, axis=1)
                    for s, row in zip(symbols, rows, strict=True):
                        out.write(s + " " + " ".join(repr(float(x)) for x in row) + "\n")
        _verify(tmp, groups, names, attrs or {})

    return atomic_write(path, write)


def _check_unit_key(key: str) -> str:
    if key not in UNIT_KEYS:
        raise ValueError(f"write_extxyz: attrs may hold {list(UNIT_KEYS)}, got {key!r}")
    return key


def _verify(tmp: Path, groups: Sequence[MoleculeGroup], names: dict[str, str], attrs: Mapping[str, str]) -> None:
    """Read the written file back as ekd will and compare every number and name."""
    back = read_ase(tmp, list(names.values()))
    if [g.name for g in back] != [g.name for g in groups]:
        wrong = next((a, b.name) for a, b in zip([g.name for g in groups], back, strict=False) if a != b.name)
        raise ValueError(
            f"write_extxyz: molecule name {wrong[0]!r} reads back as {wrong[1]!r} (ASE's extxyz reader turns text "
            "that looks like a number or T/F into one); rename the molecule"
        )
    for g, b in zip(groups, back, strict=True):
        same = np.array_equal(g.species, b.species) and np.array_equal(g.coordinates, b.coordinates)
        want = np.arange(g.n_conf) if g.conformers is None else g.conformers
        have = np.arange(b.n_conf) if b.conformers is None else b.conformers
        same &= np.array_equal(want, have)
        for key, arr in g.properties.items():
            same &= np.array_equal(np.asarray(arr, dtype=np.float64), b.properties.get(names[key]), equal_nan=True)
        if not same:
            raise ValueError(f"write_extxyz: molecule {g.name!r} does not read back as written ({tmp})")
    if file_attrs(tmp) != {k: str(v) for k, v in attrs.items()}:
        raise ValueError(f"write_extxyz: unit declarations {dict(attrs)} do not read back ({tmp})")


__all__ = [
    "CONFORMER_KEY",
    "any_property_keys",
    "MOLECULE_KEY",
    "file_attrs",
    "group_frames",
    "is_hdf5",
    "kinds",
    "property_keys",
    "read_ase",
    "read_attrs",
    "read_frames",
    "read_groups",
    "write_extxyz",
]
