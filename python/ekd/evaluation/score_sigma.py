"""``ekd score``'s calibration of predicted uncertainty (issue 28, item 3) for groups whose model
files carry an uncertainty head (they predict their teachers' per-atom force spread sigma_i).

On a benchmark file the teachers are not known, only the reference forces: so the numbers are
Spearman rho of each member's predicted sigma_i against its own per-atom force error
|F_i - F_ref,i| (over atoms, and over configurations each by its largest value over atoms), and,
for a group of several members, the same rho of the group's ensemble spread (its members' forces
about their mean) against the error of the mean: what a k-times-dearer ensemble achieves with
its own spread. Both come from :func:`ekd.evaluation.metrics.calibration` (the numbers
``ekd evaluate`` reports), called with the group's members as the ensemble.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..data import Dataset
from .metrics import calibration
from .tables import fmt, text_table

#: the per-member numbers ``ekd score`` reports (metrics.CALIBRATION's own-error ones)
KEYS = ("rho_error", "rho_error_max")


def group_calibration(sigmas: Sequence[np.ndarray | None], forces: np.ndarray, data: Dataset) -> dict | None:
    """The calibration entry of one group, or None when no member has a head.

    sigmas: per member its predicted sigma (n, A) kcal/mol/A, None for a member without a head;
    forces (k, n, A, 3): every member's forces; data: the scored configurations, whose
    ``reference_forces`` (n, A, 3) the errors are taken against (NaN: unknown; none in the file:
    every rho is None and ``note`` says why).

    Returns {"members_with_head": [member index, ...], "members": [{KEYS: rho}, ...] (those members,
    in that order), "summary": {KEYS: {mean, std, n}}, "ensemble": {KEYS: rho} of the whole group's
    spread (None for one member), "note": str | None}.
    """
    ref_forces, species = data.properties.get("reference_forces"), data.species
    heads = [i for i, s in enumerate(sigmas) if s is not None]
    if not heads:
        return None
    forces = np.asarray(forces, dtype=np.float64)
    if forces.ndim != 4 or forces.shape[0] != len(sigmas):
        raise ValueError(f"forces: expected (k={len(sigmas)}, n, A, 3), got {forces.shape}")
    sig = np.stack([np.asarray(sigmas[i], dtype=np.float64) for i in heads])
    if sig.shape[1:] != forces.shape[1:3]:
        raise ValueError(f"sigma: expected (n, A) = {forces.shape[1:3]} per member, got {sig.shape[1:]}")
    many = forces.shape[0] > 1
    cal = calibration(sig, forces[heads], forces if many else None, ref_forces, species)
    summary = {k: cal["summary"][k] for k in KEYS}
    return {
        "members_with_head": heads,
        "members": [{k: m[k] for k in KEYS} for m in cal["members"]],
        "summary": summary,
        "ensemble": {k: cal["teachers"][k] for k in KEYS} if many else None,
        "note": None if ref_forces is not None else "the file has no reference forces: no force errors to rank",
    }


HEADER = [
    "",
    "heads",
    "σ vs own error / atom",
    "ensemble σ vs its error / atom",
    "ratio",
    "σ vs own error / conf.",
    "ensemble σ vs its error / conf.",
]


def format_lines(groups: Mapping[str, Mapping]) -> list[str]:
    """The calibration table ``ekd score`` prints (empty when no group has a head): per group the
    members' mean ± std rho, the ensemble's, their ratio (target >= 0.9, issue 28); per member
    rows when a group has several members with a head."""
    rows = []
    notes = []
    for name, g in groups.items():
        cal = g.get("calibration")
        if not cal:
            continue
        ens = cal["ensemble"] or {}
        own, their = cal["summary"]["rho_error"]["mean"], ens.get("rho_error")
        ratio = f"{own / their:.2f}" if own is not None and their else "n/a"
        several = len(cal["members_with_head"]) > 1

        def mean_std(key, c=cal, several=several):  # ± the members' std only where there are several
            return fmt(c["summary"][key]["mean"], c["summary"][key]["std"] if several else None)

        rows.append(
            [
                name,
                f"{len(cal['members_with_head'])}/{g['n_members']}",
                mean_std("rho_error"),
                fmt(their),
                ratio,
                mean_std("rho_error_max"),
                fmt(ens.get("rho_error_max")),
            ]
        )
        if several:
            for i, m in zip(cal["members_with_head"], cal["members"], strict=True):
                own_i, max_i = fmt(m["rho_error"]), fmt(m["rho_error_max"])
                rows.append([f"  {g['member_names'][i]}", "1", own_i, "", "", max_i, ""])
        if cal["note"]:
            notes.append(f"  {name}: {cal['note']}")
    if not rows:
        return []
    title = (
        "predicted uncertainty (models with a head): Spearman ρ of predicted σ_i vs the model's own "
        "|F_i − F_ref,i|; ensemble: the group's force spread vs the error of its mean; ratio: own over "
        "ensemble (target ≥ 0.9); conf.: per configuration, its largest value over atoms"
    )
    return ["", title, *text_table(HEADER, rows), *notes]


__all__ = ["HEADER", "KEYS", "format_lines", "group_calibration"]
