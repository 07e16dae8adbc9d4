"""The markdown report of a run, its figures, and the one-screen summary printed by the CLI.

Input is the ``metrics`` dict of :mod:`ekd.evaluate` (schema in its docstring); nothing here
touches models or data. Figures follow the paper's: ``figures/energy.png`` (Fig. 2: E and ΔE RMSE
of teachers, ensembled teachers, students of each generation and controls) and
``figures/forces.png`` (Fig. 5: force RMSE of teachers, students and the baseline). matplotlib
(``pip install ekd[report]``) is needed for figures only; without it the report says so.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

#: columns of the tables: (metric key in a score, header)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("energy_rmse", "E RMSE"),
    ("energy_mae", "E MAE"),
    ("delta_e_rmse", "ΔE RMSE"),
    ("force_rmse", "F RMSE"),
)
#: metrics whose relative change students vs teachers/controls is reported
CHANGE_METRICS: tuple[tuple[str, str], ...] = (
    ("energy_rmse", "E RMSE"),
    ("delta_e_rmse", "ΔE RMSE"),
    ("force_rmse", "F RMSE"),
)
_ROLE_ORDER = {"teacher": 0, "student": 1, "control": 2, "baseline": 3}
# one colour per kind of row, the same in every figure
_COLOURS = {
    "teacher": "#4c72b0",
    "teacher_ensemble": "#8fa8d6",
    "control": "#8c8c8c",
    "baseline": "#55a868",
}
_STUDENT_COLOURS = ("#dd8452", "#c44e52", "#937860", "#da8bc3")


# ------------------------------------------------------------------------------------------
# helpers


def _generation(label: str, entry: Mapping) -> int:
    m = re.search(r"gen(\d+)$", label)
    return int(m.group(1)) if m else int(entry.get("generation", 0))


def ordered_roles(metrics: Mapping) -> list[str]:
    """Role labels in report order: teachers, students by generation, controls, baseline, others."""
    roles = metrics.get("roles", {})

    def key(label):
        entry = roles[label]
        return (_ROLE_ORDER.get(entry.get("role", label), 9), _generation(label, entry), label)

    return sorted(roles, key=key)


def role_name(label: str, entry: Mapping | None = None, ensembled: bool = False) -> str:
    """Human name of a group: teacher -> teachers, student_gen2 -> students gen 2, ..."""
    entry = entry or {}
    role = entry.get("role", label)
    if role == "student" or label.startswith("student"):
        name = f"students gen {_generation(label, entry)}"
    elif role in ("teacher", "control"):
        name = f"{role}s"
    else:
        name = label.replace("_", " ")
    return f"ensembled {name}" if ensembled else name


def _decimals(x: float) -> int:
    # three significant figures of the mean, at most 4 decimals
    if x == 0 or not math.isfinite(x):
        return 2
    return max(0, min(4, 2 - math.floor(math.log10(abs(x)))))


def fmt(value, std=None) -> str:
    """'1.23' or '1.23 ± 0.04' (std with the mean's decimals); 'n/a' for a missing value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    d = _decimals(value)
    if std is None:
        return f"{value:.{d}f}"
    return f"{value:.{d}f} ± {std:.{d}f}"


def _summary_value(entry: Mapping, set_name: str, key: str) -> tuple[float | None, float | None]:
    s = entry.get(set_name, {}).get("summary", {}).get(key) or {}
    return s.get("mean"), s.get("std")


def _ensemble_value(entry: Mapping, set_name: str, key: str) -> float | None:
    return entry.get(set_name, {}).get("ensemble", {}).get(key)


def table_rows(metrics: Mapping, set_name: str) -> list[tuple[str, int | str, list[str]]]:
    """(row name, members, [cell per COLUMNS]) for each role: members 'mean ± std', then the ensemble."""
    rows = []
    roles = metrics.get("roles", {})
    for label in ordered_roles(metrics):
        entry = roles[label]
        if set_name not in entry:
            continue
        k = entry.get("n_members", len(entry[set_name].get("members", [])))
        cells = [fmt(*_summary_value(entry, set_name, key)) for key, _ in COLUMNS]
        rows.append((role_name(label, entry), k, cells))
        cells = [fmt(_ensemble_value(entry, set_name, key)) for key, _ in COLUMNS]
        rows.append((role_name(label, entry, ensembled=True), "mean", cells))
    return rows


def _change(new, old) -> str:
    if new is None or old is None or not old or not (math.isfinite(new) and math.isfinite(old)):
        return "n/a"
    return f"{100.0 * (new - old) / old:+.1f} %"


def relative_changes(metrics: Mapping, set_name: str) -> list[tuple[str, list[str]]]:
    """Students (member mean) vs teachers (member mean), ensembled teachers, and controls, in %.

    Negative = students have the lower error. One row per (student generation, comparison).
    """
    roles = metrics.get("roles", {})
    teacher = next((lab for lab in ordered_roles(metrics) if roles[lab].get("role") == "teacher"), None)
    control = next((lab for lab in ordered_roles(metrics) if roles[lab].get("role") == "control"), None)
    out = []
    for label in ordered_roles(metrics):
        entry = roles[label]
        if entry.get("role") != "student" or set_name not in entry:
            continue
        name = role_name(label, entry)
        refs = []
        if teacher and set_name in roles[teacher]:
            refs.append(("teachers", lambda k: _summary_value(roles[teacher], set_name, k)[0]))
            refs.append(("ensembled teachers", lambda k: _ensemble_value(roles[teacher], set_name, k)))
        if control and set_name in roles[control]:
            refs.append(("controls", lambda k: _summary_value(roles[control], set_name, k)[0]))
        for ref_name, get in refs:
            cells = [_change(_summary_value(entry, set_name, k)[0], get(k)) for k, _ in CHANGE_METRICS]
            out.append((f"{name} vs {ref_name}", cells))
    return out


def _markdown_table(header: list[str], rows: list[list[str]], align: str = "l") -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---"] + [("---:" if align == "r" else ":---")] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# ------------------------------------------------------------------------------------------
# figures


def _figure(width: float, height: float):
    # a bare Figure on the Agg canvas: no pyplot global state, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    # atomic like every other output of a run: a killed run leaves no half-written PNG
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _bar_groups(ax, groups: list[str], bars: list[tuple[str, str, list, list]], unit: str) -> None:
    """Grouped bars: ``bars`` = [(name, colour, values per group, errors per group)]."""
    import numpy as np

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


def _student_colour(label: str, entry: Mapping) -> str:
    return _STUDENT_COLOURS[(_generation(label, entry) - 1) % len(_STUDENT_COLOURS)]


def energy_figure(metrics: Mapping, path: Path) -> Path | None:
    """Fig. 2 style: E and ΔE RMSE per test set; bars = teachers, ensembled teachers, students, controls."""
    roles = metrics.get("roles", {})
    sets = ordered_sets(metrics)
    if not sets or not roles:
        return None
    fig = _figure(4.2 * len(sets) + 0.5, 4.0)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    groups = [("energy_rmse", "E"), ("delta_e_rmse", "ΔE")]
    for ax, set_name in zip(axes, sets, strict=True):
        bars = []
        for label in ordered_roles(metrics):
            entry = roles[label]
            role = entry.get("role")
            if set_name not in entry or role not in ("teacher", "student", "control"):
                continue
            mean_std = [_summary_value(entry, set_name, k) for k, _ in groups]
            colour = _student_colour(label, entry) if role == "student" else _COLOURS[role]
            bars.append((role_name(label, entry), colour, [m for m, _ in mean_std], [s for _, s in mean_std]))
            if role == "teacher":
                ens = [_ensemble_value(entry, set_name, k) for k, _ in groups]
                bars.append((role_name(label, entry, True), _COLOURS["teacher_ensemble"], ens, [None] * 2))
        _bar_groups(ax, [g for _, g in groups], bars, "kcal/mol")
        ax.set_title(_set_title(metrics, set_name), fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle("Energy and conformer energy-difference errors (error bars: std over members)", fontsize=10)
    return _save(fig, path)


def forces_figure(metrics: Mapping, path: Path) -> Path | None:
    """Fig. 5 style: force RMSE per test set; bars = teachers, students of each generation, baseline.

    Test sets without reference forces are left out; ``None`` (no file) if no set has any.
    """
    roles = metrics.get("roles", {})
    sets = [
        s
        for s in ordered_sets(metrics)
        if any((roles[r].get(s, {}).get("summary", {}).get("force_rmse") or {}).get("mean") is not None for r in roles)
    ]
    if not sets:
        return None
    fig = _figure(2.6 * len(sets) + 1.8, 4.0)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, set_name in zip(axes, sets, strict=True):
        bars = []
        for label in ordered_roles(metrics):
            entry = roles[label]
            role = entry.get("role")
            if set_name not in entry or role not in ("teacher", "student", "baseline"):
                continue
            m, s = _summary_value(entry, set_name, "force_rmse")
            colour = _student_colour(label, entry) if role == "student" else _COLOURS[role]
            bars.append((role_name(label, entry), colour, [m], [s]))
        _bar_groups(ax, ["F"], bars, "kcal/mol/Å")
        ax.set_title(_set_title(metrics, set_name), fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle("Force errors vs reference forces (error bars: std over members)", fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------
# report and summary


def _config_line(metrics: Mapping) -> tuple[str, float]:
    cfg = metrics.get("config", {}) or {}
    name = cfg.get("name", "?")
    window = (cfg.get("evaluate") or {}).get("conformer_window", 100.0)
    return name, window


def ordered_sets(metrics: Mapping) -> list[str]:
    """Test-set names, the out-of-sample pool (the paper's headline) first."""
    sets = list(metrics.get("sets", {}))
    return sorted(sets, key=lambda s: (s != "test_pool", s != "test_split", sets.index(s)))


def main_metrics(metrics: Mapping) -> dict:
    """``metrics`` with only the main groups (teachers, students, controls, baseline): the studies'
    groups (capacity variants, teacher subsets, external teacher) have their own tables."""
    roles = {k: v for k, v in metrics.get("roles", {}).items() if not v.get("study")}
    return {**metrics, "roles": roles}


def _row(entry: Mapping | None, set_name: str, key: str) -> float | None:
    return None if entry is None else _summary_value(entry, set_name, key)[0]


def _cell(entry: Mapping | None, set_name: str, key: str) -> str:
    return "n/a" if entry is None else fmt(*_summary_value(entry, set_name, key))


def study_sections(metrics: Mapping) -> list[str]:
    """Markdown of the studies present in ``metrics`` (each on the out-of-sample pool when there is
    one): capacity sweep (students vs controls per student architecture, cf. the paper's Fig. 4),
    ensemble size (students of k teachers vs of all, cf. SI 1), external teacher (cf. SI 2)."""
    roles = metrics.get("roles", {})
    sets = ordered_sets(metrics)
    if not sets or not any(v.get("study") for v in roles.values()):
        return []
    set_name = sets[0]
    lines = ["## Studies", "", f"Test set `{set_name}`; member mean ± std; Δ: students vs the reference, in %.", ""]
    cfg = metrics.get("config", {}) or {}
    student_model = (cfg.get("ensemble") or {}).get("student_model") or cfg.get("model") or {}

    variants = [(lab, e) for lab, e in roles.items() if e.get("study") == "capacity" and e["role"] == "student"]
    if variants:
        rows = []
        base = [(None, roles.get("student_gen1"), roles.get("control"), student_model)]
        for _, e in variants:
            name = e["variant"]
            base.append((name, e, roles.get(f"control@{name}"), e.get("model", {})))
        for name, st, co, model in base:
            arch = f"n_int={model.get('n_interactions', '?')}, l_max={model.get('l_max', '?')}"
            rows.append(
                [
                    f"{name or 'students'} ({arch})",
                    _cell(st, set_name, "energy_rmse"),
                    _cell(co, set_name, "energy_rmse"),
                    _change(_row(st, set_name, "energy_rmse"), _row(co, set_name, "energy_rmse")),
                    _cell(st, set_name, "delta_e_rmse"),
                    _cell(co, set_name, "delta_e_rmse"),
                    _change(_row(st, set_name, "delta_e_rmse"), _row(co, set_name, "delta_e_rmse")),
                ]
            )
        lines += ["### Capacity sweep: students vs controls per student architecture (cf. Fig. 4)", ""]
        header = ["architecture", "E students", "E controls", "Δ E", "ΔE students", "ΔE controls", "Δ ΔE"]
        lines += _markdown_table(header, rows, "r") + [""]

    subsets = sorted(
        ((e["teacher_members"], lab, e) for lab, e in roles.items() if e.get("study") == "teachers"),
        key=lambda t: t[0],
    )
    full = roles.get("student_gen1")
    if subsets:
        n_teachers = roles.get("teacher", {}).get("n_members", "all")
        rows = []
        for k, _, e in [*subsets, (n_teachers, "student_gen1", full)]:
            rows.append(
                [
                    f"{k} teacher{'s' if k != 1 else ''}",
                    *(_cell(e, set_name, key) for key in ("energy_rmse", "delta_e_rmse", "force_rmse")),
                    *(
                        _change(_row(e, set_name, key), _row(full, set_name, key))
                        for key in ("energy_rmse", "delta_e_rmse", "force_rmse")
                    ),
                ]
            )
        lines += ["### Ensemble size: students taught by k teachers (cf. SI 1)", ""]
        header = ["students of", "E RMSE", "ΔE RMSE", "F RMSE", "Δ E vs all", "Δ ΔE vs all", "Δ F vs all"]
        lines += _markdown_table(header, rows, "r") + [""]

    external = roles.get("student_external")
    if external:
        teacher = (cfg.get("ensemble") or {}).get("external_teacher", "external")
        rows = []
        for name, e in ((f"students of {teacher}", external), ("students of the HIPNN teachers", full)):
            rows.append([name, *(_cell(e, set_name, key) for key in ("energy_rmse", "delta_e_rmse", "force_rmse"))])
        rows.append(
            [
                "Δ (external vs HIPNN teachers)",
                *(
                    _change(_row(external, set_name, key), _row(full, set_name, key))
                    for key in ("energy_rmse", "delta_e_rmse", "force_rmse")
                ),
            ]
        )
        lines += ["### Cross-architecture teacher (cf. SI 2)", ""]
        lines += _markdown_table(["", "E RMSE", "ΔE RMSE", "F RMSE"], rows, "r") + [""]
    return lines


def write_report(metrics: Mapping, out_dir: str | os.PathLike, notes: str = "", figures: bool = True) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/figures/{energy,forces}.png``; return the report path.

    The report states what was run (config name, test-set and ensemble sizes, ``notes``), one table
    per test set (rows: each role's members as 'mean ± std' over members, then its ensembled
    prediction; columns E RMSE, E MAE, ΔE RMSE in kcal/mol and F RMSE in kcal/mol/Å), and the
    relative change of students vs teachers and controls. ``figures=False`` skips the PNGs (the
    slow part: about a second each).
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    studies = study_sections(metrics)
    metrics = main_metrics(metrics)
    name, window = _config_line(metrics)
    roles = metrics.get("roles", {})
    sets = {name: metrics["sets"][name] for name in ordered_sets(metrics)}

    lines = [f"# ekd report — config `{name}`", "", "## What was run", ""]
    if notes:
        lines += [notes, ""]
    for set_name, s in sets.items():
        lines.append(
            f"- test set `{set_name}`: {s.get('description', '')} — {s.get('n_configurations', '?')} "
            f"configurations of {s.get('n_molecules', '?')} molecules"
        )
    for label in ordered_roles(metrics):
        e = roles[label]
        lines.append(f"- {role_name(label, e)} (`{label}`): {e.get('n_members', '?')} member(s)")
    lines += [
        "",
        "Energies in kcal/mol, forces in kcal/mol/Å (RMSE per Cartesian component over real atoms). "
        "Member rows are mean ± std (population std, ddof=0) over the members; *ensembled* rows score the "
        "mean prediction of the members. ΔE: all pairs of conformers of the same molecule, excluding "
        f"conformers more than {window:g} kcal/mol above the molecule's lowest reference energy "
        "(as in the paper). n/a: not computable (e.g. no reference forces).",
        "",
    ]

    for set_name in sets:
        lines += [f"## {set_name}", ""]
        if sets[set_name].get("description"):
            lines += [f"{sets[set_name]['description']}.", ""]
        rows = table_rows(metrics, set_name)
        header = ["", "members"] + [h for _, h in COLUMNS]
        lines += _markdown_table(header, [[f"**{r}**" if k != "mean" else r, k, *c] for r, k, c in rows], "r")
        changes = relative_changes(metrics, set_name)
        if changes:
            lines += ["", "Relative change of the students' mean error (negative: students better):", ""]
            lines += _markdown_table(["", *(h for _, h in CHANGE_METRICS)], [[r, *c] for r, c in changes], "r")
        counts = _counts_line(metrics, set_name)
        if counts:
            lines += ["", counts]
        lines.append("")

    lines += studies
    for engine, md in (metrics.get("md_stability") or {}).items():
        lines += [
            md["markdown"].rstrip(),
            "",
            f"![MD stability, {engine} (cf. Fig. 3 of the paper)]({md['figure']})",
            "",
        ]
    lines += ["## Figures", ""]
    if not figures:
        lines += ["Figures not requested.", ""]
        return _write_text(out_dir / "report.md", lines)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        lines += ["matplotlib is not installed (`pip install ekd[report]`): no figures.", ""]
    else:
        if energy_figure(metrics, fig_dir / "energy.png"):
            lines += ["![E and ΔE RMSE (cf. Fig. 2 of the paper)](figures/energy.png)", ""]
        if forces_figure(metrics, fig_dir / "forces.png"):
            lines += ["![Force RMSE (cf. Fig. 5 of the paper)](figures/forces.png)", ""]
        else:
            lines += ["No test set has reference forces: no force figure.", ""]

    return _write_text(out_dir / "report.md", lines)


def _write_text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _counts_line(metrics: Mapping, set_name: str) -> str:
    for entry in metrics.get("roles", {}).values():
        ens = entry.get(set_name, {}).get("ensemble")
        if ens:
            return (
                f"Scored: {ens.get('n_configurations')} configurations, {ens.get('n_pairs')} conformer pairs "
                f"({ens.get('n_window_excluded')} conformers outside the ΔE window), "
                f"{ens.get('n_atoms')} atoms with reference forces."
            )
    return ""


def summary_table(metrics: Mapping, set_name: str) -> str:
    """A compact fixed-width table of one test set (the CLI's end-of-run summary)."""
    metrics = main_metrics(metrics)
    s = metrics.get("sets", {}).get(set_name, {})
    title = f"{set_name}: {s.get('n_configurations', '?')} configurations, {s.get('n_molecules', '?')} molecules"
    header = ["", "k", *(h for _, h in COLUMNS)]
    body = [[r, str(k), *c] for r, k, c in table_rows(metrics, set_name)]
    # relative changes go under the columns they belong to; E MAE has none
    where = {key: i + 2 for i, (key, _) in enumerate(COLUMNS)}
    for r, c in relative_changes(metrics, set_name):
        row = [f"Δ {r}", ""] + [""] * len(COLUMNS)
        for (key, _), cell in zip(CHANGE_METRICS, c, strict=True):
            row[where[key]] = cell
        body.append(row)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *map(line, body), rule])


__all__ = [
    "COLUMNS",
    "energy_figure",
    "forces_figure",
    "fmt",
    "ordered_roles",
    "ordered_sets",
    "relative_changes",
    "role_name",
    "summary_table",
    "table_rows",
    "write_report",
]
