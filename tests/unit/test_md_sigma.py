"""Predicted uncertainty in the MD stability sweep (issue 28, item 4; :mod:`ekd.md.uncertainty`):
lead times and false alarms of controlled sigma series are exact, old results (no sigma) still
report, and a tiny real ASE run of a model with a head records EKDCalculator's forces_std max."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ekd.md import uncertainty
from ekd.md.stability import RunSpec, initial_state, markdown_with_alarms, run_one

from .test_sigma_export import _export, _model


def _result(role, failed, t_fail, times, values, path="m.pt"):
    return {
        "role": role,
        "spec": {"model_paths": [path], "dt_fs": 1.0},
        "failed": failed,
        "t_fail_ps": t_fail,
        "sigma": None if times is None else {"times_ps": times, "max_ev_A": values, "steps": []},
    }


def test_lead_times_and_false_alarms_are_exact():
    limits = {"m.pt": {"sigma_ev_A": 1.0, "quantile": 0.999}}
    t = [0.0, 0.01, 0.02, 0.03, 0.04]
    results = [
        _result("s", True, 0.04, t, [0.2, 0.5, 1.0, 3.0, 9.0]),  # crosses at 0.02 (>= limit): lead 0.02
        _result("s", True, 0.04, t, [0.2, 0.3, 1.5, 0.1, 0.1]),  # at 0.02 and back down: still lead 0.02
        _result("s", True, 0.04, t, [0.2, 0.2, 0.2, 0.2, 5.0]),  # only at the failing step: lead 0
        _result("s", True, 0.04, t, [0.2, 0.2, 0.2, 0.2, 0.9]),  # never: missed
        _result("s", False, None, t, [0.2, 0.2, 1.2, 0.2, 0.2]),  # survived, crossed: a false alarm
        _result("s", False, None, t, [0.2] * 5),  # survived quietly
        _result("s", True, 0.03, t[:4], [0.2, float("nan"), 0.2, 0.2]),  # NaN sigma counts as crossed
        _result("s", True, 0.02, None, None),  # an earlier ekd's result (no sigma): left out
        _result("plain", True, 0.02, t, [9.0] * 5, path="other.pt"),  # no threshold for its model
    ]
    a = uncertainty.alarm(results[0], 1.0)
    assert a["t_cross_ps"] == 0.02 and a["lead_ps"] == pytest.approx(0.02) and a["max_sigma_ev_A"] == 9.0
    assert uncertainty.alarm(results[4], 1.0)["false_alarm"] is True
    assert uncertainty.alarm(results[5], 1.0)["false_alarm"] is False
    assert uncertainty.alarm(results[7], 1.0) is None
    (row,) = uncertainty.alarm_table(results, limits)
    assert row == {
        "role": "s",
        "runs": 7,
        "failed": 5,
        "warned": 3,
        "at_failure": 1,
        "missed": 1,
        "median_lead_ps": pytest.approx(0.02),
        "min_lead_ps": pytest.approx(0.02),
        "survived": 2,
        "false_alarms": 1,
        # peaks 9, 1.5, 5, 0.9, 1.2, 0.2 and (NaN left out) 0.2 over a threshold of 1
        "median_peak_over_threshold": pytest.approx(1.2),
    }
    lines = "\n".join(uncertainty.alarm_markdown([row], limits))
    assert "99.9th percentile" in lines and "| s | 7 | 5 | 3 | 1 | 1 | 0.020 / 0.020 | 2 | 1 | 1.20 |" in lines
    assert uncertainty.alarm_markdown([], limits) == []


def test_old_results_without_sigma_report_as_before():
    from ekd.config import MDConfig

    table = [
        {
            "role": "teacher",
            "dt_fs": 1.0,
            "runs": 2,
            "failed": 1,
            "fraction_failed": 0.5,
            "wilson_lo": 0.2,
            "wilson_hi": 0.8,
            "mean_t_fail_ps": 0.1,
            "mean_drift_ev_atom_ps": None,
            "max_abs_drift_ev_atom_ps": None,
            "wall_s": 3.0,
        }
    ]
    from ekd.md.stability import markdown

    md = MDConfig()
    assert markdown_with_alarms(table, md, "ase", 189, [], {}) == markdown(table, md, "ase", 189)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    return _export(_model(head_seed=7), tmp_path_factory.mktemp("md_sigma") / "head.pt", "torch")


def test_threshold_is_the_quantile_of_training_sigma(head_file):
    from ekd.data import Dataset

    rng = np.random.default_rng(2)
    numbers = np.array([6, 1, 1, 8, 7, 1, 6, 8, 1])
    coords = np.arange(9)[None, :, None] * np.array([1.2, 0.0, 0.0]) + rng.normal(scale=0.3, size=(5, 9, 3))
    data = Dataset(
        species=np.tile(numbers, (5, 1)),
        coordinates=coords,
        properties={"energy": np.zeros(5)},
        molecule=np.zeros(5, dtype=int),
        conformer=np.arange(5),
        molecule_names=("m",),
    )
    from ase import Atoms

    from ekd.deploy.calculator import EKDCalculator

    calc = EKDCalculator(str(head_file))
    want = []
    for x in coords:
        atoms = Atoms(numbers=numbers, positions=x)
        atoms.calc = calc
        atoms.get_forces()
        want.append(calc.results["forces_std"])
    want = np.concatenate(want)
    np.testing.assert_allclose(uncertainty.predict_sigma(head_file, data).ravel(), want, rtol=1e-10, atol=0)
    t = uncertainty.threshold(head_file, data, 0.9)
    assert t["sigma_ev_A"] == pytest.approx(np.quantile(want, 0.9), rel=1e-10) and t["n_atoms"] == 45
    with pytest.raises(ValueError, match=r"quantile: must be in \(0, 1\]"):
        uncertainty.threshold(head_file, data, 99.9)


def test_ase_run_records_the_calculators_forces_std_max(head_file):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from ekd.deploy.calculator import EKDCalculator
    from ekd.md.engines import FRICTION_PER_FS

    spec = RunSpec(
        model_paths=(str(head_file),), dt_fs=0.25, t_max_ps=0.001, equilibration_ps=0.0005, n_molecules=4,
        energy_every_fs=0.5,
    )  # fmt: skip
    out = run_one(spec)
    json.dumps(out)
    series = out["sigma"]
    assert not out["failed"] and series["steps"] == [0, 2, 4, 6]  # 2 Langevin + 4 NVE steps, every 2nd
    assert series["times_ps"] == [k * 0.25e-3 for k in series["steps"]]

    # replay the same protocol (its random numbers are seeded) with a calculator of our own
    atoms = initial_state(spec, 3.5)
    atoms.calc = EKDCalculator(str(head_file))
    atoms.get_forces()
    want = {0: float(np.max(atoms.calc.results["forces_std"]))}
    langevin = Langevin(
        atoms, spec.dt_fs * units.fs, temperature_K=spec.temperature, friction=FRICTION_PER_FS / units.fs,
        fixcm=False, rng=np.random.default_rng(spec.seed),
    )  # fmt: skip
    step = 0
    for _ in range(spec.n_equil):
        langevin.step()
        step += 1
        want[step] = float(np.max(atoms.calc.results["forces_std"]))
    verlet = VelocityVerlet(atoms, spec.dt_fs * units.fs)
    for _ in range(spec.n_nve):
        verlet.step()
        step += 1
        want[step] = float(np.max(atoms.calc.results["forces_std"]))
    assert np.ptp(list(want.values())) > 0
    assert series["max_ev_A"] == pytest.approx([want[k] for k in series["steps"]], rel=1e-12)


def test_sweep_records_thresholds_and_alarms_and_redoes_results_without_sigma(head_file, tmp_path, monkeypatch):
    from dataclasses import replace

    from ekd import config
    from ekd.md import stability

    values = dict(n_molecules=4, t_max_ps=0.002, equilibration_ps=0.0, timesteps_fs=(0.5, 20.0), n_runs=1, workers=1)
    cfg = replace(config.default_config(), run_dir=str(tmp_path), md=config.MDConfig(**values))
    box = initial_state(RunSpec(model_paths=(str(head_file),), dt_fs=0.5, t_max_ps=0.002, n_molecules=4), 3.5)
    from ekd.data import Dataset

    # "training configurations": the box's atoms as one isolated configuration
    data = Dataset(
        species=box.numbers[None].astype(np.int64),
        coordinates=box.positions[None],
        properties={"energy": np.zeros(1)},
        molecule=np.zeros(1, dtype=int),
        conformer=np.arange(1),
        molecule_names=("box",),
    )
    models = {"student_gen1": [str(head_file)]}
    first = stability.md_stability(cfg, models=models, progress=False, training={"student_gen1": [data]})
    (limit,) = first["sigma_thresholds"].values()
    assert limit["quantile"] == uncertainty.QUANTILE and limit["n_atoms"] == len(box)
    assert first["alarms"][0]["runs"] == 2 and "Predicted uncertainty as an alarm" in first["markdown"]
    saved = json.loads((tmp_path / "md" / "ase" / "stability.json").read_text())
    assert saved["alarms"] == first["alarms"] and saved["sigma_thresholds"] == first["sigma_thresholds"]
    assert all(r["sigma"]["max_ev_A"] for r in first["results"])

    def no_run(spec, keep_positions=False):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(stability, "run_one", no_run)
    again = stability.md_stability(cfg, models=models, progress=False, training={"student_gen1": [data]})
    assert again["alarms"] == first["alarms"]
    # a result of an earlier ekd (no sigma series) of a model with a head is redone
    (path,) = (tmp_path / "md" / "ase" / "student_gen1" / "member_00").glob("dt0.5_*.json")
    old = json.loads(path.read_text())
    del old["sigma"]
    path.write_text(json.dumps(old))
    with pytest.raises(AssertionError, match="run again"):
        stability.md_stability(cfg, models=models, progress=False)


@pytest.mark.parametrize("dt_fs", [0.5, 20.0])
def test_lammps_records_the_same_sigma_series_as_ase(head_file, dt_fs):
    """NVE from the same state is deterministic: both engines' series agree step by step (a huge
    time step: up to and including the failing step)."""
    import shutil
    import sys
    from pathlib import Path

    if not (Path(sys.executable).parent / "lmp").exists() and not shutil.which("lmp"):
        pytest.skip("no lmp in the environment")
    runs = {}
    for engine in ("ase", "lammps"):
        spec = RunSpec(
            model_paths=(str(head_file),), dt_fs=dt_fs, t_max_ps=dt_fs * 6e-3, equilibration_ps=0.0,
            n_molecules=4, energy_every_fs=2 * dt_fs, engine=engine,
        )  # fmt: skip
        runs[engine] = run_one(spec)
    ase, lmp = runs["ase"]["sigma"], runs["lammps"]["sigma"]
    assert runs["ase"]["failed"] == runs["lammps"]["failed"] and runs["ase"]["fail_step"] == runs["lammps"]["fail_step"]
    assert lmp["steps"] == ase["steps"] and lmp["times_ps"] == pytest.approx(ase["times_ps"])
    assert lmp["max_ev_A"] == pytest.approx(ase["max_ev_A"], rel=1e-6)
    if dt_fs < 1:
        # with a Langevin part (the engines draw different random forces): the same steps
        spec = RunSpec(
            model_paths=(str(head_file),), dt_fs=dt_fs, t_max_ps=0.002, equilibration_ps=0.0015, n_molecules=4,
            energy_every_fs=1.0, engine="lammps",
        )  # fmt: skip
        assert run_one(spec)["sigma"]["steps"] == [0, 2, 3, 5, 7]  # 3 Langevin + 4 NVE steps, every 2nd of each
