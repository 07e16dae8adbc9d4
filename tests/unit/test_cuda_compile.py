"""CUDA kernels: compiled here, run only where there is a GPU.

These machines have nvcc but no GPU and a CPU-only torch (which still ships the ATen/c10 CUDA
headers): every csrc/cuda/*.cu is compiled to an object file with nvcc, so syntax and template
errors surface in CI; linking and running need a CUDA build of torch. The device tests compare
the CUDA ops with the CPU ops and skip cleanly without a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))


def test_there_are_cuda_sources():
    assert {p.name for p in CUDA_SOURCES} >= {"sensitivity.cu", "neighbors.cu"}


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or in /usr/local/cuda/bin: cannot compile CUDA")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_with_nvcc(source, tmp_path):
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{ROOT / 'csrc' / 'include'}"] + [f"-I{p}" for p in include_paths()]
    # The CPU wheel ships c10/cuda headers but not the one CMake generates for a CUDA build of torch
    # (c10/cuda/impl/cuda_cmake_macros.h, a single macro in CUDA wheels); stand in for it if absent.
    generated = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any((Path(p) / generated).exists() for p in include_paths()):
        stub = tmp_path / "stub_include" / generated
        stub.parent.mkdir(parents=True)
        stub.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.append(f"-I{tmp_path / 'stub_include'}")
    cmd = [
        NVCC,
        "-c",
        "-std=c++17",
        "-O1",
        "-Xcompiler",
        "-fPIC",
        "--expt-relaxed-constexpr",
        "-D_GLIBCXX_USE_CXX11_ABI=1",
        "-DTORCH_EXTENSION_NAME=ekd_ops",
        # one real architecture keeps the compile short; CMake builds CMAKE_CUDA_ARCHITECTURES
        "-gencode=arch=compute_80,code=sm_80",
        *includes,
        str(source),
        "-o",
        str(tmp_path / (source.stem + ".o")),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, f"nvcc failed on {source.name}:\n{proc.stderr[-4000:]}"
    assert (tmp_path / (source.stem + ".o")).stat().st_size > 0


needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["envsum", "sensesum", "featsum", "tensor_envsum", "tensor_sensesum"])
def test_cuda_ops_match_cpu(name, dtype):
    from ekd.ops.library import ops

    from .test_kernels import op_args

    for pairs in (None, (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))):
        args = op_args(name, n_atoms=30, n_pairs=500, n_sens=7, n_feat=33, dtype=dtype, pairs=pairs)
        cpu = getattr(ops, name)(*args)
        gpu = getattr(ops, name)(*(a.cuda() for a in args))
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
        # second order through the C++ autograd on the device
        floats = [a.cuda().requires_grad_(True) for a in args[:-2]]
        out = getattr(ops, name)(*floats, args[-2].cuda(), args[-1].cuda())
        grads = torch.autograd.grad(out.square().sum(), floats, create_graph=True)
        torch.autograd.grad(sum(g.sum() for g in grads), floats, allow_unused=True)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("periodic", [False, True])
def test_cuda_neighbor_list_matches_cpu(periodic):
    from ekd.ops.library import neighbor_list

    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(200, 3, generator=gen, dtype=torch.float64) * 12.0
    cell = torch.tensor([[12.0, 0, 0], [1.0, 11.0, 0], [0.5, 0.3, 12.5]], dtype=torch.float64)
    kwargs = dict(cell=cell, pbc=True) if periodic else {}

    def canonical(first, second, shifts):
        key = torch.stack([first, second, *shifts.T], dim=1).cpu()
        return key[
            torch.argsort(
                key[:, 0] * 10**9 + key[:, 1] * 10**5 + (key[:, 2] + 9) * 400 + (key[:, 3] + 9) * 20 + key[:, 4] + 9
            )
        ]

    cpu = canonical(*neighbor_list(pos, 3.5, **kwargs))
    gpu = canonical(
        *neighbor_list(pos.cuda(), 3.5, **{k: v.cuda() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    )
    assert torch.equal(cpu, gpu)
