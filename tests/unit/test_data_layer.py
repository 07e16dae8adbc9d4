"""ANI-layout reading/writing, unit conversion, masking, splits and the hippynn database."""

import h5py
import numpy as np
import pytest

from ekd.data import DataFileError, MoleculeGroup, Units, load_dataset, random_split, read_ani, write_ani
from ekd.units import BOHR_TO_ANGSTROM, HARTREE_TO_KCALMOL

RNG = np.random.default_rng(7)


def _rattled(name, n):
    """(n, atoms, 3) Angstrom: ASE's G2 geometry of ``name``, rattled by 0.05 Angstrom."""
    from ase.build import molecule

    return molecule(name).positions[None] + 0.05 * RNG.normal(size=(n, len(molecule(name)), 3))


def _groups():
    water = MoleculeGroup(
        "H2O",
        np.array([8, 1, 1]),
        _rattled("H2O", 4),
        {
            "wb97x_dz.energy": -76.0 + 0.01 * RNG.normal(size=4),
            "wb97x_dz.forces": 0.05 * RNG.normal(size=(4, 3, 3)),
            "ccsd(t)_cbs.energy": np.array([-76.3, np.nan, -76.31, -76.29]),
        },
    )
    methane = MoleculeGroup(
        "CH4",
        np.array([6, 1, 1, 1, 1]),
        _rattled("CH4", 3),
        {
            "wb97x_dz.energy": -40.5 + 0.01 * RNG.normal(size=3),
            "wb97x_dz.forces": np.full((3, 5, 3), np.nan),
            "ccsd(t)_cbs.energy": np.array([-40.4, -40.41, -40.42]),
        },
    )
    return [water, methane]


KEYS = {"energy": "ccsd(t)_cbs.energy", "dft_energy": "wb97x_dz.energy", "forces": "wb97x_dz.forces"}


def test_round_trip_converts_units_and_masks_per_key(tmp_path):
    groups = _groups()
    path = write_ani(tmp_path / "ani.h5", groups)
    ds = load_dataset(path, KEYS)
    assert len(ds) == 7
    assert ds.molecule_names == ("CH4", "H2O")  # groups are read in sorted order
    water = ds.molecule == ds.molecule_names.index("H2O")
    # Hartree -> kcal/mol, per configuration, NaN kept as "unknown" for that key only
    np.testing.assert_allclose(
        ds.properties["energy"][water], groups[0].properties["ccsd(t)_cbs.energy"] * HARTREE_TO_KCALMOL
    )
    assert ds.mask("energy").sum() == 6 and ds.mask("dft_energy").all()
    # forces: Hartree/A -> kcal/mol/A; methane has none
    assert ds.mask("forces").tolist() == [False] * 3 + [True] * 4
    np.testing.assert_allclose(
        ds.properties["forces"][water][:, :3], groups[0].properties["wb97x_dz.forces"] * HARTREE_TO_KCALMOL
    )
    # padding: water is padded to methane's 5 atoms with species 0
    assert ds.species.shape == (7, 5) and (ds.species[water][:, 3:] == 0).all()
    assert ds.require("energy", "forces").n_atoms.tolist() == [3, 3, 3]
    # conformer identity survives
    assert ds.conformer[water].tolist() == [0, 1, 2, 3]


def test_save_and_reload_are_identical(tmp_path):
    ds = load_dataset(write_ani(tmp_path / "a.h5", _groups()), KEYS)
    out = ds.save(tmp_path / "b.h5", {"energy": "x.energy", "forces": "x.forces"}, Units("ev", "bohr"))
    again = load_dataset(out, {"energy": "x.energy", "forces": "x.forces"})  # units from the file attrs
    np.testing.assert_allclose(again.coordinates, ds.coordinates, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(again.properties["energy"], ds.properties["energy"], rtol=1e-12)
    np.testing.assert_allclose(again.properties["forces"], ds.properties["forces"], rtol=1e-12)
    with h5py.File(out) as f:  # really stored in Bohr
        np.testing.assert_allclose(f["H2O/coordinates"][()] * BOHR_TO_ANGSTROM, ds.coordinates[3:, :3])


def test_comp6_style_nested_groups_with_symbol_species(tmp_path):
    path = tmp_path / "comp6.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("gdb11_s10/gdb11_s10-0")
        g["species"] = np.array([b"O", b"C", b"H", b"H"])
        g["coordinates"] = _rattled("H2CO", 2)  # atoms O, C, H, H
        g["energies"] = np.array([-114.1, -114.0])
        g["smiles"] = np.array([b"C=O"])
    ds = load_dataset(path, {"energy": "energies"})
    assert ds.molecule_names == ("gdb11_s10/gdb11_s10-0",)
    assert ds.species[0].tolist() == [8, 6, 1, 1]
    np.testing.assert_allclose(ds.properties["energy"], np.array([-114.1, -114.0]) * HARTREE_TO_KCALMOL)


def _write(path, **datasets):
    with h5py.File(path, "w") as f:
        g = f.create_group("mol")
        for k, v in datasets.items():
            g[k] = v
    return path


@pytest.mark.parametrize(
    ("arrays", "keys", "message"),
    [
        ({"coordinates": np.zeros((1, 2, 3)), "x.energy": [1.0]}, {"energy": "x.energy"}, "no 'atomic_numbers'"),
        (
            {"atomic_numbers": [1, 1], "coordinates": np.zeros((1, 3, 3)), "x.energy": [1.0]},
            {"energy": "x.energy"},
            r"expected shape \(n_conf, 2, 3\)",
        ),
        (
            {"atomic_numbers": [1, 0], "coordinates": np.zeros((1, 2, 3)), "x.energy": [1.0]},
            {"energy": "x.energy"},
            "unknown atomic number 0",
        ),
        (
            {"species": [b"H", b"Qq"], "coordinates": np.zeros((1, 2, 3)), "x.energy": [1.0]},
            {"energy": "x.energy"},
            "unknown element symbol 'Qq'",
        ),
        (
            {"atomic_numbers": [1, 1], "coordinates": np.array([[[0, 0, 0], [np.nan, 0, 0]]]), "x.energy": [1.0]},
            {"energy": "x.energy"},
            "configuration 0 has NaN",
        ),
        (
            {"atomic_numbers": [1, 1], "coordinates": np.zeros((2, 2, 3)), "x.energy": [1.0]},
            {"energy": "x.energy"},
            "expected 2 configurations",
        ),
        (
            {"atomic_numbers": [1, 1], "coordinates": np.zeros((1, 2, 3)), "x.energy": [1.0]},
            {"energy": "ccsd(t)_cbs.energy"},
            r"\['ccsd\(t\)_cbs.energy'\] found in no group",
        ),
    ],
)
def test_bad_files_name_group_and_key(tmp_path, arrays, keys, message):
    path = _write(tmp_path / "bad.h5", **arrays)
    with pytest.raises(DataFileError, match=message) as err:
        load_dataset(path, keys)
    assert str(path) in str(err.value)


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_ani(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataFileError, match="not a readable HDF5 file"):
        read_ani(tmp_path / "text.h5")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(DataFileError, match="no group with a 'coordinates'"):
        read_ani(tmp_path / "empty.h5")


def test_empty_after_masking(tmp_path):
    path = _write(
        tmp_path / "nan.h5", atomic_numbers=[1, 1], coordinates=np.zeros((2, 2, 3)), **{"x.energy": [np.nan, np.nan]}
    )
    ds = load_dataset(path, {"energy": "x.energy"})
    with pytest.raises(DataFileError, match=r"no configuration has all of \['energy'\]"):
        ds.require("energy")


def test_random_split_is_deterministic_disjoint_and_complete():
    idx = np.arange(100)
    rest, part = random_split(idx, 0.1, seed=3)
    assert len(part) == 10 and len(rest) == 90
    assert set(rest) | set(part) == set(idx) and not set(rest) & set(part)
    again = random_split(idx, 0.1, seed=3)
    assert (again[1] == part).all()
    assert not (random_split(idx, 0.1, seed=4)[1] == part).all()
    with pytest.raises(ValueError, match="between 0 and 1"):
        random_split(idx, 1.5, seed=0)


def test_database_arrays_are_the_dataset_padded(tmp_path):
    from ekd.data.database import database_arrays

    ds = load_dataset(write_ani(tmp_path / "a.h5", _groups()), KEYS).require("energy")
    arrays = database_arrays(ds, ["energy"])
    assert arrays["indices"].tolist() == list(range(len(ds)))
    assert tuple(arrays["energy"].shape) == (len(ds), 1)
    assert str(arrays["species"].dtype) == "torch.int64"
    np.testing.assert_allclose(arrays["energy"][:, 0].numpy(), ds.properties["energy"], rtol=1e-6)
    np.testing.assert_array_equal(arrays["species"].numpy(), ds.species)
    with pytest.raises(ValueError, match="missing \\(NaN\\) for 3 of 6"):
        database_arrays(ds, ["forces"])


# --- malformed groups are refused, naming them (issue 14, item 4)


def _h5(path, build):
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _good(g, n=2):
    g["atomic_numbers"] = [8, 1, 1]
    g["coordinates"] = _rattled("H2O", n)
    g["x.energy"] = np.full(n, -76.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        # a group with configuration data but no coordinates was skipped without a word
        (
            lambda f: (_good(f.create_group("ok")), f.create_group("lost").update({"atomic_numbers": [1, 1]})),
            r"group 'lost' holds \['atomic_numbers'\] but no 'coordinates' dataset",
        ),
        (
            lambda f: (_good(f.create_group("ok")), f.create_group("lost").update({"x.energy": [1.0]})),
            r"group 'lost' holds \['x.energy'\] but no 'coordinates'",
        ),
        (
            lambda f: f.create_group("w").update({"atomic_numbers": [1, 1], "coordinates/xyz": np.zeros((1, 2, 3))}),
            r"group 'w': 'coordinates' is a group, expected a dataset",
        ),
        (
            lambda f: f.create_group("w").update(
                {"atomic_numbers": [8, 1, 1], "coordinates": _rattled("H2O", 2), "x.energy": [b"-76.0", b"-76.1"]}
            ),
            r"group 'w', key 'x.energy': expected numbers, one per configuration .* got strings",
        ),
        (
            lambda f: f.create_group("w").update(
                {"atomic_numbers": [8, 1, 1], "coordinates": _rattled("H2O", 2), "x.energy": -76.0}
            ),
            r"key 'x.energy': expected numbers, one per configuration .* got a scalar",
        ),
        (
            lambda f: f.create_group("w").update(
                {"atomic_numbers": [8, 1, 1], "coordinates": _rattled("H2O", 2), "x.energy/a": [1.0]}
            ),
            r"key 'x.energy': is a group, expected a dataset",
        ),
        (
            lambda f: f.create_group("w").update(
                {"atomic_numbers": [8, 1, 1], "coordinates": _rattled("H2O", 2), "x.energy": np.zeros((2, 2))}
            ),
            r"key 'x.energy': per-atom arrays must be \(n_conf, 3\[, 3\]\), got \(2, 2\)",
        ),
        (
            lambda f: f.create_group("w").update(
                {"atomic_numbers/z": [8, 1, 1], "coordinates": _rattled("H2O", 2), "x.energy": [1.0, 2.0]}
            ),
            r"'atomic_numbers' is a group, expected a dataset",
        ),
        (
            lambda f: f.create_group("w").update(
                {"atomic_numbers": [8, 1, 1], "coordinates": np.array([b"a", b"b"]), "x.energy": [1.0, 2.0]}
            ),
            r"key 'coordinates': expected numbers, got strings",
        ),
    ],
)
def test_malformed_groups_are_refused_by_name(tmp_path, build, message):
    path = _h5(tmp_path / "bad.h5", build)
    with pytest.raises(DataFileError, match=message) as err:
        load_dataset(path, {"energy": "x.energy"})
    assert str(path) in str(err.value)


def test_folders_of_groups_and_metadata_are_still_read(tmp_path):
    """COMP6 nests configuration groups in folders; a group with neither species nor a configured
    key (metadata) is not configuration data and stays ignored."""

    def build(f):
        _good(f.create_group("folder/mol"))
        f.create_group("meta").create_dataset("note", data=b"made by hand")

    ds = load_dataset(_h5(tmp_path / "ok.h5", build), {"energy": "x.energy"})
    assert ds.molecule_names == ("folder/mol",) and len(ds) == 2


# --- units: declared, or the file's, never both in contradiction (issue 14, items 1, 4, 11)


def _unit_file(path, **attrs):
    path = write_ani(path, _groups())
    with h5py.File(path, "a") as f:
        f.attrs.update(attrs)
    return path


def test_declared_units_must_agree_with_the_files_attributes(tmp_path):
    from ekd.data import resolve_units

    plain = _unit_file(tmp_path / "plain.h5")
    assert resolve_units(plain) == Units("hartree", "angstrom")  # the ANI releases' units
    assert resolve_units(plain, Units("kcal/mol", None)) == Units("kcal/mol", "angstrom")
    stamped = _unit_file(tmp_path / "stamped.h5", energy_unit="Hartree", length_unit="angstrom")
    assert resolve_units(stamped, Units("hartree", "angstrom")) == Units()
    assert resolve_units(stamped, Units(None, None)) == Units()
    with pytest.raises(
        DataFileError, match=r"data.energy_unit is 'kcal/mol' but the file's attribute energy_unit says 'hartree'"
    ) as err:
        load_dataset(stamped, KEYS, Units("kcal/mol", "angstrom"), declared_as=("data.energy_unit", "x"))
    assert str(stamped) in str(err.value)
    with pytest.raises(DataFileError, match=r"--length-unit is 'bohr' but the file's attribute length_unit says"):
        load_dataset(stamped, KEYS, Units(None, "bohr"), declared_as=("--energy-unit", "--length-unit"))


def test_unknown_unit_names_are_errors(tmp_path):
    odd = _unit_file(tmp_path / "odd.h5", energy_unit="kJ/mol")
    with pytest.raises(DataFileError, match=r"attribute energy_unit = 'kJ/mol' is not a unit ekd knows") as err:
        load_dataset(odd, KEYS)
    assert str(odd) in str(err.value)
    with pytest.raises(ValueError, match=r"unknown length unit 'nm'"):
        Units("hartree", "nm")


def test_plausible_energies_do_not_warn(tmp_path, xtb_dataset):
    """GFN2-xTB totals (valence only) in Hartree and kcal/mol, atomization-like energies in
    kcal/mol: no warning (pytest turns warnings into errors)."""
    from ekd.data import check_plausible_units

    assert check_plausible_units(xtb_dataset, Units("hartree", "angstrom")) == []
    # xtb_dataset holds kcal/mol internally: the same numbers as a kcal/mol file
    assert check_plausible_units(xtb_dataset, Units("kcal/mol", "angstrom")) == []
    atomization = xtb_dataset.with_properties(energy=-100.0 * xtb_dataset.n_atoms)
    assert check_plausible_units(atomization, Units("kcal/mol", "angstrom")) == []


def test_implausible_energies_and_distances_warn(tmp_path):
    from ekd.data import DataUnitWarning
    from ekd.units import HARTREE_TO_KCALMOL

    groups = _groups()
    # the same molecules with energies in kcal/mol and coordinates in Bohr, as a file without
    # unit attributes (the ANI releases have none) read with the defaults
    for g in groups:
        g.properties = {k: v * HARTREE_TO_KCALMOL for k, v in g.properties.items()}
        g.coordinates = g.coordinates / BOHR_TO_ANGSTROM
    path = write_ani(tmp_path / "kcal_bohr.h5", groups)
    with pytest.warns(DataUnitWarning) as record:
        load_dataset(path, KEYS)
    texts = [str(w.message) for w in record]
    assert any("energies ('ccsd(t)_cbs.energy', read as hartree)" in t and "kcal/mol or eV" in t for t in texts)
    assert any("Bohr read as Angstrom" in t for t in texts)
    # declared correctly: no warning (pytest turns warnings into errors), Hartree/Angstrom values
    right = load_dataset(path, KEYS, Units("kcal/mol", "bohr"))
    ref = load_dataset(write_ani(tmp_path / "ref.h5", _groups_again(groups)), KEYS)
    np.testing.assert_allclose(right.coordinates, ref.coordinates, rtol=1e-12)
    # Angstrom declared as Bohr
    with pytest.warns(DataUnitWarning, match="Angstrom read as Bohr"):
        load_dataset(ref.source, KEYS, Units("hartree", "bohr"))
    # all-electron totals in Hartree declared as kcal/mol (x 1/627) or eV
    for unit in ("kcal/mol", "ev"):
        with pytest.warns(DataUnitWarning, match=rf"read as {unit}\) are 1.0\dx the free atoms' all-electron total"):
            load_dataset(ref.source, KEYS, Units(unit, "angstrom"))


def _groups_again(groups):
    from ekd.units import HARTREE_TO_KCALMOL

    return [
        MoleculeGroup(
            g.name,
            g.species,
            g.coordinates * BOHR_TO_ANGSTROM,
            {k: v / HARTREE_TO_KCALMOL for k, v in g.properties.items()},
        )
        for g in groups
    ]


def test_configuration_identity_survives_filters_and_files(tmp_path):
    ds = load_dataset(write_ani(tmp_path / "a.h5", _groups()), KEYS)
    known = ds.require("energy")  # drops water's conformer 1
    assert ("H2O", 1) not in known.ids() and ("H2O", 2) in known.ids()
    again = load_dataset(known.save(tmp_path / "b.h5", {"energy": "x.energy"}), {"energy": "x.energy"})
    assert again.ids() == known.ids()
    pick = [("H2O", 3), ("CH4", 0)]
    np.testing.assert_array_equal(
        again.properties["energy"][again.positions(pick)], known.properties["energy"][known.positions(pick)]
    )
    with pytest.raises(DataFileError, match=r"no configuration 1 of molecule 'H2O', named by split 'train'"):
        again.positions([("H2O", 1)], "split 'train'")
