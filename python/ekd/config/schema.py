"""The sections of a configuration (frozen dataclasses with their defaults, the paper's) and
:class:`Config`, the whole; each checks its values when built."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import yaml

from .. import store
from .typed import ConfigError, build, check, check_finite, to_plain

# ------------------------------------------------------------------------------------------
# sections


@dataclass(frozen=True)
class ModelConfig:
    """HIPNN architecture (hippynn's Hipnn / HipnnVec / HipnnQuad for l_max 0 / 1 / 2)."""

    l_max: int = 2
    n_interactions: int = 2
    n_atom_layers: int = 4
    width: int = 128
    n_sensitivities: int = 20
    cutoff_soft_min: float = 0.75  # Angstrom
    cutoff_soft_max: float = 5.5
    cutoff_hard: float = 6.5

    def __post_init__(self):
        check_finite(self)
        check(self.l_max in (0, 1, 2), "l_max", "must be 0, 1 or 2", self.l_max)
        check(self.n_interactions in (1, 2, 3), "n_interactions", "must be 1, 2 or 3", self.n_interactions)
        check(self.n_atom_layers >= 1, "n_atom_layers", "must be >= 1", self.n_atom_layers)
        check(self.width >= 1, "width", "must be >= 1", self.width)
        check(self.n_sensitivities >= 1, "n_sensitivities", "must be >= 1", self.n_sensitivities)
        check(
            0 < self.cutoff_soft_min < self.cutoff_soft_max <= self.cutoff_hard,
            "cutoff_soft_min",
            "cutoffs must satisfy 0 < cutoff_soft_min < cutoff_soft_max <= cutoff_hard",
            (self.cutoff_soft_min, self.cutoff_soft_max, self.cutoff_hard),
        )


_TRAIN_ADDED = {"min_epochs": 0}
#: train fields that say where the work runs, not what it computes, with their defaults: in no
#: digest, and in a configuration's records only when set
TRAIN_EXECUTION_DEFAULTS = {"device": "auto"}


@dataclass(frozen=True)
class TrainConfig:
    """One training routine for every role; roles differ by the targets they use."""

    lr: float = 1e-3
    lr_factor: float = 0.5  # multiply the learning rate by this ...
    lr_patience: int = 15  # ... after this many epochs without improvement
    termination_patience: int = 30  # stop after this many epochs without improvement
    max_epochs: int = 400
    # no stop and no learning-rate decay before this epoch: small energy-only sets can sit at the
    # per-element offsets for 20+ epochs before learning starts (two of eight CCSD(T) teachers
    # were stopped there with patience 20)
    min_epochs: int = 0
    batch_size: int = 64
    w_energy: float = 1.0
    w_l2: float = 1e-4
    w_hierarchicality: float = 0.1
    # (first epoch, force weight) steps; the paper's: 10 at epoch 1, -1 every 20 epochs, 0.5 from 200
    force_schedule: tuple[tuple[int, float], ...] = (
        (1, 10.0), (20, 9.0), (40, 8.0), (60, 7.0), (80, 6.0), (100, 5.0),
        (120, 4.0), (140, 3.0), (160, 2.0), (180, 1.0), (200, 0.5),
    )  # fmt: skip
    kernels: Literal["ekd", "hippynn-numba", "pytorch"] = "ekd"
    dtype: Literal["float32", "float64"] = "float32"
    threads: int = 1  # torch intra-op threads per training process
    # where members are trained and labels, metrics and scores computed: auto (a GPU if ekd can use
    # one, else the CPU), cpu, cuda, cuda:N (ekd.ops.devices). In no digest: it changes where the
    # numbers are computed, not what they are
    device: str = "auto"

    def __post_init__(self):
        check_finite(self)
        check(self.lr > 0, "lr", "must be > 0", self.lr)
        check(0 < self.lr_factor < 1, "lr_factor", "must be between 0 and 1", self.lr_factor)
        check(self.lr_patience >= 1, "lr_patience", "must be >= 1", self.lr_patience)
        check(self.termination_patience >= 1, "termination_patience", "must be >= 1", self.termination_patience)
        check(self.max_epochs >= 1, "max_epochs", "must be >= 1", self.max_epochs)
        check(
            0 <= self.min_epochs <= self.max_epochs,
            "min_epochs",
            f"must be between 0 and max_epochs ({self.max_epochs})",
            self.min_epochs,
        )
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        for name in ("w_energy", "w_l2", "w_hierarchicality"):
            check(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))
        s = self.force_schedule
        check(len(s) >= 1, "force_schedule", "needs at least one (epoch, weight) entry", s)
        check(s[0][0] == 1, "force_schedule", "must start at epoch 1", s)
        check(
            all(b[0] > a[0] for a, b in zip(s, s[1:], strict=False)),
            "force_schedule",
            "epochs must be strictly increasing",
            s,
        )
        check(all(w >= 0 for _, w in s), "force_schedule", "weights must be >= 0", s)
        check(self.threads >= 1, "threads", "must be >= 1", self.threads)
        check(
            isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "device",
            "must be auto, cpu, cuda or cuda:N",
            self.device,
        )

    def identity(self) -> dict:
        """The fields as a dict, without those added after the first release that are at their
        defaults (so that digests of existing members stay valid), and never the device."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in TRAIN_EXECUTION_DEFAULTS}
        return store.without_added_defaults(fields, _TRAIN_ADDED)

    def force_weight(self, epoch: int) -> float:
        """The force weight in force at ``epoch`` (1-based): the last step at or before it."""
        w = self.force_schedule[0][1]
        for start, value in self.force_schedule:
            if epoch >= start:
                w = value
        return w


#: data.generate keys of the torsion pool (ekd.data.generate.options.TORSION_FIELDS): in no digest
TORSION_GENERATE_KEYS = ("torsion",)


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and which file key plays which role.

    ``train`` / ``test``: an ANI-layout HDF5 file or any file ASE reads (extxyz, ASE database; see
    :mod:`ekd.data.ase_files`), or ``generate`` to make GFN2-xTB data with
    :mod:`ekd.data.generate` (options in ``generate``). ``test`` is the out-of-sample pool
    (e.g. COMP6 GDB 10-13); ``null`` evaluates in distribution only.
    """

    train: str = "generate"
    test: str | None = "generate"
    energy_key: str = "gfn2_xtb.energy"
    # the dataset's own forces: hidden from teachers/students, used by the baseline and to score
    reference_forces_key: str | None = "gfn2_xtb.forces"
    # units as people write them (eV, Hartree, kcal/mol; Angstrom, Bohr; any case), kept as ekd's names
    energy_unit: str = "hartree"
    length_unit: str = "angstrom"
    # the out-of-sample file may name its keys differently (COMP6: `energies`, `forces`)
    test_energy_key: str | None = None  # None: energy_key
    test_reference_forces_key: str | None = None  # None: reference_forces_key
    test_energy_unit: str | None = None  # None: energy_unit
    test_fraction: float = 0.1  # in-distribution test split, common to all members
    valid_fraction: float = 0.1  # of the rest, per member
    generate: dict[str, Any] = field(default_factory=dict)  # ekd.data.generate.GenerateOptions fields

    def __post_init__(self):
        check_finite(self)
        from ..units import energy_unit, length_unit

        for name, canonical in (("energy_unit", energy_unit), ("length_unit", length_unit),
                                ("test_energy_unit", energy_unit)):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                try:
                    object.__setattr__(self, name, canonical(value))
                except ValueError as e:
                    raise ConfigError(f"{name}: {e}") from None
        check(0 < self.test_fraction < 0.5, "test_fraction", "must be in (0, 0.5)", self.test_fraction)
        check(0 < self.valid_fraction < 0.5, "valid_fraction", "must be in (0, 0.5)", self.valid_fraction)
        check(bool(self.energy_key), "energy_key", "must name a dataset key", self.energy_key)
        if self.generate:
            # validated by the generator's own options class, so the two never drift apart
            from ..data.generate import GenerateOptions

            known = {f.name for f in dataclasses.fields(GenerateOptions)}
            unknown = sorted(set(self.generate) - known)
            check(not unknown, "generate", f"unknown key(s) {unknown}; known keys are {sorted(known)}", self.generate)
            try:
                self.generate_options(seed=0)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"generate: {e}") from None

    def identity(self) -> dict:
        """The fields as a dict for the digests of what is trained on this data (members), without
        ``generate.torsion``: the torsion scans are an out-of-sample set only (they shape no
        training data, label or member), so turning them on keeps existing members valid."""
        d = dataclasses.asdict(self)
        d["generate"] = {k: v for k, v in d["generate"].items() if k not in TORSION_GENERATE_KEYS}
        return d

    def generate_options(self, seed: int):
        """The generator's options: ``generate`` over the run's seed (``generate.seed`` wins)."""
        from ..data.generate import GenerateOptions

        values = {k: tuple(v) if isinstance(v, list) else v for k, v in self.generate.items()}
        return GenerateOptions(**{"seed": seed, **values})


@dataclass(frozen=True)
class EnsembleConfig:
    """Who is trained: k teachers, then per generation k students, plus controls and baseline."""

    n_teachers: int = 8
    n_students: int = 8
    generations: int = 2
    controls: bool = True  # student architecture, energies only
    baseline: bool = True  # student architecture, the dataset's own forces (needs reference_forces_key)
    student_model: ModelConfig | None = None  # None: the teachers' architecture
    # --- studies of the paper (each adds groups to the run and a table to the report)
    # capacity sweep (Fig. 4): name -> overrides of the student architecture, e.g.
    # {n1_l0: {n_interactions: 1, l_max: 0}}; each variant trains n_students gen-1 students (from
    # the teacher ensemble) and, with controls on, n_students controls of that architecture
    student_variants: dict[str, Any] = field(default_factory=dict)
    # ensemble size ablation (SI 1): for each k, n_students gen-1 students taught by the ensemble
    # of only the first k teachers (k=1: a single teacher)
    teacher_subsets: tuple[int, ...] = ()
    # cross-architecture teacher (SI 2): "torchani:ANI1ccx" teaches n_students gen-1 students;
    # external_teacher_dir: where its weights are (None: torchani's own resources folder). Or any
    # ASE calculators, one member each: "MODULE:FACTORY[:ARG]" or a list of them
    # (ekd.training.external.load_calculator), e.g. [mace.calculators:mace_off:small, ...]
    external_teacher: str | tuple[str, ...] | None = None
    external_teacher_dir: str | None = None
    study_members: int | None = None  # members of each study group (None: n_students)
    # students of every generation also predict their teachers' per-atom force spread
    # (ekd.training.models.SigmaHead, trained on the labels' spread; energy and forces unchanged)
    student_uncertainty: bool = False

    def __post_init__(self):
        check(self.n_teachers >= 1, "n_teachers", "must be >= 1", self.n_teachers)
        check(self.n_students >= 1, "n_students", "must be >= 1", self.n_students)
        check(self.generations >= 0, "generations", "must be >= 0", self.generations)
        check(
            self.study_members is None or self.study_members >= 1,
            "study_members",
            "must be >= 1 or null",
            self.study_members,
        )
        known = {f.name for f in fields(ModelConfig)}
        for name, overrides in self.student_variants.items():
            check(
                isinstance(name, str) and name.replace("_", "").isalnum(),
                "student_variants",
                "names must be letters, digits and '_'",
                name,
            )
            check(
                isinstance(overrides, dict) and set(overrides) <= known,
                f"student_variants.{name}",
                f"must map ModelConfig fields {sorted(known)} to values",
                overrides,
            )
            build(ModelConfig, dict(overrides), f"student_variants.{name}")
        for k in self.teacher_subsets:
            check(
                1 <= k < self.n_teachers,
                "teacher_subsets",
                f"each k must be between 1 and n_teachers - 1 ({self.n_teachers - 1})",
                self.teacher_subsets,
            )
        check(
            len(set(self.teacher_subsets)) == len(self.teacher_subsets),
            "teacher_subsets",
            "lists a k twice",
            self.teacher_subsets,
        )
        torchani = ("torchani:ANI1ccx", "torchani:ANI1x", "torchani:ANI2x")
        teacher = self.external_teacher
        if isinstance(teacher, str) and teacher.startswith("torchani:"):
            check(teacher in torchani, "external_teacher", f"must be one of {list(torchani)}", teacher)
        elif teacher is not None:
            from .calculators import parse_calculator_spec

            specs = [teacher] if isinstance(teacher, str) else list(teacher)
            check(bool(specs), "external_teacher", "must list at least one calculator", teacher)
            try:
                for spec in specs:
                    parse_calculator_spec(spec)
            except ValueError as e:
                raise ConfigError(f"external_teacher: {e}; or one of {list(torchani)}") from None


@dataclass(frozen=True)
class EvaluateConfig:
    conformer_window: float = 100.0  # kcal/mol above a molecule's lowest: excluded from ΔE

    def __post_init__(self):
        check_finite(self)
        check(self.conformer_window > 0, "conformer_window", "must be > 0", self.conformer_window)


@dataclass(frozen=True)
class MDConfig:
    """MD stability test (:mod:`ekd.md`): CH3ONO box, time-step sweep, failure at d_min < min_distance.

    Defaults are the paper's scale (448 molecules, 10 ps, 8 models x 10 runs); the embedded default
    YAML shrinks them to fit a 2-core CPU.
    """

    enabled: bool = True  # a stage of `ekd run` (after evaluation); `ekd md-stability` runs it alone
    n_molecules: int = 448
    density: float = 1.0  # g/cm^3
    temperature: float = 300.0  # K: Maxwell-Boltzmann start and Langevin equilibration
    equilibration_ps: float = 0.1  # Langevin (friction 0.01/fs) at the run's time step, then NVE
    t_max_ps: float = 10.0  # NVE length of a run that does not fail
    timesteps_fs: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
    n_runs: int = 10  # velocity seeds per model
    n_models: int | None = None  # members per role (None: all of them)
    roles: tuple[str, ...] = ("teacher", "student_gen1", "student_gen2", "control")
    engine: Literal["ase", "lammps"] = "ase"
    min_distance: float = 0.5  # Angstrom: a run fails at the first frame with a closer pair
    dtype: Literal["float32", "float64"] = "float32"  # of the exported models
    workers: int = 2

    def __post_init__(self):
        check_finite(self)
        check(self.n_molecules >= 1, "n_molecules", "must be >= 1", self.n_molecules)
        check(self.density > 0, "density", "must be > 0 (g/cm^3)", self.density)
        check(self.temperature > 0, "temperature", "must be > 0 (K)", self.temperature)
        check(self.equilibration_ps >= 0, "equilibration_ps", "must be >= 0", self.equilibration_ps)
        check(self.t_max_ps > 0, "t_max_ps", "must be > 0", self.t_max_ps)
        check(len(self.timesteps_fs) >= 1, "timesteps_fs", "needs at least one time step", self.timesteps_fs)
        check(all(dt > 0 for dt in self.timesteps_fs), "timesteps_fs", "must all be > 0 (fs)", self.timesteps_fs)
        check(self.n_runs >= 1, "n_runs", "must be >= 1", self.n_runs)
        check(self.n_models is None or self.n_models >= 1, "n_models", "must be >= 1 or null", self.n_models)
        check(len(self.roles) >= 1, "roles", "needs at least one role", self.roles)
        check(self.min_distance > 0, "min_distance", "must be > 0", self.min_distance)
        check(self.workers >= 1, "workers", "must be >= 1", self.workers)


@dataclass(frozen=True)
class SlurmConfig:
    """How ``ekd run --executor slurm`` submits the members (:mod:`ekd.workflow.slurm`): how a run
    is executed, not what it computes, so part of no digest."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # per member task; a task that runs out is requeued and continues from the member's checkpoint
    time_minutes: int = 120
    cpus_per_task: int | None = None  # None: train.threads
    gpus_per_task: int = 0  # a member trains on its GPU with train.device cuda
    mem_gb: float | None = None
    max_running: int | None = None  # array tasks of a stage at once (None: all)
    max_requeues: int = 3  # times a task that ran out of time (or was preempted) is requeued
    sbatch: dict[str, Any] = field(default_factory=dict)  # more options: {constraint: a100} -> --constraint=a100
    setup: tuple[str, ...] = ()  # shell lines run before each task (module load ..., a venv)
    poll_seconds: float = 30.0  # how often the driver asks squeue

    def __post_init__(self):
        check_finite(self)
        check(self.time_minutes >= 1, "time_minutes", "must be >= 1", self.time_minutes)
        check(self.cpus_per_task is None or self.cpus_per_task >= 1, "cpus_per_task", "must be >= 1 or null",
              self.cpus_per_task)  # fmt: skip
        check(self.gpus_per_task >= 0, "gpus_per_task", "must be >= 0", self.gpus_per_task)
        check(self.mem_gb is None or self.mem_gb > 0, "mem_gb", "must be > 0 or null", self.mem_gb)
        check(self.max_running is None or self.max_running >= 1, "max_running", "must be >= 1 or null",
              self.max_running)  # fmt: skip
        check(self.max_requeues >= 0, "max_requeues", "must be >= 0", self.max_requeues)
        check(self.poll_seconds > 0, "poll_seconds", "must be > 0", self.poll_seconds)
        # what ekd's own submission decides (which tasks, where their logs go, the requeue signal)
        ours = {"array", "output", "error", "job_name", "open_mode", "signal", "wrap", "parsable"}
        taken = sorted(k for k in self.sbatch if str(k).replace("-", "_") in ours)
        check(not taken, "sbatch", f"{taken[0]!r} is set by ekd" if taken else "", self.sbatch)


#: Config fields that say how a run is executed, with their defaults: part of no digest, and
#: written into a configuration's records only when set
EXECUTION_DEFAULTS = {"executor": "local", "slurm": to_plain(SlurmConfig())}
# ensemble fields added after runs were stored: left out of config.yaml and digests at their defaults
ENSEMBLE_ADDED = {"student_uncertainty": False}


@dataclass(frozen=True)
class Config:
    name: str = "default"
    seed: int = 0
    run_dir: str = "runs/default"
    workers: int = 2  # independent jobs (members) run in parallel processes
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    md: MDConfig = field(default_factory=MDConfig)
    # how the members are trained: here ("local": worker processes) or as Slurm jobs (ekd.workflow.slurm)
    executor: Literal["local", "slurm"] = "local"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self):
        check(self.workers >= 1, "workers", "must be >= 1", self.workers)
        check(0 <= self.seed < 2**32, "seed", "must be >= 0 and < 2**32", self.seed)
        check(
            bool(self.run_dir.strip()),
            "run_dir",
            "must name a directory (empty, the run would be written into the current directory)",
            self.run_dir,
        )

    @property
    def student_model(self) -> ModelConfig:
        return self.ensemble.student_model or self.model

    def variant_model(self, name: str | None) -> ModelConfig:
        """The student architecture of ``ensemble.student_variants[name]`` (None: the students')."""
        if name is None:
            return self.student_model
        return replace(self.student_model, **self.ensemble.student_variants[name])

    def to_dict(self) -> dict:
        # executor and slurm only when set: the records of configurations made before they existed
        # (config.yaml, metrics.json) stay as they were
        d = store.without_added_defaults(to_plain(self), EXECUTION_DEFAULTS)
        d["train"] = store.without_added_defaults(d["train"], TRAIN_EXECUTION_DEFAULTS)
        d["ensemble"] = store.without_added_defaults(d["ensemble"], ENSEMBLE_ADDED)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def digest(self, *sections: str) -> str:
        """Content hash of the named sections (all if none): what a cached result depends on."""
        d = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_DEFAULTS}
        d["train"] = {k: v for k, v in d["train"].items() if k not in TRAIN_EXECUTION_DEFAULTS}
        # the torsion scans shape no trained result (DataConfig.identity)
        d["data"] = {**d["data"], "generate": self.data.identity()["generate"]}
        if sections:
            d = {s: d[s] for s in sections}
        return store.digest(d)
