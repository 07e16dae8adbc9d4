"""Run-directory plumbing: atomic writes that say when the disk is full, digests of what a
stored result was computed from (and directories bound to one), and loading of ekd's own torch
files with errors that name the file. Locks (one process per run directory, or per member) and
the other files written in place live in :mod:`ekd.locks`; their names are re-exported here.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .locks import LOCK_NAME, RunDirBusyError, UnsafeFileError, append_line, lock_dir, open_in_place, wait_lock


class RunDirError(RuntimeError):
    """A run directory holds results of a different configuration."""


class DiskFullError(OSError):
    """A write failed for lack of space; the destination file is unchanged."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class CorruptFileError(ValueError):
    """A file that ekd wrote earlier cannot be read back (truncated, emptied, overwritten)."""


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


def write_new(tmp: Path, data: bytes) -> None:
    """Write a temporary file of ours: one left by a process with the same PID (or planted under
    its name) is removed first, never written through."""
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


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
        if isinstance(data, bytes | str):
            write_new(tmp, data if isinstance(data, bytes) else data.encode("utf-8"))
        else:
            tmp.unlink(missing_ok=True)  # writers open by name: nothing there to write through
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
        write_new(tmp, text.encode())
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
    "UnsafeFileError",
    "append_line",
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
    "open_in_place",
    "wait_lock",
    "without_added_defaults",
    "write_new",
]
