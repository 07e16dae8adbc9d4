"""TorchANI's ANI-1ccx as an external teacher (ekd.training.external): same numbers as torchani's own
model, forces = -dE/dR, padding-independent, clear errors. Skips when torchani (2.0, with its
shipped weights) is not installed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ekd.training.external import ExternalModelUnavailable, TorchANIEnsemble, load_external_teacher
from ekd.units import HARTREE_TO_KCALMOL

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torchani = pytest.importorskip("torchani", reason="torchani not installed (pip install --no-deps torchani==2.0)")


class _Data:
    def __init__(self, molecules):
        n_atoms = max(len(m) for m in molecules)
        self.species = np.zeros((len(molecules), n_atoms), np.int64)
        self.coordinates = np.zeros((len(molecules), n_atoms, 3))
        for k, m in enumerate(molecules):
            self.species[k, : len(m)] = m.numbers
            self.coordinates[k, : len(m)] = m.positions


@pytest.fixture(scope="module")
def ensemble():
    try:
        return TorchANIEnsemble("ANI1ccx")
    except ExternalModelUnavailable as e:
        pytest.skip(str(e))


def test_members_match_torchani_and_forces_are_gradients(ensemble):
    import torch
    from ase.build import molecule

    ch3ono, water = molecule("CH3ONO"), molecule("H2O")
    water.rattle(0.05, seed=1)
    together = _Data([ch3ono, water])  # water padded to 7 atoms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torchani.models.ANI1ccx(periodic_table_index=True).double()
    assert len(ensemble) == 8
    energies = []
    for k, member in enumerate(load_external_teacher("torchani:ANI1ccx")[0]):
        e, f = member.predict(together)
        for i, mol in enumerate((ch3ono, water)):
            z, x = torch.tensor(mol.numbers)[None], torch.tensor(mol.positions)[None]
            assert e[i] == pytest.approx(reference[k]((z, x)).energies.item() * HARTREE_TO_KCALMOL, abs=1e-6)
            alone_e, alone_f = member.predict(_Data([mol]))
            assert alone_e[0] == pytest.approx(e[i], abs=1e-8)
            np.testing.assert_allclose(alone_f[0, : len(mol)], f[i, : len(mol)], atol=1e-8)
        assert np.all(f[1, 3:] == 0)  # padding
        energies.append(e)
    spread = np.std(energies, axis=0)
    assert np.all(spread > 0) and np.all(spread < 5.0)  # kcal/mol: members differ, but not wildly
    # forces: central differences of member 0's energy
    member = load_external_teacher("torchani:ANI1ccx")[0][0]
    _, f = member.predict(_Data([ch3ono]))
    h = 1e-4
    for atom, axis in ((0, 0), (3, 2), (6, 1)):
        plus, minus = ch3ono.copy(), ch3ono.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        fd = -(member.predict(_Data([plus]), forces=False)[0][0] - member.predict(_Data([minus]), forces=False)[0][0])
        assert f[0, atom, axis] == pytest.approx(fd / (2 * h), abs=1e-4)


def test_bad_inputs_are_named(ensemble, tmp_path):
    from ase.build import molecule

    with pytest.raises(ValueError, match=r"knows \['H', 'C', 'N', 'O'\] only; the dataset has \['S'\]"):
        ensemble.members()[0].predict(_Data([molecule("CH3SH")]))
    with pytest.raises(ExternalModelUnavailable, match="ani-1ccx_8x.info does not exist"):
        TorchANIEnsemble("ANI1ccx", tmp_path)
    with pytest.raises(ValueError, match="unknown TorchANI model 'ANI9'"):
        TorchANIEnsemble("ANI9")
    with pytest.raises(ExternalModelUnavailable, match="calculator 'schnet:foo': cannot import module 'schnet'"):
        load_external_teacher("schnet:foo")
