"""Predicted uncertainty during the stability sweep (issue 28, item 4): does a student's predicted
force spread rise before its MD fails?

* Each run of a model file with an uncertainty head records the largest predicted sigma over the
  box's atoms (EKDCalculator's ``forces_std``, eV/A; the engines' ``sigma`` series, see
  :mod:`ekd.md.engines`) at the saved steps and at the failing one.
* The threshold comes from the model's own training configurations, not from the MD: the
  :data:`QUANTILE` quantile of its predicted sigma over their atoms (:func:`threshold`), computed
  once per model file and training set and cached (:func:`thresholds`). Why the 99.9th: the max
  over a box's ~190 atoms is compared with a per-atom value, so a lower quantile is crossed by
  chance in most frames of a model that is doing fine (a box of 189 atoms drawn from the training
  distribution passes its 99th percentile in 1 - 0.99^189 = 85 % of the frames, its 99.9th in
  17 %); the largest value (100th) rests on a single training atom, an outlier of the labels'
  spread. The 99.9th is held by ~0.1 % of training atoms (>= 100 of them at >= 1e5 atoms).
* Per run (:func:`alarm`): the first time the series reaches the threshold; for a failed run the
  lead time (t_fail - t_cross; 0 when it is reached at the failing step only, None when never:
  missed); for a run that did not fail, whether it crossed anyway (a false alarm). Per role
  (:func:`alarm_table`) and as report lines (:func:`alarm_markdown`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..store import atomic_text, bytes_digest, digest, file_digest

#: the quantile of the training atoms' predicted sigma that is the alarm threshold (see above)
QUANTILE = 0.999


def has_head(path: str | Path) -> bool:
    """Whether the exported model file predicts its teachers' force spread (an uncertainty head)."""
    from ..deploy.model_file import load_model

    module, _ = load_model(path)
    return bool(getattr(module, "has_sigma", False))


def predict_sigma(path: str | Path, data, batch_size: int = 64) -> np.ndarray:
    """The head's predicted sigma (n, A) eV/A (0 in padding) of the model file ``path`` on the
    isolated configurations of ``data`` (an :class:`ekd.data.Dataset`): the numbers EKDCalculator
    reports as ``forces_std`` (one ``energy_and_sigma`` evaluation per batch, no gradient)."""
    import torch

    from ..deploy.model_file import load_model
    from ..ops import library as _ops
    from ..units import EV_TO_KCALMOL

    module, meta = load_model(path)
    if not bool(getattr(module, "has_sigma", False)):
        raise ValueError(f"{path}: this model file has no uncertainty head (no predicted sigma)")
    dt = getattr(torch, meta.dtype)
    out = np.zeros(data.species.shape)
    for start in range(0, len(data), batch_size):
        sl = slice(start, min(start + batch_size, len(data)))
        real = data.species[sl] > 0
        b = real.shape[0]
        batch = torch.repeat_interleave(torch.arange(b), torch.as_tensor(real.sum(axis=1)))
        species = torch.as_tensor(data.species[sl][real], dtype=torch.long)
        positions = torch.as_tensor(data.coordinates[sl][real], dtype=torch.float64)
        cell = torch.zeros(b, 3, 3, dtype=torch.float64)
        pbc = torch.zeros(b, 3, dtype=torch.bool)
        first, second, _ = _ops.neighbor_list(positions, meta.cutoff, cell, pbc, batch=batch)
        with torch.no_grad():
            _, sigma = module.energy_and_sigma(species, first, second, (positions[second] - positions[first]).to(dt))
        block = np.zeros(real.shape)
        block[real] = sigma.to(torch.float64).numpy() / EV_TO_KCALMOL
        out[sl] = block
    return out


def threshold(path: str | Path, data, quantile: float = QUANTILE) -> dict:
    """The alarm threshold of one model: {"sigma_ev_A": the ``quantile`` of its predicted sigma over
    the real atoms of ``data`` (its training configurations), "quantile", "n_atoms", "max_ev_A"}."""
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile: must be in (0, 1], got {quantile!r}")
    if len(data) == 0:
        raise ValueError(f"{path}: no training configurations to choose a threshold from")
    sigma = predict_sigma(path, data)[data.species > 0]
    return {
        "sigma_ev_A": float(np.quantile(sigma, quantile)),
        "quantile": float(quantile),
        "n_atoms": int(sigma.size),
        "max_ev_A": float(sigma.max()),
    }


def thresholds(
    models: Mapping[str, Sequence[str]], training: Mapping, cache_dir: Path, quantile: float = QUANTILE
) -> dict[str, dict]:
    """{model file: threshold} of the models with a head, each computed once and cached in
    ``cache_dir`` under a digest of (model file, training configurations, quantile). training:
    {role: [Dataset, ...]} (the training configurations of each member, in the order of
    ``models[role]``); roles without an entry, and models without a head, get none."""
    out = {}
    for role, paths in models.items():
        sets = training.get(role)
        if sets is None:
            continue
        if len(sets) != len(paths):
            raise ValueError(f"training[{role!r}]: {len(sets)} datasets for {len(paths)} model files")
        for path, data in zip(paths, sets, strict=True):
            if not has_head(path):
                continue
            configurations = bytes_digest(data.species.tobytes(), data.coordinates.tobytes())
            content = digest([file_digest(path), configurations, float(quantile)])
            cached = Path(cache_dir) / f"sigma_threshold_{content[:16]}.json"
            if cached.exists():
                out[str(path)] = json.loads(cached.read_text())
                continue
            entry = {**threshold(path, data, quantile), "digest": content}
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_text(cached, json.dumps(entry))
            out[str(path)] = entry
    return out


def alarm(result: Mapping, limit: float) -> dict:
    """One run against the threshold ``limit`` (eV/A): {"t_cross_ps": first time the recorded max
    sigma reaches ``limit`` (None: never), "lead_ps": for a failed run t_fail - t_cross (None:
    never crossed), "false_alarm": for a run that did not fail, whether it crossed, "max_sigma_ev_A"}.
    A result without a sigma series (an earlier ekd's, or a model without a head) gives None."""
    series = result.get("sigma")
    if not series or not series.get("max_ev_A"):
        return None
    times = np.asarray(series["times_ps"], dtype=np.float64)
    values = np.asarray(series["max_ev_A"], dtype=np.float64)
    # a non-finite sigma (the model's output blew up) is as alarming as a large one
    over = ~(values < limit)
    t_cross = float(times[np.argmax(over)]) if over.any() else None
    failed = bool(result["failed"])
    return {
        "t_cross_ps": t_cross,
        "lead_ps": (result["t_fail_ps"] - t_cross) if failed and t_cross is not None else None,
        "false_alarm": (t_cross is not None) if not failed else None,
        "max_sigma_ev_A": float(np.nanmax(values)) if np.isfinite(values).any() else None,
    }


def alarm_table(results: Sequence[Mapping], limits: Mapping[str, dict]) -> list[dict]:
    """Per role (runs of models with a threshold): failed runs, those warned before the failure
    (lead > 0), at the failing step only (lead 0), missed; median / min lead time of the warned;
    runs that did not fail and how many of them crossed anyway (false alarms); the median over runs of
    a run's largest sigma over the threshold."""
    by_role: dict[str, list[tuple[dict, dict]]] = {}
    for r in results:
        limit = limits.get(r["spec"]["model_paths"][0]) if len(r["spec"]["model_paths"]) == 1 else None
        a = alarm(r, limit["sigma_ev_A"]) if limit else None
        if a is not None:
            peak = a["max_sigma_ev_A"]
            a["peak_over_threshold"] = None if peak is None or not limit["sigma_ev_A"] else peak / limit["sigma_ev_A"]
            by_role.setdefault(r["role"], []).append((r, a))
    rows = []
    for role, pairs in by_role.items():
        failed = [a for r, a in pairs if r["failed"]]
        leads = [a["lead_ps"] for a in failed if a["lead_ps"] is not None and a["lead_ps"] > 0]
        survived = [a for r, a in pairs if not r["failed"]]
        peaks = [a["peak_over_threshold"] for _, a in pairs if a["peak_over_threshold"] is not None]
        rows.append(
            {
                "role": role,
                "runs": len(pairs),
                "failed": len(failed),
                "warned": len(leads),
                "at_failure": sum(1 for a in failed if a["lead_ps"] == 0),
                "missed": sum(1 for a in failed if a["lead_ps"] is None),
                "median_lead_ps": float(np.median(leads)) if leads else None,
                "min_lead_ps": float(np.min(leads)) if leads else None,
                "survived": len(survived),
                "false_alarms": sum(1 for a in survived if a["false_alarm"]),
                "median_peak_over_threshold": float(np.median(peaks)) if peaks else None,
            }
        )
    return sorted(rows, key=lambda row: row["role"])


def alarm_markdown(rows: Sequence[Mapping], limits: Mapping[str, dict]) -> list[str]:
    """The lines of the MD section about predicted uncertainty (empty without rows)."""
    if not rows:
        return []
    q = sorted({v["quantile"] for v in limits.values()})
    values = [v["sigma_ev_A"] for v in limits.values()]
    lines = [
        "",
        "**Predicted uncertainty as an alarm** (models with an uncertainty head): each run records the largest "
        "predicted σ over the box's atoms (`forces_std`) at its saved steps (every ~5 fs and the failing one, so "
        "a lead is resolved to ~5 fs and errs short); the threshold of a "
        f"model is the {', '.join(f'{100 * x:g}' for x in q)}th percentile of its predicted σ over the atoms of "
        f"its own training configurations ({min(values):.3g}–{max(values):.3g} eV/Å), not chosen from the MD. "
        "Lead: time from the first crossing to the failure (d_min < 0.5 Å); warned: crossed before the failing "
        "step; at failure: only there; missed: never; false alarms: runs that did not fail but crossed; peak: the "
        "median over runs of a run's largest σ over the threshold.",
        "",
        "| role | runs | failed | warned | at failure | missed | lead (ps, median / min) | survived | false alarms "
        "| peak / threshold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lead = "-" if row["median_lead_ps"] is None else f"{row['median_lead_ps']:.3f} / {row['min_lead_ps']:.3f}"
        peak = row.get("median_peak_over_threshold")
        lines.append(
            f"| {row['role']} | {row['runs']} | {row['failed']} | {row['warned']} | {row['at_failure']} | "
            f"{row['missed']} | {lead} | {row['survived']} | {row['false_alarms']} | "
            f"{'-' if peak is None else f'{peak:.2f}'} |"
        )
    return lines


__all__ = ["QUANTILE", "alarm", "alarm_markdown", "alarm_table", "has_head", "predict_sigma", "threshold", "thresholds"]
