"""Run-directory plumbing: one process per run directory (or per member), atomic writes that
say when the disk is full, digests of what a stored result was computed from (and directories
bound to one), and loading of ekd's own torch files with errors that name the file.

Locks are advisory ``flock`` locks on a file ``.ekd.lock`` in the locked directory. The kernel
releases a lock when its holder dies (even by SIGKILL), so a lock left by a dead process is taken
over without asking; the holder's PID, host, command and start time are written into the file
so that a refused process can say who is in the way. Two kinds of holder:

* a whole-run verb (``ekd run``, ``evaluate``, ``distill``, ``md-stability``, ``train`` of a
  whole group) holds the run directory's lock exclusively;
* a member job (``ekd train --member M``, one task of a job array) holds the run directory's lock
  *shared* and the member directory's lock exclusively: member jobs run side by side, the same
  member twice is refused, and a whole-run verb waits for none of them (it is refused at once).

Locks are re-entrant within a process (a verb that calls another part of the workflow does not
lock itself out); worker processes hold no locks, their parent does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

LOCK_NAME = ".ekd.lock"


class RunDirError(RuntimeError):
    """A run directory holds results of a different configuration."""


class RunDirBusyError(RuntimeError):
    """Another process holds the lock of a run (or member) directory."""


class DiskFullError(OSError):
    """A write failed for lack of space; the destination file is unchanged."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class CorruptFileError(ValueError):
    """A file that ekd wrote earlier cannot be read back (truncated, emptied, overwritten)."""


# ------------------------------------------------------------------------------------------
# locks

# lock file (resolved) -> [fd, shared, count]: what this process holds
_held: dict[str, list] = {}


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(argv)[:200]


def _read_record(path: Path) -> dict | None:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _describe(record: dict | None) -> str:
    if not record:
        return "a process that has not recorded itself yet"
    return (
        f"`{record.get('command', '?')}` (PID {record.get('pid', '?')} on host {record.get('host', '?')}, "
        f"since {record.get('since', '?')})"
    )


def _alive_here(record: dict) -> bool:
    """False only when ``record``'s process is known to be gone (same host, no such PID)."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _try_flock(path: Path, mode: int) -> int | None:
    """A new descriptor of ``path`` locked with ``mode`` (LOCK_EX / LOCK_SH), or None if busy."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exclusive_holder(path: Path) -> dict | None:
    """The record of the exclusive holder of ``path``; waits briefly for a holder that has just
    taken the lock to write it (a record of a dead process is not its holder)."""
    deadline = time.monotonic() + 1.0
    while True:
        record = _read_record(path)
        if (record and _alive_here(record)) or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


def _member_holders(run_dir: Path) -> list[str]:
    """Descriptions of the member jobs that hold member locks under ``run_dir``."""
    out = []
    for lock in sorted(run_dir.glob(f"**/member_*/{LOCK_NAME}")):
        if str(lock.resolve()) in _held:
            continue
        fd = _try_flock(lock, fcntl.LOCK_EX)
        if fd is None:
            out.append(f"{lock.parent.relative_to(run_dir)}: {_describe(_read_record(lock))}")
        else:
            os.close(fd)
    return out


def _busy_message(directory: Path, path: Path, what: str, shared: bool) -> str:
    fix = "wait for it to finish or stop it; a lock of a process that has died is taken over automatically"
    if not shared:
        # refused an exclusive lock: held exclusively by one process, or shared by member jobs
        probe = _try_flock(path, fcntl.LOCK_SH)
        if probe is not None:
            os.close(probe)
            members = _member_holders(directory)
            jobs = "; ".join(members) if members else "member jobs that are starting"
            return (
                f"{what} {directory} is in use by member jobs ({jobs}); wait for them to finish "
                f"(`ekd train --member` jobs of a job array) or stop them"
            )
    return f"{what} {directory} is in use by {_describe(_exclusive_holder(path))}; {fix}"


@contextlib.contextmanager
def lock_dir(directory: str | os.PathLike, what: str = "run directory", shared: bool = False) -> Iterator[Path]:
    """Hold ``directory``'s lock (created with the directory if needed) for the ``with`` block.

    shared: a member job's hold on its run directory (any number of shared holders, no
    exclusive one); otherwise exclusive. Raises :class:`RunDirBusyError` at once, naming the
    holder, when the lock is taken. Re-entrant within a process (an exclusive hold covers a
    nested shared request).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    key = str(path.resolve())
    entry = _held.get(key)
    if entry is not None:
        if entry[1] and not shared:
            raise RunDirBusyError(f"{what} {directory}: this process holds it as a member job and cannot take it whole")
        entry[2] += 1
        try:
            yield directory
        finally:
            entry[2] -= 1
        return
    fd = _try_flock(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    if fd is None:
        raise RunDirBusyError(_busy_message(directory, path, what, shared))
    if not shared:
        stale = _read_record(path)
        if stale:
            print(
                f"ekd: taking over the lock of {directory} left by {_describe(stale)}, which is no longer running",
                file=sys.stderr,
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": _command(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _held[key] = [fd, shared, 1]
    try:
        yield directory
    finally:
        del _held[key]
        try:
            if not shared:
                os.ftruncate(fd, 0)  # a released lock records no holder
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def wait_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` exclusively, WAITING for it (a message says for whom): for
    short shared work (data, splits, labels) that member jobs would otherwise do at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _held:
        yield
        return
    fd = _try_flock(path, fcntl.LOCK_EX)
    if fd is None:
        print(f"ekd: waiting for {_describe(_exclusive_holder(path))} to finish {what}", file=sys.stderr, flush=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:  # an interrupt while waiting
            os.close(fd)
            raise
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%H:%M:%S"), "command": what}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _held[key] = [fd, False, 1]
    try:
        yield
    finally:
        del _held[key]
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------------------------------
# atomic writes

_WRITE_FAILED = ("No space left on device", "Disk quota exceeded")
_NEARLY_FULL = 16 * 2**20  # bytes


def disk_full_error(exc: BaseException, path: Path) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` if ``exc`` is a write that failed for lack of
    space: errno ENOSPC / EDQUOT, or an error without errno (torch's C++ writer says
    ``basic_ios::clear`` or ``unexpected pos 704 vs 598``, measured on a full tmpfs with torch
    2.x) while the file system is (nearly) full. Call it before removing a partial file."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or any(s in str(exc) for s in _WRITE_FAILED):
        full = True
    elif isinstance(exc, OSError | RuntimeError) and code is None:
        try:
            full = shutil.disk_usage(path.parent).free < _NEARLY_FULL
        except OSError:
            full = False
    else:
        full = False
    if not full:
        return None
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        errno.ENOSPC,
        f"could not write {path}: the disk is full ({free} on {path.parent}); nothing already computed "
        "is lost (the previous file, if any, is unchanged): free some space and run the same command again",
        str(path),
    )


_tmp_count = itertools.count()


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a callback ``write(tmp)`` that writes the file
    named ``tmp``: numpy, h5py, matplotlib) to a temporary file next to ``path``, flush it to the
    disk and rename it into place: readers see the old file or the new one, never a part, also
    after a crash. On failure the temporary file is removed and the old file is unchanged; a full
    disk raises :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per process and call; the suffix stays last: numpy appends ".npz" to a name that
    # does not end in it
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{next(_tmp_count)}.tmp{path.suffix}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        elif isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            data(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename must not reach the disk before the content
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        full = disk_full_error(e, path) if isinstance(e, Exception) else None
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from e
        raise
    return path


def atomic_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text)


def atomic_json(path: str | os.PathLike, obj) -> Path:
    return atomic_text(path, json.dumps(obj, indent=1, sort_keys=True))


def create_once(path: str | os.PathLike, text: str) -> bool:
    """Write ``path`` only if it does not exist (also against a concurrent creator); True if
    this call created it."""
    path = Path(path)
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.link(tmp, path)  # fails if another process created it first
    except FileExistsError:
        return False
    except Exception as e:
        full = disk_full_error(e, path)
        if full is not None:
            raise full from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return True


# ------------------------------------------------------------------------------------------
# digests: what a stored result was computed from (16 hex digits of a SHA-256)


def bytes_digest(*chunks: bytes) -> str:
    """Digest of the concatenation of ``chunks``."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def canonical_json(obj, default: Callable | None = None) -> bytes:
    """``obj`` as JSON with sorted keys: the bytes that :func:`digest` hashes. default: as
    :func:`json.dumps` (None: anything not plain JSON is an error)."""
    return json.dumps(obj, sort_keys=True, default=default).encode()


def digest(obj, default: Callable | None = None) -> str:
    """Digest of plain data ``obj`` (key order does not matter)."""
    return bytes_digest(canonical_json(obj, default))


def file_sha256(path: str | os.PathLike) -> str:
    """The full SHA-256 (hex) of a file's bytes, read in blocks (model and data files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """Digest of a file's bytes (the first 16 hex digits of :func:`file_sha256`)."""
    return file_sha256(path)[:16]


def claim(directory: str | os.PathLike, inputs_digest: str, what: str, hint: str = "") -> None:
    """Bind ``directory`` to ``inputs_digest`` (its ``inputs.json``); raise :class:`RunDirError` if it
    already belongs to another digest. what: what the directory holds ("teacher member 0");
    hint: appended to the error (how to reuse what is there)."""
    directory = Path(directory)
    stamp = directory / "inputs.json"
    if stamp.exists():
        old = json.loads(stamp.read_text()).get("digest")
        if old != inputs_digest:
            raise RunDirError(
                f"{what} in {directory} was computed from a different configuration or data "
                f"(digest {old}, now {inputs_digest}); use a new --run-dir, or delete {directory} to recompute it{hint}"
            )
        return
    atomic_json(stamp, {"digest": inputs_digest, "what": what})


def without_added_defaults(fields: Mapping[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` without the entries of ``added`` (field -> default) that are at their default.

    For fields added to a digested record after results were stored: left out at their default,
    the record (and its digest) is what it was before the field existed, so that existing run
    directories and part files stay valid; set to anything else, it enters the digest. A default
    is compared after tuples become lists, as they do in JSON.
    """
    return {k: v for k, v in fields.items() if not (k in added and _plain(v) == _plain(added[k]))}


def _plain(value):
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------
# reading ekd's own torch files


def load_torch(path: str | os.PathLike, what: str, remedy: str):
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    what: what the file is ("checkpoint of teacher member 0"); remedy: what deleting or
    rewriting it does ("delete it to restart that member from scratch"). A file that is not a
    readable torch archive raises :class:`CorruptFileError`; one that holds Python objects other
    than tensors and plain data is refused (loading it could run code).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    size = path.stat().st_size
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        # torch words both a forbidden class and plain garbage as a weights_only failure
        if "Unsupported global" in str(e) or "Unsupported class" in str(e):
            raise CorruptFileError(
                f"{path}: {what} holds Python objects other than tensors and plain data; ekd refuses to "
                f"load it (unpickling it could run code). ekd never writes such a file: {remedy}"
            ) from None
        raise CorruptFileError(f"{path}: {what} is not readable (truncated or corrupt, {size} bytes); {remedy}") from e
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, AttributeError) as e:
        if isinstance(e, OSError) and e.errno not in (None, errno.EINVAL):
            raise  # permission, I/O error: not the file's content
        detail = "empty" if size == 0 else f"truncated or corrupt, {size} bytes"
        raise CorruptFileError(f"{path}: {what} is not readable ({detail}: {type(e).__name__}); {remedy}") from e


__all__ = [
    "LOCK_NAME",
    "CorruptFileError",
    "DiskFullError",
    "RunDirBusyError",
    "RunDirError",
    "atomic_json",
    "atomic_text",
    "atomic_write",
    "bytes_digest",
    "canonical_json",
    "claim",
    "create_once",
    "digest",
    "disk_full_error",
    "file_digest",
    "load_torch",
    "lock_dir",
    "wait_lock",
    "without_added_defaults",
]
