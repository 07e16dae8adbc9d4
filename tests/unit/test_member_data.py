"""What a member's training job actually trains on: units decided once (in the main process) and
splits by configuration identity (issue 14, items 1, 2 and the data checks of 4 and 11).

The job's loading function (:func:`ekd.workflow.load_member_data`, run by ``_train_job``) is
tested through the real ``Run.train_group``: the worker pool runs the job in this process and
``train_member`` records the arrays and splits it is handed instead of training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ekd import workflow
from ekd.config import default_config
from ekd.data import DataFileError, Dataset, Units, load_dataset, write_ani
from ekd.units import BOHR_TO_ANGSTROM, HARTREE_TO_KCALMOL
from tests.conftest import KEYS, xtb_groups

pytest.importorskip("tblite.interface")


@pytest.fixture(scope="module")
def groups():
    """GFN2-xTB data of three small molecules (Hartree, Hartree/Angstrom, Angstrom)."""
    return xtb_groups(molecules=("H2O", "CH4", "CH3OH"), n_conf=10, seed=3)


def _scaled(groups, energy=1.0, length=1.0, nan_forces=(), nan_energy=()):
    """Copies of ``groups`` with energies x ``energy``, lengths / ``length`` (so Bohr for
    length = BOHR_TO_ANGSTROM); NaN forces / energies at (molecule, conformer) pairs."""
    out = []
    for g in groups:
        props = {
            KEYS["energy"]: g.properties[KEYS["energy"]] * energy,
            KEYS["reference_forces"]: g.properties[KEYS["reference_forces"]] * energy * length,
        }
        for name, c in nan_forces:
            if name == g.name:
                props[KEYS["reference_forces"]][c] = np.nan
        for name, c in nan_energy:
            if name == g.name:
                props[KEYS["energy"]][c] = np.nan
        out.append(dataclasses.replace(g, coordinates=g.coordinates / length, properties=props))
    return out


def _cfg(train, test=None, energy_unit="hartree", length_unit="angstrom", members=2, seed=0):
    base = default_config()
    return dataclasses.replace(
        base,
        seed=seed,
        workers=1,
        data=dataclasses.replace(
            base.data,
            train=str(train),
            test=None if test is None else str(test),
            energy_key=KEYS["energy"],
            reference_forces_key=KEYS["reference_forces"],
            energy_unit=energy_unit,
            length_unit=length_unit,
            test_fraction=0.2,
            valid_fraction=0.2,
        ),
        ensemble=dataclasses.replace(base.ensemble, n_teachers=members, n_students=members, generations=1),
        md=dataclasses.replace(base.md, enabled=False),
    )


@pytest.fixture
def captured(monkeypatch):
    """Run member jobs in this process; record (dataset, splits, spec) handed to train_member."""
    import ekd.training.train

    seen = []

    def run_here(fn, jobs, workers, desc, unit="job", progress=True, already_done=0):
        return [fn(job) for job in jobs]

    def record(spec, cfg, dataset, splits, out_dir, progress=False, **kw):
        seen.append((spec, dataset, {k: np.asarray(v) for k, v in splits.items()}))
        return {"member": spec.member}

    monkeypatch.setattr(workflow.rundir, "run_parallel", run_here)
    monkeypatch.setattr(ekd.training.train, "train_member", record)
    return seen


def _trained_on(run, label, captured):
    """(spec, dataset, splits) of every member of group ``label``, trained (recorded) now."""
    captured.clear()
    run.train_group(run.group(label))
    return list(captured)


def test_jobs_train_on_the_configured_units(groups, tmp_path, captured):
    """A file in kcal/mol and Bohr without unit attributes (as the ANI releases ship), declared
    with data.energy_unit / data.length_unit, gives every job the arrays of the Hartree/Angstrom
    file. (Jobs used to read it as Hartree/Angstrom: energies 627x too large.)"""
    hartree = write_ani(tmp_path / "hartree.h5", groups)
    kcal = write_ani(tmp_path / "kcal_bohr.h5", _scaled(groups, HARTREE_TO_KCALMOL, BOHR_TO_ANGSTROM))
    seen = {}
    for name, cfg in (
        ("hartree", _cfg(hartree)),
        ("kcal", _cfg(kcal, energy_unit="kcal/mol", length_unit="bohr")),
    ):
        run = workflow.Run(cfg, tmp_path / f"run_{name}", progress=False)
        seen[name] = _trained_on(run, "teacher", captured) + _trained_on(run, "baseline", captured)
    assert len(seen["hartree"]) == len(seen["kcal"]) == 4
    for (spec_a, a, split_a), (spec_b, b, split_b) in zip(seen["hartree"], seen["kcal"], strict=True):
        assert spec_a == spec_b
        assert a.ids() == b.ids()
        np.testing.assert_array_equal(a.species, b.species)
        np.testing.assert_allclose(b.coordinates, a.coordinates, rtol=1e-12, atol=1e-12)
        assert set(a.properties) == set(b.properties)
        for key in a.properties:
            np.testing.assert_allclose(b.properties[key], a.properties[key], rtol=1e-12, atol=1e-9)
        for key in ("train", "valid", "test"):
            np.testing.assert_array_equal(split_a[key], split_b[key])
    # and what they see is GFN2-xTB in kcal/mol (water: about -5.07 Hartree)
    water = seen["kcal"][0][1]
    e = water.properties["energy"][water.molecule == water.molecule_names.index("H2O")]
    np.testing.assert_allclose(e, groups[0].properties[KEYS["energy"]] * HARTREE_TO_KCALMOL, rtol=1e-12)


def test_students_read_their_labels_in_the_training_files_units(groups, tmp_path, captured, monkeypatch):
    """The labels file is written and read in the training file's units, so students of a
    kcal/mol + Bohr run see what students of a Hartree/Angstrom run see."""

    class FakeTeacher:  # forces that depend on the geometry only (kcal/mol/Angstrom)
        def predict(self, dataset: Dataset, forces=True):
            return np.zeros(len(dataset)), np.sin(dataset.coordinates) * (dataset.species > 0)[..., None]

    monkeypatch.setattr(workflow.Run, "_teaching_ensemble", lambda self, group: ([FakeTeacher()], "fake", "fake"))
    hartree = write_ani(tmp_path / "hartree.h5", groups)
    kcal = write_ani(tmp_path / "kcal_bohr.h5", _scaled(groups, HARTREE_TO_KCALMOL, BOHR_TO_ANGSTROM))
    seen = []
    for name, cfg in (("a", _cfg(hartree)), ("b", _cfg(kcal, energy_unit="kcal/mol", length_unit="bohr"))):
        run = workflow.Run(cfg, tmp_path / f"run_{name}", progress=False)
        seen.append(_trained_on(run, "student_gen1", captured))
    for (_, a, _), (_, b, _) in zip(*seen, strict=True):
        assert a.ids() == b.ids()
        np.testing.assert_allclose(b.properties["energy"], a.properties["energy"], rtol=1e-12)
        np.testing.assert_allclose(b.properties["ensemble_forces"], a.properties["ensemble_forces"], atol=1e-9)
        np.testing.assert_allclose(b.coordinates, a.coordinates, atol=1e-12)


def test_configured_units_contradicting_the_file_are_an_error(groups, tmp_path):
    pool = load_dataset(write_ani(tmp_path / "a.h5", groups), KEYS)
    stamped = pool.save(tmp_path / "kcal.h5", KEYS, Units("kcal/mol", "bohr"))  # energy_unit attribute
    run = workflow.Run(_cfg(stamped), tmp_path / "run", progress=False)  # config: hartree, angstrom
    with pytest.raises(
        DataFileError, match=r"data.energy_unit is 'hartree' but the file's attribute energy_unit says 'kcal/mol'"
    ):
        _ = run.train_data
    run = workflow.Run(_cfg(stamped, energy_unit="kcal/mol"), tmp_path / "run2", progress=False)
    with pytest.raises(
        DataFileError, match=r"data.length_unit is 'angstrom' but the file's attribute length_unit says 'bohr'"
    ):
        _ = run.train_data
    ok = workflow.Run(_cfg(stamped, energy_unit="kcal/mol", length_unit="bohr"), tmp_path / "run3", progress=False)
    np.testing.assert_allclose(ok.train_data.properties["energy"], pool.properties["energy"], rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 4])
def test_baseline_trains_on_its_split_minus_configurations_without_forces(groups, tmp_path, captured, seed):
    """Some reference forces are NaN (and one energy): the baseline's job trains and validates on
    exactly its split's configurations that have forces, by identity; nothing of the test split
    or of its validation split leaks into its training set. (The job dropped the NaN-force
    configurations again and read the split's positions in the shorter list: seed 4 trained on
    test-split configurations.)"""
    nan_forces = [("CH4", 0), ("CH4", 1), ("CH3OH", 2), ("H2O", 5), ("H2O", 6)]
    path = write_ani(tmp_path / "nan.h5", _scaled(groups, nan_forces=nan_forces, nan_energy=[("CH3OH", 0)]))
    run = workflow.Run(_cfg(path, members=3, seed=seed), tmp_path / "run", progress=False)
    pool = run.train_data
    assert ("CH3OH", 0) not in pool.ids()  # no energy: not in the pool
    no_forces = set(nan_forces)
    test_ids = set(pool.ids(run.splits["test"]))
    for spec, dataset, splits in _trained_on(run, "baseline", captured):
        mine = workflow.member_splits(run.splits, spec.member)
        trained = set(dataset.ids(splits["train"]))
        validated = set(dataset.ids(splits["valid"]))
        assert trained == set(pool.ids(mine["train"])) - no_forces
        assert validated == set(pool.ids(mine["valid"])) - no_forces
        assert not trained & test_ids and not validated & test_ids and not trained & validated
        assert set(dataset.ids(splits["test"])) == test_ids
        assert dataset.mask("reference_forces")[np.concatenate([splits["train"], splits["valid"]])].all()
    # teachers are not thinned by the forces they do not use
    for spec, dataset, splits in _trained_on(run, "teacher", captured):
        mine = workflow.member_splits(run.splits, spec.member)
        assert dataset.ids(splits["train"]) == pool.ids(mine["train"])


def test_a_data_file_too_small_to_split_is_named(groups, tmp_path):
    one = write_ani(
        tmp_path / "one.h5",
        [
            dataclasses.replace(
                g, coordinates=g.coordinates[:1], properties={k: v[:1] for k, v in g.properties.items()}
            )
            for g in groups[:1]
        ],
    )
    run = workflow.Run(_cfg(one), tmp_path / "run", progress=False)
    with pytest.raises(
        DataFileError,
        match=r"data.train .*one.h5: 1 configuration\(s\) with a known energy; the splits need at least 3",
    ):
        _ = run.splits


def test_an_element_only_in_the_test_pool_stops_the_run_before_training(groups, tmp_path, monkeypatch):
    train = write_ani(tmp_path / "train.h5", [g for g in groups if g.name != "CH4"])  # H, O, C (methanol)
    nh3 = xtb_groups(molecules=("NH3",), n_conf=3, seed=5)
    test = write_ani(tmp_path / "test.h5", [*nh3, groups[0]])

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(workflow.rundir, "run_parallel", no_training)
    run = workflow.Run(_cfg(train, test), tmp_path / "run", progress=False)
    with pytest.raises(
        DataFileError, match=r"data.test .*test.h5: element\(s\) N \(in 'NH3'\) occur only in the out-of-sample pool"
    ):
        run.run_all()
    assert not (tmp_path / "run" / "gen0").exists()


def test_labels_file_without_identities_is_remade_when_the_pool_was_thinned(groups, tmp_path, monkeypatch):
    """A labels file from before files recorded conformer indices numbers a thinned pool's
    configurations 0, 1, ...: reused as it is, students would read shifted identities."""
    import h5py

    class FakeTeacher:
        def predict(self, dataset: Dataset, forces=True):
            return np.zeros(len(dataset)), np.cos(dataset.coordinates) * (dataset.species > 0)[..., None]

    monkeypatch.setattr(workflow.Run, "_teaching_ensemble", lambda self, group: ([FakeTeacher()], "fake", "fake"))
    path = write_ani(tmp_path / "nan.h5", _scaled(groups, nan_energy=[("H2O", 0), ("CH4", 3)]))
    run = workflow.Run(_cfg(path), tmp_path / "run", progress=False)
    group = run.group("student_gen1")
    labels = run.make_labels(group)
    with h5py.File(labels, "a") as f:  # as an older ekd wrote it
        for name in ("H2O", "CH4"):
            del f[f"{name}/conformer_index"]
    stale = load_dataset(labels, {"energy": KEYS["energy"]})
    assert sorted(stale.ids()) != sorted(run.train_data.ids())
    again = load_dataset(run.make_labels(group), {"energy": KEYS["energy"]})
    assert sorted(again.ids()) == sorted(run.train_data.ids())
