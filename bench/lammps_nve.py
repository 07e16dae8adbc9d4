"""What bench/lammps_md.py and bench/lammps_scaling.py share: the NVE input of a timed LAMMPS run
of `pair_style ekd` and the command line that runs it (on MPI ranks, one OpenMP thread each).

Not a benchmark itself: imported by the two scripts (they run from bench/, which Python puts first
on the import path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
TIMESTEP_FS = 0.25


def nve_script(model, species, steps: int, pair_options: str = "", before_read: str = "", after_read: str = "") -> str:
    """Velocity-Verlet NVE from 300 K (fixed velocity seed) for `steps` steps of `pair_style ekd
    <pair_options>` on data.lmp (units real); thermo output at the end only."""
    return f"""
units real
atom_style atomic
boundary p p p
{before_read}
read_data data.lmp
{after_read}
pair_style ekd {pair_options}
pair_coeff * * {model} {" ".join(species)}
velocity all create 300.0 4928459 mom yes rot yes dist gaussian
timestep {TIMESTEP_FS}
fix integrate all nve
thermo {steps}
run {steps}
"""


def run_lmp(workdir: Path, script: str, nprocs: int = 1, wrapper: list[str] = ()) -> subprocess.CompletedProcess:
    """The finished lmp process of `script` run in `workdir` (`wrapper`: a command that starts lmp);
    an error with the end of the output if lmp fails."""
    (workdir / "in.lmp").write_text(script)
    cmd = [*wrapper, str(BIN / "lmp"), "-in", "in.lmp", "-log", "none"]
    if nprocs > 1:
        cmd = [str(BIN / "mpirun"), "-np", str(nprocs), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lmp failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return proc
