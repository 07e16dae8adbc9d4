"""Atoms in cache order (issue 29, item 2): :mod:`ekd.ops.order` gives a permutation that keeps
structures together, and the callers that sort (EKDCalculator, ``ekd score``'s batched path)
return every per-atom result in the caller's order, equal to an unsorted evaluation to rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from ekd import scripted
from ekd.config import ModelConfig
from ekd.deploy.calculator import EKDCalculator
from ekd.deploy.model_file import save_model
from ekd.ops.order import inverse_order, morton_codes, spatial_order
from ekd.training.models import build_model

ARCH = ModelConfig(
    l_max=2, n_interactions=2, n_atom_layers=2, width=8, n_sensitivities=5, cutoff_soft_max=3.0, cutoff_hard=3.5
)


def test_morton_codes_interleave_the_bits_of_the_three_axes():
    top = (1 << 21) - 1
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    codes = morton_codes(pts).tolist()
    x_bits = sum(1 << (3 * k) for k in range(21))  # bit k of x -> bit 3k
    assert codes == [0, x_bits, x_bits << 1, x_bits << 2, x_bits * 7]
    assert top.bit_length() * 3 == 63


def test_spatial_order_is_a_permutation_that_keeps_structures_in_place():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 3, generator=g, dtype=torch.float64) * 10
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([10, 15, 5, 20]))
    order = spatial_order(x, batch=batch)
    assert sorted(order.tolist()) == list(range(50))
    assert torch.equal(batch[order], batch)  # each structure's atoms stay in its own slots
    assert torch.equal(order[inverse_order(order)], torch.arange(50))
    # neighbours in the order are near in space: the mean step is far below a random order's
    one = spatial_order(x[:20])
    step = (x[:20][one][1:] - x[:20][one][:-1]).norm(dim=1).mean()
    assert step < 0.75 * (x[:20][1:] - x[:20][:-1]).norm(dim=1).mean()
    assert spatial_order(torch.zeros(0, 3)).shape == (0,)
    with pytest.raises(ValueError, match="periodic cell is for one structure"):
        spatial_order(x, torch.eye(3) * 10, True, batch=batch)


def test_periodic_order_wraps_positions_into_the_cell():
    x = torch.tensor([[0.5, 0.5, 0.5], [10.4, 0.5, 0.5], [5.0, 5.0, 5.0]], dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64) * 10
    # atom 1 is at 0.4 A in the cell: next to atom 0, not beyond atom 2
    order = spatial_order(x, cell, torch.tensor([True, True, True])).tolist()
    assert order.index(2) == 2


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(ARCH, [6, 1, 7, 8])
    model.modules().to(torch.float64)
    envsum = "auto" if scripted.available_ops() else "torch"
    module = scripted.script_member(model, dtype=torch.float64, envsum=envsum)
    path = tmp_path_factory.mktemp("order") / "m.pt"
    save_model(module, path, scripted.metadata(model, module))
    return path


def _box(seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.6
    pos = grid + rng.normal(scale=0.15, size=grid.shape)
    numbers = rng.choice([1, 6, 7, 8], size=len(pos))
    return Atoms(numbers=numbers, positions=pos, cell=np.eye(3) * 6.4, pbc=True)


@pytest.mark.parametrize("periodic", [True, False])
def test_calculator_results_come_back_in_the_callers_order(model_file, periodic):
    atoms = _box(1)
    atoms.pbc = periodic
    perm = np.random.default_rng(2).permutation(len(atoms))
    shuffled = atoms[perm]
    res = []
    for a in (atoms, shuffled):
        a.calc = EKDCalculator(str(model_file))
        a.get_potential_energy()
        res.append(dict(a.calc.results))
    base, other = res
    assert abs(base["energy"] - other["energy"]) < 1e-9
    np.testing.assert_allclose(other["forces"], base["forces"][perm], atol=1e-10)
    np.testing.assert_allclose(other["energies"], base["energies"][perm], atol=1e-10)
    np.testing.assert_allclose(other["forces_std"], base["forces_std"][perm], atol=1e-12)


def test_a_close_pair_is_named_in_the_callers_numbering(model_file):
    atoms = _box(3)
    atoms.positions[17] = atoms.positions[5]  # two atoms at one position
    atoms.calc = EKDCalculator(str(model_file))
    with pytest.raises(ValueError, match="atoms 5 and 17 are at the same position"):
        atoms.get_potential_energy()
