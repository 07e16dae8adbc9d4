"""Rigid copies of a molecule packed into a periodic cube at a given density: the placement behind
the MD boxes (:mod:`ekd.md.box`) and the training clusters (:mod:`ekd.data.generate.cluster`).
Data code uses it without depending on the MD package.

Molecules (by default ASE's G2 geometry of methyl nitrite, 7 atoms, 61.04 g/mol) sit at the sites
of a near-cubic grid (k x k x k, k x k x (k-1) or k x (k-1) x (k-1), the smallest with at least n
sites; when it has more, n sites are drawn at random) in a periodic cube whose side gives the
requested mass density. Each centre is jittered by up to +-8 % of the grid spacing and each
molecule gets a uniformly random rotation; rotations of molecules that have an atom closer than
``min_contact`` to an atom of another molecule are redrawn until none does. Everything is drawn
from one ``numpy.random.default_rng(seed)``: the same arguments give the same placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Avogadro's number, 1/mol (exact, SI 2019)
AVOGADRO = 6.02214076e23
#: smallest allowed distance between atoms of different molecules, Angstrom (a liquid's closest
#: intermolecular H...O contacts are ~2.3 A; 1.8 A leaves room for placement without overlaps)
MIN_CONTACT = 1.8


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniformly random rotation matrices [n, 3, 3] (QR of Gaussian matrices, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0] *= -1.0
    return q


def grid_shape(n_molecules: int) -> tuple[int, int, int]:
    """The smallest near-cubic grid with at least ``n_molecules`` sites (448 -> (8, 8, 7))."""
    k = max(1, math.ceil(round(n_molecules ** (1.0 / 3.0), 9)))
    candidates = [(k, k, k), (k, k, k - 1), (k, k - 1, k - 1)]
    return min((s for s in candidates if math.prod(s) >= n_molecules), key=math.prod)


@dataclass(frozen=True)
class Placement:
    """Molecules placed in a periodic cube: molecule m's atoms (unwrapped, Angstrom) are
    ``local @ rotations[m].T + centers[m]``; ``local`` is the monomer's geometry about its centre of
    mass, ``side`` the cube's edge (Angstrom)."""

    numbers: np.ndarray  # (n_atoms_per_molecule,) atomic numbers of the monomer
    local: np.ndarray  # (k, 3)
    centers: np.ndarray  # (n_molecules, 3)
    rotations: np.ndarray  # (n_molecules, 3, 3)
    side: float

    def positions(self) -> np.ndarray:
        """(n_molecules * k, 3) unwrapped positions, molecule by molecule."""
        return (np.einsum("mab,kb->mka", self.rotations, self.local) + self.centers[:, None, :]).reshape(-1, 3)


def place_molecules(
    n_molecules: int,
    density: float,
    seed: int = 0,
    cutoff: float | None = None,
    min_contact: float = MIN_CONTACT,
    monomer: tuple[np.ndarray, np.ndarray] | None = None,
    max_tries: int = 2000,
) -> Placement:
    """Place ``n_molecules`` copies of ``monomer`` (atomic numbers, positions in Angstrom; default:
    ASE's G2 CH3ONO) at ``density`` g/cm^3 as described in the module docstring.

    cutoff: a model's cutoff (Angstrom); the box side must be at least twice it (an atom must not
    see two images of one neighbour), checked here so that the error names the inputs.
    max_tries: rounds of redrawing the molecules in a clash before giving up.
    Raises ValueError naming the field for n_molecules <= 0, density <= 0, a box smaller than
    2 x cutoff, or a density too high to place the molecules.
    """
    from ase import Atoms
    from ase.build import molecule

    from ..ops import library as _ops

    if isinstance(n_molecules, bool) or not isinstance(n_molecules, int | np.integer) or n_molecules <= 0:
        raise ValueError(f"n_molecules: must be a positive integer, got {n_molecules!r}")
    if not isinstance(density, int | float) or not math.isfinite(density) or density <= 0:
        raise ValueError(f"density: must be a positive number of g/cm^3, got {density!r}")
    if monomer is None:
        g2 = molecule("CH3ONO")  # G2 geometry: C-O 1.44, O-N 1.39, N=O 1.21, C-H 1.09 Angstrom
        monomer = (g2.numbers, g2.positions)
    mol = Atoms(numbers=np.asarray(monomer[0]), positions=np.asarray(monomer[1], dtype=float))
    side = (n_molecules * mol.get_masses().sum() / AVOGADRO / density * 1e24) ** (1.0 / 3.0)
    if cutoff is not None and side < 2.0 * cutoff:
        need = math.ceil(n_molecules * (2.0 * cutoff / side) ** 3)
        raise ValueError(
            f"n_molecules: {n_molecules} molecules at {density} g/cm^3 make a {side:.2f} A box, smaller than twice "
            f"the model cutoff ({cutoff} A); use at least {need} molecules"
        )
    rng = np.random.default_rng(seed)
    local = mol.positions - mol.get_center_of_mass()
    shape = grid_shape(int(n_molecules))
    spacing = side / np.asarray(shape, dtype=float)
    sites = np.stack(np.meshgrid(*[np.arange(g) for g in shape], indexing="ij"), -1).reshape(-1, 3)
    if len(sites) > n_molecules:
        sites = sites[np.sort(rng.choice(len(sites), size=n_molecules, replace=False))]
    centers = (sites + 0.5 + rng.uniform(-0.08, 0.08, size=sites.shape)) * spacing
    rotations = _random_rotations(n_molecules, rng)
    owner = np.repeat(np.arange(n_molecules), len(mol))
    cell, pbc = np.eye(3) * side, np.array([True, True, True])
    jitter = centers - (sites + 0.5) * spacing
    for _ in range(max_tries):
        placed = Placement(mol.numbers.copy(), local, centers, rotations, float(side))
        i, j, _ = _ops._C.neighbor_pairs(placed.positions(), cell, pbc, float(min_contact))
        clash = np.unique(owner[i][owner[i] != owner[j]])
        if clash.size == 0:
            return placed
        # redraw the orientation and the jitter of every molecule in a clash
        rotations[clash] = _random_rotations(clash.size, rng)
        jitter[clash] = rng.uniform(-0.08, 0.08, size=(clash.size, 3)) * spacing
        centers = (sites + 0.5) * spacing + jitter
    raise ValueError(
        f"density: could not place {n_molecules} molecules at {density} g/cm^3 without intermolecular "
        f"contacts closer than {min_contact} A; lower the density"
    )
