"""Offline reference-data generation (ekd.data.generate): real RDKit geometries, real GFN2-xTB
labels from tblite (0.8.0 when written), on a tiny option set (3 train + 2 test molecules).

The pyscf test is marked slow (tens of seconds) and only runs with ``-m slow``.
"""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("tblite.interface")

from ekd.data import generate as gen  # noqa: E402
from ekd.data import load_dataset, read_ani, read_file_attrs  # noqa: E402
from ekd.data.generate import (  # noqa: E402
    POOLS,
    GenerateError,
    GenerateOptions,
    GenerateOptionsError,
    MoleculeTask,
    compute_molecule,
    generate,
    summarize,
)
from ekd.data.generate import parts as gen_parts  # noqa: E402
from ekd.data.labels import XTBCalculator, xtb_energy_forces  # noqa: E402
from ekd.data.molecules import METHYL_NITRITE, candidate_from_smiles  # noqa: E402
from ekd.data.sampling import normal_mode_displacement, normal_modes  # noqa: E402

from ..conftest import central_difference_forces  # noqa: E402

KEYS = {"energy": "gfn2_xtb.energy", "reference_forces": "gfn2_xtb.forces"}
TINY = GenerateOptions(
    seed=3,
    n_train_molecules=3,
    n_test_molecules=2,
    train_max_heavy_atoms=4,
    test_min_heavy_atoms=5,
    test_max_heavy_atoms=6,
    train_conformers=1,
    samples_per_conformer=2,
    test_conformers=2,
    test_distorted=1,
    cluster_sizes=(3,),
    cluster_samples=2,
    workers=2,
)
N_MOLECULES = TINY.n_train_molecules + TINY.n_test_molecules + len(TINY.cluster_sizes)  # part files


def _arrays(path):
    """{group: {key: array}} of every dataset in a file, for exact comparisons."""
    out = {}
    with h5py.File(path, "r") as h5:
        for name, group in h5.items():
            out[name] = {k: group[k][()] for k in group}
    return out


def _assert_same_files(a, b):
    left, right = _arrays(a), _arrays(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].keys() == right[name].keys()
        for key in left[name]:
            np.testing.assert_array_equal(left[name][key], right[name][key], err_msg=f"{name}/{key}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("generate")
    train, test = generate(TINY, out, progress=False)
    return out, train, test


def test_files_load_in_file_units_without_nan(tiny):
    out, train, test = tiny
    assert train == out / "train.h5" and test == out / "test.h5"
    for path, pool in ((train, "train"), (test, "test")):
        data = load_dataset(path, KEYS)
        assert np.isfinite(data.properties["energy"]).all()
        assert np.isfinite(data.coordinates).all()
        assert data.mask("reference_forces").all()
        assert set(data.elements) <= {1, 6, 7, 8}
        attrs = read_file_attrs(path)
        assert attrs["energy_unit"] == "hartree" and attrs["length_unit"] == "angstrom"
        assert attrs["pool"] == pool
        assert json.loads(attrs["options"]) == TINY.to_dict()
        assert {"ekd", "rdkit", "tblite"} <= set(json.loads(attrs["versions"]))
        assert attrs["tblite_version"] and attrs["rdkit_version"]
        for group in read_ani(path):
            assert re.fullmatch(r"mol\d{4}_[A-Z][A-Za-z0-9]*|clu\d{3}_CH3NO2_x\d+", group.name)
            assert group.attrs["smiles"] and "nci_id" in group.attrs
            assert int("cluster_molecules" not in group.attrs) <= group.attrs["n_relaxed"] <= group.n_conf


def test_methyl_nitrite_first_and_heavy_atom_ranges(tiny):
    _, train, test = tiny
    groups = [g for g in read_ani(train) if "cluster_molecules" not in g.attrs]  # clusters: own test
    assert len(groups) == TINY.n_train_molecules
    assert groups[0].name == "mol0000_CH3NO2" and groups[0].attrs["smiles"] == METHYL_NITRITE
    for pool, lo, hi in (
        (groups, 1, TINY.train_max_heavy_atoms),
        (read_ani(test), TINY.test_min_heavy_atoms, TINY.test_max_heavy_atoms),
    ):
        for group in pool:
            heavy = int((group.species > 1).sum())
            assert lo <= heavy <= hi, (group.name, heavy)
            assert heavy == group.attrs["heavy_atoms"]


def test_configurations_within_energy_cap_and_test_conformers_distinct(tiny):
    _, train, test = tiny
    for path in (train, test):
        for group in read_ani(path):
            if "cluster_molecules" in group.attrs:
                continue  # capped per molecule against the monomer minimum: test_clusters_...
            e = group.properties["gfn2_xtb.energy"] * 627.5094740631
            assert e.max() - e.min() <= TINY.energy_cap + 1e-9
            # the minima come first, lowest first, and are the molecule's lowest energies
            minima = e[: group.attrs["n_relaxed"]]
            assert np.all(np.diff(minima) >= 0) and minima[0] == e.min()
    for group in read_ani(test):
        n = group.attrs["n_relaxed"]
        assert group.n_conf == n + TINY.test_distorted
        xyz = group.coordinates[:n]
        for i in range(n):
            for j in range(i):
                assert np.abs(xyz[i] - xyz[j]).max() > 0.05


def test_stored_forces_are_minus_energy_gradient(tiny):
    """Units and sign: central differences of fresh tblite energies (Hartree, positions Angstrom)
    against the stored forces (Hartree/Angstrom) of a sampled, non-equilibrium CH3ONO geometry."""
    _, train, _ = tiny
    group = read_ani(train)[0]
    i = group.attrs["n_relaxed"]  # first normal-mode sample
    z, x = group.species, group.coordinates[i]
    forces = group.properties["gfn2_xtb.forces"][i]
    assert np.abs(forces).max() > 1e-3  # not a minimum, so the check has teeth
    energy, fresh = xtb_energy_forces(z, x)
    assert energy == pytest.approx(group.properties["gfn2_xtb.energy"][i], abs=1e-7)
    np.testing.assert_allclose(fresh, forces, atol=1e-6)
    fd = central_difference_forces(lambda p: xtb_energy_forces(z, p)[0], x, 1e-3)
    np.testing.assert_allclose(forces, fd, atol=2e-5)


def test_deterministic_for_a_seed_and_independent_of_workers(tiny, tmp_path):
    _, train, test = tiny
    again = generate(GenerateOptions(**{**TINY.to_dict(), "workers": 1}), tmp_path, progress=False)
    _assert_same_files(train, again[0])
    _assert_same_files(test, again[1])


class _Interrupted(Exception):
    pass


def test_interrupted_run_resumes_without_recomputing(tiny, tmp_path, monkeypatch):
    _, train, test = tiny
    real_save = gen_parts.save_part
    saved = []

    def save_then_die(parts, result, options_hash):
        if len(saved) == 2:
            raise _Interrupted
        saved.append(result.task["name"])
        return real_save(parts, result, options_hash)

    monkeypatch.setattr(gen_parts, "save_part", save_then_die)
    with pytest.raises(_Interrupted):
        generate(TINY, tmp_path, progress=False)
    assert not (tmp_path / "train.h5").exists()
    assert len(list((tmp_path / ".parts").rglob("*.npz"))) == 2

    computed = []

    def counting_save(parts, result, options_hash):
        computed.append(result.task["name"])
        return real_save(parts, result, options_hash)

    monkeypatch.setattr(gen_parts, "save_part", counting_save)
    again = generate(TINY, tmp_path, progress=False)
    assert len(computed) == N_MOLECULES - 2
    _assert_same_files(train, again[0])
    _assert_same_files(test, again[1])

    computed.clear()
    generate(TINY, tmp_path, progress=False)  # everything is in the parts now
    assert computed == []


def test_resume_with_other_options_is_refused(tiny):
    out, _, _ = tiny
    with pytest.raises(GenerateError, match=r"seed: 3 -> 4.*resume=False"):
        generate(GenerateOptions(**{**TINY.to_dict(), "seed": 4}), out, progress=False)


def test_fresh_start_discards_old_parts(tmp_path):
    parts = tmp_path / ".parts"
    gen_parts.prepare_parts(parts, TINY, resume=True)
    (parts / "train").mkdir()
    (parts / "train" / "mol0000_X.npz").write_bytes(b"old")
    other = GenerateOptions(**{**TINY.to_dict(), "temperature": 300.0})
    with pytest.raises(GenerateError, match="temperature"):
        gen_parts.prepare_parts(parts, other, resume=True)
    gen_parts.prepare_parts(parts, other, resume=False)
    assert not any(parts.rglob("*.npz"))
    assert json.loads((parts / "manifest.json").read_text())["options_hash"] == other.content_hash()


def test_more_molecules_reuse_the_smaller_selection():
    """Selections are prefixes of each other, so growing a data set keeps the old molecules."""
    small = gen.plan(TINY)
    large = gen.plan(GenerateOptions(**{**TINY.to_dict(), "n_train_molecules": 6, "n_test_molecules": 4}))
    molecules = [t for t in small if t.pool == "train" and t.kind == "molecule"]
    assert [t for t in large if t.pool == "train"][:3] == molecules
    assert [t for t in large if t.pool == "test"][:2] == [t for t in small if t.pool == "test"]
    assert gen.plan(TINY) == small
    other_seed = gen.plan(GenerateOptions(**{**TINY.to_dict(), "seed": 4}))
    assert other_seed[0] == small[0]  # methyl nitrite
    assert other_seed != small


def test_summarize(tiny):
    _, train, _ = tiny
    text = summarize(train)
    assert (
        "pool train" in text
        and f"{TINY.n_train_molecules + len(TINY.cluster_sizes)} molecules" in text
        and "gfn2_xtb.forces" in text
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"n_train_molecules": 0}, "n_train_molecules"),
        ({"train_max_heavy_atoms": 0}, "train_max_heavy_atoms"),
        ({"test_min_heavy_atoms": 14}, "test_max_heavy_atoms"),
        ({"train_min_heavy_atoms": 5}, "include_methyl_nitrite"),
        ({"temperature": -5.0}, "temperature"),
        ({"energy_cap": 0}, "energy_cap"),
        ({"samples_per_conformer": 1.5}, "samples_per_conformer"),
        ({"train_include_minima": "yes"}, "train_include_minima"),
        ({"levels": ("dft",)}, "levels"),
        ({"levels": ("wb97x_631gd",)}, "levels"),
        ({"levels": ("gfn2_xtb", "ccsd(t)_ccpvdz")}, "levels"),
        ({"test_levels": ("gfn2_xtb", "ccsd(t)_ccpvdz")}, "test_levels"),
        ({"workers": 0}, "workers"),
        ({"hessian_step": 1.0}, "hessian_step"),
        ({"cluster_sizes": (2, 2)}, "cluster_sizes"),
        ({"cluster_sizes": (0,)}, "cluster_sizes"),
        ({"cluster_density": (1.3, 0.8)}, "cluster_density"),
        ({"cluster_min_contact": (1.5,)}, "cluster_min_contact"),
        ({"cluster_samples": 0}, "cluster_samples"),
        ({"train_max_heavy_atoms": 4, "levels": ("gfn2_xtb", "ccsd(t)_ccpvdz")}, "cluster_sizes"),
        ({"extra_smiles": ("CCO", 3)}, "extra_smiles"),
    ],
)
def test_bad_options_name_the_field(changes, field):
    with pytest.raises(GenerateOptionsError, match=rf"GenerateOptions\.{re.escape(field)}:"):
        GenerateOptions(**changes)


def test_options_from_dict():
    opts = GenerateOptions.from_dict({"levels": ["gfn2_xtb"], "temperature": 300})
    assert opts.levels == ("gfn2_xtb",) and opts.temperature == 300.0
    ccsd = GenerateOptions(train_max_heavy_atoms=4, levels=["gfn2_xtb", "ccsd(t)_ccpvdz"], cluster_sizes=[])
    assert ccsd.levels[1] == "ccsd(t)_ccpvdz"
    with pytest.raises(GenerateOptionsError, match="temprature"):
        GenerateOptions.from_dict({"temprature": 300})


def test_too_many_molecules_asked_for():
    with pytest.raises(ValueError, match="n_train_molecules.*only"):
        gen.plan(GenerateOptions(n_train_molecules=1000, train_max_heavy_atoms=4))


@pytest.mark.parametrize(
    ("smiles", "expected"),
    [
        ("CCO.Cl", "CCO"),  # largest fragment
        ("C[N+](=O)[O-]", "C[N+](=O)[O-]"),  # formal charges that cancel are fine
        ("CC(=O)[O-].[Na+]", None),  # net charge
        ("C[N+](C)(C)C", None),
        ("CCS", None),  # element
        ("[CH3]", None),  # radical
        ("C1=CC=CC=C1C(", None),  # not parsable
    ],
)
def test_candidate_filter(smiles, expected):
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")  # the unparsable SMILES would print an error
    try:
        cand = candidate_from_smiles(smiles)
    finally:
        RDLogger.EnableLog("rdApp.*")
    assert (cand.smiles if cand else None) == expected


def test_normal_modes_count_and_orthogonal_to_rigid_motion():
    from ase.build import molecule

    for name, n_modes in (("H2O", 3), ("CO2", 4), ("CH3OH", 12)):
        atoms = molecule(name)
        z, x = atoms.numbers, atoms.positions
        calc = XTBCalculator(z)
        from ekd.data.sampling import hessian, relax

        x, _, f, _ = relax(calc, z, x, fmax=1e-4, max_steps=200)
        directions, k = normal_modes(z, x, hessian(calc, x, 0.005, central=True))
        assert directions.shape == (n_modes, len(z), 3)
        assert (k > 0).all(), (name, k)
        # no net translation; unit norm
        np.testing.assert_allclose(np.linalg.norm(directions.reshape(n_modes, -1), axis=1), 1.0)
        masses = atoms.get_masses()
        np.testing.assert_allclose((masses[None, :, None] * directions).sum(1), 0.0, atol=1e-8)
        disp = normal_mode_displacement(np.random.default_rng(0), directions, k, 300.0)
        assert disp.shape == x.shape and np.isfinite(disp).all()
        # harmonic energy of a sample is at most 1.5 N k_B T
        harmonic = 0.5 * (k * np.einsum("mij,ij->m", directions, disp) ** 2).sum()
        assert harmonic <= 1.5 * len(z) * 3.166811563e-6 * 300.0 * (1 + 1e-9)


@pytest.mark.slow
def test_pyscf_labels_on_formaldehyde():
    """wB97X/6-31G* forces equal -dE/dx; frozen-core CCSD(T)/cc-pVDZ energy below RHF's; both
    written next to GFN2-xTB by the generator for a tiny molecule, with the MP2/CBS-corrected
    CCSD(T). pyscf 2.14; ~10 s on one core."""
    pytest.importorskip("pyscf")
    from ekd.data.labels import ccsd_t_ccpvdz, wb97x_631gd

    z = np.array([6, 8, 1, 1])
    x = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.21], [0.0, 0.94, -0.58], [0.0, -0.94, -0.58]])
    x = x + 0.02 * np.random.default_rng(0).normal(size=x.shape)
    energy, forces = wb97x_631gd(z, x)
    h = 1e-3
    plus, minus = x.copy(), x.copy()
    plus[0, 2] += h
    minus[0, 2] -= h
    fd = -(wb97x_631gd(z, plus)[0] - wb97x_631gd(z, minus)[0]) / (2 * h)
    assert forces[0, 2] == pytest.approx(fd, abs=2e-5)
    e_cc = ccsd_t_ccpvdz(z, x)
    assert -114.4 < e_cc < -114.0  # RHF/cc-pVDZ is about -113.87 Hartree

    task = MoleculeTask("train", 0, "mol0000_CH2O", "C=O", "", "CH2O", 2)
    opts = GenerateOptions(
        train_max_heavy_atoms=4,
        include_methyl_nitrite=False,
        train_conformers=1,
        samples_per_conformer=1,
        cluster_sizes=(),
        levels=("gfn2_xtb", "wb97x_631gd", "ccsd(t)_ccpvdz", "ccsd(t)_ccpvdz_mp2cbs"),
    )
    result = compute_molecule(task, opts)
    props = result.properties
    assert result.coordinates.shape == (2, 4, 3)
    assert set(props) == {
        "gfn2_xtb.energy",
        "gfn2_xtb.forces",
        "wb97x_631gd.energy",
        "wb97x_631gd.forces",
        "ccsd(t)_ccpvdz.energy",
        "ccsd(t)_ccpvdz_mp2cbs.energy",
    }
    assert all(np.isfinite(v).all() for v in props.values())
    # the correction lowers the energy by ~0.1-0.2 Hartree for a molecule this size
    correction = props["ccsd(t)_ccpvdz_mp2cbs.energy"] - props["ccsd(t)_ccpvdz.energy"]
    assert ((-0.3 < correction) & (correction < -0.05)).all()


def test_clusters_are_ch3ono_copies_with_intermolecular_contacts(tiny):
    """The cluster group: 3 intact CH3ONO molecules per configuration (bond graph = 3 copies of
    the monomer's), no intermolecular bond, contacts closer than the box's 2.2 A upper limit
    present, GFN2-xTB forces = -dE/dR (checked on one component by central differences)."""
    from ekd.data.molecules import connectivity

    _, train, _ = tiny
    groups = {g.name: g for g in read_ani(train)}
    cluster = groups["clu003_CH3NO2_x3"]
    assert cluster.n_conf == TINY.cluster_samples and cluster.attrs["cluster_molecules"] == 3
    numbers = np.asarray(cluster.species)
    assert len(numbers) == 21 and sorted(numbers[:7].tolist()) == [1, 1, 1, 6, 7, 8, 8]
    owner = np.repeat(np.arange(3), 7)
    for pos in cluster.coordinates:
        bonds = connectivity(numbers, pos)
        i, j = np.nonzero(bonds)
        assert np.all(owner[i] == owner[j])  # no intermolecular bond
        assert bonds[:7, :7].sum() == bonds[7:14, 7:14].sum() == bonds[14:, 14:].sum() == 12  # 6 bonds each
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[owner[:, None] != owner[None]]
        assert 1.2 < d.min() < 4.0
    pos = cluster.coordinates[0].copy()
    h = 1e-4
    pos[5, 1] += h
    e_plus, _ = xtb_energy_forces(numbers, pos, TINY.xtb_accuracy)
    pos[5, 1] -= 2 * h
    e_minus, _ = xtb_energy_forces(numbers, pos, TINY.xtb_accuracy)
    fd = -(e_plus - e_minus) / (2 * h)
    assert cluster.properties["gfn2_xtb.forces"][0][5, 1] == pytest.approx(fd, abs=2e-5)


def test_extra_smiles_join_the_candidates():
    opts = GenerateOptions(
        n_train_molecules=8,
        train_max_heavy_atoms=3,
        include_methyl_nitrite=False,
        extra_smiles=("CC", "C=C", "CCO"),
        n_test_molecules=0,
        cluster_sizes=(),
    )
    smiles = {t.smiles for t in gen.plan(opts)}
    assert {"CC", "C=C", "CCO"} <= smiles and len(smiles) == 8  # 5 NCI molecules have <= 3 heavy atoms
    with pytest.raises(GenerateOptionsError, match=r"extra_smiles: 'CCS'"):
        gen.plan(GenerateOptions(extra_smiles=("CCS",)))


def test_required_molecules_join_their_pool_after_the_drawn_ones():
    base = {**TINY.to_dict(), "include_methyl_nitrite": False}
    drawn = gen.plan(GenerateOptions(**base))
    opts = GenerateOptions(**{**base, "test_required_smiles": ("CON=O",), "train_required_smiles": ("C#N",)})
    planned = gen.plan(opts)
    pools = {pool: [t for t in planned if t.pool == pool and t.kind == "molecule"] for pool in POOLS}
    old = {pool: [t for t in drawn if t.pool == pool and t.kind == "molecule"] for pool in POOLS}
    # the draws are unchanged (their parts stay valid); the required molecule comes last, any size
    assert pools["test"][:-1] == old["test"] and pools["train"][:-1] == old["train"]
    assert pools["test"][-1].smiles == METHYL_NITRITE and pools["test"][-1].heavy_atoms == 4
    assert pools["test"][-1].index == len(old["test"]) and pools["train"][-1].smiles == "C#N"
    # already drawn: not added twice
    again = gen.plan(GenerateOptions(**{**base, "test_required_smiles": (old["test"][0].smiles,)}))
    assert again == drawn


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"test_required_smiles": ("CON=O",)}, r"test_required_smiles: \['CON=O'\] are train molecules"),
        ({"test_required_smiles": ("CCS",)}, r"test_required_smiles: 'CCS' is not a usable molecule"),
        (
            {
                "include_methyl_nitrite": False,
                "test_levels": ("gfn2_xtb", "ccsd(t)_ccpvdz"),
                "test_max_heavy_atoms": 4,
                "test_min_heavy_atoms": 4,
                "test_min_rotatable_bonds": 0,
                "test_required_smiles": ("CCCCO",),
            },
            r"test_required_smiles: 'CCCCO' has 5 heavy atoms, but 'ccsd\(t\)_ccpvdz' is only affordable for <= 4",
        ),
    ],
)
def test_bad_required_molecules_name_the_field(changes, message):
    with pytest.raises(GenerateOptionsError, match=message):
        gen.plan(GenerateOptions(**{**TINY.to_dict(), **changes}))


def test_changed_selection_reuses_the_parts_that_still_fit(tiny, tmp_path):
    out, train, test = tiny
    shutil.copytree(out / ".parts", tmp_path / ".parts")
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in (tmp_path / ".parts").rglob("*.npz")}
    # formaldehyde as a held-out test molecule, and one train molecule fewer (a prefix)
    opts = GenerateOptions(**{**TINY.to_dict(), "test_required_smiles": ("C=O",), "n_train_molecules": 2})
    new_train, new_test = generate(opts, tmp_path, progress=False)
    after = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in (tmp_path / ".parts").rglob("*.npz")}
    assert {k: after[k] for k in before} == before  # no old part rewritten
    assert [k.name for k in set(after) - set(before)] == ["mol0002_CH2O.npz"]
    old, new = _arrays(test), _arrays(new_test)
    assert set(new) == {*old, "mol0002_CH2O"}
    for name in old:
        for key in old[name]:
            np.testing.assert_array_equal(old[name][key], new[name][key])
    assert len(_arrays(new_train)) == len(_arrays(train)) - 1
    manifest = json.loads((tmp_path / ".parts" / "manifest.json").read_text())
    assert manifest["options_hash"] == opts.content_hash() and manifest["compatible_hashes"] == [TINY.content_hash()]
    # a geometry-shaping option is still refused, naming it
    with pytest.raises(GenerateError, match=r"temperature: 500.0 -> 300.0"):
        generate(GenerateOptions(**{**opts.to_dict(), "temperature": 300.0}), tmp_path, progress=False)


def test_digests_ignore_options_added_later_at_their_defaults():
    """Run directories made before train/test_required_smiles existed keep their digests."""
    assert "test_required_smiles" not in TINY.identity()
    required = GenerateOptions(**{**TINY.to_dict(), "test_required_smiles": ("C=O",)})
    assert required.identity()["test_required_smiles"] == ["C=O"]
    assert required.content_hash() != TINY.content_hash()


def test_cbs_extrapolations_recover_their_model_limits():
    from ekd.data.labels import cbs_correlation, cbs_hf

    def hf(x):
        return -76.0 + 0.7 * (x + 1) * np.exp(-9 * np.sqrt(x))

    def corr(x):
        return -0.3 + 0.25 * x**-3.0

    assert cbs_hf(hf(2), hf(3)) == pytest.approx(-76.0, abs=1e-12)
    assert cbs_correlation(corr(2), corr(3)) == pytest.approx(-0.3, abs=1e-12)


WATER = GenerateOptions(
    seed=1,
    n_train_molecules=1,
    n_test_molecules=0,
    train_max_heavy_atoms=1,
    include_methyl_nitrite=False,
    extra_smiles=("O",),
    train_conformers=1,
    samples_per_conformer=1,
    cluster_sizes=(),
    workers=1,
)


def test_adding_levels_labels_the_stored_geometries_only(tmp_path):
    """xTB first; then CCSD(T)/cc-pVDZ, then its MP2/CBS-corrected twin are added to the same
    parts (pyscf on water, ~10 s): geometries untouched, the correction reuses the CCSD(T) energy."""
    pytest.importorskip("pyscf")
    from ekd.data.labels import ccsd_t_ccpvdz, mp2_cbs_correction

    plan = gen.plan(WATER)
    if [t.smiles for t in plan] != ["O"]:
        pytest.skip(f"the 1-heavy-atom pool is not just water here: {[t.smiles for t in plan]}")
    first, _ = generate(WATER, tmp_path, progress=False)
    xtb = _arrays(first)
    cc = GenerateOptions(**{**WATER.to_dict(), "levels": ("gfn2_xtb", "ccsd(t)_ccpvdz")})
    second = _arrays(generate(cc, tmp_path, progress=False)[0])
    cbs = GenerateOptions(**{**cc.to_dict(), "levels": ("gfn2_xtb", "ccsd(t)_ccpvdz", "ccsd(t)_ccpvdz_mp2cbs")})
    third = _arrays(generate(cbs, tmp_path, progress=False)[0])
    (name,) = xtb
    for key in xtb[name]:
        np.testing.assert_array_equal(third[name][key], xtb[name][key])
    np.testing.assert_array_equal(third[name]["ccsd(t)_ccpvdz.energy"], second[name]["ccsd(t)_ccpvdz.energy"])
    z, x = third[name]["atomic_numbers"], third[name]["coordinates"]
    for i in range(len(x)):
        e_cc = ccsd_t_ccpvdz(z, x[i])
        assert third[name]["ccsd(t)_ccpvdz.energy"][i] == pytest.approx(e_cc, abs=1e-7)
        delta = mp2_cbs_correction(z, x[i])
        assert -0.15 < delta < -0.05  # water: ~0.1 Hartree of correlation beyond cc-pVDZ
        assert third[name]["ccsd(t)_ccpvdz_mp2cbs.energy"][i] == pytest.approx(e_cc + delta, abs=1e-7)
    # dropping a level again: the file holds the asked-for levels only, the part keeps both
    fourth = _arrays(generate(WATER, tmp_path, progress=False)[0])
    assert set(fourth[name]) == set(xtb[name])


def test_ccsd_t_config_holds_methyl_nitrite_out_of_sample():
    """configs/ccsd_t.yaml: CH3ONO is a held-out test molecule; coupled-cluster levels only on
    molecules with <= 4 heavy atoms; no test molecule is a train molecule."""
    from pathlib import Path

    from ekd.config import load

    cfg = load(Path(__file__).parents[2] / "configs" / "ccsd_t.yaml")
    planned = gen.plan(cfg.data.generate_options(cfg.seed))
    train = {t.smiles for t in planned if t.pool == "train"}
    test = [t for t in planned if t.pool == "test"]
    assert test[-1].smiles == METHYL_NITRITE and METHYL_NITRITE not in train
    assert not train & {t.smiles for t in test}
    assert max(t.heavy_atoms for t in planned) == 4
