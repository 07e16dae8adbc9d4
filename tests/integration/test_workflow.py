"""A tiny end-to-end EKD run (seconds): files, shapes, NaN-freedom, and resumption after an
interruption injected mid-run. Data: GFN2-xTB labels of small molecules (tests/conftest.py),
with a separate out-of-sample file of molecules the training never sees."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ekd import config
from ekd.data import write_ani
from ekd.workflow import Run, RunDirError

from ..conftest import tiny_run_config, xtb_groups


def _tiny(files) -> str:
    return tiny_run_config(files[0], files[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    train = write_ani(d / "train.h5", xtb_groups(("H2O", "CH4", "NH3", "H2CO"), n_conf=16))
    test = write_ani(d / "test.h5", xtb_groups(("CH3OH",), n_conf=8, seed=5))
    return train, test


def _cfg(files):
    return config.loads(_tiny(files))


def test_run_interrupted_then_resumed(files, tmp_path):
    cfg = _cfg(files)
    run_dir = tmp_path / "run"

    class Interrupt(Exception):
        pass

    def stop(label):
        if label == "student_gen1":
            raise Interrupt

    with pytest.raises(Interrupt):
        Run(cfg, run_dir, progress=False).run_all(on_stage=stop)
    teacher_done = sorted((run_dir / "gen0" / "teacher").glob("member_*/done.json"))
    assert len(teacher_done) == 2 and (run_dir / "labels" / "gen1.h5").exists()
    stamps = {p: p.stat().st_mtime_ns for p in teacher_done}

    metrics = Run(cfg, run_dir, progress=False).run_all()
    # finished members were reused, not retrained
    assert {p: p.stat().st_mtime_ns for p in teacher_done} == stamps
    assert set(metrics["roles"]) == {"teacher", "student_gen1", "student_gen2", "control", "baseline"}
    for label, entry in metrics["roles"].items():
        for set_name in ("test_split", "test_pool"):
            res = entry[set_name]
            assert len(res["members"]) == 2, label
            for score in [*res["members"], res["ensemble"]]:
                for key in ("energy_rmse", "force_rmse"):
                    assert score[key] is not None and np.isfinite(score[key]), (label, set_name, key)
    assert metrics["sets"]["test_pool"]["n_molecules"] == 1
    assert (run_dir / "report.md").exists() and (run_dir / "metrics.json").exists()
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["roles"].keys() == metrics["roles"].keys()

    # the augmented dataset: same configurations, ensemble forces without NaN
    from ekd.data import load_dataset

    labels = load_dataset(run_dir / "labels" / "gen2.h5", {"energy": "gfn2_xtb.energy", "f": "ekd_ensemble.forces"})
    assert np.isfinite(labels.properties["f"]).all() and labels.mask("f").all()


def test_changed_config_is_refused_not_mixed(files, tmp_path):
    cfg = _cfg(files)
    run_dir = tmp_path / "run"
    r = Run(cfg, run_dir, progress=False)
    r.train_group(r.group("teacher"))
    changed = config.loads(_tiny(files).replace("width: 8", "width: 12"))
    with pytest.raises(RunDirError, match="different configuration"):
        Run(changed, run_dir, progress=False).train_group(r.group("teacher"))


def test_studies_add_groups_reuse_teachers_and_report(files, tmp_path):
    """The capacity variant, the single-teacher subset: their own groups, trained with their own
    architecture / labels, scored, in their own report tables; the main groups are untouched."""
    from ekd.training.train import load_member

    text = _tiny(files).replace(
        "ensemble: {{n_teachers: 2, n_students: 2, generations: 2}}".format(),
        "ensemble: {n_teachers: 2, n_students: 1, generations: 1, baseline: false,\n"
        "           student_variants: {n2_l0: {n_interactions: 2, l_max: 0}}, teacher_subsets: [1]}",
    )
    cfg = config.loads(text)
    run_dir = tmp_path / "run"
    metrics = Run(cfg, run_dir, progress=False).run_all()
    assert set(metrics["roles"]) == {
        "teacher",
        "student_gen1",
        "control",
        "student_gen1@n2_l0",
        "control@n2_l0",
        "student_k1",
    }
    variant = load_member(run_dir / "variants" / "n2_l0" / "student" / "member_00")
    assert variant.model_config.l_max == 0 and variant.model_config.n_interactions == 2
    main = load_member(run_dir / "gen1" / "student" / "member_00")
    assert main.model_config.l_max == 1
    # the single-teacher labels are teacher 0's forces; the full labels average both teachers
    from ekd.data import load_dataset

    keys = {"f": "ekd_ensemble.forces", "s": "ekd_ensemble.forces_std"}
    one = load_dataset(run_dir / "labels" / "gen1_k1.h5", keys)
    both = load_dataset(run_dir / "labels" / "gen1.h5", keys)
    assert np.all(one.properties["s"] == 0) and np.any(both.properties["s"] > 0)
    assert not np.allclose(one.properties["f"], both.properties["f"])
    for label in ("student_gen1@n2_l0", "control@n2_l0", "student_k1"):
        assert metrics["roles"][label]["study"] in ("capacity", "teachers")
        assert np.isfinite(metrics["roles"][label]["test_pool"]["summary"]["energy_rmse"]["mean"])
    report = (run_dir / "report.md").read_text()
    assert "### Capacity sweep" in report and "n2_l0 (n_int=2, l_max=0)" in report
    assert "### Ensemble size" in report and "1 teacher |" in report
    # the main tables list only the main groups
    main_table = report.split("## Studies")[0]
    assert "n2_l0" not in main_table and "student_k1" not in main_table


def test_md_stability_is_the_last_stage_and_joins_the_report(files, tmp_path):
    """`ekd run` with md enabled: the sweep runs on the exported members after the evaluation,
    its table joins metrics.json (per engine) and its section report.md -- once, also when the
    run is repeated (which reuses every member and MD result)."""
    text = (
        _tiny(files)
        .replace(
            "ensemble: {{n_teachers: 2, n_students: 2, generations: 2}}".format(),
            "ensemble: {n_teachers: 2, n_students: 1, generations: 1, controls: false, baseline: false}\n"
            "md: {n_molecules: 27, t_max_ps: 0.01, equilibration_ps: 0.0, timesteps_fs: [1.0], n_runs: 1,\n"
            "     n_models: 1, roles: [teacher, student_gen1, student_gen2], workers: 1}",
        )
        .replace("md: {enabled: false}\n", "")
    )
    cfg = config.loads(text)
    run_dir = tmp_path / "run"
    stages = []
    metrics = Run(cfg, run_dir, progress=False).run_all(on_stage=stages.append)
    assert stages == ["teacher", "student_gen1", "md"]
    table = metrics["md_stability"]["ase"]["table"]
    # student_gen2 is not a group of this run: skipped, not an error
    assert {row["role"] for row in table} == {"teacher", "student_gen1"}
    assert all(row["runs"] == 1 and row["dt_fs"] == 1.0 for row in table)
    first = (run_dir / "report.md").read_text()
    assert first.count("## MD stability") == 1 and "(md/ase/stability.png)" in first
    assert (run_dir / "md" / "ase" / "stability.png").exists()
    results = sorted((run_dir / "md" / "ase").rglob("dt*_seed*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    Run(cfg, run_dir, progress=False).run_all()
    assert {p: p.stat().st_mtime_ns for p in results} == stamps  # MD results reused
    assert (run_dir / "report.md").read_text().count("## MD stability") == 1
