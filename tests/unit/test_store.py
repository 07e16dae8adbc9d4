"""ekd.store: run-directory locks held by real processes, atomic writes on a full disk, and
ekd's own torch files read back with errors that name them."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd import store

# holds the locks named on its command line ("shared:<dir>" for a member job's hold on its run
# directory) until killed
HOLDER = """
import contextlib, sys, time
from ekd.store import lock_dir
with contextlib.ExitStack() as stack:
    for arg in sys.argv[1:]:
        shared = arg.startswith("shared:")
        stack.enter_context(lock_dir(arg.removeprefix("shared:"), shared=shared))
    print("locked", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def holder():
    procs = []

    def start(*dirs):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, dirs)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(tmp_path, holder, capsys):
    proc = holder(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(store.RunDirBusyError) as err, store.lock_dir(tmp_path):
        pass
    assert time.monotonic() - t0 < 5  # refused at once, not after a wait
    message = str(err.value)
    assert f"PID {proc.pid} on host {socket.gethostname()}" in message and str(tmp_path) in message
    assert "since 20" in message

    # SIGKILL: no cleanup ran, its record is still in the file, but the kernel dropped the lock
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / store.LOCK_NAME).read_text())["pid"] == proc.pid
    with store.lock_dir(tmp_path):
        record = json.loads((tmp_path / store.LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()
    assert f"taking over the lock of {tmp_path}" in capsys.readouterr().err
    assert (tmp_path / store.LOCK_NAME).read_text() == ""  # released: no holder recorded


def test_member_jobs_run_side_by_side_but_not_twice_and_not_with_a_whole_run(tmp_path, holder):
    member0, member1 = tmp_path / "gen0/teacher/member_00", tmp_path / "gen0/teacher/member_01"
    proc = holder(f"shared:{tmp_path}", member0)
    with store.lock_dir(tmp_path, shared=True), store.lock_dir(member1):
        pass  # another member: proceeds
    with pytest.raises(store.RunDirBusyError, match=f"member_00 is in use by .*PID {proc.pid}"):
        with store.lock_dir(tmp_path, shared=True), store.lock_dir(member0, "teacher member 0"):
            pass
    with pytest.raises(store.RunDirBusyError) as err, store.lock_dir(tmp_path):
        pass
    assert "in use by member jobs" in str(err.value) and "gen0/teacher/member_00: `" in str(err.value)
    assert f"PID {proc.pid}" in str(err.value)


def test_locks_are_reentrant_within_a_process(tmp_path):
    with store.lock_dir(tmp_path):
        with store.lock_dir(tmp_path), store.lock_dir(tmp_path, shared=True):
            pass
        assert json.loads((tmp_path / store.LOCK_NAME).read_text())["pid"] == os.getpid()
    with store.lock_dir(tmp_path, shared=True):
        with pytest.raises(store.RunDirBusyError, match="member job"), store.lock_dir(tmp_path):
            pass


def _no_temporaries(directory):
    return [p.name for p in directory.iterdir() if ".tmp" in p.name]


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    store.atomic_write(path, lambda tmp: torch.save({"epoch": 1}, tmp))

    def full(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(store.DiskFullError) as err:
        store.atomic_write(path, full)
    assert str(path) in str(err.value) and "disk is full" in str(err.value)
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert _no_temporaries(tmp_path) == []
    # any other failure: the temporary goes too, the error is the writer's own
    with pytest.raises(ZeroDivisionError):
        store.atomic_write(path, lambda tmp: (tmp.write_text("x"), 1 / 0))
    assert _no_temporaries(tmp_path) == []


def test_disk_full_is_recognised_from_torchs_words_when_the_disk_is_full(tmp_path, monkeypatch):
    # torch's writer gives no errno (measured on a full 256 KiB tmpfs: "[enforce fail at
    # inline_container.cc:672] . unexpected pos 704 vs 598"); the free space decides
    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert store.disk_full_error(err, tmp_path / "x.pt") is None  # this disk is not full
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: _Usage(0))
    full = store.disk_full_error(err, tmp_path / "x.pt")
    assert isinstance(full, store.DiskFullError) and str(tmp_path / "x.pt") in str(full)


class _Usage:
    def __init__(self, free):
        self.free = free


def test_create_once_never_overwrites(tmp_path):
    path = tmp_path / "config.yaml"
    assert store.create_once(path, "first")
    assert not store.create_once(path, "second")
    assert path.read_text() == "first" and _no_temporaries(tmp_path) == []


@pytest.mark.parametrize(
    "damage, detail",
    [
        (lambda b: b"", "empty"),
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b"not a checkpoint" * 10, "truncated or corrupt"),
    ],
)
def test_load_torch_names_a_damaged_file_and_the_remedy(tmp_path, damage, detail):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": torch.zeros(100)}, path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(store.CorruptFileError) as err:
        store.load_torch(path, "checkpoint of teacher member 0", "delete it to restart that member")
    message = str(err.value)
    assert message.startswith(f"{path}: checkpoint of teacher member 0 is not readable ({detail}")
    assert message.endswith("delete it to restart that member")


class Payload:
    pass


def test_load_torch_refuses_pickled_objects_in_ekds_words(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(store.CorruptFileError, match="refuses to load it .unpickling it could run code") as err:
        store.load_torch(path, "checkpoint", "delete it")
    assert "weights_only" not in str(err.value)


def test_errors_survive_the_trip_from_a_worker_process():
    import pickle

    for err in (
        store.DiskFullError(errno.ENOSPC, "could not write x.pt: the disk is full", "x.pt"),
        store.CorruptFileError("x.pt: checkpoint is not readable (empty); delete it"),
        store.RunDirBusyError("run directory r is in use by `ekd run`"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\x00bytes\xff", b"\x00bytes\xff"),
        ("text, Å", "text, Å".encode()),
        (lambda tmp: tmp.write_bytes(b"cb"), b"cb"),
    ],
    ids=["bytes", "text", "callback"],
)
def test_atomic_write_takes_bytes_text_or_a_writer_and_replaces_the_old_file(tmp_path, data, expected):
    path = tmp_path / "sub" / "out.json"
    store.atomic_write(path, b"old")
    assert store.atomic_write(path, data) == path
    assert path.read_bytes() == expected and _no_temporaries(path.parent) == []


def test_a_failing_hdf5_write_leaves_the_old_file_intact_and_no_temporary(tmp_path):
    from ekd.data.ani import MoleculeGroup, read_ani, write_ani

    path = tmp_path / "data.h5"
    water = MoleculeGroup("water", np.array([8, 1, 1]), np.zeros((2, 3, 3)), {"energy": np.array([1.0, 2.0])})
    write_ani(path, [water])
    with pytest.raises(ValueError, match="used twice"):
        write_ani(path, [water, water])  # fails after the temporary file was opened and partly written
    assert [g.name for g in read_ani(path)] == ["water"]
    assert read_ani(path)[0].properties["energy"].tolist() == [1.0, 2.0]
    assert _no_temporaries(tmp_path) == []


def test_digest_is_the_sha256_of_sorted_json():
    # the bytes of every digest stored in existing run directories (json.dumps with sort_keys)
    assert (
        store.digest({"b": 1, "a": [1, 2.5, None]}) == hashlib.sha256(b'{"a": [1, 2.5, null], "b": 1}').hexdigest()[:16]
    )
    with pytest.raises(TypeError):
        store.digest({"path": Path("x")})  # not plain data: an error unless asked for
    assert store.digest({"path": Path("x")}, default=str) == store.digest({"path": "x"})
    assert store.bytes_digest(b"ab", b"c") == store.bytes_digest(b"abc") == hashlib.sha256(b"abc").hexdigest()[:16]


def test_file_digest_reads_large_files_in_blocks(tmp_path):
    path = tmp_path / "model.pt"
    content = bytes(range(256)) * (3 * 2**12 + 7)  # over 3 MiB: several blocks
    path.write_bytes(content)
    assert store.file_digest(path) == hashlib.sha256(content).hexdigest()[:16]


def test_fields_added_later_leave_a_digest_unchanged_at_their_default():
    added = {"new_tuple": (), "new_float": 5.0}
    old = {"lr": 0.001, "epochs": 10}
    # at their defaults (a tuple default also as the list JSON makes of it): the old record
    assert store.without_added_defaults({**old, "new_tuple": [], "new_float": 5.0}, added) == old
    assert store.without_added_defaults({**old, "new_tuple": (), "new_float": 5}, added) == old
    # set to anything else: they enter the record, and the digest changes
    changed = {**old, "new_tuple": ["CCO"], "new_float": 5.0}
    assert store.without_added_defaults(changed, added) == {**old, "new_tuple": ["CCO"]}
    assert store.digest(store.without_added_defaults(changed, added)) != store.digest(old)
    # a field that is not in ``added`` stays even at a default-looking value
    assert store.without_added_defaults({"lr": 5.0}, added) == {"lr": 5.0}


def test_claim_binds_a_directory_to_one_digest(tmp_path):
    member = tmp_path / "member_00"
    store.claim(member, "aaaa", "teacher member 0")
    store.claim(member, "aaaa", "teacher member 0")  # the same inputs: reused
    with pytest.raises(store.RunDirError, match=r"teacher member 0 in .*member_00 .*digest aaaa, now bbbb.*hint"):
        store.claim(member, "bbbb", "teacher member 0", hint="; hint")
    assert json.loads((member / "inputs.json").read_text()) == {"digest": "aaaa", "what": "teacher member 0"}
