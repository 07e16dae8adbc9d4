"""The markdown report of a run (``report.md`` and its figures).

Input is the ``metrics`` dict of :mod:`ekd.evaluation.metrics` (schema in its docstring); nothing here
touches models or data. The tables come from :mod:`ekd.evaluation.tables`, the figures (the paper's Fig. 2
and Fig. 5) from :mod:`ekd.evaluation.figures`; matplotlib (``pip install ekd[report]``) is needed for
figures only; without it the report says so. The studies' sections compare groups found by the
names :mod:`ekd.groups` gives them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..groups import CONTROL, STUDENT, STUDENT_EXTERNAL, TEACHER, student_group, variant_group
from ..store import atomic_write
from .figures import energy_figure, forces_figure
from .tables import (
    CALIBRATION_HEADER,
    CHANGE_METRICS,
    COLUMNS,
    calibration_rows,
    change,
    fmt,
    group_title,
    groups_of,
    main_metrics,
    markdown_table,
    ordered_groups,
    ordered_sets,
    relative_changes,
    summary_table,
    summary_value,
    table_rows,
)

#: the main students the studies compare with
_MAIN_STUDENTS = student_group(1)


def _config_line(metrics: Mapping) -> tuple[str, float]:
    cfg = metrics.get("config", {}) or {}
    name = cfg.get("name", "?")
    window = (cfg.get("evaluate") or {}).get("conformer_window", 100.0)
    return name, window


def _row(entry: Mapping | None, set_name: str, key: str) -> float | None:
    return None if entry is None else summary_value(entry, set_name, key)[0]


def _cell(entry: Mapping | None, set_name: str, key: str) -> str:
    return "n/a" if entry is None else fmt(*summary_value(entry, set_name, key))


def study_sections(metrics: Mapping) -> list[str]:
    """Markdown of the studies present in ``metrics`` (each on the out-of-sample pool when there is
    one): capacity sweep (students vs controls per student architecture, cf. the paper's Fig. 4),
    ensemble size (students of k teachers vs of all, cf. SI 1), external teacher (cf. SI 2)."""
    groups = groups_of(metrics)
    sets = ordered_sets(metrics)
    if not sets or not any(v.get("study") for v in groups.values()):
        return []
    set_name = sets[0]
    lines = ["## Studies", "", f"Test set `{set_name}`; member mean ± std; Δ: students vs the reference, in %.", ""]
    cfg = metrics.get("config", {}) or {}
    student_model = (cfg.get("ensemble") or {}).get("student_model") or cfg.get("model") or {}

    full = groups.get(_MAIN_STUDENTS)
    variants = [e for e in groups.values() if e.get("study") == "capacity" and e["role"] == STUDENT]
    if variants:
        rows = []
        base = [(None, full, groups.get(CONTROL), student_model)]
        for e in variants:
            name = e["variant"]
            base.append((name, e, groups.get(variant_group(CONTROL, name)), e.get("model", {})))
        for name, st, co, model in base:
            arch = f"n_int={model.get('n_interactions', '?')}, l_max={model.get('l_max', '?')}"
            rows.append(
                [
                    f"{name or 'students'} ({arch})",
                    _cell(st, set_name, "energy_rmse"),
                    _cell(co, set_name, "energy_rmse"),
                    change(_row(st, set_name, "energy_rmse"), _row(co, set_name, "energy_rmse")),
                    _cell(st, set_name, "delta_e_rmse"),
                    _cell(co, set_name, "delta_e_rmse"),
                    change(_row(st, set_name, "delta_e_rmse"), _row(co, set_name, "delta_e_rmse")),
                ]
            )
        lines += ["### Capacity sweep: students vs controls per student architecture (cf. Fig. 4)", ""]
        header = ["architecture", "E students", "E controls", "Δ E", "ΔE students", "ΔE controls", "Δ ΔE"]
        lines += markdown_table(header, rows, "r") + [""]

    subsets = sorted(
        ((e["teacher_members"], e) for e in groups.values() if e.get("study") == "teachers"),
        key=lambda t: t[0],
    )
    if subsets:
        n_teachers = groups.get(TEACHER, {}).get("n_members", "all")
        rows = []
        for k, e in [*subsets, (n_teachers, full)]:
            rows.append(
                [
                    f"{k} teacher{'s' if k != 1 else ''}",
                    *(_cell(e, set_name, key) for key in ("energy_rmse", "delta_e_rmse", "force_rmse")),
                    *(
                        change(_row(e, set_name, key), _row(full, set_name, key))
                        for key in ("energy_rmse", "delta_e_rmse", "force_rmse")
                    ),
                ]
            )
        lines += ["### Ensemble size: students taught by k teachers (cf. SI 1)", ""]
        header = ["students of", "E RMSE", "ΔE RMSE", "F RMSE", "Δ E vs all", "Δ ΔE vs all", "Δ F vs all"]
        lines += markdown_table(header, rows, "r") + [""]

    external = groups.get(STUDENT_EXTERNAL)
    if external:
        teacher = (cfg.get("ensemble") or {}).get("external_teacher", "external")
        rows = []
        for name, e in ((f"students of {teacher}", external), ("students of the HIPNN teachers", full)):
            rows.append([name, *(_cell(e, set_name, key) for key in ("energy_rmse", "delta_e_rmse", "force_rmse"))])
        rows.append(
            [
                "Δ (external vs HIPNN teachers)",
                *(
                    change(_row(external, set_name, key), _row(full, set_name, key))
                    for key in ("energy_rmse", "delta_e_rmse", "force_rmse")
                ),
            ]
        )
        lines += ["### Cross-architecture teacher (cf. SI 2)", ""]
        lines += markdown_table(["", "E RMSE", "ΔE RMSE", "F RMSE"], rows, "r") + [""]
    return lines


def write_report(metrics: Mapping, out_dir: str | os.PathLike, notes: str = "", figures: bool = True) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/figures/{energy,forces}.png``; return the report path.

    The report states what was run (config name, test-set and ensemble sizes, ``notes``), one table
    per test set (rows: each group's members as 'mean ± std' over members, then its ensembled
    prediction; columns E RMSE, E MAE, ΔE RMSE in kcal/mol and F RMSE in kcal/mol/Å), and the
    relative change of students vs teachers and controls. ``figures=False`` skips the PNGs (the
    slow part: about a second each).
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    studies = study_sections(metrics)
    metrics = main_metrics(metrics)
    name, window = _config_line(metrics)
    groups = groups_of(metrics)
    sets = {name: metrics["sets"][name] for name in ordered_sets(metrics)}

    lines = [f"# ekd report — config `{name}`", "", "## What was run", ""]
    if notes:
        lines += [notes, ""]
    for set_name, s in sets.items():
        lines.append(
            f"- test set `{set_name}`: {s.get('description', '')} — {s.get('n_configurations', '?')} "
            f"configurations of {s.get('n_molecules', '?')} molecules"
        )
    for group in ordered_groups(metrics):
        e = groups[group]
        lines.append(f"- {group_title(group, e)} (`{group}`): {e.get('n_members', '?')} member(s)")
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
        lines += markdown_table(header, [[f"**{r}**" if k != "mean" else r, k, *c] for r, k, c in rows], "r")
        changes = relative_changes(metrics, set_name)
        if changes:
            lines += ["", "Relative change of the students' mean error (negative: students better):", ""]
            lines += markdown_table(["", *(h for _, h in CHANGE_METRICS)], [[r, *c] for r, c in changes], "r")
        counts = _counts_line(metrics, set_name)
        if counts:
            lines += ["", counts]
        calib = calibration_rows(metrics, set_name)
        if calib:
            lines += [
                "",
                "Predicted uncertainty (students with an uncertainty head): Spearman ρ of the predicted "
                "per-atom force spread σ against the teachers' σ and against the member's own force error "
                "|F − F_ref| per atom, next to the teacher ensemble's σ against the error of its mean; "
                "*conf.*: over configurations, each by its largest value over atoms; ratio: own-error ρ "
                "over the ensemble's (target ≥ 0.9).",
                "",
                *markdown_table(CALIBRATION_HEADER, calib, "r"),
            ]
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
    return atomic_write(path, "\n".join(lines).rstrip() + "\n")


def _counts_line(metrics: Mapping, set_name: str) -> str:
    for entry in groups_of(metrics).values():
        ens = entry.get(set_name, {}).get("ensemble")
        if ens:
            return (
                f"Scored: {ens.get('n_configurations')} configurations, {ens.get('n_pairs')} conformer pairs "
                f"({ens.get('n_window_excluded')} conformers outside the ΔE window), "
                f"{ens.get('n_atoms')} atoms with reference forces."
            )
    return ""


__all__ = [
    "COLUMNS",
    "fmt",
    "group_title",
    "ordered_groups",
    "ordered_sets",
    "relative_changes",
    "study_sections",
    "summary_table",
    "table_rows",
    "write_report",
]
