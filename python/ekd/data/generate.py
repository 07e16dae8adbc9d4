"""Offline reference data: NCI molecules from RDKit's wheel, GFN2-xTB labels (tblite), optional
pyscf labels for tiny molecules. Entry points: :func:`generate` and :func:`summarize`.

Two files in the ANI layout (Hartree, Hartree/Angstrom; one group per molecule):

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

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..units import HARTREE_TO_KCALMOL
from .ani import MoleculeGroup, read_file_attrs, write_ani
from .dataset import load_dataset

log = logging.getLogger(__name__)

POOLS = ("train", "test")
_POOL_CODE = {"train": 1, "test": 2, "cluster": 3}  # random streams
# options that decide how much is computed, or where, but not what a molecule's data is
_EXECUTION_FIELDS = ("workers", "chunk_size", "n_train_molecules", "n_test_molecules")
# options that choose the molecules (which SMILES sits at which index), not a molecule's data:
# a molecule's data is a function of (SMILES, pool, index) and the other options, and every part
# file is checked against its task, so changing these keeps the parts that still fit
_SELECTION_FIELDS = (
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
_LEVEL_FIELDS = ("levels", "test_levels")
# fields added after the first release, left out of hashes and digests at their defaults so that
# existing parts and run directories keep theirs
_ADDED_FIELDS = {"train_required_smiles": (), "test_required_smiles": ()}
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PART_FORMAT = 1
_DEFAULT_MAX_HEAVY = 13


class GenerateError(RuntimeError):
    """Generation cannot proceed (stale parts, a failed molecule, an empty pool)."""


class GenerateOptionsError(ValueError):
    """An invalid :class:`GenerateOptions`; the message names the field."""


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
    # --- execution
    workers: int = 2  # processes, one thread each
    chunk_size: int = 1  # molecules per worker task (each molecule is still its own part file)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default
            if isinstance(default, bool):
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
        from .labels import LEVELS, MAX_HEAVY_ATOMS, XTB

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
        _check(self.xtb_accuracy > 0, "xtb_accuracy", "must be > 0", self.xtb_accuracy)
        _check(self.relax_fmax > 0, "relax_fmax", "must be > 0 kcal/mol/A", self.relax_fmax)
        _check(self.relax_max_steps >= 1, "relax_max_steps", "must be >= 1", self.relax_max_steps)
        _check(0 < self.hessian_step <= 0.05, "hessian_step", "must be in (0, 0.05] A", self.hessian_step)
        _check(self.conformer_rmsd > 0, "conformer_rmsd", "must be > 0 A", self.conformer_rmsd)
        _check(self.embed_per_conformer >= 1, "embed_per_conformer", "must be >= 1", self.embed_per_conformer)
        _check(self.extra_relaxations >= 0, "extra_relaxations", "must be >= 0", self.extra_relaxations)
        _check(self.workers >= 1, "workers", "must be >= 1", self.workers)
        _check(self.chunk_size >= 1, "chunk_size", "must be >= 1", self.chunk_size)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerateOptions:
        """From plain data (a YAML mapping); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GenerateOptionsError(f"GenerateOptions: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields added after the first release that are at their
        defaults (so a digest of it is stable across ekd versions)."""
        return {k: v for k, v in self.to_dict().items() if not (k in _ADDED_FIELDS and v == list(_ADDED_FIELDS[k]))}

    def content_hash(self) -> str:
        """Hash of the options that shape the molecules' data (not workers, chunking, counts)."""
        relevant = {k: v for k, v in self.identity().items() if k not in _EXECUTION_FIELDS}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def data_fields(self) -> dict[str, Any]:
        """The options that shape a given molecule's geometries (what resuming must not change)."""
        skip = {*_EXECUTION_FIELDS, *_SELECTION_FIELDS, *_LEVEL_FIELDS}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def _check(ok: bool, name: str, message: str, value: Any) -> None:
    if not ok:
        raise GenerateOptionsError(f"GenerateOptions.{name}: {message}, got {value!r}")


# ------------------------------------------------------------------------------------------
# which molecules


@dataclass(frozen=True)
class MoleculeTask:
    """One group to generate: pool ("train"/"test"), index in the pool (for a cluster: its number
    of molecules), group name; kind "molecule" (an NCI molecule) or "cluster" (CH3ONO cluster)."""

    pool: str
    index: int
    name: str
    smiles: str
    nci_id: str
    formula: str
    heavy_atoms: int
    kind: str = "molecule"


def plan(options: GenerateOptions) -> list[MoleculeTask]:
    """The molecules of both pools, train first, in output order (deterministic for the seed)."""
    from .molecules import METHYL_NITRITE, candidate_from_smiles, load_nci_candidates, select_molecules

    # at least the default limit, so that one (cached, ~4 s) load serves the usual option sets
    limit = max(options.train_max_heavy_atoms, options.test_max_heavy_atoms, _DEFAULT_MAX_HEAVY)
    candidates = load_nci_candidates(None, limit)
    if options.extra_smiles:
        known = {c.smiles for c in candidates}
        extra = []
        for smi in options.extra_smiles:
            cand = candidate_from_smiles(smi, "extra")
            if cand is None:
                raise GenerateOptionsError(
                    f"GenerateOptions.extra_smiles: {smi!r} is not a usable molecule (expected a neutral, "
                    "single-fragment molecule of H, C, N and O that RDKit parses)"
                )
            if cand.smiles not in known:
                known.add(cand.smiles)
                extra.append(cand)
        candidates = (*candidates, *extra)
    train = select_molecules(
        candidates,
        options.n_train_molecules,
        options.train_min_heavy_atoms,
        options.train_max_heavy_atoms,
        seed=int(np.random.SeedSequence([options.seed, _POOL_CODE["train"]]).generate_state(1)[0]),
        required=(METHYL_NITRITE,) if options.include_methyl_nitrite else (),
        what="GenerateOptions.n_train_molecules",
    )
    train = _append_required(train, "train", candidates, options)
    test = []
    if options.n_test_molecules:
        test = select_molecules(
            candidates,
            options.n_test_molecules,
            options.test_min_heavy_atoms,
            options.test_max_heavy_atoms,
            seed=int(np.random.SeedSequence([options.seed, _POOL_CODE["test"]]).generate_state(1)[0]),
            # disjoint from train even if the heavy-atom ranges overlap
            exclude=frozenset(c.smiles for c in train),
            min_rotatable_bonds=options.test_min_rotatable_bonds,
            what="GenerateOptions.n_test_molecules",
        )
    test = _append_required(test, "test", candidates, options)
    in_train = {c.smiles for c in train}
    clash = [c.smiles for c in test if c.smiles in in_train]
    if clash:
        raise GenerateOptionsError(
            f"GenerateOptions.test_required_smiles: {clash} are train molecules too; a test molecule must be "
            "out of sample (remove it from train_required_smiles, or set include_methyl_nitrite: false for CON=O)"
        )
    from .clusters import CLUSTER_SMILES

    clusters = [
        MoleculeTask(
            "train", m, f"clu{m:03d}_CH3NO2_x{m}", ".".join([CLUSTER_SMILES] * m), "", f"(CH3NO2){m}", 4 * m, "cluster"
        )
        for m in options.cluster_sizes
    ]
    return [
        *(
            MoleculeTask(pool, i, f"mol{i:04d}_{c.formula}", c.smiles, c.nci_id, c.formula, c.heavy_atoms)
            for pool, chosen in (("train", train), ("test", test))
            for i, c in enumerate(chosen)
        ),
        *clusters,
    ]


def _append_required(chosen: list, pool: str, candidates, options: GenerateOptions) -> list:
    """``chosen`` plus the ``<pool>_required_smiles`` not in it yet (checked: usable, affordable)."""
    from .labels import MAX_HEAVY_ATOMS
    from .molecules import candidate_from_smiles

    field = f"{pool}_required_smiles"
    smiles = getattr(options, field)
    if not smiles:
        return chosen
    levels = _wanted_levels(options, pool)
    out, have = list(chosen), {c.smiles for c in chosen}
    for smi in smiles:
        cand = candidate_from_smiles(smi, "required")
        if cand is None:
            raise GenerateOptionsError(
                f"GenerateOptions.{field}: {smi!r} is not a usable molecule (expected a neutral, single-fragment "
                "molecule of H, C, N and O that RDKit parses)"
            )
        cand = next((c for c in candidates if c.smiles == cand.smiles), cand)
        for level in levels:
            limit = MAX_HEAVY_ATOMS.get(level)
            if limit is not None and cand.heavy_atoms > limit:
                raise GenerateOptionsError(
                    f"GenerateOptions.{field}: {smi!r} has {cand.heavy_atoms} heavy atoms, but {level!r} is only "
                    f"affordable for <= {limit}"
                )
        if cand.smiles not in have:
            have.add(cand.smiles)
            out.append(cand)
    return out


# ------------------------------------------------------------------------------------------
# one molecule (runs in a worker process)


def compute_molecule(task: MoleculeTask, options: GenerateOptions) -> dict[str, Any]:
    """Geometries and labels of one molecule (see the module docstring). Pure function of
    (task, options). Returns ``numbers`` (n,), ``coordinates`` (n_conf, n, 3) Angstrom,
    ``properties`` {file key: array, Hartree(/Angstrom)}, ``n_relaxed``, ``stats``."""
    from .labels import XTB, LabelError, XTBCalculator
    from .molecules import connectivity, embed_conformers, heavy_rmsd_coords, min_distance
    from .sampling import hessian, normal_mode_displacement, normal_modes, relax

    if task.kind == "cluster":
        from .clusters import compute_cluster

        return compute_cluster(task, options)
    t0 = time.perf_counter()
    stats = {
        "relax_unconverged": 0,
        "relax_failed": 0,
        "relax_duplicates": 0,
        "bonds_changed": 0,
        "samples_rejected": 0,
        "label_failures": 0,
        "skipped": "",
    }
    seq = np.random.SeedSequence([options.seed, _POOL_CODE[task.pool], task.index])
    rng = np.random.default_rng(seq)
    rdkit_seed = int(seq.spawn(1)[0].generate_state(1)[0] & 0x7FFFFFFF)
    train = task.pool == "train"
    n_want = options.train_conformers if train else options.test_conformers
    levels = options.levels if train else options.test_levels
    cap = options.energy_cap / HARTREE_TO_KCALMOL  # Hartree

    try:
        confs = embed_conformers(
            task.smiles, max(10, options.embed_per_conformer * n_want), rdkit_seed, options.conformer_rmsd
        )
    except ValueError as e:
        stats["skipped"] = str(e)
        return _result(task, None, np.zeros((0, 0, 3)), {}, 0, stats, t0, levels)
    numbers = confs.numbers
    bonds = connectivity(numbers, confs.coordinates[0])
    xtb = XTBCalculator(numbers, options.xtb_accuracy)

    # distinct GFN2-xTB minima, from force-field minima first, then raw embeddings
    starts = [*confs.coordinates, *confs.unrelaxed][: n_want + options.extra_relaxations]
    minima: list[tuple[float, np.ndarray, np.ndarray]] = []
    for start in starts:
        if len(minima) == n_want:
            break

        def is_new(pos: np.ndarray) -> bool:
            return all(heavy_rmsd_coords(confs.mol, pos, other) >= options.conformer_rmsd for _, other, _ in minima)

        try:
            relaxed = relax(
                xtb,
                numbers,
                start,
                options.relax_fmax / HARTREE_TO_KCALMOL,
                options.relax_max_steps,
                screen=is_new if minima else None,
            )
        except LabelError:
            stats["relax_failed"] += 1
            continue
        if relaxed is None:  # heading for a minimum already found
            stats["relax_duplicates"] += 1
            continue
        pos, energy, forces, converged = relaxed
        stats["relax_unconverged"] += int(not converged)
        if not np.array_equal(connectivity(numbers, pos), bonds):
            stats["bonds_changed"] += 1
            continue
        if not is_new(pos):
            stats["relax_duplicates"] += 1
            continue
        minima.append((energy, pos, forces))
    minima.sort(key=lambda m: m[0])
    if minima:
        e_min = minima[0][0]
        minima = [m for m in minima if m[0] - e_min <= cap]
    if not minima:
        stats["skipped"] = "no GFN2-xTB minimum kept (relaxation failed or changed the bonds)"
        return _result(task, numbers, np.zeros((0, len(numbers), 3)), {}, 0, stats, t0, levels)

    coords: list[np.ndarray] = []
    energies: list[float] = []
    forces_list: list[np.ndarray] = []
    if not train or options.train_include_minima:
        for energy, pos, forces in minima:
            coords.append(pos)
            energies.append(energy)
            forces_list.append(forces)
    n_relaxed = len(coords)

    centres = minima if train else minima[:1]
    n_samples = options.samples_per_conformer if train else options.test_distorted
    for _, centre, centre_forces in centres:
        if n_samples == 0:
            break
        hess = hessian(xtb, centre, options.hessian_step, options.hessian_central, centre_forces)
        directions, force_constants = normal_modes(numbers, centre, hess)
        kept = 0
        for _ in range(n_samples * options.sample_attempts):
            if kept == n_samples:
                break
            pos = centre + normal_mode_displacement(rng, directions, force_constants, options.temperature)
            if min_distance(pos) < 0.5 or not np.array_equal(connectivity(numbers, pos), bonds):
                stats["samples_rejected"] += 1
                continue
            try:
                energy, forces = xtb(pos)
            except LabelError:
                stats["samples_rejected"] += 1
                continue
            if energy - e_min > cap:
                stats["samples_rejected"] += 1
                continue
            coords.append(pos)
            energies.append(energy)
            forces_list.append(forces)
            kept += 1

    coordinates = np.stack(coords)
    properties = {f"{XTB}.energy": np.array(energies), f"{XTB}.forces": np.stack(forces_list)}
    properties.update(label_levels(levels, numbers, coordinates, stats, f"{task.pool} {task.name}"))
    stats["xtb_calls"] = xtb.n_calls
    return _result(task, numbers, coordinates, properties, n_relaxed, stats, t0, levels)


def label_levels(
    levels, numbers: np.ndarray, coordinates: np.ndarray, stats: dict, what: str, known: Mapping | None = None
) -> dict:
    """File-key -> array of every level but GFN2-xTB (which drives the sampling and is computed
    there) for ``coordinates`` (n_conf, n, 3); NaN where a calculation failed (counted in
    ``stats["label_failures"]``; the data layer masks NaN). ``known``: file-key -> array already
    computed for these coordinates; levels found there are not recomputed (nor returned), and a
    level that corrects another (``labels.CORRECTS``) reuses the other's energies."""
    from .labels import CORRECTS, LEVELS, XTB, LabelError, label

    known = dict(known or {})
    todo = [lv for lv in levels if lv != XTB and f"{lv}.energy" not in known]
    # base levels before the levels that correct them
    todo.sort(key=lambda lv: lv in CORRECTS)
    properties = {}
    for level in todo:
        base = CORRECTS.get(level)
        base_energy = known.get(f"{base}.energy", properties.get(f"{base}.energy")) if base else None
        e_arr = np.full(len(coordinates), np.nan)
        f_arr = np.full(coordinates.shape, np.nan)
        for i, pos in enumerate(coordinates):
            given = {base: float(base_energy[i])} if base_energy is not None else {}
            if given and not np.isfinite(given[base]):  # the base level failed here: so does this one
                stats["label_failures"] = stats.get("label_failures", 0) + 1
                continue
            try:
                energy, forces = label(level, numbers, pos, given)
            except LabelError as e:
                log.warning("%s configuration %d: %s", what, i, e)
                stats["label_failures"] = stats.get("label_failures", 0) + 1
                continue
            e_arr[i] = energy
            if forces is not None:
                f_arr[i] = forces
        properties[f"{level}.energy"] = e_arr
        if LEVELS[level]:
            properties[f"{level}.forces"] = f_arr
    return properties


def _result(task, numbers, coordinates, properties, n_relaxed, stats, t0, levels) -> dict[str, Any]:
    stats = {**stats, "seconds": round(time.perf_counter() - t0, 3)}
    return {
        "task": dataclasses.asdict(task),
        "numbers": np.zeros(0, dtype=np.int64) if numbers is None else np.asarray(numbers, dtype=np.int64),
        "coordinates": coordinates,
        "properties": properties,
        "n_relaxed": int(n_relaxed),
        "levels": list(levels),
        "stats": stats,
    }


def _init_worker(parent_pid: int) -> None:
    """Worker initializer: one thread per process (tblite and pyscf read these at import), leave
    Ctrl-C to the parent, which cancels the queue and lets running molecules finish, and die with
    the parent (a worker's results are saved by the parent only)."""
    from ..jobs import die_with_parent

    for var in _THREAD_VARIABLES:
        os.environ[var] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)


def _run_chunk(
    tasks: list[MoleculeTask], options: GenerateOptions, relabel: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Compute the molecules of ``tasks``; with ``relabel`` ({"parts": dir, "accepted": hashes}),
    only add the missing levels to their saved parts."""
    out = []
    for task in tasks:
        try:
            if relabel:
                path = _part_path(Path(relabel["parts"]), task)
                out.append(complete_levels(task, options, path, set(relabel["accepted"])))
            else:
                out.append(compute_molecule(task, options))
        except Exception as e:
            raise GenerateError(f"{task.pool} molecule {task.name} ({task.smiles}): {type(e).__name__}: {e}") from e
    return out


@contextlib.contextmanager
def _single_thread_env() -> Iterator[None]:
    """Spawned workers inherit the parent's environment at start-up, before any import: set the
    thread variables there too, so numpy's BLAS in the workers is single-threaded as well."""
    saved = {var: os.environ.get(var) for var in _THREAD_VARIABLES}
    os.environ.update({var: "1" for var in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


# ------------------------------------------------------------------------------------------
# part files


def _part_path(parts: Path, task: MoleculeTask) -> Path:
    return parts / task.pool / f"{task.name}.npz"


def _save_part(parts: Path, result: dict[str, Any], options_hash: str) -> Path:
    """One molecule's result as ``.parts/<pool>/<name>.npz``, written atomically."""
    task = result["task"]
    path = parts / task["pool"] / f"{task['name']}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(result["properties"])
    meta = {
        "format": _PART_FORMAT,
        "options_hash": options_hash,
        "task": task,
        "n_relaxed": result["n_relaxed"],
        "levels": result["levels"],
        "keys": keys,
        "stats": result["stats"],
    }
    arrays = {f"property{i}": np.asarray(result["properties"][k]) for i, k in enumerate(keys)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                meta=np.array(json.dumps(meta)),
                numbers=result["numbers"],
                coordinates=result["coordinates"],
                **arrays,
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def _same_task(meta: Mapping[str, Any], task: MoleculeTask) -> bool:
    old = meta.get("task", {})
    return (old.get("smiles"), old.get("pool"), old.get("index"), old.get("kind", "molecule")) == (
        task.smiles,
        task.pool,
        task.index,
        task.kind,
    )


def _wanted_levels(options: GenerateOptions, pool: str) -> tuple[str, ...]:
    return options.levels if pool == "train" else options.test_levels


def _part_status(path: Path, task: MoleculeTask, options: GenerateOptions, accepted: set[str]) -> str:
    """ "missing" (compute the molecule), "complete", or "levels" (only labels are missing)."""
    if not path.exists():
        return "missing"
    meta = _read_meta(path)
    if meta.get("options_hash") not in accepted:
        raise GenerateError(
            f"part file {path} was made with options this directory's manifest does not know (hash "
            f"{meta.get('options_hash')}); delete it or rerun with resume=False"
        )
    if not _same_task(meta, task):
        # the selection changed (other molecules drawn): this index now holds another molecule
        log.info(
            "generate: %s holds %s, now %s: recomputing", path.name, meta.get("task", {}).get("smiles"), task.smiles
        )
        return "missing"
    missing = [lv for lv in _wanted_levels(options, task.pool) if lv not in meta.get("levels", [])]
    return "levels" if missing else "complete"


def _load_part(path: Path, task: MoleculeTask, accepted: set[str]) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("options_hash") not in accepted or not _same_task(meta, task):
            raise GenerateError(
                f"part file {path} belongs to another run (options hash {meta.get('options_hash')}, "
                f"SMILES {meta.get('task', {}).get('smiles')!r}; expected one of {sorted(accepted)}, "
                f"{task.smiles!r}); delete it or rerun with resume=False"
            )
        props = {k: data[f"property{i}"] for i, k in enumerate(meta["keys"])}
        return {
            "task": meta["task"],
            "numbers": data["numbers"],
            "coordinates": data["coordinates"],
            "properties": props,
            "n_relaxed": int(meta["n_relaxed"]),
            "levels": list(meta.get("levels", [])),
            "stats": meta["stats"],
        }


def complete_levels(task: MoleculeTask, options: GenerateOptions, path: Path, accepted: set[str]) -> dict[str, Any]:
    """A saved molecule with the labels of the levels it lacks added (its geometries and other
    labels unchanged). Runs in a worker process."""
    part = _load_part(path, task, accepted)
    wanted = _wanted_levels(options, task.pool)
    stats = dict(part["stats"])
    t0 = time.perf_counter()
    if len(part["coordinates"]):
        added = label_levels(
            [lv for lv in wanted if lv not in part["levels"]],
            part["numbers"],
            part["coordinates"],
            stats,
            f"{task.pool} {task.name}",
            known=part["properties"],
        )
        part["properties"].update(added)
    stats["seconds"] = round(float(stats.get("seconds", 0.0)) + time.perf_counter() - t0, 3)
    part["stats"] = stats
    part["levels"] = list(dict.fromkeys([*part["levels"], *wanted]))
    return part


def _prepare_parts(parts: Path, options: GenerateOptions, resume: bool) -> set[str]:
    """Make or check ``parts/manifest.json``; returns the option hashes whose parts are usable.

    Resuming may change the molecule selection and the levels (parts are checked one by one
    against their task, and missing levels are added); any other option is refused."""
    manifest = parts / "manifest.json"
    relevant = {k: v for k, v in options.identity().items() if k not in _EXECUTION_FIELDS}
    current = options.content_hash()
    if parts.exists() and not resume:
        shutil.rmtree(parts)
    accepted = {current}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("options_hash") == current:
            return {current, *old.get("compatible_hashes", [])}
        before = {**{k: list(v) for k, v in _ADDED_FIELDS.items()}, **old.get("options", {})}
        shaping = options.data_fields()
        diff = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in shaping.items() if before.get(k) != v]
        if diff or old.get("format", _PART_FORMAT) != _PART_FORMAT:
            raise GenerateError(
                f"{parts} holds molecules made with other options ({'; '.join(diff) or 'format changed'}). "
                "Resuming would mix them: rerun with resume=False (CLI: --fresh) to discard them, or use "
                "another output directory"
            )
        accepted |= {old.get("options_hash"), *old.get("compatible_hashes", [])}
        changed = [k for k, v in relevant.items() if before.get(k) != v]
        log.info("generate: reusing the parts in %s (changed: %s)", parts, ", ".join(changed))
    elif parts.exists() and any(parts.rglob("*.npz")):
        raise GenerateError(f"{parts} has part files but no manifest.json; delete the directory to start afresh")
    parts.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(".tmp")
    record = {
        "options_hash": current,
        "options": relevant,
        "format": _PART_FORMAT,
        "compatible_hashes": sorted(h for h in accepted if h != current),
    }
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, manifest)
    return accepted


# ------------------------------------------------------------------------------------------
# public entry points


def versions(levels: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Versions of the tools that made the data."""
    from importlib.metadata import PackageNotFoundError, version

    import rdkit

    from .. import __version__

    out = {"ekd": __version__, "rdkit": rdkit.__version__}
    for package in ("tblite", "numpy", "ase") + (("pyscf",) if any(lv != "gfn2_xtb" for lv in levels) else ()):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def generate(
    options: GenerateOptions | None = None,
    out_dir: str | os.PathLike = "data",
    progress: bool = True,
    *,
    resume: bool = True,
    train_name: str = "train.h5",
    test_name: str = "test.h5",
) -> tuple[Path, Path | None]:
    """Make ``<out_dir>/train.h5`` and ``<out_dir>/test.h5`` (see the module docstring).

    progress: a tqdm bar on stderr (one tick per molecule).
    resume: reuse ``<out_dir>/.parts`` from an interrupted or smaller run with the same options;
        False discards it first.
    Returns (train path, test path); the test path is None when ``n_test_molecules`` is 0.
    Raises GenerateError for stale parts or a molecule whose generation raised.

    Workers are *spawned* processes (one thread each), so a script calling this must guard its
    entry point with ``if __name__ == "__main__":`` (the ``ekd`` command does).
    """
    from tqdm.auto import tqdm

    options = options or GenerateOptions()
    out = Path(out_dir)
    parts = out / ".parts"
    options_hash = options.content_hash()
    t0 = time.perf_counter()
    tasks = plan(options)
    accepted = _prepare_parts(parts, options, resume)
    status = {t: _part_status(_part_path(parts, t), t, options, accepted) for t in tasks}
    todo = [t for t in tasks if status[t] != "complete"]
    relabel = {"parts": str(parts), "accepted": sorted(accepted)}
    log.info(
        "generate: %d molecules, %d to compute, %d to complete with new levels, %d parts reused",
        len(tasks),
        sum(s == "missing" for s in status.values()),
        sum(s == "levels" for s in status.values()),
        sum(s == "complete" for s in status.values()),
    )

    bar = tqdm(
        total=len(tasks),
        initial=len(tasks) - len(todo),
        desc="ekd data generate",
        unit="mol",
        disable=not progress,
    )
    try:
        if todo:
            chunks = [
                (kind, group[i : i + options.chunk_size])
                for kind in ("missing", "levels")
                for group in [[t for t in todo if status[t] == kind]]
                for i in range(0, len(group), options.chunk_size)
            ]
            with _single_thread_env():
                executor = ProcessPoolExecutor(
                    max_workers=min(options.workers, len(chunks)),
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(os.getpid(),),
                )
                futures: list = []
                saved: set[int] = set()
                try:
                    futures = [
                        executor.submit(_run_chunk, chunk, options, relabel if kind == "levels" else None)
                        for kind, chunk in chunks
                    ]
                    for future in as_completed(futures):
                        for result in future.result():
                            _save_part(parts, result, options_hash)
                            bar.update(1)
                        saved.add(id(future))
                except BaseException:
                    # an interrupt or a failed molecule: drop the queue, let running molecules
                    # finish, and keep what finished (best effort; the original error is raised)
                    executor.shutdown(wait=True, cancel_futures=True)
                    for future in futures:
                        if id(future) in saved or not future.done() or future.cancelled():
                            continue
                        with contextlib.suppress(Exception):
                            for result in future.result():
                                _save_part(parts, result, options_hash)
                    raise
                executor.shutdown(wait=True)
    finally:
        bar.close()

    paths: dict[str, Path | None] = {"train": out / train_name, "test": None}
    for pool in POOLS:
        pool_tasks = [t for t in tasks if t.pool == pool]
        if not pool_tasks:
            continue
        path = out / (train_name if pool == "train" else test_name)
        _assemble(path, pool, pool_tasks, parts, options, accepted | {options_hash})
        paths[pool] = path
    log.info("generate: done in %.1f s", time.perf_counter() - t0)
    return paths["train"], paths["test"]


def _assemble(
    path: Path, pool: str, tasks: list[MoleculeTask], parts: Path, options: GenerateOptions, accepted: set[str]
) -> None:
    options_hash = options.content_hash()
    levels = _wanted_levels(options, pool)
    groups, skipped = [], {}
    keys: list[str] = []
    for task in tasks:
        part = _load_part(_part_path(parts, task), task, accepted)
        if part["coordinates"].shape[0] == 0:
            skipped[task.name] = part["stats"].get("skipped", "no configuration")
            continue
        # the wanted levels only (a part may hold more, from an earlier run)
        properties = {k: v for k, v in part["properties"].items() if k.rsplit(".", 1)[0] in levels}
        keys = keys or list(properties)
        groups.append(
            MoleculeGroup(
                task.name,
                part["numbers"],
                part["coordinates"],
                properties,
                {
                    "smiles": task.smiles,
                    "nci_id": task.nci_id,
                    "formula": task.formula,
                    "heavy_atoms": task.heavy_atoms,
                    "n_relaxed": part["n_relaxed"],
                    **({"cluster_molecules": task.index} if task.kind == "cluster" else {}),
                },
            )
        )
    if skipped:
        log.warning("generate: %s pool skipped %d molecule(s): %s", pool, len(skipped), skipped)
    if not groups:
        raise GenerateError(f"{pool} pool: no molecule produced a configuration ({skipped})")
    n_conf = sum(g.n_conf for g in groups)
    tool_versions = versions(levels)
    attrs = {
        "energy_unit": "hartree",
        "length_unit": "angstrom",
        "generator": "ekd.data.generate",
        "pool": pool,
        "levels": json.dumps(list(levels)),
        "keys": json.dumps(keys),
        "options": json.dumps(options.to_dict(), sort_keys=True),
        "options_hash": options_hash,
        "n_molecules": len(groups),
        "n_configurations": n_conf,
        "skipped_molecules": json.dumps(skipped),
        "versions": json.dumps(tool_versions, sort_keys=True),
        **{f"{k}_version": v for k, v in tool_versions.items()},
    }
    write_ani(path, groups, attrs)
    log.info("generate: %s: %d configurations of %d molecules -> %s", pool, n_conf, len(groups), path)


def summarize(path: str | os.PathLike) -> str:
    """A few lines about a generated file: sizes, elements, per-key statistics (kcal/mol)."""
    attrs = read_file_attrs(path)
    keys = json.loads(str(attrs.get("keys", "[]"))) or ["gfn2_xtb.energy", "gfn2_xtb.forces"]
    dataset = load_dataset(path, {k: k for k in keys})
    levels = ", ".join(json.loads(str(attrs.get("levels", "[]"))))
    head = [f"{path}: pool {attrs.get('pool', '?')}, levels {levels}"]
    skipped = json.loads(str(attrs.get("skipped_molecules", "{}")))
    if skipped:
        head.append(f"  skipped molecules: {len(skipped)} ({', '.join(skipped)})")
    return "\n".join([*head, dataset.summary()])
