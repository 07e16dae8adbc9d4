"""A run directory's trained groups as ``ekd score`` scores them (:class:`ekd.evaluation.score.ModelGroup`):
the workflow knows where members live, the evaluation knows how to score groups of predictors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..evaluation.score import ModelGroup, ScoreError


def run_groups(
    run_dir: str | os.PathLike, names: Sequence[str] | None = None, device: str | None = None
) -> tuple[list[ModelGroup], float, list[str]]:
    """The groups of a run directory (those ``names``, or every group whose members are all trained),
    the run's conformer window, and the names of the groups left out because they are not fully trained.
    Members predict as in the run's own evaluation (:meth:`ekd.training.member.Member.predict`), on
    ``device`` (a device name; None: the run's ``train.device``)."""
    from .. import config
    from ..training.member import load_member
    from .rundir import Run

    run_dir = Path(run_dir)
    stamp = run_dir / "config.yaml"
    if not stamp.is_file():
        raise ScoreError(f"--run-dir {run_dir}: no config.yaml there; is it a run directory made by `ekd run`?")
    cfg = config.load(stamp)
    if device is not None:
        cfg = replace(cfg, train=replace(cfg.train, device=device))
    # read only: Run writes nothing into an existing run directory that has its config.yaml
    run = Run(cfg, run_dir, progress=False)
    available = run.groups()
    if names:
        chosen = [run.group(name) for name in names]
    else:
        chosen = available
    out, left_out = [], []
    for g in chosen:
        dirs = [run.member_dir(g, m) for m in range(g.n_members)]
        unfinished = [d for d in dirs if not (d / "done.json").exists()]
        if unfinished:
            if names:
                raise ScoreError(
                    f"--groups {g.label}: {len(unfinished)} of its {g.n_members} members are not trained "
                    f"(no {unfinished[0] / 'done.json'}); finish the run (ekd run) or leave the group out"
                )
            left_out.append(g.label)  # not asked for by name: left out, and said so
            continue
        group = ModelGroup(g.label, g.role, g.generation, study=g.study)
        for d in dirs:
            member = load_member(d, run.device)

            def predict(data, advance, member=member):
                energy, forces = member.predict(data, forces=True)
                # a member with an uncertainty head: its sigma too, for score's calibration table
                sigma = (member.predict_sigma(data),) if member.has_uncertainty else ()
                advance(len(data))
                return energy, forces, *sigma

            group.add(str(d.relative_to(run_dir)), member.species, predict)
        out.append(group)
    if not out:
        raise ScoreError(f"--run-dir {run_dir}: no group has all its members trained yet; finish the run first")
    return out, float(cfg.evaluate.conformer_window), left_out
