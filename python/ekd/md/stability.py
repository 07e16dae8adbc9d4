"""MD stability sweep: fraction of runs that fail vs time step, per role (the paper's Fig. 3).

A run (:func:`run_one`): the CH3ONO box of :func:`ekd.md.box.methyl_nitrite_box` (``md.seed`` of
the box is the run's config seed), Maxwell-Boltzmann velocities at ``temperature`` from the run's
velocity seed (zero total momentum), ``equilibration_ps`` of Langevin dynamics, then up to
``t_max_ps`` of NVE velocity Verlet, all with time step dt. It fails at the first frame (every
step) whose smallest interatomic distance is below ``min_distance`` (0.5 A). ``t_fail_ps`` counts
from the start of the run (equilibration included). For runs that survive, the energy drift is the
slope of a least-squares line through the NVE total energy per atom vs time (eV/atom/ps).

The sweep (:func:`md_stability`): every model file of every group given x ``n_runs`` seeds x every dt
(this package knows model files, not run directories: :meth:`ekd.workflow.Run.md_stability` exports
a run's members and hands their files over).
Runs are independent jobs in worker processes; each writes its result to
``<run_dir>/md/<engine>/<role>/member_MM/dt<dt>_seed<s>.json`` together with a digest of
everything it depends on (model file, box, protocol), and a rerun reuses results whose digest
matches. Fraction failed carries a Wilson 68 % interval (one standard error's worth: binomial
counts at 2-10 runs make the plain standard error 0 at 0 or 100 %).

Models with an uncertainty head (issue 28): each run also records the largest predicted sigma
over time, and, given the members' training configurations, the sweep reports how long before a
failure it crossed a threshold chosen from those configurations, and how often runs that did not
fail crossed it (:mod:`ekd.md.uncertainty`). Results recorded before ekd recorded sigma are redone
for such models (reused as before for the others) and report as before.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..groups import is_main_group
from ..jobs import run_parallel
from ..store import atomic_text, atomic_write, digest, file_digest, without_added_defaults

REQUIRED_ELEMENTS = ("C", "H", "N", "O")
# RunSpec fields added after the first results, left out of digests at these defaults
ADDED_FIELDS = {"energy_every_fs": 5.0}


@dataclass(frozen=True)
class RunSpec:
    """One MD run (the protocol of the module docstring)."""

    model_paths: tuple[str, ...]  # exported model file(s); several: their ensemble mean
    dt_fs: float  # time step, fs
    t_max_ps: float  # NVE length of a run that does not fail, ps
    seed: int = 0  # velocities and thermostat
    n_molecules: int = 27  # CH3ONO molecules in the box
    density: float = 1.0  # g/cm^3
    temperature: float = 300.0  # K
    equilibration_ps: float = 0.05  # Langevin before the NVE part, ps
    min_distance: float = 0.5  # Angstrom: closer atoms end the run as failed
    engine: str = "ase"  # or "lammps"
    box_seed: int = 0  # placement of the molecules
    energy_every_fs: float = 5.0  # interval of the NVE energy frames (the drift fit), rounded to steps

    def check(self) -> None:
        if not (isinstance(self.dt_fs, int | float) and math.isfinite(self.dt_fs) and self.dt_fs > 0):
            raise ValueError(f"dt_fs: the time step must be > 0 fs, got {self.dt_fs!r}")
        if not self.t_max_ps > 0:
            raise ValueError(f"t_max_ps: must be > 0 ps, got {self.t_max_ps!r}")
        if self.equilibration_ps < 0:
            raise ValueError(f"equilibration_ps: must be >= 0 ps, got {self.equilibration_ps!r}")
        if self.engine not in ("ase", "lammps"):
            raise ValueError(f"engine: must be 'ase' or 'lammps', got {self.engine!r}")
        if not self.model_paths:
            raise ValueError("model_paths: give at least one exported model file")

    @property
    def n_equil(self) -> int:
        return round(self.equilibration_ps * 1e3 / self.dt_fs)

    @property
    def n_nve(self) -> int:
        return max(1, round(self.t_max_ps * 1e3 / self.dt_fs))

    def digest(self) -> str:
        d = without_added_defaults(asdict(self), ADDED_FIELDS)
        d["model_paths"] = [file_digest(p) for p in self.model_paths]
        return digest(d)


def check_models(model_paths) -> float:
    """Load each model's metadata; raise ValueError unless it knows C, H, N and O. Returns the
    largest cutoff (Angstrom)."""
    from ..deploy.model_file import load_model

    cutoff = 0.0
    for p in model_paths:
        _, meta = load_model(p)
        missing = [e for e in REQUIRED_ELEMENTS if e not in meta.species]
        if missing:
            raise ValueError(
                f"model {p}: species {list(meta.species)} lack {missing}; the CH3ONO stability test needs a model "
                f"of {list(REQUIRED_ELEMENTS)}"
            )
        cutoff = max(cutoff, meta.cutoff)
    return cutoff


def initial_state(spec: RunSpec, cutoff: float | None = None):
    """The box with Maxwell-Boltzmann velocities at ``spec.temperature`` (seed ``spec.seed``)."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from .box import methyl_nitrite_box

    atoms = methyl_nitrite_box(spec.n_molecules, spec.density, seed=spec.box_seed, cutoff=cutoff)
    thermalize_momenta(atoms, spec.temperature, rng=np.random.default_rng(spec.seed))
    Stationary(atoms)
    return atoms


def energy_drift(times_ps, etot_ev, n_atoms: int) -> float | None:
    """Slope of the least-squares line through total energy per atom vs time, eV/atom/ps."""
    if len(times_ps) < 3:
        return None
    slope = np.polyfit(np.asarray(times_ps), np.asarray(etot_ev) / n_atoms, 1)[0]
    return float(slope)


def run_one(spec: RunSpec, keep_positions: bool = False) -> dict:
    """Run ``spec`` (see the module docstring) and return its result dict (JSON-ready)."""
    from .engines import ENGINES

    spec.check()
    cutoff = check_models(spec.model_paths)
    atoms = initial_state(spec, cutoff)
    dt_ps = spec.dt_fs * 1e-3
    # energy frames every ~5 fs by default: enough for a drift fit, cheap in LAMMPS's log
    every = max(1, round(spec.energy_every_fs / spec.dt_fs))
    raw = ENGINES[spec.engine](
        atoms,
        spec.model_paths,
        spec.dt_fs,
        spec.n_equil,
        spec.n_nve,
        spec.temperature,
        spec.seed,
        min_distance=spec.min_distance,
        energy_every=every,
    )
    failed = raw["failed"]
    result = {
        "spec": asdict(spec),
        "failed": bool(failed),
        "fail_step": raw["fail_step"],
        "t_fail_ps": raw["fail_step"] * dt_ps if failed else None,
        "failed_in_equilibration": bool(failed and raw["fail_step"] <= spec.n_equil),
        "steps": raw["steps"],
        "t_run_ps": raw["steps"] * dt_ps,
        "drift_ev_atom_ps": None if failed else energy_drift(raw["times_ps"], raw["etot_ev"], raw["n_atoms"]),
        "n_atoms": raw["n_atoms"],
        "wall_s": raw["wall_s"],
        "times_ps": raw["times_ps"],
        "etot_ev": raw["etot_ev"],
        # the largest predicted sigma over time (models with an uncertainty head; else None)
        "sigma": raw.get("sigma"),
    }
    if keep_positions:
        result["positions"] = raw["positions"]
    return result


# ---------------------------------------------------------------------------------------------
# the sweep


def _job(args: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    spec = RunSpec(**{**args["spec"], "model_paths": tuple(args["spec"]["model_paths"])})
    result = run_one(spec)
    result.update(role=args["role"], member=args["member"], digest=args["digest"])
    path = Path(args["out"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_text(path, json.dumps(result))  # an interrupted sweep never leaves half a result
    return result


def run_jobs(jobs: list[dict], workers: int, progress: bool = True) -> list[dict]:
    """Run sweep jobs (reusing finished ones) in ``workers`` processes; results in job order."""
    results: list[dict | None] = [None] * len(jobs)
    todo = []
    for k, job in enumerate(jobs):
        path = Path(job["out"])
        if path.exists():
            old = json.loads(path.read_text())
            # a model with a head whose result predates the sigma series: redone to record it
            stale = job.get("sigma") and old.get("sigma") is None
            if old.get("digest") == job["digest"] and not stale:
                results[k] = old
                continue
        todo.append(k)
    done = run_parallel(_job, [jobs[k] for k in todo], workers, "md runs", "run", progress, len(jobs) - len(todo))
    for k, result in zip(todo, done, strict=True):
        results[k] = result
    return results  # type: ignore[return-value]


def sweep_jobs(models: dict[str, list[str]], md, out_dir: Path, box_seed: int = 0) -> list[dict]:
    """Jobs for every role -> model files x seeds x dt of ``md`` (an :class:`ekd.config.MDConfig`)."""
    from .uncertainty import has_head

    jobs = []
    for role, paths in models.items():
        for m, path in enumerate(paths):
            head = has_head(path)
            for seed in range(md.n_runs):
                for dt in md.timesteps_fs:
                    spec = RunSpec(
                        model_paths=(str(path),),
                        dt_fs=float(dt),
                        t_max_ps=md.t_max_ps,
                        seed=seed,
                        n_molecules=md.n_molecules,
                        density=md.density,
                        temperature=md.temperature,
                        equilibration_ps=md.equilibration_ps,
                        min_distance=md.min_distance,
                        engine=md.engine,
                        box_seed=box_seed,
                    )
                    spec.check()
                    out = out_dir / md.engine / role / f"member_{m:02d}" / f"dt{dt:g}_seed{seed}.json"
                    job = {"spec": asdict(spec), "role": role, "member": m, "digest": spec.digest(), "out": str(out)}
                    jobs.append({**job, "sigma": head})
    return jobs


def select_roles(requested, present, strict: bool = False) -> list[str]:
    """The groups of ``requested`` (``md.roles`` or ``--roles``) that are among ``present`` (the
    run's group labels), in the requested order.

    A name that is no group of the run is an error naming it and the valid names, except, unless
    ``strict``, a main group that this configuration happens not to have (``student_gen2`` with one
    generation, ``baseline`` without reference forces): md.roles' default names them all.
    """
    present = list(present)
    unknown = [r for r in requested if r not in present and (strict or not is_main_group(r))]
    if unknown:
        raise ValueError(
            f"md.roles: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a group of "
            f"this run; its groups are {', '.join(present)}"
        )
    roles = [r for r in dict.fromkeys(requested) if r in present]
    if not roles:
        raise ValueError(f"md.roles: none of {list(requested)} is a group of this run; groups: {', '.join(present)}")
    return roles


def toy_pair(directory: Path) -> dict[str, list[str]]:
    """TESTS AND BENCHMARKS ONLY: two exported toy models (:func:`ekd.testing.toy_model`, same random
    weights, cutoff 4 A, float64) that the protocol must tell apart: "stable" keeps the toy's
    short-range repulsion (300 kcal/mol exp(-r / 0.3 A)), "unstable" has it turned attractive.
    Returns ``{"stable": [path], "unstable": [path]}`` (files written to ``directory``)."""
    import torch

    from ..deploy.model_file import _quiet_jit, save_model
    from ..testing.toy import toy_class, toy_model

    _, meta = toy_model(("C", "H", "N", "O"), cutoff=4.0, n_interactions=1, seed=1)
    out = {}
    for name, repulsion in (("stable", 300.0), ("unstable", -300.0)):
        torch.manual_seed(1)
        module = toy_class()(list(meta.atomic_numbers), 4.0, 1, 16, 8).to(torch.float64)
        module.repulsion = repulsion
        with _quiet_jit():
            scripted = torch.jit.script(module.eval())
        path = directory / f"toy_{name}.pt"
        save_model(scripted, path, replace(meta, description=f"toy, repulsion {repulsion} kcal/mol"))
        out[name] = [str(path)]
    return out


def wilson_interval(k: int, n: int, z: float = 1.0) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (z=1: ~68 %)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(results: list[dict]) -> list[dict]:
    """One row per (role, dt): runs, failed, fraction, Wilson interval, mean time to failure,
    mean and max |drift| of the surviving runs, wall time."""
    rows = {}
    for r in results:
        key = (r["role"], r["spec"]["dt_fs"])
        rows.setdefault(key, []).append(r)
    table = []
    for (role, dt), rs in rows.items():
        n, k = len(rs), sum(r["failed"] for r in rs)
        lo, hi = wilson_interval(k, n)
        t_fail = [r["t_fail_ps"] for r in rs if r["failed"]]
        drifts = [r["drift_ev_atom_ps"] for r in rs if not r["failed"] and r["drift_ev_atom_ps"] is not None]
        table.append(
            {
                "role": role,
                "dt_fs": dt,
                "runs": n,
                "failed": k,
                "fraction_failed": k / n,
                "wilson_lo": lo,
                "wilson_hi": hi,
                "mean_t_fail_ps": float(np.mean(t_fail)) if t_fail else None,
                "mean_drift_ev_atom_ps": float(np.mean(drifts)) if drifts else None,
                "max_abs_drift_ev_atom_ps": float(np.max(np.abs(drifts))) if drifts else None,
                "wall_s": float(sum(r["wall_s"] for r in rs)),
            }
        )
    return table


def markdown(table: list[dict], md, engine: str, n_atoms: int | None = None) -> str:
    """The report section: protocol, sizes (stating how they differ from the paper) and the table."""
    lines = [
        "## MD stability (CH3ONO, time-step sweep)",
        "",
        f"{md.n_molecules} CH3ONO molecules{f' ({n_atoms} atoms)' if n_atoms else ''} at {md.density} g/cm^3 in a "
        f"periodic cube (ekd's jittered-grid placement, random orientations, no intermolecular contact < 1.8 A); "
        f"Maxwell-Boltzmann velocities at {md.temperature} K, {md.equilibration_ps} ps Langevin (friction 0.01/fs), "
        f"then up to {md.t_max_ps} ps NVE velocity Verlet; engine: {engine}. A run fails at the first step with an "
        f"interatomic distance < {md.min_distance} A; time to failure counts from the start (equilibration "
        f"included). {md.n_runs} velocity seed(s) per model"
        + (f", {md.n_models} model(s) per role." if md.n_models else ", every model of each role."),
    ]
    if md.n_molecules < 448 or md.t_max_ps < 10 or md.n_runs < 10:
        lines += [
            "",
            "**Reduced scale for a CPU**: the paper runs 448 molecules for 10 ps, 8 models x 10 runs "
            "(`configs/paper.yaml`, `md:`).",
        ]
    lines += [
        "",
        "| role | dt (fs) | runs | failed | fraction failed (68 % Wilson) | mean t_fail (ps) | "
        "drift of survivors (eV/atom/ps, mean / max abs) | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(table, key=lambda r: (r["role"], r["dt_fs"])):
        tf = "-" if row["mean_t_fail_ps"] is None else f"{row['mean_t_fail_ps']:.3f}"
        dr = (
            "-"
            if row["mean_drift_ev_atom_ps"] is None
            else f"{row['mean_drift_ev_atom_ps']:.2e} / {row['max_abs_drift_ev_atom_ps']:.2e}"
        )
        lines.append(
            f"| {row['role']} | {row['dt_fs']:g} | {row['runs']} | {row['failed']} | {row['fraction_failed']:.2f} "
            f"[{row['wilson_lo']:.2f}, {row['wilson_hi']:.2f}] | {tf} | {dr} | {row['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def markdown_with_alarms(
    table: list[dict], md, engine: str, n_atoms: int | None, alarms: list[dict], limits: dict[str, dict]
) -> str:
    """:func:`markdown`, followed by the predicted-uncertainty alarm table when there is one (models
    with a head and a threshold; :func:`ekd.md.uncertainty.alarm_markdown`)."""
    from .uncertainty import alarm_markdown

    extra = alarm_markdown(alarms, limits)
    return markdown(table, md, engine, n_atoms) + ("\n".join(extra) + "\n" if extra else "")


def figure(table: list[dict], path: Path, title: str = "") -> Path:
    """Left: fraction failed vs dt, one line per role, Wilson intervals as error bars (like the paper's
    Fig. 3; roles are offset slightly along dt so that equal values stay visible). Right: mean time to
    failure of the failed runs vs dt (what separates roles when they all fail in a short run), on a
    log scale when the times span more than a factor of 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(9, 3.6))
    t_fail = [r["mean_t_fail_ps"] for r in table if r["mean_t_fail_ps"]]
    roles = sorted({r["role"] for r in table})
    for k, role in enumerate(roles):
        rows = sorted((r for r in table if r["role"] == role), key=lambda r: r["dt_fs"])
        shift = 0.02 * (k - (len(roles) - 1) / 2)
        x = [r["dt_fs"] + shift for r in rows]
        y = [r["fraction_failed"] for r in rows]
        # clipped at 0: at 0 or 100 % the interval's end can differ from the fraction by a rounding
        err = [
            [max(0.0, r["fraction_failed"] - r["wilson_lo"]) for r in rows],
            [max(0.0, r["wilson_hi"] - r["fraction_failed"]) for r in rows],
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=role)
        tf = [(r["dt_fs"], r["mean_t_fail_ps"]) for r in rows if r["mean_t_fail_ps"] is not None]
        if tf:
            ax_t.plot(*zip(*tf, strict=True), marker="o", label=role)
    ax.set_xlabel("time step (fs)")
    ax.set_ylabel("fraction of runs failed")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(frameon=False)
    ax_t.set_xlabel("time step (fs)")
    ax_t.set_ylabel("mean time to failure (ps)")
    if t_fail and max(t_fail) > 5 * min(t_fail):
        ax_t.set_yscale("log")  # roles failing within tens of fs stay apart from one lasting a ps
    else:
        ax_t.set_ylim(bottom=0)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        # like every other output of a run: a killed sweep leaves no half-written PNG
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path


def md_stability(
    cfg,
    run_dir: str | Path | None = None,
    models: dict[str, list[str]] | None = None,
    progress: bool = True,
    training: dict | None = None,
    quantile: float | None = None,
) -> dict:
    """The sweep of ``cfg.md`` over exported model files ``models`` (group name -> files; a run's
    members are exported by :meth:`ekd.workflow.Run.md_stability`, which ``ekd md-stability``
    calls). Writes ``<run_dir>/md/<engine>/{stability.json, stability.md, stability.png}`` and the
    runs' results below ``<run_dir>/md/<engine>/``; returns ``{"table", "markdown", "figure",
    "results", "sigma_thresholds", "alarms"}``.

    training: {group name: [Dataset, ...]}, the training configurations of each model of
    ``models[name]`` (in order): for models with an uncertainty head, the threshold of their
    predicted sigma (the ``quantile``, default :data:`ekd.md.uncertainty.QUANTILE`, of it over those
    configurations' atoms; cached in ``<run_dir>/md/thresholds/``) and the alarm table. None: no
    thresholds, no alarm table (the sigma series are recorded all the same)."""
    if models is None:
        raise ValueError(
            "md_stability: no model files given (models: group name -> exported model files); to sweep the "
            "members of a run directory use ekd.workflow.Run(cfg, run_dir).md_stability() or `ekd md-stability`"
        )
    md = cfg.md
    run_dir = Path(run_dir or cfg.run_dir)
    out_dir = run_dir / "md"
    for paths in models.values():
        check_models(paths)
    jobs = sweep_jobs(models, md, out_dir, box_seed=cfg.seed)
    results = run_jobs(jobs, md.workers, progress=progress)
    table = summarize(results)
    from .uncertainty import QUANTILE, alarm_table, thresholds

    limits = thresholds(models, training or {}, out_dir / "thresholds", QUANTILE if quantile is None else quantile)
    alarms = alarm_table(results, limits)
    engine_dir = out_dir / md.engine
    n_atoms = results[0]["n_atoms"] if results else None
    # the statement of sizes reports what ran, also when the caller chose the models
    shown = replace(md, n_models=max(len(v) for v in models.values())) if models else md
    text = markdown_with_alarms(table, shown, md.engine, n_atoms, alarms, limits)
    fig = figure(table, engine_dir / "stability.png", f"{md.n_molecules} CH3ONO, {md.t_max_ps} ps NVE, {md.engine}")
    engine_dir.mkdir(parents=True, exist_ok=True)
    atomic_text(engine_dir / "stability.md", text)
    summary = {"table": table, "md": asdict(md)}
    if limits:
        summary.update(sigma_thresholds=limits, alarms=alarms)
    atomic_text(engine_dir / "stability.json", json.dumps(summary, indent=1))
    return {
        "table": table,
        "markdown": text,
        "figure": str(fig),
        "results": results,
        "sigma_thresholds": limits,
        "alarms": alarms,
    }
