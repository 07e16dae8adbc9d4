"""A tiny run with ``ensemble.student_uncertainty: true`` (issue 28), end to end: the students
get the head (controls, baseline and teachers do not), ``ekd evaluate``'s metrics and report.md
carry the calibration numbers, and an exported student reports its sigma as ``forces_std`` in
ASE, equal to the member's own prediction."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms

from ekd import config
from ekd.data import write_ani
from ekd.deploy.calculator import EKDCalculator
from ekd.deploy.export import export_member
from ekd.training.train import load_member
from ekd.units import EV_TO_KCALMOL
from ekd.workflow import Run

from ..conftest import tiny_run_config, xtb_groups


def test_a_run_with_student_uncertainty(tmp_path):
    train = write_ani(tmp_path / "train.h5", xtb_groups(("H2O", "CH4", "NH3", "H2CO"), n_conf=16))
    test = write_ani(tmp_path / "test.h5", xtb_groups(("CH3OH",), n_conf=8, seed=5))
    ensemble = "{n_teachers: 2, n_students: 2, generations: 1, student_uncertainty: true}"
    cfg = config.loads(tiny_run_config(train, test, ensemble=ensemble))
    run = Run(cfg, tmp_path / "run", progress=False)
    metrics = run.run_all()
    assert "student_uncertainty: true" in (tmp_path / "run" / "config.yaml").read_text()

    heads = {g.label: run.has_sigma_head(g) for g in run.groups()}
    assert heads == {"teacher": False, "student_gen1": True, "control": False, "baseline": False}
    for label, entry in metrics["roles"].items():
        for set_name in ("test_split", "test_pool"):
            cal = entry[set_name].get("calibration")
            if not heads[label]:
                assert cal is None, label
                continue
            assert len(cal["members"]) == 2
            for m in cal["members"]:
                # finite numbers in [-1, 1]: the values of a 4-epoch run are not a measurement
                assert all(m[k] is not None and -1.0 <= m[k] <= 1.0 for k in ("rho_teachers", "rho_error")), m
            assert cal["teachers"]["rho_error"] is not None
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Predicted uncertainty" in report and "σ vs teachers' σ / atom" in report

    member_dir = run.member_dir(run.group("student_gen1"), 0)
    member = load_member(member_dir)
    assert member.has_uncertainty and not load_member(run.member_dir(run.group("control"), 0)).has_uncertainty
    path = tmp_path / "student.pt"
    export_member(member_dir, path, dtype="float64")
    atoms = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                                    [0.7, -0.6, -0.65]])  # fmt: skip
    atoms.calc = EKDCalculator(path)
    atoms.get_forces()
    got = atoms.calc.results["forces_std"] * EV_TO_KCALMOL
    with torch.no_grad():
        species = torch.tensor(atoms.numbers)[None]
        pos = torch.tensor(atoms.positions, dtype=torch.float64)[None]
        feats = member.model.graph_module(forces=False, features=True)(species, pos)[-1]
        want = torch.exp(member.model.uncertainty(feats)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert np.all(got > 0)
