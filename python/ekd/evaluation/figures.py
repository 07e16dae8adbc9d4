"""Figures of the report and of ``ekd score`` (matplotlib, ``pip install ekd[report]``).

The run's figures follow the paper's: :func:`energy_figure` (Fig. 2: E and ΔE RMSE of teachers,
ensembled teachers, students of each generation and controls) and :func:`forces_figure` (Fig. 5:
force RMSE of teachers, students and the baseline), from the ``metrics`` dict of
:mod:`ekd.evaluation.metrics`. :func:`parity_figures` draws predictions against a benchmark's reference.
Every PNG is written atomically, on a bare Agg figure (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..groups import BASELINE, CONTROL, STUDENT, TEACHER
from ..store import atomic_write
from .tables import ensemble_value, fmt, generation, group_title, groups_of, ordered_groups, ordered_sets, summary_value

# one colour per kind of row, the same in every figure
_COLOURS = {
    TEACHER: "#4c72b0",
    "teacher_ensemble": "#8fa8d6",
    CONTROL: "#8c8c8c",
    BASELINE: "#55a868",
}
_STUDENT_COLOURS = ("#dd8452", "#c44e52", "#937860", "#da8bc3")


def figure(width: float, height: float):
    """A bare Figure (inches) on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path) -> Path:
    """``fig`` as PNG at ``path``; atomic like every other output of a run: a killed run leaves no
    half-written PNG."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def bar_groups(ax, groups: list[str], bars: list[tuple[str, str, list, list]], unit: str) -> None:
    """Grouped bars: ``bars`` = [(name, colour, values per group, errors per group)]."""
    n = max(len(bars), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    top = 0.0
    for i, (name, colour, values, errors) in enumerate(bars):
        v = np.array([np.nan if a is None else a for a in values], dtype=float)
        e = np.array([0.0 if a is None else a for a in errors], dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        has_err = bool(np.any(e > 0))
        ax.bar(
            pos,
            np.nan_to_num(v),
            width * 0.92,
            color=colour,
            label=name,
            yerr=e if has_err else None,
            capsize=3 if has_err else 0,
            edgecolor="black",
            linewidth=0.4,
        )
        for p, val, err in zip(pos, v, e, strict=True):
            if math.isfinite(val):
                # above the error bar's cap; upright only where the bars are wide enough
                ax.annotate(
                    fmt(val),
                    (p, val + err),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90 if n * len(groups) > 6 else 0,
                )
                top = max(top, val + err)
    if len(groups) > 1:
        ax.set_xticks(x, groups)
    else:
        ax.set_xticks([])
    ax.set_ylabel(f"RMSE ({unit})")
    ax.set_ylim(0, top * 1.25 if top > 0 else 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _set_title(metrics: Mapping, set_name: str) -> str:
    s = metrics.get("sets", {}).get(set_name, {})
    return f"{set_name} ({s.get('n_configurations', '?')} conf., {s.get('n_molecules', '?')} mol.)"


def _groups_with_colour(metrics: Mapping, set_name: str, roles: Sequence[str]):
    """(name, entry, role, colour) of the groups of ``roles`` scored on ``set_name``, in report order."""
    groups = groups_of(metrics)
    for name in ordered_groups(metrics):
        entry = groups[name]
        role = entry.get("role")
        if set_name not in entry or role not in roles:
            continue
        if role == STUDENT:
            colour = _STUDENT_COLOURS[(generation(name, entry) - 1) % len(_STUDENT_COLOURS)]
        else:
            colour = _COLOURS[role]
        yield name, entry, role, colour


def _legend_below(fig, axes, ncol: int, title: str) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), ncol), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)


def energy_figure(metrics: Mapping, path: Path) -> Path | None:
    """Fig. 2 style: E and ΔE RMSE per test set; bars = teachers, ensembled teachers, students, controls."""
    sets = ordered_sets(metrics)
    if not sets or not groups_of(metrics):
        return None
    fig = figure(4.2 * len(sets) + 0.5, 4.0)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    keys = [("energy_rmse", "E"), ("delta_e_rmse", "ΔE")]
    for ax, set_name in zip(axes, sets, strict=True):
        bars = []
        for name, entry, role, colour in _groups_with_colour(metrics, set_name, (TEACHER, STUDENT, CONTROL)):
            mean_std = [summary_value(entry, set_name, k) for k, _ in keys]
            bars.append((group_title(name, entry), colour, [m for m, _ in mean_std], [s for _, s in mean_std]))
            if role == TEACHER:
                ens = [ensemble_value(entry, set_name, k) for k, _ in keys]
                bars.append((group_title(name, entry, True), _COLOURS["teacher_ensemble"], ens, [None] * 2))
        bar_groups(ax, [g for _, g in keys], bars, "kcal/mol")
        ax.set_title(_set_title(metrics, set_name), fontsize=10)
    _legend_below(fig, axes, 5, "Energy and conformer energy-difference errors (error bars: std over members)")
    return save_png(fig, path)


def forces_figure(metrics: Mapping, path: Path) -> Path | None:
    """Fig. 5 style: force RMSE per test set; bars = teachers, students of each generation, baseline.

    Test sets without reference forces are left out; ``None`` (no file) if no set has any.
    """
    groups = groups_of(metrics)

    def has_forces(set_name):
        return any(summary_value(groups[g], set_name, "force_rmse")[0] is not None for g in groups)

    sets = [s for s in ordered_sets(metrics) if has_forces(s)]
    if not sets:
        return None
    fig = figure(2.6 * len(sets) + 1.8, 4.0)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, set_name in zip(axes, sets, strict=True):
        bars = []
        for name, entry, _, colour in _groups_with_colour(metrics, set_name, (TEACHER, STUDENT, BASELINE)):
            m, s = summary_value(entry, set_name, "force_rmse")
            bars.append((group_title(name, entry), colour, [m], [s]))
        bar_groups(ax, ["F"], bars, "kcal/mol/Å")
        ax.set_title(_set_title(metrics, set_name), fontsize=10)
    _legend_below(fig, axes, 4, "Force errors vs reference forces (error bars: std over members)")
    return save_png(fig, path)


def _diagonal(ax) -> None:
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.6)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)


def parity_figures(
    out_dir: Path,
    reference: Mapping[str, np.ndarray | None],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    summaries: Mapping[str, Mapping],
    title: str,
) -> list[Path]:
    """``energy_parity.png`` and ``forces_parity.png`` (each group's ensembled prediction against the
    reference; energies relative to each molecule's lowest reference energy) and ``errors.png``
    (E, ΔE and F RMSE per group, members' mean ± std).

    reference: ``energy`` (n,), ``molecule`` (n,) molecule index, ``n_molecules``, ``species`` (n, A)
    and ``forces`` (n, A, 3) or None. predictions: {group: {"energy": (k, n), "forces": (k, n, A, 3)}}
    in kcal/mol (Å). summaries: {group: :func:`ekd.evaluation.metrics.summarize` of its members}.
    """
    out_dir = Path(out_dir)
    ref_e, molecule = reference["energy"], reference["molecule"]
    lowest = np.full(int(reference["n_molecules"]), np.inf)
    np.minimum.at(lowest, molecule, ref_e)
    offset = lowest[molecule]
    ref_f = reference.get("forces")
    names = list(predictions)
    colours = [f"C{i % 10}" for i in range(len(names))]
    written = []

    fig = figure(4.6, 4.4)
    ax = fig.subplots()
    for name, colour in zip(names, colours, strict=True):
        pred = predictions[name]["energy"].mean(axis=0)
        ax.scatter(ref_e - offset, pred - offset, s=6, alpha=0.6, color=colour, label=name)
    _diagonal(ax)
    ax.set_xlabel("reference E − molecule's lowest reference E (kcal/mol)")
    ax.set_ylabel("predicted E − same offset (kcal/mol)")
    ax.legend(fontsize=7)
    written.append(save_png(fig, out_dir / "energy_parity.png"))

    if ref_f is not None:
        fig = figure(4.6, 4.4)
        ax = fig.subplots()
        ok = (reference["species"] > 0) & np.isfinite(ref_f).all(axis=-1)
        for name, colour in zip(names, colours, strict=True):
            pred = predictions[name]["forces"].mean(axis=0)
            ax.scatter(ref_f[ok].ravel(), pred[ok].ravel(), s=3, alpha=0.4, color=colour, label=name)
        _diagonal(ax)
        ax.set_xlabel("reference force component (kcal/mol/Å)")
        ax.set_ylabel("predicted force component (kcal/mol/Å)")
        ax.legend(fontsize=7)
        written.append(save_png(fig, out_dir / "forces_parity.png"))

    fig = figure(max(4.0, 1.6 + 1.2 * len(names)), 4.0)
    ax = fig.subplots()
    metrics = [("energy_rmse", "E"), ("delta_e_rmse", "ΔE"), ("force_rmse", "F")]
    bars = [
        (
            name,
            colour,
            [summaries[name][k]["mean"] for k, _ in metrics],
            [summaries[name][k]["std"] for k, _ in metrics],
        )
        for name, colour in zip(names, colours, strict=True)
    ]
    bar_groups(ax, [m for _, m in metrics], bars, "kcal/mol, kcal/mol/Å")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    written.append(save_png(fig, out_dir / "errors.png"))
    return written


__all__ = ["bar_groups", "energy_figure", "figure", "forces_figure", "parity_figures", "save_png"]
