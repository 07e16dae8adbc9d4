"""Independent jobs (ensemble members, MD runs) in parallel worker processes.

Workers are spawned, not forked: the parent has torch (and its thread pools) loaded, and a forked
child of a threaded process can deadlock. Each job must be a picklable argument of a module-level
function. Results come back in job order; an interrupt cancels what has not started and stops the
running jobs (members checkpoint every epoch, so a rerun loses at most one epoch). A worker never
outlives the process that started it, even one killed by SIGKILL: on Linux it asks the kernel for
SIGTERM when its parent dies. Otherwise an orphan could go on training a member that a rerun
resumes at the same time, both writing its checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any


def dies_with_parent_preexec():
    """A function that asks the kernel to SIGTERM the calling process when its parent dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere None). Usable as a :mod:`subprocess`
    ``preexec_fn``: the C function is resolved here, before the fork, so the child only makes
    the system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    signum = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(1, signum)  # PR_SET_PDEATHSIG

    return preexec


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: SIGTERM this process when ``parent_pid`` (its parent) dies (a no-op
    off Linux)."""
    request = dies_with_parent_preexec()
    if request is None:
        return
    request()
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


#: environment variable holding a worker process's slot (0, 1, ... in the order the workers start):
#: ekd.ops.devices gives each slot its own GPU, round-robin over the visible ones
WORKER_ENV = "EKD_WORKER_INDEX"


def _init_worker(parent_pid: int, counter) -> None:
    """Worker initializer: its slot number in ``WORKER_ENV``, then :func:`die_with_parent`."""
    with counter.get_lock():
        os.environ[WORKER_ENV] = str(counter.value)
        counter.value += 1
    die_with_parent(parent_pid)


def terminate_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a batch scheduler's time limit) an interrupt like Ctrl-C, so that
    the cleanup of :func:`run_parallel` and of the data generator runs (main thread only)."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the running workers of ``pool``."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=10)


def run_parallel(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    workers: int,
    desc: str,
    unit: str = "job",
    progress: bool = True,
    already_done: int = 0,
) -> list[Any]:
    """``[fn(job) for job in jobs]`` on ``workers`` processes (in this process when 1 or one job).

    already_done: finished jobs not in ``jobs`` (reused results), shown in the progress bar.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        # 0 used to mean "in this process" by accident: say what is valid instead
        raise ValueError(f"workers: must be a whole number >= 1 (1: in this process), got {workers!r}")
    results: list[Any] = [None] * len(jobs)
    if not jobs:
        return results
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs) + already_done, initial=already_done, desc=desc, unit=unit)
    try:
        if workers <= 1 or len(jobs) == 1:
            for i, job in enumerate(jobs):
                results[i] = fn(job)
                if bar:
                    bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(
                max_workers=min(workers, len(jobs)),
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(os.getpid(), ctx.Value("i", 0)),
            ) as pool:
                futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
                try:
                    for fut in cf.as_completed(futures):
                        results[futures[fut]] = fut.result()
                        if bar:
                            bar.update()
                except BaseException:
                    stop_workers(pool)
                    raise
    finally:
        if bar:
            bar.close()
    return results
