"""``ekd score`` (:mod:`ekd.evaluation.score`): model files and a run's members on ANI-layout files.

Data: GFN2-xTB labels of rattled G2 molecules (tests/conftest.py), written with ekd's own writer
in several units and layouts. Models: ekd's toy model files (random weights; the metrics do not
care how good a model is) and the members of a tiny run trained here. References are computed
here through an independent path (the ASE calculator per configuration, or the run's own
metrics.json), nothing is stored.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ekd import config
from ekd.data import DataFileError, write_ani
from ekd.evaluation import score
from ekd.evaluation.metrics import evaluate_group, load_metrics
from ekd.evaluation.metrics import score as score_predictions
from ekd.units import BOHR_TO_ANGSTROM, EV_TO_KCALMOL, HARTREE_TO_KCALMOL
from ekd.workflow.score_groups import run_groups

from ..conftest import KEYS, tiny_run_config, xtb_groups

pytest.importorskip("tblite.interface")

MOLECULES = ("H2O", "CH4", "CH3OH", "NH3", "H2CO")
HARTREE = {"energy_unit": "hartree", "length_unit": "angstrom"}


@pytest.fixture(scope="module")
def groups():
    """The benchmark's molecules in file units (Hartree, Angstrom)."""
    return xtb_groups(MOLECULES, n_conf=6, seed=11)


@pytest.fixture(scope="module")
def files(tmp_path_factory, groups):
    d = tmp_path_factory.mktemp("bench")
    return {"hartree": write_ani(d / "bench.h5", groups, HARTREE)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from ekd.deploy.model_file import save_model
    from ekd.testing import toy_model

    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, species, seed in (("a", "CHNO", 1), ("b", "CHNO", 2), ("cho", "CHO", 3)):
        module, meta = toy_model(tuple(species), cutoff=3.5, n_interactions=2, seed=seed)
        out[name] = d / f"{name}.pt"
        save_model(module, out[name], meta)
    return out


def _score(path, model_paths, **kw):
    test = score.load_test(path, **{k: v for k, v in kw.items() if k != "skip"})
    group = score.model_files(model_paths)
    test = score.check_elements(test, [group], skip=kw.get("skip", False))
    return score.score_models(test, [group], window=100.0)


def _calculator_predictions(test, model_path):
    """Per configuration, through the ASE calculator: (energy (n,), forces (n, A, 3)), kcal/mol."""
    from ase import Atoms

    from ekd.deploy.calculator import EKDCalculator

    calc = EKDCalculator(model_path)
    data = test.data
    energy = np.empty(len(data))
    forces = np.zeros(data.coordinates.shape)
    for i in range(len(data)):
        k = int(data.n_atoms[i])
        atoms = Atoms(numbers=data.species[i, :k], positions=data.coordinates[i, :k])
        atoms.calc = calc
        energy[i] = atoms.get_potential_energy() * EV_TO_KCALMOL
        forces[i, :k] = atoms.get_forces() * EV_TO_KCALMOL
    return energy, forces


def test_model_files_scored_like_the_calculator_and_evaluate(files, models):
    result = _score(files["hartree"], [models["a"], models["b"]])
    test = result.test
    assert test.keys == {"energy": KEYS["energy"], "reference_forces": KEYS["reference_forces"]}
    assert len(test.data) == 6 * len(MOLECULES)
    preds = [_calculator_predictions(test, models[m]) for m in ("a", "b")]
    mine = result.predictions["models"]
    for i, (e, f) in enumerate(preds):
        # batched model calls vs one structure at a time
        np.testing.assert_allclose(mine["energy"][i], e, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(mine["forces"][i], f, rtol=1e-9, atol=1e-9)
    reference = {
        "energy": test.data.properties["energy"],
        "forces": test.data.properties["reference_forces"],
        "molecule": test.data.molecule,
        "species": test.data.species,
    }
    expected = evaluate_group(
        {"energy": np.stack([p[0] for p in preds]), "forces": np.stack([p[1] for p in preds])}, reference, 100.0
    )
    got = result.groups["models"]
    assert got["member_names"] == [str(models["a"]), str(models["b"])]
    pairs = [*zip(got["members"], expected["members"], strict=True), (got["ensemble"], expected["ensemble"])]
    for mine_s, exp_s in pairs:
        for key in ("energy_rmse", "energy_mae", "delta_e_rmse", "force_rmse"):
            assert mine_s[key] == pytest.approx(exp_s[key], rel=1e-9), key
        assert mine_s["n_pairs"] == exp_s["n_pairs"] == len(MOLECULES) * 15


def test_units_come_from_the_file_or_the_option(tmp_path, groups, files, models):
    base = _score(files["hartree"], [models["a"]]).groups["models"]["ensemble"]

    def converted(energy_factor, length_factor):
        # length_factor: Angstrom per file length unit (forces are energy / length)
        out = []
        for g in groups:
            props = {
                KEYS["energy"]: g.properties[KEYS["energy"]] * energy_factor,
                KEYS["reference_forces"]: g.properties[KEYS["reference_forces"]] * energy_factor * length_factor,
            }
            out.append(type(g)(g.name, g.species, g.coordinates / length_factor, props))
        return out

    kcal_bohr = write_ani(
        tmp_path / "kcal_bohr.h5",
        converted(HARTREE_TO_KCALMOL, BOHR_TO_ANGSTROM),
        {"energy_unit": "kcal/mol", "length_unit": "bohr"},
    )
    ev_plain = write_ani(tmp_path / "ev.h5", converted(HARTREE_TO_KCALMOL / EV_TO_KCALMOL, 1.0))
    for got in (
        _score(kcal_bohr, [models["a"]]),  # the file's attributes
        _score(ev_plain, [models["a"]], energy_unit="ev"),  # no attributes: the option
        _score(kcal_bohr, [models["a"]], energy_unit="kcal/mol", length_unit="bohr"),  # both, agreeing
    ):
        for key in ("energy_rmse", "energy_mae", "delta_e_rmse", "force_rmse"):
            assert got.groups["models"]["ensemble"][key] == pytest.approx(base[key], rel=1e-9), key


def test_contradictory_units_are_an_error(files, models):
    with pytest.raises(
        DataFileError, match=r"--energy-unit is 'ev' but the file's attribute energy_unit says 'hartree'"
    ):
        _score(files["hartree"], [models["a"]], energy_unit="ev")
    with pytest.raises(DataFileError, match=r"--length-unit is 'bohr'.*'angstrom'"):
        _score(files["hartree"], [models["a"]], length_unit="bohr")


def test_wrong_or_ambiguous_keys_are_errors(tmp_path, groups, files, models):
    with pytest.raises(DataFileError, match=r"\['wb97x.energy'\] found in no group"):
        _score(files["hartree"], [models["a"]], energy_key="wb97x.energy")
    two = [
        type(g)(g.name, g.species, g.coordinates, {**g.properties, "other.energy": g.properties[KEYS["energy"]]})
        for g in groups
    ]
    path = write_ani(tmp_path / "two.h5", two, HARTREE)
    with pytest.raises(score.ScoreError, match=r"'gfn2_xtb.energy', 'other.energy'.*--energy-key"):
        _score(path, [models["a"]])
    # the other level has no forces: none are scored, rather than another level's
    result = _score(path, [models["a"]], energy_key="other.energy")
    assert "reference_forces" not in result.test.keys
    assert result.groups["models"]["ensemble"]["force_rmse"] is None


def test_unknown_element_names_molecule_and_element_or_is_skipped(files, models, tmp_path, groups):
    with pytest.raises(score.ScoreError, match=r"molecule 'NH3' has element N, which model .*cho.pt does not know"):
        _score(files["hartree"], [models["a"], models["cho"]])
    result = _score(files["hartree"], [models["a"], models["cho"]], skip=True)
    skipped = result.test.skipped
    assert [s["molecule"] for s in skipped] == ["NH3"] and skipped[0]["elements"] == ["N"]
    assert skipped[0]["n_configurations"] == 6
    assert "skipped molecule 'NH3' (6 configurations): element(s) N unknown to" in score.format_result(result)
    # the same numbers as on a file without NH3
    without = write_ani(tmp_path / "no_n.h5", [g for g in groups if g.name != "NH3"], HARTREE)
    expected = _score(without, [models["a"], models["cho"]])
    for key in ("energy_rmse", "delta_e_rmse", "force_rmse"):
        assert result.groups["models"]["ensemble"][key] == pytest.approx(expected.groups["models"]["ensemble"][key])


def _with_kind(path, groups, kinds):
    import h5py

    write_ani(path, groups, HARTREE)
    with h5py.File(path, "a") as h5:
        for g in groups:
            if g.name in kinds:
                h5[g.name].create_dataset("kind", data=np.array(kinds[g.name], dtype="S"))
    return path


def test_kind_restricts_conformer_pairs(tmp_path, groups, files, models):
    kinds = {g.name: ["conformer", "conformer", "conformer", "distorted", "distorted", "conformer"] for g in groups}
    path = _with_kind(tmp_path / "kind.h5", groups, kinds)
    result = _score(path, [models["a"]])
    plain = _score(files["hartree"], [models["a"]])
    got = result.groups["models"]["ensemble"]
    base = plain.groups["models"]["ensemble"]
    # energies and forces over every configuration, unchanged
    for key in ("energy_rmse", "energy_mae", "force_rmse"):
        assert got[key] == pytest.approx(base[key], rel=1e-12)
    # ΔE over the conformers only: 4 per molecule, 6 pairs
    data = result.test.data
    conf = result.test.conformer
    assert conf.sum() == 4 * len(groups) and got["n_pairs"] == 6 * len(groups)
    e = result.predictions["models"]["energy"][0]
    expected = score_predictions(e[conf], data.properties["energy"][conf], data.molecule[conf], data.species[conf])
    assert got["delta_e_rmse"] == pytest.approx(expected["delta_e_rmse"], rel=1e-12)
    assert got["delta_e_rmse"] != pytest.approx(base["delta_e_rmse"], rel=1e-6)
    # per molecule: the same rule
    per = score.score_models(result.test, [score.model_files([models["a"]])], molecules=True).groups["models"]
    for name, entry in per["per_molecule"].items():
        rows = (data.molecule == data.molecule_names.index(name)) & conf
        exp = score_predictions(e[rows], data.properties["energy"][rows], data.molecule[rows], data.species[rows])
        assert entry["ensemble"]["delta_e_rmse"] == pytest.approx(exp["delta_e_rmse"], rel=1e-12), name
        assert entry["n_configurations"] == 6

    partial = _with_kind(tmp_path / "partial.h5", groups, {"H2O": kinds["H2O"]})
    with pytest.raises(DataFileError, match=r"mark their configurations with a 'kind' dataset but .*'CH4'"):
        _score(partial, [models["a"]])


def test_cli_json_per_molecule_plot_and_errors(files, models, tmp_path, capsys):
    from ekd import cli

    out = tmp_path / "scores.json"
    argv = ["score", str(models["a"]), str(models["b"]), "--test", str(files["hartree"]), "--quiet"]
    assert cli.main([*argv, "--json", str(out), "--per-molecule", "--plot", str(tmp_path / "fig")]) == 0
    text = capsys.readouterr().out
    assert "ensembled models" in text and "CH3OH" in text
    data = json.loads(out.read_text())
    ens = data["groups"]["models"]["ensemble"]
    assert {"energy_rmse", "energy_mae", "delta_e_rmse", "force_rmse"} <= set(ens)
    assert data["test"]["energy_unit"] == "hartree" and data["test"]["n_configurations"] == 6 * len(MOLECULES)
    assert set(data["groups"]["models"]["per_molecule"]) == set(MOLECULES)
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == [
        "energy_parity.png",
        "errors.png",
        "forces_parity.png",
    ]

    assert cli.main([*argv, "--energy-unit", "ev"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ekd: error:") and "energy_unit says 'hartree'" in err
    assert cli.main(["score", "--test", str(files["hartree"])]) == 2
    assert "give model files or --run-dir" in capsys.readouterr().err


TINY = dict(
    name="tiny-score",
    seed=5,
    max_epochs=3,
    ensemble="{n_teachers: 2, generations: 0, controls: false, baseline: false}",
    extra="evaluate: {conformer_window: 50.0}\n",
)


def test_run_members_on_the_runs_test_file_reproduce_metrics_json(tmp_path):
    from ekd.workflow import Run

    train = write_ani(tmp_path / "train.h5", xtb_groups(("H2O", "CH4", "NH3", "H2CO"), n_conf=12))
    test = write_ani(tmp_path / "test.h5", xtb_groups(("CH3OH", "H2O"), n_conf=6, seed=5))
    run_dir = tmp_path / "run"
    Run(config.loads(tiny_run_config(train, test, **TINY)), run_dir, progress=False).run_all()
    metrics = load_metrics(run_dir / "metrics.json")

    groups, window, left_out = run_groups(run_dir)
    assert window == 50.0 and [g.name for g in groups] == ["teacher"] and left_out == []
    result = score.score_models(score.load_test(test), groups, window)
    for label, got in result.groups.items():
        expected = metrics["roles"][label]["test_pool"]
        assert got["n_members"] == 2
        for mine, theirs in [
            *zip(got["members"], expected["members"], strict=True),
            (got["ensemble"], expected["ensemble"]),
        ]:
            for key in ("energy_rmse", "energy_mae", "delta_e_rmse", "delta_e_mae", "force_rmse", "force_mae"):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-9), (label, key)
            for key in ("n_configurations", "n_pairs", "n_atoms"):
                assert mine[key] == theirs[key], (label, key)

    only, _, _ = run_groups(run_dir, ["teacher"])
    assert [g.name for g in only] == ["teacher"]
    with pytest.raises(ValueError, match=r"no group 'student_gen1' in this run; groups: \['teacher'\]"):
        run_groups(run_dir, ["student_gen1"])
    # a member still training: the group is not scored half
    (run_dir / "gen0" / "teacher" / "member_01" / "done.json").unlink()
    with pytest.raises(score.ScoreError, match=r"--groups teacher: 1 of its 2 members are not trained"):
        run_groups(run_dir, ["teacher"])
    with pytest.raises(score.ScoreError, match=r"no group has all its members trained yet"):
        run_groups(run_dir)
