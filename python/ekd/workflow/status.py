"""``ekd status``: what each member of a run is doing -- done, running (job, node, epoch),
queued, failed (job, log, last error line), interrupted or not started -- for runs driven
locally and on Slurm alike.

Read only: it takes no lock (a probe could refuse a member job that starts at that moment); who
holds a lock is read from the record its holder wrote into the lock file (:mod:`ekd.store`), the
Slurm jobs from ``slurm/jobs.json`` and ``squeue`` (:mod:`.slurm_jobs`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from .. import store
from .plan import Group
from .slurm_jobs import SchedulerError, current_job, last_error_line, load_jobs, log_paths, member_key, queue


@dataclass
class MemberState:
    member: int
    state: str  # done, running, queued, failed, interrupted, not started
    job: str | None = None
    node: str | None = None
    epoch: int | None = None
    log: str | None = None
    error: str | None = None

    def describe(self, max_epochs: int) -> str:
        where = f"job {self.job}" if self.job else ""
        if self.node:
            where = f"{where} on {self.node}" if where else f"on {self.node}"
        text = f"member {self.member}: {self.state}" + (f" ({where})" if where else "")
        if self.epoch is not None:
            text += f", epoch {self.epoch} of at most {max_epochs}"
        if self.log:
            text += f"; log {self.log}: {self.error}"
        return text


def _holder(lock: Path) -> dict | None:
    """The record of the live exclusive holder of ``lock`` (None: free, or left by a process
    that is gone from this host). A released lock is emptied by its holder."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            text = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        record = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("host") == socket.gethostname():
        try:
            os.kill(int(record["pid"]), 0)
        except ProcessLookupError:
            return None
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
    return record


def _epoch(directory: Path) -> int | None:
    path = directory / "train_log.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def member_state(run_dir: Path, group: Group, m: int, record: dict, live: dict | None, run_busy: bool) -> MemberState:
    directory = run_dir / group.directory / f"member_{m:02d}"
    if (directory / "done.json").exists():
        return MemberState(m, "done")
    epoch = _epoch(directory)
    job = current_job(record, "members", member_key(group.label, m))
    if job is not None and live is not None and job in live:
        state, node = live[job]
        if state == "PENDING":
            return MemberState(m, "queued", job, epoch=epoch)
        return MemberState(m, "running" if state == "RUNNING" else state.lower(), job, node or None, epoch)
    holder = _holder(directory / store.LOCK_NAME)
    if holder is not None:
        return MemberState(m, "running", job, holder.get("host"), epoch)
    if job is not None and live is not None:
        err = log_paths(run_dir, job)[1]
        return MemberState(m, "failed", job, epoch=epoch, log=str(err), error=last_error_line(err))
    if epoch is not None:
        # a local run's workers hold no lock of their own: its run-directory lock says it goes on
        return MemberState(m, "running" if run_busy else "interrupted", epoch=epoch)
    return MemberState(m, "not started")


def status(run_dir: str | Path) -> dict:
    """{"driver": who holds the run (a line) or None, "note": about Slurm (or None), "groups":
    [(Group, [MemberState])], "max_epochs": int} of the run in ``run_dir``."""
    from .. import config
    from .plan import plan

    run_dir = Path(run_dir)
    stamp = run_dir / "config.yaml"
    if not stamp.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); `ekd run` makes one")
    cfg = config.load(stamp)
    record = load_jobs(run_dir)
    driver = _holder(run_dir / "slurm" / store.LOCK_NAME)
    local = _holder(run_dir / store.LOCK_NAME)
    who = driver or local
    line = None
    if who:
        kind = "Slurm driver" if driver else "held by"
        line = (
            f"{kind} `{who.get('command', '?')}` (PID {who.get('pid')} on {who.get('host')}, since {who.get('since')})"
        )
    live, note = None, None
    if record["members"] or record["jobs"]:
        if shutil.which("squeue") is None:
            note = "no squeue on the PATH: the run's Slurm jobs are not asked about (run ekd status on the cluster)"
        else:
            try:
                live = queue()
            except SchedulerError as e:
                note = f"the Slurm jobs are not asked about: {e}"
    groups = []
    for g in plan(cfg):
        groups.append((g, [member_state(run_dir, g, m, record, live, who is not None) for m in range(g.n_members)]))
    return {"driver": line, "note": note, "groups": groups, "max_epochs": cfg.train.max_epochs}


def format_status(run_dir: str | Path, info: dict) -> str:
    lines = [f"run directory {run_dir}: " + (info["driver"] or "no ekd process holds it")]
    if info["note"]:
        lines.append(f"note: {info['note']}")
    for group, members in info["groups"]:
        counts: dict[str, int] = {}
        for s in members:
            counts[s.state] = counts.get(s.state, 0) + 1
        done = counts.pop("done", 0)
        rest = "".join(f", {n} {state}" for state, n in counts.items())
        lines.append(f"{group.label}: {done}/{len(members)} done{rest}")
        lines += [f"  {s.describe(info['max_epochs'])}" for s in members if s.state != "done"]
    return "\n".join(lines)
