"""One process per run directory, with real ``ekd`` processes: a second ``ekd run`` is refused at
once naming the first, a killed run's lock is taken over, member jobs of a job array run side by
side (and their members are reused by ``ekd run``), the same member twice is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ekd import cli, store
from ekd.data import write_ani

from ..conftest import xtb_groups
from .test_cli import TINY

# trains until killed: a holder that is certainly still running when the second process starts
ENDLESS = {"max_epochs: 2": "max_epochs: 100000", "termination_patience: 3": "termination_patience: 100000"}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    pytest.importorskip("tblite.interface")
    d = tmp_path_factory.mktemp("lock_data")
    return write_ani(d / "train.h5", xtb_groups(("H2O", "CH4"), n_conf=10))


def _config(path, data_file, **replace):
    text = TINY.format(train=data_file)
    for old, new in replace.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture
def ekd(tmp_path):
    """Starts ``python -m ekd.cli ARGS`` (killed at the end of the test)."""
    procs = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(*args):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ekd.cli", *map(str, args)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _wait_for_holder(lock_file, pid, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads(lock_file.read_text())["pid"] == pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{pid} never took {lock_file}")


def _wait_for_epochs(log, n, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if log.exists() and len(log.read_text().splitlines()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{log} never reached {n} epochs")


def _refused(proc, timeout=60.0) -> str:
    """stderr of a process that must exit with an error on its own (not wait for the holder)."""
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("ekd: error: "), err
    return lines[-1]


def test_a_second_run_is_refused_at_once_and_a_killed_runs_lock_is_taken_over(ekd, tmp_path, data_file):
    cfg = _config(tmp_path / "endless.yaml", data_file, **ENDLESS)
    run_dir = tmp_path / "run"
    log = run_dir / "gen0" / "teacher" / "member_00" / "train_log.jsonl"
    first = ekd("run", "--config", cfg, "--run-dir", run_dir, "--quiet")
    _wait_for_holder(run_dir / store.LOCK_NAME, first.pid, first)
    _wait_for_epochs(log, 2, first)
    line = _refused(ekd("run", "--config", cfg, "--run-dir", run_dir, "--quiet"))
    assert f"run directory {run_dir} is in use by `" in line and f"(PID {first.pid} on host" in line
    # the other verbs that write into the run directory are refused too
    line = _refused(ekd("train", "--config", cfg, "--run-dir", run_dir, "--role", "teacher", "--member", "1"))
    assert f"PID {first.pid}" in line

    first.send_signal(signal.SIGKILL)  # no cleanup: its record stays in the lock file
    first.communicate()
    third = ekd("run", "--config", cfg, "--run-dir", run_dir, "--quiet")
    for line in third.stderr:
        if "taking over the lock" in line:
            break
    assert "left by `" in line and f"(PID {first.pid} on host" in line
    _wait_for_holder(run_dir / store.LOCK_NAME, third.pid, third)
    resumed_at = len(log.read_text().splitlines())
    _wait_for_epochs(log, resumed_at + 2, third)
    third.send_signal(signal.SIGTERM)
    third.communicate(timeout=60)
    assert third.returncode == 130
    # the killed run's epochs and the ones of the run that resumed them: one line per epoch
    epochs = [json.loads(ln)["epoch"] for ln in log.read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))


def test_member_jobs_run_side_by_side_and_their_members_are_reused(ekd, tmp_path, data_file, capsys):
    cfg = _config(tmp_path / "tiny.yaml", data_file)
    run_dir = tmp_path / "run"
    jobs = [ekd("train", "--config", cfg, "--run-dir", run_dir, "--role", "teacher", "--member", m) for m in (0, 1)]
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    done = sorted(run_dir.glob("gen0/teacher/member_*/done.json"))
    assert len(done) == 2
    stamps = [p.stat().st_mtime_ns for p in done]
    # a whole-group run finds both members made by the job array and trains neither again
    assert cli.main(["train", "--config", str(cfg), "--run-dir", str(run_dir), "--role", "teacher", "--quiet"]) == 0
    assert [p.stat().st_mtime_ns for p in done] == stamps
    assert "reusing 2 finished member(s)" in capsys.readouterr().out


def test_the_same_member_twice_is_refused_and_so_is_a_whole_run(ekd, tmp_path, data_file):
    cfg = _config(tmp_path / "endless.yaml", data_file, **ENDLESS)
    run_dir = tmp_path / "run"
    member = ["train", "--config", cfg, "--run-dir", run_dir, "--role", "teacher", "--member", "0"]
    holder = ekd(*member)
    _wait_for_holder(run_dir / "gen0" / "teacher" / "member_00" / store.LOCK_NAME, holder.pid, holder)
    line = _refused(ekd(*member))
    assert f"teacher member 0 {run_dir / 'gen0' / 'teacher' / 'member_00'} is in use by" in line
    assert f"PID {holder.pid}" in line
    line = _refused(ekd("run", "--config", cfg, "--run-dir", run_dir))
    assert "is in use by member jobs (gen0/teacher/member_00: `" in line and f"PID {holder.pid}" in line
