"""Neighbor-list benchmark: ekd against vesin, matscipy and ASE on liquid methyl nitrite boxes.

    python bench/neighbors.py [--repeats 5] [--rounds 3] [--threads 1] [--budget 10]

Systems: periodic cubic boxes of CH3ONO (methyl nitrite, 7 atoms, 61.04 g/mol) at 1.0 g/cm^3,
cutoff 6.5 Angstrom: 448 molecules (3,136 atoms, 35.7 Angstrom box) and 4,352 molecules
(30,464 atoms, 76.2 Angstrom box, the same density), built by :func:`ekd.md.box.methyl_nitrite_box`
(jittered grid, random orientations, no intermolecular contact closer than 1.8 Angstrom).

Every implementation returns the full list (i, j, shift) as numpy/torch arrays; the script checks
that all of them find the same set of pairs before it prints a table of median wall time per call
and each peer's time divided by ekd's (torch op) time, all measured in this one run. Each library
is timed in blocks of --repeats consecutive calls after one untimed call (its steady state in an
MD loop), and the blocks are cycled --rounds times (ekd, vesin, matscipy, ASE, ekd, ...) so that a
change in machine load affects every implementation alike. An implementation stops once its timed
calls exceed --budget seconds (ASE on 30,000 atoms takes ~20 s per call and is timed by its one
checking call).
matscipy and ASE are single-threaded whatever --threads says.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

import ekd
from ekd.md.box import methyl_nitrite_box  # the MD stability box, shared with bench/lammps_md.py
from ekd.ops import library as _ops

CUTOFF = 6.5  # Angstrom


def _implementations(atoms: Atoms, threads: int):
    """name -> zero-argument callable returning (i, j, S) as numpy-convertible arrays."""
    import matscipy.neighbours
    import vesin

    positions = torch.tensor(atoms.positions)
    batch = torch.zeros(len(atoms), dtype=torch.long)
    cells = torch.tensor(atoms.cell.array)[None]
    pbc = torch.tensor(atoms.pbc)[None]
    x_np, cell_np, pbc_np = atoms.positions.copy(), atoms.cell.array.copy(), atoms.pbc.copy()
    calculator = vesin.NeighborList(cutoff=CUTOFF, full_list=True, n_threads=threads)
    return {
        "ekd (torch op)": lambda: torch.ops.ekd.neighbor_list(positions, batch, cells, pbc, CUTOFF),
        "ekd (_C, numpy)": lambda: _ops._C.neighbor_pairs(x_np, cell_np, pbc_np, CUTOFF),
        f"vesin {vesin.__version__}": lambda: calculator.compute(x_np, cell_np, True, quantities="ijS"),
        f"matscipy {matscipy.__version__}": lambda: matscipy.neighbours.neighbour_list("ijS", atoms, CUTOFF),
        f"ase {_ase_version()}": lambda: ase_neighbor_list("ijS", atoms, CUTOFF),
    }


def _ase_version() -> str:
    import ase

    return ase.__version__


def _pair_rows(result) -> np.ndarray:
    i, j, S = (np.asarray(a) for a in result)
    rows = np.concatenate([i.reshape(-1, 1), j.reshape(-1, 1), S.reshape(-1, 3)], axis=1).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def run(atoms: Atoms, repeats: int, rounds: int, threads: int, budget: float) -> None:
    impls = _implementations(atoms, threads)
    reference, counts, first_calls, times = None, {}, {}, {name: [] for name in impls}
    for name, fn in impls.items():
        # The first call checks the pairs (and warms up); an implementation slower than `budget`
        # per call (ASE on 30,000 atoms) is timed by this one call only.
        t0 = time.perf_counter()
        result = fn()
        first_call = time.perf_counter() - t0
        pairs = _pair_rows(result)
        if reference is None:
            reference = pairs
        elif not np.array_equal(pairs, reference):
            raise AssertionError(f"{name} finds {len(pairs):,} pairs, ekd {len(reference):,}, or other pairs")
        counts[name] = len(pairs)
        first_calls[name] = first_call
        if first_call > budget:
            times[name].append(first_call)
    # Blocks of consecutive calls (the steady state of an MD loop, where each library reuses its
    # buffers), cycled `rounds` times so that a change of machine load hits every one alike.
    for _ in range(rounds):
        for name, fn in impls.items():
            if sum(times[name]) > budget:
                continue
            if first_calls[name] < 1.0:
                fn()  # untimed: the previous block belonged to another library
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                if sum(times[name]) > budget:
                    break

    median = {name: statistics.median(t) for name, t in times.items()}
    ekd_time = median["ekd (torch op)"]
    volume = atoms.cell.volume
    density = atoms.get_masses().sum() / 6.02214076e23 / (volume * 1e-24)
    print(
        f"\n{len(atoms):,} atoms, {volume ** (1 / 3):.1f} A cube, {density:.3f} g/cm^3, cutoff {CUTOFF} A, "
        f"ekd and vesin on {threads} thread(s)"
    )
    print(f"{'implementation':<20} {'pairs':>11} {'calls':>6} {'median ms':>10} {'min ms':>10} {'time / ekd':>11}")
    for name, t in times.items():
        print(
            f"{name:<20} {counts[name]:>11,} {len(t):>6} {1e3 * median[name]:>10.2f} {1e3 * min(t):>10.2f} "
            f"{median[name] / ekd_time:>11.2f}"
        )
    vesin_name = next(name for name in times if name.startswith("vesin"))
    print(
        f"ekd / vesin = {ekd_time / median[vesin_name]:.2f} (torch op), "
        f"{median['ekd (_C, numpy)'] / median[vesin_name]:.2f} (_C)"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per block (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per implementation (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="threads for ekd and vesin (default 1)")
    parser.add_argument(
        "--budget", type=float, default=10.0, help="seconds of timed calls per implementation and system"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"ekd {ekd.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    for n_molecules in (448, 4352):
        run(methyl_nitrite_box(n_molecules), args.repeats, args.rounds, args.threads, args.budget)


if __name__ == "__main__":
    main()
