"""Cost of the distilled uncertainty (issue 28, item 3): one evaluation (energy + forces) of an
exported student with the uncertainty head (EKDCalculator's one-model path, which calls
``energy_and_sigma`` and fills ``forces_std``) against the same weights exported without the head.

One command:  python bench/uncertainty_cost.py [--repeats 7] [--threads 1] [--dtype float32] [--cases molecules,box]

Model: the paper's architecture (ekd.training.models.build_model with ModelConfig's defaults, random
weights: the cost does not depend on them), exported by ekd twice from the same weights: with a
SigmaHead (ekd.training.models.add_sigma_head) and without. Inputs:
  molecules: 64 G2 molecules (ase.build.molecule, C/H/N/O only, >= 8 atoms) 100 A apart, one Atoms;
  box:       448 CH3ONO at 1.0 g/cm^3 in a periodic cube (ekd.md.box.methyl_nitrite_box: 3,136 atoms).
Each call is a full EKDCalculator.calculate (neighbor list, model, forces; the calculator's cache
reset), the two models interleaved call by call after one warm-up each; the median over repeats is
reported with the ratio head / plain (CPU time and wall time; the wall ratio is checked) against
the target <= 1.1x. On a shared machine read the CPU columns with the wall ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

TARGET = 1.1


def export_pair(directory: Path, dtype: str) -> tuple[Path, Path]:
    """head.pt and plain.pt: the same paper-size member exported with and without the head."""
    import torch

    from ekd import scripted
    from ekd.config import ModelConfig
    from ekd.deploy.model_file import save_model
    from ekd.training.models import add_sigma_head, build_model

    paths = []
    for name, head in (("head", True), ("plain", False)):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model(ModelConfig(), [6, 1, 7, 8])
        if head:
            add_sigma_head(model, seed=1, log_sigma_mean=0.3)
        module = scripted.script_member(model, dtype=getattr(torch, dtype))
        meta = scripted.metadata(model, module)
        meta["role"] = "benchmark"
        path = directory / f"{name}.pt"
        save_model(module, path, meta)
        paths.append(path)
    return paths[0], paths[1]


def structures(cases):
    import numpy as np
    from ase import Atoms
    from ase.build import molecule
    from ase.collections import g2

    from ekd.md.box import methyl_nitrite_box

    out = {}
    if "molecules" in cases:
        names = sorted(n for n in g2.names if set(g2[n].get_chemical_symbols()) <= set("CHNO") and len(g2[n]) >= 8)
        rng = np.random.default_rng(0)
        mols = [molecule(names[k]) for k in rng.integers(0, len(names), 64)]
        pos = np.concatenate([m.positions + 100.0 * k for k, m in enumerate(mols)])
        out["molecules"] = Atoms(numbers=np.concatenate([m.numbers for m in mols]), positions=pos)
    if "box" in cases:
        out["box"] = methyl_nitrite_box(448, 1.0, seed=0)
    return out


def time_pair(atoms, head_calc, plain_calc, repeats: int) -> dict:
    """Interleaved calls of the two calculators on ``atoms``: {name: (wall list, cpu list)}."""
    import numpy as np

    times = {"head": ([], []), "plain": ([], [])}
    calcs = {"head": head_calc, "plain": plain_calc}
    for calc in calcs.values():  # warm-up (TorchScript profiling runs, allocations)
        calc.reset()
        calc.calculate(atoms, ["energy", "forces"])
    assert np.ptp(head_calc.results["forces_std"]) > 0, "the head's sigma is a constant: not the head path"
    for _ in range(repeats):
        for name, calc in calcs.items():
            calc.reset()
            w0, c0 = time.perf_counter(), time.process_time()
            calc.calculate(atoms, ["energy", "forces"])
            times[name][0].append(time.perf_counter() - w0)
            times[name][1].append(time.process_time() - c0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--cases", default="molecules,box")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - {"molecules", "box"})
    if unknown or args.repeats < 1 or args.threads < 1:
        ap.error(f"--cases: molecules and/or box (got {unknown}); --repeats and --threads >= 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch

    from ekd.deploy.calculator import EKDCalculator

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ekd-bench-sigma-") as tmp:
        head, plain = export_pair(Path(tmp), args.dtype)
        head_calc, plain_calc = EKDCalculator(str(head)), EKDCalculator(str(plain))
        print(
            f"paper-size member ({args.dtype}, random weights), {args.threads} thread(s), {args.repeats} interleaved "
            f"repeats; EKDCalculator energy + forces (+ forces_std from the head)"
        )
        columns = ("plain (s)", "head (s)", "cpu plain", "cpu head")
        print(f"{'case':<10} {'atoms':>6} " + " ".join(f"{c:>10}" for c in columns) + " cpu ratio, wall ratio")
        ok = True
        for case, atoms in structures(cases).items():
            t = time_pair(atoms, head_calc, plain_calc, args.repeats)
            wp, wh = statistics.median(t["plain"][0]), statistics.median(t["head"][0])
            cp, ch = statistics.median(t["plain"][1]), statistics.median(t["head"][1])
            ratio = wh / wp
            ok &= ratio <= TARGET
            # the same energies and forces (the head reads detached features and adds no force)
            same = np.array_equal(head_calc.results["forces"], plain_calc.results["forces"])
            print(
                f"{case:<10} {len(atoms):>6} {wp:>10.4f} {wh:>10.4f} {cp:>10.4f} {ch:>10.4f} "
                f"{ch / cp:.3f}x, {ratio:.3f}x "
                f"(target <= {TARGET}x: {'met' if ratio <= TARGET else 'MISSED'}; forces identical: {same})"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
