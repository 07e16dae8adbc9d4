"""The geometry of the torsion-scan pool (``torsion.h5``, the analogue of the paper's torsion
benchmark at GFN2-xTB): rotatable dihedrals of a molecule, dihedral angles and the rigid
rotation that sets one. Which scans a run makes: :func:`.selection.plan_scans`; one scan's
geometries and labels (in a worker): :func:`.scan.compute_torsion`.

A scan starts at the molecule's lowest GFN2-xTB minimum (point 0, its dihedral phi_0) and visits
phi_0 + m * step_deg for m = 0 .. 360 / step_deg - 1. Rigid: the atoms on the smaller side of
the bond (the k side of i-j-k-l) are rotated about the j-k axis, nothing else moves. Relaxed:
every other coordinate is then relaxed with the dihedral held (ASE FixInternals + BFGS, the
generator's relax_fmax). A point whose bond graph changes (a clash), whose labelling fails or
which lies more than ``energy_cap`` above the minimum is dropped, as everywhere in the generator.
"""

from __future__ import annotations

import numpy as np

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


def graph(smiles: str) -> tuple[object, list[list[int]]]:
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
    mol, neighbours = graph(smiles)
    out = []
    for a, b in sorted(tuple(sorted(m)) for m in heavy.GetSubstructMatches(RotatableBondSmarts)):
        j, k = (b, a) if len(moving_side(neighbours, a, b)) > len(moving_side(neighbours, b, a)) else (a, b)
        i = min(n for n in neighbours[j] if n != k and mol.GetAtomWithIdx(n).GetAtomicNum() > 1)
        l = min(n for n in neighbours[k] if n != j and mol.GetAtomWithIdx(n).GetAtomicNum() > 1)  # noqa: E741
        out.append((i, j, k, l))
    return out


def elements(smiles: str) -> set[int]:
    """Atomic numbers of ``smiles`` with its hydrogens."""
    from rdkit import Chem

    return {a.GetAtomicNum() for a in Chem.AddHs(Chem.MolFromSmiles(smiles)).GetAtoms()}
