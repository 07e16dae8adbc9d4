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


# unit names as people write them (compared case-insensitively, spaces ignored) -> ekd's name
_ENERGY_ALIASES = {
    "hartree": "hartree", "hartrees": "hartree", "ha": "hartree", "eh": "hartree",
    "ev": "ev", "electronvolt": "ev", "electronvolts": "ev",
    "kcal/mol": "kcal/mol", "kcal/mole": "kcal/mol", "kcalmol": "kcal/mol", "kcal_mol": "kcal/mol",
    "kcal/mol^-1": "kcal/mol", "kcalmol^-1": "kcal/mol", "kcalmol-1": "kcal/mol",
}  # fmt: skip
_LENGTH_ALIASES = {
    "angstrom": "angstrom", "angstroms": "angstrom", "ang": "angstrom", "a": "angstrom", "å": "angstrom",
    "bohr": "bohr", "bohrs": "bohr", "a0": "bohr", "bohr_radius": "bohr",
}  # fmt: skip
#: how ekd writes each unit where people read it (extxyz frames, reports)
DISPLAY = {"hartree": "Hartree", "ev": "eV", "kcal/mol": "kcal/mol", "angstrom": "Angstrom", "bohr": "Bohr"}


def _canonical(unit, aliases: dict, what: str) -> str:
    name = unit.strip().lower().replace(" ", "") if isinstance(unit, str) else None
    if name not in aliases:
        known = ", ".join(dict.fromkeys(DISPLAY[v] for v in aliases.values()))
        raise ValueError(f"unknown {what} unit {unit!r}; expected one of {known} (any case)")
    return aliases[name]


def energy_unit(unit: str) -> str:
    """ekd's name ("hartree", "ev", "kcal/mol") of an energy unit as people write it: ``eV``,
    ``Hartree``/``Ha``, ``kcal/mol`` (case-insensitive); ValueError naming the unit otherwise."""
    return _canonical(unit, _ENERGY_ALIASES, "energy")


def length_unit(unit: str) -> str:
    """ekd's name ("angstrom", "bohr") of a length unit: ``Angstrom``/``Å``/``A``, ``Bohr``/``a0``."""
    return _canonical(unit, _LENGTH_ALIASES, "length")


def energy_factor(unit: str) -> float:
    """kcal/mol per `unit` (see :func:`energy_unit` for the names accepted)."""
    return ENERGY_TO_KCALMOL[energy_unit(unit)]


def length_factor(unit: str) -> float:
    """Angstrom per `unit` (see :func:`length_unit`)."""
    return LENGTH_TO_ANGSTROM[length_unit(unit)]
