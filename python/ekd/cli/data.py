"""``ekd data generate`` and ``ekd data summary``: reference data."""

from __future__ import annotations

from pathlib import Path

from .common import add_common, add_debug, config_for


def generate(args) -> int:
    from ..data.generate import generate, summarize
    from ..store import lock_dir

    cfg = config_for(args)
    opts = cfg.data.generate_options(cfg.seed)
    out = Path(args.out or Path(cfg.run_dir) / "data")
    # the run directory's lock when writing into it (as `ekd run` does), else the output's own
    with lock_dir(out if args.out else cfg.run_dir, "output directory" if args.out else "run directory"):
        train, test = generate(opts, out, progress=not args.quiet)
    print(summarize(train))
    print(summarize(test))
    return 0


def summary(args) -> int:
    from ..data import load_dataset

    keys = {"energy": args.energy_key}
    if args.forces_key:
        keys["forces"] = args.forces_key
    print(load_dataset(args.file, keys).summary())
    return 0


def add_parsers(sub) -> None:
    sp = sub.add_parser("data", help="reference data")
    dsub = sp.add_subparsers(dest="what", required=True)
    gen = dsub.add_parser("generate", help="make GFN2-xTB train/test files from RDKit's NCI molecules")
    add_common(gen)
    gen.add_argument("--out", help="output directory (default: <run_dir>/data)")
    gen.set_defaults(func=generate)
    summ = dsub.add_parser("summary", help="summarise an ANI-layout file")
    summ.add_argument("file")
    summ.add_argument("--energy-key", default="gfn2_xtb.energy")
    summ.add_argument("--forces-key", default=None)
    add_debug(summ)
    summ.set_defaults(func=summary)
