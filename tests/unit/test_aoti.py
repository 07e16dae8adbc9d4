"""ekd.deploy.aoti: AOTInductor packages (``ekd export --format aoti``, format ekd-aoti-1).

One small HIPNN model (l_max 2, two interaction blocks, random perturbed weights, float64, pair
sums through ekd's ops) is exported both ways: TorchScript (``ekd.deploy.model_file.save_model``) and
AOTInductor (``ekd.deploy.aoti.export_module``); the ASE calculator must give the same numbers with
either file (energy 1e-9 relative, forces 1e-8 of the largest), on molecules, a periodic box and a
lone atom (the padding path). The compile takes ~0.5-1.5 min on a loaded 2-core machine: one
package per module, registered in a temporary trust registry (never the user's).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch

from ekd import scripted
from ekd.deploy import aoti
from ekd.deploy.model_file import ModelFileError, UntrustedModelError, save_model

SPECIES = (1, 6, 7, 8)
E_RTOL = 1e-9
F_ATOL = 1e-8


def small_arch(l_max: int, n_interactions: int, width: int, n_sensitivities: int, soft_max: float, cutoff: float):
    """A small HIPNN architecture (one atom layer, soft-min cutoff 0.8 A)."""
    from ekd.config import ModelConfig

    return ModelConfig(
        **dict(l_max=l_max, n_interactions=n_interactions, n_atom_layers=1, width=width),
        **dict(n_sensitivities=n_sensitivities, cutoff_soft_min=0.8),
        **dict(cutoff_soft_max=soft_max, cutoff_hard=cutoff),
    )


def hipnn_module(species=SPECIES, dtype=torch.float64, n_interactions: int = 2, seed: int = 0):
    """An unscripted HIPNN module (ekd.scripted) with random, perturbed weights, and its metadata."""
    from ekd.training.models import build_model

    arch = small_arch(l_max=2, n_interactions=n_interactions, width=6, n_sensitivities=4, soft_max=2.6, cutoff=3.2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(arch, list(species))
        with torch.no_grad():
            for p in model.modules().parameters():
                p.mul_(1 + 0.2 * torch.randn_like(p)).add_(0.05 * torch.randn_like(p))
    module = scripted.build_module(model, dtype=dtype)
    return module, scripted.metadata(model, module)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = tmp_path_factory.mktemp("registry") / "trusted-packages"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(aoti.REGISTRY_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def files(registry, tmp_path_factory):
    """{"pt": TorchScript file, "pt2": AOTInductor package} of one HIPNN model."""
    d = tmp_path_factory.mktemp("aoti")
    module, meta = hipnn_module()
    with scripted._quiet_jit():
        save_model(torch.jit.script(module), d / "model.pt", meta)
    aoti.export_module(module, d / "model.pt2", meta)
    return {"pt": d / "model.pt", "pt2": d / "model.pt2"}


def _molecules():
    from ase.build import molecule

    out = {}
    for name, seed in (("CH3ONO", 1), ("CH4", 2), ("HCN", 3)):
        a = molecule(name)
        a.rattle(0.05, seed=seed)
        out[name] = a
    return out


def _box():
    from ase import Atoms

    rng = np.random.default_rng(5)
    n = 40
    numbers = rng.choice(SPECIES, n)
    cell = np.diag([7.0, 7.5, 8.0])
    # a jittered grid: no two atoms closer than ~1 A
    grid = np.stack(np.meshgrid(*(np.arange(4) for _ in range(3)), indexing="ij"), -1).reshape(-1, 3)[:n]
    pos = (grid + 0.5 + rng.uniform(-0.15, 0.15, (n, 3))) * np.diag(cell) / 4
    return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)


def _results(atoms, path, **kw):
    from ekd.deploy.calculator import EKDCalculator

    a = atoms.copy()
    a.calc = EKDCalculator(str(path), **kw)
    out = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
    if a.pbc.all():
        out["stress"] = a.get_stress()
    return out


def _assert_same(have, want):
    assert abs(have["energy"] - want["energy"]) <= E_RTOL * max(1.0, abs(want["energy"]))
    np.testing.assert_allclose(
        have["forces"], want["forces"], rtol=0, atol=F_ATOL * max(1.0, np.abs(want["forces"]).max())
    )
    if "stress" in want:
        np.testing.assert_allclose(
            have["stress"], want["stress"], rtol=0, atol=1e-9 * max(1.0, np.abs(want["stress"]).max())
        )


@pytest.mark.parametrize("system", ["CH3ONO", "CH4", "HCN", "box", "lone atom"])
def test_calculator_gives_the_torchscript_numbers(files, system):
    from ase import Atoms

    if system == "box":
        atoms = _box()
    elif system == "lone atom":
        atoms = Atoms("N", positions=[[0.0, 0.0, 0.0]])  # no pairs, one atom: padded to the minimum
    else:
        atoms = _molecules()[system]
    _assert_same(_results(atoms, files["pt2"]), _results(atoms, files["pt"]))


def test_package_metadata(files):
    meta = aoti.read_metadata(files["pt2"])
    assert meta.format == aoti.FORMAT_AOTI
    assert meta.kind == "hipnn" and meta.ops_library == "libekd_ops.so"
    assert meta.species == ("H", "C", "N", "O") and meta.dtype == "float64"
    assert aoti.is_package(files["pt2"]) and not aoti.is_package(files["pt"])


def test_format_is_chosen_by_content_not_name(files, tmp_path):
    """A package named .pt loads as a package (the registry knows its bytes, not its name)."""
    renamed = tmp_path / "model.pt"
    shutil.copy(files["pt2"], renamed)
    mol = _molecules()["CH3ONO"]
    _assert_same(_results(mol, renamed), _results(mol, files["pt"]))


def test_ensemble_of_both_formats(files):
    from ekd.deploy.calculator import EKDCalculator

    mol = _molecules()["CH3ONO"]
    a = mol.copy()
    a.calc = EKDCalculator([str(files["pt"]), str(files["pt2"])])
    assert a.get_potential_energy() == pytest.approx(_results(mol, files["pt"])["energy"], rel=E_RTOL)
    assert a.calc.results["energy_std"] < 1e-9


def test_unregistered_package_is_refused_with_both_fixes(files, tmp_path, monkeypatch):
    from ekd.deploy.calculator import EKDCalculator

    monkeypatch.setenv(aoti.REGISTRY_ENV, str(tmp_path / "empty-registry"))
    with pytest.raises(UntrustedModelError) as e:
        EKDCalculator(str(files["pt2"]))
    msg = str(e.value)
    assert str(files["pt2"]) in msg and "ekd export" in msg and "--format aoti" in msg and "trust_code=True" in msg
    # the opt-in loads it, with the same numbers
    mol = _molecules()["CH4"]
    _assert_same(_results(mol, files["pt2"], trust_code=True), _results(mol, files["pt"]))


def _rewrite(src, dst, change):
    """A copy of package ``src`` with entries changed by ``change(name, data) -> data | None``
    (None drops it), and extra entries from ``change.extra``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)
        for name, data in getattr(change, "extra", {}).items():
            zout.writestr(name, data)
    return dst


def test_edited_metadata_is_refused_even_when_registered(files, tmp_path):
    def edit(name, data):
        if name.endswith("extra/metadata.json"):
            d = json.loads(data)
            d["cutoff"] = 5.0
            return json.dumps(d, indent=1, sort_keys=True).encode()
        return data

    bad = _rewrite(files["pt2"], tmp_path / "edited.pt2", edit)
    aoti.register(bad)  # the registry vouches for the bytes; the binding still catches the edit
    with pytest.raises(ModelFileError, match="metadata.json was edited"):
        aoti.load_package(bad)
    with pytest.raises(ModelFileError, match="metadata.json was edited"):
        aoti.load_package(bad, trust_code=True)


def test_extra_entry_is_refused_before_loading(files, tmp_path):
    def keep(name, data):
        return data

    top = zipfile.ZipFile(files["pt2"]).namelist()[0].split("/")[0]
    keep.extra = {f"{top}/data/aotinductor/model/zz.wrapper.so": b"\x7fELF", f"{top}/payload.py": b"print(1)"}
    bad = _rewrite(files["pt2"], tmp_path / "extra.pt2", keep)
    aoti.register(bad)
    with pytest.raises(UntrustedModelError, match="not a package as `ekd export --format aoti` writes it"):
        aoti.load_package(bad)


def test_package_not_made_by_ekd(registry, tmp_path):
    """A torch .pt2 of some other function (no ekd metadata) is refused, registered or not."""

    class Double(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    foreign = tmp_path / "foreign.pt2"
    with aoti._quiet_compile():
        program = torch.export.export(Double(), (torch.ones(3),))
        torch._inductor.aoti_compile_and_package(program, package_path=str(foreign))
    assert aoti.is_package(foreign)
    aoti.register(foreign)
    with pytest.raises(ModelFileError, match="not written by `ekd export --format aoti`"):
        aoti.load_package(foreign, trust_code=True)


def test_truncated_package(files, tmp_path):
    bad = tmp_path / "cut.pt2"
    bad.write_bytes(files["pt2"].read_bytes()[:5000])
    from ekd.deploy.calculator import EKDCalculator

    with pytest.raises((ModelFileError, ValueError)) as e:
        EKDCalculator(str(bad))
    assert str(bad) in str(e.value)


def test_registry_lines_and_location(tmp_path, monkeypatch):
    monkeypatch.delenv(aoti.REGISTRY_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert aoti.registry_path() == tmp_path / "xdg" / "ekd" / "trusted-packages"
    f = tmp_path / "some.bin"
    f.write_bytes(b"abc")
    digest = aoti.register(f)
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert aoti.is_registered(digest) and not aoti.is_registered("0" * 64)
    assert aoti.registry_path().read_text().split() == [digest, str(f.resolve())]


def test_export_refuses_a_scripted_module(registry, tmp_path):
    module, meta = hipnn_module(n_interactions=1)
    with scripted._quiet_jit():
        s = torch.jit.script(module)
    with pytest.raises(TypeError, match="unscripted"):
        aoti.export_module(s, tmp_path / "x.pt2", meta)
    assert not (tmp_path / "x.pt2").exists()


@pytest.mark.slow
def test_float32_toy_package(registry, tmp_path):
    """float32 (the deployment default) with the toy model: the package's numbers are the
    TorchScript file's within float32 rounding."""
    from ekd.deploy.model_file import ModelMetadata
    from ekd.scripted import ScriptedToy

    with torch.random.fork_rng():
        torch.manual_seed(3)
        module = ScriptedToy([1, 6, 7, 8], 3.0, 2, 8, 6, torch.float32).eval()
    meta = ModelMetadata(cutoff=3.0, n_interactions=2, species=("H", "C", "N", "O"), dtype="float32", kind="toy")
    with scripted._quiet_jit():
        save_model(torch.jit.script(module), tmp_path / "toy.pt", meta)
    aoti.export_module(module, tmp_path / "toy.pt2", meta)
    for atoms in (*_molecules().values(), _box()):
        have, want = _results(atoms, tmp_path / "toy.pt2"), _results(atoms, tmp_path / "toy.pt")
        assert abs(have["energy"] - want["energy"]) <= 1e-5 * max(1.0, abs(want["energy"]))
        np.testing.assert_allclose(have["forces"], want["forces"], rtol=0, atol=1e-4 * np.abs(want["forces"]).max())


def test_registry_env_is_the_test_one(registry):
    # guards the other tests: nothing here writes the user's registry
    assert os.environ[aoti.REGISTRY_ENV] == str(registry)


def _member_dir(path, seed: int = 1):
    """A member directory as ekd's training leaves it (model.pt in ekd.training.member's format, done.json),
    with random weights."""
    from dataclasses import asdict

    from ekd.training.member import MODEL_FORMAT
    from ekd.training.models import build_model

    arch = small_arch(l_max=1, n_interactions=1, width=4, n_sensitivities=3, soft_max=2.5, cutoff=3.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(arch, list(SPECIES))
    path.mkdir()
    payload = {
        "format": MODEL_FORMAT,
        "model_config": asdict(arch),
        "species": list(model.species),
        "state_dict": model.modules().state_dict(),
        "spec": {"role": "teacher"},
    }
    torch.save(payload, path / "model.pt")
    (path / "done.json").write_text("{}")
    return path


@pytest.mark.slow
def test_cli_export_format_aoti(registry, tmp_path, capsys):
    """`ekd export MEMBER --format aoti` writes a registered package with the TorchScript export's numbers."""
    from ekd import cli

    member = _member_dir(tmp_path / "member")
    assert cli.main(["export", str(member), "--dtype", "float64", "-o", str(tmp_path / "m.pt")]) == 0
    argv = ["export", str(member), "--format", "aoti", "--dtype", "float64", "-o", str(tmp_path / "m.pt2")]
    assert cli.main(argv) == 0
    assert "m.pt2" in capsys.readouterr().out
    assert aoti.is_registered(aoti.sha256(tmp_path / "m.pt2"))
    assert aoti.read_metadata(tmp_path / "m.pt2").role == "teacher"
    mol = _molecules()["CH3ONO"]
    _assert_same(_results(mol, tmp_path / "m.pt2"), _results(mol, tmp_path / "m.pt"))


@pytest.mark.slow  # ~30 s of tracing before the compiler is needed
def test_compile_failure_is_named(registry, tmp_path, monkeypatch):
    """No working C++ compiler: a clear error, and no file or registry line left behind."""
    module, meta = hipnn_module(n_interactions=1)
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (str(tmp_path / "no-such-compiler"),))
    monkeypatch.setattr(inductor_config, "force_disable_caches", True)
    before = registry.read_text() if registry.exists() else ""
    with pytest.raises(ModelFileError, match="could not compile the model"):
        aoti.export_module(module, tmp_path / "x.pt2", meta)
    assert not (tmp_path / "x.pt2").exists()
    assert (registry.read_text() if registry.exists() else "") == before


def test_score_reads_packages_like_torchscript_files(files):
    """`ekd score MODEL.pt2`: the package predicts the TorchScript file's energies and forces on a
    padded batch of molecules (the scorer's own batched path, not the calculator's)."""
    from ekd.data import Dataset
    from ekd.evaluation import score

    mols = list(_molecules().values())
    a = max(len(m) for m in mols)
    species = np.zeros((len(mols), a), dtype=np.int64)
    coords = np.zeros((len(mols), a, 3))
    for i, m in enumerate(mols):
        species[i, : len(m)] = m.numbers
        coords[i, : len(m)] = m.positions
    n = len(mols)
    data = Dataset(species, coords, {}, np.arange(n), np.zeros(n, dtype=np.int64), tuple(f"m{i}" for i in range(n)))
    group = score.model_files([files["pt"], files["pt2"]], batch_size=2)
    (e_pt, f_pt), (e_pt2, f_pt2) = (predict(data, lambda k: None) for predict in group.predictors)
    np.testing.assert_allclose(e_pt2, e_pt, rtol=E_RTOL, atol=0)
    np.testing.assert_allclose(f_pt2, f_pt, rtol=0, atol=F_ATOL * max(1.0, np.abs(f_pt).max()))
    assert np.abs(f_pt).max() > 0  # real forces, padding rows zero in both


def test_a_package_swapped_after_the_check_is_not_what_loads(files, tmp_path, monkeypatch):
    """Issue 24, item 2: the check passes, then the file is replaced before torch would open it;
    the package loaded is the one checked (a private copy of the bytes read, removed after)."""
    import tempfile

    from ekd.deploy.aoti import package

    path = tmp_path / "model.pt2"
    shutil.copyfile(files["pt2"], path)
    check = package.check_package

    def check_then_swap(*args, **kwargs):
        text = check(*args, **kwargs)
        path.write_bytes(b"not the package that was checked")
        return text

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setattr(package, "check_package", check_then_swap)
    model, _ = aoti.load_package(path)
    assert path.read_bytes() == b"not the package that was checked"
    assert list(private.iterdir()) == []  # the private copy is gone
    reference, _ = aoti.load_package(files["pt2"])
    species, first, second = torch.tensor([1, 6]), torch.tensor([0, 1]), torch.tensor([1, 0])
    r = torch.tensor([[1.1, 0.0, 0.0], [-1.1, 0.0, 0.0]], dtype=torch.float64)
    for have, want in zip(
        model.energy_and_gradient(species, first, second, r),
        reference.energy_and_gradient(species, first, second, r),
        strict=True,
    ):
        assert torch.equal(have, want)
