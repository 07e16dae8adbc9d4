"""Physics invariants of HIPNN models built by ekd.training.models (random weights, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.config import ModelConfig
from ekd.training.models import build_model, check_padding, use_kernels

from ..conftest import central_difference_forces

SPECIES = (1, 6, 7, 8)


def _cfg(l_max: int) -> ModelConfig:
    return ModelConfig(
        l_max=l_max, n_interactions=2, n_atom_layers=1, width=8, n_sensitivities=6,
        cutoff_soft_min=0.75, cutoff_soft_max=4.0, cutoff_hard=5.0,
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    use_kernels("pytorch")


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda v: f"l_max={v}")
def model(request):
    torch.manual_seed(1234)
    # no data: every layer keeps its random initialisation, so the energy depends strongly on
    # the geometry (the data-fitted initialisation scales the interacting energy layers down)
    m = build_model(_cfg(request.param), SPECIES)
    m.modules().to(torch.float64)
    return m


def _energy_forces(model, species, coords):
    """species (n, A), coords (n, A, 3) numpy -> E (n,), F (n, A, 3) via the model's GradientNode."""
    gm = model.graph_module(forces=True)
    e, f = gm(torch.as_tensor(species, dtype=torch.int64), torch.as_tensor(coords, dtype=torch.float64).clone())
    return e.detach().numpy().reshape(-1), f.detach().numpy()


def _frame(xtb_dataset, name: str, conformer: int = 0):
    i = int(np.flatnonzero(xtb_dataset.molecule == xtb_dataset.molecule_names.index(name))[conformer])
    n = int(xtb_dataset.n_atoms[i])
    return xtb_dataset.species[i, :n].copy(), xtb_dataset.coordinates[i, :n].copy()


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def test_forces_equal_finite_differences_of_energy(model, xtb_dataset):
    z, r = _frame(xtb_dataset, "CH3OH")
    _, f = _energy_forces(model, z[None], r[None])
    fd = central_difference_forces(lambda x: _energy_forces(model, z[None], x[None])[0][0], r, 1e-5)
    assert np.abs(f[0]).max() > 1e-3, "forces vanish: the test would prove nothing"
    np.testing.assert_allclose(f[0], fd, rtol=1e-6, atol=1e-7)


def test_translation_and_rotation_invariance(model, xtb_dataset):
    rng = np.random.default_rng(3)
    z, r = _frame(xtb_dataset, "CH3OH", 2)
    q = _random_rotation(rng)
    moved = r @ q.T + rng.normal(size=3) * 5.0
    e0, f0 = _energy_forces(model, z[None], r[None])
    e1, f1 = _energy_forces(model, z[None], moved[None])
    np.testing.assert_allclose(e1, e0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(f1[0], f0[0] @ q.T, rtol=0, atol=1e-9)  # forces rotate with the molecule


def test_permutation_of_atoms_and_padding(model, xtb_dataset):
    z, r = _frame(xtb_dataset, "CH3OH", 1)
    n = len(z)
    e0, f0 = _energy_forces(model, z[None], r[None])
    perm = np.random.default_rng(5).permutation(n)
    # permuted, and padded with two trailing empty slots whose positions must not matter
    zp = np.r_[z[perm], 0, 0]
    rp = np.r_[r[perm], [[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]]]
    e1, f1 = _energy_forces(model, zp[None], rp[None])
    np.testing.assert_allclose(e1, e0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(f1[0, :n], f0[0, perm], rtol=0, atol=1e-9)
    assert np.all(f1[0, n:] == 0.0)


def test_padding_must_trail():
    # hippynn's pair finder trims every frame to the largest atom count in the batch, so an
    # empty slot between real atoms silently drops the last atom's pairs: it is rejected
    check_padding(np.array([[8, 1, 1, 0], [6, 1, 0, 0]]))
    with pytest.raises(ValueError, match="configuration 1"):
        check_padding(np.array([[8, 1, 1, 0], [6, 0, 1, 0]]))


def test_separated_fragments_are_additive(model, xtb_dataset):
    za, ra = _frame(xtb_dataset, "H2O")
    zb, rb = _frame(xtb_dataset, "NH3")
    far = rb + np.array([0.0, 0.0, 3 * model.config.cutoff_hard])  # well beyond the hard cutoff
    ea, fa = _energy_forces(model, za[None], ra[None])
    eb, fb = _energy_forces(model, zb[None], far[None])
    eab, fab = _energy_forces(model, np.r_[za, zb][None], np.r_[ra, far][None])
    np.testing.assert_allclose(eab[0], ea[0] + eb[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(fab[0], np.r_[fa[0], fb[0]], rtol=0, atol=1e-9)


def test_frames_of_a_batch_do_not_interact(model, xtb_dataset):
    idx = np.arange(0, len(xtb_dataset), 11)[:8]
    z, r = xtb_dataset.species[idx], xtb_dataset.coordinates[idx]
    e_batch, f_batch = _energy_forces(model, z, r)
    for k in range(len(idx)):
        e1, f1 = _energy_forces(model, z[k : k + 1], r[k : k + 1])
        np.testing.assert_allclose(e_batch[k], e1[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(f_batch[k], f1[0], rtol=0, atol=1e-9)


def test_energy_offsets_fitted_to_training_data(xtb_dataset, xtb_splits):
    torch.manual_seed(0)
    train = xtb_splits["train"]
    m = build_model(_cfg(2), xtb_dataset.elements, xtb_dataset, train)
    assert m.species == (1, 6, 7, 8)
    # least-squares per-element energies from the composition of the training configurations
    sub = xtb_dataset.subset(train)
    counts = np.stack([(sub.species == z).sum(axis=1) for z in m.species], axis=1).astype(float)
    expected = np.linalg.lstsq(counts, sub.properties["energy"], rcond=None)[0]
    got = np.array([m.energy_offsets[z] for z in m.species])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert not m.henergy.torch_module.layers[0].weight.requires_grad  # offsets are frozen


def test_l2_covers_network_and_energy_head_weights():
    torch.manual_seed(0)
    m = build_model(_cfg(1), SPECIES)
    net, head = m.network.torch_module, m.henergy.torch_module
    with torch.no_grad():
        l2 = m.l2.torch_module()
        expected = sum(float((p * p).sum()) for p in net.regularization_params())
        expected += sum(float((lay.weight**2).sum()) for lay in head.layers[1:])
    assert float(l2) == pytest.approx(expected, rel=1e-6)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="kernels"):
        use_kernels("cuda-magic")
    with pytest.raises(ValueError, match="species"):
        build_model(_cfg(0), [0, 1])
