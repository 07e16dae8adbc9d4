"""Condensed-phase CH3ONO boxes for MD: ekd's own placement (no packmol), done by
:func:`ekd.data.packing.place_molecules` (see there for how molecules are placed).

448 molecules at 1.0 g/cm^3 give a 35.7 Angstrom cube on an 8 x 8 x 7 grid (the paper's system
size and the box of ``bench/neighbors.py``).
"""

from __future__ import annotations

import numpy as np

from ..data.packing import AVOGADRO, MIN_CONTACT, Placement, grid_shape, place_molecules

__all__ = [
    "AVOGADRO",
    "MIN_CONTACT",
    "Placement",
    "box_side",
    "density_of",
    "grid_shape",
    "methyl_nitrite_box",
    "place_molecules",
]


def box_side(n_molecules: int, density: float) -> float:
    """Side (Angstrom) of the cube holding ``n_molecules`` CH3ONO at ``density`` g/cm^3."""
    from ase.build import molecule

    mass_g = n_molecules * molecule("CH3ONO").get_masses().sum() / AVOGADRO
    return (mass_g / density * 1e24) ** (1.0 / 3.0)


def methyl_nitrite_box(
    n_molecules: int = 448,
    density: float = 1.0,
    seed: int = 0,
    cutoff: float | None = None,
    min_contact: float = MIN_CONTACT,
):
    """A periodic cube of ``n_molecules`` CH3ONO at ``density`` g/cm^3 (see the module docstring and
    :func:`place_molecules`, which raises ValueError naming the field for bad input).
    Returns an ``ase.Atoms`` (positions in Angstrom, pbc on, atoms grouped molecule by molecule)."""
    from ase import Atoms

    placed = place_molecules(n_molecules, density, seed, cutoff, min_contact)
    numbers = np.tile(placed.numbers, int(n_molecules))
    atoms = Atoms(numbers=numbers, positions=placed.positions(), cell=np.eye(3) * placed.side, pbc=True)
    atoms.wrap()
    return atoms


def density_of(atoms) -> float:
    """Mass density of a periodic ``atoms`` in g/cm^3."""
    return float(atoms.get_masses().sum() / AVOGADRO / (atoms.get_volume() * 1e-24))
