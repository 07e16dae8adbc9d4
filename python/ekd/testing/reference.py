"""Pure-torch reference versions of every ekd op: the oracle the tests compare the compiled ops with.

Each function here computes what one op of the library (``torch.ops.ekd.*``, see
``csrc/register.cpp``) computes, in the most direct way there is: brute force, float64, no cell
lists, no custom kernels. They are slow on purpose; correctness is the only goal, so keep them
obviously right rather than fast.
"""

from __future__ import annotations

import itertools
import math

import torch

# =============================================================================================
# Neighbor list (oracle of torch.ops.ekd.neighbor_list / ekd.ops.library.neighbor_list)
# =============================================================================================

# Pair-distance tensors are built for this many (image, i, j) triples at a time, which bounds the
# memory of the brute-force search (~ 8 * 3 * this many bytes).
_PAIR_CHUNK = 1 << 21


def _periodic_cell(cell: torch.Tensor, pbc: list[bool]) -> torch.Tensor:
    """The cell with every non-periodic row replaced by an orthonormal basis of the complement of
    the periodic rows.

    Non-periodic lattice vectors play no role in the pair list (no shift is ever taken along
    them, and they may be zero); replacing them gives a non-singular matrix whose inverse yields
    the fractional coordinates along the periodic directions.
    """
    periodic = [k for k in range(3) if pbc[k]]
    lattice = cell[periodic]  # [m, 3]
    _, sv, vh = torch.linalg.svd(lattice, full_matrices=True)
    if not bool(sv.min() > 1e-10 * max(float(sv.max()), 1e-300)):
        raise ValueError(
            f"cell: the periodic lattice vectors {lattice.tolist()} are zero or linearly dependent; "
            "a periodic structure needs a non-singular cell"
        )
    full = cell.clone()
    complement = iter(vh[len(periodic) :])
    for k in range(3):
        if not pbc[k]:
            full[k] = next(complement)
    return full


def neighbor_list_reference(
    positions: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | bool | list[bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs (i, j, shift) of one structure with |r_ij| < cutoff, by brute force.

    positions: [N, 3] (Angstrom, any float dtype; the search runs in float64).
    cutoff: Angstrom, finite and positive.
    cell: [3, 3], rows are lattice vectors; None means no cell (then nothing is periodic).
    pbc: bool or 3 bools; default: periodic in all directions when a cell is given.

    Returns ``first`` [P], ``second`` [P] (int64) and ``shifts`` [P, 3] (int64) with
    ``r_ij = positions[second] - positions[first] + shifts @ cell``; the list is full (both (i, j)
    and (j, i)), an atom is its own neighbor through its periodic images, and pairs are sorted by
    (first, second, shift) so that two calls can be compared with ``torch.equal``.

    Every pair of atoms is tested against every periodic image whose shift can matter: along a
    periodic direction k with face-to-face height h_k, wrapped atoms differ by less than one cell
    in fractional coordinate k and a pair closer than the cutoff by at most cutoff / h_k more, so
    shifts |s_k| <= ceil(cutoff / h_k) + 1 are enough.
    """
    x = torch.as_tensor(positions)
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"positions: must be n x 3, got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"positions: must be a floating-point tensor, got {x.dtype}")
    device = x.device
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("positions: contain a non-finite coordinate")
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0.0):
        raise ValueError(f"cutoff: must be a finite positive number, got {cutoff}")

    if cell is None:
        h = torch.zeros(3, 3, dtype=torch.float64, device=device)
        pbc = False if pbc is None else pbc
    else:
        h = torch.as_tensor(cell, device=device).to(torch.float64)
        if h.shape != (3, 3):
            raise ValueError(f"cell: must be 3 x 3 (rows are lattice vectors), got shape {list(h.shape)}")
        pbc = True if pbc is None else pbc
    flags = torch.as_tensor(pbc, dtype=torch.bool).reshape(-1)
    if flags.numel() == 1:
        flags = flags.expand(3)
    if flags.numel() != 3:
        raise ValueError(f"pbc: must be a bool or 3 bools, got {flags.numel()} values")
    periodic = [bool(p) for p in flags]

    n_atoms = x.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n_atoms == 0:
        return empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long, device=device)

    # Wrap the atoms into the cell along periodic directions; `wrap` is the image removed.
    n_images = [0, 0, 0]
    wrap = torch.zeros(n_atoms, 3, dtype=torch.float64, device=device)
    if any(periodic):
        full = _periodic_cell(h, periodic)
        inverse = torch.linalg.inv(full)  # columns: reciprocal vectors b_k, |b_k| = 1 / h_k
        frac = x @ inverse
        for k in range(3):
            if periodic[k]:
                wrap[:, k] = torch.floor(frac[:, k])
                n_images[k] = math.ceil(cutoff * float(torch.linalg.norm(inverse[:, k]))) + 1
    wrapped = x - wrap @ h

    images = torch.tensor(
        list(itertools.product(*(range(-m, m + 1) for m in n_images))), dtype=torch.float64, device=device
    )  # [S, 3]
    image_vectors = images @ h
    zero_image = int(((images == 0).all(dim=1)).nonzero()[0, 0])

    # r[s, i, j] = wrapped[j] - wrapped[i] + images[s] @ cell, a chunk of images at a time
    diff = wrapped[None, :, :] - wrapped[:, None, :]  # [N, N, 3]
    step = max(1, _PAIR_CHUNK // (n_atoms * n_atoms))
    found = []
    for s0 in range(0, images.shape[0], step):
        r = diff[None] + image_vectors[s0 : s0 + step, None, None, :]
        close = (r * r).sum(-1) < cutoff * cutoff  # [s, N, N]
        if s0 <= zero_image < s0 + step:
            close[zero_image].fill_diagonal_(False)  # an atom is not its own neighbor in its cell
        s, i, j = close.nonzero(as_tuple=True)
        found.append((s + s0, i, j))
    s = torch.cat([f[0] for f in found])
    first = torch.cat([f[1] for f in found])
    second = torch.cat([f[2] for f in found])
    # shifts relative to the unwrapped input positions: x_j - x_i + S @ cell == w_j - w_i + s @ cell
    shifts = (images[s] - wrap[second] + wrap[first]).round().to(torch.long)

    # Sort by (first, second, shift): stable sorts from the least significant key up.
    order = torch.arange(first.numel(), device=device)
    for key in (shifts[:, 2], shifts[:, 1], shifts[:, 0], second, first):
        order = order[torch.sort(key[order], stable=True).indices]
    return first[order], second[order], shifts[order]


# =============================================================================================
# HIPNN interaction ops (oracle of torch.ops.ekd.envsum / sensesum / featsum and the factorised
# tensor pair tensor_envsum / tensor_sensesum; formulas in csrc/register.cpp)
# =============================================================================================
# Shapes: P pairs with i = pair_first[p], j = pair_second[p] (int64 [P]); A atoms; N sensitivities;
# F features; C tensor components. Semantics of envsum / sensesum / featsum are those of hippynn
# 0.1.3 (hippynn/custom_kernels/env_pytorch.py); these are written independently, as per-pair
# einsums scattered with index_add, and materialise pairs x N x F: small inputs only.


def envsum_reference(sensitivities, features, pair_first, pair_second):
    """env[i, n, f] = sum_{p: first[p]=i} sensitivities[p, n] * features[second[p], f]  -> [A, N, F]."""
    per_pair = torch.einsum("pn,pf->pnf", sensitivities, features[pair_second])
    out = features.new_zeros(features.shape[0], sensitivities.shape[1], features.shape[1])
    return out.index_add(0, pair_first, per_pair)


def sensesum_reference(env, features, pair_first, pair_second):
    """sense[p, n] = sum_f env[first[p], n, f] * features[second[p], f]  -> [P, N]."""
    return torch.einsum("pnf,pf->pn", env[pair_first], features[pair_second])


def featsum_reference(env, sense, pair_first, pair_second):
    """feat[j, f] = sum_{p: second[p]=j} sum_n sense[p, n] * env[first[p], n, f]  -> [A, F]."""
    per_pair = torch.einsum("pn,pnf->pf", sense, env[pair_first])
    return env.new_zeros(env.shape[0], env.shape[2]).index_add(0, pair_second, per_pair)


def tensor_envsum_reference(a, b, x, pair_first, pair_second):
    """out[i, c, o] = sum_{p: first[p]=i} a[p, c] * sum_n b[p, n] * x[second[p], n, o]  -> [A, C, O]."""
    per_pair = torch.einsum("pc,pn,pno->pco", a, b, x[pair_second])
    return x.new_zeros(x.shape[0], a.shape[1], x.shape[2]).index_add(0, pair_first, per_pair)


def tensor_sensesum_reference(a, y, x, pair_first, pair_second):
    """out[p, n] = sum_o x[second[p], n, o] * sum_c a[p, c] * y[first[p], c, o]  -> [P, N]."""
    return torch.einsum("pno,pc,pco->pn", x[pair_second], a, y[pair_first])
