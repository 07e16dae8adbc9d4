"""Tables of a run's metrics: the numbers as text, shared by the report, its figures, the CLI summary
and ``ekd score``.

Input is the ``metrics`` dict of :mod:`ekd.evaluation.metrics` (schema in its docstring): ``metrics["roles"]``
is keyed by group name (see :mod:`ekd.groups` for the words), each entry has its ``role``. Nothing
here touches models, data or matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..groups import CONTROL, ROLES, STUDENT, TEACHER, generation_of

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
_ROLE_ORDER = {role: i for i, role in enumerate(ROLES)}


def groups_of(metrics: Mapping) -> Mapping:
    """{group name: entry} of ``metrics`` (stored under the historical key ``"roles"``)."""
    return metrics.get("roles", {})


def generation(name: str, entry: Mapping) -> int:
    """The generation of group ``name``: from its name (``student_gen2``), else its entry's."""
    return generation_of(name, entry.get("generation", 0))


def ordered_groups(metrics: Mapping) -> list[str]:
    """Group names in report order: teachers, students by generation, controls, baseline, others."""
    groups = groups_of(metrics)

    def key(name):
        entry = groups[name]
        return (_ROLE_ORDER.get(entry.get("role", name), 9), generation(name, entry), name)

    return sorted(groups, key=key)


def group_title(name: str, entry: Mapping | None = None, ensembled: bool = False) -> str:
    """Human title of a group: teacher -> teachers, student_gen2 -> students gen 2, ..."""
    entry = entry or {}
    role = entry.get("role", name)
    if role == STUDENT or name.startswith(STUDENT):
        title = f"students gen {generation(name, entry)}"
    elif role in (TEACHER, CONTROL):
        title = f"{role}s"
    else:
        title = name.replace("_", " ")
    return f"ensembled {title}" if ensembled else title


def ordered_sets(metrics: Mapping) -> list[str]:
    """Test-set names, the out-of-sample pool (the paper's headline) first."""
    sets = list(metrics.get("sets", {}))
    return sorted(sets, key=lambda s: (s != "test_pool", s != "test_split", sets.index(s)))


def main_metrics(metrics: Mapping) -> dict:
    """``metrics`` with only the main groups (teachers, students, controls, baseline): the studies'
    groups (capacity variants, teacher subsets, external teacher) have their own tables."""
    main = {k: v for k, v in groups_of(metrics).items() if not v.get("study")}
    return {**metrics, "roles": main}


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


def summary_value(entry: Mapping, set_name: str, key: str) -> tuple[float | None, float | None]:
    """(mean, std) over a group's members of metric ``key`` on ``set_name`` (None: absent)."""
    s = entry.get(set_name, {}).get("summary", {}).get(key) or {}
    return s.get("mean"), s.get("std")


def ensemble_value(entry: Mapping, set_name: str, key: str) -> float | None:
    """Metric ``key`` of a group's ensembled prediction on ``set_name`` (None: absent)."""
    return entry.get(set_name, {}).get("ensemble", {}).get(key)


def table_rows(metrics: Mapping, set_name: str) -> list[tuple[str, int | str, list[str]]]:
    """(row name, members, [cell per COLUMNS]) for each group: members 'mean ± std', then the ensemble."""
    rows = []
    groups = groups_of(metrics)
    for name in ordered_groups(metrics):
        entry = groups[name]
        if set_name not in entry:
            continue
        k = entry.get("n_members", len(entry[set_name].get("members", [])))
        cells = [fmt(*summary_value(entry, set_name, key)) for key, _ in COLUMNS]
        rows.append((group_title(name, entry), k, cells))
        cells = [fmt(ensemble_value(entry, set_name, key)) for key, _ in COLUMNS]
        rows.append((group_title(name, entry, ensembled=True), "mean", cells))
    return rows


def change(new, old) -> str:
    """The relative change from ``old`` to ``new`` as '+1.2 %', or 'n/a'."""
    if new is None or old is None or not old or not (math.isfinite(new) and math.isfinite(old)):
        return "n/a"
    return f"{100.0 * (new - old) / old:+.1f} %"


def relative_changes(metrics: Mapping, set_name: str) -> list[tuple[str, list[str]]]:
    """Students (member mean) vs teachers (member mean), ensembled teachers, and controls, in %.

    Negative = students have the lower error. One row per (student generation, comparison).
    """
    groups = groups_of(metrics)
    order = ordered_groups(metrics)
    teacher = next((name for name in order if groups[name].get("role") == TEACHER), None)
    control = next((name for name in order if groups[name].get("role") == CONTROL), None)
    out = []
    for name in order:
        entry = groups[name]
        if entry.get("role") != STUDENT or set_name not in entry:
            continue
        title = group_title(name, entry)
        refs = []
        if teacher and set_name in groups[teacher]:
            refs.append(("teachers", lambda k: summary_value(groups[teacher], set_name, k)[0]))
            refs.append(("ensembled teachers", lambda k: ensemble_value(groups[teacher], set_name, k)))
        if control and set_name in groups[control]:
            refs.append(("controls", lambda k: summary_value(groups[control], set_name, k)[0]))
        for ref_title, get in refs:
            cells = [change(summary_value(entry, set_name, k)[0], get(k)) for k, _ in CHANGE_METRICS]
            out.append((f"{title} vs {ref_title}", cells))
    return out


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Fixed-width lines: first column left-aligned, the others right-aligned, ruled above and below."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    rule = "-" * len(line(header))
    return [rule, line(header), rule, *map(line, rows), rule]


def markdown_table(header: list[str], rows: list[list[str]], align: str = "l") -> list[str]:
    """Markdown lines; ``align="r"``: every column but the first right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---"] + [("---:" if align == "r" else ":---")] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


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
    lines = [title, *text_table(header, body)]
    calib = calibration_rows(metrics, set_name)
    if calib:
        lines += ["", f"{set_name}: predicted uncertainty (Spearman rho)", *text_table(CALIBRATION_HEADER, calib)]
    return "\n".join(lines)


#: the calibration table's columns (rho of the members: mean ± std; "/ atom" over atoms, "/ conf."
#: over configurations, each by its largest value over atoms)
CALIBRATION_HEADER = [
    "",
    "σ vs teachers' σ / atom",
    "σ vs own error / atom",
    "teachers' σ vs their error / atom",
    "ratio",
    "σ vs teachers' σ / conf.",
    "σ vs own error / conf.",
    "teachers' σ vs their error / conf.",
]


def calibration_rows(metrics: Mapping, set_name: str) -> list[list[str]]:
    """One row per group with calibration numbers on ``set_name`` (groups with an uncertainty
    head): the columns of :data:`CALIBRATION_HEADER`; ratio = the members' mean rho against their
    own error over the teacher ensemble's rho against its error (target >= 0.9, issue 28)."""
    groups = groups_of(metrics)
    rows = []
    for name in ordered_groups(metrics):
        cal = (groups[name].get(set_name) or {}).get("calibration")
        if not cal:
            continue
        member = lambda key, c=cal: fmt(c["summary"][key]["mean"], c["summary"][key]["std"])  # noqa: E731
        own, teachers = cal["summary"]["rho_error"]["mean"], cal["teachers"]["rho_error"]
        ratio = f"{own / teachers:.2f}" if own is not None and teachers else "n/a"
        rows.append(
            [
                group_title(name, groups[name]),
                member("rho_teachers"),
                member("rho_error"),
                fmt(teachers),
                ratio,
                member("rho_teachers_max"),
                member("rho_error_max"),
                fmt(cal["teachers"]["rho_error_max"]),
            ]
        )
    return rows


__all__ = [
    "CALIBRATION_HEADER",
    "CHANGE_METRICS",
    "calibration_rows",
    "COLUMNS",
    "change",
    "ensemble_value",
    "fmt",
    "generation",
    "group_title",
    "groups_of",
    "main_metrics",
    "markdown_table",
    "ordered_groups",
    "ordered_sets",
    "relative_changes",
    "summary_table",
    "summary_value",
    "table_rows",
    "text_table",
]
