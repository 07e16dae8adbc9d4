"""Time per call of ekd's two deployment formats: TorchScript (``ekd export``, format ekd-model-2)
and AOTInductor (``ekd export --format aoti``, ekd-aoti-1), plus the time to export each.

One command:  python bench/export_formats.py [--repeats 7] [--threads 1] [--dtype float32] [--markdown]

Model: ekd's own member at the paper's architecture (ekd.training.models.build_model with ModelConfig's
defaults: HipnnQuad, 2 interaction layers, width 128, 4 atom layers, 20 sensitivities, cutoff
6.5 A; random weights: the cost does not depend on them), C/H/N/O, in --dtype, exported both ways
from the same module. Inputs: the systems of bench/kernels.py (imported from it, not copied):
  molecules: a batch of 64 G2 molecules (isolated, one pair list);
  box:       448 CH3ONO in a 35.7 A periodic cube (3,136 atoms).
A call is what EKDCalculator and pair_style ekd do per step: per-atom energies and the gradient
with respect to the pair vectors (TorchScript: forward + torch.autograd.grad; AOTInductor: the
compiled function that returns both). Pairs come from ekd's neighbor list (not timed). Times are
medians of --repeats calls after 2 warm-up calls, in a single process at --threads torch threads;
on a shared machine repeat the run and compare (the CPU column says how much of the wall time this
process had the core).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SPECIES = [6, 1, 7, 8]


def inputs(case):
    """(species [N] int64, pair_first, pair_second, r_ij [P, 3] float64) of a bench/kernels.py system."""
    import kernels  # bench/kernels.py: its systems and pair list
    import torch

    pos, onehot, _, _, cell = kernels.structures(case)
    numbers = torch.tensor([kernels.SPECIES[1:][int(k)] for k in onehot.argmax(1)])
    first, second, offsets = kernels.pairs(pos, cell)
    pos = pos.double()
    r = pos[second] - pos[first] + offsets.double()
    return numbers, first, second, r


def member(dtype):
    import torch

    from ekd import scripted
    from ekd.config import ModelConfig
    from ekd.training.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(), SPECIES)
    module = scripted.build_module(model, dtype=getattr(torch, dtype))
    meta = scripted.metadata(model, module)
    meta["role"] = "benchmark"
    return module, meta


def timed(fn, repeats):
    for _ in range(2):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--cases", default="molecules,box")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown (README)")
    ap.add_argument("--lammps-steps", type=int, default=0, help="also s per MD step of pair_style ekd on the box")
    ap.add_argument("--workdir", help="keep the exported files here and reuse them when present (no new compile)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ekd import scripted
    from ekd.deploy import aoti
    from ekd.deploy.calculator import EKDCalculator  # noqa: F401  (loads the op library)
    from ekd.deploy.model_file import load_model, save_model

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ekd-formats-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # the bench's package is trusted through a registry of its own, not the user's
    os.environ.setdefault(aoti.REGISTRY_ENV, str(workdir / "trusted-packages"))
    export_ts = export_aoti = float("nan")
    if not ((workdir / "paper.pt").is_file() and (workdir / "paper.pt2").is_file()):
        module, meta = member(args.dtype)
        t0 = time.perf_counter()
        with scripted._quiet_jit():
            save_model(torch.jit.script(module), workdir / "paper.pt", meta)
        export_ts = time.perf_counter() - t0
        t0 = time.perf_counter()
        aoti.export_module(module, workdir / "paper.pt2", meta)
        export_aoti = time.perf_counter() - t0
    print(f"export: torchscript {export_ts:.1f} s, aoti {export_aoti:.1f} s (compile; {workdir})", flush=True)

    ts, _ = load_model(workdir / "paper.pt")
    package, _ = aoti.load_package(workdir / "paper.pt2")
    dtype = getattr(torch, args.dtype)
    rows = []
    for case in args.cases.split(","):
        species, first, second, r = inputs(case)

        def run_ts(species=species, first=first, second=second, r=r):
            rr = r.to(dtype).requires_grad_(True)
            e = ts(species, first, second, rr)
            return e.detach(), torch.autograd.grad(e.sum(), rr)[0]

        def run_aoti(species=species, first=first, second=second, r=r):
            return package.energy_and_gradient(species, first, second, r)

        (e1, g1), (e2, g2) = run_ts(), run_aoti()
        diff = float((e1.double().sum() - e2.double().sum()).abs() / e1.double().sum().abs().clamp(min=1.0))
        gdiff = float((g1.double() - g2.double()).abs().max() / g1.double().abs().max().clamp(min=1e-30))
        w_ts, c_ts = timed(run_ts, args.repeats)
        w_ao, c_ao = timed(run_aoti, args.repeats)
        rows.append((case, len(species), len(first), w_ts, c_ts, w_ao, c_ao, diff, gdiff))
        print(
            f"{case}: {len(species)} atoms, {len(first)} pairs: "
            f"torchscript {w_ts * 1e3:.1f} ms (cpu {c_ts * 1e3:.1f}), "
            f"aoti {w_ao * 1e3:.1f} ms (cpu {c_ao * 1e3:.1f}), ratio {w_ts / w_ao:.2f}x; |dE|/E {diff:.1e}, "
            f"max|dg|/max|g| {gdiff:.1e}",
            flush=True,
        )
    if args.lammps_steps:
        lammps_rows = lammps(workdir, args.threads, args.lammps_steps)
    if args.markdown:
        print(f"\n{args.dtype}, {args.threads} thread(s), median of {args.repeats} calls (energy + gradient):\n")
        print("| system | atoms | pairs | TorchScript ms (CPU) | AOTInductor ms (CPU) | TorchScript / AOTI |")
        print("|---|---:|---:|---:|---:|---:|")
        for case, n, p, w_ts, c_ts, w_ao, c_ao, _, _ in rows:
            print(
                f"| {case} | {n} | {p} | {w_ts * 1e3:.1f} ({c_ts * 1e3:.1f}) | {w_ao * 1e3:.1f} ({c_ao * 1e3:.1f}) "
                f"| {w_ts / w_ao:.2f} |"
            )
        print(f"\nexport time: TorchScript {export_ts:.1f} s, AOTInductor {export_aoti:.0f} s (compile)")
        if args.lammps_steps:
            print(f"\nLAMMPS, box, pair_style ekd threads {args.threads} (mode images), s per MD step (CPU):")
            for name, r in lammps_rows.items():
                print(f"  {name}: " + (f"{r['time']:.3f} ({r['cpu']:.3f})" if "time" in r else str(r)))


def lammps(workdir: Path, threads: int, steps: int) -> dict:
    """s per MD step of bench/kernels.py's LAMMPS box run with the TorchScript file and with the
    package (given the same file name: the plugin tells the formats apart by content)."""
    import shutil

    import kernels

    why = kernels.lammps_skip_reason()
    if why:
        return {"skipped": {"reason": why}}
    rows = {}
    for name, source in (("torchscript", "paper.pt"), ("aoti", "paper.pt2")):
        d = workdir / f"lammps-{name}"
        d.mkdir(exist_ok=True)
        if not (d / "box.data").is_file():
            kernels.lammps_export(d)  # box.data (and a TorchScript paper.pt, replaced next)
        shutil.copy(workdir / source, d / "paper.pt")
        rows[name] = kernels.lammps_step(d, threads, steps)
        print(f"lammps {name}: {rows[name]}", flush=True)
    return rows


if __name__ == "__main__":
    main()
