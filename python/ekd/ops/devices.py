"""Which torch device ekd computes on: ``train.device`` / ``--device`` / ``device=`` resolved.

Names (checked for their form in :mod:`ekd.config.schema`): ``auto`` (a GPU if there is one that
ekd can use, else the CPU), ``cpu``, ``cuda`` (a visible GPU), ``cuda:N`` (visible GPU N). A
scheduler's ``CUDA_VISIBLE_DEVICES`` is respected as torch respects it: the visible GPUs are
numbered 0..n-1. Worker processes of :func:`ekd.jobs.run_parallel` take their own GPU, round-robin
over the visible ones (``auto`` and ``cuda``; ``cuda:N`` is what it says).

The device is where numbers are computed, never part of what they mean: it enters no digest, and
every file ekd writes holds CPU tensors (loaded with ``map_location="cpu"``), so a member trained on
a GPU resumes, exports and runs on the CPU and the other way round.
"""

from __future__ import annotations

import os
import re

import torch

from ..jobs import WORKER_ENV
from .library import BUILD_INFO

NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: the device of the ASE engine's MD runs (``ekd md-stability --device``; unset: the CPU), read in
#: each MD worker so that it takes its own GPU
MD_DEVICE_ENV = "EKD_MD_DEVICE"

_REBUILD = (
    "rebuild ekd with the CUDA toolkit on PATH (nvcc) against this CUDA torch: "
    "pip install --no-build-isolation --force-reinstall ."
)


class DeviceError(ValueError):
    """A device that cannot be had here (no GPU, no CUDA kernels in the op library, no such index)."""


def cuda_unusable_reason() -> str | None:
    """Why ekd cannot compute on a GPU here, or None if it can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"torch {torch.__version__} sees no CUDA device{where}"
    if not BUILD_INFO.get("with_cuda"):
        return f"ekd's op library was built without its CUDA kernels (build_info.json: with_cuda false); {_REBUILD}"
    return None


def worker_index() -> int:
    """This process's worker slot (0 outside ekd's worker processes)."""
    try:
        return max(int(os.environ.get(WORKER_ENV, "0")), 0)
    except ValueError:
        return 0


def resolve_device(name: str | torch.device = "auto", what: str = "device") -> torch.device:
    """The torch device for ``name`` in this process; ``what`` names the setting in errors
    (e.g. ``"--device"``, ``"train.device"``).

    ``auto``: GPU ``worker_index() % n`` when ekd can use the GPUs, else the CPU. ``cuda``: the
    same GPU, or a :class:`DeviceError` saying why there is none. ``cuda:N``: GPU N or an error.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str) or not NAME.match(name):
        raise DeviceError(f"{what}: must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    reason = cuda_unusable_reason()
    if name == "auto":
        return torch.device("cpu") if reason else torch.device("cuda", worker_index() % torch.cuda.device_count())
    if reason:
        raise DeviceError(f"{what}: {name} asked for, but {reason}; use cpu (or auto: a GPU when there is one)")
    count = torch.cuda.device_count()
    if name == "cuda":
        return torch.device("cuda", worker_index() % count)
    index = int(name.split(":")[1])
    if index >= count:
        raise DeviceError(f"{what}: {name} asked for, but {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def to_cpu(obj):
    """``obj`` (tensors in dicts, lists, tuples: a state dict, an optimizer state) with every tensor
    on the CPU, so that a saved file loads anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu() if obj.device.type != "cpu" else obj
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
