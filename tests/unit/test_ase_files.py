"""ASE-readable data files (:mod:`ekd.data.ase_files`): extxyz and ASE databases in, extxyz out.

Data: GFN2-xTB labels of rattled G2 molecules (tests/conftest.py), with NaN holes punched in;
geometries for the grouping rule from ASE's G2 set. Every reference is the ANI HDF5 path of the
same numbers (ekd's own reader), nothing is stored.
"""

from __future__ import annotations

import numpy as np
import pytest

from ekd.data import DataFileError, DataUnitWarning, MoleculeGroup, Units, load_dataset, read_ani, write_ani
from ekd.data.ase_files import file_attrs, group_frames, read_ase, read_frames, write_extxyz

from ..conftest import KEYS, xtb_groups

HARTREE = {"energy_unit": "hartree", "length_unit": "angstrom"}


@pytest.fixture(scope="module")
def groups():
    """xTB groups with holes: a NaN energy, NaN forces of one configuration, a molecule without
    forces, and a subset group that records its configurations' identities."""
    pytest.importorskip("tblite.interface")
    gs = xtb_groups(("H2O", "CH4", "CH3OH", "NH3"), n_conf=4, seed=5)
    gs[0].properties[KEYS["energy"]][1] = np.nan
    gs[1].properties[KEYS["reference_forces"]][2] = np.nan
    del gs[2].properties[KEYS["reference_forces"]]
    g = gs[3]
    keep = [0, 2, 3]
    props = {k: v[keep] for k, v in g.properties.items()}
    gs[3] = MoleculeGroup(g.name, g.species, g.coordinates[keep], props, conformers=np.array(keep))
    return gs


def _same_groups(a, b, rename=None):
    rename = rename or {}
    assert [g.name for g in a] == [g.name for g in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.species, y.species) and x.species.dtype == y.species.dtype
        assert np.array_equal(x.coordinates, y.coordinates)  # bit for bit
        assert (x.conformers is None and y.conformers is None) or np.array_equal(x.conformers, y.conformers)
        assert set(rename.get(k, k) for k in x.properties) == set(y.properties)
        for k, v in x.properties.items():
            assert np.array_equal(v, y.properties[rename.get(k, k)], equal_nan=True)


def test_hdf5_to_extxyz_to_hdf5_keeps_every_number(tmp_path, groups):
    h5 = write_ani(tmp_path / "a.h5", groups, HARTREE)
    original = read_ani(h5)
    xyz = write_extxyz(tmp_path / "a.xyz", original, {"energy_unit": "Hartree", "length_unit": "Angstrom"})
    back = read_ase(xyz)
    _same_groups(original, back)
    assert file_attrs(xyz) == {"energy_unit": "Hartree", "length_unit": "Angstrom"}
    h5b = write_ani(tmp_path / "b.h5", back, file_attrs(xyz))
    _same_groups(original, read_ani(h5b))
    # and ekd's loader sees the same dataset from either file, units included
    a = load_dataset(h5, KEYS)
    b = load_dataset(xyz, KEYS)
    for name in ("species", "coordinates", "molecule", "conformer"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.molecule_names == b.molecule_names and set(a.properties) == set(b.properties)
    for k in a.properties:
        assert np.array_equal(a.properties[k], b.properties[k], equal_nan=True)
    assert a.ids() == b.ids()


def test_keys_can_be_renamed_and_units_must_agree(tmp_path, groups):
    rename = {KEYS["energy"]: "xtb_energy", KEYS["reference_forces"]: "xtb_forces"}
    xyz = write_extxyz(tmp_path / "r.xyz", groups, {"energy_unit": "Hartree"}, rename=rename)
    _same_groups(groups, read_ase(xyz), rename)
    keys = {"energy": "xtb_energy", "reference_forces": "xtb_forces"}
    assert len(load_dataset(xyz, keys, Units("HARTREE", None))) == 15
    with pytest.raises(DataFileError, match=r"r\.xyz: .*'ev' but the file's attribute energy_unit says 'hartree'"):
        load_dataset(xyz, keys, Units("eV", None))
    # the loader's plausibility checks apply: Angstrom coordinates declared as Bohr
    plain = write_extxyz(tmp_path / "p.xyz", groups, rename=rename)
    with pytest.warns(DataUnitWarning, match=r"p\.xyz: .*Angstrom read as Bohr"):
        load_dataset(plain, keys, Units("hartree", "Bohr"))


def test_unit_names_as_people_write_them():
    assert Units("eV", "Bohr") == Units("ev", "bohr")
    assert Units("Hartree", "Angstrom") == Units("hartree", "angstrom")
    assert Units("kcal/mol", "Å").length == "angstrom"
    with pytest.raises(ValueError, match=r"unknown energy unit 'kJ/mol'; expected one of Hartree, eV, kcal/mol"):
        Units("kJ/mol", None)


def _atoms(name, rattle=0.0, seed=0, order=None):
    from ase.build import molecule

    atoms = molecule(name)
    if order is not None:
        atoms = atoms[order]
    atoms.positions += rattle * np.random.default_rng(seed).normal(size=atoms.positions.shape)
    return atoms


def test_molecules_are_grouped_by_elements_and_bonds(tmp_path):
    import ase.io

    ethanol = [_atoms("CH3CH2OH", 0.03, s) for s in range(3)]
    z = ethanol[0].numbers
    ether = _atoms("CH3OCH3")
    # dimethyl ether with its atoms listed in ethanol's element order: same formula and order, other bonds
    perm = np.concatenate([np.flatnonzero(ether.numbers == v) for v in dict.fromkeys(z)])
    ether = ether[perm]
    assert np.array_equal(ether.numbers, z)
    shuffled = ethanol[0][np.roll(np.arange(len(z)), 1)]  # ethanol, atoms in another order
    frames = [ethanol[0], ether, ethanol[1], shuffled, ethanol[2], _atoms("H2O")]
    for i, a in enumerate(frames):
        a.info["xtb_energy"] = -10.0 - i
    path = tmp_path / "mixed.xyz"
    ase.io.write(path, frames, format="extxyz")
    assert group_frames(path, read_frames(path)) == [
        ("C2H6O", [0, 2, 4]),
        ("C2H6O-2", [1]),
        ("C2H6O-3", [3]),
        ("H2O", [5]),
    ]
    # molecule ids, when given, decide
    for i, a in enumerate(frames):
        a.info["molecule"] = "w" if i == 5 else "ethanolish" if i != 3 else "odd"
    frames[3] = ethanol[1].copy()
    frames[3].info.update(molecule="odd", xtb_energy=-1.0)
    ase.io.write(path, frames, format="extxyz")
    names = [(g.name, g.n_conf) for g in read_ase(path, ["xtb_energy"])]
    assert names == [("ethanolish", 4), ("odd", 1), ("w", 1)]


def test_an_ase_database_reads_like_extxyz(tmp_path, groups):
    import ase.db
    from ase import Atoms

    # database keys are words: energies as key-value pairs, forces in the row's data
    rename = {KEYS["energy"]: "xtb_energy", KEYS["reference_forces"]: "xtb_forces"}
    keys = {"energy": "xtb_energy", "reference_forces": "xtb_forces"}
    xyz = write_extxyz(tmp_path / "d.xyz", groups, rename=rename)
    db = ase.db.connect(tmp_path / "d.db")
    for g in groups:
        conformers = np.arange(g.n_conf) if g.conformers is None else g.conformers
        for c in range(g.n_conf):
            data = {}
            if KEYS["reference_forces"] in g.properties:
                data["xtb_forces"] = g.properties[KEYS["reference_forces"]][c]
            db.write(Atoms(numbers=g.species, positions=g.coordinates[c]), molecule=g.name,
                     conformer=int(conformers[c]), xtb_energy=g.properties[KEYS["energy"]][c], data=data)  # fmt: skip
    a = load_dataset(xyz, keys, check_plausible=False)
    b = load_dataset(tmp_path / "d.db", keys, check_plausible=False)
    assert a.ids() == b.ids() and np.array_equal(a.coordinates, b.coordinates)
    for k in a.properties:
        assert np.array_equal(a.properties[k], b.properties[k], equal_nan=True)


def _frame(extra="", props="species:S:1:pos:R:3", atoms="H 0 0 0\nH 0.74 0 0\n", pbc='pbc="F F F"'):
    return f"2\nProperties={props} {extra} {pbc}\n{atoms}"


@pytest.mark.parametrize(
    ("text", "keys", "message"),
    [
        ("not a molecule file at all\n", {"energy": "e"}, r"bad\.xyz: "),
        (_frame("e=1.0", pbc='pbc="T T T" Lattice="5 0 0 0 5 0 0 0 5"'), {"energy": "e"},
         r"bad\.xyz: frame 0: is periodic"),
        (_frame("e=1.0") + _frame('e="high"'), {"energy": "e"},
         r"bad\.xyz: frame 1, key 'e': expected a number or an \(2, 3\) array"),
        (_frame("e=1.0", props="species:S:1:pos:R:3:f:R:1", atoms="H 0 0 0 1\nH 0.74 0 0 2\n"),
         {"energy": "e", "reference_forces": "f"}, r"frame 0, key 'f': .*got shape \(2,\)"),
        (_frame("e=1.0"), {"energy": "energy"}, r"bad\.xyz: key\(s\) \['energy'\] found in no frame; keys present"),
        (_frame("e=1.0 molecule=a") + _frame("e=2.0"), {"energy": "e"},
         r"frame 0 names its molecule .* but frame 1 does not"),
        (_frame("e=1.0 energy_unit=eV") + _frame("e=2.0 energy_unit=Hartree"), {"energy": "e"},
         r"frame 1 declares energy_unit='Hartree', frame 0 'eV'"),
        (_frame("e=1.0 molecule=a conformer=1") + _frame("e=2.0 molecule=a conformer=1"), {"energy": "e"},
         r"molecule 'a', key 'conformer': expected distinct non-negative integers"),
    ],
)  # fmt: skip
def test_bad_files_name_file_frame_key_and_expectation(tmp_path, text, keys, message):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(DataFileError, match=message):
        load_dataset(path, keys, Units("hartree", "angstrom"), check_plausible=False)


def test_write_refuses_what_would_not_read_back(tmp_path):
    one = MoleculeGroup("007", np.array([1]), np.zeros((1, 1, 3)), {"e": np.array([1.0])})
    with pytest.raises(ValueError, match="molecule name '007' reads back as '7'"):
        write_extxyz(tmp_path / "x.xyz", [one])
    assert not (tmp_path / "x.xyz").exists() and not list(tmp_path.iterdir())  # nothing left behind
    with pytest.raises(ValueError, match="cannot be an extxyz key"):
        write_extxyz(tmp_path / "x.xyz", [MoleculeGroup("w", one.species, one.coordinates, {"a b": np.ones(1)})])


def test_config_and_score_take_unit_names_as_people_write_them():
    from ekd import config

    d = config.loads("data: {train: a.xyz, test: null, energy_unit: eV, length_unit: Bohr}").data
    assert (d.energy_unit, d.length_unit) == ("ev", "bohr")
    assert config.loads("data: {energy_unit: Hartree}").digest() == config.loads("{}").digest()  # same meaning
    with pytest.raises(config.ConfigError, match=r"data\.energy_unit: unknown energy unit 'kJ/mol'"):
        config.loads("data: {energy_unit: kJ/mol}")


def test_training_from_the_extxyz_gives_the_same_member(tmp_path, groups):
    """Same numbers in the same order: the member trained from the extxyz copy of a data file is
    the member trained from the file (every logged number and every weight equal, not close)."""
    import dataclasses
    import json

    import torch

    from ekd.config import ModelConfig, default_config
    from ekd.data import random_split
    from ekd.training.train import MemberSpec, train_member

    h5 = write_ani(tmp_path / "t.h5", groups, HARTREE)
    xyz = write_extxyz(tmp_path / "t.xyz", read_ani(h5), {"energy_unit": "Hartree", "length_unit": "Angstrom"})
    base = default_config()
    cfg = dataclasses.replace(
        base,
        model=ModelConfig(l_max=1, n_interactions=1, n_atom_layers=1, width=8, n_sensitivities=4),
        train=dataclasses.replace(
            base.train, lr=5e-3, batch_size=4, max_epochs=3, force_schedule=((1, 10.0),), kernels="pytorch"
        ),  # fmt: skip
    )
    out = {}
    for name, path in (("h5", h5), ("xyz", xyz)):
        data = load_dataset(path, KEYS).require("energy", "reference_forces")  # the baseline's targets
        rest, test = random_split(np.arange(len(data)), 0.2, seed=0)
        train, valid = random_split(rest, 0.25, seed=1)
        spec = MemberSpec("baseline", 0, 0, seed=3, forces="reference_forces")
        train_member(spec, cfg, data, {"train": train, "valid": valid, "test": test}, tmp_path / name)
        log = [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        out[name] = ([{k: v for k, v in e.items() if k != "seconds"} for e in log], tmp_path / name / "model.pt")
    assert len(out["h5"][0]) == 3 and out["h5"][0] == out["xyz"][0]
    a, b = (torch.load(p, weights_only=True, map_location="cpu") for p in (out["h5"][1], out["xyz"][1]))
    flat_a, flat_b = _tensors(a), _tensors(b)
    assert flat_a.keys() == flat_b.keys() and len(flat_a) > 4
    assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)


def _tensors(obj, prefix=""):
    """{path: tensor} of every tensor in a nested checkpoint."""
    import torch

    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}
