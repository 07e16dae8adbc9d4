"""Can the MD stability protocol tell a stable model from an unstable one?

    python bench/md_stability.py [--models a.pt b.pt ...] [--engine ase|lammps] [--t-max 0.1] [--runs 2]
    python bench/md_stability.py --run-dir runs/md_stability --role baseline --epochs 8

Runs an MD protocol (27 CH3ONO, 1.0 g/cm^3, Langevin then NVE; see :mod:`ekd.md.stability`) on each
model at every time step of the protocol and prints fraction failed and mean time to failure per
model.

- Without ``--models`` or ``--run-dir`` it compares two TEST models built from ekd's toy
  message-passing model (:func:`ekd.testing.toy_model`, same random weights), on the embedded
  default's protocol: "stable" keeps the toy's short-range repulsion (300 kcal/mol exp(-r/0.3 A)),
  "unstable" has it turned attractive, so atoms fall into each other; the protocol must report the
  second as failing more often and sooner.
- ``--models`` takes exported members (``ekd export``).
- ``--run-dir`` takes a finished run: member 0 of ``--role`` is retrained from scratch with the
  same seed, data, splits and targets but only ``--epochs`` epochs (a deliberately undertrained
  copy), and both are run through the run's own ``md`` protocol: the protocol is only useful if
  the undertrained copy fails more often than the trained member.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ekd import config
from ekd.md.stability import md_stability, toy_pair


def undertrained_pair(run_dir: Path, role: str, epochs: int, work: Path) -> tuple[config.Config, dict[str, list[str]]]:
    """(the run's config, {"<role>_trained": [file], "<role>_<epochs>ep": [file]}) for member 0 of
    ``role`` in the finished run at ``run_dir``: the trained member and its undertrained copy,
    both exported to ``work``."""
    from ekd.deploy.export import export_member
    from ekd.training.train import MemberSpec, train_member
    from ekd.workflow import Run, load_member_data

    cfg = config.load(run_dir / "config.yaml")
    run = Run(cfg, run_dir, progress=False)
    group = run.group(role)
    trained = run.member_dir(group, 0)
    if not (trained / "done.json").exists():
        raise SystemExit(f"--run-dir {run_dir}: {role} member 0 has not finished training ({trained})")
    # exactly what the run's own job for member 0 trained on: the run's units, splits by identity
    dataset, splits = load_member_data(run.member_inputs(group, 0))
    spec = MemberSpec(**run.member_spec(group, 0))
    short = replace(cfg, train=replace(cfg.train, max_epochs=epochs))
    under = work / f"{role}_{epochs}ep"
    t0 = time.perf_counter()
    done = train_member(spec, short, dataset, splits, under)
    print(f"undertrained {role} member 0: {done.get('epochs', epochs)} epochs in {time.perf_counter() - t0:.0f} s")
    a, b = work / "trained.pt", work / "undertrained.pt"
    export_member(trained, a, dtype=cfg.md.dtype)
    export_member(under, b, dtype=cfg.md.dtype)
    return cfg, {f"{role}_trained": [str(a)], f"{role}_{epochs}ep": [str(b)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", help="exported model files (default: the stable/unstable toy pair)")
    p.add_argument("--run-dir", type=Path, help="a finished run: compare a member with an undertrained copy")
    p.add_argument("--role", default="baseline", help="with --run-dir: the group whose member 0 is copied")
    p.add_argument("--epochs", type=int, default=8, help="with --run-dir: epochs of the undertrained copy")
    p.add_argument("--engine", default="ase", choices=["ase", "lammps"])
    p.add_argument("--t-max", type=float, default=None, help="NVE ps (default: the protocol's)")
    p.add_argument("--runs", type=int, default=None, help="velocity seeds per model")
    args = p.parse_args(argv)
    if args.models and args.run_dir:
        p.error("give --models or --run-dir, not both")
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    with tempfile.TemporaryDirectory(prefix="ekd-md-bench-") as tmp:
        tmp = Path(tmp)
        if args.run_dir:
            cfg, models = undertrained_pair(args.run_dir, args.role, args.epochs, tmp)
        else:
            cfg = config.default_config()
            models = {Path(m).stem: [m] for m in args.models} if args.models else toy_pair(tmp)
        md = replace(
            cfg.md, engine=args.engine, n_runs=args.runs or cfg.md.n_runs, t_max_ps=args.t_max or cfg.md.t_max_ps
        )
        t0 = time.perf_counter()
        out = md_stability(replace(cfg, md=md, run_dir=str(tmp)), run_dir=tmp, models=models)
        print(out["markdown"])
        print(f"wall time {time.perf_counter() - t0:.0f} s ({args.engine})")
        failed = {r: sum(x["failed"] for x in out["table"] if x["role"] == r) for r in models}
        print("failed runs per model:", failed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
