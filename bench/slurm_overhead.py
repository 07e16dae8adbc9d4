"""What ``ekd run --executor slurm`` costs against the local executor, on a tiny run.

    python bench/slurm_overhead.py [--repeats 2] [--teachers 2] [--students 2] [--epochs 4]

Starts the tests' single-node Slurm (tests/slurm_cluster.py: munged, slurmctld, slurmd as root,
2 CPUs), makes the tests' tiny GFN2-xTB data set, then runs the same configuration (1-layer
8-wide HIPNN, one generation, no controls, baseline or MD) alternately with ``ekd run`` (local,
``--workers 2``) and ``ekd run --executor slurm`` (members as array tasks, 2 at a time), each in
a fresh run directory, and prints the wall time of each and the mean difference. Both runs
produce the same members (tests/integration/test_slurm.py checks that); the difference is what
Slurm adds: a Python start per member task (torch, hippynn, ekd), the scheduler's start-up of
each array, the driver's polling (``slurm.poll_seconds``, 1 s here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import tiny_run_config, xtb_groups  # noqa: E402
from tests.slurm_cluster import SlurmCluster, why_not  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--teachers", type=int, default=2)
    ap.add_argument("--students", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    why = why_not()
    if why:
        sys.exit(f"slurm_overhead: {why}")
    from ekd.data import write_ani

    work = Path(tempfile.mkdtemp(prefix="ekd-slurm-bench-"))
    train = write_ani(work / "train.h5", xtb_groups(("H2O", "CH4", "NH3", "H2CO"), n_conf=16))
    test = write_ani(work / "test.h5", xtb_groups(("CH3OH",), n_conf=8, seed=5))
    ensemble = (
        f"{{n_teachers: {args.teachers}, n_students: {args.students}, generations: 1, "
        "controls: false, baseline: false}"
    )
    cfg = work / "tiny.yaml"
    text = tiny_run_config(train, test, max_epochs=args.epochs, ensemble=ensemble, extra="slurm: {poll_seconds: 1}\n")
    cfg.write_text(text.replace("workers: 1", "workers: 2"))
    ekd = [sys.executable, "-m", "ekd.cli", "run", "--config", str(cfg), "--quiet"]
    cluster = SlurmCluster().start()
    print(f"Slurm up in {cluster.startup_seconds:.1f} s")
    times: dict[str, list[float]] = {"local": [], "slurm": []}
    try:
        for i in range(args.repeats):
            for executor in ("local", "slurm"):
                t0 = time.perf_counter()
                subprocess.run(
                    [*ekd, "--run-dir", str(work / f"{executor}{i}"), "--executor", executor],
                    env=cluster.env({**os.environ, "OMP_NUM_THREADS": "1"}),
                    check=True,
                    capture_output=True,
                )
                times[executor].append(time.perf_counter() - t0)
                print(f"{executor:5s} run {i}: {times[executor][-1]:.1f} s", flush=True)
    finally:
        cluster.stop()
    local, slurm = statistics.mean(times["local"]), statistics.mean(times["slurm"])
    n = args.teachers + args.students
    print(
        f"{n} members ({args.teachers} teachers, {args.students} students, {args.epochs} epochs): "
        f"local {local:.1f} s, Slurm {slurm:.1f} s, overhead {slurm - local:+.1f} s ({slurm / local:.2f}x)"
    )


if __name__ == "__main__":
    main()
