"""Offline reference data: NCI molecules from RDKit's wheel, GFN2-xTB labels (tblite), optional
pyscf labels for tiny molecules. Entry points: :func:`generate` and :func:`summarize`.

The package, in the order data flows: :mod:`.options` (GenerateOptions, checked on construction),
:mod:`.selection` (which molecules: MoleculeTask), :mod:`.molecule` and :mod:`.cluster` (one
group's geometries, in a worker), :mod:`.torsion` (the geometry of the torsion scans) and
:mod:`.scan` (one scan, in a worker), :mod:`.levels` (labels beyond GFN2-xTB), :mod:`.record` (the typed result,
MoleculeRecord), :mod:`.parts` (the resumable part store), :mod:`.runner` (the worker pool),
:mod:`.assemble` (the HDF5 files).

Two files in the ANI layout (Hartree, Hartree/Angstrom; one group per molecule), and a third
when asked for:

* ``train.h5``: molecules with ``train_min_heavy_atoms..train_max_heavy_atoms`` heavy atoms
  (methyl nitrite, CH3ONO, first unless ``include_methyl_nitrite`` is false; then the
  ``train_required_smiles``). Per molecule, up to ``train_conformers`` distinct
  GFN2-xTB minima (ETKDG + MMFF starting points, BFGS-relaxed with GFN2-xTB) and around each
  ``samples_per_conformer`` normal-mode samples at ``temperature`` (the ANI-1 scheme, see
  :mod:`ekd.data.sampling`; modes from a GFN2-xTB Hessian by central differences of tblite
  forces). Normal-mode sampling was chosen over short MD because it gives independent,
  decorrelated samples at a cost of one Hessian per minimum, and it is what the ANI data sets did.
* ``test.h5``: molecules with ``test_min_heavy_atoms..test_max_heavy_atoms`` heavy atoms and at
  least one rotatable bond (so that conformer energy differences exist): up to
  ``test_conformers`` distinct GFN2-xTB minima, then ``test_distorted`` normal-mode samples around
  the lowest one (for force errors) -- the analogue of COMP6 GDB 10-13; then the
  ``test_required_smiles`` (any size, never a train molecule).
* ``torsion.h5`` (``torsion: {molecules: N, ...}``, :class:`.options.TorsionOptions`; N = 0, the
  default, makes none): the analogue of the paper's torsion benchmark at GFN2-xTB only. N NCI
  molecules with ``torsion.min_heavy_atoms..max_heavy_atoms`` (8..13) heavy atoms, in neither
  pool and of the train molecules' elements, ``bonds_per_molecule`` rotatable bonds each; one
  group per scan (``tor<scan>_<formula>_<i>-<j>-<k>-<l>``, attributes ``dihedral``, ``scan``,
  ``scan_deg``): the lowest of ``torsion.conformers`` GFN2-xTB minima (point 0) rotated in
  ``step_deg`` steps through 360 degrees about the bond (the smaller side moves; rigid, or
  ``relaxed`` with the dihedral held), points dropped by the rules below. Its options are in no
  hash or digest (turning it on leaves train.h5, test.h5 and their parts as they were); each
  scan's part records its dihedral and settings and is redone when they change.
  :func:`generate_torsion` makes only this file.

Every configuration more than ``energy_cap`` kcal/mol above the molecule's lowest minimum, or
whose bond graph (covalent radii) differs from the molecule's, is dropped. In each group the first
``n_relaxed`` (group attribute) configurations are the minima, lowest GFN2-xTB energy first.

Keys: ``gfn2_xtb.energy`` / ``gfn2_xtb.forces`` always; ``wb97x_631gd.energy`` / ``.forces``,
``ccsd(t)_ccpvdz.energy`` and ``ccsd(t)_ccpvdz_mp2cbs.energy`` when asked for (NaN where a
calculation failed: the data layer masks it).

Determinism and resumption: every molecule has its own random stream (seed, pool, index), so the
result does not depend on the number of workers or the order they finish in. Each finished
molecule is saved atomically as ``<out>/.parts/<pool>/<name>.npz``; a rerun reuses the parts and
computes only what is missing. ``.parts/manifest.json`` records the options. A rerun may change
the molecule selection (counts, heavy-atom ranges, extra and required SMILES: every part is checked
against the molecule its index now holds, and recomputed if that changed; counts give prefixes of
each other's selections) and the levels (a part lacking a level gets only that level's labels, on
its stored geometries; a correction level reuses its base level's energies). Any option that
shapes the geometries (seed, sampling, numerics) is refused with the differing fields named --
pass ``resume=False`` to discard the old parts. The HDF5 files are assembled (atomically) from the
parts at the end, with the requested levels only; the parts are kept.
"""

from .assemble import assemble, summarize, versions
from .cluster import CLUSTER_SMILES, compute_cluster
from .levels import label_levels
from .molecule import compute_molecule
from .options import POOLS, TORSION_POOL, GenerateError, GenerateOptions, GenerateOptionsError, TorsionOptions
from .record import MoleculeRecord
from .runner import TORSION_NAME, generate, generate_torsion
from .selection import MoleculeTask, plan

__all__ = [
    "CLUSTER_SMILES",
    "POOLS",
    "TORSION_NAME",
    "TORSION_POOL",
    "GenerateError",
    "GenerateOptions",
    "GenerateOptionsError",
    "MoleculeRecord",
    "MoleculeTask",
    "TorsionOptions",
    "assemble",
    "compute_cluster",
    "compute_molecule",
    "generate",
    "generate_torsion",
    "label_levels",
    "plan",
    "summarize",
    "versions",
]
