"""Which molecules a run generates: the NCI draws of both pools, the required molecules, the
CH3ONO clusters and the torsion scans (:func:`plan`), as :class:`MoleculeTask` s in output order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cluster import CLUSTER_SMILES
from .options import DEFAULT_MAX_HEAVY, POOL_CODE, TORSION_POOL, GenerateOptions, GenerateOptionsError, wanted_levels


@dataclass(frozen=True)
class MoleculeTask:
    """One group to generate: pool ("train"/"test"/"torsion"), index in the pool (for a cluster:
    its number of molecules), group name; kind "molecule" (an NCI molecule), "cluster" (CH3ONO
    cluster) or "torsion" (one scan: ``dihedral`` the atom indices i, j, k, l of the scanned
    dihedral, the k side rotating; ``scan`` its settings, :meth:`.options.TorsionOptions.scan_label`)."""

    pool: str
    index: int
    name: str
    smiles: str
    nci_id: str
    formula: str
    heavy_atoms: int
    kind: str = "molecule"
    dihedral: tuple[int, ...] = ()
    scan: str = ""


def plan(options: GenerateOptions) -> list[MoleculeTask]:
    """The molecules of both pools, train first, then the clusters and the torsion scans, in
    output order (deterministic for the seed)."""
    from ..molecules import METHYL_NITRITE, candidate_from_smiles, load_nci_candidates

    # at least the default limit, so that one (cached, ~4 s) load serves the usual option sets
    torsion_max = options.torsion.max_heavy_atoms if options.torsion.molecules else 0
    limit = max(options.train_max_heavy_atoms, options.test_max_heavy_atoms, torsion_max, DEFAULT_MAX_HEAVY)
    candidates = load_nci_candidates(None, limit)
    if options.extra_smiles:
        known = {c.smiles for c in candidates}
        extra = []
        for smi in options.extra_smiles:
            cand = candidate_from_smiles(smi, "extra")
            if cand is None:
                raise GenerateOptionsError(
                    f"GenerateOptions.extra_smiles: {smi!r} is not a usable molecule (expected a neutral, "
                    "single-fragment molecule of H, C, N and O that RDKit parses)"
                )
            if cand.smiles not in known:
                known.add(cand.smiles)
                extra.append(cand)
        candidates = (*candidates, *extra)
    train = _select_pool(
        candidates, options, "train", required=(METHYL_NITRITE,) if options.include_methyl_nitrite else ()
    )
    train = append_required(train, "train", candidates, options)
    test = []
    if options.n_test_molecules:
        test = _select_pool(
            candidates,
            options,
            "test",
            # disjoint from train even if the heavy-atom ranges overlap
            exclude=frozenset(c.smiles for c in train),
            min_rotatable_bonds=options.test_min_rotatable_bonds,
        )
    test = append_required(test, "test", candidates, options)
    in_train = {c.smiles for c in train}
    clash = [c.smiles for c in test if c.smiles in in_train]
    if clash:
        raise GenerateOptionsError(
            f"GenerateOptions.test_required_smiles: {clash} are train molecules too; a test molecule must be "
            "out of sample (remove it from train_required_smiles, or set include_methyl_nitrite: false for CON=O)"
        )
    clusters = [
        MoleculeTask(
            "train", m, f"clu{m:03d}_CH3NO2_x{m}", ".".join([CLUSTER_SMILES] * m), "", f"(CH3NO2){m}", 4 * m, "cluster"
        )
        for m in options.cluster_sizes
    ]
    scans = plan_scans(candidates, options, train, test) if options.torsion.molecules else []
    return [
        *(
            MoleculeTask(pool, i, f"mol{i:04d}_{c.formula}", c.smiles, c.nci_id, c.formula, c.heavy_atoms)
            for pool, chosen in (("train", train), ("test", test))
            for i, c in enumerate(chosen)
        ),
        *clusters,
        *scans,
    ]


def _select_pool(candidates, options: GenerateOptions, pool: str, **kw) -> list:
    """select_molecules for ``pool`` ("train" or "test") with that pool's options (``n_<pool>_molecules``,
    ``<pool>_min/max_heavy_atoms``) and its own seed stream."""
    from ..molecules import select_molecules

    return select_molecules(
        candidates,
        getattr(options, f"n_{pool}_molecules"),
        getattr(options, f"{pool}_min_heavy_atoms"),
        getattr(options, f"{pool}_max_heavy_atoms"),
        seed=int(np.random.SeedSequence([options.seed, POOL_CODE[pool]]).generate_state(1)[0]),
        what=f"GenerateOptions.n_{pool}_molecules",
        **kw,
    )


def append_required(chosen: list, pool: str, candidates, options: GenerateOptions) -> list:
    """``chosen`` plus the ``<pool>_required_smiles`` not in it yet (checked: usable, affordable)."""
    from ..labels import MAX_HEAVY_ATOMS
    from ..molecules import candidate_from_smiles

    field = f"{pool}_required_smiles"
    smiles = getattr(options, field)
    if not smiles:
        return chosen
    levels = wanted_levels(options, pool)
    out, have = list(chosen), {c.smiles for c in chosen}
    for smi in smiles:
        cand = candidate_from_smiles(smi, "required")
        if cand is None:
            raise GenerateOptionsError(
                f"GenerateOptions.{field}: {smi!r} is not a usable molecule (expected a neutral, single-fragment "
                "molecule of H, C, N and O that RDKit parses)"
            )
        cand = next((c for c in candidates if c.smiles == cand.smiles), cand)
        for level in levels:
            limit = MAX_HEAVY_ATOMS.get(level)
            if limit is not None and cand.heavy_atoms > limit:
                raise GenerateOptionsError(
                    f"GenerateOptions.{field}: {smi!r} has {cand.heavy_atoms} heavy atoms, but {level!r} is only "
                    f"affordable for <= {limit}"
                )
        if cand.smiles not in have:
            have.add(cand.smiles)
            out.append(cand)
    return out


def plan_scans(candidates, options: GenerateOptions, train: list, test: list) -> list[MoleculeTask]:
    """The torsion pool's scans: ``torsion.molecules`` candidates with
    ``torsion.min_heavy_atoms..max_heavy_atoms`` heavy atoms and a rotatable bond
    (:func:`rotatable_dihedrals`), in neither the
    train nor the test pool and of the train molecules' elements only (every model knows them),
    drawn in a seeded order (more molecules extend the selection), then
    ``torsion.bonds_per_molecule`` of each one's rotatable bonds, drawn from the molecule's own
    stream. One task per scan, named ``tor<scan>_<formula>_<i>-<j>-<k>-<l>``."""
    from .torsion import elements, rotatable_dihedrals

    t = options.torsion
    exclude = {c.smiles for c in (*train, *test)}
    known = set().union(*(elements(c.smiles) for c in train))
    eligible = [
        c
        for c in candidates
        if t.min_heavy_atoms <= c.heavy_atoms <= t.max_heavy_atoms
        and c.smiles not in exclude
        and elements(c.smiles) <= known
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
