"""Shared fixtures: a small real dataset labelled with GFN2-xTB.

Geometries: ASE's G2 structures of a few small molecules, rattled (Gaussian, 0.06 Angstrom per
coordinate, fixed seed). Labels: GFN2-xTB energy and gradient from tblite's Python interface
(tblite 0.8.0 on the machines this was written on; positions in Bohr, energy in Hartree,
gradient in Hartree/Bohr), stored like an ANI file (Hartree, Hartree/Angstrom) and converted by
ekd's data layer. Takes well under a second.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

MOLECULES = ("H2O", "CH4", "CH3OH", "NH3", "H2CO")
KEYS = {"energy": "gfn2_xtb.energy", "reference_forces": "gfn2_xtb.forces"}


def xtb_groups(molecules=MOLECULES, n_conf: int = 24, rattle: float = 0.06, seed: int = 0):
    """MoleculeGroups (ANI file units) of rattled G2 molecules labelled with GFN2-xTB."""
    from ase.build import molecule
    from tblite.interface import Calculator

    from ekd.data import MoleculeGroup
    from ekd.units import BOHR_TO_ANGSTROM

    rng = np.random.default_rng(seed)
    groups = []
    for name in molecules:
        atoms = molecule(name)
        z = atoms.numbers.astype(np.int64)
        xyz = atoms.positions[None] + rattle * rng.normal(size=(n_conf, len(z), 3))
        energy = np.empty(n_conf)
        forces = np.empty((n_conf, len(z), 3))
        for i in range(n_conf):
            calc = Calculator("GFN2-xTB", z, xyz[i] / BOHR_TO_ANGSTROM)
            calc.set("verbosity", 0)
            res = calc.singlepoint()
            energy[i] = res.get("energy")  # Hartree
            forces[i] = -res.get("gradient") / BOHR_TO_ANGSTROM  # Hartree/Bohr -> Hartree/Angstrom
        groups.append(MoleculeGroup(name, z, xyz, {KEYS["energy"]: energy, KEYS["reference_forces"]: forces}))
    return groups


def tiny_run_config(
    train,
    test,
    *,
    name: str = "tiny",
    seed: int = 3,
    max_epochs: int = 4,
    ensemble: str = "{n_teachers: 2, n_students: 2, generations: 2}",
    extra: str = "",
) -> str:
    """YAML of a run small enough for a test (seconds): 1-layer 8-wide models, a few epochs, no MD;
    ``extra``: more top-level sections."""
    return f"""
name: {name}
seed: {seed}
workers: 1
data:
  train: {train}
  test: {test}
model: {{l_max: 1, n_interactions: 1, n_atom_layers: 1, width: 8, n_sensitivities: 4}}
train:
  max_epochs: {max_epochs}
  lr_patience: 2
  termination_patience: 3
  batch_size: 16
  force_schedule: [[1, 5.0], [3, 1.0]]
ensemble: {ensemble}
md: {{enabled: false}}
{extra}"""


def check_missing_and_malformed(load, error, tmp_path, name: str, text: str, message: str):
    """``load`` of a missing file raises ``error`` saying it does not exist, and of a file ``name``
    holding ``text`` raises ``error`` matching ``message``; returns that file (for more cases)."""
    with pytest.raises(error, match="does not exist"):
        load(tmp_path / f"none-{name}")
    bad = tmp_path / name
    bad.write_text(text)
    with pytest.raises(error, match=message):
        load(bad)
    return bad


def central_difference_forces(energy, x: np.ndarray, h: float) -> np.ndarray:
    """-dE/dx (n_atoms, 3) by central differences of ``energy(positions)`` around ``x`` (n_atoms, 3),
    step ``h``: the oracle of the force tests (``x`` is not changed)."""
    fd = np.empty(x.shape)
    for a in range(x.shape[0]):
        for k in range(3):
            plus, minus = x.copy(), x.copy()
            plus[a, k] += h
            minus[a, k] -= h
            fd[a, k] = -(energy(plus) - energy(minus)) / (2 * h)
    return fd


@pytest.fixture(scope="session")
def xtb_dataset():
    """120 configurations of 5 molecules (H, C, N, O; 3-6 atoms): energy and reference_forces."""
    pytest.importorskip("tblite.interface")
    from ekd.data import Units, from_groups

    return from_groups(xtb_groups(), KEYS, Units("hartree", "angstrom"), source="xtb-fixture")


@pytest.fixture(scope="session")
def xtb_splits(xtb_dataset):
    """A common test split and one train/valid split of the rest (dataset indices)."""
    from ekd.data import random_split

    rest, test = random_split(np.arange(len(xtb_dataset)), 0.1, seed=0)
    train, valid = random_split(rest, 0.15, seed=1)
    return {"train": train, "valid": valid, "test": test}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (long experiments) run only when asked for with ``-m slow``."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
