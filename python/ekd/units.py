"""Units. ekd works internally in kcal/mol and Angstrom; these factors convert to it.

CODATA 2018 values (as used by ASE 3.23+): 1 Hartree = 627.509474 kcal/mol = 27.211386 eV,
1 Bohr = 0.529177210903 Angstrom, 1 eV = 23.060548 kcal/mol.
"""

import json
from pathlib import Path

HARTREE_TO_KCALMOL = 627.5094740631
# written once for Python and the LAMMPS plugin (its `units metal` conversion): ekd/deploy/model_format.json
_FORMAT_FILE = Path(__file__).parent / "deploy" / "model_format.json"
EV_TO_KCALMOL = float(json.loads(_FORMAT_FILE.read_text(encoding="utf-8"))["ev_to_kcalmol"])
BOHR_TO_ANGSTROM = 0.529177210903

#: factor that converts an energy in the named unit to kcal/mol
ENERGY_TO_KCALMOL = {
    "hartree": HARTREE_TO_KCALMOL,
    "ev": EV_TO_KCALMOL,
    "kcal/mol": 1.0,
}
#: factor that converts a length in the named unit to Angstrom
LENGTH_TO_ANGSTROM = {"angstrom": 1.0, "bohr": BOHR_TO_ANGSTROM}


def energy_factor(unit: str) -> float:
    """kcal/mol per `unit` (one of hartree, ev, kcal/mol; case-insensitive)."""
    try:
        return ENERGY_TO_KCALMOL[unit.lower()]
    except KeyError:
        raise ValueError(f"unknown energy unit {unit!r}; expected one of {sorted(ENERGY_TO_KCALMOL)}") from None


def length_factor(unit: str) -> float:
    """Angstrom per `unit` (angstrom or bohr)."""
    try:
        return LENGTH_TO_ANGSTROM[unit.lower()]
    except KeyError:
        raise ValueError(f"unknown length unit {unit!r}; expected one of {sorted(LENGTH_TO_ANGSTROM)}") from None
