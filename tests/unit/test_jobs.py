"""Parallel jobs: results in job order, the same as running them in this process."""

import math

import pytest

from ekd.jobs import run_parallel


def test_parallel_equals_serial_and_keeps_order():
    jobs = [float(i * i) for i in range(7)]
    serial = run_parallel(math.sqrt, jobs, workers=1, desc="serial", progress=False)
    parallel = run_parallel(math.sqrt, jobs, workers=2, desc="parallel", progress=False)
    assert serial == parallel == [float(i) for i in range(7)]
    assert run_parallel(math.sqrt, [], workers=2, desc="none", progress=False) == []


def test_a_failing_job_raises_in_the_caller():
    with pytest.raises(ValueError, match="math domain error"):
        run_parallel(math.sqrt, [4.0, -1.0, 9.0], workers=2, desc="bad", progress=False)
