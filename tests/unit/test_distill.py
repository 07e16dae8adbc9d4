"""ekd.training.distill: ensemble statistics, the NaN guard, and the augmented ANI-layout file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ekd.config import ModelConfig
from ekd.data import Units, load_dataset
from ekd.training.distill import (
    ENSEMBLE_FORCES_KEY,
    ENSEMBLE_FORCES_STD_KEY,
    ensemble_predict,
    label_dataset,
    write_augmented,
)
from ekd.training.models import build_model, use_kernels
from ekd.training.train import Member

ARCH = ModelConfig(l_max=1, n_interactions=1, n_atom_layers=1, width=8, n_sensitivities=4)


class _Fixed:
    """A member that predicts given arrays."""

    def __init__(self, energy, forces):
        self.energy, self.forces = energy, forces

    def predict(self, dataset, forces=True):
        return self.energy, (self.forces if forces else None)


@pytest.fixture(scope="module")
def members(xtb_dataset):
    """Three untrained members with different random weights (enough for labelling mechanics)."""
    use_kernels("pytorch")
    out = []
    for seed in range(3):
        torch.manual_seed(seed)
        out.append(Member(build_model(ARCH, xtb_dataset.elements, xtb_dataset), Path(f"member_{seed:02d}"), {}))
    return out


def test_ensemble_statistics(xtb_dataset, members):
    data = xtb_dataset.subset(np.arange(0, len(xtb_dataset), 5))
    pred = ensemble_predict(members, data)
    k, n, a = 3, len(data), data.species.shape[1]
    assert pred["energy"].shape == (k, n) and pred["forces"].shape == (k, n, a, 3)
    np.testing.assert_allclose(pred["energy_mean"], pred["energy"].mean(axis=0))
    np.testing.assert_allclose(pred["forces_mean"], pred["forces"].mean(axis=0))  # Eq. 3
    np.testing.assert_allclose(pred["forces_std"], pred["forces"].std(axis=0))
    assert (pred["forces_std"][data.species > 0] > 0).any()
    assert np.all(pred["forces_mean"][data.species == 0] == 0) and np.all(pred["forces_std"][data.species == 0] == 0)
    # each member's forces are its own -dE/dR
    e0, f0 = members[0].predict(data)
    np.testing.assert_allclose(pred["forces"][0], f0)
    only_e = ensemble_predict(members, data, forces=False)
    assert set(only_e) == {"energy", "energy_mean"}


def test_non_finite_prediction_names_member_and_configuration(xtb_dataset):
    data = xtb_dataset.subset(np.arange(10))
    good = _Fixed(np.zeros(10), np.zeros(data.coordinates.shape))
    forces = np.zeros(data.coordinates.shape)
    forces[3, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"member 1 .* configuration 3 "):
        ensemble_predict([good, _Fixed(np.zeros(10), forces)], data)
    energy = np.zeros(10)
    energy[7] = np.inf
    with pytest.raises(ValueError, match=r"member 0 .* configuration 7 "):
        ensemble_predict([_Fixed(energy, np.zeros(data.coordinates.shape)), good], data)


def test_augmented_file_round_trips(xtb_dataset, members, tmp_path):
    labelled = label_dataset(members, xtb_dataset)
    units = Units("hartree", "angstrom")
    path = tmp_path / "labels.h5"
    write_augmented(labelled, path, "gfn2_xtb.energy", units)

    with h5py.File(path, "r") as f:
        group = f[next(iter(f))]
        assert {"gfn2_xtb.energy", "gfn2_xtb.forces", ENSEMBLE_FORCES_KEY, ENSEMBLE_FORCES_STD_KEY} <= set(group)
    keys = {
        "energy": "gfn2_xtb.energy",
        "reference_forces": "gfn2_xtb.forces",
        "ensemble_forces": ENSEMBLE_FORCES_KEY,
        "ensemble_forces_std": ENSEMBLE_FORCES_STD_KEY,
    }
    back = load_dataset(path, keys)
    # same configurations (groups are written per molecule, in conformer order)
    order = np.lexsort((labelled.conformer, [labelled.molecule_names[m] for m in labelled.molecule]))
    ref = labelled.subset(order)
    np.testing.assert_array_equal(back.species, ref.species)
    np.testing.assert_allclose(back.coordinates, ref.coordinates, rtol=0, atol=1e-12)
    for name in keys:
        np.testing.assert_allclose(back.properties[name], ref.properties[name], rtol=1e-12, atol=1e-12)
        assert back.mask(name).all()


def test_nan_labels_are_never_written(xtb_dataset, tmp_path):
    forces = np.zeros(xtb_dataset.coordinates.shape)
    forces[4, 0, 0] = np.nan
    bad = xtb_dataset.with_properties(ensemble_forces=forces, ensemble_forces_std=np.zeros(forces.shape))
    with pytest.raises(ValueError, match="NaN"):
        write_augmented(bad, tmp_path / "bad.h5", "gfn2_xtb.energy")
    with pytest.raises(ValueError, match="label_dataset"):
        write_augmented(xtb_dataset, tmp_path / "bad.h5", "gfn2_xtb.energy")
    assert not (tmp_path / "bad.h5").exists()
