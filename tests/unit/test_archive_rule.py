"""The strict archive rule (issue 24, items 1-4; ekd.deploy.archive): a model file is read once,
those bytes are checked strictly and they are what TorchScript loads; a file with two central
directories, one swapped after the check, a decompression bomb or a pickle naming a foreign global
is refused with the file's name and the reason, and nothing of it runs.

The same crafted files go through the LAMMPS plugin in tests/integration/test_lammps_trust.py
(they are rows of model_files.bad_files).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from ekd.deploy import model_file
from ekd.deploy.calculator import EKDCalculator
from ekd.deploy.model_file import ModelFileError, load_model, read_metadata
from tests.unit import model_files as mf

#: what a refusal may cost: the memory tests' bound on the growth of the peak RSS
MEMORY_BOUND_KB = 200 * 1024


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """(name -> (file, words of its refusal), the canonical toy, the file the payload creates)."""
    d = tmp_path_factory.mktemp("strict")
    toy = mf.toy_file(d / "toy.pt")
    target = d / "written_by_setstate"
    evil = mf.evil_file(d / "evil.pt", target, toy)
    return mf.strict_files(d, toy, evil), toy, target


def _same_module(a, b) -> bool:
    species, first, second = torch.tensor([1, 6]), torch.tensor([0, 1]), torch.tensor([1, 0])
    r = torch.tensor([[1.1, 0.0, 0.0], [-1.1, 0.0, 0.0]], dtype=torch.float64)
    return torch.equal(a(species, first, second, r), b(species, first, second, r))


def test_each_crafted_archive_is_refused_naming_the_file_and_the_reason(crafted):
    """Trusted or not: the rule is about what the bytes are, not about whose code they hold."""
    files, _, target = crafted
    for name, (path, words) in files.items():
        for trust in (False, True):
            with pytest.raises(ModelFileError) as info:
                load_model(path, trust_code=trust)
            message = str(info.value)
            assert f"{path}: refused: " in message and words in message, (name, trust, message)
            assert "\n" not in message, (name, message)
    assert not target.exists()


def test_two_central_directories_never_run_the_hidden_module(crafted):
    """Item 1: zipfile lists ekd's canonical toy, torch's reader the __setstate__ module; neither
    load_model, EKDCalculator nor read_metadata accepts the file, and the payload never runs."""
    files, _, target = crafted
    path = files["two central directories"][0]
    with zipfile.ZipFile(path) as z:  # the file is the attack: what zipfile shows is canonical
        assert any(n.endswith("code/__torch__/ekd/scripted.py") for n in z.namelist())
    for load in (
        lambda: load_model(path),
        lambda: load_model(path, trust_code=True),
        lambda: EKDCalculator(str(path)),
        lambda: read_metadata(path),
    ):
        with pytest.raises(ModelFileError, match="central directory is not where its end record says"):
            load()
    assert not target.exists()


def test_a_file_swapped_after_the_check_is_not_what_loads(tmp_path, monkeypatch):
    """Item 2: the check passes, then the file is replaced by the __setstate__ module before
    TorchScript would open it again; what loads is the module that was checked."""
    path = mf.toy_file(tmp_path / "model.pt")
    pristine = tmp_path / "pristine.pt"
    shutil.copyfile(path, pristine)
    target = tmp_path / "written_by_setstate"
    evil = mf.evil_file(tmp_path / "evil.pt", target, pristine)
    check = model_file.check_archive

    def check_then_swap(*args, **kwargs):
        check(*args, **kwargs)
        shutil.copyfile(evil, path)

    monkeypatch.setattr(model_file, "check_archive", check_then_swap)
    module, _ = load_model(path)
    assert path.read_bytes() == evil.read_bytes()  # the swap happened
    assert not target.exists()
    monkeypatch.undo()
    assert _same_module(module, load_model(pristine)[0])


def test_bombs_are_refused_before_they_inflate(crafted):
    """Item 3: metadata.json, data.pkl and a weight record that inflate to 384 MiB (files of
    ~0.4 MB) are refused by their declared sizes; the peak memory of the process grows < 200 MB."""
    files, _, _ = crafted
    names = ["bomb: metadata.json", "bomb: data.pkl", "bomb: weight record"]
    paths = [str(files[n][0]) for n in names]
    script = (
        "import resource, sys\n"
        "from ekd.deploy.model_file import ModelFileError, load_model, read_metadata\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "messages = []\n"
        "for p in sys.argv[1:]:\n"
        "    for load in (read_metadata, load_model):\n"
        "        try:\n"
        "            load(p)\n"
        "            messages.append('loaded ' + p)\n"
        "        except ModelFileError as e:\n"
        "            messages.append(str(e))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak)\n"
        "print('\\n'.join(messages))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, check=True)
    growth, *messages = out.stdout.splitlines()
    assert int(growth) < MEMORY_BOUND_KB, f"peak RSS grew by {int(growth) // 1024} MB"
    for i, name in enumerate(names):
        for message in messages[2 * i : 2 * i + 2]:
            assert f"{paths[i]}: refused: " in message and files[name][1] in message, (name, message)


def test_a_pickle_naming_a_foreign_global_is_refused_with_the_reason(tmp_path):
    """Item 4: data.pkl naming os.system; TorchScript refuses it, and the message says so (it
    said "TorchScript cannot load it ()")."""
    path = mf.foreign_global(mf.toy_file(tmp_path / "toy.pt"), tmp_path / "os_system.pt")
    for trust in (False, True):
        with pytest.raises(ModelFileError) as info:
            load_model(path, trust_code=trust)
        message = str(info.value)
        assert str(path) in message and "os.system" in message and "()" not in message, message


def test_torch_written_archives_pass_and_read_as_zipfile_reads_them(tmp_path):
    """No false refusals: ekd's files and torch.jit.save's (zip64 end records, data descriptors,
    compressed code) pass the rule, and every entry reads as zipfile reads it."""
    from ekd.deploy import archive

    toy = mf.toy_file(tmp_path / "toy.pt")
    resaved = tmp_path / "resaved.pt"
    with model_file._quiet_jit():
        torch.jit.save(torch.jit.load(str(toy)), str(resaved), _extra_files={"metadata.json": mf.meta_text(toy)})
    for path in (toy, resaved):
        checked = archive.read_archive(path)
        with zipfile.ZipFile(io.BytesIO(checked.data)) as z:
            assert checked.names() == z.namelist()
            for name in z.namelist():
                assert checked.read(name) == z.read(name), (path, name)
    with zipfile.ZipFile(resaved) as z:
        assert any(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    assert _same_module(load_model(resaved, trust_code=True)[0], load_model(toy)[0])
