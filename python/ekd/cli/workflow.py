"""``ekd run``, ``ekd config show``, ``ekd train``, ``ekd distill``, ``ekd evaluate``: the stages of
a run directory (:class:`ekd.workflow.Run`)."""

from __future__ import annotations

from pathlib import Path

from ..groups import ROLES
from .common import UsageError, add_common, config_for, group_for, non_negative, positive


def run(args) -> int:
    from dataclasses import replace

    from ..evaluation.report import summary_table
    from ..workflow import run

    cfg = config_for(args)
    if args.executor:
        cfg = replace(cfg, executor=args.executor)
    if cfg.executor == "slurm":
        from ..workflow import slurm

        metrics = slurm.run(cfg, progress=not args.quiet)
    else:
        metrics = run(cfg, progress=not args.quiet)
    for name in metrics.get("sets", {}):
        print(summary_table(metrics, name))
    return 0


def config_show(args) -> int:
    print(config_for(args).to_yaml(), end="")
    return 0


def train(args) -> int:
    from ..workflow import Run

    cfg = config_for(args)
    r = Run(cfg, Path(cfg.run_dir), progress=not args.quiet)
    group = group_for(r, args.role, args.generation)
    if args.member is not None:
        if not 0 <= args.member < group.n_members:
            raise UsageError(f"--member {args.member}: {group.label} has members 0..{group.n_members - 1}")
        # one member: a job-array task; other members' tasks may run at the same time
        results = r.train_group(group, members=[args.member])
    else:
        results = r.train_group(group)
    for res in results:
        print(res)
    return 0


def distill(args) -> int:
    from ..workflow import Run

    cfg = config_for(args, existing_run=True)
    r = Run(cfg, Path(cfg.run_dir), progress=not args.quiet)
    group = group_for(r, "student", args.generation)
    with r.lock():
        print(r.make_labels(group))
    return 0


def evaluate(args) -> int:
    from ..evaluation.report import summary_table
    from ..workflow import Run

    cfg = config_for(args, existing_run=True)
    r = Run(cfg, Path(cfg.run_dir), progress=not args.quiet)
    with r.lock():
        metrics = r.evaluate()
        print(r.report(metrics))
    for name in metrics["sets"]:
        print(summary_table(metrics, name))
    return 0


def add_parsers(sub) -> None:
    sp = sub.add_parser("run", help="the whole workflow: data, teachers, students, controls, evaluation, report")
    add_common(sp, device=True)
    sp.add_argument(
        "--executor",
        choices=("local", "slurm"),
        help="where the members train: local worker processes, or Slurm job arrays (default: the config's executor)",
    )
    sp.set_defaults(func=run)

    sp = sub.add_parser("config", help="configuration")
    csub = sp.add_subparsers(dest="what", required=True)
    show = csub.add_parser("show", help="print the effective configuration")
    add_common(show, run_dir=False)
    show.set_defaults(func=config_show)

    sp = sub.add_parser("train", help="train the members of one role (or one member: a job-array task)")
    add_common(sp, device=True)
    sp.add_argument("--role", required=True, choices=ROLES)
    sp.add_argument("--generation", type=positive, default=1, help="student generation (default 1)")
    sp.add_argument(
        "--member", type=non_negative, help="train only this member (a job-array task; tasks run side by side)"
    )
    sp.set_defaults(func=train)

    sp = sub.add_parser("distill", help="label the training data with an ensemble's forces")
    add_common(sp, device=True)
    sp.add_argument("--generation", type=positive, default=1, help="generation taught by the labels (default 1)")
    sp.set_defaults(func=distill)

    sp = sub.add_parser("evaluate", help="score every trained member and write metrics.json + report.md")
    add_common(sp, device=True)
    sp.set_defaults(func=evaluate)
