"""How ekd's processes wait between parallel regions (imported before torch; imports no torch).

torch's CPU build runs its intra-op threads on GNU OpenMP (libgomp). By default libgomp's idle
threads *spin* for up to ~300,000 iterations (milliseconds) after each parallel region before they
sleep. A model evaluation is hundreds of short regions (every elementwise op on more than 32k
numbers, every GEMM, every ekd op), so when another process loads one of the cores a spinning
thread holds the core the busy thread needs, and each region ends by waiting for a scheduler time
slice. Measured on a 2-core machine with one busy process alongside (bench/kernels.py --load):
molecule-batch inference of the paper's model took 0.8-2.4 s at 2 threads with spinning waits,
0.08-0.16 s with passive ones (1 thread: 0.06-0.14 s). Spinning does pay on an idle machine for
calls made of many short regions: molecule-batch inference at 2 threads took 0.76 of the 1-thread
time with ``GOMP_SPINCOUNT=3000`` against 0.89-1.16 with passive waits, but 2.3x the 1-thread time
(30,000: 3.75x) with a busy process on the other core. ekd takes the choice that never falls off
that cliff; on a machine of your own, set ``GOMP_SPINCOUNT`` (README, Performance).

libgomp reads its wait policy once, when it is loaded (``import torch``), so the default has to be
in the environment before that: :func:`prefer_passive_waits` runs when ``ekd`` is imported and
sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy (``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT``) or libgomp is already loaded. Child processes (LAMMPS, training workers)
inherit it. Where ekd sets a thread count above one and the policy could not be set,
:func:`check_wait_policy` says so once.
"""

from __future__ import annotations

import os
import sys
import warnings

#: environment variables by which a user chooses libgomp's wait behaviour (never overridden)
USER_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

_state: str | None = None  # "set" | "user" | "too-late"
_warned = False


def _libgomp_loaded() -> bool:
    """True when libgomp is mapped into this process (it then has read its environment)."""
    try:
        with open("/proc/self/maps") as f:
            return "libgomp" in f.read()
    except OSError:  # not Linux: torch loaded is the best sign we have
        return "torch" in sys.modules


def prefer_passive_waits() -> str:
    """Make idle OpenMP threads sleep instead of spin, if that is still possible and not the
    user's choice. Returns "user" (a policy variable is set: left alone), "set" (OMP_WAIT_POLICY
    set to PASSIVE now) or "too-late" (libgomp was already loaded with its default policy)."""
    global _state
    if any(v in os.environ for v in USER_POLICY_VARS):
        _state = "user"
    elif _libgomp_loaded():
        _state = "too-late"
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        _state = "set"
    return _state


def wait_policy_state() -> str | None:
    """What :func:`prefer_passive_waits` found at ekd's import (None if it has not run)."""
    return _state


def check_wait_policy(threads: int, where: str) -> None:
    """Warn once when ``where`` runs torch on ``threads`` > 1 threads with spinning waits."""
    global _warned
    if threads <= 1 or _state != "too-late" or _warned:
        return
    _warned = True
    warnings.warn(
        f"{where}: {threads} threads with OpenMP's default spinning waits (torch was imported before ekd): "
        "a process busy on another core can make each call many times slower than with 1 thread. "
        "Import ekd before torch, or set OMP_WAIT_POLICY=PASSIVE in the environment",
        RuntimeWarning,
        stacklevel=3,
    )


def cpu_seconds_per_thread() -> dict[str, float]:
    """{thread id: CPU seconds so far} of this process's threads (Linux:
    /proc/self/task/*/schedstat; {} where that does not exist). For benches and tests that check
    how work is spread over threads."""
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0]) / 1e9
        except OSError:  # the thread ended meanwhile
            pass
    return out
