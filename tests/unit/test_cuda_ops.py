"""Every ekd op on CUDA tensors: registered, and equal to its CPU op in float64.

Two kinds of test:

* here, on the CPU (default suite): every op has a CUDA registration (a kernel of
  csrc/cuda/*.cu, or for the fused CPU-only ops the ATen formula of csrc/composite.cpp); the
  composite implementations are called *through the CUDA dispatch key* on CPU tensors (their ATen
  ops run wherever the tensors are) and must equal the CPU kernels - so the code a GPU runs for
  them is tested without a GPU.
* ``@pytest.mark.cuda``, skipped cleanly without a GPU: each op on the device against its CPU op,
  values and first and second derivatives (force training differentiates forces), float64 to
  1e-12, and a HIPNN model's energies, forces and a force-training step.

No test of this file has run on a GPU yet (December 2026: no GPU in the sessions so far);
scripts/gpu_check.sh runs them where there is one.
"""

from __future__ import annotations

import pytest
import torch

from ekd.ops.library import BUILD_INFO, ops

from .test_kernels import OPS, _hipnn_quad, _species_onehot, molecule_batch, op_args, pair_geometry, periodic_box
from .test_radial_sensitivity import small_inputs

# The ops implemented with other ops on CUDA (csrc/composite.cpp): plain C++, registered in every build.
COMPOSITE = (
    "radial_sensitivity",
    "radial_sensitivity_backward",
    "radial_sensitivity_dr",
    "radial_sensitivity_dr_backward",
    "tensor_envsum_backward",
)
# The ops with a CUDA kernel of their own (csrc/cuda/*.cu): only in a library built with nvcc.
KERNELS = ("neighbor_list", *OPS)
MASKS = ([True, True, True], [True, False, False], [False, True, True])

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
)


def _tensor_ops() -> set[str]:
    """Names of the ekd ops that take tensors (all but the version strings)."""
    names = {
        s.name.split("::", 1)[1].split(".")[0] for s in torch._C._jit_get_all_schemas() if s.name.startswith("ekd::")
    }
    return names - {"version", "torch_version"}


def _has_cuda_kernel(name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"ekd::{name}", "CUDA")


def test_every_op_has_a_cuda_registration():
    assert _tensor_ops() == set(COMPOSITE) | set(KERNELS), "an op was added: give it a CUDA path and a test here"
    missing = [n for n in COMPOSITE if not _has_cuda_kernel(n)]
    assert not missing, f"no CUDA registration for {missing}"
    # the kernels of csrc/cuda are there exactly when the build found nvcc and a CUDA torch
    assert [n for n in KERNELS if _has_cuda_kernel(n)] == (list(KERNELS) if BUILD_INFO["with_cuda"] else [])


def _via_cuda_key(name, *args):
    """Op `name`'s CUDA implementation, called on whatever device the arguments are on."""
    return getattr(ops, name).default._op_dk(torch._C.DispatchKey.CUDA, *args)


def _radial_inputs():
    """The distances of tests/unit/test_radial_sensitivity (clamped entries with sigma x 10, beyond
    and just below the cutoff) plus a random backward gradient."""
    out = []
    for scale in (1.0, 10.0):
        dist, mu, sigma = (t.detach() for t in small_inputs(scale))
        grad = torch.randn(dist.shape[0], mu.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        out.append((grad, dist, mu, sigma))
    return out


def _close(got, expected):
    """float64: 1e-12 relative to the result's scale; subnormal values (the CPU kernels flush them to 0) pass."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * scale + 4 * torch.finfo(torch.float64).tiny)


@pytest.mark.parametrize("forward", ["radial_sensitivity", "radial_sensitivity_dr"])
def test_composite_radial_ops_equal_the_cpu_kernels(forward):
    for grad, dist, mu, sigma in _radial_inputs():
        for m, s in ((mu, sigma), (mu[0], sigma[0])):  # the module's [1, N] parameters, or vectors
            _close(_via_cuda_key(forward, dist, m, s, 5.0), getattr(ops, forward)(dist, m, s, 5.0))
            for mask in MASKS:
                got = _via_cuda_key(f"{forward}_backward", grad, dist, m, s, 5.0, mask)
                expected = getattr(ops, f"{forward}_backward")(grad, dist, m, s, 5.0, mask)
                for wanted, g, e in zip(mask, got, expected, strict=True):
                    assert (g is None) == (not wanted)
                    if wanted:
                        assert g.shape == e.shape
                        _close(g, e)


def test_composite_radial_ops_check_their_arguments_as_the_cpu_kernels():
    grad, dist, mu, sigma = _radial_inputs()[0]
    for args, match in (
        (("radial_sensitivity", dist[:, None], mu, sigma, 5.0), "`dist` must be a vector"),
        (("radial_sensitivity_dr", dist, mu, sigma, -1.0), "`hard_max`"),
        (("radial_sensitivity_dr_backward", grad[:3], dist, mu, sigma, 5.0, [True] * 3), "`grad` must be n_pairs"),
    ):
        with pytest.raises(RuntimeError, match=match) as cuda_error:
            _via_cuda_key(*args)
        with pytest.raises(RuntimeError) as cpu_error:
            getattr(ops, args[0])(*args[1:])
        assert str(cuda_error.value).splitlines()[0] == str(cpu_error.value).splitlines()[0]


def test_composite_tensor_envsum_backward_is_the_two_sensesums():
    a, b, x, pf, ps = op_args("tensor_envsum", n_atoms=20, n_pairs=300, n_sens=6, n_feat=11, seed=5)
    h = torch.randn(20, a.shape[1], 11, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got = _via_cuda_key("tensor_envsum_backward", h, a, b, x, pf, ps)
    expected = ops.tensor_envsum_backward(h, a, b, x, pf, ps)
    for g, e in zip(got, expected, strict=True):
        _close(g, e)
    with pytest.raises(RuntimeError, match="ekd::tensor_envsum_backward: `grad`"):
        _via_cuda_key("tensor_envsum_backward", h[:, :3], a, b, x, pf, ps)


# ------------------------------------------------------------------------------------------------
# On a GPU


def _cuda(t):
    return t.cuda() if torch.is_tensor(t) else t


def _grads_up_to_second_order(fn, floats, rest):
    """fn's value, gradients of a random projection and the gradients of their squared norm (the
    shape of a force loss), all wrt the float arguments."""
    floats = [f.detach().clone().requires_grad_(True) for f in floats]
    out = fn(*floats, *rest)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype).to(out.device)
    first = torch.autograd.grad((out * w).sum(), floats, create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in first), floats, allow_unused=True)
    return [out.detach(), *(g.detach() for g in first), *(g for g in second if g is not None)]


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("name", OPS)
def test_cuda_pair_ops_equal_cpu_to_second_order(name):
    for pairs in (None, (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))):
        args = op_args(name, n_atoms=30, n_pairs=500, n_sens=7, n_feat=33, pairs=pairs)
        cpu = _grads_up_to_second_order(getattr(ops, name), args[:-2], args[-2:])
        gpu = _grads_up_to_second_order(
            getattr(ops, name), [_cuda(a) for a in args[:-2]], [_cuda(a) for a in args[-2:]]
        )
        assert len(cpu) == len(gpu)
        for g, c in zip(gpu, cpu, strict=True):
            assert g.is_cuda
            _close(g.cpu(), c)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("forward", ["radial_sensitivity", "radial_sensitivity_dr"])
def test_cuda_radial_ops_equal_cpu_to_second_order(forward):
    for _, dist, mu, sigma in _radial_inputs():
        fn = getattr(ops, forward)
        cpu = _grads_up_to_second_order(fn, [dist, mu, sigma], [5.0])
        gpu = _grads_up_to_second_order(fn, [dist.cuda(), mu.cuda(), sigma.cuda()], [5.0])
        for g, c in zip(gpu, cpu, strict=True):
            _close(g.cpu(), c)


@needs_gpu
@pytest.mark.cuda
def test_cuda_tensor_envsum_backward_equals_cpu():
    a, b, x, pf, ps = op_args("tensor_envsum", n_atoms=20, n_pairs=300, n_sens=6, n_feat=11, seed=5)
    h = torch.randn(20, a.shape[1], 11, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    cpu = ops.tensor_envsum_backward(h, a, b, x, pf, ps)
    gpu = ops.tensor_envsum_backward(*(t.cuda() for t in (h, a, b, x, pf, ps)))
    for g, c in zip(gpu, cpu, strict=True):
        _close(g.cpu(), c)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("periodic", [False, True])
def test_cuda_neighbor_list_equals_cpu(periodic):
    from ekd.ops.library import neighbor_list

    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(200, 3, generator=gen, dtype=torch.float64) * 12.0
    cell = torch.tensor([[12.0, 0, 0], [1.0, 11.0, 0], [0.5, 0.3, 12.5]], dtype=torch.float64)
    kwargs = dict(cell=cell, pbc=True) if periodic else {}

    def canonical(first, second, shifts):
        key = torch.cat([first[:, None], second[:, None], shifts], dim=1).cpu()
        return torch.unique(key, dim=0)  # sorted rows: the pair order is the device's business

    cpu = canonical(*neighbor_list(pos, 3.5, **kwargs))
    gpu = canonical(*neighbor_list(pos.cuda(), 3.5, **{k: _cuda(v) for k, v in kwargs.items()}))
    assert cpu.shape[0] > 0 and torch.equal(cpu, gpu)


@pytest.fixture
def ekd_kernels():
    import hippynn.custom_kernels as ck

    from ekd.ops.kernels import use_kernels

    before = ck.CUSTOM_KERNELS_ACTIVE
    use_kernels("ekd")
    yield
    use_kernels({"_pytorch_raw": "pytorch", "numba": "hippynn-numba"}.get(before, "ekd"))


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("source", ["molecules", "periodic box"])
def test_cuda_hipnn_quad_energy_forces_and_training_step_equal_cpu(source, ekd_kernels):
    pos, pf, ps, offsets = molecule_batch(cutoff=4.0) if source == "molecules" else periodic_box()
    results = {}
    for device in ("cpu", "cuda"):
        net, head = _hipnn_quad(seed=4)
        net, head = net.to(device), head.to(device)
        x = pos.to(device).requires_grad_(True)
        coord, dist = pair_geometry(x, pf.to(device), ps.to(device), offsets.to(device))
        energy = head(net(_species_onehot().to(device), pf.to(device), ps.to(device), dist, coord)[-1]).sum()
        (forces,) = torch.autograd.grad(-energy, x, create_graph=True)
        loss = energy.square() + forces.square().mean()  # a force loss: second derivatives
        grads = torch.autograd.grad(loss, list(net.parameters()) + list(head.parameters()))
        results[device] = [energy.detach(), forces.detach(), *grads]
    for g, c in zip(results["cuda"], results["cpu"], strict=True):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-10, atol=1e-10 * float(c.abs().max()))
