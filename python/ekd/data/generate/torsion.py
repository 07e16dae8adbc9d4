"""The torsion-scan pool (``torsion.h5``, the analogue of the paper's torsion benchmark at
GFN2-xTB): which dihedrals of which molecules (:func:`plan_scans`, in the main process) and one
scan's geometries and labels (:func:`compute_torsion`, in a worker).

A scan starts at the molecule's lowest GFN2-xTB minimum (point 0, its dihedral phi_0) and visits
phi_0 + m * step_deg for m = 0 .. 360 / step_deg - 1. Rigid: the atoms on the smaller side of
the bond (the k side of i-j-k-l) are rotated about the j-k axis, nothing else moves. Relaxed:
every other coordinate is then relaxed with the dihedral held (ASE FixInternals + BFGS, the
generator's relax_fmax). A point whose bond graph changes (a clash), whose labelling fails or
which lies more than ``energy_cap`` above the minimum is dropped, as everywhere in the generator.
"""

from __future__ import annotations

import time

import numpy as np

from ...units import HARTREE_TO_KCALMOL
from .levels import xtb_record, xtb_sample
from .molecule import find_minima, new_stats
from .options import POOL_CODE, TORSION_POOL, GenerateOptions, GenerateOptionsError, wanted_levels
from .record import MoleculeRecord, finish
from .selection import MoleculeTask

# ------------------------------------------------------------------------------------------
# geometry (numpy; positions (n, 3) Angstrom)


def dihedral_deg(positions: np.ndarray, i: int, j: int, k: int, l: int) -> float:  # noqa: E741
    """The dihedral angle i-j-k-l in degrees, in [-180, 180] (IUPAC sign, as RDKit's)."""
    p = np.asarray(positions, dtype=np.float64)
    b0, b1, b2 = p[i] - p[j], p[k] - p[j], p[l] - p[k]
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - (b0 @ b1) * b1
    w = b2 - (b2 @ b1) * b1
    return float(np.degrees(np.arctan2(np.cross(b1, v) @ w, v @ w)))


def set_dihedral(positions: np.ndarray, dihedral: tuple[int, ...], side: np.ndarray, target: float) -> np.ndarray:
    """``positions`` with the atoms ``side`` (those of the k end of i-j-k-l) rotated about the
    j-k axis so that the dihedral is ``target`` degrees; a copy, other atoms unchanged."""
    i, j, k, l = dihedral  # noqa: E741
    p = np.asarray(positions, dtype=np.float64)
    angle = np.radians(target - dihedral_deg(p, i, j, k, l))
    axis = p[k] - p[j]
    axis = axis / np.linalg.norm(axis)
    v = p[side] - p[k]
    # Rodrigues: a right-handed turn about j->k raises the dihedral i-j-k-l by the same angle
    turned = v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + np.outer(v @ axis, axis) * (1 - np.cos(angle))
    out = p.copy()
    out[side] = p[k] + turned
    return out


def moving_side(neighbours: list[list[int]], j: int, k: int) -> np.ndarray:
    """Atoms reachable from ``k`` without passing through ``j`` (k included), sorted."""
    seen, todo = {k}, [k]
    while todo:
        for b in neighbours[todo.pop()]:
            if b != j and b not in seen:
                seen.add(b)
                todo.append(b)
    if j in seen:
        raise ValueError(f"the bond {j}-{k} is in a ring: no side of it can rotate")
    return np.array(sorted(seen), dtype=np.int64)


def _graph(smiles: str) -> tuple[object, list[list[int]]]:
    """RDKit molecule with hydrogens (the generator's atom order) and its neighbour lists."""
    from rdkit import Chem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    return mol, [[n.GetIdx() for n in a.GetNeighbors()] for a in mol.GetAtoms()]


def rotatable_dihedrals(smiles: str) -> list[tuple[int, int, int, int]]:
    """One dihedral (i, j, k, l) per rotatable bond j-k of ``smiles`` (RDKit's
    ``Lipinski.RotatableBondSmarts`` on the heavy-atom graph: single, acyclic, not next to a
    triple bond, both ends with another heavy neighbour -- so no methyl, hydroxyl or amino rotor;
    amide C-N bonds count), oriented so that the k side is the smaller; i and l are the lowest-numbered heavy
    neighbours of j and k. Atom indices of ``Chem.AddHs(Chem.MolFromSmiles(smiles))``."""
    from rdkit import Chem
    from rdkit.Chem.Lipinski import RotatableBondSmarts

    heavy = Chem.MolFromSmiles(smiles)
    mol, neighbours = _graph(smiles)
    out = []
    for a, b in sorted(tuple(sorted(m)) for m in heavy.GetSubstructMatches(RotatableBondSmarts)):
        j, k = (b, a) if len(moving_side(neighbours, a, b)) > len(moving_side(neighbours, b, a)) else (a, b)
        i = min(n for n in neighbours[j] if n != k and mol.GetAtomWithIdx(n).GetAtomicNum() > 1)
        l = min(n for n in neighbours[k] if n != j and mol.GetAtomWithIdx(n).GetAtomicNum() > 1)  # noqa: E741
        out.append((i, j, k, l))
    return out


# ------------------------------------------------------------------------------------------
# which scans


def _elements(smiles: str) -> set[int]:
    from rdkit import Chem

    return {a.GetAtomicNum() for a in Chem.AddHs(Chem.MolFromSmiles(smiles)).GetAtoms()}


def plan_scans(candidates, options: GenerateOptions, train: list, test: list) -> list[MoleculeTask]:
    """The torsion pool's scans: ``torsion.molecules`` candidates with
    ``torsion.min_heavy_atoms..max_heavy_atoms`` heavy atoms and a rotatable bond
    (:func:`rotatable_dihedrals`), in neither the
    train nor the test pool and of the train molecules' elements only (every model knows them),
    drawn in a seeded order (more molecules extend the selection), then
    ``torsion.bonds_per_molecule`` of each one's rotatable bonds, drawn from the molecule's own
    stream. One task per scan, named ``tor<scan>_<formula>_<i>-<j>-<k>-<l>``."""
    t = options.torsion
    exclude = {c.smiles for c in (*train, *test)}
    known = set().union(*(_elements(c.smiles) for c in train))
    eligible = [
        c
        for c in candidates
        if t.min_heavy_atoms <= c.heavy_atoms <= t.max_heavy_atoms
        and c.smiles not in exclude
        and _elements(c.smiles) <= known
    ]
    seed = int(np.random.SeedSequence([options.seed, POOL_CODE[TORSION_POOL]]).generate_state(1)[0])
    tasks: list[MoleculeTask] = []
    n_molecules = 0
    for pick in np.random.default_rng(seed).permutation(len(eligible)):
        if n_molecules == t.molecules:
            break
        c = eligible[pick]
        dihedrals = rotatable_dihedrals(c.smiles)
        if not dihedrals:
            continue
        rng = np.random.default_rng([options.seed, POOL_CODE[TORSION_POOL], 1000 + n_molecules])
        for d in sorted(rng.permutation(len(dihedrals))[: t.bonds_per_molecule]):
            dihedral = dihedrals[d]
            name = f"tor{len(tasks):04d}_{c.formula}_{'-'.join(map(str, dihedral))}"
            tasks.append(
                MoleculeTask(
                    TORSION_POOL,
                    len(tasks),
                    name,
                    c.smiles,
                    c.nci_id,
                    c.formula,
                    c.heavy_atoms,
                    "torsion",
                    dihedral,
                    t.scan_label(),
                )  # fmt: skip
            )
        n_molecules += 1
    if n_molecules < t.molecules:
        raise GenerateOptionsError(
            f"GenerateOptions.torsion.molecules: asked for {t.molecules} molecules with {t.min_heavy_atoms}.."
            f"{t.max_heavy_atoms} heavy atoms and a rotatable bond, in neither the train nor the test pool and of "
            f"the train molecules' elements, but the candidates hold only {n_molecules}"
        )
    return tasks


# ------------------------------------------------------------------------------------------
# one scan (in a worker)


def relax_at_dihedral(xtb, numbers: np.ndarray, positions: np.ndarray, dihedral, target: float, options):
    """``positions`` relaxed with GFN2-xTB (BFGS to ``relax_fmax`` or ``relax_max_steps``) with
    the dihedral held at ``target`` degrees (ASE FixInternals). Raises LabelError."""
    from ase import Atoms
    from ase.constraints import FixInternals
    from ase.optimize import BFGS
    from ase.units import Hartree

    from ..sampling import _ASEAdapter  # the generator's Hartree -> ASE adapter

    atoms = Atoms(numbers=numbers, positions=np.asarray(positions, dtype=np.float64))
    atoms.set_constraint(FixInternals(dihedrals_deg=[[float(target), [int(a) for a in dihedral]]]))
    atoms.calc = _ASEAdapter(xtb)
    BFGS(atoms, logfile=None, maxstep=0.2).run(
        fmax=options.relax_fmax / HARTREE_TO_KCALMOL * Hartree, steps=options.relax_max_steps
    )
    return atoms.positions.copy()


def compute_torsion(task: MoleculeTask, options: GenerateOptions) -> MoleculeRecord:
    """One scan (see the module docstring): the lowest of ``torsion.conformers`` GFN2-xTB minima,
    then the scan's points with GFN2-xTB energies and forces. ``n_relaxed`` is 1 (point 0 is the
    minimum); ``stats["scan_deg"]`` holds each kept point's dihedral, measured."""
    from ..labels import LabelError

    t0 = time.perf_counter()
    stats = {**new_stats(), "scan_dropped": 0}
    levels = wanted_levels(options, TORSION_POOL)
    seq = np.random.SeedSequence([options.seed, POOL_CODE[TORSION_POOL], task.index])
    rdkit_seed = int(seq.spawn(1)[0].generate_state(1)[0] & 0x7FFFFFFF)
    numbers, bonds, xtb, minima = find_minima(task.smiles, options, options.torsion.conformers, rdkit_seed, stats)
    if not minima:
        shape = (0, 0, 3) if numbers is None else (0, len(numbers), 3)
        return finish(task, numbers, np.zeros(shape), {}, 0, stats, t0, levels)
    e_min, start, start_forces = minima[0]
    dihedral = tuple(task.dihedral)
    side = moving_side(_graph(task.smiles)[1], dihedral[1], dihedral[2])
    cap = options.energy_cap / HARTREE_TO_KCALMOL
    phi0 = dihedral_deg(start, *dihedral)
    coords, energies, forces, angles = [start], [e_min], [start_forces], [phi0]
    for m in range(1, options.torsion.n_points):
        target = (phi0 + m * options.torsion.step_deg + 180.0) % 360.0 - 180.0
        pos = set_dihedral(start, dihedral, side, target)
        if options.torsion.relaxed:
            try:
                pos = relax_at_dihedral(xtb, numbers, pos, dihedral, target, options)
            except LabelError:
                stats["relax_failed"] += 1
                stats["scan_dropped"] += 1
                continue
        labelled = xtb_sample(xtb, numbers, pos, bonds, e_min, cap, stats)
        if labelled is None:  # a clash, changed bonds, a failed label, above the cap
            stats["scan_dropped"] += 1
            continue
        coords.append(pos)
        energies.append(labelled[0])
        forces.append(labelled[1])
        angles.append(dihedral_deg(pos, *dihedral))
    stats["scan_deg"] = [float(a) for a in angles]
    stats["xtb_calls"] = xtb.n_calls
    return xtb_record(task, numbers, coords, energies, forces, 1, levels, stats, t0, f"torsion {task.name}")
