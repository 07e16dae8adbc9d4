"""A run directory and its stages (:class:`Run`): data and splits, force labels, training of
the members (in worker processes), then evaluation, report and MD (:mod:`.results`)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import store
from ..config import Config
from ..config.schema import SlurmConfig
from ..data import Dataset, Units, load_dataset
from ..jobs import run_parallel
from . import results
from .common import log, run_digest
from .inputs import (
    DataPaths,
    check_test_elements,
    data_units,
    load_member_data,
    load_test_pool,
    load_train,
    make_splits,
    member_splits,
    prepare_data,
)
from .plan import EXTERNAL, Group, UnknownGroupError, describe, member_seed, plan

#: Config fields that say how a run is executed, at their defaults
EXECUTION_DEFAULTS_OF_CONFIG = {"executor": "local", "slurm": SlurmConfig()}


def _same_config(stamp: Path, cfg: Config) -> bool:
    """Whether ``stamp`` (a run's config.yaml) holds ``cfg``, up to where the run directory is and
    how many processes (or which executor, on which device) work in it."""
    from ..config import ConfigError, load

    try:
        old = load(stamp)
    except (ConfigError, OSError):
        return False
    train = replace(old.train, device=cfg.train.device)
    return (
        replace(old, run_dir=cfg.run_dir, workers=cfg.workers, executor=cfg.executor, slurm=cfg.slurm, train=train)
        == cfg
    )


def _train_job(args: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from .. import config as config_mod
    from ..training.train import MemberSpec, train_member

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
        # what the run computes, not how it is executed (ekd run --executor): its records (config.yaml,
        # metrics.json, the members' jobs) are the same whichever executor makes them
        self.cfg = replace(self.cfg, **EXECUTION_DEFAULTS_OF_CONFIG)
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # the record of what the run was created with, written once: a later run with another
        # configuration (refused per stage where its inputs differ) must not rewrite it
        stamp = self.run_dir / "config.yaml"
        # without the device (auto): a run made on a GPU node resumes on a CPU one, and vice versa
        text = replace(self.cfg, train=replace(self.cfg.train, device="auto")).to_yaml()
        if not store.create_once(stamp, text) and self.progress and not _same_config(stamp, self.cfg):
            log(f"note: {stamp} records the configuration this run directory was created with, not this one")
        self._paths: DataPaths | None = None
        self._train: Dataset | None = None
        self._splits: dict[str, np.ndarray] | None = None

    @property
    def device(self):
        """The torch device of this process's labelling, evaluation and scoring (``train.device``)."""
        from ..ops.devices import resolve_device

        return resolve_device(self.cfg.train.device, "train.device")

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
            teacher = self.cfg.ensemble.external_teacher
            if isinstance(teacher, str) and teacher.startswith("torchani:"):
                name = teacher.replace(":", "_")
            else:  # calculator specs hold paths and colons: their digest names them
                name = f"calculators_{run_digest(teacher)[:12]}"
            return self.run_dir / "labels" / f"external_{name}.h5"
        if group.teacher_members is not None:
            return self.run_dir / "labels" / f"gen{group.generation}_k{group.teacher_members}.h5"
        return self.run_dir / "labels" / f"gen{group.generation}.h5"

    def _teaching_ensemble(self, group: Group) -> tuple[list, str, str]:
        """(members with ``.predict``, digest of what they are, description) of the ensemble that
        labels ``group``: the trained group it learns from (its first ``teacher_members``), or the
        external teacher."""
        from ..training.train import load_member

        if group.labels_from == EXTERNAL:
            from ..training.external import load_external_teacher

            e = self.cfg.ensemble
            members, identity = load_external_teacher(e.external_teacher, e.external_teacher_dir)
            return members, run_digest(identity), f"{len(members)} {e.external_teacher} members"
        teacher = self.group(group.labels_from)
        n = teacher.n_members if group.teacher_members is None else group.teacher_members
        digest = run_digest([self.member_digest(teacher, m) for m in range(n)])
        # loaded lazily: a finished label file needs no model
        device = self.device
        members = [_LazyMember(self.member_dir(teacher, m), lambda d: load_member(d, device)) for m in range(n)]
        return members, digest, f"{n} {teacher.label} members"

    def make_labels(self, group: Group) -> Path:
        """Ensemble forces of the teaching ensemble, written as an augmented ANI-layout file and
        as extxyz beside it (``gen1.h5``, ``gen1.xyz``) for other trainers."""
        from ..training.distill import label_dataset, write_augmented

        path = self.labels_path(group)
        done = path.with_suffix(".json")
        members, teachers_digest, what = self._teaching_ensemble(group)
        digest = run_digest({"teachers": teachers_digest, "data": self.data_digest()})
        if done.exists() and json.loads(done.read_text()).get("digest") == digest and path.exists():
            from ..training.distill import check_labels_file

            check_labels_file(path, len(self.train_data))
            if self._labels_hold_the_pool(path):
                if not path.with_suffix(".xyz").exists():  # interrupted, or made before ekd wrote it
                    self._labels_xyz(path)
                return path
            log(f"{path} was written before files recorded configuration identities; remaking it")
        log(f"labelling {len(self.train_data)} configurations with the ensemble of {what} -> {path}")
        labelled = label_dataset(members, self.train_data)
        write_augmented(
            labelled,
            path,
            self.cfg.data.energy_key,
            self._file_units(),
            reference_forces_key=self.cfg.data.reference_forces_key,
        )
        # before the record: an interruption between the two remakes both
        self._labels_xyz(path)
        store.atomic_json(done, {"digest": digest, "teachers": group.labels_from, "n_members": len(members)})
        return path

    def _labels_xyz(self, path: Path) -> Path:
        """The extxyz copy of labels file ``path``, made from that file (not from the labelling in
        memory), so that a resumed run writes the same bytes as an uninterrupted one."""
        from ..training.distill import labels_file_keys, write_augmented_xyz

        d = self.cfg.data
        keys = labels_file_keys(d.energy_key, d.reference_forces_key, d.reference_forces_key is not None)
        labels = load_dataset(path, keys, self._file_units(), check_plausible=False)
        return write_augmented_xyz(labels, path.with_suffix(".xyz"))

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
        return run_digest(
            {
                "data": self.data_digest(),
                "data_cfg": self.cfg.data.identity(),  # asdict(data) but the torsion scans
                "model": asdict(self.model_of(group)),
                "train": self.cfg.train.identity(),
                "group": group.identity(),
                "member": m,
                "seed": self.cfg.seed,
                "labels": (
                    json.loads(self.labels_path(group).with_suffix(".json").read_text())["digest"]
                    if group.labels_from
                    else None
                ),
                # only when on: members trained before the head existed keep their digests
                **({"uncertainty": True} if self.has_sigma_head(group) else {}),
            }
        )

    def has_sigma_head(self, group: Group) -> bool:
        """Whether ``group``'s members get the uncertainty head (ensemble.student_uncertainty:
        students of every generation, trained on their labels' spread)."""
        return bool(self.cfg.ensemble.student_uncertainty and group.role == "student" and group.labels_from)

    def training_inputs(self, group: Group) -> tuple[Path, dict[str, str]]:
        """(data file, {dataset property: file key}) that ``group``'s members train on; a student
        group's labels are made first if needed. Read it with :meth:`member_inputs` and
        :func:`load_member_data`, which also carry its units and the member's split."""
        keys = {"energy": self.cfg.data.energy_key}
        if group.labels_from:
            keys["ensemble_forces"] = "ekd_ensemble.forces"
            if self.has_sigma_head(group):
                keys["ensemble_forces_std"] = "ekd_ensemble.forces_std"
            return self.make_labels(group), keys
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
        """The :class:`ekd.training.train.MemberSpec` fields of member ``m`` of ``group``."""
        return {
            "role": group.role,
            "generation": group.generation,
            "member": m,
            "seed": member_seed(self.cfg, group, m),
            "energy": "energy",
            "forces": group.forces,
            **({"variant": group.variant} if group.variant else {}),
            **({"uncertainty": "ensemble_forces_std"} if self.has_sigma_head(group) else {}),
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
            log(f"{group.label}: reusing {len(results)} finished member(s)")
        if jobs:
            log(f"{group.label}: training {len(jobs)} member(s) on {self.cfg.workers} worker(s)")
            done = run_parallel(_train_job, jobs, self.cfg.workers, group.label, "member", self.progress)
            for job, res in zip(jobs, done, strict=True):
                results[job["member"]] = res
        return [results[m] for m in members]

    # --- what the trained members are used for (ekd.workflow.results)
    def test_sets(self) -> dict[str, tuple[Dataset, str]]:
        return results.test_sets(self)

    def predictions(self, group: Group, m: int, name: str, data: Dataset) -> dict[str, np.ndarray]:
        """A member's predictions on a test set, cached next to the member."""
        return results.predictions(self, group, m, name, data)

    def evaluate(self) -> dict:
        return results.evaluate(self)

    def report(self, metrics: dict) -> Path:
        from ..evaluation.report import write_report

        return write_report(metrics, self.run_dir, notes=describe(self.cfg))

    def md_stability(
        self, metrics: dict | None = None, strict_roles: bool = False, progress: bool | None = None
    ) -> dict:
        """The MD stability sweep over this run's members: :func:`ekd.workflow.results.md_stability`."""
        return results.md_stability(self, metrics, strict_roles, progress)

    # --- everything
    def run_all(
        self, stop_after: str | None = None, on_stage: Callable[[str], None] | None = None, executor=None
    ) -> dict:
        """``ekd run``: every stage, holding the run directory (one process at a time).

        executor: trains the groups and runs the MD sweep elsewhere (its ``train_group`` and
        ``md_stability``; :class:`ekd.workflow.slurm.SlurmExecutor`), holding the run directory
        its own way (``hold()``); None: here, in worker processes."""
        with self.lock() if executor is None else executor.hold():
            return self._run_all(stop_after, on_stage, executor or self)

    def _run_all(self, stop_after: str | None, on_stage: Callable[[str], None] | None, executor) -> dict:
        t0 = time.time()
        if self.cfg.md.enabled:
            from ..md.stability import select_roles

            # a misspelt md.roles entry is found before the training, not after it
            select_roles(self.cfg.md.roles, [g.label for g in self.groups()])
        _ = self.paths
        # bad data is found before any training, not after it
        check_test_elements(self.train_data, load_test_pool(self.cfg, self.paths), self.paths.test)
        log(f"training pool: {len(self.train_data)} configurations; test split {len(self.splits['test'])}")
        for group in self.groups():
            executor.train_group(group)
            if on_stage:
                on_stage(group.label)
            if stop_after == group.label:
                return {}
        metrics = self.evaluate()
        path = self.report(metrics)
        log(f"report: {path} ({time.time() - t0:.0f} s)")
        if stop_after == "evaluate":
            return metrics
        if self.cfg.md.enabled:
            log(f"MD stability ({self.cfg.md.engine}): roles {', '.join(self.cfg.md.roles)}")
            executor.md_stability(metrics)
            metrics = json.loads((self.run_dir / "metrics.json").read_text())
            log(f"report with MD stability: {path} ({time.time() - t0:.0f} s)")
            if on_stage:
                on_stage("md")
        return metrics


def run(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> dict:
    """``ekd run``: the whole workflow, resumable."""
    return Run(cfg, Path(run_dir or cfg.run_dir), progress).run_all()
