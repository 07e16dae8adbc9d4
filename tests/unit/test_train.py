"""ekd.train: one routine for every role, its log, outputs and resumption."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ekd.config import ModelConfig, TrainConfig, default_config
from ekd.train import MemberSpec, load_member, train_member

TEACHER_MODEL = ModelConfig(l_max=1, n_interactions=1, n_atom_layers=1, width=8, n_sensitivities=4)
STUDENT_MODEL = ModelConfig(l_max=0, n_interactions=1, n_atom_layers=1, width=6, n_sensitivities=4)


def _cfg(**train):
    base = default_config()
    tc = dict(
        lr=5e-3, batch_size=16, max_epochs=5, lr_patience=50, termination_patience=50,
        force_schedule=((1, 10.0), (3, 5.0)), kernels="pytorch",
    )  # fmt: skip
    tc.update(train)
    return dataclasses.replace(
        base,
        model=TEACHER_MODEL,
        train=dataclasses.replace(base.train, **tc),
        ensemble=dataclasses.replace(base.ensemble, student_model=STUDENT_MODEL),
    )


def _log(out_dir):
    return [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def test_force_weight_schedule():
    paper = TrainConfig()  # the paper's: 10 at epoch 1, 9 at 20, ..., 1 at 180, 0.5 from 200 on
    assert [paper.force_weight(e) for e in (1, 19, 20, 39, 40, 179, 180, 199, 200, 400)] == [
        10.0, 10.0, 9.0, 9.0, 8.0, 2.0, 1.0, 1.0, 0.5, 0.5,
    ]  # fmt: skip
    compressed = default_config().train  # the embedded default steps every 6 epochs
    assert compressed.force_weight(1) == 10.0 and compressed.force_weight(6) == 9.0
    assert compressed.force_weight(59) == 1.0 and compressed.force_weight(120) == 0.5


def test_teacher_energy_only(xtb_dataset, xtb_splits, tmp_path):
    out = tmp_path / "teacher"
    spec = MemberSpec("teacher", 0, 0, seed=11)
    summary = train_member(spec, _cfg(), xtb_dataset, xtb_splits, out)

    assert {p.name for p in out.iterdir()} == {"train_log.jsonl", "model.pt", "done.json"}
    assert json.loads((out / "done.json").read_text()) == summary
    assert summary["epochs"] == 5 and summary["stopped"] == "max_epochs"
    log = _log(out)
    assert [e["epoch"] for e in log] == [1, 2, 3, 4, 5]
    assert all(e["force_weight"] is None and "valid_force_rmse" not in e for e in log)
    assert log[-1]["loss"] < log[0]["loss"]
    best = min(log, key=lambda e: e["valid_energy_rmse"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_valid_energy_rmse"] == best["valid_energy_rmse"]

    member = load_member(out)
    assert member.model_config == TEACHER_MODEL and member.species == (1, 6, 7, 8)
    valid = xtb_dataset.subset(xtb_splits["valid"])
    e, f = member.predict(valid, forces=True)
    assert e.shape == (len(valid),) and f.shape == valid.coordinates.shape
    assert e.dtype == np.float64 and np.isfinite(f).all()
    assert np.all(f[valid.species == 0] == 0.0)
    # the saved model is the best epoch's: its validation RMSE is the one reported
    rmse = np.sqrt(np.mean((e - valid.properties["energy"]) ** 2))
    assert rmse == pytest.approx(summary["best_valid_energy_rmse"], rel=1e-4)
    e_only, none = member.predict(valid, forces=False, batch_size=7)
    assert none is None
    np.testing.assert_allclose(e_only, e, rtol=0, atol=1e-9)

    # finished: a second call returns the summary without training
    mtime = (out / "model.pt").stat().st_mtime_ns
    assert train_member(spec, _cfg(max_epochs=50), xtb_dataset, xtb_splits, out) == summary
    assert (out / "model.pt").stat().st_mtime_ns == mtime


def test_student_with_force_target(xtb_dataset, xtb_splits, tmp_path):
    # stand-in for ensemble forces: the reference forces under the students' property name
    data = xtb_dataset.with_properties(ensemble_forces=xtb_dataset.properties["reference_forces"])
    out = tmp_path / "student"
    spec = MemberSpec("student", 1, 2, seed=5, forces="ensemble_forces")
    summary = train_member(spec, _cfg(max_epochs=4), data, xtb_splits, out)

    log = _log(out)
    assert [e["force_weight"] for e in log] == [10.0, 10.0, 5.0, 5.0]  # the schedule, as applied
    assert all(e["valid_force_rmse"] > 0 for e in log)
    assert log[-1]["valid_force_rmse"] < log[0]["valid_force_rmse"]
    assert summary["forces"] == "ensemble_forces" and summary["epochs"] == 4
    assert load_member(out).model_config == STUDENT_MODEL  # students use the student architecture


def test_interrupted_run_continues_from_its_checkpoint(xtb_dataset, xtb_splits, tmp_path):
    data = xtb_dataset.with_properties(ensemble_forces=xtb_dataset.properties["reference_forces"])
    spec = MemberSpec("student", 1, 0, seed=3, forces="ensemble_forces")
    cfg = _cfg(max_epochs=4)

    def interrupt_after_2(epoch, entry):
        if epoch == 2:
            raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_member(spec, cfg, data, xtb_splits, out, epoch_callbacks=[interrupt_after_2])
    assert (out / "checkpoint.pt").exists() and not (out / "done.json").exists()
    assert [e["epoch"] for e in _log(out)] == [1, 2]

    # a checkpoint from other inputs is refused, not silently continued
    with pytest.raises(RuntimeError, match="different inputs"):
        train_member(dataclasses.replace(spec, seed=4), cfg, data, xtb_splits, out)

    seen = []
    summary = train_member(spec, cfg, data, xtb_splits, out, epoch_callbacks=[lambda ep, _: seen.append(ep)])
    assert seen == [3, 4] and summary["epochs"] == 4
    assert not (out / "checkpoint.pt").exists()

    # identical to a run that was never interrupted (batch order depends on seed and epoch only)
    straight = tmp_path / "straight"
    train_member(spec, cfg, data, xtb_splits, straight)
    for a, b in zip(_log(out), _log(straight), strict=True):
        for key in ("loss", "valid_energy_rmse", "valid_force_rmse", "force_weight", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_learning_rate_and_early_stopping_follow_validation_energy(xtb_dataset, xtb_splits, tmp_path):
    # lr so large that validation never improves after the first epochs: lr drops, then stop
    out = tmp_path / "stops"
    cfg = _cfg(lr=0.5, max_epochs=30, lr_patience=2, termination_patience=4, lr_factor=0.5)
    summary = train_member(MemberSpec("control", 1, 0, seed=2), cfg, xtb_dataset, xtb_splits, out)
    log = _log(out)
    assert summary["stopped"] == "patience" and summary["epochs"] == summary["best_epoch"] + 4
    assert summary["epochs"] < 30
    # the lr halves after every 2 epochs without a new best validation energy RMSE
    since_best, lr = 0, 0.5
    for e in log:
        assert e["lr"] == pytest.approx(lr)
        since_best = 0 if e["best"] else since_best + 1
        if since_best and since_best % 2 == 0:
            lr *= 0.5


def test_patience_waits_for_the_end_of_the_force_schedule(xtb_dataset, xtb_splits, tmp_path):
    """With a force target, epochs before the schedule's last step neither count towards early
    stopping nor halve the lr (the energy error may rise while forces improve); after it, they do."""
    data = xtb_dataset.with_properties(ensemble_forces=xtb_dataset.properties["reference_forces"])
    out = tmp_path / "student"
    # lr so large that validation stops improving after the first epochs
    cfg = _cfg(lr=0.5, max_epochs=30, lr_patience=2, termination_patience=3, force_schedule=((1, 10.0), (9, 1.0)))
    summary = train_member(MemberSpec("student", 1, 0, seed=2, forces="ensemble_forces"), cfg, data, xtb_splits, out)
    log = _log(out)
    assert all(e["lr"] == 0.5 for e in log if e["epoch"] < 9)  # no plateau halving during the ramp
    assert summary["stopped"] == "patience" and summary["epochs"] >= 9 + 3 - 1
    last_best = max(summary["best_epoch"], 8)
    assert summary["epochs"] == last_best + 3


def test_min_epochs_hold_off_stopping_and_lr_decay(xtb_dataset, xtb_splits, tmp_path):
    """A teacher (no force ramp) with min_epochs: no stop and no lr halving before it, then the
    usual patience from the last best epoch."""
    out = tmp_path / "teacher"
    cfg = _cfg(lr=0.5, max_epochs=30, lr_patience=2, termination_patience=3, min_epochs=10)
    summary = train_member(MemberSpec("teacher", 0, 0, seed=2), cfg, xtb_dataset, xtb_splits, out)
    log = _log(out)
    assert all(e["lr"] == 0.5 for e in log if e["epoch"] <= 10)
    assert summary["stopped"] == "patience" and summary["epochs"] == max(summary["best_epoch"], 9) + 3
    with pytest.raises(ValueError, match=r"min_epochs: must be between 0 and max_epochs \(30\)"):
        TrainConfig(max_epochs=30, min_epochs=31)


def test_bad_inputs_are_rejected(xtb_dataset, xtb_splits, tmp_path):
    with pytest.raises(ValueError, match="role"):
        MemberSpec("professor", 0, 0, 0)
    overlapping = {**xtb_splits, "valid": xtb_splits["train"][:3]}
    with pytest.raises(ValueError, match="train and valid"):
        train_member(MemberSpec("teacher", 0, 0, 0), _cfg(), xtb_dataset, overlapping, tmp_path / "a")
    energy = xtb_dataset.properties["energy"].copy()
    energy[xtb_splits["train"][0]] = np.nan
    with pytest.raises(ValueError, match="missing"):
        train_member(
            MemberSpec("teacher", 0, 0, 0), _cfg(), xtb_dataset.with_properties(energy=energy), xtb_splits,
            tmp_path / "b",
        )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no trained model"):
        load_member(tmp_path / "nothing")
