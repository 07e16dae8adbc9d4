"""MD throughput of one exported model: LAMMPS `pair_style ekd` against ekd's ASE calculator.

    python bench/lammps_md.py [--steps 10] [--threads 1,2] [--mpi] [--model student.pt | --member DIR]

System: 448 CH3ONO molecules (3,136 atoms) in a 35.7 Angstrom periodic cube at ~1.0 g/cm^3 (the box
of bench/neighbors.py). Model: --model (an exported file, e.g. the distilled student) or, by
default, ekd's toy message-passing model (ekd.testing.toy_model: 2 interaction layers, cutoff
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

--member DIR (a trained ekd member, e.g. runs/.../student/member_00) is exported to a temporary
float32 TorchScript file (ekd.deploy.export.export_member) for LAMMPS and EKDCalculator, and the same
member also runs in hippynn's own ASE calculator (hippynn.interfaces.ase_interface.HippynnCalculator,
energy node = the member's HEnergy node, en_unit kcal/mol, float32 like the exported file) with each
of --hippynn-kernels (default: hippynn's numba kernels, as hippynn runs by default on CPU, then ekd's
kernels). HippynnCalculator replaces the model's pair indexer by external pairs from ASE's
NeighborList (NewPrimitiveNeighborList, cutoff + 1 A skin, rebuilt only when an atom moves more
than half the skin), so hippynn's own periodic pair finders (PeriodicPairIndexer: >22 GB on this
box) are not involved. It also returns the stress (a strain derivative) on every call: that is how
hippynn's calculator works. Its rows run --hippynn-steps steps (one evaluation takes seconds) and
numba is limited to the torch thread count. Before timing, one energy + force evaluation of the
unperturbed box by every engine is compared with EKDCalculator (max |dF|, |dE|).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.io.lammpsdata import write_lammps_data
from ase.md.verlet import VelocityVerlet
from lammps_nve import BIN, TIMESTEP_FS, nve_script, run_lmp  # bench/: first on the path of a script

import ekd
from ekd.deploy.calculator import EKDCalculator
from ekd.deploy.model_file import load_model, save_model
from ekd.md.box import methyl_nitrite_box  # the box of bench/neighbors.py and of ekd md-stability
from ekd.testing import toy_model
from ekd.training.models import use_kernels


def lammps_rate(workdir: Path, model: Path, species, n_atoms: int, steps: int, threads: int, nprocs: int = 1):
    """(atom-steps per wall second, per CPU second, mode) of `steps` NVE steps of pair_style ekd."""
    out = run_lmp(workdir, nve_script(model, species, steps, f"threads {threads}"), nprocs).stdout
    loop = float(re.search(r"Loop time of ([0-9.eE+-]+) on", out).group(1))
    cpu_percent = float(re.search(r"([0-9.]+)% CPU use", out).group(1))  # of one rank's process
    mode = re.search(r"pair_style ekd: mode (\w+)", out).group(1)
    return n_atoms * steps / loop, n_atoms * steps / (loop * cpu_percent / 100 * nprocs), mode


def lammps_single_point(workdir: Path, model: Path, species, n_atoms: int) -> tuple[float, np.ndarray]:
    """(energy eV, forces [N, 3] eV/A) of pair_style ekd on data.lmp (`run 0`, atoms in file order)."""
    script = f"""
units real
atom_style atomic
boundary p p p
read_data data.lmp
pair_style ekd threads 1
pair_coeff * * {model} {" ".join(species)}
thermo_style custom step pe
run 0
print "EKD_BENCH_PE $(pe:%.10f)"
write_dump all custom forces.dump id fx fy fz modify sort id format float %.10g
"""
    (workdir / "in_sp.lmp").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(BIN / "lmp"), "-in", "in_sp.lmp", "-log", "none"]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lmp failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    pe = float(re.search(r"^EKD_BENCH_PE ([0-9.eE+-]+)", proc.stdout, re.M).group(1))
    forces = np.loadtxt(workdir / "forces.dump", skiprows=9)
    assert forces.shape == (n_atoms, 4) and (forces[:, 0] == np.arange(1, n_atoms + 1)).all()
    kcal = units.kcal / units.mol  # LAMMPS "real" units: kcal/mol, kcal/mol/A
    return pe * kcal, forces[:, 1:] * kcal


def hippynn_calculator(member, kernels: str):
    """hippynn's ASE calculator on `member` (ekd.training.train.Member), float32, with the named ekd kernel choice."""
    from hippynn.interfaces.ase_interface import HippynnCalculator

    use_kernels(kernels)
    calc = HippynnCalculator(member.model.henergy, en_unit=units.kcal / units.mol)
    return calc.to(torch.float32)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def ase_rate(atoms, calc, steps: int, threads: int) -> tuple[float, float]:
    """(atom-steps per wall second, per CPU second) of `steps` NVE steps with an ASE calculator
    (`calc`: an exported model file for EKDCalculator, or a callable returning a fresh calculator)."""
    set_threads(threads)
    atoms = atoms.copy()
    atoms.calc = calc() if callable(calc) else EKDCalculator(calc)
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
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="an exported model (default: the toy model)")
    src.add_argument("--member", type=Path, help="a trained ekd member directory (also runs hippynn's ASE calculator)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="toy model precision")
    p.add_argument("--hippynn-steps", type=int, default=3, help="MD steps per round of hippynn's ASE calculator")
    p.add_argument(
        "--hippynn-kernels", default="hippynn-numba,ekd", help="comma-separated kernels for hippynn's calculator"
    )
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    kernels = [k for k in args.hippynn_kernels.split(",") if k] if args.member else []

    atoms = methyl_nitrite_box(448, seed=0)
    n = len(atoms)
    with tempfile.TemporaryDirectory(prefix="ekd-bench-") as tmp:
        tmp = Path(tmp)
        model, member = args.model, None
        if args.member is not None:
            from ekd.deploy.export import export_member
            from ekd.training.train import load_member

            model = tmp / "member.pt"
            export_member(args.member, model, dtype="float32")
            member = load_member(args.member)
        elif model is None:
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
        name = f"{args.member} -> float32 TorchScript" if member is not None else model.name
        print(
            f"system: {n} atoms (448 CH3ONO, {atoms.cell[0, 0]:.1f} A cube); model: {name} "
            f"({meta.role}, {meta.dtype}, cutoff {meta.cutoff} A, {meta.n_interactions} layers); "
            f"{args.steps} NVE steps of {TIMESTEP_FS} fs per row"
            + (f" ({args.hippynn_steps} for hippynn's calculator)" if kernels else "")
        )

        # agreement of the engines on one energy + force evaluation of the box, before timing
        set_threads(threads[0])
        ref = atoms.copy()
        ref.calc = EKDCalculator(model)
        e_ref, f_ref = ref.get_potential_energy(), ref.get_forces()
        checks = [("LAMMPS pair_style ekd", lammps_single_point(tmp, model, species, n))]
        for k in kernels:
            other = atoms.copy()
            other.calc = hippynn_calculator(member, k)
            checks.append((f"hippynn ASE ({k})", (other.get_potential_energy(), other.get_forces())))
        print(
            f"agreement with ASE (ekd.deploy.calculator) on the unperturbed box: E = {e_ref:.4f} eV, max |F| = "
            f"{np.abs(f_ref).max():.3f} eV/A"
        )
        for label, (e, f) in checks:
            print(f"  {label:<30} |dE| {abs(e - e_ref) * 1e3:8.3f} meV   max |dF| {np.abs(f - f_ref).max():.2e} eV/A")

        print(f"{'engine':<32}{'threads':>8}{'s/step':>8}{'atom-steps/s':>14}{'per CPU s':>11}{'LAMMPS/this':>18}")
        print(f"{'':<32}{'':>8}{'(wall)':>8}{'(wall)':>14}{'':>11}{'(wall, CPU)':>18}")
        summary = []
        for t in threads:
            lmp, ase = (0.0, 0.0), (0.0, 0.0)
            hip = dict.fromkeys(kernels, (0.0, 0.0))
            for _ in range(args.rounds):
                ase = max(ase, ase_rate(atoms, model, args.steps, t))
                *rates, mode = lammps_rate(tmp, model, species, n, args.steps, t)
                lmp = max(lmp, tuple(rates))
                for k in kernels:
                    hip[k] = max(
                        hip[k], ase_rate(atoms, lambda k=k: hippynn_calculator(member, k), args.hippynn_steps, t)
                    )
            print(f"{'LAMMPS pair_style ekd (' + mode + ')':<32}{t:>8}{n / lmp[0]:>8.3f}{lmp[0]:>14.0f}{lmp[1]:>11.0f}")
            for label, r in [("ASE (ekd.deploy.calculator)", ase)] + [(f"hippynn ASE ({k})", hip[k]) for k in kernels]:
                ratio = f"{lmp[0] / r[0]:.2f}x, {lmp[1] / r[1]:.2f}x"
                print(f"{label:<32}{t:>8}{n / r[0]:>8.3f}{r[0]:>14.0f}{r[1]:>11.0f}{ratio:>18}")
                summary.append((t, label, lmp[0] / r[0], lmp[1] / r[1]))
        if args.mpi:
            *mpi, mode = lammps_rate(tmp, model, species, n, args.steps, 1, nprocs=2)
            print(
                f"{'LAMMPS 2 MPI ranks (' + mode + ')':<32}{'1x2':>8}{n / mpi[0]:>8.3f}{mpi[0]:>14.0f}{mpi[1]:>11.0f}"
            )
        for t, label, wall, cpu in summary:
            if label.startswith("hippynn"):
                verdict = "meets" if min(wall, cpu) >= 5 else ("meets on CPU time" if cpu >= 5 else "misses")
                print(f"LAMMPS / {label}, {t} thread(s): {wall:.2f}x wall, {cpu:.2f}x CPU ({verdict} the 5x target)")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
