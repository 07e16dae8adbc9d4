"""One torsion scan of the torsion pool (runs in a worker): the molecule's lowest GFN2-xTB
minimum, then its points (see :mod:`.torsion` for the scheme) with GFN2-xTB energies and forces."""

from __future__ import annotations

import time

import numpy as np

from ...units import HARTREE_TO_KCALMOL
from .levels import xtb_record, xtb_sample
from .molecule import find_minima, new_stats
from .options import POOL_CODE, TORSION_POOL, GenerateOptions, wanted_levels
from .record import MoleculeRecord, finish
from .selection import MoleculeTask
from .torsion import dihedral_deg, graph, moving_side, set_dihedral


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
    side = moving_side(graph(task.smiles)[1], dihedral[1], dihedral[2])
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
