"""``ekd export`` (a trained member -> a model file) and ``ekd info`` (versions, the native build)."""

from __future__ import annotations

from pathlib import Path

from ..groups import ROLES
from .common import UsageError, add_common, add_debug, config_for, group_for, non_negative, positive


def export(args) -> int:
    from ..deploy.export import export_member

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
        from ..workflow import Run

        cfg = config_for(args, existing_run=True)
        # read only: the run directory is not locked, and its config.yaml is not touched
        r = Run(cfg, Path(cfg.run_dir), progress=False)
        group = group_for(r, args.role, args.generation)
        if not 0 <= args.member < group.n_members:
            raise UsageError(f"--member {args.member}: {group.label} has members 0..{group.n_members - 1}")
        source = r.member_dir(group, args.member)
    if not (source / "done.json").exists():
        raise UsageError(f"{source} is not a finished member (no done.json); train it first (ekd run / ekd train)")
    if args.format == "aoti":
        from ..deploy import aoti

        # compiles C++ for this machine's CPU and records the package as trusted here
        meta = aoti.export_member(source, out, dtype=args.dtype)
    else:
        meta = export_member(source, out, dtype=args.dtype)
    print(
        f"{args.out}: {meta.description} (cutoff {meta.cutoff} A, {meta.n_interactions} interactions, "
        f"species {' '.join(meta.species)}, {meta.dtype})"
    )
    return 0


def info(args) -> int:
    import json

    import torch

    from .. import __version__
    from ..ops import library

    print(f"ekd {__version__}, torch {torch.__version__}")
    print(f"op library: {library.LIBRARY_PATH}")
    print(json.dumps(library.BUILD_INFO, indent=1))
    return 0


def add_parsers(sub) -> None:
    sp = sub.add_parser("export", help="a trained member -> self-describing TorchScript for LAMMPS / ASE")
    add_common(sp)
    sp.add_argument("member_dir", nargs="?", help="a member directory (or use --role/--generation/--member)")
    sp.add_argument("--role", default="student", choices=ROLES)
    sp.add_argument("--generation", type=positive, default=1)
    sp.add_argument("--member", type=non_negative, default=0)
    sp.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    sp.add_argument(
        "--format",
        default="torchscript",
        choices=["torchscript", "aoti"],
        help="torchscript (default: ekd-model-2, runs anywhere) or aoti (an AOTInductor .pt2 compiled for this "
        "machine, trusted here only; minutes to compile)",
    )
    sp.add_argument("-o", "--out", required=True, help="output file, e.g. student.pt")
    sp.set_defaults(func=export)

    sp = sub.add_parser("info", help="versions and the native build")
    add_debug(sp)
    sp.set_defaults(func=info)
