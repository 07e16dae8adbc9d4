"""Reference-data generation (``data.train: generate``) sharded over a Slurm job array, for
``ekd run --executor slurm``: the molecules whose parts are missing (or lack a level) are dealt
out to the array's tasks (molecule k of the generator's plan to task k mod n), each task computes
its molecules one by one and saves each part as it finishes (:mod:`ekd.data.generate.parts`),
and the driver then assembles the HDF5 files exactly as ``ekd data generate`` would: the parts
are the generator's own, so the files are the same however many tasks made them.

The deal uses the whole plan, not what is left of it, so that a restarted driver gives every task
the same molecules (a task of the previous driver still running computes none of another's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import store
from .slurm_jobs import slurm_dir


def _pending(cfg, out: Path):
    """(options, parts dir, accepted option hashes, [(k, task, status)] of the plan's molecules
    not complete); makes or checks the parts' manifest (refusing parts of other options)."""
    from ..data.generate.parts import part_path, part_status, prepare_parts
    from ..data.generate.selection import plan

    opts = cfg.data.generate_options(cfg.seed)
    parts = out / ".parts"
    accepted = prepare_parts(parts, opts, resume=True)
    todo = []
    for k, task in enumerate(plan(opts)):
        status = part_status(part_path(parts, task), task, opts, accepted)
        if status != "complete":
            todo.append((k, task, status))
    return opts, parts, accepted, todo


def generate_shard(run_dir: str, config_yaml: str, shard: tuple[int, int]) -> int:
    """Array task ``shard = (i, n)``: compute the pending molecules k with k mod n == i, saving
    each part; returns how many it computed."""
    from ..data.generate.options import THREAD_VARIABLES

    for var in THREAD_VARIABLES:  # one thread per task, before tblite / pyscf are imported
        os.environ[var] = "1"
    from .. import config
    from ..data.generate import parts as part_store
    from ..data.generate.runner import _run_chunk

    index, count = shard
    cfg = config.loads(config_yaml)
    out = Path(run_dir) / "data"
    opts, parts, accepted, todo = _pending(cfg, out)
    relabel = {"parts": str(parts), "accepted": sorted(accepted)}
    mine = [(task, status) for k, task, status in todo if k % count == index]
    print(f"ekd: data shard {index} of {count}: {len(mine)} molecule(s)", file=sys.stderr, flush=True)
    for task, status in mine:
        (result,) = _run_chunk([task], opts, relabel if status == "levels" else None)
        part_store.save_part(parts, result, opts.content_hash())
    store.atomic_json(slurm_dir(Path(run_dir)) / f"data_shard_{index}.json", {"job": _job(), "count": count})
    return len(mine)


def _job() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}"
    return os.environ.get("SLURM_JOB_ID", "?")


def generate_data(executor) -> None:
    """The pending molecules of ``executor``'s run computed by array tasks (at most
    ``slurm.max_running`` at once, one per molecule otherwise); nothing when the run's data are
    files or already made. The driver assembles them afterwards (``Run.paths``)."""
    import json

    run = executor.run
    d = run.cfg.data
    out = run.run_dir / "data"
    if not (d.train == "generate" or d.test == "generate") or (out / "done.json").exists():
        return
    _, _, _, todo = _pending(run.cfg, out)
    if not todo:
        return
    from ..data.generate.selection import plan

    total = len(plan(run.cfg.data.generate_options(run.cfg.seed)))
    count = min(total, executor.s.max_running or total)
    busy = sorted({k % count for k, _, _ in todo})
    keys = {f"data/{i}-of-{count}": f"data shard {i} of {count}" for i in busy}
    stamps = slurm_dir(run.run_dir)

    def submit(todo_keys):
        shards = [(int(k.split("/")[1].split("-")[0]), count) for k in todo_keys]
        return executor._submit("ekd-data", 1, executor._task(generate_shard), shards)

    def finished(key, job):
        stamp = stamps / f"data_shard_{key.split('/')[1].split('-')[0]}.json"
        return stamp.exists() and json.loads(stamp.read_text()).get("job") == job

    from .common import log

    log(f"data: {len(todo)} molecule(s) to compute as {len(keys)} Slurm array task(s)")
    executor._attach_or_submit("jobs", keys, finished, submit)
