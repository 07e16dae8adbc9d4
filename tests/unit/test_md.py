"""ekd.md: the CH3ONO box, failure detection, the resumable sweep, its table and bad inputs.

Models: ekd's toy message-passing model (:func:`ekd.testing.toy_model`, random weights with a
short-range repulsion, float64), so that MD costs milliseconds per step. Box numbers (35.68 A for
448 molecules at 1.0 g/cm^3) follow from ASE's CH3ONO masses (61.04 g/mol) and Avogadro's number.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ekd import config
from ekd.md import stability
from ekd.md.box import box_side, density_of, grid_shape, methyl_nitrite_box
from ekd.md.stability import RunSpec, md_stability, run_one, summarize, wilson_interval
from ekd.ops import library as _ops

SPECIES = ("C", "H", "N", "O")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from ekd.deploy.model_file import save_model
    from ekd.testing import toy_model

    path = tmp_path_factory.mktemp("md") / "toy.pt"
    module, meta = toy_model(SPECIES, cutoff=4.0, n_interactions=1, seed=1)
    save_model(module, path, meta)
    return str(path)


# ---------------------------------------------------------------------------------------------
# box


@pytest.mark.parametrize("n", [1, 8, 27, 48])
def test_box_count_density_and_contacts(n):
    atoms = methyl_nitrite_box(n, density=1.0, seed=3)
    assert len(atoms) == 7 * n and atoms.pbc.all()
    assert density_of(atoms) == pytest.approx(1.0, rel=1e-12)
    owner = np.repeat(np.arange(n), 7)
    i, j, _ = _ops._C.neighbor_pairs(atoms.positions, np.asarray(atoms.cell), atoms.pbc, 1.8)
    assert not np.any(owner[i] != owner[j]), "intermolecular contact closer than 1.8 A"
    # the molecules are intact: C-H 1.09, N=O 1.21 A, ... no bond shorter than 1 A
    d, _, _ = _ops.min_pair_distance(atoms.positions, atoms.cell, True, 1.0)
    assert d == np.inf


def test_paper_box_is_35_7_angstrom():
    assert grid_shape(448) == (8, 8, 7)
    assert box_side(448, 1.0) == pytest.approx(35.68, abs=0.01)


def test_box_is_deterministic_for_a_seed():
    a, b, c = methyl_nitrite_box(27, seed=5), methyl_nitrite_box(27, seed=5), methyl_nitrite_box(27, seed=6)
    assert np.array_equal(a.positions, b.positions)
    assert not np.allclose(a.positions, c.positions)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_molecules": 0}, "n_molecules: must be a positive integer"),
        ({"n_molecules": -3}, "n_molecules: must be a positive integer"),
        ({"n_molecules": 8, "density": 0.0}, "density: must be a positive number"),
        ({"n_molecules": 8, "density": -1.0}, "density: must be a positive number"),
        ({"n_molecules": 8, "cutoff": 6.5}, "smaller than twice the model cutoff"),
        ({"n_molecules": 8, "density": 5.0}, "density: could not place 8 molecules"),
    ],
)
def test_box_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        methyl_nitrite_box(**kwargs)


# ---------------------------------------------------------------------------------------------
# runs


def test_huge_time_step_fails_and_small_one_does_not(toy):
    bad = run_one(RunSpec((toy,), dt_fs=8.0, t_max_ps=0.4, n_molecules=8, equilibration_ps=0.0))
    assert bad["failed"] and bad["t_fail_ps"] == pytest.approx(bad["fail_step"] * 8e-3)
    assert bad["drift_ev_atom_ps"] is None
    good = run_one(RunSpec((toy,), dt_fs=0.25, t_max_ps=0.02, n_molecules=8, equilibration_ps=0.005))
    assert not good["failed"] and good["t_fail_ps"] is None and good["steps"] == 100
    assert abs(good["drift_ev_atom_ps"]) < 0.05


def test_protocol_tells_a_stable_toy_from_an_unstable_one(tmp_path):
    from ekd.md.stability import toy_pair

    cfg = _tiny_cfg(tmp_path, t_max_ps=0.03, equilibration_ps=0.01, timesteps_fs=(1.0, 2.0))
    out = md_stability(cfg, models=toy_pair(tmp_path), progress=False)
    failed = {r: sum(x["failed"] for x in out["table"] if x["role"] == r) for r in ("stable", "unstable")}
    assert failed == {"stable": 0, "unstable": 2}


def test_atoms_forced_close_fail_on_the_first_frame(toy, monkeypatch):
    from ekd.md import box as box_mod

    original = box_mod.methyl_nitrite_box

    def squeezed(*args, **kwargs):
        atoms = original(*args, **kwargs)
        atoms.positions[8] = atoms.positions[0] + [0.3, 0.0, 0.0]  # an atom of molecule 2 onto molecule 1's C
        return atoms

    monkeypatch.setattr(box_mod, "methyl_nitrite_box", squeezed)
    r = run_one(RunSpec((toy,), dt_fs=0.01, t_max_ps=0.001, n_molecules=8, equilibration_ps=0.0))
    assert r["failed"] and r["fail_step"] == 1


def test_run_bad_inputs(toy, tmp_path):
    from ekd.deploy.model_file import save_model
    from ekd.testing import toy_model

    with pytest.raises(ValueError, match="dt_fs: the time step must be > 0"):
        run_one(RunSpec((toy,), dt_fs=0.0, t_max_ps=0.01))
    with pytest.raises(ValueError, match="dt_fs: the time step must be > 0"):
        run_one(RunSpec((toy,), dt_fs=-1.0, t_max_ps=0.01))
    module, meta = toy_model(("H", "O"), cutoff=3.0, n_interactions=1)
    save_model(module, tmp_path / "ho.pt", meta)
    with pytest.raises(ValueError, match=r"lack \['C', 'N'\]"):
        run_one(RunSpec((str(tmp_path / "ho.pt"),), dt_fs=0.5, t_max_ps=0.01))
    with pytest.raises(ValueError, match="smaller than twice the model cutoff"):
        run_one(RunSpec((toy,), dt_fs=0.5, t_max_ps=0.01, n_molecules=2))


# ---------------------------------------------------------------------------------------------
# the sweep


def _tiny_cfg(tmp_path, **md):
    values = dict(n_molecules=8, t_max_ps=0.01, equilibration_ps=0.0, timesteps_fs=(0.5, 8.0), n_runs=1, workers=1)
    return replace(config.default_config(), run_dir=str(tmp_path), md=config.MDConfig(**{**values, **md}))


def test_sweep_is_resumable_and_reports(toy, tmp_path, monkeypatch):
    cfg = _tiny_cfg(tmp_path, t_max_ps=0.04, timesteps_fs=(0.5, 20.0))
    models = {"teacher": [toy], "student_gen1": [toy]}
    first = md_stability(cfg, models=models, progress=False)
    files = sorted((tmp_path / "md" / "ase").rglob("dt*_seed*.json"))
    assert len(files) == 4
    rows = {(r["role"], r["dt_fs"]): r for r in first["table"]}
    assert rows[("teacher", 20.0)]["fraction_failed"] == 1.0 and rows[("teacher", 0.5)]["fraction_failed"] == 0.0
    assert "| teacher | 20 | 1 | 1 | 1.00" in first["markdown"] and "Reduced scale" in first["markdown"]
    assert (tmp_path / "md" / "ase" / "stability.png").stat().st_size > 1000

    def no_run(spec, keep_positions=False):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(stability, "run_one", no_run)
    again = md_stability(cfg, models=models, progress=False)
    assert again["table"] == first["table"]
    # a changed protocol is not served from the old results
    with pytest.raises(AssertionError, match="run again"):
        md_stability(_tiny_cfg(tmp_path, t_max_ps=0.05, timesteps_fs=(0.5, 20.0)), models=models, progress=False)


def test_result_files_are_json_with_digest(toy, tmp_path):
    md_stability(_tiny_cfg(tmp_path, timesteps_fs=(0.5,)), models={"teacher": [toy]}, progress=False)
    (path,) = (tmp_path / "md" / "ase" / "teacher" / "member_00").glob("*.json")
    data = json.loads(path.read_text())
    assert data["digest"] and data["spec"]["dt_fs"] == 0.5 and data["failed"] is False


def test_wilson_interval_and_summary():
    assert wilson_interval(0, 10)[0] == 0.0 and 0 < wilson_interval(0, 10)[1] < 0.2
    lo, hi = wilson_interval(5, 10)
    assert lo < 0.5 < hi and lo == pytest.approx(1 - hi)
    results = [
        {"role": "teacher", "spec": {"dt_fs": 1.0}, "failed": f, "t_fail_ps": t, "drift_ev_atom_ps": d, "wall_s": 1.0}
        for f, t, d in [(True, 0.2, None), (True, 0.4, None), (False, None, 1e-4), (False, None, -3e-4)]
    ]
    (row,) = summarize(results)
    assert (row["runs"], row["failed"], row["fraction_failed"]) == (4, 2, 0.5)
    assert row["mean_t_fail_ps"] == pytest.approx(0.3)
    assert row["max_abs_drift_ev_atom_ps"] == pytest.approx(3e-4)


def test_md_config_defaults_and_errors():
    assert config.loads("{}").md.n_molecules == 448 and config.loads("{}").md.t_max_ps == 10.0
    small = config.default_config().md
    assert small.n_molecules < 448 and small.t_max_ps < 10.0
    assert box_side(small.n_molecules, small.density) >= 2 * config.default_config().model.cutoff_hard
    for text, message in [
        ("md: {timesteps_fs: [0.5, 0]}", "md.timesteps_fs: must all be > 0"),
        ("md: {density: 0}", "md.density: must be > 0"),
        ("md: {n_molecules: 0}", "md.n_molecules: must be >= 1"),
        ("md: {engine: gromacs}", "md.engine: must be one of"),
    ]:
        with pytest.raises(config.ConfigError, match=message):
            config.loads(text)


def test_cli_validates_overrides_like_the_yaml(tmp_path, capsys):
    from ekd import cli

    assert cli.main(["md-stability", "--run-dir", str(tmp_path), "--dt", "0.5,-1", "--quiet"]) == 2
    assert "md.timesteps_fs: must all be > 0" in capsys.readouterr().err


def test_cached_exports_of_an_earlier_model_format_are_redone(tmp_path, monkeypatch):
    """md-stability reuses its exported models only when they come from the same trained member
    AND are of this ekd's model-file format: an ekd-model-1 export left in an old run directory
    would be refused by the (untrusted) loaders, so it is exported again."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import ekd.deploy.export
    from ekd.deploy.model_file import FORMAT
    from ekd.workflow import export_models

    member = tmp_path / "teacher" / "member_00"
    member.mkdir(parents=True)
    (member / "done.json").write_text("{}")
    run = SimpleNamespace(group=lambda role: SimpleNamespace(n_members=1), member_dir=lambda group, m: member)
    calls = []

    def fake_export(src, dst, dtype):
        calls.append(dst)
        Path(dst).write_text("model")

    monkeypatch.setattr(ekd.deploy.export, "export_member", fake_export)
    out = tmp_path / "md"
    export_models(run, ["teacher"], None, "float64", out)
    export_models(run, ["teacher"], None, "float64", out)
    assert len(calls) == 1  # reused while source and format match
    stamp = out / "models" / "teacher_m00_float64.json"
    assert json.loads(stamp.read_text())["format"] == FORMAT
    stamp.write_text(json.dumps({"source": json.loads(stamp.read_text())["source"]}))  # an earlier release's stamp
    export_models(run, ["teacher"], None, "float64", out)
    assert len(calls) == 2


def test_the_sweep_takes_model_files_and_names_the_way_to_a_run_directory(tmp_path):
    # ekd.md knows model files, not run directories: a run's members come through ekd.workflow
    with pytest.raises(ValueError, match=r"no model files given.*Run\(cfg, run_dir\)\.md_stability\(\)"):
        md_stability(_tiny_cfg(tmp_path), models=None, progress=False)
