"""The pair sums of ekd's HIPNN interaction layers (what :mod:`ekd.scripted_hipnn` calls).

``t[i, c, o] = sum_{p: first = i} a[p, c] sum_{n, f} s[p, n] z[j, f] W[n, o, f]`` (angular parts a,
sensitivities s, features z of the second atom j, interaction weights W), in three implementations,
chosen once per model by :func:`choose_envsum`:

* "ekd-tensor": ``torch.ops.ekd.tensor_envsum`` with the weights applied before the pair sum (the
  same sum in another order, ~1e-16 relative; ~2x faster than "ekd" for l_max = 2);
* "ekd": ``torch.ops.ekd.envsum``, hippynn's order (envsum, then the weights);
* "torch": pure torch in hippynn's order (:func:`envsum_torch`), for where the op library is missing.
"""

import contextlib

import torch
from torch import Tensor, nn


def _stack(angular: Tensor, s: Tensor) -> Tensor:
    """angular parts [P, C], sensitivities [P, N] -> tensor sensitivities [P, C * N], component-major
    like hippynn's concatenation (scalar, vector, quadrupole)."""
    if angular.shape[1] == 1:
        return s  # l_max = 0: the angular part is 1
    return (s.unsqueeze(1) * angular.unsqueeze(2)).reshape(s.shape[0], angular.shape[1] * s.shape[1])


def _weigh(env: Tensor, weights: Tensor, n_components: int) -> Tensor:
    """env [A, C * N, F], weights [N * F, O] -> t [A, C, O], t[i, c, o] = sum_{n,f} env[i, c n, f] W[n f, o]."""
    n_atoms = env.shape[0]
    t = torch.mm(env.reshape(n_atoms * n_components, weights.shape[0]), weights)
    return t.reshape(n_atoms, n_components, weights.shape[1])


def _contract_envsum(
    angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
) -> Tensor:
    """hippynn's order (envsum of the stacked sensitivities, then the weights) with
    ``torch.ops.ekd.envsum``: sensitivities [P, S], features [A, F] -> env [A, S, F]."""
    env = torch.ops.ekd.envsum(_stack(angular, s), z, pair_first, pair_second)
    return _weigh(env, weights, angular.shape[1])


def _contract_tensor_envsum(
    angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
) -> Tensor:
    """The weights first, then the pair sum with ``torch.ops.ekd.tensor_envsum``:
    x[j, n, o] = sum_f W[n, o, f] z[j, f], t[i, c, o] = sum_{p: first=i} a[p, c] sum_n s[p, n] x[j, n, o].
    Same sum as hippynn's in another order; per pair N O + C O products instead of C N F, and no
    [P, C N] stacked sensitivities (the gain grows with l_max)."""
    n_sense = s.shape[1]
    n_feat = z.shape[1]
    n_out = weights.shape[1]
    # weights [N * F, O] (row n F + f) -> [F, N * O]
    w = weights.reshape(n_sense, n_feat, n_out).permute(1, 0, 2).reshape(n_feat, n_sense * n_out)
    x = torch.mm(z, w).reshape(z.shape[0], n_sense, n_out)
    return torch.ops.ekd.tensor_envsum(angular, s, x, pair_first, pair_second)


def envsum_torch(sensitivities: Tensor, features: Tensor, pair_first: Tensor, pair_second: Tensor) -> Tensor:
    """Pure-torch envsum: ``env[i, s, f] = sum_{p: first=i} sensitivities[p, s] features[second[p], f]``.

    sensitivities [P, S], features [A, F] -> env [A, S, F]. Each pair is scattered into a slot of
    its first atom's padded neighbour table (``index_put``: [A, K, S] sensitivities and [A, K, F]
    neighbour features, K = most pairs of any atom), then one batched matrix product contracts the
    slots. Nothing of size pairs x S x F exists, forward or backward (an ``index_add`` of the
    per-pair outer products would build P x S x F elements twice and was ~15x slower than the op
    on a 3,000-atom box); the price is the padding, K * A instead of P rows.
    """
    n_pairs, n_sense = sensitivities.shape
    n_atoms, n_feat = features.shape
    if n_pairs == 0:
        return torch.zeros((n_atoms, n_sense, n_feat), dtype=features.dtype, device=features.device)
    # slot of each pair among its first atom's pairs (in pair-list order)
    counts = torch.bincount(pair_first, minlength=n_atoms)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(pair_first, stable=True)
    rank = torch.arange(n_pairs, dtype=pair_first.dtype, device=pair_first.device)
    slot = torch.empty_like(pair_first)
    slot[order] = rank - starts[pair_first[order]]
    k_max = int(counts.max())
    where = (pair_first, slot)
    sense_table = sensitivities.new_zeros((n_atoms, k_max, n_sense)).index_put(where, sensitivities)
    feat_table = features.new_zeros((n_atoms, k_max, n_feat)).index_put(where, features[pair_second])
    return torch.bmm(sense_table.transpose(1, 2), feat_table)


def _contract_torch(
    angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
) -> Tensor:
    """hippynn's order with the pure-torch :func:`envsum_torch`."""
    env = envsum_torch(_stack(angular, s), z, pair_first, pair_second)
    return _weigh(env, weights, angular.shape[1])


class Contraction(nn.Module):
    """The interaction sum of a layer, t [A, C, O] (see the module docstring), from angular parts
    [P, C], sensitivities [P, N], features z [A, F], weights [N * F, O] and the pairs (the three
    implementations as modules, for tests; the scripted models call the functions)."""

    def forward(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        raise NotImplementedError


class EnvSumOp(Contraction):
    """:func:`_contract_envsum`."""

    def forward(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        return _contract_envsum(angular, s, z, weights, pair_first, pair_second)


class TensorEnvSumOp(Contraction):
    """:func:`_contract_tensor_envsum`."""

    def forward(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        return _contract_tensor_envsum(angular, s, z, weights, pair_first, pair_second)


class EnvSumTorchContraction(Contraction):
    """:func:`_contract_torch`."""

    def forward(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        return _contract_torch(angular, s, z, weights, pair_first, pair_second)


class EnvSumTorch(nn.Module):
    """:func:`envsum_torch` as a module."""

    def forward(self, sensitivities: Tensor, features: Tensor, pair_first: Tensor, pair_second: Tensor) -> Tensor:
        return envsum_torch(sensitivities, features, pair_first, pair_second)


def available_ops() -> tuple[str, ...]:
    """Which of ekd's interaction ops work here: "envsum" and/or "tensor_envsum" (registered after
    ``import ekd.ops.library`` and giving the right numbers on a tiny input with their CPU kernels)."""
    try:
        from .ops import library as _ops  # noqa: F401  (loads the op library)
    except (ImportError, OSError):
        return ()
    f64 = torch.float64
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=f64)
    first, second = torch.tensor([0, 1]), torch.tensor([1, 0])
    found = []
    with contextlib.suppress(AttributeError, RuntimeError):
        env = torch.ops.ekd.envsum(s, torch.tensor([[1.0], [10.0]], dtype=f64), first, second)
        if torch.equal(env, torch.tensor([[[10.0], [20.0]], [[3.0], [4.0]]], dtype=f64)):
            found.append("envsum")
    with contextlib.suppress(AttributeError, RuntimeError):
        a = torch.tensor([[1.0, 2.0, 3.0], [1.0, -1.0, 0.5]], dtype=f64)
        x = torch.arange(8, dtype=f64).reshape(2, 2, 2)
        out = torch.ops.ekd.tensor_envsum(a, s, x, first, second)
        if torch.equal(out, a.unsqueeze(2) * torch.einsum("pn,pno->po", s, x[second]).unsqueeze(1)):
            found.append("tensor_envsum")
    return tuple(found)


#: the environment-sum implementations by name (the ``envsum`` argument of :func:`script_member`)
_CONTRACTIONS = {"ekd": EnvSumOp, "ekd-tensor": TensorEnvSumOp, "torch": EnvSumTorchContraction}
# the op each implementation calls
_NEEDS = {"ekd": "envsum", "ekd-tensor": "tensor_envsum"}


def choose_envsum(l_max: int, envsum: str = "auto") -> str:
    """The environment sum a model of ``l_max`` gets: for "auto", ``tensor_envsum`` ("ekd-tensor")
    for l_max >= 1 and ``envsum`` ("ekd") for l_max = 0 when the op works here, else "torch".
    An explicit "ekd"/"ekd-tensor" whose op is missing is an error."""
    ops = available_ops()
    if envsum == "auto":
        if l_max >= 1 and "tensor_envsum" in ops:
            return "ekd-tensor"
        return "ekd" if "envsum" in ops else "torch"
    if envsum in _NEEDS and _NEEDS[envsum] not in ops:
        raise RuntimeError(
            f"envsum={envsum!r}: torch.ops.ekd.{_NEEDS[envsum]} is not available here "
            "(build and install ekd's op library, or use envsum='torch')"
        )
    return envsum
