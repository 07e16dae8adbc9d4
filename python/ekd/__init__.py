"""ekd: ensemble knowledge distillation of machine-learning interatomic potentials.

Internal unit system, everywhere in ekd: energies in kcal/mol, lengths in Angstrom, forces in
kcal/mol/Angstrom (the units of the paper's tables and of LAMMPS `units real`). Data files keep
their own units (Hartree for the ANI layout) and are converted on read and write.
"""

__version__ = "0.1.0"

# Before anything imports torch: OpenMP threads that sleep instead of spin (see ekd/_threads.py).
from ekd._threads import prefer_passive_waits as _prefer_passive_waits

_prefer_passive_waits()
