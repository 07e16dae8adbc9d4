"""``ekd score``'s calibration of predicted uncertainty (issue 28, item 3;
:mod:`ekd.evaluation.score_sigma`): made-up arrays with known answers, and model files with and
without the head scored on a small extxyz file, the numbers checked against an independent path
(EKDCalculator's ``forces_std`` per configuration and metrics.spearman)."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms

from ekd.data import Dataset
from ekd.deploy.calculator import EKDCalculator
from ekd.evaluation import score
from ekd.evaluation.metrics import spearman
from ekd.evaluation.score_sigma import format_lines, group_calibration
from ekd.units import EV_TO_KCALMOL

from .test_sigma_export import ARCH, _export, _model


def _other_model():
    """The architecture of test_sigma_export's models with other weights, no head."""
    import torch

    from ekd.training.models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model(ARCH, [6, 1, 7, 8])
    model.modules().to(torch.float64)
    return model


def _data(species, ref):
    n, a = species.shape
    props = {} if ref is None else {"reference_forces": ref}
    return Dataset(
        species=species,
        coordinates=np.zeros((n, a, 3)),
        properties={"energy": np.zeros(n), **props},
        molecule=np.zeros(n, dtype=int),
        conformer=np.arange(n),
        molecule_names=("m",),
    )


def test_known_answers_mixed_group_and_no_reference():
    rng = np.random.default_rng(0)
    species = np.array([[1, 6, 8], [1, 6, 0], [8, 8, 1], [6, 1, 0]])
    real = species > 0
    ref = rng.normal(size=(4, 3, 3)) * real[..., None]
    forces = ref + rng.normal(scale=0.3, size=(3, 4, 3, 3)) * real[..., None]
    err = np.linalg.norm(forces - ref, axis=-1)
    # member 0: its own error exactly; member 1: no head; member 2: its error reversed
    sigmas = [err[0] * real, None, (10.0 - err[2]) * real]
    cal = group_calibration(sigmas, forces, _data(species, ref))
    assert cal["members_with_head"] == [0, 2]
    m0, m2 = cal["members"]
    assert m0["rho_error"] == pytest.approx(1.0) and m0["rho_error_max"] == pytest.approx(1.0)
    assert m2["rho_error"] == pytest.approx(-1.0)
    # per configuration: the largest predicted value (10 - the smallest error) vs the largest error
    big = lambda v: np.where(real, v, -np.inf).max(1)  # noqa: E731
    assert m2["rho_error_max"] == pytest.approx(spearman(big(sigmas[2]), big(err[2])), abs=1e-12)
    assert cal["summary"]["rho_error"]["mean"] == pytest.approx(0.0) and cal["summary"]["rho_error"]["n"] == 2
    # the ensemble: all three members' spread against the error of their mean
    mean = forces.mean(0)
    spread = np.sqrt(((forces - mean) ** 2).sum(-1).mean(0))
    want = spearman(spread[real], np.linalg.norm(mean - ref, axis=-1)[real])
    assert cal["ensemble"]["rho_error"] == pytest.approx(want, abs=1e-12)
    assert cal["note"] is None

    assert group_calibration([None, None, None], forces, _data(species, ref)) is None
    one = group_calibration([sigmas[0]], forces[:1], _data(species, ref))
    assert one["ensemble"] is None and one["members"][0]["rho_error"] == pytest.approx(1.0)
    bare = group_calibration(sigmas, forces, _data(species, None))
    assert bare["members"][0]["rho_error"] is None and "no reference forces" in bare["note"]
    with pytest.raises(ValueError, match=r"forces: expected \(k=2"):
        group_calibration(sigmas[:2], forces, _data(species, ref))

    groups = {"models": {"n_members": 3, "member_names": ["a", "b", "c"], "calibration": cal}}
    text = "\n".join(format_lines(groups))
    assert "predicted uncertainty" in text and "2/3" in text and "  c " in text
    assert format_lines({"models": {"n_members": 1, "member_names": ["a"]}}) == []


def _frames(n: int = 6):
    rng = np.random.default_rng(5)
    numbers = [6, 1, 1, 8, 7, 1, 6, 8, 1]
    frames = []
    for _ in range(n):
        pos = np.array([[1.2 * i, 0.0, 0.0] for i in range(len(numbers))]) + rng.normal(scale=0.3, size=(9, 3))
        a = Atoms(numbers=numbers, positions=pos)
        a.info.update({"ref.energy": float(rng.normal()), "energy_unit": "eV", "length_unit": "Angstrom"})
        a.arrays["ref.forces"] = rng.normal(size=(9, 3))
        frames.append(a)
    return frames


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("score_sigma")
    head = _export(_model(head_seed=7), d / "head.pt", "torch")
    plain = _export(_model(head_seed=None), d / "plain.pt", "torch")
    other = _export(_other_model(), d / "other.pt", "torch")
    frames = _frames()
    ase.io.write(d / "bench.xyz", frames, format="extxyz")
    return {"head": head, "plain": plain, "other": other, "test": d / "bench.xyz", "frames": frames}


def test_score_reports_calibration_of_model_files_with_a_head(files, tmp_path):
    test = score.load_test(files["test"], "ref.energy", "ref.forces")
    result = score.score_models(test, [score.model_files([files["head"], files["other"]])])
    cal = result.groups["models"]["calibration"]
    assert cal["members_with_head"] == [0]

    # independent path: EKDCalculator per configuration (forces_std = the head's sigma, eV/A)
    calc = EKDCalculator(str(files["head"]))
    sig, err = [], []
    for a in files["frames"]:
        b = a.copy()
        b.calc = calc
        f = b.get_forces()
        sig.append(calc.results["forces_std"] * EV_TO_KCALMOL)
        err.append(np.linalg.norm(f - a.arrays["ref.forces"], axis=-1))
    sig, err = np.array(sig), np.array(err)
    assert np.ptp(sig) > 0  # not a constant
    assert cal["members"][0]["rho_error"] == pytest.approx(spearman(sig.ravel(), err.ravel()), abs=1e-12)
    assert cal["members"][0]["rho_error_max"] == pytest.approx(spearman(sig.max(1), err.max(1)), abs=1e-12)
    # the ensemble: the two files' force spread against the error of their mean
    fs = result.predictions["models"]["forces"]
    real = test.data.species > 0
    spread = np.sqrt(((fs - fs.mean(0)) ** 2).sum(-1).mean(0))[real]
    mean_err = np.linalg.norm(fs.mean(0) - test.data.properties["reference_forces"], axis=-1)[real]
    assert cal["ensemble"]["rho_error"] == pytest.approx(spearman(spread, mean_err), abs=1e-12)
    text = score.format_result(result)
    assert "predicted uncertainty" in text and "1/2" in text
    out = json.loads(score.write_json(result, tmp_path / "s.json").read_text())
    assert out["groups"]["models"]["calibration"]["members_with_head"] == [0]

    plain = score.score_models(test, [score.model_files([files["plain"]])])  # head's weights, no head
    assert "calibration" not in plain.groups["models"]
    assert "predicted uncertainty" not in score.format_result(plain)
    # energies and forces of the head's file are those of the same weights without it
    np.testing.assert_array_equal(fs[0], plain.predictions["models"]["forces"][0])
