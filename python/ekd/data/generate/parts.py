"""The resumable store of the generator: one atomically written ``.parts/<pool>/<name>.npz`` per
finished molecule, and ``.parts/manifest.json`` recording the options they were made with.

A rerun reuses every part that still fits: a part is checked against the task its index now holds
(selection options may change), a part lacking a level gets only that level's labels
(:func:`complete_levels`), and options that shape geometries are refused with the fields named
(:func:`prepare_parts`)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...store import atomic_write
from .levels import label_levels
from .options import ADDED_FIELDS, EXECUTION_FIELDS, PART_FORMAT, GenerateError, GenerateOptions, wanted_levels
from .record import MoleculeRecord
from .selection import MoleculeTask

log = logging.getLogger("ekd.data.generate")


def part_path(parts: Path, task: MoleculeTask) -> Path:
    return parts / task.pool / f"{task.name}.npz"


def save_part(parts: Path, result: MoleculeRecord, options_hash: str) -> Path:
    """One molecule's result as ``.parts/<pool>/<name>.npz``, written atomically."""
    task = result.task
    path = parts / task["pool"] / f"{task['name']}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(result.properties)
    meta = {
        "format": PART_FORMAT,
        "options_hash": options_hash,
        "task": task,
        "n_relaxed": result.n_relaxed,
        "levels": result.levels,
        "keys": keys,
        "stats": result.stats,
    }
    arrays = {f"property{i}": np.asarray(result.properties[k]) for i, k in enumerate(keys)}
    atomic_write(
        path,
        lambda tmp: np.savez(
            tmp, meta=np.array(json.dumps(meta)), numbers=result.numbers, coordinates=result.coordinates, **arrays
        ),
    )
    return path


def read_meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def same_task(meta: Mapping[str, Any], task: MoleculeTask) -> bool:
    """Whether a part's recorded task is ``task`` (a torsion scan: also its dihedral and its
    settings, which no options hash covers)."""
    old = meta.get("task", {})
    return (
        old.get("smiles"),
        old.get("pool"),
        old.get("index"),
        old.get("kind", "molecule"),
        tuple(old.get("dihedral", ())),
        old.get("scan", ""),
    ) == (task.smiles, task.pool, task.index, task.kind, tuple(task.dihedral), task.scan)


def part_status(path: Path, task: MoleculeTask, options: GenerateOptions, accepted: set[str]) -> str:
    """ "missing" (compute the molecule), "complete", or "levels" (only labels are missing)."""
    if not path.exists():
        return "missing"
    meta = read_meta(path)
    if meta.get("options_hash") not in accepted:
        raise GenerateError(
            f"part file {path} was made with options this directory's manifest does not know (hash "
            f"{meta.get('options_hash')}); delete it or rerun with resume=False"
        )
    if not same_task(meta, task):
        # the selection changed (other molecules drawn): this index now holds another molecule
        log.info(
            "generate: %s holds %s, now %s: recomputing", path.name, meta.get("task", {}).get("smiles"), task.smiles
        )
        return "missing"
    missing = [lv for lv in wanted_levels(options, task.pool) if lv not in meta.get("levels", [])]
    return "levels" if missing else "complete"


def load_part(path: Path, task: MoleculeTask, accepted: set[str]) -> MoleculeRecord:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("options_hash") not in accepted or not same_task(meta, task):
            raise GenerateError(
                f"part file {path} belongs to another run (options hash {meta.get('options_hash')}, "
                f"SMILES {meta.get('task', {}).get('smiles')!r}; expected one of {sorted(accepted)}, "
                f"{task.smiles!r}); delete it or rerun with resume=False"
            )
        props = {k: data[f"property{i}"] for i, k in enumerate(meta["keys"])}
        return MoleculeRecord(
            task=meta["task"],
            numbers=data["numbers"],
            coordinates=data["coordinates"],
            properties=props,
            n_relaxed=int(meta["n_relaxed"]),
            levels=list(meta.get("levels", [])),
            stats=meta["stats"],
        )


def complete_levels(task: MoleculeTask, options: GenerateOptions, path: Path, accepted: set[str]) -> MoleculeRecord:
    """A saved molecule with the labels of the levels it lacks added (its geometries and other
    labels unchanged). Runs in a worker process."""
    part = load_part(path, task, accepted)
    wanted = wanted_levels(options, task.pool)
    stats = dict(part.stats)
    t0 = time.perf_counter()
    if len(part.coordinates):
        added = label_levels(
            [lv for lv in wanted if lv not in part.levels],
            part.numbers,
            part.coordinates,
            stats,
            f"{task.pool} {task.name}",
            known=part.properties,
        )
        part.properties.update(added)
    stats["seconds"] = round(float(stats.get("seconds", 0.0)) + time.perf_counter() - t0, 3)
    part.stats = stats
    part.levels = list(dict.fromkeys([*part.levels, *wanted]))
    return part


def prepare_parts(parts: Path, options: GenerateOptions, resume: bool) -> set[str]:
    """Make or check ``parts/manifest.json``; returns the option hashes whose parts are usable.

    Resuming may change the molecule selection and the levels (parts are checked one by one
    against their task, and missing levels are added); any other option is refused."""
    manifest = parts / "manifest.json"
    relevant = {k: v for k, v in options.identity().items() if k not in EXECUTION_FIELDS}
    current = options.content_hash()
    if parts.exists() and not resume:
        shutil.rmtree(parts)
    accepted = {current}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("options_hash") == current:
            return {current, *old.get("compatible_hashes", [])}
        before = {**{k: list(v) for k, v in ADDED_FIELDS.items()}, **old.get("options", {})}
        shaping = options.data_fields()
        diff = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in shaping.items() if before.get(k) != v]
        if diff or old.get("format", PART_FORMAT) != PART_FORMAT:
            raise GenerateError(
                f"{parts} holds molecules made with other options ({'; '.join(diff) or 'format changed'}). "
                "Resuming would mix them: rerun with resume=False (CLI: --fresh) to discard them, or use "
                "another output directory"
            )
        accepted |= {old.get("options_hash"), *old.get("compatible_hashes", [])}
        changed = [k for k, v in relevant.items() if before.get(k) != v]
        log.info("generate: reusing the parts in %s (changed: %s)", parts, ", ".join(changed))
    elif parts.exists() and any(parts.rglob("*.npz")):
        raise GenerateError(f"{parts} has part files but no manifest.json; delete the directory to start afresh")
    parts.mkdir(parents=True, exist_ok=True)
    record = {
        "options_hash": current,
        "options": relevant,
        "format": PART_FORMAT,
        "compatible_hashes": sorted(h for h in accepted if h != current),
    }
    atomic_write(manifest, json.dumps(record, indent=1))
    return accepted
