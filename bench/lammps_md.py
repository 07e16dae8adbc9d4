"""MD throughput of one exported model: LAMMPS `pair_style ekd` against ekd's ASE calculator.

    python bench/lammps_md.py [--steps 10] [--threads 1,2] [--mpi] [--model student.pt]

System: 448 CH3ONO molecules (3,136 atoms) in a 35.7 Angstrom periodic cube at ~1.0 g/cm^3 (the box
of bench/neighbors.py). Model: --model (an exported file, e.g. the distilled student) or, by
default, ekd's toy message-passing model (ekd.export.toy_model: 2 interaction layers, cutoff
5 Angstrom, width 32, float32) standing in until the HIPNN exporter lands.

Both engines run velocity-Verlet NVE (0.25 fs, 300 K start) on the same file and box, with torch
limited to the same number of threads (LAMMPS: `pair_style ekd threads N`; ASE: torch.set_num_threads).
Throughput is atom-steps per second of the MD loop after one untimed force call (LAMMPS: its "Loop
time", which excludes setup; ASE: dyn.run), per wall-clock second and per CPU second of the process
(LAMMPS: its loop "% CPU use"; ASE: time.process_time). On a shared machine the CPU figure is the
fairer one: a process that waits for a core loses wall time but not CPU time. Each engine runs
--rounds times, alternating, and its best round counts. On one rank pair_style ekd folds ghost
atoms onto their owners ("images" mode) and evaluates the model on the 3,136 atoms, as ASE does;
--mpi adds LAMMPS on 2 MPI ranks x 1 thread ("ghosts" mode: each rank evaluates its atoms plus a
ghost shell of n_interactions x cutoff). Ratios LAMMPS / ASE are printed per thread count, all from
this one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.io.lammpsdata import write_lammps_data
from ase.md.verlet import VelocityVerlet

sys.path.insert(0, str(Path(__file__).parent))
from neighbors import methyl_nitrite_box  # noqa: E402  (the benchmark box, shared with bench/neighbors.py)

import ekd  # noqa: E402
from ekd.calculator import EKDCalculator  # noqa: E402
from ekd.export import load_model, save_model, toy_model  # noqa: E402

BIN = Path(sys.executable).parent
TIMESTEP_FS = 0.25


def lammps_rate(workdir: Path, model: Path, species, n_atoms: int, steps: int, threads: int, nprocs: int = 1):
    """(atom-steps per wall second, per CPU second, mode) of `steps` NVE steps of pair_style ekd."""
    script = f"""
units real
atom_style atomic
boundary p p p
read_data data.lmp
pair_style ekd threads {threads}
pair_coeff * * {model} {" ".join(species)}
velocity all create 300.0 4928459 mom yes rot yes dist gaussian
timestep {TIMESTEP_FS}
fix integrate all nve
thermo {steps}
run {steps}
"""
    (workdir / "in.lmp").write_text(script)
    cmd = [str(BIN / "lmp"), "-in", "in.lmp", "-log", "none"]
    if nprocs > 1:
        cmd = [str(BIN / "mpirun"), "-np", str(nprocs), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lmp failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    loop = float(re.search(r"Loop time of ([0-9.eE+-]+) on", proc.stdout).group(1))
    cpu_percent = float(re.search(r"([0-9.]+)% CPU use", proc.stdout).group(1))  # of one rank's process
    mode = re.search(r"pair_style ekd: mode (\w+)", proc.stdout).group(1)
    return n_atoms * steps / loop, n_atoms * steps / (loop * cpu_percent / 100 * nprocs), mode


def ase_rate(atoms, model: Path, steps: int, threads: int) -> tuple[float, float]:
    """(atom-steps per wall second, per CPU second) of `steps` NVE steps with EKDCalculator."""
    torch.set_num_threads(threads)
    atoms = atoms.copy()
    atoms.calc = EKDCalculator(model)
    atoms.set_momenta(
        np.random.default_rng(0).normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses()[:, None] * units.kB * 300.0)
    )
    dyn = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
    atoms.get_forces()  # untimed, like LAMMPS's setup
    t0, c0 = time.perf_counter(), time.process_time()
    dyn.run(steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(atoms) * steps / wall, len(atoms) * steps / cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="MD steps per engine, round and thread count")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per engine; the best counts")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--mpi", action="store_true", help="also LAMMPS on 2 MPI ranks x 1 thread")
    p.add_argument("--model", type=Path, help="an exported model (default: the toy model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="toy model precision")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]

    atoms = methyl_nitrite_box((8, 8, 7), seed=0)
    with tempfile.TemporaryDirectory(prefix="ekd-bench-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            module, meta = toy_model(("C", "H", "N", "O"), cutoff=5.0, n_interactions=2, width=32, dtype=args.dtype)
            model = tmp / "toy.pt"
            save_model(module, model, meta)
        _, meta = load_model(model)
        species = sorted(set(atoms.get_chemical_symbols()), key=meta.species.index)
        with open(tmp / "data.lmp", "w") as f:
            write_lammps_data(f, atoms, specorder=species, masses=True, units="real", atom_style="atomic")

        print(
            f"ekd {ekd.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores"
        )
        print(
            f"system: {len(atoms)} atoms (448 CH3ONO, {atoms.cell[0, 0]:.1f} A cube); model: {model.name} "
            f"({meta.role}, {meta.dtype}, cutoff {meta.cutoff} A, {meta.n_interactions} layers); "
            f"{args.steps} NVE steps of {TIMESTEP_FS} fs per row"
        )
        print(f"{'engine':<32}{'threads':>8}{'s/step':>8}{'atom-steps/s':>14}{'per CPU s':>11}{'LAMMPS/ASE':>18}")
        print(f"{'':<32}{'':>8}{'(wall)':>8}{'(wall)':>14}{'':>11}{'(wall, CPU)':>18}")
        for t in threads:
            ase, lmp = (0.0, 0.0), (0.0, 0.0)
            for _ in range(args.rounds):
                ase = max(ase, ase_rate(atoms, model, args.steps, t))
                *rates, mode = lammps_rate(tmp, model, species, len(atoms), args.steps, t)
                lmp = max(lmp, tuple(rates))
            n = len(atoms)
            print(f"{'ASE (ekd.calculator)':<32}{t:>8}{n / ase[0]:>8.3f}{ase[0]:>14.0f}{ase[1]:>11.0f}")
            ratio = f"{lmp[0] / ase[0]:.2f}x, {lmp[1] / ase[1]:.2f}x"
            print(
                f"{'LAMMPS pair_style ekd (' + mode + ')':<32}{t:>8}{n / lmp[0]:>8.3f}{lmp[0]:>14.0f}"
                f"{lmp[1]:>11.0f}{ratio:>18}"
            )
        if args.mpi:
            *mpi, mode = lammps_rate(tmp, model, species, len(atoms), args.steps, 1, nprocs=2)
            print(
                f"{'LAMMPS 2 MPI ranks (' + mode + ')':<32}{'1x2':>8}{len(atoms) / mpi[0]:>8.3f}{mpi[0]:>14.0f}"
                f"{mpi[1]:>11.0f}"
            )
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
