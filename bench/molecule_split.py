"""Two threads on the molecule batch: intra-op threads against the batch split in halves (issue 29, item 3).

One command:  python bench/molecule_split.py [--repeats 10]

An experiment, not a feature: bench/kernels.py's "molecules" case (64 CHNO molecules of g2, 660
atoms, one batch; the paper-size HipnnQuad on ekd's kernels, random weights, float32), energy +
forces, timed three ways, interleaved call by call (the order rotates every round):
* 1 thread;
* 2 threads (intra-op): torch's and ekd's parallel regions, hundreds per call;
* 2 threads (halves): the molecules split in two halves (no pairs between molecules, so each half
  is a batch of its own), each half on its own Python thread with 1 intra-op thread (torch releases
  the GIL inside its ops): coarse parallelism, two regions per call.
Prints medians (wall and process CPU) and the largest differences of the halves' energies and
forces from the one-batch ones (rounding only: the GEMMs see other row counts). Import order:
ekd before torch, so OpenMP's waits are passive (ekd.ops.threads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ekd  # noqa: F401  -- before torch: passive OpenMP waits (ekd.ops.threads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per row (median)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    import kernels as bench_kernels
    import torch

    from ekd.ops.kernels import use_kernels

    use_kernels("ekd")
    pos, onehot, mol, n_mol, _ = bench_kernels.structures("molecules")
    net, heads = bench_kernels.model()

    def batch(mols):
        keep = torch.isin(mol, torch.as_tensor(mols))
        index = torch.full((n_mol,), -1, dtype=torch.long)
        index[torch.as_tensor(mols)] = torch.arange(len(mols))
        p = pos[keep]
        pf, ps, off = bench_kernels.pairs(p, None)
        return p, onehot[keep], index[mol[keep]], len(mols), pf, ps, off

    def energy_forces(b):
        p, oh, mm, nm, pf, ps, off = b
        x = p.clone().requires_grad_(True)
        coord = x[ps] - x[pf] + off
        feats = net(oh, pf, ps, coord.norm(dim=1), coord)
        atom_e = sum(h(f.float()) for h, f in zip(heads, feats, strict=True)).squeeze(1)
        energy = torch.zeros(nm).index_add(0, mm, atom_e)
        (grad,) = torch.autograd.grad(energy.sum(), x)
        return energy.detach(), -grad

    full = batch(list(range(n_mol)))
    halves = [batch(list(range(0, n_mol // 2))), batch(list(range(n_mol // 2, n_mol)))]

    def split():
        out = [None, None]

        def work(i):
            out[i] = energy_forces(halves[i])

        other = threading.Thread(target=work, args=(1,))
        other.start()
        work(0)
        other.join()
        return torch.cat([out[0][0], out[1][0]]), torch.cat([out[0][1], out[1][1]])

    def run(name):
        torch.set_num_threads(2 if name == "2 threads (intra-op)" else 1)
        return split() if name == "2 threads (halves)" else energy_forces(full)

    names = ["1 thread", "2 threads (intra-op)", "2 threads (halves)"]
    for name in names:  # warm-up
        run(name)
        run(name)
    e1, f1 = run("1 thread")
    e2, f2 = run("2 threads (halves)")
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % 3 :] + names[: r % 3]:
            t0, c0 = time.perf_counter(), time.process_time()
            run(name)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(
        f"molecule batch ({full[0].shape[0]} atoms, {full[4].shape[0]} pairs), energy + forces, {args.repeats} rounds"
    )
    base = statistics.median(wall["1 thread"])
    for n in names:
        w = statistics.median(wall[n])
        print(
            f"  {n:22s} wall median {w * 1e3:7.1f} ms  x 1 thread {w / base:5.2f}   "
            f"CPU median {statistics.median(cpu[n]) * 1e3:7.1f} ms"
        )
    print(
        f"halves against one batch: energies differ by {float((e2 - e1).abs().max()):.1e} at most "
        f"(largest {float(e1.abs().max()):.1f}), forces by {float((f2 - f1).abs().max()):.1e}"
    )
    load = os.getloadavg()
    print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
