"""What every verb shares: the configuration a verb runs with, the group it names, argument types,
and the options common to verbs that work on a run directory."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

DEBUG_HELP = "on an error, show the Python traceback (for a bug report)"


class UsageError(ValueError):
    """A command line that asks for something the run does not have."""


def config_for(args, existing_run: bool = False):
    """The configuration of a verb: ``--config``; else, when the run directory (``--run-dir`` or
    the default's) already exists, the ``config.yaml`` it was created with; else the embedded
    default. existing_run: the verb reads a run (evaluate, export, ...): its directory must exist."""
    from .. import config

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
    if getattr(args, "device", None) is not None:
        cfg = replace(cfg, train=replace(cfg.train, device=args.device))
    if hasattr(args, "device"):
        # here, not in a worker after minutes of data preparation: `cuda` without a GPU is one line
        from ..ops.devices import resolve_device

        resolve_device(cfg.train.device, "--device" if args.device else "train.device")
    if existing_run and not Path(cfg.run_dir).is_dir():
        how = "--run-dir" if run_dir else f"run_dir of {args.config or 'the default configuration'}"
        raise UsageError(f"run directory {cfg.run_dir} does not exist ({how}); check it, or make it with `ekd run`")
    return cfg


def group_for(run, role: str, generation: int):
    """The main group of ``--role`` / ``--generation`` in ``run``, or an error saying what the run has."""
    from ..groups import BASELINE, CONTROL, STUDENT, student_group

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


def at_least(minimum: int):
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


positive = at_least(1)
non_negative = at_least(0)


def add_debug(sp) -> None:
    """``--debug`` after the verb too; SUPPRESS keeps a ``--debug`` given before it."""
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


DEVICE_HELP = (
    "where members are trained and labels, metrics and scores computed: auto (a GPU if there is one), "
    "cpu, cuda or cuda:N (default: train.device of the configuration)"
)


def device_name(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_common(sp, run_dir: bool = True, device: bool = False) -> None:
    """--config, (--run-dir, --workers), (--device), --quiet, --debug."""
    sp.add_argument(
        "--config",
        help="YAML configuration (default: the run directory's config.yaml if it exists, else the built-in)",
    )
    if run_dir:
        sp.add_argument("--run-dir", help="run directory (default: run_dir of the configuration)")
        sp.add_argument("--workers", type=positive, help="parallel member jobs (>= 1)")
    if device:
        sp.add_argument("--device", type=device_name, help=DEVICE_HELP)
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    add_debug(sp)
