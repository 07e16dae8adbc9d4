"""Condensed-phase MD stability of exported ekd models (the paper's Fig. 3).

* :mod:`ekd.md.box` — periodic CH3ONO boxes at a given density;
* :mod:`ekd.md.engines` — the same protocol on ASE and on LAMMPS (``pair_style ekd``);
* :mod:`ekd.md.stability` — one run, the resumable parallel sweep, table, figure, report section.
"""

from .box import methyl_nitrite_box
from .stability import RunSpec, md_stability, run_one

__all__ = ["RunSpec", "md_stability", "methyl_nitrite_box", "run_one"]
