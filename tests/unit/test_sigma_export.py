"""Exported students with the uncertainty head (issue 28, item 2): the head's sigma in the model
file equals Python's, EKDCalculator reports it as ``forces_std`` for one model, the energy and
forces are those of the same weights without the head, and files of the previous code
(model_code/<kind>@before-sigma) still load and run as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from ekd import scripted
from ekd.config import ModelConfig
from ekd.deploy.calculator import EKDCalculator
from ekd.deploy.model_file import load_model, save_model
from ekd.training.models import add_sigma_head, build_model
from ekd.units import EV_TO_KCALMOL

OPS = scripted.available_ops()
DATA = Path(__file__).parents[1] / "integration" / "data"
# make_before_sigma.py's member: the weights of before_sigma_hipnn*.pt
ARCH = ModelConfig(
    l_max=2, n_interactions=2, n_atom_layers=2, width=8, n_sensitivities=5, cutoff_soft_max=3.0, cutoff_hard=3.5
)


def _model(head_seed: int | None):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(ARCH, [6, 1, 7, 8])
    if head_seed is not None:
        add_sigma_head(model, head_seed, log_sigma_mean=0.3)
        # a head whose output varies visibly between atoms (a fresh head is nearly constant)
        with torch.no_grad():
            model.uncertainty.out.weight.mul_(20.0)
    model.modules().to(torch.float64)
    return model


def _molecule(seed: int = 3) -> Atoms:
    rng = np.random.default_rng(seed)
    numbers = [6, 1, 1, 8, 7, 1, 6, 8, 1]
    # atoms on a jittered line of 1.2 A steps: every atom has neighbours within the cutoff
    pos = np.array([[1.2 * i, 0.0, 0.0] for i in range(len(numbers))]) + rng.normal(scale=0.3, size=(len(numbers), 3))
    return Atoms(numbers=numbers, positions=pos)


def _python_sigma(model, atoms: Atoms) -> np.ndarray:
    """Python's sigma (kcal/mol/A): the hippynn graph's last features through the trained head."""
    species = torch.tensor(atoms.numbers, dtype=torch.int64)[None]
    pos = torch.tensor(atoms.positions, dtype=torch.float64)[None]
    with torch.no_grad():
        feats = model.graph_module(forces=False, features=True)(species, pos)[-1]
        return torch.exp(model.uncertainty(feats)).numpy()


def _export(model, path, envsum):
    module = scripted.script_member(model, dtype=torch.float64, envsum=envsum)
    save_model(module, path, scripted.metadata(model, module))
    return path


ENVSUMS = ["torch", *(["auto"] if OPS else [])]


@pytest.mark.parametrize("envsum", ENVSUMS)
def test_exported_sigma_equals_pythons_and_leaves_energy_and_forces_alone(tmp_path, envsum):
    with_head, without = _model(head_seed=7), _model(head_seed=None)
    f_head = _export(with_head, tmp_path / "head.pt", envsum)
    f_plain = _export(without, tmp_path / "plain.pt", envsum)
    module, meta = load_model(f_head)  # trusted: today's canonical code
    assert bool(module.has_sigma) and "uncertainty head" in meta.description
    assert not bool(load_model(f_plain)[0].has_sigma)

    atoms = _molecule()
    want = _python_sigma(with_head, atoms)
    assert np.ptp(np.log(want)) > 0.5  # not a constant: the comparison means something
    calc = EKDCalculator(f_head)
    atoms.calc = calc
    forces = atoms.get_forces()
    sigma = calc.results["forces_std"]
    np.testing.assert_allclose(sigma * EV_TO_KCALMOL, want, rtol=1e-10)
    # the same weights without the head: the same energy and forces, bit for bit; forces_std 0
    plain = _molecule()
    plain.calc = EKDCalculator(f_plain)
    assert plain.get_potential_energy() == atoms.get_potential_energy()
    np.testing.assert_array_equal(plain.get_forces(), forces)
    np.testing.assert_array_equal(plain.calc.results["forces_std"], np.zeros(len(atoms)))
    # two files: the ensemble's spread as before, not a head's prediction
    pair = _molecule()
    pair.calc = EKDCalculator([f_head, f_plain])
    pair.get_forces()
    np.testing.assert_allclose(pair.calc.results["forces_std"], np.zeros(len(atoms)), atol=1e-12)


@pytest.mark.parametrize(
    "name, envsum", [("before_sigma_hipnn_torch.pt", "torch"), *([("before_sigma_hipnn.pt", "auto")] if OPS else [])]
)
def test_files_before_the_head_load_and_give_todays_numbers(name, envsum, tmp_path):
    """A file written by the ekd of a9f1be0 (code kept as model_code/<kind>@before-sigma) loads
    without trust_code, gives today's energies and forces with the same weights and forces_std 0."""
    old_file = DATA / name
    module, _ = load_model(old_file)
    assert not hasattr(module, "has_sigma")
    today = _export(_model(head_seed=None), tmp_path / "today.pt", envsum)
    a, b = _molecule(), _molecule()
    a.calc, b.calc = EKDCalculator(old_file), EKDCalculator(today)
    np.testing.assert_allclose(a.get_potential_energy(), b.get_potential_energy(), rtol=1e-12)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(a.calc.results["forces_std"], np.zeros(len(a)))


def test_atom_sigma_refuses_features_of_the_wrong_width(tmp_path):
    module, _ = load_model(_export(_model(head_seed=7), tmp_path / "head.pt", "torch"))
    with pytest.raises(Exception, match=r"atom_sigma: expected the last features \[M, 8\]"):
        module.atom_sigma(torch.zeros(3, 5, dtype=torch.float64))
