"""Thread policy: OpenMP threads sleep between parallel regions unless the user chose otherwise,
and ekd's kernels use a second thread only for enough work (no timed tests: the policy itself)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ekd.ops import threads as _threads
from ekd.ops.library import _C

PROBE = (
    "import os, sys\n"
    "{pre}\n"
    "import ekd, ekd.ops.threads as t\n"
    "print(t.wait_policy_state(), os.environ.get('OMP_WAIT_POLICY'))\n"
)


def _probe(pre="", **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in _threads.USER_POLICY_VARS}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(pre=pre)], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_importing_ekd_first_makes_openmp_waits_passive():
    assert _probe() == ["set", "PASSIVE"]


def test_a_users_wait_policy_is_left_alone():
    assert _probe(OMP_WAIT_POLICY="ACTIVE") == ["user", "ACTIVE"]
    assert _probe(GOMP_SPINCOUNT="1000") == ["user", "None"]


def test_torch_imported_first_is_detected_not_papered_over():
    assert _probe(pre="import torch") == ["too-late", "None"]


def test_check_wait_policy_warns_once_for_threads_with_spinning_waits(monkeypatch):
    monkeypatch.setattr(_threads, "_state", "too-late")
    monkeypatch.setattr(_threads, "_warned", False)
    with pytest.warns(RuntimeWarning, match="OMP_WAIT_POLICY=PASSIVE"):
        _threads.check_wait_policy(2, "train")
    _threads.check_wait_policy(2, "train")  # once only: a second call is silent (filterwarnings=error)
    monkeypatch.setattr(_threads, "_warned", False)
    _threads.check_wait_policy(1, "train")  # one thread never waits


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_kernels_stay_on_one_thread(two_threads):
    # a tiny call: a parallel region would cost more than the work
    assert _C.parallel_plan(1000, 100) == (1, 1)
    assert _C.parallel_plan(1 << 20, 100) == (1, 1)
    # the box's envsum (~3e5 pairs x 20 x 128) uses both threads, in more chunks than threads
    threads, chunks = _C.parallel_plan(300_000 * 20 * 128, 3136)
    assert threads == 2 and chunks > 2
    # never more chunks than atoms
    assert _C.parallel_plan(1 << 30, 3)[1] == 3


def test_one_thread_runs_one_chunk():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _C.parallel_plan(1 << 30, 3136) == (1, 1)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's per-thread CPU times")
@pytest.mark.parametrize("name", ["tensor_envsum", "tensor_sensesum", "envsum", "sensesum", "featsum"])
def test_large_kernels_run_on_two_threads(name, two_threads):
    """The plan above is carried out: a large call puts work on a second thread. (ekd's kernels were
    once compiled without OpenMP, where at::parallel_for silently runs on the calling thread.)
    CPU time, not wall time: it holds on a loaded machine too."""
    from ekd.ops.library import ops

    gen = torch.Generator().manual_seed(0)
    n_atoms, n_pairs, n_sens, n_comp, n_feat = 600, 24_000, 20, 9, 64
    first = torch.randint(0, n_atoms, (n_pairs,), generator=gen)
    second = torch.randint(0, n_atoms, (n_pairs,), generator=gen)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    args = {
        "tensor_envsum": (r(n_pairs, n_comp), r(n_pairs, n_sens), r(n_atoms, n_sens, n_feat)),
        "tensor_sensesum": (r(n_pairs, n_comp), r(n_atoms, n_comp, n_feat), r(n_atoms, n_sens, n_feat)),
        "envsum": (r(n_pairs, n_sens), r(n_atoms, n_feat)),
        "sensesum": (r(n_atoms, n_sens, n_feat), r(n_atoms, n_feat)),
        "featsum": (r(n_atoms, n_sens, n_feat), r(n_pairs, n_sens)),
    }[name]
    op = getattr(ops, name)
    assert _C.parallel_plan(n_pairs * n_sens * n_feat, n_atoms)[0] == 2
    op(*args, first, second)  # warm-up: the OpenMP team exists
    before = _threads.cpu_seconds_per_thread()
    for _ in range(5):
        op(*args, first, second)
    after = _threads.cpu_seconds_per_thread()
    busy = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    assert len(busy) >= 2 and busy[1] > 0.2 * busy[0], f"CPU seconds per thread: {busy[:3]}"
