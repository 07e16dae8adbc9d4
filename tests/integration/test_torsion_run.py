"""The torsion scans as a scored set of a tiny run (seconds): ``test_torsion`` in metrics.json and
report.md next to the pool, ΔE over the pairs of points of each scan.

Data: the tiny run of test_workflow.py (GFN2-xTB labels of rattled small molecules) and a GFN2-xTB
scan of butane (ekd.data.generate.torsion, as a generated torsion.h5 holds it), handed to the run
as its DataPaths (generating the whole pool would take a minute)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tblite")
pytest.importorskip("rdkit")

from ekd import config  # noqa: E402
from ekd.data import MoleculeGroup, write_ani  # noqa: E402
from ekd.data.generate import GenerateOptions, MoleculeTask  # noqa: E402
from ekd.data.generate.scan import compute_torsion  # noqa: E402
from ekd.data.generate.torsion import rotatable_dihedrals  # noqa: E402
from ekd.workflow import Run  # noqa: E402
from ekd.workflow.inputs import DataPaths  # noqa: E402

from ..conftest import tiny_run_config, xtb_groups  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    train = write_ani(d / "train.h5", xtb_groups(("H2O", "CH4", "NH3", "H2CO"), n_conf=16))
    test = write_ani(d / "test.h5", xtb_groups(("CH3OH",), n_conf=8, seed=5))
    options = GenerateOptions(torsion={"molecules": 1, "conformers": 1, "step_deg": 30})
    (dihedral,) = rotatable_dihedrals("CCCC")
    task = MoleculeTask("torsion", 0, "tor0000_C4H10_0-1-2-3", "CCCC", "", "C4H10", 4, "torsion", dihedral, "")
    rec = compute_torsion(task, options)
    group = MoleculeGroup(task.name, rec.numbers, rec.coordinates, rec.properties, {"n_relaxed": 1})
    scans = write_ani(d / "torsion.h5", [group], {"energy_unit": "hartree", "length_unit": "angstrom"})
    return train, test, scans, rec.n_conf


def test_torsion_scans_are_scored_like_the_pool(files, tmp_path):
    train, test, scans, n_points = files
    assert n_points == 12
    text = tiny_run_config(train, test, ensemble="{n_teachers: 2, n_students: 1, generations: 1, baseline: false}")
    run = Run(config.loads(text), tmp_path / "run", progress=False)
    run._paths = DataPaths(train, test, scans)  # what prepare_data returns with data.generate.torsion on
    metrics = run.run_all()
    assert metrics["sets"]["test_torsion"]["n_configurations"] == n_points
    assert metrics["sets"]["test_torsion"]["n_molecules"] == 1
    for label in ("teacher", "student_gen1", "control"):
        score = metrics["roles"][label]["test_torsion"]["ensemble"]
        assert score["n_pairs"] == n_points * (n_points - 1) // 2  # every pair of the scan
        for key in ("energy_rmse", "delta_e_rmse", "force_rmse"):
            assert score[key] is not None and np.isfinite(score[key]), (label, key)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "test_torsion" in report and "torsion scans" in report
