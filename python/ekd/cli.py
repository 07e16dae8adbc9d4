"""``ekd <verb>``: parses arguments, loads the configuration, calls the library. Nothing else.

Every verb has a Python equivalent with the same name (``ekd run`` -> :func:`ekd.workflow.run`,
``ekd train`` -> :meth:`ekd.workflow.Run.train_group`, ...).
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from .groups import ROLES


class UsageError(ValueError):
    """A command line that asks for something the run does not have."""


def _config(args, existing_run: bool = False):
    """The configuration of a verb: ``--config``; else, when the run directory (``--run-dir`` or
    the default's) already exists, the ``config.yaml`` it was created with; else the embedded
    default. existing_run: the verb reads a run (evaluate, export, ...): its directory must exist."""
    from . import config

    run_dir = getattr(args, "run_dir", None)
    if args.config:
        cfg = config.load(args.config)
    else:
        cfg = config.default_config()
        stamp = Path(run_dir or cfg.run_dir) / "config.yaml"
        if hasattr(args, "run_dir") and stamp.exists():
            cfg = config.load(stamp)
    if run_dir:
        cfg = replace(cfg, run_dir=run_dir)
    if getattr(args, "workers", None) is not None:
        cfg = replace(cfg, workers=args.workers)
    if existing_run and not Path(cfg.run_dir).is_dir():
        how = "--run-dir" if run_dir else f"run_dir of {args.config or 'the default configuration'}"
        raise UsageError(f"run directory {cfg.run_dir} does not exist ({how}); check it, or make it with `ekd run`")
    return cfg


def _group(run, role: str, generation: int):
    """The main group of ``--role`` / ``--generation`` in ``run``, or an error saying what the run has."""
    from .groups import BASELINE, CONTROL, STUDENT, student_group

    if role == STUDENT:
        n = run.cfg.ensemble.generations
        if not 1 <= generation <= n:
            raise UsageError(
                f"--generation {generation}: this configuration has {n} student generation(s) "
                f"(ensemble.generations: {n}); choose 1..{n}"
            )
        name = student_group(generation)
    else:
        name = role  # the main group of every other role is named after it
    names = [g.label for g in run.groups()]
    if name not in names:
        why = {
            CONTROL: "ensemble.controls is false",
            BASELINE: "it needs ensemble.baseline: true and data.reference_forces_key",
        }.get(role, "")
        raise UsageError(f"--role {role}: this run has no {role} group ({why}); its groups: {', '.join(names)}")
    return run.group(name)


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
    from .store import lock_dir

    cfg = _config(args)
    opts = cfg.data.generate_options(cfg.seed)
    out = Path(args.out or Path(cfg.run_dir) / "data")
    # the run directory's lock when writing into it (as `ekd run` does), else the output's own
    with lock_dir(out if args.out else cfg.run_dir, "output directory" if args.out else "run directory"):
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

    cfg = _config(args)
    r = Run(cfg, Path(cfg.run_dir), progress=not args.quiet)
    group = _group(r, args.role, args.generation)
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


def _distill(args) -> int:
    from .workflow import Run

    cfg = _config(args, existing_run=True)
    r = Run(cfg, Path(cfg.run_dir), progress=not args.quiet)
    group = _group(r, "student", args.generation)
    with r.lock():
        print(r.make_labels(group))
    return 0


def _evaluate(args) -> int:
    from .report import summary_table
    from .workflow import Run

    cfg = _config(args, existing_run=True)
    r = Run(cfg, Path(cfg.run_dir), progress=not args.quiet)
    with r.lock():
        metrics = r.evaluate()
        print(r.report(metrics))
    for name in metrics["sets"]:
        print(summary_table(metrics, name))
    return 0


def _export(args) -> int:
    from .export import export_member

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"-o {out}: is a directory; give a file name, e.g. {out / 'model.pt'}")
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: directory {out.parent} does not exist; create it first (mkdir -p {out.parent})")
    if args.member_dir:
        source = Path(args.member_dir)
        if not source.is_dir():
            raise UsageError(f"{source}: no such member directory")
    else:
        from .workflow import Run

        cfg = _config(args, existing_run=True)
        # read only: the run directory is not locked, and its config.yaml is not touched
        r = Run(cfg, Path(cfg.run_dir), progress=False)
        group = _group(r, args.role, args.generation)
        if not 0 <= args.member < group.n_members:
            raise UsageError(f"--member {args.member}: {group.label} has members 0..{group.n_members - 1}")
        source = r.member_dir(group, args.member)
    if not (source / "done.json").exists():
        raise UsageError(f"{source} is not a finished member (no done.json); train it first (ekd run / ekd train)")
    if args.format == "aoti":
        from . import aoti

        # compiles C++ for this machine's CPU and records the package as trusted here
        meta = aoti.export_member(source, out, dtype=args.dtype)
    else:
        meta = export_member(source, out, dtype=args.dtype)
    print(
        f"{args.out}: {meta.description} (cutoff {meta.cutoff} A, {meta.n_interactions} interactions, "
        f"species {' '.join(meta.species)}, {meta.dtype})"
    )
    return 0


def _score(args) -> int:
    from . import score

    if bool(args.models) == bool(args.run_dir):
        raise UsageError("give model files or --run-dir (not both)")
    if args.groups and not args.run_dir:
        raise UsageError("--groups selects groups of --run-dir; with model files, list the files")
    test = score.load_test(args.test, args.energy_key, args.forces_key, args.energy_unit, args.length_unit)
    window = args.conformer_window
    if args.run_dir:
        names = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
        groups, run_window, left_out = score.run_groups(args.run_dir, names)
        window = run_window if window is None else window
        if left_out:
            print(f"left out (members not all trained yet): {', '.join(left_out)}")
    else:
        groups = [score.model_files(args.models, trust_code=args.trust_code)]
    test = score.check_elements(test, groups, skip=args.skip_unknown_elements)
    result = score.score_models(
        test, groups, score.DEFAULT_WINDOW if window is None else window, args.per_molecule, not args.quiet
    )
    print(score.format_result(result, args.per_molecule))
    if args.json:
        print(f"json: {score.write_json(result, args.json)}")
    if args.plot:
        for path in score.plot(result, args.plot):
            print(f"figure: {path}")
    return 0


def _md_stability(args) -> int:
    from dataclasses import replace

    cfg = _config(args)
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
    from .config import build

    # rebuilt through the loader so that the overrides are validated like the YAML
    md = build(type(cfg.md), {**cfg.to_dict()["md"], **changes}, "md")
    cfg = replace(cfg, md=md)
    run_dir = Path(args.run_dir or cfg.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist; check --run-dir, or make it with `ekd run`")
    from .store import lock_dir

    # --roles names exactly the groups wanted: every one must exist
    strict = bool(args.roles)
    with lock_dir(run_dir):
        from .workflow import Run

        # an evaluated run: the table joins metrics.json and report.md (and the run says when
        # config.yaml records another configuration); before that, only the sweep reports
        evaluated = (run_dir / "metrics.json").exists()
        run = Run(cfg, run_dir, progress=evaluated and not args.quiet)
        out = run.md_stability(strict_roles=strict, progress=not args.quiet)
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


def _at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive = _at_least(1)
_non_negative = _at_least(0)


_DEBUG_HELP = "on an error, show the Python traceback (for a bug report)"


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one-line form of every other error (the verb's --help has the rest)."""

    def error(self, message: str):
        self.exit(2, f"ekd: error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ekd", description="Ensemble knowledge distillation of HIPNN potentials")
    p.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = p.add_subparsers(dest="verb", required=True)

    def common(sp, run_dir=True):
        sp.add_argument(
            "--config",
            help="YAML configuration (default: the run directory's config.yaml if it exists, else the built-in)",
        )
        if run_dir:
            sp.add_argument("--run-dir", help="run directory (default: run_dir of the configuration)")
            sp.add_argument("--workers", type=_positive, help="parallel member jobs (>= 1)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        # also accepted after the verb; SUPPRESS keeps a --debug given before it
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)

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
    summ.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    summ.set_defaults(func=_data_summary)

    sp = sub.add_parser("train", help="train the members of one role (or one member: a job-array task)")
    common(sp)
    sp.add_argument("--role", required=True, choices=ROLES)
    sp.add_argument("--generation", type=_positive, default=1, help="student generation (default 1)")
    sp.add_argument(
        "--member", type=_non_negative, help="train only this member (a job-array task; tasks run side by side)"
    )
    sp.set_defaults(func=_train)

    sp = sub.add_parser("distill", help="label the training data with an ensemble's forces")
    common(sp)
    sp.add_argument("--generation", type=_positive, default=1, help="generation taught by the labels (default 1)")
    sp.set_defaults(func=_distill)

    sp = sub.add_parser("evaluate", help="score every trained member and write metrics.json + report.md")
    common(sp)
    sp.set_defaults(func=_evaluate)

    sp = sub.add_parser("export", help="a trained member -> self-describing TorchScript for LAMMPS / ASE")
    common(sp)
    sp.add_argument("member_dir", nargs="?", help="a member directory (or use --role/--generation/--member)")
    sp.add_argument("--role", default="student", choices=ROLES)
    sp.add_argument("--generation", type=_positive, default=1)
    sp.add_argument("--member", type=_non_negative, default=0)
    sp.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    sp.add_argument(
        "--format",
        default="torchscript",
        choices=["torchscript", "aoti"],
        help="torchscript (default: ekd-model-2, runs anywhere) or aoti (an AOTInductor .pt2 compiled for this "
        "machine, trusted here only; minutes to compile)",
    )
    sp.add_argument("-o", "--out", required=True, help="output file, e.g. student.pt")
    sp.set_defaults(func=_export)

    sp = sub.add_parser("score", help="score model files or a run's members on any ANI-layout benchmark file")
    sp.add_argument("models", nargs="*", help="exported model files (ekd export), scored as one group")
    sp.add_argument("--run-dir", help="score the members of this run instead (its finished groups)")
    sp.add_argument("--groups", help="with --run-dir: comma-separated groups, e.g. teacher,student_gen1")
    sp.add_argument("--test", required=True, help="ANI-layout HDF5 file to score on")
    sp.add_argument("--energy-key", help="reference energy key (default: the file's only '*.energy' key)")
    sp.add_argument("--forces-key", help="reference forces key (default: '<level>.forces' of the energy key, if any)")
    sp.add_argument("--energy-unit", choices=["hartree", "kcal/mol", "ev"], help="default: the file's attribute")
    sp.add_argument("--length-unit", choices=["angstrom", "bohr"], help="default: the file's attribute")
    sp.add_argument(
        "--conformer-window", type=float, help="ΔE: kcal/mol above a molecule's minimum (default: the run's, or 100)"
    )
    sp.add_argument("--per-molecule", action="store_true", help="also a table per molecule")
    sp.add_argument("--skip-unknown-elements", action="store_true", help="leave out molecules a model cannot predict")
    sp.add_argument("--json", help="write the scores to this JSON file")
    sp.add_argument("--plot", help="write parity plots and error bars (PNG) into this directory")
    sp.add_argument("--trust-code", action="store_true", help="load model files whose code is not ekd's own")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    sp.set_defaults(func=_score)

    sp = sub.add_parser("md-stability", help="MD stability vs time step per role (CH3ONO box; the paper's Fig. 3)")
    common(sp)
    sp.add_argument("--engine", choices=["ase", "lammps"], help="MD engine (default: md.engine)")
    sp.add_argument("--roles", help="comma-separated groups, e.g. teacher,student_gen2 (default: md.roles)")
    sp.add_argument("--dt", help="comma-separated time steps in fs (default: md.timesteps_fs)")
    sp.add_argument("--runs", type=_positive, help="velocity seeds per model (default: md.n_runs)")
    sp.add_argument("--models", type=_positive, help="models per role (default: md.n_models)")
    sp.set_defaults(func=_md_stability)

    sp = sub.add_parser("info", help="versions and the native build")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    sp.set_defaults(func=_info)
    return p


_EKD_DIR = str(Path(__file__).resolve().parent)


def _innermost(exc: BaseException) -> tuple[str, str]:
    """(file, source line) of the frame that raised ``exc``; for an exception re-raised from a
    worker process (concurrent.futures), the worker's frame."""
    remote = getattr(exc.__cause__, "tb", None)
    if isinstance(remote, str):
        frames = re.findall(r'File "([^"]+)", line \d+, in [^\n]*\n\s*([^\n]*)', remote)
        if frames:
            return frames[-1]
    tb = traceback.extract_tb(exc.__traceback__)
    return (tb[-1].filename, tb[-1].line or "") if tb else ("", "")


def _expected(exc: BaseException) -> bool:
    """An error that ekd reports on purpose (a message for the user), not a bug: one of ekd's
    own error classes, an OS error (file system, full disk), or a ValueError / RuntimeError /
    FloatingPointError that a ``raise`` statement in ekd's code raised."""
    if type(exc).__module__.split(".")[0] == "ekd" or isinstance(exc, OSError):
        return True
    if isinstance(exc, ValueError | RuntimeError | FloatingPointError):
        file, line = _innermost(exc)
        return str(Path(file).resolve()).startswith(_EKD_DIR) and line.lstrip().startswith("raise")
    return False


def _message(exc: BaseException) -> str:
    from .store import disk_full_error

    filename = getattr(exc, "filename", None)
    # errno only: a write through ekd.store.atomic_write has already been told apart
    nospace = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    full = disk_full_error(exc, Path(filename or ".")) if nospace else None
    if full is not None and filename:
        text = str(full)
    elif full is not None:
        # e.g. h5py: the file name is inside a long message
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        text = (
            f"the disk is full ({first}); nothing already computed is lost: "
            "free some space and run the same command again"
        )
    else:
        text = str(exc)
    if isinstance(exc, OSError) and filename and str(filename) not in text:
        text += f": {filename}"
    # one line: a multi-line message is joined
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def main(argv=None) -> int:
    """``ekd <verb>``. An error that ekd expects (a bad input, a busy or inconsistent run
    directory, a full disk, ...) prints one line ``ekd: error: <message>`` and returns 2; with
    ``--debug`` its traceback too. Anything else is a bug: traceback, a request to report it, 1."""
    args = parser().parse_args(argv)
    from .jobs import terminate_on_sigterm

    terminate_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ekd: interrupted; finished work is kept, run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if _expected(e):
            if args.debug:
                traceback.print_exc()
            print(f"ekd: error: {_message(e)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            "ekd: internal error: this is a bug in ekd, not a problem with your input; please report it "
            "with the traceback above and the command you ran",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
