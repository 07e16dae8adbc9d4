"""The EKD workflow: data -> teachers -> ensemble forces -> students (generation 1..g) ->
controls and baseline -> evaluation -> report, in one resumable run directory.

Layout of a run directory::

    config.yaml                 the effective configuration of the run
    data/train.h5, data/test.h5 generated (or the configured files are used in place)
    splits.npz                  common test split + each member's train/valid split
    gen0/teacher/member_00/     one directory per trained member (see ekd.train)
    labels/gen1.h5              augmented dataset: energies + ensemble forces of generation 0
    gen1/student/member_00/ ... students of generation 1 (taught by gen0), gen2 by gen1, ...
    control/member_00/          student architecture, energies only
    baseline/member_00/         student architecture, the dataset's own forces
    metrics.json, report.md, figures/

Resuming: every stage output records a digest of exactly what it was computed from (the
relevant config sections and, for students, the labels they learned from). A rerun reuses
outputs whose digest matches, continues interrupted members from their checkpoints, and refuses
to mix in an output made from a different configuration (it says which and what to do).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import store
from .config import Config
from .data import DataFileError, Dataset, Units, load_dataset, random_split, resolve_units
from .jobs import run_parallel
from .store import RunDirError


class UnknownGroupError(ValueError, KeyError):
    """A group label that the run's configuration does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


def _log(msg: str) -> None:
    print(f"[ekd {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _atomic_json(path: Path, obj) -> None:
    store.atomic_json(path, obj)


def _digest(obj) -> str:
    # str() of what JSON cannot hold (paths): the digests of existing run directories use it
    return store.digest(obj, default=str)


def _same_config(stamp: Path, cfg: Config) -> bool:
    """Whether ``stamp`` (a run's config.yaml) holds ``cfg``, up to where the run directory is and
    how many processes work in it."""
    from dataclasses import replace

    from .config import ConfigError, load

    try:
        old = load(stamp)
    except (ConfigError, OSError):
        return False
    return replace(old, run_dir=cfg.run_dir, workers=cfg.workers) == cfg


# ------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class DataPaths:
    train: Path
    test: Path | None


def prepare_data(cfg: Config, run_dir: Path, progress: bool = True) -> DataPaths:
    """Generate the reference data if configured (resumable), else check the given files."""
    d = cfg.data
    generated = d.train == "generate" or d.test == "generate"
    train = test = None
    if generated:
        from .data.generate import generate

        opts = d.generate_options(cfg.seed)
        out = run_dir / "data"
        # what shapes the data, not how many processes made it
        shape = {k: v for k, v in opts.identity().items() if k not in ("workers", "chunk_size")}
        store.claim(
            out,
            _digest(shape),
            "generated data",
            hint=f"; the new run can reuse the molecules computed here: copy {out / '.parts'} to "
            "<new run dir>/data/.parts first (the generator recomputes only what the new options change)",
        )
        if (out / "done.json").exists():
            train, test = out / "train.h5", out / "test.h5"
        else:
            levels = ", ".join(dict.fromkeys(opts.levels + opts.test_levels))
            _log(f"generating reference data ({levels}) into {out}")
            train, test = generate(opts, out, progress=progress)
            _atomic_json(out / "done.json", {"train": str(train), "test": str(test)})
        train, test = Path(train), Path(test)
    if d.train != "generate":
        train = Path(d.train)
    if d.test != "generate":
        test = None if d.test is None else Path(d.test)
    for label, p in (("data.train", train), ("data.test", test)):
        if p is not None and not p.exists():
            raise FileNotFoundError(f"{label}: data file {p} does not exist")
    return DataPaths(train, test)


def data_units(cfg: Config, path: Path, which: str = "train") -> Units:
    """The units of data file ``path``: THE one place where they are decided, in the main process;
    member jobs receive the result (see :meth:`Run.member_inputs`).

    which: "train" (``data.train`` and the labels files made from it) or "test" (``data.test``).
    A given file is in the configured units (``data.energy_unit`` / ``data.length_unit``; for the
    test file ``data.test_energy_unit`` if set), which must agree with the file's own
    ``energy_unit`` / ``length_unit`` attributes if it has them; a generated file carries ekd's.
    """
    d = cfg.data
    if which == "train":
        declared = None if d.train == "generate" else Units(d.energy_unit, d.length_unit)
        names = ("data.energy_unit", "data.length_unit")
    elif which == "test":
        declared = None if d.test == "generate" else Units(d.test_energy_unit or d.energy_unit, d.length_unit)
        names = ("data.test_energy_unit" if d.test_energy_unit else "data.energy_unit", "data.length_unit")
    else:
        raise ValueError(f"data_units: which must be 'train' or 'test', got {which!r}")
    return resolve_units(path, declared, names)


def load_pool(path: Path, keys: dict[str, str], units: Units, check_plausible: bool = True) -> Dataset:
    """Every configuration of ``path`` with a known energy, in internal units: what the main
    process and every member job read, so that both see the same configurations."""
    return load_dataset(path, keys, units, check_plausible=check_plausible).require("energy")


def train_keys(cfg: Config) -> dict[str, str]:
    keys = {"energy": cfg.data.energy_key}
    if cfg.data.reference_forces_key:
        keys["reference_forces"] = cfg.data.reference_forces_key
    return keys


def load_train(cfg: Config, paths: DataPaths) -> Dataset:
    """The training pool: every configuration with a known energy."""
    return load_pool(paths.train, train_keys(cfg), data_units(cfg, paths.train, "train"))


def load_test_pool(cfg: Config, paths: DataPaths) -> Dataset | None:
    """The out-of-sample pool, read with the test file's own key names and units."""
    if paths.test is None:
        return None
    d = cfg.data
    keys = {"energy": d.test_energy_key or d.energy_key}
    forces = d.test_reference_forces_key or d.reference_forces_key
    if forces:
        keys["reference_forces"] = forces
    return load_pool(paths.test, keys, data_units(cfg, paths.test, "test"))


def check_test_elements(train: Dataset, test: Dataset | None, test_path: Path | None = None) -> None:
    """Refuse an out-of-sample pool with elements the training pool does not have: no member
    could predict them, and it would only show after all training."""
    if test is None:
        return
    from ase.data import chemical_symbols

    missing = sorted(set(test.elements) - set(train.elements))
    if not missing:
        return
    parts = []
    for z in missing:
        names = sorted({test.molecule_names[m] for m in np.unique(test.molecule[(test.species == z).any(axis=1)])})
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        parts.append(f"{chemical_symbols[z]} (in {shown})")
    raise DataFileError(
        f"data.test {test_path or test.source}: element(s) {'; '.join(parts)} occur only in the out-of-sample pool, "
        f"not in the training pool {train.source} (elements {[chemical_symbols[z] for z in train.elements]}); "
        "no model can predict them: remove those molecules from the test file or add the elements to the training data"
    )


# ------------------------------------------------------------------------------------------
# splits


#: configurations the splits need at the least: one test, one validation, one training
MIN_CONFIGURATIONS = 3


def make_splits(cfg: Config, n: int, source: str = "the training pool") -> dict[str, np.ndarray]:
    """The common test split and one (train, valid) split per member seed slot, as positions in
    the training pool (see :meth:`Run.member_inputs` for what jobs receive).

    Member m of any role uses split slot m: teacher m and student m see the same training
    configurations, while different members see different ones.
    """
    if n < MIN_CONFIGURATIONS:
        raise DataFileError(
            f"{source}: {n} configuration(s) with a known energy; the splits need at least {MIN_CONFIGURATIONS} "
            "(one for the test split, one for validation, one to train on), and many more to train a useful model"
        )
    all_idx = np.arange(n)
    pool, test = random_split(all_idx, cfg.data.test_fraction, seed=cfg.seed)
    out = {"test": test, "pool": pool}
    k = max(cfg.ensemble.n_teachers, cfg.ensemble.n_students, cfg.ensemble.study_members or 0)
    for m in range(k):
        train, valid = random_split(pool, cfg.data.valid_fraction, seed=cfg.seed * 7919 + 1000 + m)
        out[f"train_{m}"] = train
        out[f"valid_{m}"] = valid
    return out


def member_splits(splits: dict[str, np.ndarray], member: int) -> dict[str, np.ndarray]:
    return {"train": splits[f"train_{member}"], "valid": splits[f"valid_{member}"], "test": splits["test"]}


# ------------------------------------------------------------------------------------------
# roles


@dataclass(frozen=True)
class Group:
    """A set of members trained the same way (one row of the report)."""

    label: str  # e.g. teacher, student_gen1, control, baseline
    role: str
    generation: int
    n_members: int
    forces: str | None  # dataset property used as force target
    directory: str  # relative to the run dir
    labels_from: str | None = None  # label of the group whose ensemble made the force labels
    # the studies (docs/results.md): None for the main groups
    study: str | None = None  # "capacity", "teachers" (ensemble size) or "external"
    variant: str | None = None  # capacity: the ensemble.student_variants entry (student architecture)
    teacher_members: int | None = None  # teachers: labels from the first k members of labels_from


#: labels_from of the students of an external (not trained here) teacher ensemble
EXTERNAL = "external"


def plan(cfg: Config) -> list[Group]:
    """Every group of members of a run, in training order: the main groups (teachers, students by
    generation, controls, baseline), then the studies' groups (capacity variants, students of
    teacher subsets, students of an external teacher)."""
    e = cfg.ensemble
    groups = [Group("teacher", "teacher", 0, e.n_teachers, None, "gen0/teacher")]
    previous = "teacher"
    for g in range(1, e.generations + 1):
        label = f"student_gen{g}"
        groups.append(Group(label, "student", g, e.n_students, "ensemble_forces", f"gen{g}/student", previous))
        previous = label
    if e.controls:
        groups.append(Group("control", "control", 1, e.n_students, None, "control"))
    if e.baseline and cfg.data.reference_forces_key:
        groups.append(Group("baseline", "baseline", 1, e.n_students, "reference_forces", "baseline"))
    ns = e.study_members or e.n_students
    for name in e.student_variants:
        groups.append(
            Group(
                f"student_gen1@{name}",
                "student",
                1,
                ns,
                "ensemble_forces",
                f"variants/{name}/student",
                "teacher",
                study="capacity",
                variant=name,
            )
        )
        if e.controls:
            groups.append(
                Group(
                    f"control@{name}",
                    "control",
                    1,
                    ns,
                    None,
                    f"variants/{name}/control",
                    study="capacity",
                    variant=name,
                )
            )
    for k in e.teacher_subsets:
        groups.append(
            Group(
                f"student_k{k}",
                "student",
                1,
                ns,
                "ensemble_forces",
                f"teachers_k{k}/student",
                "teacher",
                study="teachers",
                teacher_members=k,
            )
        )
    if e.external_teacher:
        groups.append(
            Group(
                "student_external",
                "student",
                1,
                ns,
                "ensemble_forces",
                "external/student",
                EXTERNAL,
                study="external",
            )
        )
    return groups


def _seed(cfg: Config, group: Group, member: int) -> int:
    # distinct and reproducible per (role, generation, member)
    return int(_digest([cfg.seed, group.label, member]), 16) % (2**31)


# ------------------------------------------------------------------------------------------
# training jobs (run in worker processes)


def load_member_data(inputs: dict) -> tuple[Dataset, dict[str, np.ndarray]]:
    """The dataset and splits (positions in it) that a member job trains on, from its inputs
    (:meth:`Run.member_inputs`): the data file read with the units the main process decided, and
    the splits mapped from configuration identities (never from positions, which a filter
    shifts). Configurations whose force target is unknown (NaN) leave the train/valid splits:
    what remains is the member's split minus those."""
    dataset = load_pool(Path(inputs["data"]), inputs["keys"], Units(*inputs["units"]), check_plausible=False)
    targets = [name for name in inputs["keys"] if name != "energy"]
    splits = {}
    for name, ids in inputs["splits"].items():
        pos = dataset.positions(ids, f"the {name} split of {inputs['what']}")
        if name != "test":
            for target in targets:
                pos = pos[dataset.mask(target)[pos]]
            if len(pos) == 0:
                raise DataFileError(
                    f"{dataset.source}: no configuration of the {name} split of {inputs['what']} has {targets} "
                    f"(all NaN); {inputs['what']} cannot be trained on this data"
                )
        splits[name] = pos
    return dataset, splits


def _train_job(args: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from . import config as config_mod
    from .train import MemberSpec, train_member

    cfg = config_mod.loads(args["config"])
    dataset, splits = load_member_data(args)
    spec = MemberSpec(**args["spec"])
    return train_member(spec, cfg, dataset, splits, Path(args["out_dir"]), progress=False)


class _LazyMember:
    """A trained member loaded on first use (a finished label file needs none)."""

    def __init__(self, directory: Path, loader):
        self.directory, self._loader, self._member = directory, loader, None

    def predict(self, *args, **kwargs):
        if self._member is None:
            self._member = self._loader(self.directory)
        return self._member.predict(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# the workflow


@dataclass
class Run:
    """A run directory and its configuration; each stage is a method."""

    cfg: Config
    run_dir: Path
    progress: bool = True

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # the record of what the run was created with, written once: a later run with another
        # configuration (refused per stage where its inputs differ) must not rewrite it
        stamp = self.run_dir / "config.yaml"
        text = self.cfg.to_yaml()
        if not store.create_once(stamp, text) and self.progress and not _same_config(stamp, self.cfg):
            _log(f"note: {stamp} records the configuration this run directory was created with, not this one")
        self._paths: DataPaths | None = None
        self._train: Dataset | None = None
        self._splits: dict[str, np.ndarray] | None = None

    # --- data and splits
    @property
    def paths(self) -> DataPaths:
        if self._paths is None:
            self._paths = prepare_data(self.cfg, self.run_dir, self.progress)
        return self._paths

    @property
    def train_data(self) -> Dataset:
        if self._train is None:
            self._train = load_train(self.cfg, self.paths)
        return self._train

    @property
    def splits(self) -> dict[str, np.ndarray]:
        if self._splits is None:
            self._splits = make_splits(self.cfg, len(self.train_data), f"data.train {self.paths.train}")
            path = self.run_dir / "splits.npz"
            if not path.exists():
                splits = self._splits
                store.atomic_write(path, lambda tmp: np.savez(tmp, **splits))
        return self._splits

    def group_dir(self, group: Group) -> Path:
        return self.run_dir / group.directory

    def member_dir(self, group: Group, m: int) -> Path:
        return self.group_dir(group) / f"member_{m:02d}"

    def groups(self) -> list[Group]:
        return plan(self.cfg)

    def group(self, label: str) -> Group:
        for g in self.groups():
            if g.label == label:
                return g
        raise UnknownGroupError(f"no group {label!r} in this run; groups: {[g.label for g in self.groups()]}")

    def lock(self):
        """Context manager: hold this run directory for this process (see :mod:`ekd.store`);
        another process holding it raises :class:`ekd.store.RunDirBusyError` at once."""
        return store.lock_dir(self.run_dir)

    # --- labels
    def labels_path(self, group: Group) -> Path:
        if group.labels_from == EXTERNAL:
            name = self.cfg.ensemble.external_teacher.replace(":", "_")
            return self.run_dir / "labels" / f"external_{name}.h5"
        if group.teacher_members is not None:
            return self.run_dir / "labels" / f"gen{group.generation}_k{group.teacher_members}.h5"
        return self.run_dir / "labels" / f"gen{group.generation}.h5"

    def _teaching_ensemble(self, group: Group) -> tuple[list, str, str]:
        """(members with ``.predict``, digest of what they are, description) of the ensemble that
        labels ``group``: the trained group it learns from (its first ``teacher_members``), or the
        external teacher."""
        from .train import load_member

        if group.labels_from == EXTERNAL:
            from .external import load_external_teacher

            e = self.cfg.ensemble
            members, identity = load_external_teacher(e.external_teacher, e.external_teacher_dir)
            return members, _digest(identity), f"{len(members)} {e.external_teacher} members"
        teacher = self.group(group.labels_from)
        n = teacher.n_members if group.teacher_members is None else group.teacher_members
        digest = _digest([self.member_digest(teacher, m) for m in range(n)])
        # loaded lazily: a finished label file needs no model
        members = [_LazyMember(self.member_dir(teacher, m), load_member) for m in range(n)]
        return members, digest, f"{n} {teacher.label} members"

    def make_labels(self, group: Group) -> Path:
        """Ensemble forces of the teaching ensemble, written as an augmented ANI-layout file."""
        from .distill import label_dataset, write_augmented

        path = self.labels_path(group)
        done = path.with_suffix(".json")
        members, teachers_digest, what = self._teaching_ensemble(group)
        digest = _digest({"teachers": teachers_digest, "data": self.data_digest()})
        if done.exists() and json.loads(done.read_text()).get("digest") == digest and path.exists():
            from .distill import check_labels_file

            check_labels_file(path, len(self.train_data))
            if self._labels_hold_the_pool(path):
                return path
            _log(f"{path} was written before files recorded configuration identities; remaking it")
        _log(f"labelling {len(self.train_data)} configurations with the ensemble of {what} -> {path}")
        labelled = label_dataset(members, self.train_data)
        write_augmented(
            labelled,
            path,
            self.cfg.data.energy_key,
            self._file_units(),
            reference_forces_key=self.cfg.data.reference_forces_key,
        )
        _atomic_json(done, {"digest": digest, "teachers": group.labels_from, "n_members": len(members)})
        return path

    def _labels_hold_the_pool(self, path: Path) -> bool:
        """Whether a labels file holds exactly the training pool's configurations by identity.
        Only a pool that a filter thinned (NaN energies) can differ: labels files written before
        they recorded each configuration's index in its group numbered the survivors 0, 1, ..."""
        pool = self.train_data
        if all(np.array_equal(np.sort(pool.conformer[pool.molecule == m]), np.arange((pool.molecule == m).sum()))
               for m in np.unique(pool.molecule)):  # fmt: skip
            return True
        labels = load_dataset(path, {"energy": self.cfg.data.energy_key}, self._file_units(), check_plausible=False)
        return sorted(labels.ids()) == sorted(pool.ids())

    def _file_units(self) -> Units:
        """The training file's units: labels files are written in them and read back with them."""
        return data_units(self.cfg, self.paths.train, "train")

    def data_digest(self) -> str:
        return store.file_digest(self.paths.train)

    # --- members
    def model_of(self, group: Group):
        """The architecture of ``group``'s members."""
        return self.cfg.model if group.role == "teacher" else self.cfg.variant_model(group.variant)

    def member_digest(self, group: Group, m: int) -> str:
        # the study fields enter only when set, so that the main groups keep their digests
        study = ("study", "variant", "teacher_members")
        return _digest(
            {
                "data": self.data_digest(),
                "data_cfg": asdict(self.cfg.data),
                "model": asdict(self.model_of(group)),
                "train": self.cfg.train.identity(),
                "group": {k: v for k, v in asdict(group).items() if not (k in study and v is None)},
                "member": m,
                "seed": self.cfg.seed,
                "labels": (
                    json.loads(self.labels_path(group).with_suffix(".json").read_text())["digest"]
                    if group.labels_from
                    else None
                ),
            }
        )

    def training_inputs(self, group: Group) -> tuple[Path, dict[str, str]]:
        """(data file, {dataset property: file key}) that ``group``'s members train on; a student
        group's labels are made first if needed. Read it with :meth:`member_inputs` and
        :func:`load_member_data`, which also carry its units and the member's split."""
        keys = {"energy": self.cfg.data.energy_key}
        if group.labels_from:
            return self.make_labels(group), {**keys, "ensemble_forces": "ekd_ensemble.forces"}
        if group.forces == "reference_forces":
            keys["reference_forces"] = self.cfg.data.reference_forces_key
        return self.paths.train, keys

    def member_inputs(self, group: Group, m: int, source: tuple[Path, dict[str, str]] | None = None) -> dict:
        """What member ``m`` of ``group`` trains on, as plain data for its job: the data file, its
        keys, its units (decided here, :func:`data_units`) and the member's train/valid/test
        splits as configuration identities (molecule name, conformer). Load it with
        :func:`load_member_data`. source: :meth:`training_inputs` if already made."""
        data_path, keys = source or self.training_inputs(group)
        units = self._file_units()
        pool = self.train_data
        return {
            "data": str(data_path),
            "keys": keys,
            "units": [units.energy, units.length],
            "splits": {name: pool.ids(idx) for name, idx in member_splits(self.splits, m).items()},
            "what": f"{group.label} member {m}",
        }

    def member_spec(self, group: Group, m: int) -> dict:
        """The :class:`ekd.train.MemberSpec` fields of member ``m`` of ``group``."""
        return {
            "role": group.role,
            "generation": group.generation,
            "member": m,
            "seed": _seed(self.cfg, group, m),
            "energy": "energy",
            "forces": group.forces,
            **({"variant": group.variant} if group.variant else {}),
        }

    def train_group(self, group: Group, members: Sequence[int] | None = None) -> list[dict]:
        """Train (or reuse) every member of ``group`` (or only ``members``: the tasks of a job
        array, which may run at the same time in other processes); independent jobs run in
        parallel. Returns the done.json summaries in member order."""
        if members is None:
            with self.lock():
                return self._train_members(group, range(group.n_members))
        members = sorted(set(members))
        bad = [m for m in members if not 0 <= m < group.n_members]
        if bad:
            raise ValueError(f"{group.label}: member(s) {bad} out of range; it has members 0..{group.n_members - 1}")
        with contextlib.ExitStack() as stack:
            stack.enter_context(store.lock_dir(self.run_dir, shared=True))
            for m in members:
                stack.enter_context(store.lock_dir(self.member_dir(group, m), f"{group.label} member {m}"))
            # data, splits and labels are shared by the members: made by one job, the others wait
            with store.wait_lock(self.run_dir / ".ekd-inputs.lock", "preparing data, splits and labels"):
                self.training_inputs(group)
                _ = self.splits
            return self._train_members(group, members)

    def _train_members(self, group: Group, members: Sequence[int]) -> list[dict]:
        source = self.training_inputs(group)  # labels first: the members' digests name them
        jobs, results = [], {}
        for m in members:
            out = self.member_dir(group, m)
            store.claim(out, self.member_digest(group, m), f"{group.label} member {m}")
            if (out / "done.json").exists():
                results[m] = json.loads((out / "done.json").read_text())
                continue
            spec = self.member_spec(group, m)
            jobs.append(
                {
                    "config": self.cfg.to_yaml(),
                    **self.member_inputs(group, m, source),
                    "spec": spec,
                    "out_dir": str(out),
                    "member": m,
                }
            )
        if results:
            _log(f"{group.label}: reusing {len(results)} finished member(s)")
        if jobs:
            _log(f"{group.label}: training {len(jobs)} member(s) on {self.cfg.workers} worker(s)")
            done = run_parallel(_train_job, jobs, self.cfg.workers, group.label, "member", self.progress)
            for job, res in zip(jobs, done, strict=True):
                results[job["member"]] = res
        return [results[m] for m in members]

    # --- evaluation
    def test_sets(self) -> dict[str, tuple[Dataset, str]]:
        sets = {
            "test_split": (
                self.train_data.subset(self.splits["test"]),
                "in-distribution test split of the training pool (never trained on)",
            )
        }
        pool = load_test_pool(self.cfg, self.paths)
        if pool is not None:
            sets["test_pool"] = (pool, f"out-of-sample pool ({self.paths.test.name})")
        return sets

    def predictions(self, group: Group, m: int, name: str, data: Dataset) -> dict[str, np.ndarray]:
        """A member's predictions on a test set, cached next to the member."""
        from .train import load_member

        path = self.member_dir(group, m) / f"predictions_{name}.npz"
        content = store.bytes_digest(data.coordinates.tobytes(), data.species.tobytes())
        digest = _digest([self.member_digest(group, m), name, content])
        if path.exists():
            with np.load(path) as z:
                if str(z["digest"]) == digest:
                    return {"energy": z["energy"], "forces": z["forces"]}
        energy, forces = load_member(self.member_dir(group, m)).predict(data, forces=True)
        store.atomic_write(path, lambda tmp: np.savez(tmp, energy=energy, forces=forces, digest=np.array(digest)))
        return {"energy": energy, "forces": forces}

    def evaluate(self) -> dict:
        from .evaluate import evaluate_role, write_metrics

        sets = self.test_sets()
        metrics: dict = {"config": self.cfg.to_dict(), "sets": {}, "roles": {}}
        for name, (data, description) in sets.items():
            metrics["sets"][name] = {
                "description": description,
                "n_configurations": len(data),
                "n_molecules": int(len(np.unique(data.molecule))),
            }
        for group in self.groups():
            entry = {"role": group.role, "generation": group.generation, "n_members": group.n_members}
            if group.study:
                entry.update(study=group.study, variant=group.variant, teacher_members=group.teacher_members)
                if group.variant:
                    entry["model"] = asdict(self.model_of(group))
            for name, (data, _) in sets.items():
                preds = [self.predictions(group, m, name, data) for m in range(group.n_members)]
                reference = {
                    "energy": data.properties["energy"],
                    "forces": data.properties.get("reference_forces"),
                    "molecule": data.molecule,
                    "species": data.species,
                }
                entry[name] = evaluate_role(
                    {
                        "energy": np.stack([p["energy"] for p in preds]),
                        "forces": np.stack([p["forces"] for p in preds]),
                    },
                    reference,
                    self.cfg.evaluate.conformer_window,
                )
            metrics["roles"][group.label] = entry
        write_metrics(self.run_dir / "metrics.json", metrics)
        return metrics

    def report(self, metrics: dict) -> Path:
        from .report import write_report

        return write_report(metrics, self.run_dir, notes=describe(self.cfg))

    def md_stability(
        self, metrics: dict | None = None, strict_roles: bool = False, progress: bool | None = None
    ) -> dict:
        """The MD stability sweep of ``cfg.md`` over this run's members (resumable; see
        :mod:`ekd.md.stability`): the members of the groups ``md.roles`` names are exported to
        ``md/models/`` (once) and their files handed to :func:`ekd.md.stability.md_stability`. Its
        table joins ``metrics.json`` (key ``md_stability``, per engine) and its section the
        report, when the run has been evaluated. strict_roles: every name of ``md.roles`` must be
        a group of the run (see :func:`ekd.md.stability.select_roles`); progress: of the sweep
        (None: this run's)."""
        from .evaluate import load_metrics, write_metrics
        from .md.stability import md_stability, select_roles

        md = self.cfg.md
        roles = select_roles(md.roles, [g.label for g in self.groups()], strict=strict_roles)
        models = export_models(self, roles, md.n_models, md.dtype, self.run_dir / "md")
        out = md_stability(self.cfg, self.run_dir, models, progress=self.progress if progress is None else progress)
        path = self.run_dir / "metrics.json"
        if metrics is None and path.exists():
            metrics = load_metrics(path)
        if metrics is not None:
            entry = {
                "table": out["table"],
                "markdown": out["markdown"],
                "figure": str(Path(out["figure"]).relative_to(self.run_dir)),
                "md": asdict(self.cfg.md),
            }
            metrics = {**metrics, "md_stability": {**metrics.get("md_stability", {}), self.cfg.md.engine: entry}}
            write_metrics(path, metrics)
            self.report(metrics)
        return out

    # --- everything
    def run_all(self, stop_after: str | None = None, on_stage: Callable[[str], None] | None = None) -> dict:
        """``ekd run``: every stage, holding the run directory (one process at a time)."""
        with self.lock():
            return self._run_all(stop_after, on_stage)

    def _run_all(self, stop_after: str | None, on_stage: Callable[[str], None] | None) -> dict:
        t0 = time.time()
        if self.cfg.md.enabled:
            from .md.stability import select_roles

            # a misspelt md.roles entry is found before the training, not after it
            select_roles(self.cfg.md.roles, [g.label for g in self.groups()])
        _ = self.paths
        # bad data is found before any training, not after it
        check_test_elements(self.train_data, load_test_pool(self.cfg, self.paths), self.paths.test)
        _log(f"training pool: {len(self.train_data)} configurations; test split {len(self.splits['test'])}")
        for group in self.groups():
            self.train_group(group)
            if on_stage:
                on_stage(group.label)
            if stop_after == group.label:
                return {}
        metrics = self.evaluate()
        path = self.report(metrics)
        _log(f"report: {path} ({time.time() - t0:.0f} s)")
        if stop_after == "evaluate":
            return metrics
        if self.cfg.md.enabled:
            _log(f"MD stability ({self.cfg.md.engine}): roles {', '.join(self.cfg.md.roles)}")
            self.md_stability(metrics)
            metrics = json.loads((self.run_dir / "metrics.json").read_text())
            _log(f"report with MD stability: {path} ({time.time() - t0:.0f} s)")
            if on_stage:
                on_stage("md")
        return metrics


def export_models(run, roles, n_models: int | None, dtype: str, out_dir: Path) -> dict[str, list[str]]:
    """{group name: exported model files} of the finished members of the groups ``roles`` of
    ``run`` (a :class:`Run`), exported to ``out_dir/models/`` once: an export is reused while the
    member's done.json and the model-file format are those it was made from."""
    from .export import export_member
    from .model_file import FORMAT

    models = {}
    for role in roles:
        group = run.group(role)
        n = group.n_members if n_models is None else min(n_models, group.n_members)
        paths = []
        for m in range(n):
            src = run.member_dir(group, m)
            if not (src / "done.json").exists():
                raise FileNotFoundError(f"md-stability: {role} member {m} ({src}) is not trained yet (no done.json)")
            dst = out_dir / "models" / f"{role}_m{m:02d}_{dtype}.pt"
            stamp = dst.with_suffix(".json")
            # the model-file format is part of the stamp: exports of an earlier format (which this
            # ekd would refuse to open untrusted) are redone, not handed to the MD engines
            want = {"source": store.file_digest(src / "done.json"), "format": FORMAT}
            if not (dst.exists() and stamp.exists() and json.loads(stamp.read_text()) == want):
                dst.parent.mkdir(parents=True, exist_ok=True)
                export_member(src, dst, dtype=dtype)
                store.atomic_text(stamp, json.dumps(want))
            paths.append(str(dst))
        models[role] = paths
    return models


def describe(cfg: Config) -> str:
    m, s, t, e = cfg.model, cfg.student_model, cfg.train, cfg.ensemble
    min_epochs = f", not before epoch {t.min_epochs}" if t.min_epochs else ""
    return (
        f"config `{cfg.name}`: {e.n_teachers} teachers, {e.n_students} students per generation, "
        f"{e.generations} generation(s), controls {'on' if e.controls else 'off'}, "
        f"baseline {'on' if e.baseline else 'off'}; teacher HIPNN l_max={m.l_max}, "
        f"{m.n_interactions} interaction layers, {m.n_atom_layers}x{m.width} atom layers, "
        f"{m.n_sensitivities} sensitivities, cutoffs {m.cutoff_soft_min}/{m.cutoff_soft_max}/{m.cutoff_hard} A; "
        f"student l_max={s.l_max}, {s.n_interactions} interactions, {s.n_atom_layers}x{s.width}; "
        f"at most {t.max_epochs} epochs (lr {t.lr}, x{t.lr_factor} after {t.lr_patience}, stop after "
        f"{t.termination_patience}{min_epochs}); force-weight schedule {list(map(list, t.force_schedule))}; "
        f"data: train `{cfg.data.train}`, test `{cfg.data.test}`, energy key `{cfg.data.energy_key}`."
    )


def run(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> dict:
    """``ekd run``: the whole workflow, resumable."""
    return Run(cfg, Path(run_dir or cfg.run_dir), progress).run_all()


__all__: Sequence[str] = ["Run", "RunDirError", "describe", "make_splits", "plan", "run"]
