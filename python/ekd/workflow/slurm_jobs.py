"""What a run directory knows about its Slurm jobs, and what Slurm says about them: the record of
submitted jobs (``slurm/jobs.json``), the queue (``squeue``), the jobs' logs and their last error
line, and the check that ``flock`` locks hold between the nodes that share the run directory.

Shared by the Slurm executor (:mod:`.slurm`, which needs submitit) and ``ekd status`` (which does
not). Layout under the run directory::

    slurm/jobs.json        {"members": {"<group>/<member>": [job, ...]}, "jobs": {"<stage>": [job, ...]}}:
                           every job id submitted for a member (last: the current one), with its time
    slurm/settings.json    the slurm: section the driver last ran with (a restart without it reuses it)
    slurm/logs/            submitit's files: <job>_0_log.out / .err, pickled calls and results
    slurm/.ekd.lock        held by the running driver (one driver per run directory)
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .. import store

SLURM_DIR = "slurm"
#: queue states in which a job still holds (or will hold) its member: not to be submitted again
LIVE_STATES = frozenset(
    "PENDING CONFIGURING RUNNING COMPLETING SUSPENDED REQUEUED REQUEUE_FED REQUEUE_HOLD RESIZING "
    "SIGNALING STAGE_OUT STOPPED RESV_DEL_HOLD".split()
)


class FlockError(RuntimeError):
    """``flock`` does not lock between the nodes that share a run directory."""


class SchedulerError(RuntimeError):
    """A Slurm command failed or is missing."""


def slurm_dir(run_dir: Path) -> Path:
    return Path(run_dir) / SLURM_DIR


def member_key(label: str, member: int) -> str:
    return f"{label}/{member}"


# ------------------------------------------------------------------------------------------
# the record of submitted jobs


def load_jobs(run_dir: Path) -> dict:
    path = slurm_dir(run_dir) / "jobs.json"
    if not path.exists():
        return {"members": {}, "jobs": {}}
    import json

    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise store.CorruptFileError(f"{path}: not a job record ({e}); delete it to forget the jobs it lists") from None
    return {"members": record.get("members", {}), "jobs": record.get("jobs", {})}


def record_jobs(run_dir: Path, kind: str, submitted: dict[str, str]) -> None:
    """Add ``submitted`` ({member key or stage: job id}) to the record (kind: members or jobs),
    at once: a driver stopped after this finds the jobs again instead of submitting them twice."""
    record = load_jobs(run_dir)
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for key, job in submitted.items():
        record[kind].setdefault(key, []).append({"job": job, "submitted": since})
    store.atomic_json(slurm_dir(run_dir) / "jobs.json", record)


def current_job(record: dict, kind: str, key: str) -> str | None:
    jobs = record[kind].get(key)
    return jobs[-1]["job"] if jobs else None


# ------------------------------------------------------------------------------------------
# the queue and the logs


def require_slurm() -> None:
    """A one-line error unless sbatch, squeue and srun are on the PATH."""
    missing = [c for c in ("sbatch", "squeue", "srun") if shutil.which(c) is None]
    if missing:
        raise SchedulerError(
            f"--executor slurm: no {', '.join(missing)} on the PATH; run ekd on a Slurm login node "
            "(or a job) or use --executor local"
        )


def queue() -> dict[str, tuple[str, str]]:
    """{job id: (state, node list)} of this user's jobs that Slurm still has queued or running;
    array tasks one by one (``12_3``). A job that is not here has ended (or never existed)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", f"--user={os.getuid()}", "-o", "%i|%T|%N"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SchedulerError(f"squeue: {e}") from None
    if out.returncode != 0:
        raise SchedulerError(f"squeue failed: {out.stderr.strip() or out.stdout.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def log_paths(run_dir: Path, job: str) -> tuple[Path, Path]:
    """(stdout, stderr) of job ``job`` (submitit's names, task 0)."""
    logs = slurm_dir(run_dir) / "logs"
    return logs / f"{job}_0_log.out", logs / f"{job}_0_log.err"


_EXCEPTION = re.compile(r"^([A-Za-z_]\w*\.)*[A-Za-z_]\w*(Error|Exception|Interrupt|Exit)\b")


def last_error_line(path: Path) -> str:
    """What a job's stderr ``path`` says went wrong, in one line: Slurm's own verdict
    (``*** JOB 12 ... CANCELLED ... DUE TO TIME LIMIT ***``, preemption), else the exception that
    ended a traceback, else its last line that is not submitit's or srun's own log line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"(no log {path})"
    verdicts = [ln for ln in lines if "***" in ln and ("CANCELLED" in ln or "PREEMPT" in ln)]
    exceptions = [ln for ln in lines if _EXCEPTION.match(ln)]
    others = [ln for ln in lines if not ln.startswith(("submitit ", "srun: "))]
    for found in (verdicts, exceptions, others):
        if found:
            return found[-1][:300]
    return "(the log says nothing)"


# ------------------------------------------------------------------------------------------
# locks between nodes

# mount options under which flock locks only within one client (node)
_LOCAL_ONLY = {"nfs": ("local_lock=flock", "local_lock=all", "nolock"), "lustre": ("localflock",)}


def _mountinfo() -> str:
    try:
        return Path("/proc/self/mountinfo").read_text()
    except OSError:  # not Linux: nothing is known about the mount
        return ""


def _mount_of(path: Path) -> tuple[str, str, set[str]]:
    """(mount point, file-system type, mount and super options) of the mount holding ``path``."""
    best = ("/", "?", set())
    target = str(path.resolve())
    for line in _mountinfo().splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 6 or len(rest) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, rest[0], set(fields[5].split(",")) | set(rest[2].split(",")))
    return best


def check_flock(directory: Path) -> None:
    """Raise :class:`FlockError` unless ``flock`` locks in ``directory`` exclude one another
    between processes, and between nodes as far as the mount tells: NFS mounted with
    ``local_lock=flock|all`` or ``nolock`` and Lustre with ``localflock`` lock per node only;
    Lustre without ``flock`` and some FUSE file systems refuse flock (found by trying it)."""
    import fcntl

    directory = Path(directory)
    point, fstype, options = _mount_of(directory)
    family = "nfs" if fstype.startswith("nfs") else fstype
    local = [o for o in _LOCAL_ONLY.get(family, ()) if o in options]
    if local:
        raise FlockError(
            f"{directory} is on {fstype} mounted at {point} with {local[0]}: flock locks there hold only "
            "within one node, so two nodes could train the same member at once; put the run directory on a "
            "file system whose locks hold between nodes (NFS without local_lock, Lustre with -o flock, GPFS)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    # a file of this process's own: the driver and the tasks of an array probe at the same time
    probe = directory / f".ekd-flock-probe-{socket.gethostname()}-{os.getpid()}"
    probe.unlink(missing_ok=True)  # left by a killed process of the same PID
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise FlockError(
                f"{directory} ({fstype} at {point}): flock does not work there ({e.strerror}); the per-member "
                "locks that keep two jobs from training one member need it: use another run directory"
            ) from None
        # a second process must be refused: a file system that ignores flock grants it
        other = subprocess.run([sys.executable, "-c", _PROBE, str(probe)], capture_output=True, text=True, timeout=60)
        if other.stdout.strip() != "refused":
            raise FlockError(
                f"{directory} ({fstype} at {point}): a second process was granted a flock lock that another "
                f"holds ({other.stdout.strip() or other.stderr.strip()}); locks do not work there"
            )
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("granted")
except BlockingIOError:
    print("refused")
except OSError as e:
    print(e.strerror)
"""
