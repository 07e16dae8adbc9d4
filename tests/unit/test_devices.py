"""Devices: ``train.device`` / ``--device`` / ``device=`` (ekd.ops.devices), on the CPU.

What runs here: the names and their errors, the GPU choice per worker (with torch's view of the
GPUs replaced), that the device enters no digest, the one-line error of ``--device cuda`` without a
GPU, and a member trained with ``device: cpu`` whose files hold CPU tensors only. Training and
prediction on a GPU are tests/unit/test_cuda_ops.py's and scripts/gpu_check.sh's.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from ekd import config
from ekd.jobs import WORKER_ENV, run_parallel
from ekd.ops import devices
from ekd.ops.devices import DeviceError, resolve_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: auto and cuda resolve to it")


def test_cpu_is_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@no_gpu
def test_auto_without_a_gpu_is_the_cpu():
    assert resolve_device("auto") == torch.device("cpu")


@no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_an_error_saying_why(name):
    with pytest.raises(DeviceError, match=rf"^train.device: {name} asked for, but torch .* (CPU-only|no CUDA device)"):
        resolve_device(name, "train.device")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "CPU", "cuda:0:1", ""])
def test_malformed_names_are_refused(name):
    with pytest.raises(DeviceError, match="--device: must be auto, cpu, cuda or cuda:N"):
        resolve_device(name, "--device")
    with pytest.raises(config.ConfigError, match="train.device: must be auto, cpu, cuda or cuda:N"):
        config.loads(f"train: {{device: '{name}'}}")


@pytest.fixture
def three_gpus(monkeypatch):
    """torch's view of three visible GPUs and an op library with its CUDA kernels (nothing runs on them)."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setitem(devices.BUILD_INFO, "with_cuda", True)


@pytest.mark.parametrize("slot, expected", [(None, 0), ("0", 0), ("1", 1), ("4", 1)])
def test_workers_take_the_visible_gpus_round_robin(three_gpus, monkeypatch, slot, expected):
    if slot is None:
        monkeypatch.delenv(WORKER_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKER_ENV, slot)
    assert resolve_device("auto") == torch.device("cuda", expected)
    assert resolve_device("cuda") == torch.device("cuda", expected)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)  # an index is what it says
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"cuda:3 asked for, but 3 GPU\(s\) are visible \(cuda:0..cuda:2\)"):
        resolve_device("cuda:3")


def test_a_library_without_cuda_kernels_is_named(three_gpus, monkeypatch):
    monkeypatch.setitem(devices.BUILD_INFO, "with_cuda", False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="built without its CUDA kernels .* pip install --no-build-isolation"):
        resolve_device("cuda")


def test_worker_processes_have_slots():
    slots = run_parallel(os.getenv, [WORKER_ENV] * 4, workers=2, desc="slots", progress=False)
    assert set(slots) <= {"0", "1"} and None not in slots


def test_the_device_enters_no_digest():
    base = config.default_config()
    for name in ("cpu", "cuda", "cuda:1"):
        other = replace(base, train=replace(base.train, device=name))
        assert other.digest() == base.digest()
        assert other.digest("train") == base.digest("train")
        assert other.train.identity() == base.train.identity()
        assert other.to_dict()["train"]["device"] == name  # recorded when set
    assert "device" not in base.to_dict()["train"]  # at its default, records are as before


def test_to_cpu_keeps_the_structure():
    state = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(1), 3)], "c": "x"}
    out = devices.to_cpu(state)
    assert out["c"] == "x" and out["b"][1][1] == 3 and isinstance(out["b"][1], tuple)
    assert all(t.device.type == "cpu" for t in (out["a"], out["b"][0], out["b"][1][0]))


@no_gpu
@pytest.mark.parametrize("verb", [["train", "--role", "teacher"], ["evaluate"], ["distill"], ["run"], ["md-stability"]])
def test_device_cuda_without_a_gpu_is_one_line(verb, tmp_path, capsys):
    from ekd.cli import main

    assert main([*verb, "--run-dir", str(tmp_path / "run"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ekd: error: --device: cuda asked for, but torch ")


def test_score_device_is_checked_by_the_parser(capsys):
    from ekd.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["score", "m.pt", "--test", "t.h5", "--device", "gpu"])
    assert stop.value.code == 2
    assert "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


@no_gpu
def test_score_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    pytest.importorskip("tblite.interface")
    from ekd.cli import main
    from ekd.data import write_ani

    from ..conftest import xtb_groups
    from .model_files import toy_file

    model = toy_file(tmp_path / "toy.pt")
    test = write_ani(tmp_path / "t.h5", xtb_groups(("H2O",), n_conf=2))
    assert main(["score", str(model), "--test", str(test), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ekd: error: --device: cuda asked for, but torch "), err


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    return [t for v in obj for t in _tensors(v)] if isinstance(obj, list | tuple) else []


def test_a_member_trained_with_device_cpu_writes_cpu_tensors(xtb_dataset, xtb_splits, tmp_path):
    from ekd.store import load_torch
    from ekd.training.member import load_member
    from ekd.training.train import MemberSpec, train_member

    cfg = config.loads(
        "model: {l_max: 1, n_interactions: 1, n_atom_layers: 1, width: 8, n_sensitivities: 4}\n"
        "train: {max_epochs: 2, batch_size: 32, device: cpu}\n"
    )
    seen = {}

    def checkpoint_tensors(epoch, entry):
        seen[epoch] = load_torch(tmp_path / "m" / "checkpoint.pt", "checkpoint", "")

    summary = train_member(
        MemberSpec("teacher", 0, 0, seed=1), cfg, xtb_dataset, xtb_splits, tmp_path / "m",
        epoch_callbacks=[checkpoint_tensors],
    )  # fmt: skip
    assert summary["device"] == "cpu"
    payload = torch.load(tmp_path / "m" / "model.pt", weights_only=True)  # no map_location: CPU tensors only
    tensors = _tensors([payload, seen[1]])
    assert len(tensors) > 10 and all(t.device.type == "cpu" for t in tensors)
    member = load_member(tmp_path / "m", device="cpu")
    assert member.device == torch.device("cpu")
    energy, forces = member.predict(xtb_dataset.subset(xtb_splits["test"][:5]))
    assert energy.shape == (5,) and forces is not None
