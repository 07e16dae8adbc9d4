"""Files that ekd writes in place: lock files, logs appended on resume, the trust registry.

They are opened without following symbolic links and must be regular files with one name: a
lock file that is a link (copied from elsewhere, or planted) would otherwise have its target
truncated (issue 24). Everything else is written whole to a new temporary file and renamed into
place (:func:`ekd.store.atomic_write`), which replaces a link instead of writing through it.

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
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".ekd.lock"


class RunDirBusyError(RuntimeError):
    """Another process holds the lock of a run (or member) directory."""


class UnsafeFileError(RuntimeError):
    """A file that ekd writes in place is a symbolic link, has other names, or is not a regular file."""


# ------------------------------------------------------------------------------------------
# files written in place


def open_in_place(path: str | os.PathLike, flags: int, what: str, fix: str = "", mode: int = 0o644) -> int:
    """A descriptor of ``path`` opened with ``flags`` (``os.O_*``) for writing in place, refusing
    what writing there would damage elsewhere: a symbolic link (its target would be written), a
    file with other hard links (so would they), anything but a regular file (a FIFO would block,
    a device would be written). Raises :class:`UnsafeFileError` naming ``what`` and ``path``.

    fix: what the user should do (default: remove it)."""
    path = Path(path)
    fix = fix or f"remove it (`rm {path}`) and run the same command again"
    # O_NONBLOCK: opening a FIFO for writing would wait for a reader; O_NOFOLLOW: a link is ELOOP
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            try:
                target = f" (to {os.readlink(path)})"
            except OSError:
                target = ""
            raise UnsafeFileError(
                f"{what} {path} is a symbolic link{target}; ekd writes it in place and does not follow links "
                f"(that would overwrite the link's target): {fix}"
            ) from None
        if e.errno in (errno.EISDIR, errno.ENXIO):
            raise UnsafeFileError(f"{what} {path} is not a regular file (a directory, FIFO or socket): {fix}") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{what} {path} is not a regular file (mode {stat.filemode(info.st_mode)}): {fix}")
        if info.st_nlink > 1:
            raise UnsafeFileError(
                f"{what} {path} has {info.st_nlink} hard links (other names for the same file, e.g. a run "
                f"directory copied with `cp -l`); ekd writes it in place and would change them too: {fix}"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_line(path: str | os.PathLike, line: str, what: str = "log") -> None:
    """Append ``line`` (and a newline) to ``path`` (created if missing) through
    :func:`open_in_place`: a log that is a link is refused, not written through."""
    fix = f"replace it with a copy of its own (`cp {path} {path}.copy && mv {path}.copy {path}`) or remove it"
    fd = open_in_place(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what, fix)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------
# locks

# lock file (resolved) -> [fd, shared, count]: what this process holds
_held: dict[str, list] = {}


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(argv)[:200]


def _read_record(path: Path, fd: int | None = None) -> dict | None:
    """The holder recorded in lock file ``path`` (read through ``fd`` when given)."""
    try:
        own = fd is None
        if own:
            fd = open_in_place(path, os.O_RDONLY, "lock file")
        try:
            text = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
        finally:
            if own:
                os.close(fd)
        return json.loads(text) if text else None
    except (OSError, ValueError, UnsafeFileError):
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


def _open_lock(path: Path) -> int:
    return open_in_place(path, os.O_RDWR | os.O_CREAT, "lock file")


def _lock_key(path: Path) -> str:
    # the directory resolved, not the file: a lock file that is a link must not be followed
    return str(path.parent.resolve() / path.name)


def _try_flock(path: Path, mode: int) -> int | None:
    """A new descriptor of ``path`` locked with ``mode`` (LOCK_EX / LOCK_SH), or None if busy."""
    fd = _open_lock(path)
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
        if _lock_key(lock) in _held:
            continue
        try:
            fd = _try_flock(lock, fcntl.LOCK_EX)
        except (UnsafeFileError, OSError) as e:
            out.append(f"{lock.parent.relative_to(run_dir)}: {e}")
            continue
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
    key = _lock_key(path)
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
        stale = _read_record(path, fd)
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
    key = _lock_key(path)
    if key in _held:
        yield
        return
    fd = _try_flock(path, fcntl.LOCK_EX)
    if fd is None:
        print(f"ekd: waiting for {_describe(_exclusive_holder(path))} to finish {what}", file=sys.stderr, flush=True)
        fd = _open_lock(path)
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


__all__ = ["LOCK_NAME", "RunDirBusyError", "UnsafeFileError", "append_line", "lock_dir", "open_in_place", "wait_lock"]
