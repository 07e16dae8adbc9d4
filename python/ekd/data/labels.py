"""Quantum-chemistry labels for reference data: GFN2-xTB (tblite) and, for tiny molecules, pyscf.

Every function takes atomic numbers (n_atoms,) and positions (n_atoms, 3) in Angstrom and returns
energies in Hartree and forces in Hartree/Angstrom (the ANI file units). The libraries work in
Bohr; the conversion is done once, here.

Level names are the file-key prefixes, honest about the method and basis:

* ``gfn2_xtb``: GFN2-xTB (tblite), energy and forces.
* ``wb97x_631gd``: wB97X/6-31G* (pyscf; Cartesian d functions, like Gaussian's 6-31G(d) that the
  ANI-1x data used), energy and forces.
* ``ccsd(t)_ccpvdz``: frozen-core CCSD(T)/cc-pVDZ on an RHF reference (pyscf), energy only.
* ``ccsd(t)_ccpvdz_mp2cbs``: the same plus an (HF+MP2) basis-set correction, energy only:
  ``E = E[CCSD(T)/DZ] + (E[HF/CBS] + Ec[MP2/CBS]) - (E[HF/DZ] + Ec[MP2/DZ])`` with the CBS limits
  extrapolated from cc-pVDZ and cc-pVTZ (HF: Karton-Martin, ``E(X) = E + A (X+1) exp(-9 sqrt(X))``;
  frozen-core MP2 correlation: Helgaker, ``Ec(X) = Ec + B X^-3``). This is the idea of the ANI-1ccx
  "CCSD(T)*/CBS" energies (a higher-level correlation correction on top of an MP2 basis-set limit)
  at the smallest bases; a [DT] extrapolation is rough (errors of ~1 kcal/mol in absolute
  energies), but it removes most of the cc-pVDZ basis-set error from relative energies.
"""

from __future__ import annotations

import numpy as np

from ..units import BOHR_TO_ANGSTROM

XTB = "gfn2_xtb"
WB97X = "wb97x_631gd"
CCSDT = "ccsd(t)_ccpvdz"
CCSDT_MP2CBS = "ccsd(t)_ccpvdz_mp2cbs"
#: level -> does it give forces
LEVELS = {XTB: True, WB97X: True, CCSDT: False, CCSDT_MP2CBS: False}
#: largest molecule (heavy atoms) a level may be asked for; CCSD(T) scales as N^7 (~1 min at 5
#: heavy atoms, ~10 min at 6 on one core here)
MAX_HEAVY_ATOMS = {CCSDT: 4, CCSDT_MP2CBS: 4}
#: levels that are another level plus a correction: level -> the level it corrects. A generator
#: that already holds the base level's energy computes only the correction.
CORRECTS = {CCSDT_MP2CBS: CCSDT}


class LabelError(RuntimeError):
    """A quantum-chemistry calculation failed (no SCF convergence, library error)."""


class XTBCalculator:
    """GFN2-xTB energy and forces of one molecule (fixed atoms, changing positions) with tblite.

    Successive calls restart the SCF from the previous wavefunction (2-3x faster for nearby
    geometries). Results then depend on the call history only below the SCF tolerance; a fixed
    sequence of calls (as in one molecule's generation) is exactly reproducible.

    accuracy: tblite's accuracy knob (1.0 is its default; smaller is tighter, ~10% slower). At 0.1
    a restarted SCF and one from scratch agree to 1e-6 Hartree/Angstrom in the forces (at 1.0 to
    only ~4e-6), so a label does not depend on which geometry was computed before it.
    """

    def __init__(self, numbers: np.ndarray, accuracy: float = 0.1):
        from tblite.interface import Calculator

        self.numbers = np.asarray(numbers, dtype=np.int64)
        self._make = lambda pos: Calculator("GFN2-xTB", self.numbers, pos / BOHR_TO_ANGSTROM)
        self._accuracy = float(accuracy)
        self._calc = None
        self._res = None
        self.n_calls = 0

    def __call__(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """positions (n_atoms, 3) Angstrom -> (energy Hartree, forces (n_atoms, 3) Hartree/Angstrom)."""
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(self.numbers), 3):
            raise ValueError(f"positions must be ({len(self.numbers)}, 3), got {positions.shape}")
        self.n_calls += 1
        try:
            if self._calc is None:
                self._calc = self._make(positions)
                self._calc.set("verbosity", 0)
                self._calc.set("accuracy", self._accuracy)
            else:
                self._calc.update(positions=positions / BOHR_TO_ANGSTROM)
            self._res = self._calc.singlepoint(self._res)
            energy = float(self._res.get("energy"))
            gradient = np.array(self._res.get("gradient"), dtype=np.float64)  # Hartree/Bohr
        except Exception as e:  # tblite raises its own error types (SCF not converged, ...)
            # a failed SCF leaves no trustworthy restart; start the next call from scratch
            self._calc, self._res = None, None
            raise LabelError(f"GFN2-xTB failed: {e}") from e
        if not (np.isfinite(energy) and np.isfinite(gradient).all()):
            self._calc, self._res = None, None
            raise LabelError("GFN2-xTB returned a non-finite energy or gradient")
        return energy, -gradient / BOHR_TO_ANGSTROM


def xtb_energy_forces(numbers: np.ndarray, positions: np.ndarray, accuracy: float = 0.1) -> tuple[float, np.ndarray]:
    """One GFN2-xTB single point from scratch (no restart): (Hartree, (n_atoms, 3) Hartree/Angstrom)."""
    return XTBCalculator(numbers, accuracy)(positions)


# ------------------------------------------------------------------------------------------
# pyscf


def _pyscf_molecule(numbers, positions, basis: str, cart: bool):
    from pyscf import gto

    atoms = [(int(z), tuple(float(v) for v in xyz)) for z, xyz in zip(numbers, positions, strict=True)]
    # closed-shell neutral molecules only (the generator filters radicals and ions)
    return gto.M(atom=atoms, unit="Angstrom", basis=basis, cart=cart, charge=0, spin=0, verbose=0)


def wb97x_631gd(numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
    """wB97X/6-31G* energy (Hartree) and forces ((n_atoms, 3) Hartree/Angstrom), restricted KS."""
    from pyscf import dft

    mol = _pyscf_molecule(numbers, positions, "6-31g*", cart=True)
    mf = dft.RKS(mol)
    mf.xc = "wb97x"
    mf.conv_tol = 1e-10
    energy = mf.kernel()
    if not mf.converged:
        raise LabelError("wB97X/6-31G*: SCF did not converge")
    grad = mf.nuc_grad_method()
    # without the grid-response term the forces differ from finite differences of the energy by
    # ~5e-4 Hartree/Angstrom (the integration grid moves with the atoms)
    grad.grid_response = True
    gradient = grad.kernel()  # Hartree/Bohr
    return float(energy), -np.asarray(gradient, dtype=np.float64) / BOHR_TO_ANGSTROM


def ccsd_t_ccpvdz(numbers: np.ndarray, positions: np.ndarray) -> float:
    """Frozen-core CCSD(T)/cc-pVDZ total energy (Hartree) on an RHF reference."""
    from pyscf import cc, scf
    from pyscf.data.elements import chemcore

    mol = _pyscf_molecule(numbers, positions, "cc-pvdz", cart=False)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    if not mf.converged:
        raise LabelError("CCSD(T)/cc-pVDZ: RHF did not converge")
    ccsd = cc.CCSD(mf, frozen=chemcore(mol))
    ccsd.conv_tol = 1e-8
    ccsd.kernel()
    if not ccsd.converged:
        raise LabelError("CCSD(T)/cc-pVDZ: CCSD amplitudes did not converge")
    return float(ccsd.e_tot + ccsd.ccsd_t())


def _hf_mp2(numbers: np.ndarray, positions: np.ndarray, basis: str) -> tuple[float, float]:
    """(RHF total energy, frozen-core MP2 correlation energy) in Hartree."""
    from pyscf import mp, scf
    from pyscf.data.elements import chemcore

    mol = _pyscf_molecule(numbers, positions, basis, cart=False)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-10
    e_hf = mf.kernel()
    if not mf.converged:
        raise LabelError(f"MP2/{basis}: RHF did not converge")
    e_corr = mp.MP2(mf, frozen=chemcore(mol)).kernel()[0]
    return float(e_hf), float(e_corr)


def cbs_hf(e_dz: float, e_tz: float) -> float:
    """HF complete-basis limit from cc-pVDZ and cc-pVTZ energies, ``E(X) = E + A (X+1) exp(-9 sqrt X)``
    (Karton and Martin, Theor. Chem. Acc. 115, 330 (2006))."""
    w2, w3 = 3.0 * np.exp(-9.0 * np.sqrt(2.0)), 4.0 * np.exp(-9.0 * np.sqrt(3.0))
    a = (e_dz - e_tz) / (w2 - w3)
    return float(e_tz - a * w3)


def cbs_correlation(e_dz: float, e_tz: float) -> float:
    """Correlation-energy complete-basis limit from cc-pVDZ and cc-pVTZ, ``Ec(X) = Ec + B X^-3``
    (Helgaker et al., J. Chem. Phys. 106, 9639 (1997))."""
    return float((27.0 * e_tz - 8.0 * e_dz) / 19.0)


def mp2_cbs_correction(numbers: np.ndarray, positions: np.ndarray) -> float:
    """(HF+MP2)/CBS[DZ,TZ] minus (HF+MP2)/cc-pVDZ, Hartree: what a cc-pVDZ energy misses of the
    basis-set limit at the MP2 level (negative: larger bases lower the energy)."""
    hf_dz, mp2_dz = _hf_mp2(numbers, positions, "cc-pvdz")
    hf_tz, mp2_tz = _hf_mp2(numbers, positions, "cc-pvtz")
    return cbs_hf(hf_dz, hf_tz) + cbs_correlation(mp2_dz, mp2_tz) - (hf_dz + mp2_dz)


def ccsd_t_ccpvdz_mp2cbs(numbers: np.ndarray, positions: np.ndarray, ccsd_t: float | None = None) -> float:
    """CCSD(T)/cc-pVDZ plus :func:`mp2_cbs_correction` (Hartree); ``ccsd_t``: the CCSD(T)/cc-pVDZ
    energy when already known (it is the expensive part)."""
    if ccsd_t is None:
        ccsd_t = ccsd_t_ccpvdz(numbers, positions)
    return float(ccsd_t) + mp2_cbs_correction(numbers, positions)


def label(
    level: str, numbers: np.ndarray, positions: np.ndarray, known: dict[str, float] | None = None
) -> tuple[float, np.ndarray | None]:
    """(energy Hartree, forces Hartree/Angstrom or None) at a named level. ``known``: energies
    of this geometry at other levels, reused where a level corrects another (:data:`CORRECTS`)."""
    known = known or {}
    if level == WB97X:
        return wb97x_631gd(numbers, positions)
    if level == CCSDT:
        return ccsd_t_ccpvdz(numbers, positions), None
    if level == CCSDT_MP2CBS:
        return ccsd_t_ccpvdz_mp2cbs(numbers, positions, known.get(CCSDT)), None
    if level == XTB:
        return xtb_energy_forces(numbers, positions)
    raise ValueError(f"unknown level {level!r}; expected one of {sorted(LEVELS)}")
