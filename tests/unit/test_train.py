"""ekd.training.train: one routine for every role, its log, outputs and resumption."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ekd.config import ModelConfig, TrainConfig, default_config
from ekd.training.train import MemberSpec, StoppingPolicy, load_member, train_member

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
    # no "the loss went down" here: over 5 epochs it moved 17.7 -> 16.9, not monotonically (measured
    # on this machine), a margin that another CPU's rounding may undo; the loop's decisions are
    # tested with scripted metrics below
    assert all(np.isfinite(e["loss"]) and e["loss"] > 0 for e in log)
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


# --- stopping and the learning rate: the policy as a unit, fed made-up validation RMSEs. (Driving
# these with a real training run at a huge lr tested the trajectory, not the policy: on an
# AVX-512 machine that run kept improving and stopped at max_epochs.)


def _policy(**kw):
    args = dict(lr_factor=0.5, lr_patience=2, termination_patience=4, max_epochs=30)
    args.update(kw)
    return StoppingPolicy(**args)


def _drive(policy, rmses):
    """Feed ``rmses`` epoch by epoch while the policy runs; returns (per-epoch (best, lr) with lr
    the one the epoch trained with, the final state)."""
    state, lr, seen = policy.start(), 1.0, []
    for epoch, rmse in enumerate(rmses, start=1):
        if not policy.running(state):
            break
        better, scale = policy.observe(state, epoch, rmse)
        seen.append((better, lr))
        lr *= scale
    return seen, state


def test_policy_decays_the_lr_on_plateaus_and_stops_after_patience():
    # best at epochs 1, 2, 4; then nothing better
    rmses = [5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 3.1, 3.9, 9.0, 9.0, 9.0]
    seen, state = _drive(_policy(), rmses)
    assert [b for b, _ in seen] == [True, True, False, True, False, False, False, False]
    # two epochs without a new best -> x0.5 for the next; epoch 3 alone does not decay
    assert [lr for _, lr in seen] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    assert state["epoch"] == 8 == state["best_epoch"] + 4 and state["best_rmse"] == 3.0
    assert _policy().stopped_by(state) == "patience"
    # equal is not better
    seen, _ = _drive(_policy(), [2.0, 2.0, 2.0])
    assert [b for b, _ in seen] == [True, False, False]


def test_policy_stops_at_max_epochs_while_improving():
    seen, state = _drive(_policy(max_epochs=6), [10.0 - e for e in range(20)])
    assert len(seen) == 6 and all(b for b, _ in seen) and _policy().stopped_by(state) == "max_epochs"


def test_policy_holds_off_counting_until_the_force_schedule_ends():
    """With a force target, epochs before the schedule's last step neither count towards early
    stopping nor decay the lr (the energy error may rise while forces improve); after it, they do."""
    tc = TrainConfig(lr_patience=2, termination_patience=3, max_epochs=30, force_schedule=((1, 10.0), (9, 1.0)))
    policy = StoppingPolicy.of(tc, forces=True)
    assert policy.hold_until == 9 and StoppingPolicy.of(tc, forces=False).hold_until == 0
    rmses = [1.0] + [2.0] * 29  # best at epoch 1, never again
    seen, state = _drive(policy, rmses)
    assert all(lr == 1.0 for _, lr in seen[:9])  # no decay during the ramp (epochs 1..8) nor at 9
    assert state["epoch"] == 9 + 3 - 1  # epochs 9, 10, 11 count
    assert [lr for _, lr in seen[9:]] == [1.0, 0.5]  # decayed after epochs 9 and 10
    # the same sequence without a force target stops three epochs after the best
    seen, state = _drive(StoppingPolicy.of(tc, forces=False), rmses)
    assert state["epoch"] == 4
    # a best after the ramp restarts the count from there
    _, state = _drive(policy, [3.0] * 5 + [1.0] + [3.0] * 4 + [0.5] + [3.0] * 10)
    assert state["best_epoch"] == 11 and state["epoch"] == 14


def test_policy_min_epochs_hold_off_stopping_and_lr_decay():
    """No stop and no lr decay before min_epochs, then the usual patience from the last best."""
    tc = TrainConfig(lr_patience=2, termination_patience=3, max_epochs=30, min_epochs=10)
    policy = StoppingPolicy.of(tc, forces=False)
    seen, state = _drive(policy, [1.0] + [2.0] * 29)
    assert all(lr == 1.0 for _, lr in seen[:10])
    assert state["epoch"] == 12 and policy.stopped_by(state) == "patience"  # epochs 10, 11, 12 count
    # a late best: patience from it
    _, state = _drive(policy, [2.0] * 11 + [1.0] + [2.0] * 18)
    assert state["epoch"] == 15
    with pytest.raises(ValueError, match=r"min_epochs: must be between 0 and max_epochs \(30\)"):
        TrainConfig(max_epochs=30, min_epochs=31)


def test_training_loop_follows_the_policy(xtb_dataset, xtb_splits, tmp_path, monkeypatch):
    """The loop applies the policy's decisions: with the validation energy RMSE scripted, the lr
    it trains with, the "best" flags, the stop and the summary are the policy's, independent of
    how training goes on this CPU."""
    import ekd.training.train as train_mod

    script = [5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 3.1, 3.9] + [9.0] * 30
    real_evaluate = train_mod._evaluate
    calls = []

    def scripted(module, data, forces, batch_size=256):
        out = real_evaluate(module, data, forces, batch_size)
        calls.append(None)
        if len(calls) % 2 == 0:  # per epoch: the training split first, then the validation split
            out = {**out, "energy_rmse": script[len(calls) // 2 - 1]}
        return out

    monkeypatch.setattr(train_mod, "_evaluate", scripted)
    cfg = _cfg(lr=0.004, max_epochs=30, lr_patience=2, termination_patience=4, lr_factor=0.5)
    out = tmp_path / "scripted"
    summary = train_member(MemberSpec("control", 1, 0, seed=2), cfg, xtb_dataset, xtb_splits, out)
    log = _log(out)
    expected, _ = _drive(_policy(lr_patience=2, termination_patience=4), script)
    assert [(e["best"], e["lr"]) for e in log] == [(b, pytest.approx(0.004 * lr)) for b, lr in expected]
    assert [e["valid_energy_rmse"] for e in log] == script[: len(log)]
    assert summary["epochs"] == 8 and summary["best_epoch"] == 4 and summary["stopped"] == "patience"
    assert summary["best_valid_energy_rmse"] == 3.0


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
