"""How ``ekd`` reports an error: one line for what ekd expects (a bad input, a busy run directory,
a full disk), a traceback and a request to report it for anything else (a bug)."""

from __future__ import annotations

import errno
import re
import traceback
from pathlib import Path

#: ekd's own source directory: a ``raise`` there is a message for the user
EKD_DIR = str(Path(__file__).resolve().parent.parent)


def innermost(exc: BaseException) -> tuple[str, str]:
    """(file, source line) of the frame that raised ``exc``; for an exception re-raised from a
    worker process (concurrent.futures), the worker's frame."""
    remote = getattr(exc.__cause__, "tb", None)
    if isinstance(remote, str):
        frames = re.findall(r'File "([^"]+)", line \d+, in [^\n]*\n\s*([^\n]*)', remote)
        if frames:
            return frames[-1]
    tb = traceback.extract_tb(exc.__traceback__)
    return (tb[-1].filename, tb[-1].line or "") if tb else ("", "")


def expected(exc: BaseException) -> bool:
    """An error that ekd reports on purpose (a message for the user), not a bug: one of ekd's
    own error classes, an OS error (file system, full disk), or a ValueError / RuntimeError /
    FloatingPointError that a ``raise`` statement in ekd's code raised."""
    if type(exc).__module__.split(".")[0] == "ekd" or isinstance(exc, OSError):
        return True
    if isinstance(exc, ValueError | RuntimeError | FloatingPointError):
        file, line = innermost(exc)
        return str(Path(file).resolve()).startswith(EKD_DIR) and line.lstrip().startswith("raise")
    return False


def message(exc: BaseException) -> str:
    """``exc`` as one line, with the file it names and what to do about a full disk."""
    from ..store import disk_full_error

    filename = getattr(exc, "filename", None)
    # errno only: a write through ekd.store.atomic_write has already been told apart
    nospace = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    full = disk_full_error(exc, Path(filename or ".")) if nospace else None
    if full is not None and filename:
        text = str(full)
    elif full is not None:
        # e.g. h5py: the file name is inside a long message
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        text = (
            f"the disk is full ({first}); nothing already computed is lost: "
            "free some space and run the same command again"
        )
    else:
        text = str(exc)
    if isinstance(exc, OSError) and filename and str(filename) not in text:
        text += f": {filename}"
    # one line: a multi-line message is joined
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__
