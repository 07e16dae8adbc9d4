"""The options of :func:`ekd.data.generate.generate` (:class:`GenerateOptions`), checked on
construction, and which of them shape a molecule's data (what resuming may not change)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...store import digest, without_added_defaults

POOLS = ("train", "test")
TORSION_POOL = "torsion"  # the torsion scans (torsion.h5), a pool of their own
POOL_CODE = {"train": 1, "test": 2, "cluster": 3, TORSION_POOL: 4}  # random streams
# options that decide how much is computed, or where, but not what a molecule's data is
EXECUTION_FIELDS = ("workers", "chunk_size", "n_train_molecules", "n_test_molecules")
# options that choose the molecules (which SMILES sits at which index), not a molecule's data:
# a molecule's data is a function of (SMILES, pool, index) and the other options, and every part
# file is checked against its task, so changing these keeps the parts that still fit
SELECTION_FIELDS = (
    "include_methyl_nitrite",
    "extra_smiles",
    "train_min_heavy_atoms",
    "train_max_heavy_atoms",
    "test_min_heavy_atoms",
    "test_max_heavy_atoms",
    "test_min_rotatable_bonds",
    "train_required_smiles",
    "test_required_smiles",
)
# the labels computed on the geometries; a part lacking a level gets just that level added
LEVEL_FIELDS = ("levels", "test_levels")
# fields added after the first release, left out of hashes and digests at their defaults so that
# existing parts and run directories keep theirs
ADDED_FIELDS = {"train_required_smiles": (), "test_required_smiles": ()}
# options of the torsion pool only: never in identity() (so neither in hashes, manifests nor
# digests): turning the pool on or off leaves the train and test data, every part and every
# trained member as they were; each scan's part is checked against its own settings instead
# (MoleculeTask.scan and .dihedral)
TORSION_FIELDS = ("torsion",)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
PART_FORMAT = 1
DEFAULT_MAX_HEAVY = 13


class GenerateError(RuntimeError):
    """Generation cannot proceed (stale parts, a failed molecule, an empty pool)."""


class GenerateOptionsError(ValueError):
    """An invalid :class:`GenerateOptions`; the message names the field."""


@dataclass(frozen=True)
class TorsionOptions:
    """The torsion-scan pool (``torsion.h5``, the paper's torsion benchmark at GFN2-xTB): NCI
    molecules in neither the train nor the test pool, ``bonds_per_molecule`` rotatable bonds each
    (RDKit's rotatable-bond pattern: single, acyclic, both ends with another heavy neighbour),
    scanned in ``step_deg`` steps through 360 degrees from the lowest
    of ``conformers`` GFN2-xTB minima. Rigid: the smaller side of the bond is rotated about the
    bond axis; relaxed: every other coordinate is then relaxed with the dihedral held (ASE's
    FixInternals). ``molecules`` 0: no pool."""

    molecules: int = 0
    bonds_per_molecule: int = 1
    min_heavy_atoms: int = 8
    max_heavy_atoms: int = 13
    step_deg: float = 15.0
    relaxed: bool = False
    conformers: int = 2

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v, name = getattr(self, f.name), f"torsion.{f.name}"
            if isinstance(f.default, bool):
                _check(isinstance(v, bool), name, "must be true or false", v)
            elif isinstance(f.default, int):
                _check(isinstance(v, int) and not isinstance(v, bool), name, "must be an integer", v)
            else:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                _check(ok, name, "must be a finite number", v)
                object.__setattr__(self, f.name, float(v))
        _check(self.molecules >= 0, "torsion.molecules", "must be >= 0 (0: no torsion pool)", self.molecules)
        _check(self.bonds_per_molecule >= 1, "torsion.bonds_per_molecule", "must be >= 1", self.bonds_per_molecule)
        _check(self.min_heavy_atoms >= 4, "torsion.min_heavy_atoms", "must be >= 4 (a dihedral)", self.min_heavy_atoms)
        _check(
            self.max_heavy_atoms >= self.min_heavy_atoms,
            "torsion.max_heavy_atoms",
            f"must be >= torsion.min_heavy_atoms ({self.min_heavy_atoms})",
            self.max_heavy_atoms,
        )
        n_points = 360.0 / self.step_deg if self.step_deg > 0 else 0.5
        _check(
            0 < self.step_deg <= 180 and abs(n_points - round(n_points)) < 1e-9,
            "torsion.step_deg",
            "must be in (0, 180] degrees and divide 360 (e.g. 15: 24 points per scan)",
            self.step_deg,
        )
        _check(self.conformers >= 1, "torsion.conformers", "must be >= 1", self.conformers)

    @classmethod
    def coerce(cls, value: Any) -> TorsionOptions:
        """From a mapping (YAML) or a TorsionOptions; unknown keys are errors naming them."""
        if isinstance(value, cls):
            return value
        known = [f.name for f in dataclasses.fields(cls)]
        _check(isinstance(value, Mapping), "torsion", f"must be a mapping of {known}", value)
        unknown = sorted(set(value) - set(known))
        _check(not unknown, "torsion", f"unknown key(s) {unknown}; known: {known}", dict(value))
        return cls(**dict(value))

    @property
    def n_points(self) -> int:
        """Points of a full scan (before points are dropped)."""
        return round(360.0 / self.step_deg)

    def scan_label(self) -> str:
        """What shapes a scan beyond its molecule and dihedral (recorded in each scan's task)."""
        mode = "relaxed" if self.relaxed else "rigid"
        return f"{mode} step {self.step_deg:g} deg, lowest of {self.conformers} minima"


@dataclass(frozen=True)
class GenerateOptions:
    """Every knob of :func:`generate`. Units: kcal/mol, Angstrom, Kelvin.

    The defaults make ~300 train configurations of 32 molecules and ~90 test configurations of
    20 molecules (seed 0: 306 and 88) for ~115 CPU-seconds: about a minute on 2 idle cores.
    """

    seed: int = 0
    # --- molecules (NCI set shipped with RDKit, CHNO, neutral, largest fragment)
    n_train_molecules: int = 32
    n_test_molecules: int = 20
    train_min_heavy_atoms: int = 1
    train_max_heavy_atoms: int = 8
    test_min_heavy_atoms: int = 10
    test_max_heavy_atoms: int = 13
    test_min_rotatable_bonds: int = 1
    include_methyl_nitrite: bool = True  # CH3ONO, the MD-stability molecule, as train molecule 0
    # extra candidate SMILES (CHNO, neutral) added to the NCI pool of both pools, e.g. the small
    # molecules of configs/ccsd_t.yaml (the NCI set has only 11 with <= 4 heavy atoms)
    extra_smiles: tuple[str, ...] = ()
    # molecules always in a pool, after the drawn ones, whatever their size (e.g. CH3ONO as a
    # held-out test molecule); a test molecule may not be a train molecule
    train_required_smiles: tuple[str, ...] = ()
    test_required_smiles: tuple[str, ...] = ()
    # --- train geometries
    train_conformers: int = 2  # distinct GFN2-xTB minima per molecule (fewer if it has fewer)
    samples_per_conformer: int = 5  # normal-mode samples around each minimum
    train_include_minima: bool = True  # the minima themselves are configurations too
    temperature: float = 500.0  # K, normal-mode sampling temperature (train and test)
    energy_cap: float = 40.0  # kcal/mol above the molecule's lowest minimum
    sample_attempts: int = 5  # draws per wanted sample before giving up (rejections: cap, bonds)
    # --- test geometries
    test_conformers: int = 3  # distinct GFN2-xTB minima per molecule
    test_distorted: int = 2  # normal-mode samples around the lowest minimum
    # --- levels of theory: file-key prefixes; gfn2_xtb is required (it drives the sampling)
    levels: tuple[str, ...] = ("gfn2_xtb",)  # train file
    test_levels: tuple[str, ...] = ("gfn2_xtb",)  # test file
    # --- numerics
    xtb_accuracy: float = 0.1  # tblite accuracy (1.0 is its default; smaller is tighter)
    relax_fmax: float = 0.5  # kcal/mol/A, BFGS convergence
    relax_max_steps: int = 300
    hessian_step: float = 0.005  # A, finite-difference step of the Hessian
    hessian_central: bool = False  # central (6n force calls) instead of forward (3n) differences
    conformer_rmsd: float = 0.5  # A, heavy-atom RMSD below which two minima are the same
    embed_per_conformer: int = 5  # ETKDG embeddings per wanted conformer (at least 10)
    extra_relaxations: int = 1  # relaxations allowed beyond the wanted number of conformers
    # --- CH3ONO clusters in the train pool (intermolecular contacts; see ekd.data.clusters)
    cluster_sizes: tuple[int, ...] = (2, 3, 4, 6, 8, 12)  # molecules per cluster, one group each; [] for none
    cluster_samples: int = 8  # configurations per cluster size
    cluster_density: tuple[float, float] = (0.8, 1.3)  # g/cm^3, range of the boxes clusters are cut from
    cluster_min_contact: tuple[float, float] = (1.5, 2.2)  # A, range of the smallest intermolecular contact
    # --- torsion scans (torsion.h5; TorsionOptions), e.g. {molecules: 4}; off by default
    torsion: TorsionOptions = dataclasses.field(default_factory=lambda: TorsionOptions())
    # --- execution
    workers: int = 2  # processes, one thread each
    chunk_size: int = 1  # molecules per worker task (each molecule is still its own part file)

    def __post_init__(self):
        # types first (YAML gives lists and ints where tuples and floats are meant), then values
        _coerce_fields(self)
        _check_molecules(self)
        _check_sampling(self)
        _check_levels(self)
        _check_numerics(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerateOptions:
        """From plain data (a YAML mapping); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GenerateOptionsError(f"GenerateOptions: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            return list(v) if isinstance(v, tuple) else dataclasses.asdict(v) if isinstance(v, TorsionOptions) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields added after the first release that are at their
        defaults (so a digest of it is stable across ekd versions) and without the torsion pool's
        options (see TORSION_FIELDS)."""
        fields = {k: v for k, v in self.to_dict().items() if k not in TORSION_FIELDS}
        return without_added_defaults(fields, ADDED_FIELDS)

    def content_hash(self) -> str:
        """Hash of the options that shape the molecules' data (not workers, chunking, counts)."""
        relevant = {k: v for k, v in self.identity().items() if k not in EXECUTION_FIELDS}
        return digest(relevant)

    def data_fields(self) -> dict[str, Any]:
        """The options that shape a given molecule's geometries (what resuming must not change)."""
        skip = {*EXECUTION_FIELDS, *SELECTION_FIELDS, *LEVEL_FIELDS, *TORSION_FIELDS}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def _coerce_fields(self: GenerateOptions) -> None:
    """Each field gets its default's type (lists become tuples, ints become floats where floats are
    meant), and the cluster options their ranges."""
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        default = f.default
        if f.name == "torsion":
            object.__setattr__(self, f.name, TorsionOptions.coerce(value))
        elif isinstance(default, bool):
            _check(isinstance(value, bool), f.name, "must be true or false", value)
        elif isinstance(default, int):
            _check(
                isinstance(value, int) and not isinstance(value, bool),
                f.name,
                "must be an integer",
                value,
            )
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
            _check(ok, f.name, "must be a finite number", value)
            object.__setattr__(self, f.name, float(value))
        elif f.name == "cluster_sizes":
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 32 for v in value
            )
            _check(ok, f.name, "must be a list of molecule counts between 1 and 32", value)
            _check(len(set(value)) == len(value), f.name, "lists a size twice", value)
            object.__setattr__(self, f.name, tuple(value))
        elif f.name in ("cluster_density", "cluster_min_contact"):
            ok = (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
                and 0 < value[0] <= value[1]
            )
            _check(ok, f.name, "must be a range [low, high] with 0 < low <= high", value)
            object.__setattr__(self, f.name, (float(value[0]), float(value[1])))
        elif isinstance(default, tuple):
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            _check(ok, f.name, "must be a list of strings", value)
            object.__setattr__(self, f.name, tuple(value))


def _check_molecules(self: GenerateOptions) -> None:
    """Molecule counts and heavy-atom ranges."""
    _check(self.seed >= 0, "seed", "must be >= 0", self.seed)
    _check(self.n_train_molecules >= 1, "n_train_molecules", "must be >= 1", self.n_train_molecules)
    _check(self.n_test_molecules >= 0, "n_test_molecules", "must be >= 0", self.n_test_molecules)
    _check(
        self.train_min_heavy_atoms >= 1,
        "train_min_heavy_atoms",
        "must be >= 1",
        self.train_min_heavy_atoms,
    )
    _check(
        self.train_max_heavy_atoms >= self.train_min_heavy_atoms,
        "train_max_heavy_atoms",
        f"must be >= train_min_heavy_atoms ({self.train_min_heavy_atoms})",
        self.train_max_heavy_atoms,
    )
    _check(self.test_min_heavy_atoms >= 1, "test_min_heavy_atoms", "must be >= 1", self.test_min_heavy_atoms)
    _check(
        self.test_max_heavy_atoms >= self.test_min_heavy_atoms,
        "test_max_heavy_atoms",
        f"must be >= test_min_heavy_atoms ({self.test_min_heavy_atoms})",
        self.test_max_heavy_atoms,
    )
    _check(
        self.test_min_rotatable_bonds >= 0,
        "test_min_rotatable_bonds",
        "must be >= 0",
        self.test_min_rotatable_bonds,
    )
    if self.include_methyl_nitrite:
        _check(
            self.train_min_heavy_atoms <= 4 <= self.train_max_heavy_atoms,
            "include_methyl_nitrite",
            "methyl nitrite has 4 heavy atoms: train_min_heavy_atoms..train_max_heavy_atoms "
            f"({self.train_min_heavy_atoms}..{self.train_max_heavy_atoms}) must include 4",
            self.include_methyl_nitrite,
        )


def _check_sampling(self: GenerateOptions) -> None:
    """Conformers, samples, temperature and the energy cap."""
    _check(self.train_conformers >= 1, "train_conformers", "must be >= 1", self.train_conformers)
    _check(
        self.samples_per_conformer >= 0,
        "samples_per_conformer",
        "must be >= 0",
        self.samples_per_conformer,
    )
    _check(
        self.train_include_minima or self.samples_per_conformer > 0,
        "samples_per_conformer",
        "must be >= 1 when train_include_minima is false (no configurations otherwise)",
        self.samples_per_conformer,
    )
    _check(0 < self.temperature <= 5000, "temperature", "must be in (0, 5000] K", self.temperature)
    _check(self.energy_cap > 0, "energy_cap", "must be > 0 kcal/mol", self.energy_cap)
    _check(self.sample_attempts >= 1, "sample_attempts", "must be >= 1", self.sample_attempts)
    _check(self.test_conformers >= 1, "test_conformers", "must be >= 1", self.test_conformers)
    _check(self.test_distorted >= 0, "test_distorted", "must be >= 0", self.test_distorted)


def _check_levels(self: GenerateOptions) -> None:
    """Levels exist, include GFN2-xTB and are affordable for the pools' and the clusters' sizes."""
    from ..labels import LEVELS, MAX_HEAVY_ATOMS, XTB

    for name, levels, max_heavy in (
        ("levels", self.levels, self.train_max_heavy_atoms),
        ("test_levels", self.test_levels, self.test_max_heavy_atoms),
    ):
        unknown = [lv for lv in levels if lv not in LEVELS]
        _check(not unknown, name, f"unknown level(s) {unknown}; known: {sorted(LEVELS)}", list(levels))
        _check(len(set(levels)) == len(levels), name, "lists a level twice", list(levels))
        _check(XTB in levels, name, f"must include {XTB!r} (it drives relaxation and sampling)", list(levels))
        for level in levels:
            limit = MAX_HEAVY_ATOMS.get(level)
            pool = "train" if name == "levels" else "test"
            _check(
                limit is None or max_heavy <= limit,
                name,
                f"{level!r} is only affordable for molecules with <= {limit} heavy atoms, but "
                f"{pool}_max_heavy_atoms is {max_heavy}",
                list(levels),
            )
    _check(self.cluster_samples >= 1, "cluster_samples", "must be >= 1", self.cluster_samples)
    if self.cluster_sizes:
        for level in self.levels:
            limit = MAX_HEAVY_ATOMS.get(level)
            _check(
                limit is None or 4 * max(self.cluster_sizes) <= limit,
                "cluster_sizes",
                f"{level!r} (in levels) is only affordable for <= {limit} heavy atoms, but a "
                f"{max(self.cluster_sizes)}-molecule CH3ONO cluster has {4 * max(self.cluster_sizes)}; "
                "set cluster_sizes: [] (or sizes of 1)",
                list(self.cluster_sizes),
            )


def _check_numerics(self: GenerateOptions) -> None:
    """Numerical settings of relaxation, Hessians, embedding and execution."""
    _check(self.xtb_accuracy > 0, "xtb_accuracy", "must be > 0", self.xtb_accuracy)
    _check(self.relax_fmax > 0, "relax_fmax", "must be > 0 kcal/mol/A", self.relax_fmax)
    _check(self.relax_max_steps >= 1, "relax_max_steps", "must be >= 1", self.relax_max_steps)
    _check(0 < self.hessian_step <= 0.05, "hessian_step", "must be in (0, 0.05] A", self.hessian_step)
    _check(self.conformer_rmsd > 0, "conformer_rmsd", "must be > 0 A", self.conformer_rmsd)
    _check(self.embed_per_conformer >= 1, "embed_per_conformer", "must be >= 1", self.embed_per_conformer)
    _check(self.extra_relaxations >= 0, "extra_relaxations", "must be >= 0", self.extra_relaxations)
    _check(self.workers >= 1, "workers", "must be >= 1", self.workers)
    _check(self.chunk_size >= 1, "chunk_size", "must be >= 1", self.chunk_size)


def _check(ok: bool, name: str, message: str, value: Any) -> None:
    if not ok:
        raise GenerateOptionsError(f"GenerateOptions.{name}: {message}, got {value!r}")


def wanted_levels(options: GenerateOptions, pool: str) -> tuple[str, ...]:
    """The levels of theory a pool's file holds ("train": ``levels``, "test": ``test_levels``,
    "torsion": GFN2-xTB only -- CCSD(T) or DFT of 24 points x 8-13 heavy atoms is out of reach)."""
    if pool == TORSION_POOL:
        return ("gfn2_xtb",)
    return options.levels if pool == "train" else options.test_levels
