"""Molecules for reference-data generation: the NCI SMILES shipped with RDKit, and 3-d conformers.

Everything here is RDKit only (no quantum chemistry) and deterministic for a seed. Coordinates
are Angstrom, atom order is RDKit's after ``AddHs`` (heavy atoms first, in SMILES order, then H).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import covalent_radii
from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import AllChem, rdMolAlign, rdMolDescriptors

#: methyl nitrite, CH3ONO: the MD-stability molecule; always in the train pool
METHYL_NITRITE = "CON=O"
_ALLOWED_ELEMENTS = frozenset({1, 6, 7, 8})


def nci_smiles_path() -> Path:
    """``<rdkit>/Data/NCI/first_5K.smi``: the first 5,000 NCI compounds, shipped in RDKit's wheel."""
    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    if not path.is_file():
        raise FileNotFoundError(
            f"RDKit's NCI SMILES file is missing ({path}); this RDKit build does not ship its Data folder"
        )
    return path


@dataclass(frozen=True)
class Candidate:
    """One usable molecule: canonical SMILES (largest fragment), NCI id, sizes."""

    smiles: str
    nci_id: str
    heavy_atoms: int
    n_atoms: int
    formula: str
    rotatable_bonds: int


def candidate_from_smiles(smiles: str, nci_id: str = "", max_heavy: int | None = None) -> Candidate | None:
    """The molecule's largest fragment as a :class:`Candidate`, or None when it is unusable.

    Unusable: not sanitizable, an element other than H, C, N, O, a net charge (formal charges
    that cancel, as in nitro groups, are fine), unpaired electrons, more than ``max_heavy`` heavy
    atoms (None: no limit).
    """
    # cheap screen on the unsanitized graph first: sanitizing all 5,000 NCI entries costs seconds
    raw = Chem.MolFromSmiles(smiles, sanitize=False)
    if raw is None:
        return None
    frags = Chem.GetMolFrags(raw)
    big = max(frags, key=lambda f: sum(raw.GetAtomWithIdx(i).GetAtomicNum() > 1 for i in f))
    if any(raw.GetAtomWithIdx(i).GetAtomicNum() not in _ALLOWED_ELEMENTS for i in big):
        return None
    if max_heavy is not None and sum(raw.GetAtomWithIdx(i).GetAtomicNum() > 1 for i in big) > max_heavy:
        return None
    mol = Chem.MolFromSmiles(smiles, sanitize=True)
    if mol is None:
        return None
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)
    # largest by heavy atoms, then by total atoms; ties go to the first (deterministic)
    mol = max(frags, key=lambda m: (m.GetNumHeavyAtoms(), m.GetNumAtoms(onlyExplicit=False)))
    if any(a.GetAtomicNum() not in _ALLOWED_ELEMENTS for a in mol.GetAtoms()):
        return None
    if Chem.GetFormalCharge(mol) != 0:
        return None
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        return None
    for a in mol.GetAtoms():
        a.SetIsotope(0)
    canonical = Chem.MolToSmiles(mol)
    # round trip: the canonical SMILES must itself parse (it is what the workers embed)
    again = Chem.MolFromSmiles(canonical)
    if again is None:
        return None
    with_h = Chem.AddHs(again)
    return Candidate(
        smiles=canonical,
        nci_id=nci_id,
        heavy_atoms=again.GetNumHeavyAtoms(),
        n_atoms=with_h.GetNumAtoms(),
        formula=rdMolDescriptors.CalcMolFormula(again),
        rotatable_bonds=rdMolDescriptors.CalcNumRotatableBonds(again),
    )


@functools.lru_cache(maxsize=4)
def load_nci_candidates(path: str | None = None, max_heavy: int | None = None) -> tuple[Candidate, ...]:
    """Usable molecules of the NCI file (see :func:`candidate_from_smiles`), in file order,
    deduplicated by canonical SMILES (the first NCI id wins); at most ``max_heavy`` heavy atoms."""
    path = Path(path) if path else nci_smiles_path()
    out: dict[str, Candidate] = {}
    # NCI entries RDKit rejects print parse errors; they are filtered, not interesting
    RDLogger.DisableLog("rdApp.*")
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if not parts:
                continue
            cand = candidate_from_smiles(parts[0], parts[1] if len(parts) > 1 else "", max_heavy)
            if cand is not None and cand.smiles not in out:
                out[cand.smiles] = cand
    finally:
        RDLogger.EnableLog("rdApp.*")
    return tuple(out.values())


def select_molecules(
    candidates: tuple[Candidate, ...] | list[Candidate],
    n: int,
    min_heavy: int,
    max_heavy: int,
    seed: int,
    *,
    required: tuple[str, ...] = (),
    exclude: frozenset[str] = frozenset(),
    min_rotatable_bonds: int = 0,
    what: str = "molecules",
) -> list[Candidate]:
    """``n`` candidates with ``min_heavy <= heavy atoms <= max_heavy``, required SMILES first.

    The rest is a seeded random permutation of the eligible pool, so the selection for ``n`` is a
    prefix of the selection for ``n + 1`` (growing a data set reuses the molecules already made).
    """
    pool = [
        c
        for c in candidates
        if min_heavy <= c.heavy_atoms <= max_heavy
        and c.rotatable_bonds >= min_rotatable_bonds
        and c.smiles not in exclude
    ]
    chosen: list[Candidate] = []
    for smi in required:
        cand = candidate_from_smiles(smi, "")
        if cand is None:
            raise ValueError(f"required molecule {smi!r} is not a usable CHNO molecule")
        known = next((c for c in candidates if c.smiles == cand.smiles), None)
        chosen.append(known or cand)
    taken = {c.smiles for c in chosen}
    pool = [c for c in pool if c.smiles not in taken]
    need = n - len(chosen)
    if need > len(pool):
        raise ValueError(
            f"{what}: asked for {n} molecules with {min_heavy}..{max_heavy} heavy atoms"
            + (f" and >= {min_rotatable_bonds} rotatable bonds" if min_rotatable_bonds else "")
            + f", but the candidates (the NCI set and any extra_smiles) hold only {len(pool) + len(chosen)}"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen.extend(pool[i] for i in order[: max(need, 0)])
    return chosen[:n]


# ------------------------------------------------------------------------------------------
# 3-d structures


def connectivity(numbers: np.ndarray, positions: np.ndarray, scale: float = 1.25) -> np.ndarray:
    """(n_atoms, n_atoms) bool: bonded where the distance is below ``scale`` x the sum of covalent
    radii. Used to notice a relaxation or a distortion that changed the molecule (H transfer,
    ring opening), which would make the group's SMILES a lie."""
    r = covalent_radii[np.asarray(numbers)]
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    bonded = d < scale * (r[:, None] + r[None])
    np.fill_diagonal(bonded, False)
    return bonded


def min_distance(positions: np.ndarray) -> float:
    """Smallest interatomic distance (Angstrom); inf for one atom."""
    if len(positions) < 2:
        return float("inf")
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    return float(d[np.triu_indices(len(positions), 1)].min())


@dataclass
class Conformers:
    """ETKDG conformers of one molecule, relaxed with a force field.

    numbers: (n_atoms,) atomic numbers.
    coordinates: (n_conf, n_atoms, 3) Angstrom: force-field minima, lowest energy first, pairwise
        distinct (heavy-atom RMSD >= the threshold).
    unrelaxed: (n_extra, n_atoms, 3) Angstrom: raw ETKDG embeddings whose force-field minimum
        duplicated a kept one but which themselves differ from every kept minimum, most different
        first. They are extra starting points for a relaxation at another level, whose minima
        need not be the force field's (MMFF turns every CH3-O-N=O torsion to trans, GFN2-xTB
        keeps the cis ground state of methyl nitrite).
    mol: the RDKit molecule with hydrogens (atom order of ``numbers``), for RMSD checks.
    """

    numbers: np.ndarray
    coordinates: np.ndarray
    unrelaxed: np.ndarray
    mol: Chem.Mol


def embed_conformers(smiles: str, n_embed: int, seed: int, rmsd_threshold: float) -> Conformers:
    """``n_embed`` ETKDG (v3, seeded, one thread) embeddings relaxed with MMFF94 (UFF when MMFF
    lacks parameters), pruned to heavy-atom RMSD >= ``rmsd_threshold`` Angstrom, sorted by
    force-field energy. Raises ValueError if RDKit cannot embed the molecule at all."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n_embed), params=params))
    if not ids:
        # the documented fallback for molecules whose distance bounds are hard to satisfy
        params.useRandomCoords = True
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n_embed), params=params))
    if not ids:
        raise ValueError(f"RDKit could not embed {smiles!r} in 3-d")
    raw = Chem.Mol(mol)
    if AllChem.MMFFHasAllMoleculeParams(mol):
        results = AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)
    else:
        results = AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)
    energies = np.array([e for _, e in results])
    order = np.argsort(energies, kind="stable")
    heavy = Chem.RemoveHs(mol)
    heavy_raw = Chem.RemoveHs(raw)
    kept: list[int] = []
    for i in order:
        if all(heavy_rmsd(heavy, ids[i], heavy, ids[j]) >= rmsd_threshold for j in kept):
            kept.append(int(i))
    extra: list[tuple[float, int]] = []
    for i in range(len(ids)):
        if i in kept:
            continue
        nearest = min(heavy_rmsd(heavy_raw, ids[i], heavy, ids[j]) for j in kept)
        if nearest >= rmsd_threshold:
            extra.append((-nearest, i))
    extra.sort()
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    coords = np.stack([mol.GetConformer(ids[i]).GetPositions() for i in kept])
    unrelaxed = (
        np.stack([raw.GetConformer(ids[i]).GetPositions() for _, i in extra])
        if extra
        else (np.zeros((0, len(numbers), 3)))
    )
    return Conformers(numbers, coords, unrelaxed, mol)


def heavy_rmsd(probe: Chem.Mol, probe_id: int, ref: Chem.Mol, ref_id: int) -> float:
    """Symmetry-aware RMSD (Angstrom) over heavy atoms after optimal alignment (single heavy
    atom: 0). ``probe``/``ref`` are hydrogen-free molecules (``Chem.RemoveHs``)."""
    if probe.GetNumAtoms() < 2:
        return 0.0
    return float(rdMolAlign.GetBestRMS(Chem.Mol(probe), ref, prbId=probe_id, refId=ref_id))


def heavy_rmsd_coords(mol: Chem.Mol, a: np.ndarray, b: np.ndarray) -> float:
    """:func:`heavy_rmsd` between two (n_atoms, 3) coordinate sets of ``mol`` (with hydrogens)."""
    probe = Chem.Mol(mol)
    probe.RemoveAllConformers()
    for xyz in (a, b):
        conf = Chem.Conformer(mol.GetNumAtoms())
        for i, p in enumerate(xyz):
            conf.SetAtomPosition(i, p.tolist())
        probe.AddConformer(conf, assignId=True)
    heavy = Chem.RemoveHs(probe)
    return heavy_rmsd(heavy, 0, heavy, 1)
