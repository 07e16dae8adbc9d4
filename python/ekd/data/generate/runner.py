"""Runs the generator: plans the molecules, computes the missing ones on spawned single-thread
worker processes (saving each part as it arrives, keeping finished ones on an interrupt), then
assembles the HDF5 files. Entry points :func:`generate` and :func:`generate_torsion`."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ...jobs import die_with_parent
from . import parts as part_store  # save_part looked up at call time (tests replace it)
from .assemble import assemble
from .molecule import compute_molecule
from .options import POOLS, THREAD_VARIABLES, TORSION_POOL, GenerateError, GenerateOptions
from .parts import complete_levels, part_path, part_status, prepare_parts
from .record import MoleculeRecord
from .scan import compute_torsion
from .selection import MoleculeTask, plan

log = logging.getLogger("ekd.data.generate")
TORSION_NAME = "torsion.h5"


def _init_worker(parent_pid: int) -> None:
    """Worker initializer: one thread per process (tblite and pyscf read these at import), leave
    Ctrl-C to the parent, which cancels the queue and lets running molecules finish, and die with
    the parent (a worker's results are saved by the parent only)."""
    for var in THREAD_VARIABLES:
        os.environ[var] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)


def _run_chunk(
    tasks: list[MoleculeTask], options: GenerateOptions, relabel: Mapping[str, Any] | None = None
) -> list[MoleculeRecord]:
    """Compute the molecules of ``tasks``; with ``relabel`` ({"parts": dir, "accepted": hashes}),
    only add the missing levels to their saved parts."""
    out = []
    for task in tasks:
        try:
            if relabel:
                path = part_path(Path(relabel["parts"]), task)
                out.append(complete_levels(task, options, path, set(relabel["accepted"])))
            elif task.kind == "torsion":
                out.append(compute_torsion(task, options))
            else:
                out.append(compute_molecule(task, options))
        except Exception as e:
            raise GenerateError(f"{task.pool} molecule {task.name} ({task.smiles}): {type(e).__name__}: {e}") from e
    return out


@contextlib.contextmanager
def _single_thread_env() -> Iterator[None]:
    """Spawned workers inherit the parent's environment at start-up, before any import: set the
    thread variables there too, so numpy's BLAS in the workers is single-threaded as well."""
    saved = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    os.environ.update({var: "1" for var in THREAD_VARIABLES})
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def generate(
    options: GenerateOptions | None = None,
    out_dir: str | os.PathLike = "data",
    progress: bool = True,
    *,
    resume: bool = True,
    train_name: str = "train.h5",
    test_name: str = "test.h5",
) -> tuple[Path, Path | None]:
    """Make ``<out_dir>/train.h5`` and ``<out_dir>/test.h5`` (see the module docstring), and
    ``<out_dir>/torsion.h5`` when ``torsion.molecules`` > 0.

    progress: a tqdm bar on stderr (one tick per molecule).
    resume: reuse ``<out_dir>/.parts`` from an interrupted or smaller run with the same options;
        False discards it first.
    Returns (train path, test path); the test path is None when ``n_test_molecules`` is 0.
    Raises GenerateError for stale parts or a molecule whose generation raised.

    Workers are *spawned* processes (one thread each), so a script calling this must guard its
    entry point with ``if __name__ == "__main__":`` (the ``ekd`` command does).
    """
    names = {"train": train_name, "test": test_name, TORSION_POOL: TORSION_NAME}
    paths = _generate(options or GenerateOptions(), Path(out_dir), (*POOLS, TORSION_POOL), names, progress, resume)
    return paths["train"], paths["test"]


def generate_torsion(
    options: GenerateOptions, out_dir: str | os.PathLike = "data", progress: bool = True, *, resume: bool = True
) -> Path | None:
    """Make only ``<out_dir>/torsion.h5`` (the torsion scans; None when ``torsion.molecules`` is
    0), beside train/test files made earlier with the same options, which stay untouched (the
    pools are planned, to keep the scans out of them, but not computed or rewritten)."""
    paths = _generate(options, Path(out_dir), (TORSION_POOL,), {TORSION_POOL: TORSION_NAME}, progress, resume)
    return paths[TORSION_POOL]


def _generate(
    options: GenerateOptions, out: Path, pools: tuple[str, ...], names: dict, progress: bool, resume: bool
) -> dict[str, Path | None]:
    """The molecules of ``pools`` computed (missing parts only) and their files assembled;
    {pool: path, None for an empty pool}."""
    from tqdm.auto import tqdm

    parts = out / ".parts"
    options_hash = options.content_hash()
    t0 = time.perf_counter()
    tasks = [t for t in plan(options) if t.pool in pools]
    accepted = prepare_parts(parts, options, resume)
    status = {t: part_status(part_path(parts, t), t, options, accepted) for t in tasks}
    todo = [t for t in tasks if status[t] != "complete"]
    relabel = {"parts": str(parts), "accepted": sorted(accepted)}
    log.info(
        "generate: %d molecules, %d to compute, %d to complete with new levels, %d parts reused",
        len(tasks),
        sum(s == "missing" for s in status.values()),
        sum(s == "levels" for s in status.values()),
        sum(s == "complete" for s in status.values()),
    )

    bar = tqdm(
        total=len(tasks),
        initial=len(tasks) - len(todo),
        desc="ekd data generate",
        unit="mol",
        disable=not progress,
    )
    try:
        if todo:
            chunks = [
                (kind, group[i : i + options.chunk_size])
                for kind in ("missing", "levels")
                for group in [[t for t in todo if status[t] == kind]]
                for i in range(0, len(group), options.chunk_size)
            ]
            with _single_thread_env():
                executor = ProcessPoolExecutor(
                    max_workers=min(options.workers, len(chunks)),
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(os.getpid(),),
                )
                futures: list = []
                saved: set[int] = set()
                try:
                    futures = [
                        executor.submit(_run_chunk, chunk, options, relabel if kind == "levels" else None)
                        for kind, chunk in chunks
                    ]
                    for future in as_completed(futures):
                        for result in future.result():
                            part_store.save_part(parts, result, options_hash)
                            bar.update(1)
                        saved.add(id(future))
                except BaseException:
                    # an interrupt or a failed molecule: drop the queue, let running molecules
                    # finish, and keep what finished (best effort; the original error is raised)
                    executor.shutdown(wait=True, cancel_futures=True)
                    for future in futures:
                        if id(future) in saved or not future.done() or future.cancelled():
                            continue
                        with contextlib.suppress(Exception):
                            for result in future.result():
                                part_store.save_part(parts, result, options_hash)
                    raise
                executor.shutdown(wait=True)
    finally:
        bar.close()

    paths: dict[str, Path | None] = {pool: None for pool in pools}
    for pool in pools:
        pool_tasks = [t for t in tasks if t.pool == pool]
        if not pool_tasks:
            continue
        paths[pool] = out / names[pool]
        assemble(paths[pool], pool, pool_tasks, parts, options, accepted | {options_hash})
    log.info("generate: done in %.1f s", time.perf_counter() - t0)
    return paths
