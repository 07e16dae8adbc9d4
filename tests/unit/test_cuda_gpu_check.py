"""scripts/gpu_check.sh --dry-run: every step of the GPU acceptance run that can run on the CPU, at
tiny sizes, so that the script cannot rot between GPU runs. Measured December 2026 on the 2-core
development machine: ~40 s of CPU time (8 Python processes, mostly importing torch and hippynn),
45-115 s of wall time depending on the other load there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_passes_every_step(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, out[-6000:]
    assert lines[-1] == "gpu_check: 7 passed, 0 failed", out[-6000:]
    for step in ("environment", "wheels", "build", "cuda-tests", "train", "score", "timing"):
        assert f"-- {step}: passed" in proc.stdout
    # the comparisons ran (device and CPU are both the CPU here) and the estimate was printed
    assert "loss per epoch, cpu vs cpu: max relative difference 0.00e+00" in proc.stdout
    assert "ekd score cpu vs cpu:" in proc.stdout and "per member and epoch on cpu" in proc.stdout


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--gpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --gpu" in proc.stderr
