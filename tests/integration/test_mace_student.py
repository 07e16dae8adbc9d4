"""bench/mace_student.py end to end on a tiny run (slow: four ``mace_run_train`` processes, ~2-4
min here): ekd's gen-1 extxyz is read by MACE's own trainer with ``--energy_key ekd_energy
--forces_key ekd_forces``, the student and the control differ in the force weight only, and both
are scored by ``ekd score --calculator``. Needs mace-torch (``pip install mace-torch``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import tiny_run_config, xtb_groups

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_mace_student_and_control_from_ekd_labels(tmp_path):
    pytest.importorskip("mace")
    pytest.importorskip("tblite.interface")
    from ekd.data import write_ani

    units = {"energy_unit": "hartree", "length_unit": "angstrom"}
    train = write_ani(tmp_path / "train.h5", xtb_groups(("H2O", "CH4", "CH3OH", "NH3"), n_conf=10, seed=3), units)
    test = write_ani(tmp_path / "test.h5", xtb_groups(("CH3CH2OH",), n_conf=4, seed=4), units)
    cfg = tmp_path / "tiny.yaml"
    run_dir = tmp_path / "run"
    cfg.write_text(tiny_run_config(train, test, ensemble="{n_teachers: 2, n_students: 1, generations: 1}"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ekd = str(Path(sys.executable).parent / "ekd")
    for verb in (["train", "--role", "teacher"], ["distill", "--generation", "1"]):
        subprocess.run([ekd, *verb, "--config", str(cfg), "--run-dir", str(run_dir), "--quiet"], env=env, check=True)
    assert (run_dir / "labels" / "gen1.xyz").exists()
    bench = [sys.executable, str(ROOT / "bench" / "mace_student.py"), "--run-dir", str(run_dir)]
    done = subprocess.run([*bench, "--members", "2", "--epochs", "1"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    out = json.loads((run_dir / "mace" / "mace_student.json").read_text())
    groups = out["groups"]
    assert set(groups) == {"MACE student", "MACE control", "HIPNN teachers (the labels' source)"}
    for name in ("MACE student", "MACE control"):
        assert groups[name]["n_members"] == 2 and groups[name]["summary"]["force_rmse"]["mean"] > 0
    commands = {
        role: json.loads((run_dir / "mace" / f"{role}_0" / "wall.json").read_text())["command"]
        for role in ("student", "control")
    }
    differ = [(a, b) for a, b in zip(commands["student"], commands["control"], strict=True) if a != b]
    assert [a.split("=")[0] for a, _ in differ] == ["--name", "--work_dir", "--forces_weight"]
    assert "--forces_key=ekd_forces" in commands["student"] and "--energy_key=ekd_energy" in commands["student"]
    log = (run_dir / "mace" / "student_0" / "mace.log").read_text()
    assert "Total number of configurations: train=" in log and "RMSE_F" in log
