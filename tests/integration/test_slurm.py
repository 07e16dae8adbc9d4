"""``ekd run --executor slurm`` against a real single-node Slurm (tests/slurm_cluster.py: munged,
slurmctld and slurmd started here as root, stopped at the end; skipped, saying why, where that
cannot be done).

A tiny run (2 teachers, 1 student, 3 epochs) goes through Slurm end to end: its members
really run as Slurm jobs (every job id ekd records is one Slurm has), its members and metrics
equal those of the same configuration run locally, and a driver killed (SIGKILL) while its jobs
run and started again reattaches to them: no member is submitted or trained twice (each member
has one job and no epoch twice in its train_log.jsonl). Failed member jobs are named (member,
job, log, last error line) and submitted again by the next driver; generated data made by two
array tasks equal the generator's own files; without sbatch, --executor slurm is one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ekd import config
from ekd.data import write_ani

from ..conftest import tiny_run_config, xtb_groups
from ..slurm_cluster import SlurmCluster, why_not

EKD = [sys.executable, "-m", "ekd.cli"]
ENSEMBLE = "{n_teachers: 2, n_students: 1, generations: 1, controls: false, baseline: false}"
SLURM = "slurm: {time_minutes: 10, poll_seconds: 0.5}\n"


@pytest.fixture(scope="module")
def cluster():
    why = why_not()
    if why:
        pytest.skip(why)
    pytest.importorskip("submitit", reason="the Slurm executor needs submitit (pip install 'ekd[slurm]')")
    c = SlurmCluster()
    try:
        c.start()
        print(f"test Slurm cluster up in {c.startup_seconds:.1f} s")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm-data")
    train = write_ani(d / "train.h5", xtb_groups(("H2O", "CH4", "NH3", "H2CO"), n_conf=16))
    test = write_ani(d / "test.h5", xtb_groups(("CH3OH",), n_conf=8, seed=5))
    return train, test


def _config(files, tmp_path, extra: str = SLURM) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_run_config(files[0], files[1], max_epochs=3, ensemble=ENSEMBLE, extra=extra))
    return path


def _ekd(*args, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([*EKD, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _members(run_dir: Path) -> dict[str, dict]:
    """{member directory: done.json without its timings}"""
    out = {}
    for done in sorted(run_dir.glob("**/member_*/done.json")):
        d = json.loads(done.read_text())
        for key in ("training_seconds", "wall_time"):
            d.pop(key)
        out[str(done.parent.relative_to(run_dir))] = d
    return out


def _metrics(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    m["config"].pop("run_dir")
    return m


def _epochs(run_dir: Path) -> dict[str, list[int]]:
    return {
        str(p.parent.relative_to(run_dir)): [json.loads(line)["epoch"] for line in p.read_text().splitlines()]
        for p in sorted(run_dir.glob("**/member_*/train_log.jsonl"))
    }


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def test_run_through_slurm_equals_local_and_survives_a_killed_driver(cluster, files, tmp_path):
    from ekd.workflow import Run

    cfg_path = _config(files, tmp_path)
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    t0 = time.monotonic()
    Run(config.load(cfg_path), local_dir, progress=False).run_all()
    local_s = time.monotonic() - t0

    env = cluster.env({**os.environ, "OMP_NUM_THREADS": "1"})
    args = ["run", "--config", str(cfg_path), "--run-dir", str(slurm_dir), "--executor", "slurm", "--quiet"]
    t0 = time.monotonic()
    driver = subprocess.Popen([*EKD, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs_file = slurm_dir / "slurm" / "jobs.json"
    try:
        # the driver is killed while the teachers' array runs: its jobs go on without it
        _wait_for(
            lambda: jobs_file.exists() and json.loads(jobs_file.read_text())["members"], 120, "teachers submitted"
        )
        os.kill(driver.pid, signal.SIGKILL)
        first = driver.communicate(timeout=30)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGKILL, first
    recorded = json.loads(jobs_file.read_text())["members"]
    assert set(recorded) == {"teacher/0", "teacher/1"}

    # no driver: ekd status tells what the jobs do
    shown = _ekd("status", "--run-dir", str(slurm_dir), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "no ekd process holds it" in shown.stdout and "teacher: " in shown.stdout
    teacher_jobs = [recorded[f"teacher/{m}"][0]["job"] for m in range(2)]
    if not all((slurm_dir / f"gen0/teacher/member_0{m}/done.json").exists() for m in range(2)):
        assert any(job in shown.stdout for job in teacher_jobs), shown.stdout

    again = _ekd(*args, env=env)
    slurm_s = time.monotonic() - t0
    assert again.returncode == 0, again.stdout + again.stderr
    print(f"tiny run: local {local_s:.1f} s, through Slurm {slurm_s:.1f} s (driver killed once)")
    print(again.stdout)

    record = json.loads(jobs_file.read_text())["members"]
    # one job per member: the restarted driver reattached to (or reused) the teachers' jobs
    assert set(record) == {"teacher/0", "teacher/1", "student_gen1/0"}
    assert all(len(jobs) == 1 for jobs in record.values()), record
    assert [record[f"teacher/{m}"][0]["job"] for m in range(2)] == teacher_jobs
    # every id ekd recorded is a job of this Slurm cluster, submitted through its controller
    ids = {jobs[0]["job"] for jobs in record.values()}
    assert ids <= cluster.job_ids(), (ids, cluster.job_ids())
    submitted = cluster.controller_log()
    for array in {i.split("_")[0] for i in ids}:
        assert f"_slurm_rpc_submit_batch_job: JobId={array} " in submitted
    # ... that ran the members: each one's log names its member and job
    for key, jobs in record.items():
        label, m = key.split("/")
        err = (slurm_dir / "slurm" / "logs" / f"{jobs[0]['job']}_0_log.err").read_text()
        assert f"ekd: {label} member {m} in job {jobs[0]['job']}" in err

    # the same members and metrics as the local run; no epoch trained twice
    assert _members(slurm_dir) == _members(local_dir)
    assert _metrics(slurm_dir) == _metrics(local_dir)
    epochs = _epochs(slurm_dir)
    assert len(epochs) == 3 and all(e == list(range(1, len(e) + 1)) for e in epochs.values()), epochs

    shown = _ekd("status", "--run-dir", str(slurm_dir), env=env)
    assert "teacher: 2/2 done" in shown.stdout and "student_gen1: 1/1 done" in shown.stdout, shown.stdout


def test_failed_member_jobs_are_named_then_resubmitted(cluster, files, tmp_path, monkeypatch):
    """A job that dies before its member trains: the driver names member, job, log and the last
    error line, and stops with an error; the next driver submits those members again."""
    from ekd.workflow import slurm
    from ekd.workflow.slurm import MemberJobsFailed

    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    broken = SLURM.replace("}", ', setup: ["echo ekd-test: this node has no scratch space >&2", "exit 3"]}')
    run_dir = tmp_path / "run"
    cfg = config.load(_config(files, tmp_path, broken))
    with pytest.raises(MemberJobsFailed) as failed:
        slurm.run(cfg, run_dir, progress=False, stop_after="teacher")
    text = str(failed.value)
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())["members"]
    for m in range(2):
        job = jobs[f"teacher/{m}"][0]["job"]
        log = run_dir / "slurm" / "logs" / f"{job}_0_log.err"
        assert f"teacher member {m}: job {job} ended without finishing it (log {log}: ekd-test: this node" in text

    cfg = config.load(_config(files, tmp_path))
    slurm.run(cfg, run_dir, progress=False, stop_after="teacher")
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())["members"]
    assert all(len(jobs[f"teacher/{m}"]) == 2 for m in range(2)), jobs
    assert all((run_dir / f"gen0/teacher/member_0{m}/done.json").exists() for m in range(2))


def test_no_sbatch_is_one_line(files, tmp_path):
    """Without Slurm on the PATH, --executor slurm is refused in one line before anything runs."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    out = _ekd("run", "--config", str(_config(files, tmp_path)), "--run-dir", str(tmp_path / "r"),
               "--executor", "slurm", env=env, timeout=120)  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ekd: error: --executor slurm: no sbatch"), out.stderr
    assert not (tmp_path / "r" / "gen0").exists()


GENERATE = (
    "{seed: 3, n_train_molecules: 2, n_test_molecules: 1, train_max_heavy_atoms: 4, test_min_heavy_atoms: 5, "
    "test_max_heavy_atoms: 6, train_conformers: 1, samples_per_conformer: 2, test_conformers: 1, "
    "test_distorted: 1, cluster_sizes: [], workers: 1}"
)


def test_generated_data_sharded_over_array_tasks_equal_ekd_data_generate(cluster, tmp_path, monkeypatch):
    """data.train: generate with --executor slurm: the molecules are computed by array tasks (2
    here, molecule k by task k mod 2), the driver assembles them: the files equal those that the
    generator makes in one process."""
    import h5py

    from ekd.config.schema import SlurmConfig
    from ekd.data.generate import generate
    from ekd.workflow import Run
    from ekd.workflow.slurm import SlurmExecutor

    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    text = f"name: gen\nseed: 3\ndata: {{train: generate, test: generate, generate: {GENERATE}}}\n"
    cfg = config.loads(text)
    run = Run(cfg, tmp_path / "run", progress=False)
    executor = SlurmExecutor(run, SlurmConfig(max_running=2, poll_seconds=0.5), progress=False)
    with executor.hold():  # the driver's first step: the data, by array tasks
        pass
    jobs = json.loads((tmp_path / "run" / "slurm" / "jobs.json").read_text())["jobs"]
    assert sorted(jobs) == ["data/0-of-2", "data/1-of-2"]
    for key, (entry,) in jobs.items():
        err = (tmp_path / "run" / "slurm" / "logs" / f"{entry['job']}_0_log.err").read_text()
        assert f"ekd: data shard {key[5]} of 2: " in err
    assert {entry[0]["job"] for entry in jobs.values()} <= cluster.job_ids()
    paths = run.paths  # assembles the parts the tasks made
    local = generate(cfg.data.generate_options(cfg.seed), tmp_path / "local", progress=False)

    def arrays(path):
        with h5py.File(path, "r") as h5:
            return {f"{g}/{k}": h5[g][k][()] for g in h5 for k in h5[g]}

    for mine, theirs in zip((paths.train, paths.test), local, strict=True):
        a, b = arrays(mine), arrays(theirs)
        assert a.keys() == b.keys() and len(a) > 0
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
