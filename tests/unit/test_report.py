"""ekd.evaluation.report: report.md with one table per test set, relative changes, figures, the CLI summary."""

import re

import numpy as np
import pytest

from ekd.evaluation import metrics as ev
from ekd.evaluation import report

pytest.importorskip("matplotlib")

ROLES = [  # label, role, generation, members, energy noise, force noise (kcal/mol, kcal/mol/Å)
    ("teacher", "teacher", 0, 4, 2.0, 6.0),
    ("student_gen1", "student", 1, 4, 1.5, 2.0),
    ("student_gen2", "student", 2, 4, 1.4, 1.8),
    ("control", "control", 1, 4, 1.9, 5.0),
    ("baseline", "baseline", 1, 2, 1.2, 1.0),
]


def _reference(rng, n_mol, n_conf, a=4, forces=True):
    n = n_mol * n_conf
    species = np.zeros((n, a), dtype=np.int64)
    species[:, :3] = [6, 1, 1]
    return {
        "energy": rng.normal(0, 30, n),
        "forces": rng.normal(0, 10, (n, a, 3)) if forces else None,
        "molecule": np.repeat(np.arange(n_mol), n_conf),
        "species": species,
    }


def make_metrics(forces=True, seed=0):
    rng = np.random.default_rng(seed)
    sets = {  # in the workflow's order
        "test_split": (_reference(rng, 8, 3, forces=forces), "in-distribution test split"),
        "test_pool": (_reference(rng, 5, 6, forces=forces), "out-of-sample pool (test.h5)"),
    }
    metrics = {"config": {"name": "unit", "evaluate": {"conformer_window": 100.0}}, "sets": {}, "roles": {}}
    for name, (ref, desc) in sets.items():
        n = len(ref["energy"])
        n_mol = len(np.unique(ref["molecule"]))
        metrics["sets"][name] = {"description": desc, "n_configurations": n, "n_molecules": n_mol}
    for label, role, gen, k, e_noise, f_noise in ROLES:
        entry = {"role": role, "generation": gen, "n_members": k}
        for name, (ref, _) in sets.items():
            n, a = ref["species"].shape
            preds = {
                "energy": ref["energy"] + rng.normal(0, e_noise, (k, n)),
                "forces": rng.normal(0, f_noise, (k, n, a, 3)) + (ref["forces"] if forces else 0.0),
            }
            entry[name] = ev.evaluate_group(preds, ref, 100.0)
        metrics["roles"][label] = entry
    return metrics


def _rows(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def test_report_tables_rows_and_figures(tmp_path):
    metrics = make_metrics()
    notes = "embedded default: 4 teachers, width 32"
    path = report.write_report(metrics, tmp_path, notes=notes)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert "config `unit`" in text and notes in text
    # the out-of-sample pool first, whatever the order of the metrics dict
    assert 0 < text.index("## test_pool") < text.index("## test_split")
    rows = _rows(text)
    names = [
        "teachers",
        "ensembled teachers",
        "students gen 1",
        "ensembled students gen 1",
        "students gen 2",
        "ensembled students gen 2",
        "controls",
        "ensembled controls",
        "baseline",
        "ensembled baseline",
    ]
    for name in names:
        assert any(re.match(rf"\| (\*\*)?{name}(\*\*)? \|", r) for r in rows), name
    # rows in the paper's order: teachers before students before controls before baseline
    first = [next(i for i, r in enumerate(rows) if f" {n}" in r) for n in ("teachers", "gen 1", "controls")]
    assert first == sorted(first)

    # the teacher row shows mean ± std of the member E RMSEs (computed here from the members)
    members = metrics["roles"]["teacher"]["test_pool"]["members"]
    vals = np.array([m["energy_rmse"] for m in members])
    teacher_row = next(r for r in rows if r.startswith("| **teachers**"))
    assert f"{report.fmt(vals.mean(), vals.std())}" in teacher_row

    # relative change of students gen 1 vs teachers, E RMSE, from the members' means
    s_vals = [m["energy_rmse"] for m in metrics["roles"]["student_gen1"]["test_pool"]["members"]]
    change = 100 * (np.mean(s_vals) - vals.mean()) / vals.mean()
    change_row = next(r for r in rows if r.startswith("| students gen 1 vs teachers"))
    assert f"{change:+.1f} %" in change_row
    assert any(r.startswith("| students gen 2 vs controls") for r in rows)

    for fig in ("energy.png", "forces.png"):
        data = (tmp_path / "figures" / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"figures/{fig}" in text


def test_report_without_forces_has_no_force_figure(tmp_path):
    metrics = make_metrics(forces=False)
    text = report.write_report(metrics, tmp_path).read_text()
    assert (tmp_path / "figures" / "energy.png").exists()
    assert not (tmp_path / "figures" / "forces.png").exists()
    assert "no force figure" in text
    teacher_row = next(r for r in _rows(text) if r.startswith("| **teachers**"))
    assert teacher_row.rstrip(" |").endswith("n/a")  # F RMSE column


def test_report_from_a_round_tripped_metrics_file(tmp_path):
    # the report works from what load_metrics returns (nulls instead of NaN, plain lists)
    metrics = make_metrics()
    metrics["roles"]["control"]["test_split"]["ensemble"]["energy_rmse"] = float("nan")
    back = ev.load_metrics(ev.write_metrics(tmp_path / "metrics.json", metrics))
    text = report.write_report(back, tmp_path, figures=False).read_text()
    assert not (tmp_path / "figures").exists()
    row = next(r for r in _rows(text) if r.startswith("| ensembled controls") and "n/a" in r)
    assert row


def test_summary_table_is_one_screen():
    metrics = make_metrics()
    table = report.summary_table(metrics, "test_pool")
    lines = table.splitlines()
    assert lines[0].startswith("test_pool: ")
    assert len(lines) <= 30 and max(map(len, lines)) <= 120
    for name in ("teachers", "ensembled teachers", "students gen 2", "controls", "baseline"):
        assert any(line.startswith(name) for line in lines), name
    assert any(line.startswith("Δ students gen 1 vs teachers") for line in lines)


@pytest.mark.parametrize(
    ("args", "text"),
    [((1.23456,), "1.23"), ((12.3456, 0.4321), "12.3 ± 0.4"), ((0.012345,), "0.0123"), ((None,), "n/a")],
)
def test_fmt(args, text):
    assert report.fmt(*args) == text
