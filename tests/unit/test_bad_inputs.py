"""Bad inputs that ekd followed, misread or crashed on (issue 24, items 9-12): each is refused
with one clear error naming the input, before anything is read, written or computed from it.

* item 9: a lock file (or a file ekd appends to) that is a symbolic link, a hard link or not a
  regular file: ekd truncated the link's target;
* item 10: HDF5 files whose data lives elsewhere or nowhere (external links, virtual datasets,
  unwritten storage), link cycles, and a shape declaring far more data than the file holds;
* item 11: YAML keys given twice;
* item 12: values that ended in a traceback (or a run written into the current directory).

Data: tiny ANI-layout files written here with h5py (water and methane geometries, made-up
energies: the checks never look at values).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from ekd import store
from ekd.config import ConfigError, loads
from ekd.data import DataFileError, load_dataset, read_ani

# ------------------------------------------------------------------------------------------
# item 9: lock files and files written in place do not follow links


def _victim(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("results that must survive\n")
    return victim


@pytest.mark.parametrize("locker", ["lock_dir", "lock_dir_shared", "wait_lock"])
def test_a_lock_file_that_is_a_symbolic_link_is_refused(tmp_path, locker):
    victim = _victim(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim, run / store.LOCK_NAME)
    lock = run / store.LOCK_NAME
    with pytest.raises(store.UnsafeFileError, match=r"\.ekd\.lock.* symbolic link") as err:
        if locker == "wait_lock":
            with store.wait_lock(lock, "preparing data"):
                pass
        else:
            with store.lock_dir(run, shared=locker.endswith("shared")):
                pass
    assert str(run) in str(err.value) and "remove it" in str(err.value)
    assert victim.read_text() == "results that must survive\n"


def test_a_lock_file_that_is_a_hard_link_or_a_directory_is_refused(tmp_path):
    victim = _victim(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    os.link(victim, run / store.LOCK_NAME)
    with pytest.raises(store.UnsafeFileError, match="hard link"):
        with store.lock_dir(run):
            pass
    assert victim.read_text() == "results that must survive\n"
    other = tmp_path / "other"
    (other / store.LOCK_NAME).mkdir(parents=True)
    with pytest.raises(store.UnsafeFileError, match="not a regular file"):
        with store.lock_dir(other):
            pass
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / store.LOCK_NAME)
    with pytest.raises(store.UnsafeFileError, match=r"not a regular file \(mode p"):
        with store.lock_dir(fifo):
            pass


def test_a_log_appended_in_place_is_not_followed(tmp_path):
    victim = _victim(tmp_path)
    log = tmp_path / "log.jsonl"
    os.symlink(victim, log)
    with pytest.raises(store.UnsafeFileError, match="symbolic link"):
        store.append_line(log, '{"epoch": 1}')
    assert victim.read_text() == "results that must survive\n"
    os.unlink(log)
    store.append_line(log, '{"epoch": 1}')
    store.append_line(log, '{"epoch": 2}')
    assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


def test_atomic_write_does_not_follow_a_planted_temporary_name(tmp_path, monkeypatch):
    victim = _victim(tmp_path)
    target = tmp_path / "metrics.json"
    monkeypatch.setattr(store, "_tmp_count", iter([7]))
    os.symlink(victim, tmp_path / f".metrics.{os.getpid()}-7.tmp.json")
    store.atomic_text(target, "{}")
    assert target.read_text() == "{}" and victim.read_text() == "results that must survive\n"


def test_registry_that_is_a_link_is_not_appended_to(tmp_path, monkeypatch):
    from ekd.deploy import aoti

    victim = _victim(tmp_path)
    reg = tmp_path / "trusted"
    os.symlink(victim, reg)
    monkeypatch.setenv(aoti.REGISTRY_ENV, str(reg))
    pkg = tmp_path / "x.pt2"
    pkg.write_bytes(b"not really a package")
    with pytest.raises(store.UnsafeFileError, match="symbolic link"):
        aoti.register(pkg)
    assert victim.read_text() == "results that must survive\n"


# ------------------------------------------------------------------------------------------
# item 10: HDF5 files


def _water(g, n=2):
    g["atomic_numbers"] = [8, 1, 1]
    g["coordinates"] = (
        np.array([[[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]]] * n) + 0.01 * np.arange(n)[:, None, None]
    )
    g["x.energy"] = -76.0 - 0.001 * np.arange(n)


def _file(path, build):
    with h5py.File(path, "w") as f:
        _water(f.create_group("ok"))
        build(f)
    return path


def _refused(path, match):
    with pytest.raises(DataFileError, match=match) as err:
        load_dataset(path, {"energy": "x.energy"}, check_plausible=False)
    assert str(path) in str(err.value)
    return str(err.value)


def test_an_external_link_to_a_missing_file_is_an_error(tmp_path):
    # today: the group is silently dropped (h5py returns None for a dangling link)
    path = _file(tmp_path / "a.h5", lambda f: f.__setitem__("lost", h5py.ExternalLink("gone.h5", "/w")))
    msg = _refused(path, r"'lost' is an external link to /w in gone\.h5")
    assert "does not exist" in msg


def test_external_links_are_refused(tmp_path):
    other = _file(tmp_path / "other.h5", lambda f: None)
    path = _file(tmp_path / "a.h5", lambda f: f.__setitem__("far", h5py.ExternalLink(str(other), "/ok")))
    msg = _refused(path, r"'far' is an external link to /ok in .*other\.h5")
    assert "copy" in msg
    # a dataset that is an external link is no better
    path = tmp_path / "b.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("w")
        _water(g)
        del g["x.energy"]
        g["x.energy"] = h5py.ExternalLink(str(other), "/ok/x.energy")
    _refused(path, r"'w/x.energy'.*external link")


def test_a_virtual_dataset_whose_source_is_missing_is_an_error(tmp_path):
    # today: read as zeros (energies 0, scored, exit 0)
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["e"] = np.array([-76.0, -76.1])
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("w")
        _water(g)
        del g["x.energy"]
        layout = h5py.VirtualLayout(shape=(2,), dtype="f8")
        layout[:] = h5py.VirtualSource(str(src), "e", shape=(2,))
        g.create_virtual_dataset("x.energy", layout)
    # even while the source exists, data from another file is refused
    _refused(path, r"'w/x.energy' is a virtual dataset reading e in .*src\.h5")
    src.unlink()
    msg = _refused(path, r"'w/x.energy' is a virtual dataset reading e in .*src\.h5")
    assert "does not exist" in msg


def test_unwritten_storage_is_an_error(tmp_path):
    # a dataset created without data reads as its fill value (zeros)
    path = _file(tmp_path / "a.h5", lambda f: f.create_group("w").update({"atomic_numbers": [1, 1]}))
    with h5py.File(path, "a") as f:
        f["w"].create_dataset("coordinates", shape=(2, 2, 3), dtype="f8")
        f["w"]["x.energy"] = [-1.0, -1.1]
    _refused(path, r"'w/coordinates'.*declares .* but stores")
    path = _file(tmp_path / "b.h5", lambda f: f.create_group("w").update({"atomic_numbers": [1, 1]}))
    with h5py.File(path, "a") as f:
        d = f["w"].create_dataset("coordinates", shape=(4, 2, 3), chunks=(1, 2, 3), dtype="f8")
        d[0] = np.eye(2, 3)
        f["w"]["x.energy"] = [-1.0, -1.1, -1.2, -1.3]
    _refused(path, r"'w/coordinates'.*only 1 of its 4 chunks are stored")


def test_a_shape_far_larger_than_the_file_is_refused_before_reading(tmp_path):
    # today: MemoryError (numpy asks for terabytes) or, for a smaller shape, gigabytes of zeros
    path = _file(tmp_path / "a.h5", lambda f: f.create_group("w").update({"atomic_numbers": [8, 1, 1]}))
    with h5py.File(path, "a") as f:
        f["w"].create_dataset("coordinates", shape=(10**11, 3, 3), dtype="f8")
        f["w"].create_dataset("x.energy", shape=(10**11,), dtype="f8")
    assert path.stat().st_size < 20_000
    msg = _refused(path, r"'w/coordinates' declares 100000000000 x 3 x 3 float64 \(7.2 TB\) but stores 0 bytes")
    assert "never written" in msg


def test_a_compressed_dataset_past_the_ratio_cap_is_refused(tmp_path, monkeypatch):
    from ekd.data import ani

    path = _file(tmp_path / "a.h5", lambda f: f.create_group("w").update({"atomic_numbers": [1, 1]}))
    with h5py.File(path, "a") as f:
        f["w"].create_dataset("coordinates", data=np.zeros((4000, 2, 3)), chunks=(1000, 2, 3), compression="gzip")
        f["w"]["x.energy"] = np.zeros(4000)
    monkeypatch.setattr(ani, "MAX_COMPRESSION", 10.0)
    _refused(path, r"'w/coordinates' declares 4000 x 2 x 3 float64 \(192.0 kB\) compressed to .* more than 10x")
    monkeypatch.setattr(ani, "MAX_COMPRESSION", 1e6)
    assert read_ani(path, ["x.energy"])[1].n_conf == 4000


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_link_cycles_are_an_error_not_a_recursion(tmp_path, kind):
    def build(f):
        folder = f.create_group("folder")
        _water(folder.create_group("w"))
        folder["loop"] = h5py.SoftLink("/folder") if kind == "soft" else folder

    path = _file(tmp_path / "a.h5", build)
    _refused(path, r"'folder/loop' is the group 'folder' again")


def test_one_group_under_two_names_is_an_error(tmp_path):
    # hard links: the same configurations would be read twice (and could land in train and test)
    path = _file(tmp_path / "a.h5", lambda f: f.__setitem__("again", f["ok"]))
    _refused(path, r"'(again|ok)' is the group '(ok|again)' again")


def test_a_dangling_soft_link_is_an_error(tmp_path):
    path = _file(tmp_path / "a.h5", lambda f: f.__setitem__("lost", h5py.SoftLink("/nowhere")))
    _refused(path, r"'lost'.*soft link to /nowhere.*nothing there")


def test_good_files_with_soft_links_still_read(tmp_path):
    path = _file(tmp_path / "a.h5", lambda f: None)
    with h5py.File(path, "a") as f:
        g = f.create_group("w")
        g["atomic_numbers"] = [8, 1, 1]
        g["coordinates"] = h5py.SoftLink("/ok/coordinates")
        g["x.energy"] = [-1.0, -2.0]
    groups = read_ani(path, ["x.energy"])
    assert [g.name for g in groups] == ["ok", "w"]


def test_descriptive_datasets_still_read(tmp_path):
    """Empty dataspaces, scalar and variable-length strings hold no configurations: nothing to check."""

    def build(f):
        f["ok/smiles"] = h5py.Empty("f8")
        f.create_dataset("ok/name", data="water")
        f.create_dataset("ok/tags", data=["a", "bb"], dtype=h5py.string_dtype())

    path = _file(tmp_path / "a.h5", build)
    assert read_ani(path)[0].properties.keys() == {"x.energy"}


# ------------------------------------------------------------------------------------------
# item 11: YAML keys given twice


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: 1\nname: x\nseed: 2\n", r"<config>: key 'seed' is given twice \(lines 1 and 3\)"),
        (
            "train:\n  lr: 0.1\nname: x\ntrain:\n  max_epochs: 3\n",
            r"key 'train' is given twice \(lines 1 and 4\)",
        ),
        ("train:\n  lr: 0.1\n  max_epochs: 3\n  lr: 0.2\n", r"key 'train.lr' is given twice \(lines 2 and 4\)"),
    ],
)
def test_a_key_given_twice_is_an_error(text, message):
    with pytest.raises(ConfigError, match=message):
        loads(text)


def test_a_key_given_twice_in_a_base_file_names_it(tmp_path):
    (tmp_path / "base.yaml").write_text("base: default\nworkers: 1\nworkers: 2\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: key 'workers' is given twice \(lines 2 and 3\)"):
        loads("base: base.yaml\n", directory=tmp_path)


# ------------------------------------------------------------------------------------------
# item 12: one-line errors instead of tracebacks


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: -1\n", r"seed: must be >= 0"),
        ("seed: 2147483648000000000000\n", r"seed: must be"),
        ("run_dir: ''\n", r"run_dir: must name a directory"),
        ("run_dir: '  '\n", r"run_dir: must name a directory"),
    ],
)
def test_bad_top_level_values(text, message):
    with pytest.raises(ConfigError, match=message):
        loads("base: default\n" + text)


def test_base_naming_a_directory(tmp_path):
    (tmp_path / "configs").mkdir()
    with pytest.raises(ConfigError, match=r"base: .*configs is a directory, expected a YAML file"):
        loads("base: configs\n", directory=tmp_path)
    from ekd.config import load

    with pytest.raises(ConfigError, match=r"configs is a directory, expected a YAML file"):
        load(tmp_path / "configs")


def _two_molecules(path):
    with h5py.File(path, "w") as f:
        _water(f.create_group("w"))
        f["w/x.forces"] = np.zeros((2, 3, 3))
    return path


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"energy": "x.forces"},
            r"the energy key 'x.forces' holds a vector per atom \(shape \(2, 3, 3\)\), like forces; "
            r"expected one number per configuration",
        ),
        ({"energy": "coordinates"}, r"the energy key 'coordinates' holds the atoms' coordinates \(shape \(2, 3, 3\)\)"),
        (
            {"energy": "x.energy", "reference_forces": "x.energy"},
            r"the reference forces key 'x.energy' holds one number per configuration \(shape \(2,\)\), like an "
            r"energy; expected a vector per atom, shape \(n_conf, n_atoms, 3\)",
        ),
    ],
)
def test_a_key_of_the_wrong_kind(tmp_path, keys, message):
    path = _two_molecules(tmp_path / "a.h5")
    with pytest.raises(DataFileError, match=message) as err:
        load_dataset(path, keys, check_plausible=False)
    assert str(path) in str(err.value)


def test_run_refuses_reference_forces_naming_an_energy_before_training(tmp_path):
    """Found at input time, not after the teachers trained."""
    from ekd.workflow import inputs

    path = _two_molecules(tmp_path / "a.h5")
    cfg = loads(
        f"base: default\ndata: {{train: {path}, test: null, reference_forces_key: x.energy, energy_key: x.energy}}\n"
    )
    with pytest.raises(DataFileError, match=r"data.reference_forces_key 'x.energy' holds one number per"):
        inputs.load_train(cfg, inputs.DataPaths(path, None))


def test_ekd_run_refuses_reference_forces_naming_an_energy_before_any_member(tmp_path, capsys):
    from ekd.cli import main

    from ..conftest import tiny_run_config

    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        for name in ("w1", "w2", "w3"):
            _water(f.create_group(name), n=4)
            f[name]["y.energy"] = np.full(4, -76.3)
    extra = "  energy_key: x.energy\n  reference_forces_key: y.energy\n"
    text = tiny_run_config(path, "null").replace("  test: null\n", "  test: null\n" + extra)
    (tmp_path / "c.yaml").write_text(text)
    run = tmp_path / "run"
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in err and "data.reference_forces_key 'y.energy' holds one number" in err[-1], err
    assert not list(run.glob("**/member_*")), "members were started"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--energy-key", "x.forces"], r"--energy-key 'x.forces' holds a vector per atom .* one number per"),
        (
            ["--energy-key", "x.energy", "--forces-key", "x.energy"],
            r"--forces-key 'x.energy' holds one number per configuration .*\(n_conf, n_atoms, 3\)",
        ),
    ],
)
def test_score_keys_of_the_wrong_kind(tmp_path, capsys, option, message):
    from ekd.cli import main

    path = _two_molecules(tmp_path / "a.h5")
    model = tmp_path / "m.pt"
    _toy_file(model)
    assert main(["score", str(model), "--test", str(path), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ekd: error:") and len(err.strip().splitlines()) == 1, err
    assert str(path) in err
    import re

    assert re.search(message, err), err


def _toy_file(path):
    from ekd.deploy.model_file import save_model
    from ekd.testing import toy_model

    module, meta = toy_model(("H", "C", "N", "O"), cutoff=3.0, n_interactions=1, seed=0)
    save_model(module, path, meta)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_cell_is_named(bad):
    import torch

    from ekd.ops import library

    cell = torch.eye(3, dtype=torch.float64) * 5.0
    cell[0, 1] = bad
    positions = torch.zeros(2, 3, dtype=torch.float64)
    positions[1, 0] = 1.0
    with pytest.raises(ValueError, match=r"cell: lattice vector 0 has a NaN or infinite component"):
        library.neighbor_list(positions, 3.0, cell, True)
    with pytest.raises(ValueError, match=r"cell: lattice vector 0 has a NaN or infinite component"):
        library.min_pair_distance(positions.numpy(), cell.numpy(), True, 3.0)


def test_calculator_names_a_nan_cell(tmp_path):
    from ase import Atoms

    from ekd.deploy.calculator import EKDCalculator

    model = tmp_path / "m.pt"
    _toy_file(model)
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.8, 0, 0]], cell=[[np.nan, 0, 0], [0, 5, 0], [0, 0, 5]], pbc=True)
    atoms.calc = EKDCalculator(model)
    with pytest.raises(ValueError, match="NaN or infinite"):
        atoms.get_potential_energy()


def test_an_unwritable_trust_registry_is_refused_before_the_compile(tmp_path, monkeypatch):
    import torch

    from ekd.deploy import aoti
    from ekd.deploy.model_file import ModelFileError

    from .test_aoti import hipnn_module

    monkeypatch.setenv(aoti.REGISTRY_ENV, "/proc/self/no-such-dir/trusted-packages")

    def no_compile(*a, **k):
        raise AssertionError("compiled before the registry was checked")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    module, meta = hipnn_module(n_interactions=1)
    with pytest.raises(ModelFileError, match=r"EKD_TRUSTED_PACKAGES.*/proc/self/no-such-dir/trusted-packages.*cannot"):
        aoti.export_module(module, tmp_path / "x.pt2", meta)
    assert not (tmp_path / "x.pt2").exists()
