"""Parallel jobs: results in job order, the same as running them in this process."""

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ekd.jobs import run_parallel


def test_parallel_equals_serial_and_keeps_order():
    jobs = [float(i * i) for i in range(7)]
    serial = run_parallel(math.sqrt, jobs, workers=1, desc="serial", progress=False)
    parallel = run_parallel(math.sqrt, jobs, workers=2, desc="parallel", progress=False)
    assert serial == parallel == [float(i) for i in range(7)]
    assert run_parallel(math.sqrt, [], workers=2, desc="none", progress=False) == []


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_below_one_are_refused(workers):
    with pytest.raises(ValueError, match="workers: must be a whole number >= 1"):
        run_parallel(math.sqrt, [1.0, 4.0], workers=workers, desc="", progress=False)


def test_a_failing_job_raises_in_the_caller():
    with pytest.raises(ValueError, match="math domain error"):
        run_parallel(math.sqrt, [4.0, -1.0, 9.0], workers=2, desc="bad", progress=False)


# a parent that runs two long jobs on two workers; each worker writes its pid, then sleeps
_PARENT = """
import os, sys, time
from pathlib import Path
from ekd.jobs import run_parallel, terminate_on_sigterm

def job(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    terminate_on_sigterm()
    out = Path(sys.argv[1])
    try:
        run_parallel(job, [str(out / "a"), str(out / "b")], workers=2, desc="sleep", progress=False)
    except KeyboardInterrupt:
        (out / "interrupted").write_text("yes")
        raise SystemExit(130)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its dead parent's reaper) counts as gone
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_do_not_outlive_a_killed_parent(tmp_path, sig):
    """`kill` (SIGTERM: interrupt, cleanup runs) or SIGKILL of `ekd run` must not leave workers
    training on: a rerun would resume the same member while the orphan still writes to it."""
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    pid_files = [tmp_path / "a", tmp_path / "b"]
    deadline = time.monotonic() + 60
    while not all(p.exists() and p.read_text() for p in pid_files):
        assert time.monotonic() < deadline, "workers did not start"
        assert parent.poll() is None, "parent exited early"
        time.sleep(0.1)
    workers = [int(p.read_text()) for p in pid_files]
    assert all(_alive(w) for w in workers)
    parent.send_signal(sig)
    parent.wait(timeout=30)
    if sig == signal.SIGTERM:
        assert parent.returncode == 130 and (tmp_path / "interrupted").exists()
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived their parent (signal {sig.name})"
        time.sleep(0.1)


_STARTER = """
import subprocess, sys, time
from pathlib import Path
from ekd.jobs import dies_with_parent_preexec

child = subprocess.Popen(["sleep", "120"], preexec_fn=dies_with_parent_preexec())
Path(sys.argv[1]).write_text(str(child.pid))
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_a_subprocess_started_with_the_preexec_dies_with_its_starter(tmp_path):
    """What an MD worker does for its `lmp` run: killing the worker ends the LAMMPS run too."""
    script = tmp_path / "starter.py"
    script.write_text(_STARTER)
    pid_file = tmp_path / "child"
    starter = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and starter.poll() is None, "the starter did not start its child"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _alive(child)
    starter.kill()
    starter.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived the process that started it"
        time.sleep(0.05)
