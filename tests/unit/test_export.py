"""Deployed-model files (ekd.deploy.model_file) and the ASE calculator (ekd.deploy.calculator) on ekd's toy model.

No reference numbers are stored: forces are checked against central finite differences of the
energy (ASE's calculate_numerical_forces), stress against finite strains
(calculate_numerical_stress), both on float64 models.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from ekd.deploy.calculator import EKDCalculator
from ekd.deploy.model_file import FORMAT, ModelFileError, ModelMetadata, _quiet_jit, load_model, save_model
from ekd.deploy.plugin import lammps_plugin_dir
from ekd.testing import toy_model

SPECIES = ("C", "H", "N", "O")


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    module, meta = toy_model(SPECIES, cutoff=3.5, n_interactions=2, seed=0)
    path = tmp_path_factory.mktemp("model") / "toy.pt"
    save_model(module, path, meta)
    return path


def _rewrite(src, dst, **changes):
    """Copy of a model file with metadata fields changed inside the zip (bypassing save_model's
    checks; the weights and their bound copy of the metadata stay as they were)."""
    with zipfile.ZipFile(src) as z:
        meta = json.loads(z.read(next(n for n in z.namelist() if n.endswith("extra/metadata.json"))))
    meta.update(changes)
    for k in [k for k, v in changes.items() if v is _DROP]:
        del meta[k]
    return replace_entry(src, dst, "extra/metadata.json", json.dumps(meta).encode())


def replace_entry(src, dst, suffix: str, data: bytes | None):
    """Copy of the zip ``src`` with the entry ending in ``suffix`` replaced by ``data`` (None: dropped)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename.endswith(suffix):
                if data is not None:
                    zout.writestr(info.filename, data)
            else:
                zout.writestr(info.filename, zin.read(info.filename))
    return dst


_DROP = object()


# ---------------------------------------------------------------------------------------------
# metadata


def test_metadata_round_trip(toy_file):
    module, meta = load_model(toy_file)
    assert meta.format == FORMAT
    assert meta.species == SPECIES and meta.atomic_numbers == (6, 1, 7, 8)
    assert (meta.cutoff, meta.n_interactions, meta.dtype) == (3.5, 2, "float64")
    assert (meta.energy_unit, meta.length_unit) == ("kcal/mol", "angstrom")
    assert meta.torch_version == torch.__version__
    assert meta.role == "toy" and meta.ops_library is None
    assert ModelMetadata.from_json(meta.to_json()) == meta
    # the module obeys the interface: per-atom energies of every atom given
    species = torch.tensor([6, 1, 1])
    first, second = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 0, 2, 0])
    r = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.1, 0], [0, -1.1, 0]], dtype=torch.float64)
    assert module(species, first, second, r).shape == (3,)


def test_save_fills_versions_and_checks_first(tmp_path):
    module, meta = toy_model(SPECIES, 3.5, 1)
    stored = save_model(module, tmp_path / "m.pt", replace(meta, torch_version="", ekd_version="0.0.0"))
    assert stored.torch_version == torch.__version__
    with pytest.raises(ModelFileError, match="not element symbols"):
        save_model(module, tmp_path / "bad.pt", replace(meta, species=("C", "Xx")))
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(ModelFileError, match="metadata says dtype float32"):
        save_model(module, tmp_path / "bad.pt", replace(meta, dtype="float32"))


BAD_METADATA = {
    "format": ({"format": "ekd-model-0"}, "model format is 'ekd-model-0'"),
    "missing field": ({"cutoff": _DROP}, r"lacks \['cutoff'\]"),
    "unknown field": ({"colour": "blue"}, r"unknown fields \['colour'\]"),
    "cutoff": ({"cutoff": -1.0}, "cutoff must be a positive number"),
    "n_interactions": ({"n_interactions": 1.5}, "n_interactions must be a non-negative integer"),
    "species empty": ({"species": []}, "species is empty"),
    "species unknown": ({"species": ["C", "Q"]}, r"species \['Q'\] are not element symbols"),
    "species twice": ({"species": ["C", "C"]}, "lists an element twice"),
    "energy unit": ({"energy_unit": "eV"}, "units are 'eV'/'angstrom'"),
    "dtype": ({"dtype": "float16"}, "dtype must be one of"),
    "ekd version": ({"ekd_version": "9.1.0"}, "exported by ekd 9.1.0"),
    "torch version": ({"torch_version": "1.13.1"}, "exported with torch 1.13.1"),
    "ops library": ({"ops_library": "libother.so"}, "needs op library 'libother.so'"),
    # the weights carry their own copy of the metadata: any edit of a valid field is refused
    "dtype vs parameters": ({"dtype": "float32"}, "metadata.json was edited or does not belong to these weights"),
    "cutoff edited": ({"cutoff": 3.0}, "metadata.json was edited or does not belong to these weights"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_load_rejects_bad_metadata(tmp_path, toy_file, case):
    changes, message = BAD_METADATA[case]
    path = _rewrite(toy_file, tmp_path / "bad.pt", **changes)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_load_rejects_unusable_files(tmp_path, toy_file):
    with pytest.raises(FileNotFoundError, match="export one with `ekd export`"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        load_model(junk)
    plain = tmp_path / "plain.pt"
    with _quiet_jit():
        torch.jit.save(torch.jit.load(str(toy_file)), str(plain))
    with pytest.raises(ModelFileError, match="no metadata.json"):
        load_model(plain)
    bad_json = tmp_path / "bad_json.pt"
    with _quiet_jit():
        torch.jit.save(torch.jit.load(str(toy_file)), str(bad_json), _extra_files={"metadata.json": "{nope"})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(bad_json)


def test_lammps_plugin_dir_holds_the_plugin():
    from pathlib import Path

    d = Path(lammps_plugin_dir())
    assert (d / "build_info.json").is_file()
    if not (d / "ekdplugin.so").is_file():
        pytest.skip("the LAMMPS plugin was not built (the lammps wheel was absent at build time)")


# ---------------------------------------------------------------------------------------------
# calculator


def _box(seed=0):
    from ase.build import molecule

    a = molecule("CH3ONO")
    a.rattle(0.05, seed=seed)
    b = molecule("CH3OH")
    b.positions += [3.2, 0.4, 0.3]
    a += b
    a.set_cell([7.5, 6.8, 7.1])
    a.pbc = True
    a.center()
    return a


def _assert_matches_finite_differences(analytic, numerical) -> None:
    # tolerance relative to the largest component: finite differences lose digits near zero
    np.testing.assert_allclose(analytic, numerical, rtol=0, atol=1e-6 * np.abs(analytic).max())


def test_calculator_forces_are_minus_energy_gradient(toy_file):
    for atoms in (_box(), _box()[:7]):  # periodic (images within 2 x cutoff), and a molecule in vacuum
        if len(atoms) == 7:
            atoms.pbc = False
        atoms.calc = EKDCalculator(toy_file)
        _assert_matches_finite_differences(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4))


def test_calculator_stress_is_strain_derivative(toy_file):
    atoms = _box(1)
    atoms.set_cell(atoms.cell + [[0, 0.3, 0], [0.2, 0, 0], [0, 0.1, 0]], scale_atoms=True)  # triclinic
    atoms.calc = EKDCalculator(toy_file)
    _assert_matches_finite_differences(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5))


def test_calculator_units_and_invariances(toy_file):
    from ekd.units import EV_TO_KCALMOL

    atoms = _box(2)
    atoms.calc = EKDCalculator(toy_file)
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    # eV from the model's kcal/mol
    module, _ = load_model(toy_file)
    from ekd.ops import library as _ops

    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(np.asarray(atoms.cell))
    i, j, shifts = _ops.neighbor_list(pos, 3.5, cell, True)
    r = _ops.pair_vectors(pos, i, j, shifts, cell)
    e_kcal = module(torch.tensor(atoms.numbers), i, j, r).sum().item()
    assert e == pytest.approx(e_kcal / EV_TO_KCALMOL, rel=1e-12)
    assert np.abs(f.sum(0)).max() < 1e-10 * np.abs(f).max()  # momentum conservation
    # translated and permuted
    moved = atoms.copy()
    moved.positions += [1.3, -0.7, 2.9]
    order = np.random.default_rng(0).permutation(len(atoms))
    moved = moved[order]
    moved.calc = EKDCalculator(toy_file)
    assert moved.get_potential_energy() == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose(moved.get_forces(), f[order], atol=1e-10)


def test_ensemble_mean_and_spread(tmp_path):
    from ase.build import molecule

    paths = []
    for seed, cutoff in ((0, 3.5), (1, 3.5), (2, 3.0)):
        module, meta = toy_model(SPECIES, cutoff, 2, seed=seed)
        paths.append(tmp_path / f"m{seed}.pt")
        save_model(module, paths[-1], meta)
    atoms = molecule("CH3ONO")
    members = []
    for p in paths:
        a = atoms.copy()
        a.calc = EKDCalculator(p)
        members.append((a.get_potential_energy(), a.get_forces()))
    atoms.calc = EKDCalculator(paths)
    es = np.array([m[0] for m in members])
    fs = np.array([m[1] for m in members])
    assert atoms.get_potential_energy() == pytest.approx(es.mean(), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), fs.mean(0), atol=1e-12)
    spread = np.sqrt(((fs - fs.mean(0)) ** 2).sum(2).mean(0))
    np.testing.assert_allclose(atoms.calc.results["forces_std"], spread, atol=1e-12)
    assert atoms.calc.results["energy_std"] == pytest.approx(es.std(), rel=1e-10)
    single = EKDCalculator(paths[0])
    atoms.calc = single
    atoms.get_forces()
    assert np.all(single.results["forces_std"] == 0)


def test_calculator_rejects_unknown_elements(toy_file):
    from ase.build import molecule

    atoms = molecule("SiH4")
    atoms.calc = EKDCalculator(toy_file)
    with pytest.raises(ValueError, match=r"atomic numbers \[14\]"):
        atoms.get_potential_energy()
