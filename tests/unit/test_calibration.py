"""ekd.evaluation.metrics' calibration numbers of predicted uncertainty (issue 28, item 3) and
their tables, on made-up arrays whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from ekd.evaluation.metrics import calibration, spearman
from ekd.evaluation.tables import CALIBRATION_HEADER, calibration_rows


def test_spearman_equals_scipys_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, size=40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert spearman(np.ones(5), y[:5]) is None and spearman(x[:2], y[:2]) is None
    with pytest.raises(ValueError, match="different sizes"):
        spearman(x, y[:3])


def _case():
    """2 members, 4 configurations of up to 3 atoms (the last one padding in two of them)."""
    rng = np.random.default_rng(0)
    species = np.array([[1, 6, 8], [1, 6, 0], [8, 8, 1], [6, 1, 0]])
    real = species > 0
    ref = rng.normal(size=(4, 3, 3)) * real[..., None]
    teachers = ref + rng.normal(scale=0.3, size=(3, 4, 3, 3)) * real[..., None]
    t_mean = teachers.mean(0)
    t_sigma = np.sqrt(((teachers - t_mean) ** 2).sum(-1).mean(0))
    members = ref + rng.normal(scale=0.2, size=(2, 4, 3, 3)) * real[..., None]
    return species, real, ref, teachers, t_mean, t_sigma, members


def test_calibration_of_a_perfect_and_a_reversed_predictor():
    species, real, ref, teachers, t_mean, t_sigma, members = _case()
    err = np.linalg.norm(members - ref, axis=-1)
    # member 0 predicts the teachers' spread exactly; member 1 its own error reversed
    pred = np.stack([t_sigma, 10.0 - err[1]]) * real
    out = calibration(pred, members, teachers, ref, species)
    m0, m1 = out["members"]
    assert m0["rho_teachers"] == pytest.approx(1.0) and m0["rho_teachers_max"] == pytest.approx(1.0)
    assert m1["rho_error"] == pytest.approx(-1.0)
    want = spearman(t_sigma[real], np.linalg.norm(t_mean - ref, axis=-1)[real])
    assert out["teachers"]["rho_error"] == pytest.approx(want)
    assert out["summary"]["rho_teachers"]["n"] == 2
    assert out["summary"]["rho_teachers"]["mean"] == pytest.approx((1.0 + m1["rho_teachers"]) / 2)


def test_calibration_without_teachers_or_reference_is_null_not_made_up():
    species, real, ref, teachers, _, t_sigma, members = _case()
    pred = np.stack([t_sigma, t_sigma]) * real
    no_teachers = calibration(pred, members, None, ref, species)
    assert all(m["rho_teachers"] is None and m["rho_error"] is not None for m in no_teachers["members"])
    assert no_teachers["teachers"] == {"rho_error": None, "rho_error_max": None}
    no_ref = calibration(pred, members, teachers, None, species)
    assert all(m["rho_error"] is None and m["rho_teachers"] == pytest.approx(1.0) for m in no_ref["members"])
    # unknown reference forces of one atom leave that atom out of the error correlation only
    partial = ref.copy()
    partial[0, 0] = np.nan
    out = calibration(pred, members, teachers, partial, species)
    mask = real.copy()
    mask[0, 0] = False
    err = np.linalg.norm(members[0] - partial, axis=-1)
    assert out["members"][0]["rho_error"] == pytest.approx(spearman(t_sigma[mask], err[mask]))


def test_the_tables_show_the_calibration_with_the_ratio():
    species, real, ref, teachers, _, t_sigma, members = _case()
    cal = calibration(np.stack([t_sigma, t_sigma]) * real, members, teachers, ref, species)
    metrics = {
        "config": {"name": "t", "evaluate": {"conformer_window": 100.0}},
        "sets": {"test_pool": {"n_configurations": 4, "n_molecules": 4}},
        "roles": {
            "student_gen1": {"role": "student", "generation": 1, "n_members": 2, "test_pool": {"calibration": cal}}
        },
    }
    rows = calibration_rows(metrics, "test_pool")
    assert len(rows) == 1 and len(rows[0]) == len(CALIBRATION_HEADER)
    ratio = cal["summary"]["rho_error"]["mean"] / cal["teachers"]["rho_error"]
    assert rows[0][4] == f"{ratio:.2f}"
    assert calibration_rows(metrics, "test_split") == []
