"""``ekd md-stability``: MD stability vs time step per role (:mod:`ekd.md.stability`)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .common import UsageError, add_common, config_for, positive


def md_stability(args) -> int:
    from ..config import build
    from ..store import lock_dir
    from ..workflow import Run

    cfg = config_for(args)
    changes = {
        k: v for k, v in (("engine", args.engine), ("n_runs", args.runs), ("n_models", args.models)) if v is not None
    }
    if args.roles:
        changes["roles"] = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    if args.dt:
        try:
            changes["timesteps_fs"] = tuple(float(x) for x in args.dt.split(","))
        except ValueError:
            raise UsageError(f"--dt {args.dt}: expected comma-separated time steps in fs, e.g. 0.5,1,2") from None
    if args.workers is not None:
        changes["workers"] = args.workers
    # rebuilt through the loader so that the overrides are validated like the YAML
    md = build(type(cfg.md), {**cfg.to_dict()["md"], **changes}, "md")
    cfg = replace(cfg, md=md)
    run_dir = Path(args.run_dir or cfg.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist; check --run-dir, or make it with `ekd run`")
    if args.device is not None:
        # the ASE engine's MD workers read it (not a field of md: it must not enter the runs' digests)
        from ..ops.devices import MD_DEVICE_ENV

        if args.engine == "lammps" or (args.engine is None and cfg.md.engine == "lammps"):
            raise UsageError("--device: the lammps engine runs pair_style ekd on the CPU; use --engine ase")
        os.environ[MD_DEVICE_ENV] = args.device
    # --roles names exactly the groups wanted: every one must exist
    strict = bool(args.roles)
    with lock_dir(run_dir):
        # an evaluated run: the table joins metrics.json and report.md (and the run says when
        # config.yaml records another configuration); before that, only the sweep reports
        evaluated = (run_dir / "metrics.json").exists()
        run = Run(cfg, run_dir, progress=evaluated and not args.quiet)
        out = run.md_stability(strict_roles=strict, progress=not args.quiet)
    print(out["markdown"])
    print(f"figure: {out['figure']}")
    return 0


def add_parsers(sub) -> None:
    sp = sub.add_parser("md-stability", help="MD stability vs time step per role (CH3ONO box; the paper's Fig. 3)")
    add_common(sp, device=True)
    sp.add_argument("--engine", choices=["ase", "lammps"], help="MD engine (default: md.engine)")
    sp.add_argument("--roles", help="comma-separated groups, e.g. teacher,student_gen2 (default: md.roles)")
    sp.add_argument("--dt", help="comma-separated time steps in fs (default: md.timesteps_fs)")
    sp.add_argument("--runs", type=positive, help="velocity seeds per model (default: md.n_runs)")
    sp.add_argument("--models", type=positive, help="models per role (default: md.n_models)")
    sp.set_defaults(func=md_stability)
