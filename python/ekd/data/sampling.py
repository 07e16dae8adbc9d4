"""Geometries around minima: relaxation, finite-difference Hessians and normal-mode sampling.

Units: positions Angstrom, energies Hartree, forces Hartree/Angstrom, Hessians Hartree/Angstrom^2,
temperatures Kelvin. ``energy_forces`` is any callable positions -> (energy, forces), e.g.
:class:`ekd.data.labels.XTBCalculator`.

Normal-mode sampling follows the scheme of the ANI-1 data set (Smith, Isayev, Roitberg, Sci.
Data 4, 170193 (2017)): each vibrational mode i (unit Cartesian direction q_i, force constant K_i)
gets a displacement R_i = +-sqrt(3 c_i N_atoms k_B T / K_i), with random signs and random
c_i >= 0, sum c_i <= 1. The harmonic energy of a sample is then 1.5 N_atoms k_B T sum c_i: up to
the mean classical potential energy of the molecule at T. Here the c_i are a uniform point of the
simplex (a flat Dirichlet draw) times a uniform scale in [0, 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_masses
from ase.optimize import BFGS
from ase.units import Hartree

EnergyForces = Callable[[np.ndarray], tuple[float, np.ndarray]]

#: Boltzmann constant, Hartree/K (CODATA 2018)
KB_HARTREE = 3.166811563e-6
#: smallest force constant used to size a displacement (Hartree/Angstrom^2, ~6 kcal/mol/A^2):
#: soft torsions and the slightly negative curvatures of an imperfect minimum would otherwise
#: get unbounded amplitudes
FORCE_CONSTANT_FLOOR = 0.01


class _ASEAdapter(Calculator):
    """An ASE calculator (eV, eV/Angstrom) around a Hartree ``energy_forces`` callable."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, energy_forces: EnergyForces):
        super().__init__()
        self._ef = energy_forces
        self.last: tuple[float, np.ndarray] | None = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy, forces = self._ef(self.atoms.positions)
        self.last = (energy, forces)
        self.results = {"energy": energy * Hartree, "forces": forces * Hartree}


def relax(
    energy_forces: EnergyForces,
    numbers: np.ndarray,
    positions: np.ndarray,
    fmax: float,
    max_steps: int,
    screen: Callable[[np.ndarray], bool] | None = None,
    screen_fmax: float | None = None,
) -> tuple[np.ndarray, float, np.ndarray, bool] | None:
    """BFGS (ASE) down to max |force| <= ``fmax`` Hartree/Angstrom or ``max_steps`` steps.

    screen: called once with the positions when max |force| first drops below ``screen_fmax``
        (default 4 x fmax); returning False abandons the relaxation (returns None). Used to drop
        a start that is falling into a minimum already found without paying for the tight tail.
    Returns (positions (n, 3), energy, forces (n, 3), converged). One atom is returned as is.
    """
    atoms = Atoms(numbers=numbers, positions=np.asarray(positions, dtype=np.float64))
    calc = _ASEAdapter(energy_forces)
    atoms.calc = calc
    if len(atoms) == 1:
        energy, forces = energy_forces(atoms.positions)
        return atoms.positions.copy(), energy, forces, True
    opt = BFGS(atoms, logfile=None, maxstep=0.2)
    steps = max_steps
    if screen is not None:
        coarse = 4.0 * fmax if screen_fmax is None else screen_fmax
        opt.run(fmax=coarse * Hartree, steps=max_steps)
        if not screen(atoms.positions.copy()):
            return None
        steps = max(max_steps - opt.nsteps, 0)
    converged = bool(opt.run(fmax=fmax * Hartree, steps=steps))
    atoms.get_potential_energy()  # make sure the final geometry was evaluated
    energy, forces = calc.last
    return atoms.positions.copy(), float(energy), forces.copy(), converged


def hessian(
    energy_forces: EnergyForces,
    positions: np.ndarray,
    step: float,
    central: bool = False,
    forces: np.ndarray | None = None,
) -> np.ndarray:
    """(3n, 3n) Hessian by finite differences of forces, ``step`` Angstrom, symmetrized.

    central: 6n force calls, error O(step^2). Otherwise forward differences from ``forces`` (the
    forces at ``positions``, computed if not given): 3n calls, error O(step) -- about 1.5% of a
    stretch force constant at 0.005 Angstrom, immaterial for choosing sampling directions, and
    half the cost of the most expensive step of the generator.
    """
    x0 = np.asarray(positions, dtype=np.float64)
    n3 = x0.size
    h = np.empty((n3, n3))
    if not central and forces is None:
        forces = energy_forces(x0)[1]

    def displaced(j: int, delta: float) -> np.ndarray:
        x = x0.reshape(-1).copy()
        x[j] += delta
        return energy_forces(x.reshape(x0.shape))[1].reshape(-1)

    for j in range(n3):
        if central:
            h[:, j] = -(displaced(j, step) - displaced(j, -step)) / (2.0 * step)
        else:
            h[:, j] = -(displaced(j, step) - forces.reshape(-1)) / step
    return 0.5 * (h + h.T)


def _rigid_body_basis(masses: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(3n, r) orthonormal basis of translations and rotations in mass-weighted coordinates;
    r = 3 (one atom), 5 (linear) or 6."""
    sqrt_m = np.sqrt(masses)
    centre = (masses[:, None] * positions).sum(0) / masses.sum()
    rel = positions - centre
    vectors = []
    for k in range(3):
        t = np.zeros_like(positions)
        t[:, k] = 1.0
        vectors.append((sqrt_m[:, None] * t).reshape(-1))
    for k in range(3):
        axis = np.zeros(3)
        axis[k] = 1.0
        vectors.append((sqrt_m[:, None] * np.cross(axis, rel)).reshape(-1))
    u, s, _ = np.linalg.svd(np.stack(vectors, axis=1), full_matrices=False)
    rank = int((s > 1e-6 * s.max()).sum())
    return u[:, :rank]


def normal_modes(numbers: np.ndarray, positions: np.ndarray, hess: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vibrational modes of a (near-)minimum, translations and rotations projected out.

    Returns (directions (n_modes, n, 3): unit-norm Cartesian displacement of each mode,
    force_constants (n_modes,): q^T H q along that direction, Hartree/Angstrom^2; may be <= 0 at an
    imperfect minimum). n_modes = 3n - 6 (3n - 5 if linear, 0 for one atom).
    """
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    masses = atomic_masses[np.asarray(numbers)]
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
    hm = hess * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    rigid = _rigid_body_basis(masses, positions)
    # orthonormal complement of the rigid-body space: the vibrational subspace
    full, _, _ = np.linalg.svd(rigid, full_matrices=True)
    vib = full[:, rigid.shape[1] :]
    if vib.shape[1] == 0:
        return np.zeros((0, n, 3)), np.zeros(0)
    _, u = np.linalg.eigh(vib.T @ hm @ vib)
    modes_mw = vib @ u  # (3n, n_modes), mass-weighted
    cart = modes_mw * inv_sqrt_m[:, None]
    cart /= np.linalg.norm(cart, axis=0, keepdims=True)
    k = np.einsum("im,ij,jm->m", cart, hess, cart)
    return cart.T.reshape(-1, n, 3), k


def normal_mode_displacement(
    rng: np.random.Generator,
    directions: np.ndarray,
    force_constants: np.ndarray,
    temperature: float,
) -> np.ndarray:
    """One random (n, 3) displacement, Angstrom (see the module docstring for the scheme)."""
    n_modes, n_atoms = directions.shape[:2]
    if n_modes == 0:
        return np.zeros((n_atoms, 3))
    c = rng.dirichlet(np.ones(n_modes)) * rng.random()
    sign = rng.choice(np.array([-1.0, 1.0]), size=n_modes)
    k = np.maximum(force_constants, FORCE_CONSTANT_FLOOR)
    amplitude = sign * np.sqrt(3.0 * c * n_atoms * KB_HARTREE * temperature / k)
    return np.einsum("m,mij->ij", amplitude, directions)
