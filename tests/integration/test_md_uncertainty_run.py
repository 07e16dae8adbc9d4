"""The MD sweep of a tiny run with ``ensemble.student_uncertainty: true`` (issue 28, item 4), through
the workflow: the students' runs record their predicted sigma, their thresholds come from their own
training configurations (the workflow hands them over) and the alarm table reaches the sweep's
JSON, metrics.json and report.md; roles without a head record none. Also ``ekd score --run-dir``
on that run: the calibration of the members with a head, equal to ``ekd evaluate``'s."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ekd import config
from ekd.data import write_ani
from ekd.evaluation import score
from ekd.md import uncertainty
from ekd.workflow import Run
from ekd.workflow.score_groups import run_groups

from ..conftest import tiny_run_config, xtb_groups


def test_md_of_a_run_with_student_uncertainty(tmp_path):
    train = write_ani(tmp_path / "train.h5", xtb_groups(("H2O", "CH4", "NH3", "H2CO"), n_conf=16))
    test = write_ani(tmp_path / "test.h5", xtb_groups(("CH3OH",), n_conf=8, seed=5))
    ensemble = (
        "{n_teachers: 2, n_students: 1, generations: 1, controls: false, baseline: false, student_uncertainty: true}"
    )
    cfg = config.loads(tiny_run_config(train, test, ensemble=ensemble))
    md = dict(enabled=True, n_molecules=27, t_max_ps=0.002, equilibration_ps=0.0, timesteps_fs=(0.5,), n_runs=1)
    cfg = replace(cfg, md=config.MDConfig(**md, roles=("teacher", "student_gen1"), n_models=1, workers=1))
    run = Run(cfg, tmp_path / "run", progress=False)
    run.run_all(stop_after="evaluate")
    out = run.md_stability()

    by_role = {r["role"]: r for r in out["results"]}
    assert by_role["teacher"]["sigma"] is None and by_role["student_gen1"]["sigma"]["max_ev_A"]
    (path, limit) = next(iter(out["sigma_thresholds"].items()))
    assert "student_gen1" in path
    # the threshold: the quantile over the member's own training configurations
    train_0 = run.train_data.subset(run.splits["train_0"])
    sigma = uncertainty.predict_sigma(path, train_0)[train_0.species > 0]
    assert limit["sigma_ev_A"] == np.quantile(sigma, uncertainty.QUANTILE) and limit["n_atoms"] == sigma.size
    assert [row["role"] for row in out["alarms"]] == ["student_gen1"]
    saved = json.loads((tmp_path / "run" / "md" / "ase" / "stability.json").read_text())
    assert saved["alarms"] == out["alarms"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["md_stability"]["ase"]["alarms"] == out["alarms"]
    assert "Predicted uncertainty as an alarm" in (tmp_path / "run" / "report.md").read_text()

    # ekd score --run-dir: the students' calibration on the test file, the numbers ekd evaluate has
    groups, window, _ = run_groups(tmp_path / "run")
    result = score.score_models(score.load_test(test), groups, window)
    assert "calibration" not in result.groups["teacher"]
    got = result.groups["student_gen1"]["calibration"]["members"][0]
    want = metrics["roles"]["student_gen1"]["test_pool"]["calibration"]["members"][0]
    for key in ("rho_error", "rho_error_max"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
