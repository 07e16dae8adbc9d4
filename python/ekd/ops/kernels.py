"""HIPNN interaction kernels: ekd's compiled ops as hippynn's message-passing backend.

``use_kernels(name)`` selects what hippynn's interaction layers run on, process-wide:

* ``"ekd"`` (default): ``torch.ops.ekd.envsum / sensesum / featsum`` (csrc/cpu/sensitivity.cpp,
  autograd in C++, so double backward works without Python wrappers), registered with hippynn's
  ``MessagePassingKernels`` under the name ``"ekd"`` (``wrap=False``). In addition the tensor
  interaction layers of HipnnVec / HipnnQuad (``InteractLayerVec`` / ``InteractLayerQuad``) take
  a factorised contraction order, see below.
* ``"hippynn-numba"``: hippynn's numba kernels (``"numba"`` in hippynn).
* ``"pytorch"``: hippynn's pure-torch kernels *without* torch.compile (hippynn's hidden
  ``"_pytorch_raw"``). hippynn 0.1.3's own ``"pytorch"`` wraps the same functions in
  ``torch.compile``, which needs a C++ compiler at run time and recompiles for every new pair
  count; the uncompiled functions give the same numbers and need nothing. They materialise
  pairs x sensitivities x features (25 GB for the paper's HipnnQuad on a 3,136-atom box): use
  them as a reference on small inputs only.

Factorised tensor interactions (``"ekd"`` only). hippynn's HipnnQuad layer forms, for every atom,
the environment env[i, c, n, f] = sum_p t[p, c] s[p, n] z[j, f] for C = 9 tensor components
(1 + 3 + 5) and only then contracts n, f with the interaction weights W[n, o, f]: C times the
work of a scalar HIPNN layer, in the pair sum and in the matrix product. Applying the weights to
the features first, Q[j, n, o] = sum_f z[j, f] W[n, o, f], the layer output is
out[i, c, o] = sum_p t[p, c] sum_n s[p, n] Q[j, n, o] = ``ekd.tensor_envsum(t, s, Q, i, j)``,
which costs one A x F x N x O product plus (N + C) x O per pair instead of C x N x (F per pair +
F x O per atom). The layer picks whichever order a cost model says is cheaper for its sizes
(``_factorised_is_cheaper``; for the paper's model the factorised order in every layer). The
numbers are those of hippynn's layer up to floating-point rounding; parameters and state dicts
are untouched, so a model trained with one backend loads and runs with any other.

Mechanism: ``use_kernels`` replaces ``forward`` of the two hippynn layer classes once by a
function that takes the factorised path while the active hippynn kernels are ekd's and calls
hippynn's original ``forward`` otherwise.
"""

from __future__ import annotations

import math
import warnings

import torch

from ekd.ops.library import ops

KERNEL_NAMES = ("ekd", "hippynn-numba", "pytorch")
_HIPPYNN_NAME = {"ekd": "ekd", "hippynn-numba": "numba", "pytorch": "_pytorch_raw"}

_registered = False
_patched = False


def _register() -> None:
    """Register ekd's ops with hippynn's kernel registry (once per process)."""
    global _registered
    if _registered:
        return
    from hippynn.custom_kernels.registry import MessagePassingKernels

    if "ekd" not in MessagePassingKernels.get_available_implementations(hidden=True):
        # Autograd lives in C++ (csrc/autograd.cpp): no Python autograd wrapper.
        MessagePassingKernels("ekd", ops.envsum, ops.sensesum, ops.featsum, wrap=False)
    _registered = True


def use_kernels(name: str = "ekd") -> str:
    """Make hippynn's interaction layers run on the named kernels (process-wide).

    name: ``"ekd" | "hippynn-numba" | "pytorch"`` (see the module docstring). Returns the name of
    the hippynn implementation that is now active.
    """
    if name not in _HIPPYNN_NAME:
        raise ValueError(f"kernels: must be one of {', '.join(KERNEL_NAMES)}, got {name!r}")
    import hippynn.custom_kernels as ck

    _register()
    _patch_tensor_layers()
    with warnings.catch_warnings():
        # hippynn warns about any implementation name outside its own list ("ekd", "_pytorch_raw").
        warnings.filterwarnings("ignore", message="Using non-standard custom kernel implementation")
        return ck.set_custom_kernels(_HIPPYNN_NAME[name])


def active_kernels() -> str | None:
    """The ekd name of the active hippynn kernels (None when it is none of ``KERNEL_NAMES``)."""
    import hippynn.custom_kernels as ck

    back = {v: k for k, v in _HIPPYNN_NAME.items()}
    return back.get(ck.CUSTOM_KERNELS_ACTIVE)


# ------------------------------------------------------------------------------------------------
# Factorised HipnnVec / HipnnQuad interaction layers


def tensor_components(coord_pairs: torch.Tensor, dist_pairs: torch.Tensor, l_max: int) -> torch.Tensor:
    """Angular factors t[p, c] of hippynn's tensor sensitivities, [P, 1 + 3 (+ 5)].

    Component order and normalisation are hippynn's (InteractLayerQuad): 1, r_hat (x, y, z), then
    the traceless r_hat r_hat^T at flattened positions (0, 1, 2, 4, 5) (xx, xy, xz, yy, yz).
    """
    rhat = coord_pairs / dist_pairs.unsqueeze(1)
    comps = [torch.ones_like(dist_pairs).unsqueeze(1), rhat]
    if l_max >= 2:
        # hippynn forms the symmetrised, trace-free 3 x 3 outer product and keeps 5 entries; the
        # same 5 numbers straight from the components ((x y + y x) / 2 == x y exactly) avoid
        # [P, 3, 3] temporaries and an indexing backward (~5 % of a box evaluation)
        x, y, z = rhat.unbind(1)
        xx, yy, zz = x * x, y * y, z * z
        tr = (xx + yy + zz) / 3.0
        comps.append(torch.stack((xx - tr, x * y, x * z, yy - tr, y * z), dim=1))
    return torch.cat(comps, dim=1)


def _factorised_is_cheaper(n_pairs: int, n_atoms: int, n_comp: int, n_sens: int, nf_in: int, nf_out: int) -> bool:
    """Cost model of both contraction orders (forward; the backward scales alike).

    Multiply-adds, with two corrections measured on the 3,136-atom box: hippynn's order writes the
    stacked pairs x C x N sensitivities and their gradients (~8 passes over memory per element), and
    the CPU kernels work on 16-wide feature chunks, so a few input features (the first layer's
    one-hot species) cost as much as 16. With these the factorised order wins for every layer of
    the paper's HipnnQuad (1.4x faster energy+forces than choosing hippynn's order for layer 1).
    """
    stock = n_pairs * n_comp * n_sens * (max(nf_in, 16) + 8) + n_atoms * n_comp * n_sens * nf_in * nf_out
    factorised = n_atoms * nf_in * n_sens * nf_out + n_pairs * (n_sens + n_comp) * nf_out
    return factorised < stock


def sensitivity(module, dist_pairs: torch.Tensor) -> torch.Tensor:
    """hippynn's sensitivities s[p, n] of ``module`` (an interaction layer's ``sensitivity``), [P, N].

    For hippynn's InverseSensitivityModule (HIPNN's default) and GaussianSensitivityModule, whose
    forward is the same formula (they differ in the low-distance warning only), the formula with
    exp's argument clamped below at log(2 x the smallest normal number of the dtype): torch's
    vectorised exp takes a slow path (7-15x slower, measured: 90 vs 6-13 ms for 5M float32
    numbers) for arguments whose result underflows or nearly does, and with the paper's widths
    (sigma = 30) most of a box's pairs x sensitivities do (arguments down to ~ -650). The clamped
    result differs by less than 2.4e-38 in float32 (4.5e-308 in float64), where the gradient was
    already that small. Other modules (and subclasses, which may change the formula) run as they are.

    On CPU tensors with hippynn's CosCutoff the formula runs as one fused op,
    ``ekd::radial_sensitivity`` (csrc/cpu/radial.cpp: one pass forward, one backward, ds/dr as an op
    of its own under create_graph so force training's second derivatives are fused too; results
    that would be subnormal are 0). Measured on the paper's box (253,568 pairs x 20, float32, 1
    thread, CPU time per layer): forward 17-30 -> ~6 ms, backward 40-80 -> 10-12 ms, a
    force-training forward + double backward 236 -> 82 ms; box inference peak memory 1041-1072 ->
    868-904 MB, box training 1808-1924 -> 1389-1475 MB; whole-model medians (bench/kernels.py, 1
    thread, 3-5 runs each while another process loaded the machine, +-25 % between runs) box
    inference 0.78 -> 0.71 s CPU, box training step 3.19 -> 3.08 s. The ATen formula below still
    serves CUDA tensors (the op has no CUDA kernel) and other cutoffs.
    """
    from hippynn import settings
    from hippynn.layers.hiplayers import sensitivity as hs

    kind = type(module)
    if kind is not hs.InverseSensitivityModule and kind is not hs.GaussianSensitivityModule:
        return module(dist_pairs)
    if settings.WARN_LOW_DISTANCES:
        with torch.no_grad():  # hippynn's warning, with each class's threshold
            mu, argmin = module.mu.min(dim=1)
            sig = module.sigma[:, argmin]
            inverse = kind is hs.InverseSensitivityModule
            hs.warn_if_under(dist_pairs, (mu**-1 - sig**-1) ** -1 if inverse else mu + sig)
    if _fused_applies(module, dist_pairs):
        return ops.radial_sensitivity(dist_pairs, module.mu, module.sigma, float(module.cutoff.hard_max_dist))
    return _sensitivity_formula(module, dist_pairs)


def _fused_applies(module, dist_pairs: torch.Tensor) -> bool:
    """Whether ``ekd::radial_sensitivity`` computes ``module``'s formula for these inputs: CPU
    float32/float64 distances, parameters of the same dtype on the CPU, and exactly hippynn's
    CosCutoff (a subclass or another cutoff may differ). The op has no CUDA kernel: on GPUs
    the ATen formula below runs."""
    from hippynn.layers.hiplayers import sensitivity as hs

    dtype = dist_pairs.dtype
    return (
        dist_pairs.device.type == "cpu"
        and dtype in (torch.float32, torch.float64)
        and type(module.cutoff) is hs.CosCutoff
        and all(t.device.type == "cpu" and t.dtype == dtype for t in (module.mu, module.sigma))
    )


def _sensitivity_formula(module, dist_pairs: torch.Tensor) -> torch.Tensor:
    """hippynn's expression with ATen ops, term by term (same rounding where nothing is clamped)."""
    nondim = (dist_pairs.unsqueeze(1) ** -1 - module.mu**-1) ** 2 / (module.sigma**-2)
    lowest = math.log(2 * torch.finfo(dist_pairs.dtype).tiny)
    base = torch.exp((-0.5 * nondim).clamp(min=lowest))
    return base * module.cutoff(dist_pairs).unsqueeze(1)


def tensor_interaction(layer, in_features, pair_first, pair_second, dist_pairs, coord_pairs, l_max: int):
    """Output of hippynn's InteractLayerVec (l_max=1) / InteractLayerQuad (l_max=2), [A, nf_out].

    Same parameters and numbers as hippynn's forward; the pair sum runs on ekd ops in the cheaper
    contraction order (module docstring).
    """
    n_atoms, nf_in = in_features.shape
    n_sens, nf_out = layer.n_dist, layer.nf_out
    sense = sensitivity(layer.sensitivity, dist_pairs)  # [P, N]
    t = tensor_components(coord_pairs, dist_pairs, l_max)  # [P, C]
    n_comp = t.shape[1]
    if _factorised_is_cheaper(t.shape[0], n_atoms, n_comp, n_sens, nf_in, nf_out):
        # Q[j, n, o] = sum_f z[j, f] W[n, o, f]
        q = torch.mm(in_features, layer.int_weights.permute(2, 0, 1).reshape(nf_in, n_sens * nf_out))
        env = ops.tensor_envsum(t, sense, q.reshape(n_atoms, n_sens, nf_out), pair_first, pair_second)
    else:
        stacked = (t.unsqueeze(2) * sense.unsqueeze(1)).reshape(-1, n_comp * n_sens)
        env = ops.envsum(stacked, in_features, pair_first, pair_second)  # [A, C * N, F]
        weights_rs = layer.int_weights.permute(0, 2, 1).reshape(n_sens * nf_in, nf_out)
        env = torch.mm(env.reshape(n_atoms * n_comp, n_sens * nf_in), weights_rs).reshape(n_atoms, n_comp, nf_out)

    out = env[:, 0]
    vec = torch.sqrt(torch.square(env[:, 1:4]).sum(dim=1) + layer.cusp_reg)
    out = out + vec * layer.vecscales.unsqueeze(0)
    if l_max >= 2:
        quad = env[:, 4:9]
        # norm of the traceless symmetric tensor from its 5 stored components (hippynn's formula)
        quad = 2 * (torch.square(quad).sum(dim=1) + quad[:, 0, :] * quad[:, 3, :])
        out = out + torch.sqrt(quad + layer.cusp_reg) * layer.quadscales.unsqueeze(0)
    return out + layer.selfint(in_features)


def _patch_tensor_layers() -> None:
    global _patched
    if _patched:
        return
    from hippynn.layers.hiplayers import interactions as hi

    for cls, l_max in ((hi.InteractLayerVec, 1), (hi.InteractLayerQuad, 2)):
        original = cls.forward

        def forward(self, in_features, pair_first, pair_second, dist_pairs, coord_pairs, *, _orig=original, _l=l_max):
            import hippynn.custom_kernels as ck

            if ck.CUSTOM_KERNELS_ACTIVE != "ekd":
                return _orig(self, in_features, pair_first, pair_second, dist_pairs, coord_pairs)
            return tensor_interaction(self, in_features, pair_first, pair_second, dist_pairs, coord_pairs, _l)

        forward.__doc__ = f"{cls.__name__}.forward, factorised on ekd ops when ekd kernels are active."
        forward._ekd_original = original
        cls.forward = forward
    _patched = True
