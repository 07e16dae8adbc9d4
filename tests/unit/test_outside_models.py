"""Outside models and outside trainers (issue 27): any ASE calculator scored by ``ekd score
--calculator`` and used as ``ensemble.external_teacher``, the labels' extxyz copy, and ekd's own
``torch.load`` staying weights-only whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says.

Data: GFN2-xTB labels of rattled G2 molecules (tests/conftest.py). Models: ekd's toy model files
(random weights, float64), run through ekd's own ASE calculator (``ekd.deploy.calculator``) as the
"outside" calculator, so that every reference is ekd's own path for the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ekd.data import load_dataset, read_ani, write_ani
from ekd.evaluation import score
from ekd.training.external import ExternalModelError, ExternalModelUnavailable

from ..conftest import KEYS, tiny_run_config, xtb_groups

pytest.importorskip("tblite.interface")

CALC = "ekd.deploy.calculator:EKDCalculator"
HARTREE = {"energy_unit": "hartree", "length_unit": "angstrom"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from ekd.data.ase_files import write_extxyz
    from ekd.deploy.model_file import save_model
    from ekd.testing import toy_model

    d = tmp_path_factory.mktemp("outside")
    groups = xtb_groups(("H2O", "CH4", "CH3OH", "NH3"), n_conf=5, seed=7)
    out = {"h5": write_ani(d / "bench.h5", groups, HARTREE)}
    # the HDF5 file's molecules in its order (sorted by name), so that every sum runs in the same order
    out["xyz"] = write_extxyz(d / "bench.xyz", read_ani(out["h5"]), HARTREE)
    for name, seed in (("a", 1), ("b", 2)):
        module, meta = toy_model(("H", "C", "N", "O"), cutoff=3.5, n_interactions=2, seed=seed)
        out[name] = d / f"{name}.pt"
        save_model(module, out[name], meta)
    return out


def _json(capsys, argv, tmp_path, name):
    from ekd.cli import main

    path = tmp_path / f"{name}.json"
    assert main(["score", *argv, "--json", str(path), "--quiet"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads(path.read_text())


def _close(a, b, tol):
    """Every number of two score dicts within ``tol`` (same keys, same None)."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _close(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y, tol)
    elif isinstance(a, float):
        assert abs(a - b) <= tol, (a, b)
    else:
        assert a == b


def test_calculator_scores_reproduce_the_model_files(files, tmp_path, capsys):
    models = [str(files["a"]), str(files["b"])]
    calcs = [f"{CALC}:{m}" for m in models]
    plain = _json(capsys, [*models, "--test", str(files["h5"])], tmp_path, "plain")
    both = _json(
        capsys, ["--test", str(files["h5"]), *(x for c in calcs for x in ("--calculator", c))], tmp_path, "calc"
    )
    g, c = plain["groups"]["models"], both["groups"]["calculators"]
    assert c["member_names"] == calcs and c["role"] == "calculator"
    for key in ("members", "summary", "ensemble"):
        _close(g[key], c[key], 1e-9)
    assert g["members"][0]["force_rmse"] > 0  # real numbers were compared
    # the same benchmark as extxyz scores the same, number for number
    xyz = _json(capsys, [*models, "--test", str(files["xyz"])], tmp_path, "xyz")
    _close(plain["groups"], xyz["groups"], 0.0)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("nonsense", ValueError, r"calculator 'nonsense': expected MODULE:FACTORY\[:ARG\]"),
        ("no_such_module_x:F", ExternalModelUnavailable, r"cannot import module 'no_such_module_x'"),
        ("ekd.deploy.calculator:Nope", ExternalModelUnavailable, r"module 'ekd.deploy.calculator' has no 'Nope'"),
        (f"{CALC}:missing.pt", ExternalModelError, r"EKDCalculator\('missing.pt'\) failed: FileNotFoundError"),
        ("ekd.units:energy_unit:eV", ValueError, r"energy_unit\(\.\.\.\) returned str, not an ASE calculator"),
    ],
)
def test_bad_calculators_are_named(spec, error, message, files, capsys):
    from ekd.cli import main

    with pytest.raises(error, match=message):
        score.calculator_group([spec])
    assert main(["score", "--test", str(files["h5"]), "--calculator", spec]) == 2
    assert capsys.readouterr().err.startswith("ekd: error: calculator")


def test_calculators_teach_and_the_labels_come_as_extxyz_too(files, tmp_path, monkeypatch):
    import ase.io

    from ekd import config, workflow
    from ekd.deploy.model_file import load_model
    from ekd.training.distill import XYZ_KEYS
    from ekd.units import EV_TO_KCALMOL, HARTREE_TO_KCALMOL

    specs = [f"{CALC}:{files['a']}", f"{CALC}:{files['b']}"]
    ensemble = (
        f"{{n_teachers: 1, n_students: 1, generations: 0, controls: false, baseline: false, external_teacher: {specs}}}"
    )
    cfg = config.loads(tiny_run_config(files["h5"], "null", ensemble=ensemble))
    run = workflow.Run(cfg, tmp_path / "run", progress=False)
    group = next(g for g in run.groups() if g.labels_from == "external")
    labels = run.make_labels(group)
    assert labels.name.startswith("external_calculators_") and labels.suffix == ".h5"
    train = run.train_data
    got = load_dataset(labels, {"energy": KEYS["energy"], "f": "ekd_ensemble.forces", "s": "ekd_ensemble.forces_std"})
    forces = [score.predict_model_file(*_model(load_model, files[m]), train)[1] for m in ("a", "b")]
    np.testing.assert_allclose(got.properties["f"], np.mean(forces, axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.properties["s"], np.std(forces, axis=0), rtol=0, atol=1e-9)

    # the extxyz beside it: eV and eV/Angstrom under documented keys, the same configurations
    xyz = labels.with_suffix(".xyz")
    frames = ase.io.read(xyz, ":")
    assert len(frames) == len(train) and frames[0].calc is None and not frames[0].pbc.any()
    assert {"ekd_energy", "molecule", "conformer"} <= set(frames[0].info)
    assert {"ekd_forces", "ekd_forces_std", "ekd_reference_forces"} <= set(frames[0].arrays)
    back = load_dataset(xyz, {name: key for name, key in XYZ_KEYS.items()}, None)
    assert back.ids() == got.ids() and np.array_equal(back.species, got.species)
    np.testing.assert_allclose(back.properties["energy"], got.properties["energy"], rtol=1e-14)
    np.testing.assert_allclose(back.properties["ensemble_forces"], got.properties["f"], rtol=1e-13, atol=1e-12)
    e0 = frames[0].info["ekd_energy"]
    assert e0 == pytest.approx(got.properties["energy"][0] / EV_TO_KCALMOL, rel=1e-14)
    assert -20 < e0 * EV_TO_KCALMOL / HARTREE_TO_KCALMOL < -3  # xTB H2O/CH4... in Hartree: eV it is

    # resumed: a missing extxyz is remade from the labels file, without asking the teachers again
    mtime = labels.stat().st_mtime_ns
    text = xyz.read_text()
    xyz.unlink()
    _, teachers, _ = run._teaching_ensemble(group)
    # no members: relabelling would fail (ensemble_predict needs at least one)
    monkeypatch.setattr(type(run), "_teaching_ensemble", lambda self, g: ([], teachers, "no one"))
    assert run.make_labels(group) == labels
    assert labels.stat().st_mtime_ns == mtime and xyz.read_text() == text


def _model(load_model, path):
    module, meta = load_model(path)
    return module, meta.cutoff, meta.dtype


def test_torch_loads_stay_weights_only_under_the_mace_environment(tmp_path):
    """``import mace`` sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the process; torch then loads
    every file without an explicit ``weights_only`` as a full pickle. ekd's loads pass
    ``weights_only=True`` and must refuse a file that holds other objects."""
    code = f"""
import argparse, torch
from ekd.store import CorruptFileError, load_torch
path = {str(tmp_path / "ckpt.pt")!r}
torch.save({{"weights": torch.ones(2), "args": argparse.Namespace(lr=1.0)}}, path)
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert isinstance(torch.load(path)["args"], argparse.Namespace)  # the variable is in force
try:
    load_torch(path, "checkpoint of member 0", "delete it")
except CorruptFileError as e:
    assert "holds Python objects other than tensors" in str(e), e
    print("refused")
"""
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"
