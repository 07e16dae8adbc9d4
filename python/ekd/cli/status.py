"""``ekd status``: each group's members of a run -- done, running (job, node, epoch), queued,
failed (job, log, last error line) -- whether it runs locally or on Slurm
(:mod:`ekd.workflow.status`)."""

from __future__ import annotations

from pathlib import Path

from .common import add_debug, config_for


def status(args) -> int:
    from ..workflow.status import format_status
    from ..workflow.status import status as run_status

    run_dir = Path(args.run_dir) if args.run_dir else Path(config_for(args).run_dir)
    print(format_status(run_dir, run_status(run_dir)))
    return 0


def add_parsers(sub) -> None:
    sp = sub.add_parser("status", help="what each member of a run is doing: done, running, queued, failed")
    sp.add_argument("--run-dir", help="run directory (default: run_dir of --config or of the built-in configuration)")
    sp.add_argument("--config", help="YAML configuration whose run_dir to look at")
    add_debug(sp)
    sp.set_defaults(func=status)
