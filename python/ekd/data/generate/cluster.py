"""Methyl nitrite clusters: intermolecular contacts for the training data.

Why: the default training pool holds isolated molecules only, so a model has never seen another
molecule within its cutoff. In the condensed-phase MD stability test (448 CH3ONO in a box) such a
model extrapolates the intermolecular energy and, measured here with the embedded default, every
model fell into an artificial energy well within 20-70 fs (potential energy -0.25 eV/atom, 2000 K,
then atoms of neighbouring molecules closer than 0.5 A). The paper's ANI-1x data has many larger
molecules whose distant atoms fill the same region of descriptor space; our small stand-in pool
does not, so the generator adds clusters of the MD molecule itself, cut from condensed boxes.

One group per cluster size ``m`` (``GenerateOptions.cluster_sizes``): ``cluster_samples``
configurations, each made as follows (one random stream per size, seeded by the generator's
seed):

1. CH3ONO is relaxed with GFN2-xTB (ETKDG start) and its normal modes computed, once per group.
2. ``max(27, 2m)`` rigid copies of the minimum are placed in a periodic cube by
   :func:`ekd.data.packing.place_molecules` at a density drawn from ``cluster_density`` (a range, g/cm^3:
   below and above the liquid's, so compressed contacts are sampled too), with the smallest
   intermolecular contact drawn from ``cluster_min_contact`` (Angstrom).
3. A random molecule and its ``m - 1`` nearest neighbours (minimum image of the centres of mass)
   are cut out as a non-periodic cluster.
4. Every molecule is distorted independently by normal-mode sampling at ``temperature``
   (:func:`ekd.data.sampling.normal_mode_displacement`, rotated into the molecule's orientation).
5. The cluster is kept if no two atoms are closer than 0.5 A, the bond graph (covalent radii) is
   m separate copies of the monomer's (no intermolecular bond, none broken), and its GFN2-xTB
   energy is at most ``m x energy_cap`` above m times the monomer minimum.

Labels: GFN2-xTB energy and forces; other levels of the pool as for molecules (CCSD(T) is refused:
clusters exceed its 4-heavy-atom limit).
"""

from __future__ import annotations

import time

import numpy as np

from ...units import HARTREE_TO_KCALMOL
from ..packing import place_molecules
from .levels import xtb_record, xtb_sample
from .options import POOL_CODE
from .record import MoleculeRecord, finish

#: the cluster molecule (the MD-stability test's), SMILES
CLUSTER_SMILES = "CON=O"


def cut_cluster(placed, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Molecule indices (nearest first) and their (size, 3) unwrapped centres of a ``size``
    cluster around a random molecule of ``placed`` (an :class:`ekd.data.packing.Placement`)."""
    n = len(placed.centers)
    if not 1 <= size <= n:
        raise ValueError(f"cluster size: must be between 1 and the {n} placed molecules, got {size}")
    c = int(rng.integers(n))
    d = placed.centers - placed.centers[c]
    d -= placed.side * np.round(d / placed.side)  # minimum image
    order = np.argsort(np.linalg.norm(d, axis=1), kind="stable")[:size]
    return order, placed.centers[c] + d[order]


def compute_cluster(task, options) -> MoleculeRecord:
    """Configurations and labels of the ``task.heavy_atoms // 4``-molecule CH3ONO cluster group
    (see the module docstring); a record like :func:`.molecule.compute_molecule`'s."""
    from ..labels import XTBCalculator
    from ..molecules import connectivity, embed_conformers
    from ..sampling import hessian, normal_mode_displacement, normal_modes, relax

    t0 = time.perf_counter()
    size = int(task.index)
    stats = {"placements_failed": 0, "samples_rejected": 0, "label_failures": 0, "skipped": "", "relax_unconverged": 0}
    seq = np.random.SeedSequence([options.seed, POOL_CODE["cluster"], size])
    rng = np.random.default_rng(seq)
    rdkit_seed = int(seq.spawn(1)[0].generate_state(1)[0] & 0x7FFFFFFF)
    levels = options.levels
    cap = options.energy_cap / HARTREE_TO_KCALMOL  # Hartree per molecule

    confs = embed_conformers(CLUSTER_SMILES, 10, rdkit_seed, options.conformer_rmsd)
    numbers1 = confs.numbers
    xtb1 = XTBCalculator(numbers1, options.xtb_accuracy)
    pos1, e1, f1, converged = relax(
        xtb1, numbers1, confs.coordinates[0], options.relax_fmax / HARTREE_TO_KCALMOL, options.relax_max_steps
    )
    stats["relax_unconverged"] = int(not converged)
    hess = hessian(xtb1, pos1, options.hessian_step, options.hessian_central, f1)
    directions, force_constants = normal_modes(numbers1, pos1, hess)
    numbers = np.tile(numbers1, size)
    bonds1 = connectivity(numbers1, pos1)
    bonds = np.kron(np.eye(size, dtype=bool), bonds1)
    xtb = XTBCalculator(numbers, options.xtb_accuracy)
    lo_rho, hi_rho = options.cluster_density
    lo_c, hi_c = options.cluster_min_contact

    coords, energies, forces_list = [], [], []
    attempts = 0
    while len(coords) < options.cluster_samples and attempts < options.cluster_samples * options.sample_attempts:
        if stats["placements_failed"] > 50 * options.cluster_samples:
            break
        try:
            placed = place_molecules(
                max(27, 2 * size),
                float(rng.uniform(lo_rho, hi_rho)),
                seed=int(rng.integers(2**31)),
                min_contact=float(rng.uniform(lo_c, hi_c)),
                monomer=(numbers1, pos1),
                max_tries=100,
            )
        except ValueError:  # a dense box with a large contact distance cannot be packed: redraw
            stats["placements_failed"] += 1
            continue
        attempts += 1
        chosen, centers = cut_cluster(placed, size, rng)
        local = np.stack(
            [
                placed.local + normal_mode_displacement(rng, directions, force_constants, options.temperature)
                for _ in range(size)
            ]
        )
        pos = (np.einsum("mab,mkb->mka", placed.rotations[chosen], local) + centers[:, None, :]).reshape(-1, 3)
        pos -= pos.mean(axis=0)
        labelled = xtb_sample(xtb, numbers, pos, bonds, size * e1, size * cap, stats)
        if labelled is None:
            continue
        coords.append(pos)
        energies.append(labelled[0])
        forces_list.append(labelled[1])
    if not coords:
        stats["skipped"] = "every cluster sample was rejected (contacts, bonds or energy cap)"
        return finish(task, numbers, np.zeros((0, len(numbers), 3)), {}, 0, stats, t0, levels)
    stats["xtb_calls"] = xtb.n_calls + xtb1.n_calls
    return xtb_record(task, numbers, coords, energies, forces_list, 0, levels, stats, t0, f"cluster {task.name}")
