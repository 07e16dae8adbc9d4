"""Atoms in cache order: a spatial (Morton, or Z-order) permutation of one structure or a batch.

A model's pair sums read, for every pair (i, j), the rows of the neighbour j (features, a 10 KB
block per atom in the paper's model). When atoms that are near in space are near in memory, those
rows are still in cache from the previous atom's pairs; in the caller's order they may not be: a
randomly permuted 3,136-atom box took up to 3x the time of a sorted one (issue 29). Callers that
take structures from users (:class:`ekd.deploy.calculator.EKDCalculator`, ``ekd score``) evaluate
in :func:`spatial_order` and hand every per-atom result back in the caller's order; the energy
and the forces are the same up to floating-point rounding (the sums run in another order).

The order: each atom's position is scaled into its structure's box (fractional coordinates wrapped
into [0, 1) for a fully periodic cell, otherwise the bounding box of the structure's atoms), cut
into 2^21 bins per axis, and the three bin numbers are interleaved bit by bit (a Morton code);
atoms are sorted by structure, then by code, ties in input order. Cheap next to a model call:
O(N log N) on the device of the positions.
"""

from __future__ import annotations

import torch

#: bits per axis: 3 x 21 = 63 bits, the most a (non-negative) int64 holds
BITS = 21


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """The low 21 bits of each entry moved to every third bit (bit k to bit 3k)."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def morton_codes(scaled: torch.Tensor) -> torch.Tensor:
    """Morton codes [N] (int64) of points ``scaled`` [N, 3] in the unit cube (clamped into it)."""
    top = (1 << BITS) - 1
    b = (scaled.clamp(0.0, 1.0) * top).to(torch.int64)
    return _spread_bits(b[:, 0]) | (_spread_bits(b[:, 1]) << 1) | (_spread_bits(b[:, 2]) << 2)


def spatial_order(
    positions: torch.Tensor,
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | bool | None = None,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """A permutation ``order`` [N] (int64) that puts atoms near in space near in memory.

    positions: [N, 3] Angstrom. One structure: ``cell`` [3, 3] (rows are lattice vectors) or None,
    ``pbc`` a bool or [3] bools; only a cell periodic along all three axes wraps the positions
    (other structures are scaled by the bounding box of their atoms). Several structures: ``batch``
    [N] structure index (atoms of a structure stay together, structures in batch order), without a
    cell (isolated structures). Use ``positions[order]`` for the sorted structure and
    ``result[inverse_order(order)]`` to bring per-atom results back.
    """
    x = positions.detach().to(torch.float64)
    n = x.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    periodic = cell is not None and pbc is not None and bool(torch.as_tensor(pbc).all())
    if periodic:
        if batch is not None:
            raise ValueError("spatial_order: a periodic cell is for one structure; give no `batch` with it")
        h = torch.as_tensor(cell, dtype=torch.float64, device=x.device).reshape(3, 3)
        # x = s @ h  ->  s = x @ h^-1, solved as h^T s^T = x^T
        s = torch.linalg.solve(h.T, x.T).T
        scaled = s - torch.floor(s)
    else:
        if batch is None:
            lo, hi = x.min(0).values, x.max(0).values
            scaled = (x - lo) / torch.clamp(hi - lo, min=1e-12)
        else:
            b = batch.to(torch.long).reshape(-1, 1).expand(n, 3)
            n_struct = int(batch.max()) + 1
            lo = torch.full((n_struct, 3), float("inf"), dtype=x.dtype, device=x.device)
            hi = torch.full((n_struct, 3), float("-inf"), dtype=x.dtype, device=x.device)
            lo = lo.scatter_reduce(0, b, x, "amin")
            hi = hi.scatter_reduce(0, b, x, "amax")
            i = batch.to(torch.long)
            scaled = (x - lo[i]) / torch.clamp(hi[i] - lo[i], min=1e-12)
    order = torch.argsort(morton_codes(scaled), stable=True)
    if batch is not None:
        order = order[torch.argsort(batch.to(torch.long)[order], stable=True)]
    return order


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: ``sorted_result[inverse_order(order)]`` is in the original order."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.shape[0], dtype=order.dtype, device=order.device)
    return inv


__all__ = ["spatial_order", "inverse_order", "morton_codes"]
