"""Can the default MD stability protocol tell a stable model from an unstable one?

    python bench/md_stability.py [--models a.pt b.pt ...] [--engine ase|lammps] [--t-max 0.1] [--runs 2]

Runs the embedded default's ``md`` protocol (27 CH3ONO, 1.0 g/cm^3, Langevin 0.05 ps then NVE; see
:mod:`ekd.md.stability`) on each model at every default time step and prints fraction failed and
mean time to failure per model. Without ``--models`` it compares two TEST models built from ekd's
toy message-passing model (:func:`ekd.export.toy_model`, same random weights): "stable" keeps the
toy's short-range repulsion (300 kcal/mol exp(-r/0.3 A)), "unstable" has it turned attractive, so
atoms fall into each other; the protocol must report the second as failing more often and sooner.
Pass real exported members (e.g. a trained teacher and a deliberately undertrained copy) with
``--models``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ekd import config
from ekd.md.stability import md_stability, toy_pair


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", help="exported model files (default: the stable/unstable toy pair)")
    p.add_argument("--engine", default="ase", choices=["ase", "lammps"])
    p.add_argument("--t-max", type=float, default=None, help="NVE ps (default: the embedded default's)")
    p.add_argument("--runs", type=int, default=None, help="velocity seeds per model")
    args = p.parse_args(argv)
    cfg = config.default_config()
    md = replace(cfg.md, engine=args.engine, n_runs=args.runs or cfg.md.n_runs, t_max_ps=args.t_max or cfg.md.t_max_ps)
    with tempfile.TemporaryDirectory(prefix="ekd-md-bench-") as tmp:
        tmp = Path(tmp)
        models = {Path(m).stem: [m] for m in args.models} if args.models else toy_pair(tmp)
        t0 = time.perf_counter()
        out = md_stability(replace(cfg, md=md, run_dir=str(tmp)), run_dir=tmp, models=models)
        print(out["markdown"])
        print(f"wall time {time.perf_counter() - t0:.0f} s ({args.engine})")
        failed = {r: sum(x["failed"] for x in out["table"] if x["role"] == r) for r in models}
        print("failed runs per model:", failed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
