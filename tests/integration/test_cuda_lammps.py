"""``pair_style ekd ... device cuda``: the models of the plugin on a GPU, inputs copied there and
results back every step (lammps_plugin/ekd_model.cpp, Model::set_device).

Here, without a GPU: the keyword is parsed, ``device cpu`` is the default's numbers, and ``device
cuda`` stops with LAMMPS's error naming why (the plugin's torch sees no CUDA device). With a GPU
(``@pytest.mark.cuda``): ``device cuda`` gives the CPU's energy and forces. The GPU path has not
run anywhere yet (December 2026): it is UNVERIFIED until scripts/gpu_check.sh or this test passes
on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from .conftest import run_lmp
from .test_lammps import read_dump, single_point_script, vacuum_molecule, write_data

pytestmark = [pytest.mark.lammps]


def _single_point(workdir, model, style: str):
    workdir.mkdir(parents=True, exist_ok=True)
    write_data(vacuum_molecule(), workdir / "data.lmp")
    script = single_point_script([model], periodic=False).replace("pair_style ekd mode auto", f"pair_style ekd {style}")
    assert f"pair_style ekd {style}" in script
    return run_lmp(workdir, script)


def test_device_cpu_is_the_default(tmp_path, toy_models):
    runs = {style: _single_point(tmp_path / style.replace(" ", "_"), toy_models["L2"], style)
            for style in ("mode auto", "mode auto device cpu")}  # fmt: skip
    for proc in runs.values():
        assert proc.returncode == 0, proc.stdout[-3000:]
    a, b = (read_dump(tmp_path / s.replace(" ", "_") / "forces.dump") for s in runs)
    assert (a == b).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_a_lammps_error(tmp_path, toy_models):
    proc = _single_point(tmp_path, toy_models["L2"], "device cuda")
    assert proc.returncode != 0
    assert "ERROR: pair_coeff ekd: device cuda: the torch this plugin runs (" in proc.stdout, proc.stdout[-2000:]
    assert "sees no CUDA device" in proc.stdout


def test_a_bad_device_name_is_refused(tmp_path, toy_models):
    proc = _single_point(tmp_path, toy_models["L2"], "device gpu")
    assert proc.returncode != 0 and "pair_style ekd: device must be cpu, cuda or cuda:N, got gpu" in proc.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("model", ["L2", "L2f32"])
def test_device_cuda_equals_cpu(tmp_path, toy_models, model):
    cpu = _single_point(tmp_path / "cpu", toy_models[model], "device cpu")
    gpu = _single_point(tmp_path / "gpu", toy_models[model], "device cuda")
    assert cpu.returncode == 0 and gpu.returncode == 0, gpu.stdout[-3000:]
    a, b = read_dump(tmp_path / "cpu" / "forces.dump"), read_dump(tmp_path / "gpu" / "forces.dump")
    tol = 1e-5 if model == "L2f32" else 1e-10
    assert abs(a - b).max() <= tol * max(abs(a).max(), 1.0)
