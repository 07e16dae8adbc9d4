"""The torsion-scan pool (ekd.data.generate.torsion, issue 30 item 4): scan geometry, options,
its place in the workflow's data and metrics, and that turning it on keeps existing runs' digests.

Labels: GFN2-xTB from tblite (0.8.0 here); a scan of butane costs about a second."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

pytest.importorskip("tblite")
pytest.importorskip("rdkit")

from ekd import config  # noqa: E402
from ekd.data.generate import GenerateOptions, GenerateOptionsError, MoleculeTask, plan  # noqa: E402
from ekd.data.generate.scan import compute_torsion  # noqa: E402
from ekd.data.generate.torsion import rotatable_dihedrals  # noqa: E402
from ekd.data.molecules import connectivity  # noqa: E402

BUTANE = "CCCC"


def _rdkit_dihedral(smiles: str, positions: np.ndarray, dihedral) -> float:
    """The dihedral measured by RDKit (independent of ekd's own formula), degrees."""
    from rdkit import Chem
    from rdkit.Chem import rdMolTransforms

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    conf = Chem.Conformer(mol.GetNumAtoms())
    for a, p in enumerate(positions):
        conf.SetAtomPosition(a, p.tolist())
    return rdMolTransforms.GetDihedralDeg(conf, *(int(a) for a in dihedral))


def _scan(relaxed: bool = False):
    options = GenerateOptions(torsion={"molecules": 1, "conformers": 1, "relaxed": relaxed})
    (dihedral,) = rotatable_dihedrals(BUTANE)
    task = MoleculeTask("torsion", 0, "tor0000_C4H10", BUTANE, "", "C4H10", 4, "torsion", dihedral, "test")
    return options, dihedral, compute_torsion(task, options)


def _angle_error(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_rigid_scan_visits_every_15_degrees_with_bonds_unchanged():
    options, dihedral, rec = _scan()
    assert dihedral == (0, 1, 2, 3)
    assert rec.n_conf == 24 and rec.n_relaxed == 1  # 360 / 15 points, point 0 the minimum
    e = rec.properties["gfn2_xtb.energy"]
    assert np.isfinite(e).all() and rec.properties["gfn2_xtb.forces"].shape == (24, 14, 3)
    assert e.argmin() == 0 or e[0] - e.min() < 1e-4  # the minimum starts the scan
    bonds = connectivity(rec.numbers, rec.coordinates[0])
    phi0 = _rdkit_dihedral(BUTANE, rec.coordinates[0], dihedral)
    from ekd.data.generate.torsion import graph, moving_side

    fixed = np.setdiff1d(np.arange(len(rec.numbers)), moving_side(graph(BUTANE)[1], 1, 2))
    for m, pos in enumerate(rec.coordinates):
        assert _angle_error(_rdkit_dihedral(BUTANE, pos, dihedral), phi0 + 15.0 * m) < 1e-6, m
        assert _angle_error(rec.stats["scan_deg"][m], phi0 + 15.0 * m) < 1e-6
        assert np.array_equal(connectivity(rec.numbers, pos), bonds), m
        assert np.abs(pos[fixed] - rec.coordinates[0][fixed]).max() == 0.0  # rigid: one side moves
        # and moves rigidly: its internal distances are those of the minimum
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        d0 = np.linalg.norm(rec.coordinates[0][:, None] - rec.coordinates[0][None], axis=-1)
        side = moving_side(graph(BUTANE)[1], 1, 2)
        assert np.allclose(d[np.ix_(side, side)], d0[np.ix_(side, side)], atol=1e-10)
    # the anti minimum (phi ~ 180) vs the syn eclipsed barrier: a few kcal/mol in GFN2-xTB
    barrier = (e.max() - e[0]) * 627.509
    assert 2.0 < barrier < 15.0, barrier


def test_relaxed_scan_holds_the_dihedral():
    _, dihedral, rec = _scan(relaxed=True)
    assert rec.n_conf == 24
    phi0 = _rdkit_dihedral(BUTANE, rec.coordinates[0], dihedral)
    for m, pos in enumerate(rec.coordinates):
        assert _angle_error(_rdkit_dihedral(BUTANE, pos, dihedral), phi0 + 15.0 * m) < 1e-6, m
    # relaxed points lie at or below the rigid ones (same dihedral, the rest relaxed)
    _, _, rigid = _scan()
    assert (rec.properties["gfn2_xtb.energy"] <= rigid.properties["gfn2_xtb.energy"] + 1e-6).all()


@pytest.mark.parametrize(
    "torsion, key",
    [
        ({"molecules": -1}, "torsion.molecules"),
        ({"step_deg": 7}, "torsion.step_deg"),
        ({"step_deg": 0}, "torsion.step_deg"),
        ({"max_heavy_atoms": 5}, "torsion.max_heavy_atoms"),
        ({"min_heavy_atoms": 3}, "torsion.min_heavy_atoms"),
        ({"relaxed": "yes"}, "torsion.relaxed"),
        ({"bonds_per_molecule": 0}, "torsion.bonds_per_molecule"),
        ({"step": 15}, "torsion: unknown key"),
        (4, "torsion: must be a mapping"),
    ],
)
def test_bad_torsion_options_name_the_key(torsion, key):
    with pytest.raises(GenerateOptionsError, match=f"GenerateOptions.{key}"):
        GenerateOptions(torsion=torsion)
    text = f"data: {{generate: {{torsion: {json.dumps(torsion)}}}}}"
    with pytest.raises(config.ConfigError, match=f"data.generate: GenerateOptions.{key}"):
        config.loads(text)


def test_scans_are_out_of_sample_and_grow_by_prefix():
    small = dict(n_train_molecules=6, n_test_molecules=3, cluster_sizes=())
    tasks = plan(GenerateOptions(**small, torsion={"molecules": 3}))
    scans = [t for t in tasks if t.pool == "torsion"]
    others = {t.smiles for t in tasks if t.pool != "torsion"}
    assert len(scans) == 3 and not others & {t.smiles for t in scans}
    assert all(8 <= t.heavy_atoms <= 13 and len(t.dihedral) == 4 and t.kind == "torsion" for t in scans)
    more = [t for t in plan(GenerateOptions(**small, torsion={"molecules": 4})) if t.pool == "torsion"]
    assert more[:3] == scans
    # the train and test pools do not depend on the torsion pool
    assert [t for t in tasks if t.pool != "torsion"] == plan(GenerateOptions(**small))
    with pytest.raises(GenerateOptionsError, match="torsion.molecules: asked for 100000"):
        plan(GenerateOptions(**small, torsion={"molecules": 100000}))


def test_torsion_keeps_the_digests_of_existing_runs():
    """An old config.yaml (no torsion key) and today's default (torsion on) give the same digests:
    config, generator options hash, data directory, members' data section."""
    on = config.default_config()
    assert on.data.generate_options(on.seed).torsion.molecules > 0
    d = on.to_dict()
    d["data"]["generate"] = {k: v for k, v in d["data"]["generate"].items() if k != "torsion"}
    import yaml

    old = config.loads(yaml.safe_dump(d))  # a run directory's config.yaml written before the key
    assert old.data.generate_options(0).torsion.molecules == 0
    assert old.digest() == on.digest()
    assert old.data.identity() == on.data.identity() == asdict(old.data)  # members' data section
    for seed in (0, 1):
        a, b = old.data.generate_options(seed), on.data.generate_options(seed)
        assert a.content_hash() == b.content_hash() and a.identity() == b.identity()
        assert a.data_fields() == b.data_fields()


def test_prepare_data_adds_the_scans_to_made_data_only_once(tmp_path, monkeypatch):
    """A run directory whose data were made before the scans existed: torsion.h5 is made beside
    train.h5 / test.h5 (which are not regenerated), once; remade when its options change."""
    import ekd.data.generate as gen
    from ekd.workflow.inputs import prepare_data

    calls = []

    def fake_torsion(opts, out, progress=True, resume=True):
        calls.append(opts.torsion)
        (out / "torsion.h5").write_bytes(b"scans")
        return out / "torsion.h5"

    def no_generate(*args, **kwargs):
        raise AssertionError("train/test regenerated")

    monkeypatch.setattr(gen, "generate_torsion", fake_torsion)
    monkeypatch.setattr(gen, "generate", no_generate)
    cfg = config.default_config()
    old = config.loads("base: default\ndata: {generate: {torsion: {molecules: 0}}}")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.h5", "test.h5"):
        (data / name).write_bytes(b"made before")
    (data / "done.json").write_text("{}")
    assert prepare_data(old, tmp_path, progress=False).torsion is None  # claims the directory
    paths = prepare_data(cfg, tmp_path, progress=False)  # the same claim: not refused
    assert paths.torsion == data / "torsion.h5" and len(calls) == 1
    assert (data / "train.h5").read_bytes() == b"made before"
    prepare_data(cfg, tmp_path, progress=False)
    assert len(calls) == 1  # stamped: not made again
    step30 = config.loads("base: default\ndata: {generate: {torsion: {molecules: 4, step_deg: 30}}}")
    prepare_data(step30, tmp_path, progress=False)
    assert len(calls) == 2 and calls[-1].step_deg == 30
    # a run whose out-of-sample energies are another level's scores no GFN2-xTB scans
    dft = config.loads("base: default\ndata: {test_energy_key: wb97x_631gd.energy}")
    assert prepare_data(dft, tmp_path, progress=False).torsion is None and len(calls) == 2
