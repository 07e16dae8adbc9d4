"""HIPNN interaction ops (torch.ops.ekd.envsum / sensesum / featsum / tensor_envsum /
tensor_sensesum) against the pure-torch oracle in ekd.testing.reference, and their use by hippynn.

Real inputs: ASE's G2 geometries (ase.build.molecule) and a periodic box of them, pairs from
ekd's own neighbor list; sensitivities from the distances with a smooth cutoff.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import molecule

from ekd.ops.library import neighbor_list, ops
from ekd.testing import reference as ref

FLOATS = (torch.float32, torch.float64)
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


# ------------------------------------------------------------------------------------------------
# Inputs


def _random_pairs(n_atoms, n_pairs, gen):
    return (torch.randint(0, n_atoms, (n_pairs,), generator=gen), torch.randint(0, n_atoms, (n_pairs,), generator=gen))


def op_args(name, n_atoms=7, n_pairs=40, n_sens=5, n_feat=19, n_comp=9, dtype=torch.float64, pairs=None, seed=0):
    """Arguments of op `name` (floats first, then pair_first, pair_second)."""
    gen = torch.Generator().manual_seed(seed)
    pf, ps = _random_pairs(n_atoms, n_pairs, gen) if pairs is None else pairs
    n_pairs = pf.shape[0]

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    floats = {
        "envsum": (r(n_pairs, n_sens), r(n_atoms, n_feat)),
        "sensesum": (r(n_atoms, n_sens, n_feat), r(n_atoms, n_feat)),
        "featsum": (r(n_atoms, n_sens, n_feat), r(n_pairs, n_sens)),
        "tensor_envsum": (r(n_pairs, n_comp), r(n_pairs, n_sens), r(n_atoms, n_sens, n_feat)),
        "tensor_sensesum": (r(n_pairs, n_comp), r(n_atoms, n_comp, n_feat), r(n_atoms, n_sens, n_feat)),
    }[name]
    return (*floats, pf, ps)


OPS = ("envsum", "sensesum", "featsum", "tensor_envsum", "tensor_sensesum")
PER_PAIR_OUTPUT = {"sensesum", "tensor_sensesum"}


def run(name, args):
    return getattr(ops, name)(*args)


def oracle(name, args):
    return getattr(ref, f"{name}_reference")(*(a.double() if a.is_floating_point() else a for a in args))


def _structures():
    names = ["CH4", "H2O", "NH3", "CH3OH", "HCOOH", "CH3NO2", "CH3ONO", "C2H4"]
    return [molecule(n) for n in names]


def molecule_batch(cutoff=3.0, dtype=torch.float64):
    """Positions [N, 3], pair_first, pair_second and distances of a batch of G2 molecules."""
    mols = _structures()
    pos = torch.tensor(np.concatenate([m.positions for m in mols]), dtype=dtype)
    batch = torch.cat([torch.full((len(m),), k, dtype=torch.long) for k, m in enumerate(mols)])
    cells = torch.zeros(len(mols), 3, 3, dtype=dtype)
    pbc = torch.zeros(len(mols), 3, dtype=torch.bool)
    pf, ps, shifts = neighbor_list(pos, cutoff, cells, pbc, batch=batch)
    assert shifts.abs().sum() == 0
    return pos, pf, ps, torch.zeros(pf.shape[0], 3, dtype=dtype)


def periodic_box(cutoff=4.0, dtype=torch.float64):
    """Eight G2 molecules on a 2x2x2 lattice in a 9 Angstrom periodic cube (images across faces)."""
    mols = _structures()
    rng = np.random.default_rng(3)
    parts = []
    for k, m in enumerate(mols):
        corner = 4.5 * np.array([(k >> 0) & 1, (k >> 1) & 1, (k >> 2) & 1], dtype=float)
        parts.append(m.positions - m.positions.mean(0) + corner + rng.uniform(-0.3, 0.3, 3))
    pos = torch.tensor(np.concatenate(parts), dtype=dtype)
    cell = 9.0 * torch.eye(3, dtype=dtype)
    pf, ps, shifts = neighbor_list(pos, cutoff, cell, True)
    assert (shifts != 0).any(), "the box should have pairs across periodic faces"
    return pos, pf, ps, shifts.to(dtype) @ cell


def pair_geometry(pos, pf, ps, offsets):
    coord = pos[ps] - pos[pf] + offsets
    return coord, coord.norm(dim=1)


def sensitivities(dist, n_sens=6, cutoff=4.0):
    mu = torch.linspace(0.8, cutoff - 0.5, n_sens, dtype=dist.dtype)
    cut = torch.where(dist < cutoff, torch.cos(0.5 * torch.pi * dist / cutoff) ** 2, torch.zeros_like(dist))
    return torch.exp(-((dist[:, None] - mu) ** 2)) * cut[:, None]


# ------------------------------------------------------------------------------------------------
# Forward against the oracle


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", OPS)
def test_random_inputs_match_reference(name, dtype):
    for shape in (dict(), dict(n_atoms=1, n_pairs=3), dict(n_feat=64, n_sens=20, n_pairs=300, n_atoms=30)):
        args = op_args(name, dtype=dtype, **shape)
        out = run(name, args)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), oracle(name, args), **TOL[dtype])


@pytest.mark.parametrize("source", ["molecules", "periodic box"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_real_inputs_match_reference(source, dtype):
    pos, pf, ps, offsets = (molecule_batch if source == "molecules" else periodic_box)(dtype=dtype)
    coord, dist = pair_geometry(pos, pf, ps, offsets)
    sens = sensitivities(dist)
    n_atoms = pos.shape[0]
    gen = torch.Generator().manual_seed(1)
    feat = torch.randn(n_atoms, 16, generator=gen, dtype=torch.float64).to(dtype)
    env = ops.envsum(sens, feat, pf, ps)
    torch.testing.assert_close(env.double(), ref.envsum_reference(sens.double(), feat.double(), pf, ps), **TOL[dtype])
    torch.testing.assert_close(
        ops.sensesum(env, feat, pf, ps).double(),
        ref.sensesum_reference(env.double(), feat.double(), pf, ps),
        **TOL[dtype],
    )
    torch.testing.assert_close(
        ops.featsum(env, sens, pf, ps).double(),
        ref.featsum_reference(env.double(), sens.double(), pf, ps),
        **TOL[dtype],
    )
    from ekd.ops.kernels import tensor_components

    t = tensor_components(coord, dist, 2)
    q = torch.randn(n_atoms, sens.shape[1], 16, generator=gen, dtype=torch.float64).to(dtype)
    torch.testing.assert_close(
        ops.tensor_envsum(t, sens, q, pf, ps).double(),
        ref.tensor_envsum_reference(t.double(), sens.double(), q.double(), pf, ps),
        **TOL[dtype],
    )


# ------------------------------------------------------------------------------------------------
# Autograd (C++), first and second order


@pytest.mark.parametrize("name", OPS)
def test_gradcheck_and_gradgradcheck(name):
    args = op_args(name, n_atoms=5, n_pairs=12, n_sens=3, n_feat=4, n_comp=4)
    floats = [a.clone().requires_grad_(True) for a in args[:-2]]
    inputs = (*floats, *args[-2:])
    assert torch.autograd.gradcheck(lambda *x: run(name, x), inputs)
    assert torch.autograd.gradgradcheck(lambda *x: run(name, x), inputs)


@pytest.mark.parametrize("name", OPS)
def test_gradients_match_reference(name):
    args = op_args(name, n_atoms=6, n_pairs=20, n_sens=4, n_feat=5)
    floats = [a.clone().requires_grad_(True) for a in args[:-2]]
    floats_ref = [a.clone().requires_grad_(True) for a in args[:-2]]
    out = run(name, (*floats, *args[-2:]))
    out_ref = getattr(ref, f"{name}_reference")(*floats_ref, *args[-2:])
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), floats, create_graph=True)
    grads_ref = torch.autograd.grad((out_ref * w).sum(), floats_ref, create_graph=True)
    for g, gr in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, gr)
    # a second derivative, as force training takes it
    second = torch.autograd.grad(sum((g**2).sum() for g in grads), floats)
    second_ref = torch.autograd.grad(sum((g**2).sum() for g in grads_ref), floats_ref)
    for g, gr in zip(second, second_ref, strict=True):
        torch.testing.assert_close(g, gr)


# ------------------------------------------------------------------------------------------------
# Edge cases of the pair list


@pytest.mark.parametrize("name", OPS)
def test_zero_pairs(name):
    empty = torch.zeros(0, dtype=torch.long)
    args = op_args(name, n_atoms=4, pairs=(empty, empty))
    floats = [a.clone().requires_grad_(True) for a in args[:-2]]
    out = run(name, (*floats, empty, empty))
    torch.testing.assert_close(out, oracle(name, args))
    assert out.abs().sum() == 0
    grads = torch.autograd.grad(out.sum(), floats, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)


@pytest.mark.parametrize("name", OPS)
def test_atom_without_pairs(name):
    pf = torch.tensor([0, 0, 1, 2, 2, 0])
    ps = torch.tensor([1, 2, 0, 0, 1, 1])  # atom 3 appears in no pair
    args = op_args(name, n_atoms=4, pairs=(pf, ps))
    out = run(name, args)
    torch.testing.assert_close(out, oracle(name, args))
    if name not in PER_PAIR_OUTPUT:
        assert out[3].abs().sum() == 0


@pytest.mark.parametrize("name", OPS)
def test_duplicated_pairs(name):
    pf = torch.tensor([0, 1, 0, 2])
    ps = torch.tensor([1, 0, 1, 1])
    twice = (torch.cat([pf, pf]), torch.cat([ps, ps]))
    args = op_args(name, n_atoms=3, pairs=twice)
    torch.testing.assert_close(run(name, args), oracle(name, args))


@pytest.mark.parametrize("name", OPS)
def test_shuffled_pair_order(name):
    args = op_args(name, n_atoms=9, n_pairs=60)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    n_float = len(args) - 2
    # per-pair arguments are the ones with n_pairs rows among the floats
    shuffled = [a[perm] if (k < n_float and a.shape[0] == 60 and a.dim() == 2) else a for k, a in enumerate(args)]
    shuffled[-2], shuffled[-1] = args[-2][perm], args[-1][perm]
    out, out_shuffled = run(name, args), run(name, shuffled)
    if name in PER_PAIR_OUTPUT:
        out = out[perm]
    torch.testing.assert_close(out_shuffled, out)


@pytest.mark.parametrize("name", OPS)
def test_results_do_not_depend_on_thread_count(name):
    args = op_args(name, n_atoms=300, n_pairs=20000, n_sens=8, n_feat=32, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(name, args)
        torch.set_num_threads(2)
        two = run(name, args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


# ------------------------------------------------------------------------------------------------
# Argument checks name the argument


def test_errors_name_the_argument():
    s, z, pf, ps = op_args("envsum")
    with pytest.raises(RuntimeError, match="`features` must be n_atoms x n_features"):
        ops.envsum(s, z[:, :, None], pf, ps)
    with pytest.raises(RuntimeError, match="`features` has dtype Float but `sensitivities` has dtype Double"):
        ops.envsum(s, z.float(), pf, ps)
    with pytest.raises(RuntimeError, match="`pair_second` has 39 entries but `sensitivities` has 40 rows"):
        ops.envsum(s, z, pf, ps[1:])
    with pytest.raises(RuntimeError, match="`pair_first` must have dtype Long"):
        ops.envsum(s, z, pf.int(), ps)
    bad = ps.clone()
    bad[3] = 7
    with pytest.raises(RuntimeError, match=r"`pair_second` entries must lie in \[0, 7\).*got 7 at pair 3"):
        ops.envsum(s, z, pf, bad)
    e, z2, pf, ps = op_args("sensesum")
    with pytest.raises(RuntimeError, match="sensesum: `features` must be n_atoms x n_features with the n_feat"):
        ops.sensesum(e, z2[:, :3], pf, ps)
    a, y, x, pf, ps = op_args("tensor_sensesum")
    with pytest.raises(RuntimeError, match="ekd::tensor_sensesum: `y` must be n_atoms x n_components"):
        ops.tensor_sensesum(a, y[:, :2], x, pf, ps)


# ------------------------------------------------------------------------------------------------
# torch.library.opcheck (schema, autograd registration, fake/Meta kernels) and TorchScript


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    args = op_args(name, n_atoms=5, n_pairs=11, n_sens=3, n_feat=4, n_comp=4)
    floats = [a.clone().requires_grad_(True) for a in args[:-2]]
    torch.library.opcheck(getattr(torch.ops.ekd, name).default, (*floats, *args[-2:]))


class _Scripted(torch.nn.Module):
    def forward(self, sens, feat, pf, ps):
        env = torch.ops.ekd.envsum(sens, feat, pf, ps)
        out = torch.ops.ekd.featsum(env, sens, pf, ps) + feat
        t = torch.ones(sens.shape[0], 2, dtype=sens.dtype)
        x = torch.ops.ekd.tensor_envsum(t, sens, env, pf, ps)
        return out.sum() + x.sum() + torch.ops.ekd.sensesum(env, feat, pf, ps).sum()


def test_torchscript_module_calls_the_ops():
    s, z, pf, ps = op_args("envsum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.script
        scripted = torch.jit.script(_Scripted())
    assert "ekd::tensor_envsum" in str(scripted.graph)
    s.requires_grad_(True)
    energy = scripted(s, z, pf, ps)
    (g,) = torch.autograd.grad(energy, s, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), s)  # double backward through the C++ autograd
    s2 = s.detach().clone().requires_grad_(True)
    e2 = _Scripted()(s2, z, pf, ps)
    (g2,) = torch.autograd.grad(e2, s2, create_graph=True)
    (gg2,) = torch.autograd.grad(g2.square().sum(), s2)
    torch.testing.assert_close(energy, e2)
    torch.testing.assert_close(gg, gg2)


# ------------------------------------------------------------------------------------------------
# hippynn: HipnnQuad on ekd kernels equals hippynn's pure-torch kernels


def _hipnn_quad(seed=0, cls="HipnnQuad"):
    from hippynn.networks import hipnn

    torch.manual_seed(seed)
    net = getattr(hipnn, cls)(
        n_features=12,
        n_sensitivities=6,
        dist_soft_min=0.75,
        dist_soft_max=3.0,
        dist_hard_max=4.0,
        n_atom_layers=2,
        n_interaction_layers=2,
        possible_species=[0, 1, 6, 7, 8],
    ).double()
    head = torch.nn.Linear(12, 1).double()
    return net, head


def _species_onehot():
    z = np.concatenate([m.numbers for m in _structures()])
    return torch.nn.functional.one_hot(torch.as_tensor([[1, 6, 7, 8].index(int(v)) for v in z]), 4)


def _energy_forces(net, head, pos, pf, ps, offsets, create_graph=False):
    pos = pos.clone().requires_grad_(True)
    coord, dist = pair_geometry(pos, pf, ps, offsets)
    feats = net(_species_onehot(), pf, ps, dist, coord)
    energy = head(feats[-1]).sum()
    (grad,) = torch.autograd.grad(energy, pos, create_graph=create_graph)
    return energy, -grad


@pytest.fixture
def restore_kernels():
    import hippynn.custom_kernels as ck

    before = ck.CUSTOM_KERNELS_ACTIVE
    yield
    from ekd.ops.kernels import use_kernels

    use_kernels({"_pytorch_raw": "pytorch", "numba": "hippynn-numba"}.get(before, "ekd"))


@pytest.mark.parametrize(
    "source, cls, order",
    [
        ("molecules", "HipnnQuad", "auto"),
        ("periodic box", "HipnnQuad", "auto"),
        ("molecules", "HipnnQuad", "factorised"),
        ("molecules", "HipnnQuad", "hippynn"),
        ("periodic box", "HipnnVec", "factorised"),
        ("molecules", "HipnnVec", "hippynn"),
    ],
)
def test_hipnn_tensor_energy_forces_ekd_equals_pytorch(source, cls, order, restore_kernels, monkeypatch):
    import ekd.ops.kernels
    from ekd.ops.kernels import active_kernels, use_kernels

    if order != "auto":  # force one contraction order in every layer
        monkeypatch.setattr(ekd.ops.kernels, "_factorised_is_cheaper", lambda *sizes: order == "factorised")
    pos, pf, ps, offsets = molecule_batch(cutoff=4.0) if source == "molecules" else periodic_box()
    net, head = _hipnn_quad(cls=cls)
    results = {}
    for name in ("pytorch", "ekd"):
        use_kernels(name)
        assert active_kernels() == name
        results[name] = _energy_forces(net, head, pos, pf, ps, offsets)
    torch.testing.assert_close(results["ekd"][0], results["pytorch"][0], rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(results["ekd"][1], results["pytorch"][1], rtol=1e-10, atol=1e-10)


def test_hipnn_quad_training_steps_ekd_equal_pytorch(restore_kernels):
    from ekd.ops.kernels import use_kernels

    pos, pf, ps, offsets = molecule_batch(cutoff=4.0)
    gen = torch.Generator().manual_seed(2)
    target_e = torch.randn((), generator=gen, dtype=torch.float64)
    target_f = torch.randn(pos.shape, generator=gen, dtype=torch.float64)
    trained = {}
    for name in ("pytorch", "ekd"):
        use_kernels(name)
        net, head = _hipnn_quad(seed=4)
        params = list(net.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=1e-3)
        losses = []
        for _ in range(3):
            energy, forces = _energy_forces(net, head, pos, pf, ps, offsets, create_graph=True)
            loss = (energy - target_e) ** 2 + ((forces - target_f) ** 2).mean()  # force loss: double backward
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        trained[name] = (torch.stack(losses), [p.detach().clone() for p in params])
    torch.testing.assert_close(trained["ekd"][0], trained["pytorch"][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(trained["ekd"][1], trained["pytorch"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# tensor_envsum_backward: both pair gradients of tensor_envsum in one pass (forces without a graph)


def _envsum_backward_args(dtype, n_atoms=30, n_pairs=700, pairs=None, seed=3):
    sizes = dict(n_sens=6, n_feat=21, dtype=dtype, pairs=pairs, seed=seed)
    a, b, x, pf, ps = op_args("tensor_envsum", n_atoms, n_pairs, **sizes)
    grad = torch.randn(x.shape[0], a.shape[1], x.shape[2], generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return grad, a, b, x, pf, ps


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("pairs", ["random", "molecules", "none"])
def test_tensor_envsum_backward_is_the_two_sensesums_bit_for_bit(dtype, pairs):
    chosen = {
        "random": None,
        "molecules": molecule_batch(cutoff=4.0)[1:3],
        "none": (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
    }[pairs]
    n_atoms = int(chosen[0].max()) + 1 if pairs == "molecules" else 30
    h, a, b, x, pf, ps = _envsum_backward_args(dtype, n_atoms=n_atoms, pairs=chosen)
    grad_a, grad_b = ops.tensor_envsum_backward(h, a, b, x, pf, ps)
    assert torch.equal(grad_a, ops.tensor_sensesum(b, x, h, ps, pf))
    assert torch.equal(grad_b, ops.tensor_sensesum(a, h, x, pf, ps))
    # and they are the gradients: against the float64 reference of tensor_envsum
    a64, b64 = a.double().requires_grad_(True), b.double().requires_grad_(True)
    out = ref.tensor_envsum_reference(a64, b64, x.double(), pf, ps)
    ra, rb = torch.autograd.grad(out, (a64, b64), h.double(), allow_unused=True)
    torch.testing.assert_close(grad_a.double(), ra if ra is not None else torch.zeros_like(a64), **TOL[dtype])
    torch.testing.assert_close(grad_b.double(), rb if rb is not None else torch.zeros_like(b64), **TOL[dtype])


def test_tensor_envsum_backward_does_not_depend_on_thread_count():
    args = _envsum_backward_args(torch.float32, n_atoms=300, n_pairs=20000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.tensor_envsum_backward(*args)
        torch.set_num_threads(2)
        two = ops.tensor_envsum_backward(*args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_tensor_envsum_backward_checks_and_meta():
    h, a, b, x, pf, ps = _envsum_backward_args(torch.float64)
    with pytest.raises(RuntimeError, match=r"backward: `grad` must be the shape of tensor_envsum\(a, b, x"):
        ops.tensor_envsum_backward(h[:, :2], a, b, x, pf, ps)
    with pytest.raises(RuntimeError, match="`grad` has dtype Float but `a` has dtype Double"):
        ops.tensor_envsum_backward(h.float(), a, b, x, pf, ps)
    op = torch.ops.ekd.tensor_envsum_backward.default
    torch.library.opcheck(op, (h, a, b, x, pf, ps), test_utils=("test_schema", "test_faketensor"))


def test_forces_without_a_graph_take_the_fused_backward_and_equal_the_graph_path(restore_kernels):
    from torch.profiler import ProfilerActivity, profile

    from ekd.ops.kernels import use_kernels

    use_kernels("ekd")
    pos, pf, ps, offsets = periodic_box()
    net, head = _hipnn_quad(seed=5)
    runs = {}
    for create_graph in (False, True):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            energy, forces = _energy_forces(net, head, pos, pf, ps, offsets, create_graph=create_graph)
        ops_run = {e.key for e in prof.key_averages()}
        runs[create_graph] = (energy.detach(), forces.detach(), "ekd::tensor_envsum_backward" in ops_run)
    assert runs[False][2], "forces without create_graph should use ekd::tensor_envsum_backward"
    assert not runs[True][2], "force training (create_graph) needs the differentiable sibling ops"
    # equal up to rounding: the radial sensitivities' backward also changes path with create_graph
    torch.testing.assert_close(runs[False][0], runs[True][0], rtol=1e-13, atol=0)
    torch.testing.assert_close(runs[False][1], runs[True][1], rtol=1e-12, atol=1e-14)


def test_use_kernels_rejects_unknown_names():
    from ekd.ops.kernels import use_kernels

    with pytest.raises(ValueError, match="kernels: must be one of ekd, hippynn-numba, pytorch, got 'cuda'"):
        use_kernels("cuda")


@pytest.mark.parametrize("kind", ["InverseSensitivityModule", "GaussianSensitivityModule"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_sensitivity_equals_hippynns_without_underflowing_exp(dtype, kind, monkeypatch):
    """The ATen formula of ekd.ops.kernels.sensitivity (GPU tensors, other cutoffs) = hippynn's
    sensitivity modules, but exp never sees an argument whose result underflows (torch's exp is
    several times slower there; the paper's widths put most pair x sensitivity entries of a box
    there). The fused CPU op is compared with this formula in test_radial_sensitivity.py."""
    from ekd.ops.kernels import _sensitivity_formula as sensitivity
    from ekd.training.models import _import_hippynn

    hippynn = _import_hippynn()
    from hippynn.layers.hiplayers import sensitivity as hs

    monkeypatch.setattr(hippynn.settings, "WARN_LOW_DISTANCES", False)
    torch.manual_seed(0)
    module = getattr(hs, kind)(20, 0.75, 5.5, 6.5).to(dtype)  # the paper's sensitivities
    pos, pf, ps, offsets = periodic_box(cutoff=6.5, dtype=dtype)
    dist = pair_geometry(pos, pf, ps, offsets)[1].requires_grad_(True)
    expected = module(dist)
    tiny = torch.finfo(dtype).tiny
    if dtype == torch.float32:
        assert (expected < 2 * tiny).float().mean() > 0.2, "the test should reach exp's underflow range"
    seen = []
    real_exp = torch.exp

    def recording_exp(x):
        seen.append(float(x.detach().min()))
        return real_exp(x)

    monkeypatch.setattr(torch, "exp", recording_exp)
    got = sensitivity(module, dist)
    monkeypatch.setattr(torch, "exp", real_exp)
    assert seen and min(seen) >= np.log(2 * tiny) - 1e-6
    torch.testing.assert_close(got, expected, rtol=0, atol=2 * tiny)
    weights = torch.randn(got.shape, dtype=dtype)
    (g_got,) = torch.autograd.grad((got * weights).sum(), dist)
    (g_exp,) = torch.autograd.grad((expected * weights).sum(), dist)
    torch.testing.assert_close(g_got, g_exp, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)


@pytest.mark.parametrize("kind", ["InverseSensitivityModule", "GaussianSensitivityModule"])
def test_sensitivity_warns_below_the_range_as_hippynn(kind, monkeypatch):
    from ekd.ops.kernels import sensitivity
    from ekd.training.models import _import_hippynn

    hippynn = _import_hippynn()
    from hippynn.layers.hiplayers import sensitivity as hs

    monkeypatch.setattr(hippynn.settings, "WARN_LOW_DISTANCES", True)
    module = getattr(hs, kind)(20, 0.75, 5.5, 6.5).double()

    def warned(fn, values):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fn(torch.tensor(values, dtype=torch.float64))
        return any("underneath sensitivity range" in str(w.message) for w in seen)

    outcomes = set()
    for values in ([0.1, 3.0], [3.0, 4.0], [31.0, 40.0]):
        expected = warned(module, values)
        assert warned(lambda d: sensitivity(module, d), values) == expected, values
        outcomes.add(expected)
    assert outcomes == {True, False}  # each class's threshold lies between the inputs
