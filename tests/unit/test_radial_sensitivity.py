"""ekd::radial_sensitivity (csrc/cpu/radial.cpp): hippynn's Inverse/GaussianSensitivityModule
with CosCutoff as one fused CPU op, against the ATen formula ekd.ops.kernels.sensitivity used before
(and still uses for GPU tensors and other cutoffs), which test_kernels.py compares with hippynn."""

from __future__ import annotations

import math

import pytest
import torch

from ekd.ops.kernels import _fused_applies, _sensitivity_formula, sensitivity
from ekd.ops.library import ops

from .test_kernels import pair_geometry, periodic_box

KINDS = ("InverseSensitivityModule", "GaussianSensitivityModule")


@pytest.fixture
def hs(monkeypatch):
    from ekd.training.models import _import_hippynn

    hippynn = _import_hippynn()
    monkeypatch.setattr(hippynn.settings, "WARN_LOW_DISTANCES", False)
    from hippynn.layers.hiplayers import sensitivity as hs

    return hs


def paper_module(hs, kind, dtype, seed=0):
    """The paper's sensitivities (20, 0.75 - 5.5 A, hard cutoff 6.5 A), parameters moved off their
    initial values as training would (mu and sigma differ per sensitivity)."""
    module = getattr(hs, kind)(20, 0.75, 5.5, 6.5).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.mu.mul_(1 + 0.05 * torch.randn(module.mu.shape, generator=gen, dtype=dtype))
        module.sigma.mul_(1 + 0.3 * torch.rand(module.sigma.shape, generator=gen, dtype=dtype))
    return module


def box_distances(dtype):
    pos, pf, ps, offsets = periodic_box(cutoff=6.5, dtype=dtype)
    return pair_geometry(pos, pf, ps, offsets)[1]


def op(dist, module):
    return ops.radial_sensitivity(dist, module.mu, module.sigma, float(module.cutoff.hard_max_dist))


@pytest.mark.parametrize("kind", KINDS)
def test_float64_forward_equals_the_formula_in_every_regime(hs, kind):
    module = paper_module(hs, kind, torch.float64)
    dist = torch.cat([torch.linspace(0.2, 8.0, 2001, dtype=torch.float64), box_distances(torch.float64)])
    expected = _sensitivity_formula(module, dist)
    got = sensitivity(module, dist)
    assert _fused_applies(module, dist)
    lowest = math.log(2 * torch.finfo(torch.float64).tiny)
    arg = -0.5 * (dist[:, None] ** -1 - module.mu**-1) ** 2 / module.sigma**-2
    assert (dist > 6.5).any() and (dist < module.mu.min()).any()  # beyond the cutoff, below the range
    assert (arg < lowest).any() and ((arg > lowest) & (dist[:, None] < 6.5)).any()  # clamped and not
    # relative 1e-12; absolute only below the smallest normal number (subnormal products of the clamp)
    tiny = torch.finfo(torch.float64).tiny
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-12, atol=4 * tiny)
    assert (got[dist > 6.5] == 0).all()


def test_float32_forward_and_backward_agree_with_the_formula(hs):
    module = paper_module(hs, "InverseSensitivityModule", torch.float32)
    dist = box_distances(torch.float32).requires_grad_(True)
    got, expected = sensitivity(module, dist), _sensitivity_formula(module, dist)
    # exp and cos differ from torch's vectorised ones by an ulp or two
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=4 * torch.finfo(torch.float32).tiny)
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((got * w).sum(), [dist, module.mu, module.sigma])
    refs = torch.autograd.grad((expected * w).sum(), [dist, module.mu, module.sigma])
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5 * float(r.abs().max()))


@pytest.mark.parametrize("kind", KINDS)
def test_fused_backward_equals_the_formulas_gradient(hs, kind):
    module = paper_module(hs, kind, torch.float64, seed=2)
    dist = torch.cat([torch.linspace(0.3, 7.0, 500, dtype=torch.float64), box_distances(torch.float64)])
    dist.requires_grad_(True)
    w = torch.randn(dist.shape[0], 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = [dist, module.mu, module.sigma]
    grads = torch.autograd.grad((sensitivity(module, dist) * w).sum(), params)
    refs = torch.autograd.grad((_sensitivity_formula(module, dist) * w).sum(), params)
    # the two terms of d/dr nearly cancel at some distances: compare on the scale of the gradient
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-13 * float(r.abs().max()))


def small_inputs(sigma_scale):
    """A few distances around and beyond a 5 A cutoff, 4 sensitivities; with sigma_scale=10 some
    entries are clamped. Nothing within 1e-3 of the cutoff (where the cutoff's 2nd derivative jumps)."""
    dist = torch.tensor([0.6, 0.9, 1.3, 1.7, 2.2, 2.9, 3.4, 4.1, 4.6, 4.95, 5.3, 6.0], dtype=torch.float64)
    mu = torch.tensor([[1.0, 1.8, 2.7, 4.0]], dtype=torch.float64)
    sigma = sigma_scale * torch.tensor([[1.7, 2.3, 3.1, 2.6]], dtype=torch.float64)
    return [t.clone().requires_grad_(True) for t in (dist, mu, sigma)]


@pytest.mark.parametrize("sigma_scale", [1.0, 10.0])
def test_gradcheck_and_gradgradcheck(sigma_scale):
    dist, mu, sigma = small_inputs(sigma_scale)
    if sigma_scale > 1:
        arg = -0.5 * (dist[:, None] ** -1 - mu**-1) ** 2 / sigma**-2
        assert (arg < math.log(2 * torch.finfo(torch.float64).tiny)).any(), "some entries should be clamped"

    def fn(d, m, s):
        return ops.radial_sensitivity(d, m, s, 5.0)

    # first derivatives: the fused kernel; second: the ATen-op derivative (create_graph)
    assert torch.autograd.gradcheck(fn, (dist, mu, sigma))
    assert torch.autograd.gradgradcheck(fn, (dist, mu, sigma))


def test_only_the_requested_gradients_are_computed():
    dist, mu, sigma = small_inputs(1.0)
    g = torch.randn(dist.shape[0], 4, dtype=torch.float64)
    full = ops.radial_sensitivity_backward(g, dist, mu, sigma, 5.0, [True, True, True])
    for mask in ([True, False, False], [False, True, False], [False, False, True], [False, True, True]):
        part = ops.radial_sensitivity_backward(g, dist, mu, sigma, 5.0, mask)
        for wanted, p, f in zip(mask, part, full, strict=True):
            if wanted:
                assert torch.equal(p, f)
            else:
                assert p is None
    assert full[1].shape == mu.shape and full[2].shape == sigma.shape
    # a vector mu / sigma gives vector gradients
    flat = ops.radial_sensitivity_backward(g, dist, mu[0], sigma[0], 5.0, [True, True, True])
    assert flat[1].shape == (4,) and torch.equal(flat[1], full[1][0])


@pytest.mark.parametrize("kind", KINDS)
def test_force_training_double_backward_equals_the_formula(hs, kind):
    """A HIPNN-like energy from sensitivities, forces by autograd with create_graph and a force
    loss differentiated wrt the sensitivity parameters and the positions, as force training does."""
    module = paper_module(hs, kind, torch.float64, seed=4)
    pos, pf, ps, offsets = periodic_box(cutoff=6.5, dtype=torch.float64)
    weights = torch.randn(20, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss_grads(fn):
        x = pos.clone().requires_grad_(True)
        dist = pair_geometry(x, pf, ps, offsets)[1]
        energy = torch.tanh(fn(module, dist) @ weights).sum()
        (forces,) = torch.autograd.grad(-energy, x, create_graph=True)
        loss = (forces**2).sum()
        return torch.autograd.grad(loss, [module.mu, module.sigma, x])

    for g, r in zip(loss_grads(sensitivity), loss_grads(_sensitivity_formula), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-11 * float(r.abs().max()))


def test_one_and_two_threads_give_identical_bits():
    from ekd import _C

    gen = torch.Generator().manual_seed(6)
    n_pairs, n_sens = 60_000, 20
    dist = (0.5 + 6.5 * torch.rand(n_pairs, generator=gen)).requires_grad_(True)
    mu = (1 + 4 * torch.rand(1, n_sens, generator=gen)).requires_grad_(True)
    sigma = (2 + 20 * torch.rand(1, n_sens, generator=gen)).requires_grad_(True)
    w = torch.randn(n_pairs, n_sens, generator=gen)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            if threads == 2:
                assert _C.parallel_plan(n_pairs * n_sens * 8, n_pairs)[0] == 2, "the test should use 2 threads"
            out = ops.radial_sensitivity(dist, mu, sigma, 6.5)
            results.append([out, *torch.autograd.grad((out * w).sum(), [dist, mu, sigma])])
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_zero_pairs():
    dist = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    mu = torch.ones(1, 3, dtype=torch.float64, requires_grad=True)
    sigma = torch.ones(1, 3, dtype=torch.float64, requires_grad=True)
    out = ops.radial_sensitivity(dist, mu, sigma, 5.0)
    assert out.shape == (0, 3)
    gd, gm, gs = torch.autograd.grad(out.sum(), [dist, mu, sigma])
    assert gd.shape == (0,) and torch.equal(gm, torch.zeros_like(mu)) and torch.equal(gs, torch.zeros_like(sigma))


def test_bad_inputs_name_the_argument():
    dist = torch.linspace(1, 4, 5, dtype=torch.float64)
    mu = torch.ones(1, 3, dtype=torch.float64)
    sigma = torch.ones(1, 3, dtype=torch.float64)
    f = ops.radial_sensitivity
    with pytest.raises(RuntimeError, match="`dist` must have dtype Float or Double, got Long"):
        f(dist.long(), mu, sigma, 5.0)
    with pytest.raises(RuntimeError, match=r"`dist` must be a vector of pair distances .* got shape \[5, 1\]"):
        f(dist[:, None], mu, sigma, 5.0)
    with pytest.raises(RuntimeError, match=r"`mu` must be 1 x n_sensitivities .* got shape \[2, 3\]"):
        f(dist, mu.expand(2, 3), sigma, 5.0)
    with pytest.raises(RuntimeError, match=r"`sigma` must have the shape of `mu` \[1, 3\], got shape \[1, 4\]"):
        f(dist, mu, torch.ones(1, 4, dtype=torch.float64), 5.0)
    with pytest.raises(RuntimeError, match="`mu` has dtype Float but `dist` has dtype Double"):
        f(dist, mu.float(), sigma, 5.0)
    for bad in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match="`hard_max` .* must be a finite positive number"):
            f(dist, mu, sigma, bad)
    with pytest.raises(RuntimeError, match=r"`grad` must be n_pairs x n_sensitivities \[5, 3\], got shape \[5, 2\]"):
        ops.radial_sensitivity_backward(torch.ones(5, 2, dtype=torch.float64), dist, mu, sigma, 5.0, [True] * 3)


def test_opcheck():
    dist, mu, sigma = small_inputs(1.0)
    torch.library.opcheck(torch.ops.ekd.radial_sensitivity.default, (dist, mu, sigma, 5.0))


def test_other_cutoffs_and_mixed_dtypes_keep_the_formula(hs):
    class ShiftedCos(hs.CosCutoff):
        def forward(self, dist):
            return super().forward(dist) * 0.5

    module = paper_module(hs, "InverseSensitivityModule", torch.float64)
    dist = box_distances(torch.float64)
    assert _fused_applies(module, dist)
    assert not _fused_applies(module, dist.float())
    module.cutoff = ShiftedCos(6.5)
    assert not _fused_applies(module, dist)
    # hippynn's own forward underflows to 0 where the formula's clamp leaves ~2 tiny
    tiny = torch.finfo(torch.float64).tiny
    torch.testing.assert_close(sensitivity(module, dist), module(dist), rtol=0, atol=2 * tiny)


@pytest.mark.parametrize("sigma_scale", [1.0, 10.0])
def test_ds_dr_op_and_its_second_derivatives(sigma_scale):
    """radial_sensitivity_dr (the first derivative force training differentiates again) equals
    ds/dr column by column, and its fused backward passes gradcheck wrt dist, mu and sigma."""
    dist, mu, sigma = small_inputs(sigma_scale)
    dr = ops.radial_sensitivity_dr(dist, mu, sigma, 5.0)
    for n in range(mu.shape[1]):
        (col,) = torch.autograd.grad(_formula(dist, mu, sigma, 5.0)[:, n].sum(), dist)
        torch.testing.assert_close(dr[:, n], col, rtol=1e-13, atol=1e-300)
    assert torch.autograd.gradcheck(lambda d, m, s: ops.radial_sensitivity_dr(d, m, s, 5.0), (dist, mu, sigma))


def test_forces_under_create_graph_take_the_ds_dr_op():
    dist, mu, sigma = small_inputs(1.0)
    mu.requires_grad_(False)
    sigma.requires_grad_(False)
    with torch.autograd.profiler.profile() as prof:
        torch.autograd.grad(ops.radial_sensitivity(dist, mu, sigma, 5.0).sum(), dist, create_graph=True)
    assert "ekd::radial_sensitivity_dr" in {e.name for e in prof.function_events}
    # second order through it: gradgradcheck wrt dist alone (mu, sigma fixed) uses this path
    assert torch.autograd.gradgradcheck(lambda d: ops.radial_sensitivity(d, mu, sigma, 5.0), (dist,))

    # third order (ATen ops) equals the formula's, wrt dist, mu and sigma
    def third(fn):
        x, m, s = (t.detach().clone().requires_grad_(True) for t in (dist, mu, sigma))
        (f,) = torch.autograd.grad(fn(x, m, s).sum(), x, create_graph=True)
        second = torch.autograd.grad((f**2).sum(), [x, m, s], create_graph=True)
        return torch.autograd.grad(sum((g**2).sum() for g in second), [x, m, s])

    expected = third(lambda x, m, s: _formula(x, m, s, 5.0))
    got = third(lambda x, m, s: ops.radial_sensitivity(x, m, s, 5.0))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-11 * float(e.abs().max()))


def _formula(dist, mu, sigma, hard):
    """ekd.ops.kernels._sensitivity_formula for bare tensors with hippynn's CosCutoff."""
    nondim = (dist.unsqueeze(1) ** -1 - mu**-1) ** 2 / (sigma**-2)
    base = torch.exp((-0.5 * nondim).clamp(min=math.log(2 * torch.finfo(dist.dtype).tiny)))
    cut = torch.cos(math.pi / 2 * dist / hard) ** 2 * (dist <= hard).to(dist.dtype)
    return base * cut.unsqueeze(1)
