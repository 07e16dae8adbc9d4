"""pair_style ekd with ONE student that predicts its teachers' force spread (issue 28): the
per-atom ``force_std`` of ``fix pair`` is that prediction, equal to EKDCalculator's (float64) on
1 and 2 ranks in every mode that runs the model; ``fix halt`` on its maximum stops a real ``lmp``
run; a file without the head gives 0 from one model, as before. Reference values come from
:class:`ekd.deploy.calculator.EKDCalculator` in the same process."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ekd import scripted
from ekd.config import ModelConfig
from ekd.deploy.model_file import save_model
from ekd.md.engines import thermo_rows
from ekd.training.models import add_sigma_head, build_model

from .conftest import pair_input
from .test_lammps import (
    SPREAD_FIX,
    ase_single_point,
    ch3ono_box,
    read_dump,
    run_lammps,
    single_point_script,
    write_data,
)

pytestmark = pytest.mark.lammps

ARCH = ModelConfig(
    l_max=2, n_interactions=2, n_atom_layers=1, width=8, n_sensitivities=5, cutoff_soft_max=3.0, cutoff_hard=3.5
)


def _export(path, head: bool, envsum: str = "auto"):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(ARCH, [6, 1, 7, 8])
    if head:
        add_sigma_head(model, 7, log_sigma_mean=0.3)
        with torch.no_grad():  # an output that varies between atoms (a fresh head is nearly flat)
            model.uncertainty.out.weight.mul_(20.0)
    module = scripted.script_member(model, dtype=torch.float64, envsum=envsum)
    save_model(module, path, scripted.metadata(model, module))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sigma_models")
    return {"head": _export(d / "head.pt", True), "plain": _export(d / "plain.pt", False)}


@pytest.mark.parametrize("nprocs, mode", [(1, "images"), (1, "ghosts"), (1, "halo"), (2, "ghosts"), (2, "halo")])
def test_force_std_of_one_student_is_its_predicted_spread(tmp_path, files, nprocs, mode):
    atoms = ch3ono_box(3, seed=7)  # 27 molecules, 13.5 A: two ranks split it
    write_data(atoms, tmp_path / "data.lmp")
    script = single_point_script([files["head"]], True, extra=SPREAD_FIX, columns="f_spread", mode=mode)
    proc = run_lammps(tmp_path, script, nprocs=nprocs)
    assert f"pair_style ekd: mode {mode}" in proc.stdout
    dump = read_dump(tmp_path / "forces.dump")
    e_a, f_a, _, std_a = ase_single_point(atoms, [files["head"]])
    assert np.ptp(np.log(std_a)) > 0.5  # not a constant
    np.testing.assert_allclose(dump[:, 4], std_a, rtol=1e-10)
    # the head leaves energy and forces alone: those of the same weights without it
    e_p, f_p, _, std_p = ase_single_point(atoms, [files["plain"]])
    assert e_a == e_p and np.array_equal(f_a, f_p) and not std_p.any()
    np.testing.assert_allclose(dump[:, 1:4], f_a, rtol=0, atol=1e-11 * np.abs(f_a).max())
    assert abs(thermo_rows(proc.stdout)[-1]["PotEng"] - e_a) <= 1e-11 * abs(e_a)


def test_a_file_without_the_head_gives_zero_from_one_model(tmp_path, files):
    atoms = ch3ono_box(2, seed=5)
    write_data(atoms, tmp_path / "data.lmp")
    run_lammps(tmp_path, single_point_script([files["plain"]], True, extra=SPREAD_FIX, columns="f_spread"))
    assert not read_dump(tmp_path / "forces.dump")[:, 4].any()


@pytest.mark.parametrize("nprocs", [1, 2])
def test_fix_halt_on_the_predicted_spread_stops_the_run(tmp_path, files, nprocs):
    """The lammps_plugin/README.md recipe: the run stops at the first check where the largest
    predicted spread passes the threshold (here below the starting value: at step 0's check, the
    first multiple of N = 5), not after its 50 steps."""
    atoms = ch3ono_box(3, seed=7)
    write_data(atoms, tmp_path / "data.lmp")
    start = ase_single_point(atoms, [files["head"]])[3].max()
    script = (
        pair_input([files["head"]], "mode auto", boundary="p p p")
        + f"""
fix spread all pair 5 ekd force_std 0
compute smax all reduce max f_spread
variable smax equal c_smax
fix nve all nve
fix stop all halt 5 v_smax > {0.5 * start:.6g} error soft
thermo_style custom step pe v_smax
thermo 5
timestep 0.1
run 50
"""
    )
    proc = run_lammps(tmp_path, script, nprocs=nprocs)
    met = re.search(r"Fix halt condition for fix-id stop met on step (\d+) with value (\S+)", proc.stdout)
    assert met, proc.stdout[-2000:]
    assert int(met.group(1)) == 5 and float(met.group(2)) > 0.5 * start
    # a threshold above it lets the same run finish
    script = script.replace(f"> {0.5 * start:.6g}", f"> {10 * start:.6g}")
    proc = run_lammps(tmp_path, script, nprocs=nprocs)
    assert "Fix halt condition" not in proc.stdout and thermo_rows(proc.stdout)[-1]["Step"] == 50
