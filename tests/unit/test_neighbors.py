"""ekd's neighbor search (torch op, ekd._C helpers) against ASE and the brute-force reference.

Pair lists are compared as sets of (i, j, sx, sy, sz) rows, so nothing here depends on the order
in which an implementation emits pairs, and by their distances. The structures are built with
ase.build or from seeded random numbers; pair counts are never hard-coded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from ekd.ops import library as _ops
from ekd.testing.reference import neighbor_list_reference

# ---------------------------------------------------------------------------------------------
# structures


def _random_atoms(n: int, cell, pbc, seed: int) -> Atoms:
    """n atoms at uniformly random fractional coordinates, pushed apart so no two coincide."""
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, dtype=float)
    frac = rng.random((n, 3))
    # non-periodic directions with a zero vector: spread the atoms over a few Angstrom instead
    positions = frac @ cell + np.where(np.linalg.norm(cell, axis=1) == 0.0, 4.0, 0.0) * frac
    return Atoms(f"C{n}", positions=positions, cell=cell, pbc=pbc)


def _rattled(atoms: Atoms, seed: int, stdev: float = 0.05) -> Atoms:
    atoms = atoms.copy()
    atoms.rattle(stdev=stdev, seed=seed)
    return atoms


def _slab_zero_c() -> Atoms:
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=4.0)
    slab.cell[2] = 0.0  # a slab written without a third vector; pbc is (T, T, F)
    return _rattled(slab, 3)


def _boundary_atoms() -> Atoms:
    """Atoms exactly on the faces of a cubic cell (x = 0, x = L), at negative coordinates and
    outside the cell: the neighbor search wraps them, shifts must refer to the input positions."""
    L = 4.0
    positions = [
        (0.0, 1.0, 2.0),
        (L, 2.5, 0.5),
        (-0.0, L, L),
        (-1.3, 2.0, 3.1),
        (2.0, 0.0, L),
        (-L, -L, 1.0),
        (2 * L + 0.7, 1.5, 1.5),
        (1.1, -2 * L - 0.2, 3.3),
    ]
    return Atoms("H8", positions=positions, cell=np.eye(3) * L, pbc=True)


def _boundary_triclinic() -> Atoms:
    """Fractional coordinates 0 and 1 in a skewed cell (cartesian on the faces up to rounding)."""
    cell = np.array([[4.2, 0.0, 0.0], [1.9, 3.8, 0.0], [-1.1, 0.9, 4.4]])
    frac = np.array([[0.0, 0.0, 0.0], [1.0, 0.5, 0.25], [0.5, 1.0, 0.0], [0.3, 0.0, 1.0], [-1.0, 0.7, 0.6]])
    return Atoms("H5", positions=frac @ cell, cell=cell, pbc=True)


SKEWED = [[6.0, 0.0, 0.0], [3.5, 5.5, 0.0], [-2.0, 1.5, 6.5]]

# name -> (structure, cutoff). Cutoffs are kept away from the shell radii of the crystals.
STRUCTURES = {
    "ethanol": (lambda: molecule("CH3CH2OH"), 2.0),
    "benzene-everything": (lambda: molecule("C6H6"), 10.0),
    "methyl-nitrite": (lambda: molecule("CH3ONO"), 1.7),
    "fcc-cubic": (lambda: _rattled(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2), 1), 4.3),
    "rocksalt": (lambda: _rattled(bulk("NaCl", "rocksalt", a=5.64, cubic=True), 2), 5.3),
    "random-orthorhombic": (lambda: _random_atoms(40, np.diag([7.0, 8.5, 9.3]), True, 4), 3.7),
    "fcc-primitive": (lambda: _rattled(bulk("Cu", "fcc", a=3.6) * (3, 2, 2), 5), 5.0),
    "hcp": (lambda: _rattled(bulk("Mg", "hcp", a=3.21, c=5.21) * (2, 2, 1), 6), 4.6),
    "random-triclinic": (lambda: _random_atoms(30, SKEWED, True, 7), 4.1),
    "slab-zero-c": (_slab_zero_c, 4.0),
    "slab-pbc-TFT": (lambda: _random_atoms(25, SKEWED, (True, False, True), 8), 3.9),
    "wire": (lambda: _random_atoms(12, [[0, 0, 0], [0, 0, 0], [0, 0, 3.1]], (False, False, True), 9), 4.4),
    # cells much thinner than the cutoff: every image within reach is a neighbor
    "one-atom-cubic-3x": (lambda: Atoms("Cu", cell=np.eye(3) * 2.2, pbc=True), 7.0),
    "two-atoms-triclinic-3x": (
        lambda: Atoms(
            "CuAu",
            positions=[[0.1, 0.2, 0.3], [1.2, 0.9, 0.8]],
            cell=[[2.0, 0, 0], [0.7, 1.9, 0], [0.4, -0.5, 2.1]],
            pbc=True,
        ),
        6.3,
    ),
    "one-atom-flat-cell": (lambda: Atoms("H", cell=[[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0.9]], pbc=True), 2.0),
    "boundary-cubic": (_boundary_atoms, 3.3),
    "boundary-triclinic": (_boundary_triclinic, 3.9),
}


# ---------------------------------------------------------------------------------------------
# helpers


def _tensors(atoms: Atoms, dtype=torch.float64):
    return (
        torch.tensor(atoms.positions, dtype=dtype),
        torch.tensor(atoms.cell.array, dtype=dtype),
        torch.tensor(atoms.pbc),
    )


def _rows(first, second, shifts) -> np.ndarray:
    """Pairs as (i, j, sx, sy, sz) rows in lexicographic order."""
    rows = np.concatenate(
        [np.asarray(first).reshape(-1, 1), np.asarray(second).reshape(-1, 1), np.asarray(shifts).reshape(-1, 3)],
        axis=1,
    ).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def _distances(positions: np.ndarray, cell: np.ndarray, rows: np.ndarray) -> np.ndarray:
    r = positions[rows[:, 1]] - positions[rows[:, 0]] + rows[:, 2:] @ cell
    return np.linalg.norm(r, axis=1)


def _ase_rows(atoms: Atoms, cutoff: float):
    i, j, S, d = ase_neighbor_list("ijSd", atoms, cutoff)
    rows = np.concatenate([i[:, None], j[:, None], S], axis=1).astype(np.int64)
    order = np.lexsort(rows.T[::-1])
    return rows[order], d[order]


def _ekd_rows(atoms: Atoms, cutoff: float, dtype=torch.float64) -> np.ndarray:
    x, cell, pbc = _tensors(atoms, dtype)
    first, second, shifts = _ops.neighbor_list(x, cutoff, cell, pbc)
    assert first.dtype == second.dtype == shifts.dtype == torch.int64
    assert first.shape == second.shape == shifts.shape[:1] and shifts.shape[1:] == (3,)
    return _rows(first, second, shifts)


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.fixture
def threads():
    """Restores torch's intra-op thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# correctness against ASE and the reference


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_matches_ase_and_reference(name, dtype):
    atoms, cutoff = STRUCTURES[name][0](), STRUCTURES[name][1]
    # every implementation sees the same (possibly float32-rounded) coordinates
    x, cell, pbc = _tensors(atoms, dtype)
    atoms.positions = x.double().numpy()
    atoms.cell = cell.double().numpy()

    ours = _ekd_rows(atoms, cutoff, dtype)
    ase_rows, ase_d = _ase_rows(atoms, cutoff)
    reference = _rows(*neighbor_list_reference(x, cutoff, cell, pbc))
    np.testing.assert_array_equal(ours, ase_rows)
    np.testing.assert_array_equal(ours, reference)

    d = _distances(atoms.positions, atoms.cell.array, ours)
    np.testing.assert_allclose(d, ase_d, rtol=0, atol=1e-9)
    assert np.all(d < cutoff)
    # full list: (i, j, S) and (j, i, -S) both present
    swapped = np.concatenate([ours[:, [1, 0]], -ours[:, 2:]], axis=1)
    np.testing.assert_array_equal(_rows(swapped[:, 0], swapped[:, 1], swapped[:, 2:]), ours)


def test_cell_thinner_than_cutoff_gives_every_image():
    atoms, cutoff = STRUCTURES["one-atom-cubic-3x"][0](), STRUCTURES["one-atom-cubic-3x"][1]
    rows = _ekd_rows(atoms, cutoff)
    # the images of one atom on a simple cubic lattice, counted directly
    a = atoms.cell[0, 0]
    m = math.ceil(cutoff / a)
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    norm = np.linalg.norm(grid * a, axis=1)
    expected = grid[(norm < cutoff) & (norm > 0)]
    assert (rows[:, :2] == 0).all()
    np.testing.assert_array_equal(rows[:, 2:], expected[np.lexsort(expected.T[::-1])])
    assert np.abs(rows[:, 2:]).max() == 3  # images three cells away are reached


@pytest.mark.parametrize("name", ["ethanol", "random-triclinic", "fcc-primitive", "slab-zero-c", "boundary-cubic"])
def test_rotation_and_translation_keep_pairs(name):
    atoms, cutoff = STRUCTURES[name][0](), STRUCTURES[name][1]
    before = _ekd_rows(atoms, cutoff)
    d_before = _distances(atoms.positions, atoms.cell.array, before)

    R = _rotation(11)
    moved = atoms.copy()
    moved.positions = atoms.positions @ R.T + np.array([13.7, -4.2, 0.9])
    moved.cell = atoms.cell.array @ R.T
    after = _ekd_rows(moved, cutoff)
    # shifts refer to the input positions, which move rigidly: the same pairs and shifts
    np.testing.assert_array_equal(after, before)
    np.testing.assert_allclose(_distances(moved.positions, moved.cell.array, after), d_before, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("periodic", [False, True])
def test_zero_atoms(periodic):
    x = torch.zeros(0, 3, dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64) * 5.0
    first, second, shifts = _ops.neighbor_list(x, 3.0, cell, periodic)
    assert first.shape == second.shape == (0,) and shifts.shape == (0, 3)
    assert first.dtype == shifts.dtype == torch.int64
    f, s, sh = _ops._C.neighbor_pairs(np.zeros((0, 3)), np.eye(3) * 5.0, [periodic] * 3, 3.0)
    assert f.shape == s.shape == (0,) and sh.shape == (0, 3)
    rf, rs, rsh = neighbor_list_reference(x, 3.0, cell, periodic)
    assert rf.shape == (0,) and rsh.shape == (0, 3)
    assert _ops._C.min_pair_distance(np.zeros((0, 3)), np.eye(3), [True] * 3, 3.0) == (math.inf, -1, -1)


def test_one_atom():
    x = torch.tensor([[0.3, -0.2, 1.0]], dtype=torch.float64)
    first, second, shifts = _ops.neighbor_list(x, 5.0)  # no cell: an isolated atom has no neighbors
    assert first.numel() == 0 and shifts.shape == (0, 3)
    # periodic: its own images are its neighbors, one per lattice vector shorter than the cutoff
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 7.0]], dtype=torch.float64)
    first, second, shifts = _ops.neighbor_list(x, 5.0, cell, True)
    assert first.tolist() == [0, 0] and second.tolist() == [0, 0]
    assert sorted(shifts.tolist()) == [[-1, 0, 0], [1, 0, 0]]


def test_non_periodic_ignores_cell():
    atoms = molecule("CH3ONO")
    plain = _ekd_rows(atoms, 2.6)
    atoms.cell = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.3, 0.2, 0.0]]  # singular, but never used
    atoms.pbc = False
    np.testing.assert_array_equal(_ekd_rows(atoms, 2.6), plain)
    assert np.all(plain[:, 2:] == 0)

    # the same along the non-periodic direction of a slab: c = 0 and c parallel to a agree
    slab = _slab_zero_c()
    expected = _ekd_rows(slab, 4.0)
    slab.cell[2] = 2.0 * slab.cell[0]
    np.testing.assert_array_equal(_ekd_rows(slab, 4.0), expected)
    x, cell, pbc = _tensors(slab)
    np.testing.assert_array_equal(_rows(*neighbor_list_reference(x, 4.0, cell, pbc)), expected)


# ---------------------------------------------------------------------------------------------
# batches and determinism


def _batch_inputs(structures, dtype=torch.float64):
    xs, cells, pbcs, batch = [], [], [], []
    for b, atoms in enumerate(structures):
        x, cell, pbc = _tensors(atoms, dtype)
        xs.append(x)
        cells.append(cell)
        pbcs.append(pbc)
        batch.append(torch.full((len(atoms),), b, dtype=torch.long))
    return torch.cat(xs), torch.cat(batch), torch.stack(cells), torch.stack(pbcs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_batch_equals_per_structure_calls(dtype):
    names = ["ethanol", "fcc-cubic", "slab-zero-c", "random-triclinic", "one-atom-cubic-3x"]
    structures = [STRUCTURES[n][0]() for n in names]
    structures.insert(2, Atoms(cell=np.eye(3) * 3.0, pbc=True))  # a structure without atoms
    cutoff = 4.2
    x, batch, cells, pbc = _batch_inputs(structures, dtype)
    first, second, shifts = _ops.neighbor_list(x, cutoff, cells, pbc, batch=batch)

    expected, offset = [], 0
    for atoms in structures:
        xi, ci, pi = _tensors(atoms, dtype)
        f, s, sh = _ops.neighbor_list(xi, cutoff, ci, pi)
        expected.append((f + offset, s + offset, sh))
        offset += len(atoms)
    assert torch.equal(first, torch.cat([e[0] for e in expected]))
    assert torch.equal(second, torch.cat([e[1] for e in expected]))
    assert torch.equal(shifts, torch.cat([e[2] for e in expected]))
    # each pair stays inside its structure
    assert torch.equal(batch[first], batch[second])


def test_same_output_for_any_thread_count(threads):
    big = _random_atoms(1500, np.diag([24.0, 24.0, 24.0]), True, 21)  # several 256-atom chunks
    many = [_random_atoms(30 + 5 * k, SKEWED, True, 30 + k) for k in range(6)]  # one task per structure
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        x, cell, pbc = _tensors(big)
        single = _ops.neighbor_list(x, 5.0, cell, pbc)
        x, batch, cells, pbcs = _batch_inputs(many)
        batched = _ops.neighbor_list(x, 4.0, cells, pbcs, batch=batch)
        pairs = _ops._C.neighbor_pairs(big.positions, big.cell.array, big.pbc, 5.0)
        results.append((*single, *batched, *(torch.from_numpy(p) for p in pairs)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# ekd._C helpers


@pytest.mark.parametrize("name", ["ethanol", "random-triclinic", "slab-zero-c", "two-atoms-triclinic-3x"])
def test_c_neighbor_pairs_matches_op_and_reference(name):
    atoms, cutoff = STRUCTURES[name][0](), STRUCTURES[name][1]
    pairs = _ops._C.neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    assert all(p.dtype == np.int64 for p in pairs)
    np.testing.assert_array_equal(_rows(*pairs), _ekd_rows(atoms, cutoff))
    x, cell, pbc = _tensors(atoms)
    np.testing.assert_array_equal(_rows(*pairs), _rows(*neighbor_list_reference(x, cutoff, cell, pbc)))


@pytest.mark.parametrize(
    "name", ["methyl-nitrite", "random-orthorhombic", "random-triclinic", "slab-pbc-TFT", "boundary-cubic"]
)
def test_min_pair_distance_matches_brute_force(name):
    atoms = STRUCTURES[name][0]()
    x, cell, pbc = _tensors(atoms)
    cutoff = 6.0
    rows = _rows(*neighbor_list_reference(x, cutoff, cell, pbc))
    d = _distances(atoms.positions, atoms.cell.array, rows)
    d_min, i, j = _ops._C.min_pair_distance(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    assert d_min == pytest.approx(d.min(), abs=1e-12)
    # (i, j) is a pair at that distance
    assert np.any((rows[:, 0] == i) & (rows[:, 1] == j) & (np.abs(d - d_min) < 1e-12))
    # the Python wrapper takes torch tensors and a scalar pbc
    assert _ops.min_pair_distance(x, cell, pbc, cutoff)[0] == d_min
    # nothing within a cutoff below the smallest distance
    assert _ops.min_pair_distance(x, cell, pbc, 0.99 * d.min()) == (math.inf, -1, -1)


def test_min_pair_distance_through_an_image():
    # the closest pair of this cell is across the face x = 0 / x = L
    positions = np.array([[0.1, 2.0, 2.0], [3.85, 2.0, 2.0], [2.0, 0.5, 3.0]])
    d_min, i, j = _ops.min_pair_distance(positions, np.eye(3) * 4.0, True, 3.0)
    assert d_min == pytest.approx(0.25, abs=1e-12)
    assert {i, j} == {0, 1}
    assert _ops.min_pair_distance(positions, None, False, 3.0)[0] == pytest.approx(
        min(np.linalg.norm(positions[a] - positions[b]) for a in range(3) for b in range(a))
    )


# ---------------------------------------------------------------------------------------------
# bad input: errors name the argument


def _op_args(**change):
    args = {
        "positions": torch.rand(5, 3, dtype=torch.float64) * 4,
        "batch": torch.zeros(5, dtype=torch.long),
        "cells": torch.eye(3, dtype=torch.float64)[None] * 4,
        "pbc": torch.ones(1, 3, dtype=torch.bool),
        "cutoff": 2.0,
    }
    args.update(change)
    return args


BAD_OP_INPUTS = {
    "positions-2-columns": (dict(positions=torch.zeros(5, 2, dtype=torch.float64)), r"`positions` must be n x 3"),
    "positions-1d": (dict(positions=torch.zeros(15, dtype=torch.float64)), r"`positions` must be n x 3"),
    "positions-int": (dict(positions=torch.zeros(5, 3, dtype=torch.long)), r"`positions` must have dtype"),
    "positions-nan": (dict(positions=torch.full((5, 3), math.nan, dtype=torch.float64)), r"positions: atom 0"),
    "batch-length": (dict(batch=torch.zeros(4, dtype=torch.long)), r"`batch` must be a vector of length n"),
    "batch-int32": (dict(batch=torch.zeros(5, dtype=torch.int32)), r"`batch` must have dtype"),
    "batch-unsorted": (
        dict(
            batch=torch.tensor([0, 1, 0, 1, 1]),
            cells=torch.eye(3).double()[None].repeat(2, 1, 1) * 4,
            pbc=torch.ones(2, 3, dtype=torch.bool),
        ),
        r"`batch` must be non-decreasing",
    ),
    "batch-out-of-range": (dict(batch=torch.tensor([0, 0, 0, 1, 1])), r"`batch` values must lie in \[0, 1\)"),
    "cells-shape": (dict(cells=torch.eye(3, dtype=torch.float64)), r"`cells` must be n_structures x 3 x 3"),
    "cells-int": (dict(cells=torch.eye(3, dtype=torch.long)[None]), r"`cells` must have dtype"),
    "pbc-shape": (dict(pbc=torch.ones(3, dtype=torch.bool)), r"`pbc` must be n_structures x 3"),
    "pbc-count": (dict(pbc=torch.ones(2, 3, dtype=torch.bool)), r"`pbc` must be n_structures x 3"),
    "pbc-float": (dict(pbc=torch.ones(1, 3)), r"`pbc` must have dtype"),
    "cutoff-negative": (dict(cutoff=-1.0), r"`cutoff` must be a finite positive number"),
    "cutoff-zero": (dict(cutoff=0.0), r"`cutoff` must be a finite positive number"),
    "cutoff-nan": (dict(cutoff=math.nan), r"`cutoff` must be a finite positive number"),
    "cell-singular": (
        dict(cells=torch.tensor([[[4.0, 0, 0], [0, 4.0, 0], [4.0, 4.0, 0]]], dtype=torch.float64)),
        r"structure 0: cell: .*linearly dependent",
    ),
    "cell-zero-periodic-vector": (
        dict(cells=torch.diag(torch.tensor([4.0, 4.0, 0.0], dtype=torch.float64))[None]),
        r"structure 0: cell: lattice vector 2 is zero",
    ),
}


@pytest.mark.parametrize("case", list(BAD_OP_INPUTS))
def test_op_rejects_bad_input(case):
    change, message = BAD_OP_INPUTS[case]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ekd.neighbor_list(**_op_args(**change))


def test_python_wrapper_needs_cells_with_batch():
    with pytest.raises(ValueError, match=r"`cell`"):
        _ops.neighbor_list(torch.zeros(2, 3), 1.0, batch=torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    "positions, cell, pbc, cutoff, message",
    [
        (np.zeros((4, 2)), np.eye(3), [True] * 3, 1.0, r"`positions` must be an n x 3"),
        (np.zeros((4, 3)), np.eye(2), [True] * 3, 1.0, r"`cell` must be a 3 x 3"),
        (np.zeros((4, 3)), np.eye(3), [True] * 2, 1.0, r"`pbc` must be 3 booleans"),
        (np.zeros((4, 3)), np.eye(3), [True] * 3, -1.0, r"cutoff: must be a finite positive number"),
        (np.zeros((4, 3)), np.ones((3, 3)), [True] * 3, 1.0, r"cell: .*linearly dependent"),
    ],
)
def test_c_helpers_reject_bad_input(positions, cell, pbc, cutoff, message):
    for helper in (_ops._C.neighbor_pairs, _ops._C.min_pair_distance):
        with pytest.raises(ValueError, match=message):
            helper(positions, cell, pbc, cutoff)


@pytest.mark.parametrize(
    "positions, cell, pbc, cutoff, message",
    [
        (torch.zeros(4, 2), None, None, 1.0, r"positions: must be n x 3"),
        (torch.zeros(4, 3, dtype=torch.long), None, None, 1.0, r"positions: must be a floating-point"),
        (torch.zeros(4, 3), torch.eye(3), True, -2.0, r"cutoff: must be a finite positive number"),
        (torch.zeros(4, 3), torch.eye(2), True, 1.0, r"cell: must be 3 x 3"),
        (torch.zeros(4, 3), torch.eye(3), [True, False], 1.0, r"pbc: must be a bool or 3 bools"),
        (torch.zeros(4, 3), torch.ones(3, 3), True, 1.0, r"cell: .*linearly dependent"),
    ],
)
def test_reference_rejects_bad_input(positions, cell, pbc, cutoff, message):
    with pytest.raises(ValueError, match=message):
        neighbor_list_reference(positions, cutoff, cell, pbc)
