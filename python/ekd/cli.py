"""``ekd <verb>``: parses arguments, loads the configuration, calls the library. Nothing else.

Every verb has a Python equivalent with the same name (``ekd run`` -> :func:`ekd.workflow.run`,
``ekd train`` -> :meth:`ekd.workflow.Run.train_group`, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _config(args):
    from . import config

    cfg = config.load(args.config) if args.config else config.default_config()
    if getattr(args, "run_dir", None):
        from dataclasses import replace

        cfg = replace(cfg, run_dir=args.run_dir)
    if getattr(args, "workers", None):
        from dataclasses import replace

        cfg = replace(cfg, workers=args.workers)
    return cfg


def _run(args) -> int:
    from .workflow import run

    cfg = _config(args)
    metrics = run(cfg, progress=not args.quiet)
    from .report import summary_table

    for name in metrics.get("sets", {}):
        print(summary_table(metrics, name))
    return 0


def _config_show(args) -> int:
    print(_config(args).to_yaml(), end="")
    return 0


def _data_generate(args) -> int:
    from .data.generate import generate, summarize

    cfg = _config(args)
    opts = cfg.data.generate_options(cfg.seed)
    out = Path(args.out or Path(cfg.run_dir) / "data")
    train, test = generate(opts, out, progress=not args.quiet)
    print(summarize(train))
    print(summarize(test))
    return 0


def _data_summary(args) -> int:
    from .data import load_dataset

    keys = {"energy": args.energy_key}
    if args.forces_key:
        keys["forces"] = args.forces_key
    print(load_dataset(args.file, keys).summary())
    return 0


def _train(args) -> int:
    from .workflow import Run

    r = Run(_config(args), Path(_config(args).run_dir), progress=not args.quiet)
    label = args.role if args.role in ("teacher", "control", "baseline") else f"student_gen{args.generation}"
    group = r.group(label)
    if args.member is not None:
        if not 0 <= args.member < group.n_members:
            print(f"ekd train: --member must be in [0, {group.n_members}) for {label}", file=sys.stderr)
            return 2
        from dataclasses import replace

        # a single member: a job-array task on a cluster
        results = r.train_group(replace(group, n_members=args.member + 1))[args.member :]
    else:
        results = r.train_group(group)
    for res in results:
        print(res)
    return 0


def _distill(args) -> int:
    from .workflow import Run

    cfg = _config(args)
    r = Run(cfg, Path(cfg.run_dir), progress=not args.quiet)
    print(r.make_labels(r.group(f"student_gen{args.generation}")))
    return 0


def _evaluate(args) -> int:
    from .report import summary_table
    from .workflow import Run

    cfg = _config(args)
    r = Run(cfg, Path(cfg.run_dir), progress=not args.quiet)
    metrics = r.evaluate()
    print(r.report(metrics))
    for name in metrics["sets"]:
        print(summary_table(metrics, name))
    return 0


def _export(args) -> int:
    from .export import export_member

    if args.member_dir:
        source = Path(args.member_dir)
    else:
        from .workflow import Run

        cfg = _config(args)
        r = Run(cfg, Path(cfg.run_dir), progress=False)
        label = args.role if args.role in ("teacher", "control", "baseline") else f"student_gen{args.generation}"
        source = r.member_dir(r.group(label), args.member)
    if not (source / "done.json").exists():
        print(f"ekd export: {source} is not a finished member (no done.json)", file=sys.stderr)
        return 2
    meta = export_member(source, args.out, dtype=args.dtype)
    print(
        f"{args.out}: {meta.description} (cutoff {meta.cutoff} A, {meta.n_interactions} interactions, "
        f"species {' '.join(meta.species)}, {meta.dtype})"
    )
    return 0


def _md_stability(args) -> int:
    from dataclasses import replace

    from .md.stability import md_stability

    cfg = _config(args)
    changes = {k: v for k, v in (("engine", args.engine), ("n_runs", args.runs), ("n_models", args.models)) if v}
    if args.roles:
        changes["roles"] = tuple(args.roles.split(","))
    if args.dt:
        changes["timesteps_fs"] = tuple(float(x) for x in args.dt.split(","))
    if args.workers:
        changes["workers"] = args.workers
    from .config import build

    # rebuilt through the loader so that the overrides are validated like the YAML
    md = build(type(cfg.md), {**cfg.to_dict()["md"], **changes}, "md")
    cfg = replace(cfg, md=md)
    run_dir = Path(args.run_dir or cfg.run_dir)
    if (run_dir / "metrics.json").exists():
        from .workflow import Run

        # an evaluated run: the table joins metrics.json and report.md
        out = Run(cfg, run_dir, progress=not args.quiet).md_stability()
    else:
        out = md_stability(cfg, run_dir, progress=not args.quiet)
    print(out["markdown"])
    print(f"figure: {out['figure']}")
    return 0


def _info(args) -> int:
    import json

    import torch

    from . import __version__, _ops

    print(f"ekd {__version__}, torch {torch.__version__}")
    print(f"op library: {_ops.LIBRARY_PATH}")
    print(json.dumps(_ops.BUILD_INFO, indent=1))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ekd", description="Ensemble knowledge distillation of HIPNN potentials")
    sub = p.add_subparsers(dest="verb", required=True)

    def common(sp, run_dir=True):
        sp.add_argument("--config", help="YAML configuration (default: the embedded default)")
        if run_dir:
            sp.add_argument("--run-dir", help="run directory (default: run_dir of the configuration)")
            sp.add_argument("--workers", type=int, help="parallel member jobs")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    sp = sub.add_parser("run", help="the whole workflow: data, teachers, students, controls, evaluation, report")
    common(sp)
    sp.set_defaults(func=_run)

    sp = sub.add_parser("config", help="configuration")
    csub = sp.add_subparsers(dest="what", required=True)
    show = csub.add_parser("show", help="print the effective configuration")
    common(show, run_dir=False)
    show.set_defaults(func=_config_show)

    sp = sub.add_parser("data", help="reference data")
    dsub = sp.add_subparsers(dest="what", required=True)
    gen = dsub.add_parser("generate", help="make GFN2-xTB train/test files from RDKit's NCI molecules")
    common(gen)
    gen.add_argument("--out", help="output directory (default: <run_dir>/data)")
    gen.set_defaults(func=_data_generate)
    summ = dsub.add_parser("summary", help="summarise an ANI-layout file")
    summ.add_argument("file")
    summ.add_argument("--energy-key", default="gfn2_xtb.energy")
    summ.add_argument("--forces-key", default=None)
    summ.set_defaults(func=_data_summary)

    sp = sub.add_parser("train", help="train the members of one role (or one member: a job-array task)")
    common(sp)
    sp.add_argument("--role", required=True, choices=["teacher", "student", "control", "baseline"])
    sp.add_argument("--generation", type=int, default=1, help="student generation (default 1)")
    sp.add_argument("--member", type=int, help="train only this member")
    sp.set_defaults(func=_train)

    sp = sub.add_parser("distill", help="label the training data with an ensemble's forces")
    common(sp)
    sp.add_argument("--generation", type=int, default=1, help="generation taught by the labels (default 1)")
    sp.set_defaults(func=_distill)

    sp = sub.add_parser("evaluate", help="score every trained member and write metrics.json + report.md")
    common(sp)
    sp.set_defaults(func=_evaluate)

    sp = sub.add_parser("export", help="a trained member -> self-describing TorchScript for LAMMPS / ASE")
    common(sp)
    sp.add_argument("member_dir", nargs="?", help="a member directory (or use --role/--generation/--member)")
    sp.add_argument("--role", default="student", choices=["teacher", "student", "control", "baseline"])
    sp.add_argument("--generation", type=int, default=1)
    sp.add_argument("--member", type=int, default=0)
    sp.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    sp.add_argument("-o", "--out", required=True, help="output file, e.g. student.pt")
    sp.set_defaults(func=_export)

    sp = sub.add_parser("md-stability", help="MD stability vs time step per role (CH3ONO box; the paper's Fig. 3)")
    common(sp)
    sp.add_argument("--engine", choices=["ase", "lammps"], help="MD engine (default: md.engine)")
    sp.add_argument("--roles", help="comma-separated groups, e.g. teacher,student_gen2 (default: md.roles)")
    sp.add_argument("--dt", help="comma-separated time steps in fs (default: md.timesteps_fs)")
    sp.add_argument("--runs", type=int, help="velocity seeds per model (default: md.n_runs)")
    sp.add_argument("--models", type=int, help="models per role (default: md.n_models)")
    sp.set_defaults(func=_md_stability)

    sp = sub.add_parser("info", help="versions and the native build")
    sp.set_defaults(func=_info)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .config import ConfigError
    from .data import DataFileError
    from .jobs import terminate_on_sigterm
    from .workflow import RunDirError

    terminate_on_sigterm()
    try:
        return args.func(args)
    except (ConfigError, DataFileError, RunDirError, FileNotFoundError) as e:
        print(f"ekd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ekd: interrupted; finished work is kept, run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
