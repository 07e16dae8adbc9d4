"""A real single-node Slurm cluster for the tests of ``ekd run --executor slurm``.

:class:`SlurmCluster` starts munged, slurmctld and slurmd (Debian's ``munge`` and ``slurm-wlm``,
installed by scripts/setup.sh) as root, with every file -- slurm.conf, a munge key made here, the
munge socket, state, spool, logs -- in one temporary directory and on ports picked free, so that
nothing of the machine's own Slurm (if any) is read or touched. Client commands (sbatch, squeue,
scontrol) find this cluster through ``SLURM_CONF``, which :meth:`SlurmCluster.env` sets.

The node has 2 CPUs (``CPUs=2``): two array tasks run at once. Accounting is off (no slurmdbd):
``sacct`` does not work, ``squeue`` and ``scontrol show job`` do (finished jobs stay known to
``scontrol`` for ``MinJobAge`` seconds), and the controller's log records every submission.

:func:`why_not` says why a cluster cannot be started here (the test skips with that reason).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")


def _find(name: str) -> str | None:
    # the daemons live in /usr/sbin, which a non-login shell may not have on its PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def why_not() -> str | None:
    """Why a cluster cannot be started on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "a test Slurm cluster needs root (munged, slurmctld and slurmd run as root here)"
    missing = [n for n in (*DAEMONS, *CLIENTS) if _find(n) is None]
    if missing:
        return f"no {', '.join(missing)} on this machine (apt-get install slurm-wlm munge; scripts/setup.sh does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """munged + slurmctld + slurmd on this host; :meth:`start`, then :meth:`stop` (always)."""

    def __init__(self, cpus: int = 2, base: str | os.PathLike | None = None):
        # the munge socket's path must stay short (a UNIX socket path has at most 107 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="ekd-slurm-", dir=base or "/tmp"))
        self.cpus = cpus
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.log_dir = self.root / "log"
        self._procs: dict[str, subprocess.Popen] = {}
        self.startup_seconds: float | None = None

    # --- configuration
    def _write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log", "munge"):
            (r / sub).mkdir(mode=0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName=ekdtest{os.getpid()}",
                    f"SlurmctldHost={self.node}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
                    "ProctrackType=proctrack/pgid",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_res",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/backfill",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    # finished jobs stay known to `scontrol show job` for this long
                    "MinJobAge=600",
                    # a cancelled task's processes get SIGKILL 5 s after SIGTERM (default 30 s)
                    "KillWait=5",
                    f"NodeName={self.node} CPUs={self.cpus} State=UNKNOWN",
                    f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with this cluster's ``SLURM_CONF``."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    # --- daemons
    def _spawn(self, name: str, *args: str) -> None:
        # the daemon keeps its own copy of the descriptor: this process closes its one
        with open(self.log_dir / f"{name}.stdout", "wb") as log:
            self._procs[name] = subprocess.Popen(
                [_find(name), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )

    def start(self, timeout: float = 90.0) -> SlurmCluster:
        """Start the daemons and wait until the node is idle; raises RuntimeError (with the
        daemons' log tails) when it is not within ``timeout`` seconds."""
        t0 = time.monotonic()
        self._write_config()
        m = self.root / "munge"
        self._spawn(
            "munged",
            "--foreground",
            "--force",
            f"--key-file={m / 'munge.key'}",
            f"--socket={m / 'munge.socket'}",
            f"--pid-file={m / 'munged.pid'}",
            f"--seed-file={m / 'munged.seed'}",
            f"--log-file={self.log_dir / 'munged.log'}",
        )
        self._wait(lambda: (m / "munge.socket").exists(), timeout, t0, "munged's socket")
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-N", self.node, "-f", str(self.conf))
        self._wait(lambda: self.node_state() == "idle", timeout, t0, f"node {self.node} idle in sinfo")
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait(self, ok, timeout: float, t0: float, what: str) -> None:
        while not ok():
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead or time.monotonic() - t0 > timeout:
                why = f"{', '.join(dead)} exited" if dead else f"not within {timeout:.0f} s"
                raise RuntimeError(f"test Slurm cluster: waiting for {what}: {why}\n{self.log_tails()}")
            time.sleep(0.2)

    def node_state(self) -> str:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(
            [_find(cmd[0]), *cmd[1:]], env=self.env(), capture_output=True, text=True, check=check, timeout=60
        )

    def job_ids(self) -> set[str]:
        """The ids (array tasks as ``A_i``) of every job this cluster has, queued, running or
        finished within ``MinJobAge``: ``scontrol show job`` lists all of them."""
        out = self.run("scontrol", "-o", "show", "job", check=False).stdout
        ids = set()
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "ArrayTaskId" in fields and "ArrayJobId" in fields:
                # a pending array's remainder is one record ("ArrayTaskId=2-3"): expand it
                for part in fields["ArrayTaskId"].split("%")[0].split(","):
                    lo, _, hi = part.partition("-")
                    for i in range(int(lo), int(hi or lo) + 1):
                        ids.add(f"{fields['ArrayJobId']}_{i}")
            elif "JobId" in fields:
                ids.add(fields["JobId"])
        return ids

    def controller_log(self) -> str:
        path = self.log_dir / "slurmctld.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (slurmd, slurmctld, munged) and remove the
        directory."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", f"--user={os.getuid()}", check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)
