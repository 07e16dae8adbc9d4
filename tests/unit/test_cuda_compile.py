"""CUDA kernels: compiled here, run only where there is a GPU.

These machines have nvcc but no GPU and a CPU-only torch (which still ships the ATen/c10 CUDA
headers): every csrc/cuda/*.cu is compiled to an object file with nvcc, so syntax and template
errors surface in CI; linking and running need a CUDA build of torch. The device tests
(tests/unit/test_cuda_ops.py) compare the CUDA ops with the CPU ops and skip cleanly without a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
