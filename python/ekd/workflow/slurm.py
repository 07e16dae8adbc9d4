"""``ekd run --executor slurm``: the same resumable run, its members trained as Slurm jobs.

What runs where:

* the **driver** (``ekd run --executor slurm``, on a login node or in a job of its own) runs the
  stages in order, as ``ekd run`` does; it makes the data, splits and force labels (inference of
  the teaching ensemble over the training pool: minutes, once per student group), evaluates the
  members and writes the report (inference over the test sets) itself: cheap next to training,
  and each needs every member of the stages before it, so a job of its own would only add a wait
  in the queue;
* each group's **members** go to Slurm as one job array, one task per member, submitted with
  submitit: a task is ``ekd train --member M`` (:func:`train_member_task`);
* the **MD stability sweep** (``md.enabled``), hours at the paper's scale, is one job of its own
  with ``md.workers`` CPUs;
* generated reference data (``data.train: generate``) are computed by a job array, the molecules
  dealt out to its tasks (:mod:`.slurm_data`), and assembled by the driver.

The driver records every job id it submits in ``slurm/jobs.json`` at once (:mod:`.slurm_jobs`).
Stopped and started again (any moment, any signal), it reattaches to a member's job that is
still queued or running instead of submitting it again, and submits again a member whose job
ended without ``done.json`` (failed, cancelled, preempted, out of time, node lost): the new task
continues from the member's checkpoint. A task that runs out of time or is preempted is requeued
by submitit itself (up to ``slurm.max_requeues`` times) and continues from its checkpoint too.

A member never trains twice at once: its task holds the member directory's ``flock`` lock while it
trains and waits for it when another process holds it (a task the driver could not record, a
hand-started ``ekd train --member``). Those locks must hold between nodes, so the driver and every
task first check the run directory's file system (:func:`.slurm_jobs.check_flock`) and refuse
one where ``flock`` is per node or absent. The executor and its ``slurm:`` settings are part of
no digest: a run started locally continues on Slurm and back, with the same members.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from .. import store
from ..config import Config
from .common import log
from .plan import Group
from .slurm_jobs import (
    SchedulerError,
    check_flock,
    current_job,
    last_error_line,
    load_jobs,
    log_paths,
    member_key,
    queue,
    record_jobs,
    require_slurm,
    slurm_dir,
)


class MemberJobsFailed(RuntimeError):
    """Slurm jobs of a stage ended without finishing their member (or MD sweep)."""


# ------------------------------------------------------------------------------------------
# what a job runs (on a compute node)


def train_member_task(run_dir: str, config_yaml: str, label: str, member: int) -> dict:
    """``ekd train --member``: train member ``member`` of group ``label`` of the run in
    ``run_dir`` (or reuse it), holding its lock; waits while another process holds it."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from .. import config
    from .rundir import Run

    check_flock(Path(run_dir))
    run = Run(config.loads(config_yaml), Path(run_dir), progress=False)
    group = run.group(label)
    what = f"{label} member {member}"
    print(f"ekd: {what} in job {_job_id()} on {os.uname().nodename}", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        waited = False
        while True:
            try:
                stack.enter_context(store.lock_dir(run.member_dir(group, member), what))
                break
            except store.RunDirBusyError as e:
                if not waited:
                    print(f"ekd: waiting: {e}", file=sys.stderr, flush=True)
                    waited = True
                time.sleep(5)
        return run.train_group(group, [member])[0]


def md_task(run_dir: str, config_yaml: str) -> str:
    """``ekd md-stability`` of the run in ``run_dir`` (its table joins metrics.json and the report)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from .. import config
    from .rundir import Run

    run = Run(config.loads(config_yaml), Path(run_dir), progress=False)
    with store.lock_dir(run.run_dir, shared=True):
        run.md_stability()
    # what tells the driver that this job did its work (a job can end without: cancelled, killed)
    store.atomic_json(slurm_dir(run.run_dir) / "md_done.json", {"job": _job_id()})
    return "done"


def _job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}"
    return os.environ.get("SLURM_JOB_ID", "?")


class _Task:
    """A picklable call of one of the functions above; submitit requeues a job whose function has
    ``checkpoint`` when it is preempted or runs out of time (the call is simply made again: the
    member continues from its checkpoint, the MD sweep from its finished runs)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self, *more):
        return self.fn(*self.args, *more)

    def checkpoint(self, *more):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *more)


# ------------------------------------------------------------------------------------------
# the driver


def _submitit():
    try:
        import submitit
    except ImportError:
        raise SchedulerError("--executor slurm needs submitit: pip install 'submitit>=1.5' (or ekd[slurm])") from None
    return submitit


class SlurmExecutor:
    """Trains the groups of ``run`` (and runs its MD sweep) as Slurm jobs; see the module text."""

    def __init__(self, run, settings, progress: bool = True):
        self.run, self.s, self.progress = run, settings, progress
        self.dir = slurm_dir(run.run_dir)

    @contextlib.contextmanager
    def hold(self):
        """The driver's hold on the run directory: shared (member tasks hold it shared too; a
        local ``ekd run`` is refused), and the driver lock exclusive (one driver at a time).
        Holding it, the driver first has generated data computed by array tasks
        (:mod:`.slurm_data`); the run then assembles them."""
        from .slurm_data import generate_data

        with store.lock_dir(self.run.run_dir, shared=True), store.lock_dir(self.dir, "the Slurm driver of this run"):
            generate_data(self)
            yield

    # --- submission
    def _executor(self, name: str, cpus: int, n: int):
        submitit = _submitit()
        s = self.s
        ex = submitit.SlurmExecutor(folder=self.dir / "logs", max_num_timeout=s.max_requeues)
        params = {
            "job_name": name,
            "time": s.time_minutes,
            "cpus_per_task": cpus,
            "array_parallelism": s.max_running or n,
            # the requeue signal comes this long before the time limit (at most a fifth of it)
            "signal_delay_s": max(10, min(90, s.time_minutes * 12)),
            "additional_parameters": dict(s.sbatch),
        }
        for key in ("partition", "account", "qos"):
            if getattr(s, key):
                params[key] = getattr(s, key)
        if s.gpus_per_task:
            params["gpus_per_task"] = s.gpus_per_task
        if s.mem_gb:
            params["mem"] = f"{int(s.mem_gb * 1024)}M"
        if s.setup:
            params["setup"] = list(s.setup)
        try:
            ex.update_parameters(**params)
        except ValueError as e:
            raise SchedulerError(f"slurm: {str(e).splitlines()[0]}") from None
        return ex

    def _submit(self, name: str, cpus: int, task: _Task, args: list) -> list[str]:
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        ex = self._executor(name, cpus, len(args))
        try:
            jobs = ex.map_array(task, args)
        except (FailedJobError, FailedSubmissionError, OSError) as e:  # sbatch's own words inside
            text = "; ".join(dict.fromkeys(line.strip() for line in str(e).splitlines() if line.strip()))
            raise SchedulerError(f"sbatch refused {name}: {text[:400]}") from None
        return [str(j.job_id) for j in jobs]

    def _task(self, fn, *args) -> _Task:
        return _Task(fn, str(self.run.run_dir.resolve()), self.run.cfg.to_yaml(), *args)

    # --- waiting
    def _wait(self, watch: dict, what: dict, finished) -> list[str]:
        """Poll the queue until none of ``watch`` ({key: job id}) is queued or running; returns
        the failures (one line each: what, job, log, last error line). finished(key, job):
        whether the job did its work (its member's done.json)."""
        seen: dict = {}
        failures = []
        refused = 0
        while watch:
            try:
                live = queue()
                refused = 0
            except SchedulerError as e:
                # a busy controller times out now and then: only a lasting silence stops the driver
                refused += 1
                if refused >= 10:
                    raise
                log(f"{e}; asking again in {self.s.poll_seconds:g} s")
                time.sleep(self.s.poll_seconds)
                continue
            for key, job in list(watch.items()):
                state = live.get(job)
                if state is not None:
                    if state != seen.get(key):
                        where = f" on {state[1]}" if state[1] and state[0] != "PENDING" else ""
                        log(f"{what[key]} (job {job}): {state[0].lower()}{where}")
                        seen[key] = state
                    continue
                del watch[key]
                if finished(key, job):
                    log(f"{what[key]} (job {job}): done")
                    continue
                err = log_paths(self.run.run_dir, job)[1]
                failures.append(
                    f"{what[key]}: job {job} ended without finishing it (log {err}: {last_error_line(err)})"
                )
                log(failures[-1])
            if watch:
                time.sleep(self.s.poll_seconds)
        return failures

    def _attach_or_submit(self, kind: str, keys: dict, finished, submit) -> None:
        """For each of ``keys`` ({record key: description}) not ``finished``: reattach to its
        recorded job if Slurm still has it, else submit (``submit(keys) -> job ids``); then
        wait for all of them. Raises :class:`MemberJobsFailed` naming each failure."""
        record, live = load_jobs(self.run.run_dir), queue()
        watch, todo = {}, []
        for key, what in keys.items():
            job = current_job(record, kind, key)
            if job is not None and job in live:
                log(f"{what}: reattached to job {job} ({live[job][0].lower()})")
                watch[key] = job
            else:
                if job is not None:
                    err = log_paths(self.run.run_dir, job)[1]
                    log(f"{what}: job {job} ended without finishing it ({last_error_line(err)}); submitting it again")
                todo.append(key)
        if todo:
            ids = submit(todo)
            record_jobs(self.run.run_dir, kind, dict(zip(todo, ids, strict=True)))
            watch.update(zip(todo, ids, strict=True))
            log(f"submitted {len(ids)} job(s): {', '.join(ids)}; logs in {self.dir / 'logs'}")
        try:
            failures = self._wait(watch, keys, finished)
        except KeyboardInterrupt:
            jobs = sorted(set(load_jobs(self.run.run_dir)[kind].get(k, [{}])[-1].get("job", "?") for k in watch))
            log(
                f"driver stopped; job(s) {', '.join(jobs)} go on in Slurm: the same command reattaches to them "
                f"(`scancel` them to stop them)"
            )
            raise
        if failures:
            raise MemberJobsFailed(
                f"{len(failures)} job(s) failed: " + "; ".join(failures) + "; run the same command again to "
                "resubmit them (members continue from their checkpoints)"
            )

    # --- the stages
    def train_group(self, group: Group) -> list[dict]:
        """Every member of ``group`` trained (or reused), as one job array; the done.json summaries."""
        run = self.run
        run.training_inputs(group)  # labels here, in the driver, once (the members' digests name them)
        _ = run.splits
        todo = {}
        for m in range(group.n_members):
            out = run.member_dir(group, m)
            store.claim(out, run.member_digest(group, m), f"{group.label} member {m}")
            if not (out / "done.json").exists():
                todo[member_key(group.label, m)] = f"{group.label} member {m}"
        reused = group.n_members - len(todo)
        if reused:
            log(f"{group.label}: reusing {reused} finished member(s)")
        if todo:
            cpus = self.s.cpus_per_task or run.cfg.train.threads

            def submit(keys):
                members = [int(k.rsplit("/", 1)[1]) for k in keys]
                return self._submit(f"ekd-{group.label}", cpus, self._task(train_member_task, group.label), members)

            def finished(key, job):
                return (run.member_dir(group, int(key.rsplit("/", 1)[1])) / "done.json").exists()

            log(f"{group.label}: {len(todo)} member(s) to train as Slurm jobs")
            self._attach_or_submit("members", todo, finished, submit)
        return [json.loads((run.member_dir(group, m) / "done.json").read_text()) for m in range(group.n_members)]

    def md_stability(self, metrics: dict | None = None) -> dict:
        """The MD stability sweep as one job (its table joins metrics.json and the report)."""
        path = self.run.run_dir / "metrics.json"
        stamp = self.dir / "md_done.json"

        def submit(keys):
            return self._submit("ekd-md", self.run.cfg.md.workers, self._task(md_task), [None])

        def finished(key, job):
            return stamp.exists() and json.loads(stamp.read_text()).get("job") == job

        self._attach_or_submit("jobs", {"md": "MD stability sweep"}, finished, submit)
        return json.loads(path.read_text())


def settings_for(cfg: Config, run_dir: Path):
    """The ``slurm:`` settings of this driver: the configuration's; when it has none (a restart
    with ``--run-dir`` only), those the run's driver last ran with (slurm/settings.json)."""
    from ..config.schema import SlurmConfig
    from ..config.typed import build, to_plain

    path = slurm_dir(run_dir) / "settings.json"
    settings = cfg.slurm
    if settings == SlurmConfig() and path.exists():
        settings = build(SlurmConfig, json.loads(path.read_text()), "slurm")
        log(f"slurm: the settings this run's driver last ran with ({path})")
    store.atomic_json(path, to_plain(settings))
    return settings


def run(cfg: Config, run_dir: str | Path | None = None, progress: bool = True, **stages) -> dict:
    """``ekd run --executor slurm``: the whole workflow, the members trained as Slurm job arrays
    (see the module text). stages: ``stop_after`` / ``on_stage`` of :meth:`Run.run_all`."""
    from .rundir import Run

    require_slurm()
    _submitit()
    run_dir = Path(run_dir or cfg.run_dir)
    check_flock(run_dir)
    settings = settings_for(cfg, run_dir)
    r = Run(cfg, run_dir, progress)  # computes what a local run computes: its records hold no executor
    if settings.gpus_per_task and getattr(cfg.train, "device", "cuda") == "cpu":
        log("note: slurm.gpus_per_task is set but train.device is cpu: the members will not use their GPUs")
    return r.run_all(executor=SlurmExecutor(r, settings, progress), **stages)
