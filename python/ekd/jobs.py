"""Independent jobs (ensemble members, MD runs) in parallel worker processes.

Workers are spawned, not forked: the parent has torch (and its thread pools) loaded, and a forked
child of a threaded process can deadlock. Each job must be a picklable argument of a module-level
function. Results come back in job order; an interrupt cancels what has not started.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any


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
            with cf.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
                futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
                try:
                    for fut in cf.as_completed(futures):
                        results[futures[fut]] = fut.result()
                        if bar:
                            bar.update()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        if bar:
            bar.close()
    return results
