"""One molecule's data (runs in a worker process): distinct GFN2-xTB minima from ETKDG/MMFF
starting points, normal-mode samples around them, and the labels of the pool's levels. See the
package docstring for the scheme."""

from __future__ import annotations

import time

import numpy as np

from ...units import HARTREE_TO_KCALMOL
from .cluster import compute_cluster
from .levels import xtb_record, xtb_sample
from .options import POOL_CODE, GenerateOptions
from .record import MoleculeRecord, finish
from .selection import MoleculeTask


def compute_molecule(task: MoleculeTask, options: GenerateOptions) -> MoleculeRecord:
    """Geometries and labels of one molecule (see the module docstring). Pure function of
    (task, options); clusters are delegated to :func:`.cluster.compute_cluster` (torsion scans:
    :func:`.scan.compute_torsion`)."""
    from ..sampling import hessian, normal_mode_displacement, normal_modes

    if task.kind == "cluster":
        return compute_cluster(task, options)
    if task.kind == "torsion":
        raise ValueError(f"{task.name}: a torsion scan is computed by ekd.data.generate.scan.compute_torsion")
    t0 = time.perf_counter()
    stats = new_stats()
    seq = np.random.SeedSequence([options.seed, POOL_CODE[task.pool], task.index])
    rng = np.random.default_rng(seq)
    rdkit_seed = int(seq.spawn(1)[0].generate_state(1)[0] & 0x7FFFFFFF)
    train = task.pool == "train"
    n_want = options.train_conformers if train else options.test_conformers
    levels = options.levels if train else options.test_levels
    cap = options.energy_cap / HARTREE_TO_KCALMOL  # Hartree

    numbers, bonds, xtb, minima = find_minima(task.smiles, options, n_want, rdkit_seed, stats)
    if not minima:  # stats["skipped"] says why
        shape = (0, 0, 3) if numbers is None else (0, len(numbers), 3)
        return finish(task, numbers, np.zeros(shape), {}, 0, stats, t0, levels)
    e_min = minima[0][0]

    coords: list[np.ndarray] = []
    energies: list[float] = []
    forces_list: list[np.ndarray] = []
    if not train or options.train_include_minima:
        for energy, pos, forces in minima:
            coords.append(pos)
            energies.append(energy)
            forces_list.append(forces)
    n_relaxed = len(coords)

    centres = minima if train else minima[:1]
    n_samples = options.samples_per_conformer if train else options.test_distorted
    for _, centre, centre_forces in centres:
        if n_samples == 0:
            break
        hess = hessian(xtb, centre, options.hessian_step, options.hessian_central, centre_forces)
        directions, force_constants = normal_modes(numbers, centre, hess)
        kept = 0
        for _ in range(n_samples * options.sample_attempts):
            if kept == n_samples:
                break
            pos = centre + normal_mode_displacement(rng, directions, force_constants, options.temperature)
            labelled = xtb_sample(xtb, numbers, pos, bonds, e_min, cap, stats)
            if labelled is None:
                continue
            coords.append(pos)
            energies.append(labelled[0])
            forces_list.append(labelled[1])
            kept += 1

    stats["xtb_calls"] = xtb.n_calls
    return xtb_record(
        task, numbers, coords, energies, forces_list, n_relaxed, levels, stats, t0, f"{task.pool} {task.name}"
    )


def new_stats() -> dict:
    """The counters of one group's computation (stored with its part)."""
    return {
        "relax_unconverged": 0,
        "relax_failed": 0,
        "relax_duplicates": 0,
        "bonds_changed": 0,
        "samples_rejected": 0,
        "label_failures": 0,
        "skipped": "",
    }


def find_minima(smiles: str, options: GenerateOptions, n_want: int, rdkit_seed: int, stats: dict):
    """Up to ``n_want`` distinct GFN2-xTB minima of ``smiles`` within ``energy_cap`` of the lowest,
    lowest first, from force-field minima first, then raw embeddings (counted in ``stats``).

    Returns (numbers (n,), bonds (n, n) bool, the XTBCalculator used, [(energy Hartree, positions
    (n, 3) Angstrom, forces Hartree/Angstrom)]); the list is empty when nothing was kept (numbers
    None: the molecule could not be embedded), and ``stats["skipped"]`` then says why."""
    from ..labels import LabelError, XTBCalculator
    from ..molecules import connectivity, embed_conformers, heavy_rmsd_coords
    from ..sampling import relax

    cap = options.energy_cap / HARTREE_TO_KCALMOL  # Hartree
    try:
        confs = embed_conformers(
            smiles, max(10, options.embed_per_conformer * n_want), rdkit_seed, options.conformer_rmsd
        )
    except ValueError as e:
        stats["skipped"] = str(e)
        return None, None, None, []
    numbers = confs.numbers
    bonds = connectivity(numbers, confs.coordinates[0])
    xtb = XTBCalculator(numbers, options.xtb_accuracy)

    starts = [*confs.coordinates, *confs.unrelaxed][: n_want + options.extra_relaxations]
    minima: list[tuple[float, np.ndarray, np.ndarray]] = []
    for start in starts:
        if len(minima) == n_want:
            break

        def is_new(pos: np.ndarray) -> bool:
            return all(heavy_rmsd_coords(confs.mol, pos, other) >= options.conformer_rmsd for _, other, _ in minima)

        try:
            relaxed = relax(
                xtb,
                numbers,
                start,
                options.relax_fmax / HARTREE_TO_KCALMOL,
                options.relax_max_steps,
                screen=is_new if minima else None,
            )
        except LabelError:
            stats["relax_failed"] += 1
            continue
        if relaxed is None:  # heading for a minimum already found
            stats["relax_duplicates"] += 1
            continue
        pos, energy, forces, converged = relaxed
        stats["relax_unconverged"] += int(not converged)
        if not np.array_equal(connectivity(numbers, pos), bonds):
            stats["bonds_changed"] += 1
            continue
        if not is_new(pos):
            stats["relax_duplicates"] += 1
            continue
        minima.append((energy, pos, forces))
    minima.sort(key=lambda m: m[0])
    if minima:
        e_min = minima[0][0]
        minima = [m for m in minima if m[0] - e_min <= cap]
    if not minima:
        stats["skipped"] = "no GFN2-xTB minimum kept (relaxation failed or changed the bonds)"
    return numbers, bonds, xtb, minima
