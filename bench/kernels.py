"""Benchmark of HIPNN interaction kernels: ekd vs hippynn's numba and pure-torch backends.

One command:  python bench/kernels.py [--threads 1] [--repeats 3] [--cases molecules,box]

Model: the paper's HipnnQuad (2 interaction layers, width 128, 4 atom layers, 20 sensitivities,
sensitivity range 0.75-5.5 Angstrom, hard cutoff 6.5), float32, energy = sum over layers of linear
read-outs (hippynn's HEnergy form). Inputs:
  molecules: a batch of 64 G2 molecules (ase.build.molecule, C/H/N/O only, >= 8 atoms), isolated;
  box:       448 CH3ONO on an 8 x 8 x 7 lattice in a 35.7 Angstrom periodic cube (3,136 atoms).
Pairs come from ekd's neighbor list (not timed) and are the same for every backend.

Tasks, each timed in a fresh subprocess (peak memory = that process's maxrss, which includes
~0.3-0.4 GB of Python + torch + hippynn):
  ops    envsum / sensesum / featsum at the second layer's sizes (hippynn stacks the 9 tensor
         components: 180 sensitivities x 128 features) and, for ekd, the factorised tensor_envsum
  infer  energy + forces
  train  energy + force loss, backward (double backward through the forces), Adam step

Backends: ekd (ekd.kernels.use_kernels("ekd"): ekd ops + factorised tensor layers),
hippynn-numba, pytorch (hippynn's uncompiled pure-torch kernels). Ratios are ekd's speed-up
over each peer, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

    from ekd._ops import neighbor_list

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


def worker(case, backend, task, repeats, threads):
    import torch

    torch.set_num_threads(threads)
    from ekd.kernels import use_kernels

    use_kernels(backend)
    pos, onehot, mol, n_mol, cell = structures(case)
    pf, ps, offsets = pairs(pos, cell)

    if task == "ops":
        from hippynn.custom_kernels.registry import MessagePassingKernels

        from ekd._ops import ops

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
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return {
        "time": (time.perf_counter() - t0) / repeats,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_atoms": int(pos.shape[0]),
        "n_pairs": int(pf.shape[0]),
    }


# ------------------------------------------------------------------------------------------------
# Driver


def measure(case, backend, task, repeats, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        case,
        backend,
        task,
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:100]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def skip_reason(case, backend, task):
    # hippynn's pure-torch kernels materialise pairs x 180 x 128 floats per call: ~25 GB on the box
    if backend == "pytorch" and case == "box":
        return "needs ~25 GB (pairs x 180 x 128 floats)"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=3, metavar=("CASE", "BACKEND", "TASK"), help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch and numba threads (default 1)")
    ap.add_argument("--cases", default="molecules,box")
    ap.add_argument("--tasks", default="ops,infer,train")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="subset to run; ekd must be included")
    args = ap.parse_args()
    if args.worker:
        import warnings

        warnings.simplefilter("ignore")
        print(json.dumps(worker(*args.worker, repeats=args.repeats, threads=args.threads)))
        return

    print(f"threads={args.threads} repeats={args.repeats}  (time per call in s; peak = process maxrss, MB)")
    for case in args.cases.split(","):
        for task in args.tasks.split(","):
            rows = {}
            for backend in args.backends.split(","):
                reason = skip_reason(case, backend, task)
                rows[backend] = (
                    {"skipped": reason}
                    if reason
                    else measure(
                        case,
                        backend,
                        task,
                        args.repeats if case == "molecules" else max(1, args.repeats - 1),
                        args.threads,
                    )
                )
            report(case, task, rows)


def report(case, task, rows):
    ekd = rows["ekd"]
    print(
        f"\n== {case} / {task} "
        + (f"({ekd.get('n_atoms')} atoms, {ekd.get('n_pairs')} pairs)" if "n_atoms" in ekd else "")
    )
    keys = [k for k in ekd if k not in ("peak_mb", "n_atoms", "n_pairs")] if "error" not in ekd else []
    for backend, r in rows.items():
        if "skipped" in r or "error" in r:
            print(f"  {backend:14s} {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error']}")
            continue
        cells = []
        for k in keys:
            if k in r:
                ratio = "" if backend == "ekd" else f" (ekd {r[k] / ekd[k]:.1f}x faster)"
                cells.append(f"{k}={r[k]:.4f}{ratio}")
        mem = "" if backend == "ekd" else f" (ekd/peer {ekd['peak_mb'] / r['peak_mb']:.2f})"
        print(f"  {backend:14s} " + "  ".join(cells) + f"  peak={r['peak_mb']:.0f}{mem}")


if __name__ == "__main__":
    main()
