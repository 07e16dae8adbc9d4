"""ekd.evaluation.metrics: E / ΔE / F errors on hand-computable cases, masking, ensembles, metrics.json.

Expected values are computed by hand (stated in comments) or by a plain pair-by-pair loop in the
test, never taken from the code under test.
"""

import itertools
import json
import math

import numpy as np
import pytest

from ekd.evaluation import metrics as ev

from ..conftest import check_missing_and_malformed

# 2 molecules x 3 conformers; molecule 7 and 3 (ids need not be 0..m-1 nor sorted)
MOLECULE = np.array([7, 7, 7, 3, 3, 3])
REF = np.array([0.0, 1.0, 2.0, 10.0, 12.0, 15.0])
ERR = np.array([0.5, -0.5, 1.0, 0.0, 2.0, -1.0])  # pred - ref


def _species(n):
    """n configurations of C-H padded to 3 atoms."""
    sp = np.zeros((n, 3), dtype=np.int64)
    sp[:, :2] = [6, 1]
    return sp


def _brute_pairs(pred, ref, molecule, window):
    """Every pair (i<j) of the same molecule inside the window: list of ΔE errors."""
    errs = []
    known = np.isfinite(ref)
    for m in np.unique(molecule[known]):
        idx = np.flatnonzero((molecule == m) & known)
        low = ref[idx].min()
        idx = idx[ref[idx] - low <= window]
        for i, j in itertools.combinations(idx, 2):
            errs.append((pred[i] - pred[j]) - (ref[i] - ref[j]))
    return np.array(errs)


def test_hand_computed_energy_and_delta_e():
    s = ev.score(REF + ERR, REF, MOLECULE, _species(6))
    # E: squares 0.25 0.25 1 0 4 1 -> 6.5/6; abs 0.5 0.5 1 0 2 1 -> 5/6
    assert s["energy_rmse"] == pytest.approx(math.sqrt(6.5 / 6))
    assert s["energy_mae"] == pytest.approx(5 / 6)
    # ΔE pair errors d_i - d_j: molecule 7: 1, -0.5, -1.5; molecule 3: -2, 1, 3
    # squares 1 .25 2.25 4 1 9 = 17.5 over 6 pairs; abs sum 9 over 6 pairs
    assert s["delta_e_rmse"] == pytest.approx(math.sqrt(17.5 / 6))
    assert s["delta_e_mae"] == pytest.approx(1.5)
    assert (s["n_configurations"], s["n_molecules"], s["n_pairs"], s["n_window_excluded"]) == (6, 2, 6, 0)
    assert s["force_rmse"] is None and s["force_mae"] is None and s["n_atoms"] == 0


def test_constant_offset_has_zero_delta_e():
    # a per-molecule constant shift is an energy error but no conformer-difference error
    pred = REF + np.where(MOLECULE == 7, 5.0, -3.0)
    s = ev.score(pred, REF, MOLECULE, _species(6))
    assert s["energy_rmse"] == pytest.approx(math.sqrt((3 * 25 + 3 * 9) / 6))
    assert s["delta_e_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert s["delta_e_mae"] == pytest.approx(0.0, abs=1e-12)


def test_window_excludes_high_conformers_from_delta_e_only():
    # molecule 7 gets a conformer 150 kcal/mol above its lowest (error 4) and one exactly at the
    # 100 kcal/mol edge (error 0.5; "more than window above" is excluded, so it stays)
    ref = np.append(REF, [150.0, 100.0])
    err = np.append(ERR, [4.0, 0.5])
    mol = np.append(MOLECULE, [7, 7])
    s = ev.score(ref + err, ref, mol, _species(8), window=100.0)
    assert s["energy_rmse"] == pytest.approx(math.sqrt(np.mean(err**2)))  # all 8 configurations
    assert s["n_configurations"] == 8 and s["n_window_excluded"] == 1
    # molecule 7 now has 4 conformers in the window (6 pairs), molecule 3 has 3 (3 pairs)
    assert s["n_pairs"] == 9
    d7 = err[[0, 1, 2, 7]]
    pair_err = [a - b for a, b in itertools.combinations(d7, 2)] + [-2.0, 1.0, 3.0]
    assert s["delta_e_rmse"] == pytest.approx(math.sqrt(np.mean(np.square(pair_err))))
    # a smaller window: only conformers within 1.5 of the minimum (mol 7: 0, 1; mol 3: none but 10)
    s = ev.score(ref + err, ref, mol, _species(8), window=1.5)
    assert s["n_pairs"] == 1 and s["delta_e_mae"] == pytest.approx(1.0)


def test_molecules_with_fewer_than_two_conformers_give_no_pairs():
    s = ev.score([1.0, 2.0], [0.0, 0.0], [0, 1], _species(2))
    assert s["n_pairs"] == 0 and s["delta_e_rmse"] is None and s["delta_e_mae"] is None
    assert s["energy_mae"] == pytest.approx(1.5)


def test_vectorised_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    n = 300
    mol = rng.integers(0, 40, n) * 3 + 11  # unsorted, gappy ids; some molecules with 1 conformer
    ref = rng.normal(0, 60, n)
    ref[rng.random(n) < 0.05] = np.nan
    pred = ref + rng.normal(0, 2, n) + 1e4  # a large common offset must not hurt precision
    s = ev.score(pred, ref, mol, _species(n), window=100.0)
    pairs = _brute_pairs(pred, ref, mol, 100.0)
    assert s["n_pairs"] == len(pairs) > 100
    assert s["delta_e_rmse"] == pytest.approx(np.sqrt(np.mean(pairs**2)), rel=1e-9)
    assert s["delta_e_mae"] == pytest.approx(np.mean(np.abs(pairs)), rel=1e-9)


def test_nan_references_are_masked_per_key():
    ref = REF.copy()
    ref[1] = np.nan  # unknown energy of molecule 7's conformer 1
    s = ev.score(REF + ERR, ref, MOLECULE, _species(6))
    keep = np.isfinite(ref)
    assert s["energy_rmse"] == pytest.approx(math.sqrt(np.mean(ERR[keep] ** 2)))
    # molecule 7 keeps conformers 0, 2 (pair error 0.5 - 1.0); molecule 3 keeps its 3 pairs
    assert s["n_pairs"] == 4
    assert s["delta_e_mae"] == pytest.approx((0.5 + 2 + 1 + 3) / 4)

    # forces known although the energy is not, and vice versa
    sp = _species(6)
    ref_f = np.ones((6, 3, 3))
    ref_f[:, 2] = 0.0  # padding
    ref_f[0, 1] = np.nan  # one atom unknown
    pred_f = ref_f + 0.5
    pred_f[0, 1] = 100.0
    s = ev.score(REF + ERR, ref, MOLECULE, sp, pred_f, ref_f)
    assert s["n_atoms"] == 6 * 2 - 1
    assert s["force_rmse"] == pytest.approx(0.5) and s["force_mae"] == pytest.approx(0.5)
    assert s["n_configurations"] == 5


def test_force_errors_over_real_atoms_only():
    rng = np.random.default_rng(1)
    n, a = 4, 5
    sp = np.zeros((n, a), dtype=np.int64)
    n_real = np.array([5, 3, 2, 4])
    for i, k in enumerate(n_real):
        sp[i, :k] = rng.integers(1, 9, k)
    ref_f = rng.normal(size=(n, a, 3))
    pred_f = ref_f + rng.normal(scale=0.3, size=(n, a, 3))
    pad = sp == 0
    pred_f[pad] = 1e6  # garbage in padding must not count
    ref_f[pad] = np.nan
    diffs = np.concatenate([(pred_f[i, :k] - ref_f[i, :k]).ravel() for i, k in enumerate(n_real)])
    s = ev.score(np.zeros(n), np.zeros(n), np.arange(n), sp, pred_f, ref_f)
    assert s["n_atoms"] == n_real.sum()
    assert s["force_rmse"] == pytest.approx(np.sqrt(np.mean(diffs**2)))
    assert s["force_mae"] == pytest.approx(np.mean(np.abs(diffs)))


def test_nan_predictions_are_not_hidden():
    pred = REF + ERR
    pred[4] = np.nan
    s = ev.score(pred, REF, MOLECULE, _species(6))
    assert math.isnan(s["energy_rmse"]) and math.isnan(s["delta_e_rmse"])
    assert s["n_nonfinite_predictions"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pred_energy": np.zeros(5)}, r"`pred_energy` must have the shape of `ref_energy` \(6,\)"),
        ({"molecule": np.zeros((6, 1))}, "`molecule` must have 1 dimension"),
        ({"species": np.zeros((5, 3))}, "`species` must be 6 x A"),
        ({"pred_forces": np.zeros((6, 3, 3)), "ref_forces": np.zeros((6, 4, 3))}, "`ref_forces` must be"),
        ({"window": 0.0}, "`window` must be > 0"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, message):
    args = {"pred_energy": REF, "ref_energy": REF, "molecule": MOLECULE, "species": _species(6), **kwargs}
    with pytest.raises(ValueError, match=message):
        ev.score(**args)


def test_summarize_mean_and_population_std():
    scores = [
        {"energy_rmse": 1.0, "energy_mae": 0.5, "delta_e_rmse": 2.0, "force_rmse": None},
        {"energy_rmse": 3.0, "energy_mae": 1.5, "delta_e_rmse": float("nan"), "force_rmse": None},
    ]
    s = ev.summarize(scores)
    assert s["energy_rmse"] == {"mean": 2.0, "std": 1.0, "n": 2}  # ddof=0: sqrt(((1-2)^2+(3-2)^2)/2)
    assert s["energy_mae"]["mean"] == 1.0 and s["energy_mae"]["std"] == 0.5
    assert s["delta_e_rmse"] == {"mean": 2.0, "std": 0.0, "n": 1}  # the NaN member is left out
    assert s["force_rmse"] == {"mean": None, "std": None, "n": 0}
    assert set(s) == set(ev.METRICS)
    one = ev.summarize(scores[:1])
    assert one["energy_rmse"] == {"mean": 1.0, "std": 0.0, "n": 1}
    with pytest.raises(ValueError, match="no member"):
        ev.summarize([])


def _role_inputs(k=3, seed=2):
    rng = np.random.default_rng(seed)
    n, a = 6, 3
    sp = _species(n)
    ref_f = rng.normal(size=(n, a, 3))
    ref_f[:, 2] = 0.0
    energy = REF + rng.normal(0, 1.0, (k, n))
    forces = ref_f + rng.normal(0, 0.5, (k, n, a, 3))
    reference = {"energy": REF, "forces": ref_f, "molecule": MOLECULE, "species": sp}
    return {"energy": energy, "forces": forces}, reference


def test_evaluate_group_members_summary_and_ensemble():
    preds, ref = _role_inputs()
    out = ev.evaluate_group(preds, ref, window=100.0)
    assert len(out["members"]) == 3
    for i, m in enumerate(out["members"]):
        assert m["energy_rmse"] == pytest.approx(np.sqrt(np.mean((preds["energy"][i] - REF) ** 2)))
    rmses = [np.sqrt(np.mean((preds["energy"][i] - REF) ** 2)) for i in range(3)]
    assert out["summary"]["energy_rmse"]["mean"] == pytest.approx(np.mean(rmses))
    assert out["summary"]["energy_rmse"]["std"] == pytest.approx(np.std(rmses))
    # the ensemble is the mean prediction of the members
    e_mean = preds["energy"].mean(axis=0)
    f_mean = preds["forces"].mean(axis=0)
    assert out["ensemble"]["energy_rmse"] == pytest.approx(np.sqrt(np.mean((e_mean - REF) ** 2)))
    real = ref["species"] > 0
    f_err = (f_mean - ref["forces"])[real]
    assert out["ensemble"]["force_rmse"] == pytest.approx(np.sqrt(np.mean(f_err**2)))
    pairs = _brute_pairs(e_mean, REF, MOLECULE, 100.0)
    assert out["ensemble"]["delta_e_rmse"] == pytest.approx(np.sqrt(np.mean(pairs**2)))
    # averaging independent errors helps: ensemble better than the average member here
    assert out["ensemble"]["energy_rmse"] < out["summary"]["energy_rmse"]["mean"]


def test_evaluate_group_without_reference_forces():
    preds, ref = _role_inputs(k=1)
    out = ev.evaluate_group(preds, {**ref, "forces": None}, window=100.0)
    assert out["ensemble"]["force_rmse"] is None and out["summary"]["force_rmse"]["n"] == 0
    assert out["summary"]["energy_rmse"]["std"] == 0.0  # one member
    out = ev.evaluate_group({"energy": preds["energy"], "forces": None}, ref, window=100.0)
    assert out["members"][0]["force_rmse"] is None
    with pytest.raises(ValueError, match='predictions\\["forces"\\] must have 2 members'):
        ev.evaluate_group({"energy": np.zeros((2, 6)), "forces": preds["forces"]}, ref)


def _metrics():
    preds, ref = _role_inputs()
    return {
        "config": {"name": "unit", "evaluate": {"conformer_window": 100.0}},
        "sets": {"test_split": {"description": "d", "n_configurations": np.int64(6), "n_molecules": 2}},
        "roles": {
            "teacher": {
                "role": "teacher",
                "generation": 0,
                "n_members": 3,
                "test_split": ev.evaluate_group(preds, ref, 100.0),
            }
        },
    }


def test_metrics_json_round_trip(tmp_path):
    metrics = _metrics()
    metrics["roles"]["teacher"]["test_split"]["members"][0]["energy_mae"] = np.float64("nan")
    path = ev.write_metrics(tmp_path / "out" / "metrics.json", metrics)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left
    text = path.read_text()
    assert "NaN" not in text
    json.loads(text)  # strict JSON
    back = ev.load_metrics(path)
    assert back["schema"] == ev.SCHEMA
    assert back["sets"]["test_split"]["n_configurations"] == 6
    got = back["roles"]["teacher"]["test_split"]
    want = metrics["roles"]["teacher"]["test_split"]
    assert got["members"][0]["energy_mae"] is None
    assert got["ensemble"] == pytest.approx(want["ensemble"])
    assert got["summary"]["energy_rmse"] == pytest.approx(want["summary"]["energy_rmse"])
    # writing what was read gives the same file
    ev.write_metrics(tmp_path / "again.json", back)
    assert (tmp_path / "again.json").read_text() == text


def test_load_metrics_errors(tmp_path):
    bad = check_missing_and_malformed(ev.load_metrics, ev.MetricsFileError, tmp_path, "bad.json", "{", "not valid JSON")
    bad.write_text('{"config": {}, "sets": {}}')
    with pytest.raises(ev.MetricsFileError, match=r"missing top-level key\(s\) \['roles'\]"):
        ev.load_metrics(bad)
    with pytest.raises(TypeError, match="metrics.config.x: cannot store a set"):
        ev.write_metrics(tmp_path / "m.json", {**_metrics(), "config": {"x": {1}}})
