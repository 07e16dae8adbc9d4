"""The model-trust rule of ekd.deploy.model_file (issue 14, items 3, 7, 8, 11): opening a model file runs
no code that this ekd did not write, metadata.json is bound to the weights, damaged files give
ekd's own message; and the canonical code the rule compares with is what ekd.scripted compiles.

The same bad files go through the LAMMPS plugin in tests/integration/test_lammps_trust.py.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd import units
from ekd.deploy import model_file
from ekd.deploy.calculator import EKDCalculator
from ekd.deploy.model_file import ModelFileError, ModelMetadata, UntrustedModelError, load_model, save_model
from ekd.scripted import ScriptedToy, available_ops, example_hipnn
from ekd.testing import toy_model
from tests.unit import model_files as mf


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return mf.bad_files_in(tmp_path_factory)


def _code(module) -> dict[str, bytes]:
    data = model_file._archive_bytes(model_file._script(module), "{}")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist() if n.split("/", 1)[1].startswith("code/")}


# ---------------------------------------------------------------------------------------------
# the canonical code


def test_code_does_not_depend_on_the_model():
    """Width, depth, l_max, dtype, the ekd op chosen: one code per kind (weights are data)."""
    pure = [_code(example_hipnn("torch", 0, 1, 3, torch.float32)), _code(example_hipnn("torch", 2, 3, 6))]
    toys = [_code(ScriptedToy([1, 6, 8], 3.0, 1, 4, 5, torch.float32)), _code(ScriptedToy([1, 8], 5.5, 3, 9, 2))]
    assert pure[0] == pure[1] == model_file.canonical_code("hipnn-torch")
    assert toys[0] == toys[1] == model_file.canonical_code("toy")
    # the pure-torch kind loads without ekd's op library
    assert not any(b"ops.ekd" in code for code in pure[0].values())
    ops = available_ops()
    if "envsum" in ops and "tensor_envsum" in ops:
        hipnn = [_code(example_hipnn("ekd", 0, 1, 3, torch.float32)), _code(example_hipnn("ekd-tensor", 2, 3, 7))]
        assert hipnn[0] == hipnn[1] == model_file.canonical_code("hipnn") != pure[0]


def test_committed_canonical_code_is_what_ekd_generates():
    """`python -m ekd.deploy.model_file --regenerate` would change nothing (run in a fresh process, as
    the command does: a class loaded from a file earlier in a process is compiled under another name)."""
    script = (
        "import json, sys; from ekd.deploy.model_file import generated_code; "
        "json.dump({k: {n: v.decode() for n, v in c.items()} for k, c in generated_code().items()}, sys.stdout)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    import json

    generated = {k: {n: v.encode() for n, v in c.items()} for k, c in json.loads(out).items()}
    assert set(generated) == set(model_file.KINDS)
    for kind, code in generated.items():
        assert code == model_file.canonical_code(kind), (
            f"ekd/deploy/model_code/{kind} is stale: run `python -m ekd.deploy.model_file --regenerate` and commit it"
        )


# ---------------------------------------------------------------------------------------------
# the rule


def test_verdicts_on_bad_files(files):
    """Each file of model_files.bad_files: refused or loaded, without and with the opt-in."""
    table, target = files
    for name, (path, refused, refused_trusted) in table.items():
        for trust, expect in ((False, refused), (True, refused_trusted)):
            target.unlink(missing_ok=True)
            try:
                load_model(path, trust_code=trust)
                verdict = False
            except (ModelFileError, FileNotFoundError) as e:
                verdict = True
                assert str(path) in str(e), (name, str(e))
            assert verdict == expect, f"{name}, trust_code={trust}: {'refused' if verdict else 'loaded'}"
    target.unlink(missing_ok=True)


def test_metadata_checks_on_files_that_pass_the_binding(tmp_path):
    """metadata.json and the weights' copy changed alike (model_files.rebind): the field checks
    themselves, and cutoff / n_interactions must be the model's."""
    for name, (path, refused) in mf.metadata_files(tmp_path).items():
        try:
            load_model(path)
            verdict = False
        except ModelFileError as e:
            verdict = True
            assert str(path) in str(e), (name, str(e))
        assert verdict == refused, f"{name}: {'refused' if verdict else 'loaded'}"


def test_setstate_payload_never_runs_without_the_opt_in(files):
    """Issue 14 item 8: the crafted file is refused by load_model and EKDCalculator, and the file
    its __setstate__ would create does not exist; with trust_code=True it does run (so the test
    payload is real)."""
    table, target = files
    path = table["__setstate__ writes a file"][0]
    target.unlink(missing_ok=True)
    with pytest.raises(UntrustedModelError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "trust_code=True" in message and "--trust-code" in message
    assert "code/__torch__/" in message  # names the differing code file
    with pytest.raises(UntrustedModelError):
        EKDCalculator(str(path))
    assert not target.exists()
    load_model(path, trust_code=True)
    assert target.exists()


def test_foreign_code_messages_name_the_file_the_entry_and_the_opt_in(files):
    table, _ = files
    for name, want in [
        ("code entry added", "unexpected code entry '.*code/__torch__/x.py'"),
        ("unexpected entry", "unexpected archive entry '.*extra/readme.txt'"),
        ("code edited", "code file '.*scripted.py' differs from the toy model code"),
        ("ekd-model-1 file", "an ekd-model-1 file: its code is not code this ekd writes"),
        ("custom module", "model kind 'custom'"),
        ("torch.classes in a pickle", "refers to torch.classes"),
    ]:
        path = table[name][0]
        with pytest.raises(UntrustedModelError, match=want) as info:
            load_model(path)
        assert str(path) in str(info.value) and "trust_code=True" in str(info.value)


def test_edited_metadata_is_refused_even_when_trusted(files):
    """Issue 14 item 7: cutoff 6.5 -> 3.0 rewritten inside the zip."""
    path = files[0]["metadata edited: cutoff 6.5 -> 3.0"][0]
    for trust in (False, True):
        with pytest.raises(ModelFileError, match="metadata.json was edited or does not belong to these weights"):
            load_model(path, trust_code=trust)
    with pytest.raises(ModelFileError, match="was edited"):
        EKDCalculator(str(path), trust_code=True)


def test_damaged_files_give_ekd_messages(files, tmp_path):
    """Issue 14 item 11: a truncated model.pt names the file and says what to do."""
    toy = files[0]["ekd toy"][0]
    data = toy.read_bytes()
    for keep in (0, 100, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{keep}.pt"
        path.write_bytes(data[:keep])
        with pytest.raises(ModelFileError, match="truncated") as info:
            load_model(path)
        assert str(path) in str(info.value) and "re-export" in str(info.value)
    # a damaged weight entry inside an intact zip (same length, bytes flipped): TorchScript's own
    # error becomes ekd's message
    flipped = mf.rewrite(toy, tmp_path / "flipped.pt", lambda n, b: b[::-1] if n.endswith("data.pkl") else b)
    with pytest.raises(ModelFileError, match="truncated or corrupt") as info:
        load_model(flipped)
    assert str(flipped) in str(info.value)


def test_trusted_ekd_model_1_file_runs_as_before(files):
    path = files[0]["ekd-model-1 file"][0]
    module, meta = load_model(path, trust_code=True)
    assert meta.format == "ekd-model-1" and meta.kind == ""
    ref, _ = load_model(files[0]["ekd toy"][0])
    species, first, second = torch.tensor([1, 6]), torch.tensor([0, 1]), torch.tensor([1, 0])
    r = torch.tensor([[1.1, 0.0, 0.0], [-1.1, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(module(species, first, second, r), ref(species, first, second, r))


def test_save_model_binds_and_writes_no_debug_info(tmp_path):
    module, meta = toy_model(mf.SPECIES, 4.0, 1)
    stored = save_model(module, tmp_path / "m.pt", meta)
    assert stored.kind == "toy" and stored.format == "ekd-model-2"
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        names = z.namelist()
        text = z.read(next(n for n in names if n.endswith("extra/metadata.json"))).decode()
    assert not any(n.endswith(".debug_pkl") for n in names)
    assert text == stored.to_json()
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.metadata_json == text
    with pytest.raises(ModelFileError, match="torch.classes"):
        save_model(module, tmp_path / "bad.pt", meta.__class__(**{**meta.__dict__, "description": "torch.classes"}))


def test_stage_methods_rebuild_forward(tmp_path):
    """embed + interaction(k) for every k give forward's energies (toy and HIPNN, 1-3 layers)."""
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(7, 3, generator=g, dtype=torch.float64) * 3.0
    species = torch.tensor([1, 6, 1, 1, 6, 1, 6])
    i, j = torch.triu_indices(7, 7, 1)
    first, second = torch.cat([i, j]), torch.cat([j, i])
    r = pos[second] - pos[first]
    for module in [ScriptedToy([1, 6], 3.0, n, 5, 4) for n in (1, 2, 3)] + [
        example_hipnn("torch", 2, n, 4) for n in (1, 3)
    ]:
        scripted = model_file._script(module)
        assert len(scripted.feature_widths) == scripted.n_interactions + 1
        z, energy = scripted.embed(species)
        for k in range(scripted.n_interactions):
            assert z.shape == (7, scripted.feature_widths[k])
            z, e = scripted.interaction(k, z, first, second, r)
            energy = energy + e
        assert z.shape == (7, scripted.feature_widths[-1])
        np.testing.assert_allclose(energy, scripted(species, first, second, r), rtol=1e-14, atol=1e-13)
        with pytest.raises(Exception, match="k must lie in"):
            scripted.interaction(scripted.n_interactions, z, first, second, r)


def test_calculator_refuses_atoms_at_one_position(files):
    """Issue 14 item 3: NaN before; now an error naming both atoms (also through a periodic image)."""
    from ase import Atoms

    calc = EKDCalculator(str(files[0]["ekd toy"][0]))
    atoms = Atoms("HCH", positions=[[0, 0, 0], [1.1, 0, 0], [1.1, 0, 0]])
    atoms.calc = calc
    with pytest.raises(ValueError, match="atoms 1 and 2 are at the same position"):
        atoms.get_potential_energy()
    atoms = Atoms("HC", positions=[[0, 0, 0], [8.0, 0, 0]], cell=[8.0, 8.0, 8.0], pbc=True)
    atoms.calc = calc
    with pytest.raises(ValueError, match="atom 0 and a periodic image of atom 1"):
        atoms.get_potential_energy()
    atoms.positions[1, 0] = 7.9  # 0.1 A apart: close, but a finite answer
    assert np.isfinite(atoms.get_potential_energy())


def test_the_schema_is_written_once():
    """ekd/deploy/model_format.json is the one place for the schema's facts: Python takes them from it, and
    the plugin's sources hold none of them as literals (they use the header CMake generates from it;
    tests/integration/test_lammps_trust.py checks that both readers then agree)."""
    schema = json.loads((Path(model_file.__file__).parent / "model_format.json").read_text(encoding="utf-8"))
    assert [f.name for f in fields(ModelMetadata)] == schema["fields"]
    assert model_file.ELEMENTS == tuple(schema["elements"]) and model_file.ATOMIC_NUMBERS["Og"] == 118
    assert (model_file.FORMAT, model_file.FORMAT_1, model_file.KINDS, model_file.DTYPES) == (
        schema["format"],
        schema["format_1"],
        tuple(schema["kinds"]),
        tuple(schema["dtypes"]),
    )
    assert units.EV_TO_KCALMOL == schema["ev_to_kcalmol"]
    facts = [schema["format"], schema["format_1"], schema["energy_unit"], schema["ops_library"], "Og"]
    facts += [*schema["kinds"], schema["custom_kind"]]
    plugin = Path(__file__).parents[2] / "lammps_plugin"
    for source in sorted(plugin.glob("*.cpp")) + sorted(plugin.glob("*.h")):
        code = re.sub(r"//[^\n]*", "", source.read_text(encoding="utf-8"))  # comments may name them
        for fact in facts:
            assert f'"{fact}"' not in code, f"{source.name} spells {fact!r}: use ekd_model_format.h"
        assert "23.06" not in code, f"{source.name} spells the eV -> kcal/mol factor: use EV_TO_KCALMOL"
