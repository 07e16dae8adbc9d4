"""The Slurm executor's pieces that need no cluster: its configuration (part of no digest), the
check that flock locks hold between nodes, the last error line of a job's log, and
``ekd status`` of a local run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ekd import config
from ekd.config import ConfigError
from ekd.workflow import slurm_jobs
from ekd.workflow.slurm_jobs import FlockError, check_flock, last_error_line

SLURM_BLOCK = """
executor: slurm
slurm:
  partition: gpu
  account: chem
  qos: normal
  time_minutes: 240
  cpus_per_task: 4
  gpus_per_task: 1
  mem_gb: 16
  max_running: 4
  sbatch: {constraint: a100}
  setup: [module load cuda]
"""


def test_executor_and_slurm_settings_are_part_of_no_digest():
    plain = config.default_config()
    cluster = config.loads("base: default\n" + SLURM_BLOCK)
    assert (
        cluster.executor == "slurm"
        and cluster.slurm.partition == "gpu"
        and cluster.slurm.sbatch == {"constraint": "a100"}
    )
    assert cluster.digest() == plain.digest()
    # at their defaults they are not even written: configuration files and records stay as they were
    assert "executor" not in plain.to_dict() and "slurm" not in plain.to_dict()
    assert "slurm:" in cluster.to_yaml() and config.loads(cluster.to_yaml()) == cluster


def test_a_run_records_no_executor(tmp_path):
    """What a run computes does not depend on where it runs: its config.yaml (and so metrics.json
    and the configuration each member job gets) holds no executor and no slurm settings."""
    from ekd.workflow import Run

    cluster = config.loads("base: default\n" + SLURM_BLOCK)
    run = Run(cluster, tmp_path / "run", progress=False)
    assert run.cfg.executor == "local" and run.cfg.slurm == config.default_config().slurm
    stamp = (tmp_path / "run" / "config.yaml").read_text()
    assert "slurm" not in stamp and "executor" not in stamp


@pytest.mark.parametrize(
    "text, message",
    [
        ("executor: pbs", "executor: must be one of"),
        ("slurm: {time_minutes: 0}", "slurm.time_minutes: must be >= 1"),
        ("slurm: {cpus_per_task: 0}", "slurm.cpus_per_task: must be >= 1 or null"),
        ("slurm: {gpus: 1}", "slurm: unknown key"),
        ("slurm: {sbatch: {array: 0-3}}", "slurm.sbatch: 'array' is set by ekd"),
    ],
)
def test_bad_slurm_settings_are_named(text, message):
    with pytest.raises(ConfigError, match=message):
        config.loads(text)


def test_flock_check_passes_here_and_refuses_node_local_locks(tmp_path, monkeypatch):
    check_flock(tmp_path)
    mountinfo = (
        "36 25 0:32 / / rw - ext4 /dev/vda rw\n"
        "40 36 0:45 / /shared rw,relatime - nfs4 server:/export rw,vers=4.2,local_lock=flock\n"
    )
    monkeypatch.setattr(slurm_jobs, "_mountinfo", lambda: mountinfo)
    assert slurm_jobs._mount_of(Path("/shared/runs/a"))[1] == "nfs4"
    with pytest.raises(FlockError, match="nfs4 mounted at /shared with local_lock=flock"):
        check_flock(Path("/shared/runs/a"))


def test_last_error_line(tmp_path):
    log = tmp_path / "12_1_0_log.err"
    log.write_text(
        "submitit INFO (2026-12-07 02:00:00,000) - Starting with JobEnvironment(job_id=12_1)\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "FloatingPointError: teacher member 1 (generation 0): non-finite loss at epoch 3\n"
        "srun: error: vm: task 0: Exited with exit code 1\n"
    )
    assert last_error_line(log).startswith("FloatingPointError: teacher member 1")
    log.write_text(
        log.read_text() + "slurmstepd: error: *** JOB 13 ON vm CANCELLED AT 2026-12-07 DUE TO TIME LIMIT ***\n"
    )
    assert "DUE TO TIME LIMIT" in last_error_line(log)
    assert last_error_line(tmp_path / "none.err").startswith("(no log")


def test_status_of_a_local_run(tmp_path):
    """A local run stopped after its teachers: teachers done, the students not started; a
    student with epochs but no done.json (an interrupted run) says so."""
    from ekd.data import write_ani
    from ekd.workflow import Run
    from ekd.workflow.status import format_status, status

    from ..conftest import tiny_run_config, xtb_groups

    train = write_ani(tmp_path / "train.h5", xtb_groups(("H2O", "CH4", "NH3"), n_conf=12))
    cfg = config.loads(
        tiny_run_config(train, "null", max_epochs=2, ensemble="{n_teachers: 2, n_students: 1, generations: 1}")
    )
    run_dir = tmp_path / "run"
    Run(cfg, run_dir, progress=False).run_all(stop_after="teacher")
    student = run_dir / "gen1" / "student" / "member_00"
    student.mkdir(parents=True)
    (student / "train_log.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    text = format_status(run_dir, status(run_dir))
    assert "no ekd process holds it" in text
    assert "teacher: 2/2 done" in text
    assert "student_gen1: 0/1 done, 1 interrupted" in text and "member 0: interrupted, epoch 1 of at most 2" in text
    assert "control: 0/1 done, 1 not started" in text
    out = subprocess.run(
        [sys.executable, "-m", "ekd.cli", "status", "--run-dir", str(run_dir)], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == text
    out = subprocess.run(
        [sys.executable, "-m", "ekd.cli", "status", "--run-dir", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "is not a run directory" in out.stderr


def test_a_member_task_waits_while_another_process_trains_that_member(tmp_path):
    """The guard against training a member twice at once: a task (what a Slurm array task runs)
    whose member is locked by another process waits, saying for whom, and trains (or reuses)
    the member once the lock is free."""
    from ekd import store
    from ekd.data import write_ani
    from ekd.workflow import Run

    from ..conftest import tiny_run_config, xtb_groups

    train = write_ani(tmp_path / "train.h5", xtb_groups(("H2O", "CH4", "NH3"), n_conf=12))
    text = tiny_run_config(train, "null", max_epochs=1, ensemble="{n_teachers: 1, n_students: 1, generations: 1}")
    cfg = config.loads(text)
    run_dir = tmp_path / "run"
    run = Run(cfg, run_dir, progress=False)
    member = run.member_dir(run.group("teacher"), 0)
    call = (
        "import sys; from ekd.workflow.slurm import train_member_task; "
        "train_member_task(sys.argv[1], open(sys.argv[2]).read(), 'teacher', 0)"
    )
    (tmp_path / "cfg.yaml").write_text(run.cfg.to_yaml())
    with store.lock_dir(member, "teacher member 0"):
        task = subprocess.Popen(
            [sys.executable, "-c", call, str(run_dir), str(tmp_path / "cfg.yaml")],
            stderr=subprocess.PIPE,
            text=True,
        )
        said = ""
        while "ekd: waiting" not in said:
            line = task.stderr.readline()
            assert line, f"the task ended instead of waiting: {said}"
            said += line
        assert "teacher member 0" in said and "is in use by" in said
        assert not (member / "done.json").exists()
    said += task.communicate(timeout=300)[1]
    assert task.returncode == 0, said
    assert json.loads((member / "done.json").read_text())["epochs"] == 1
