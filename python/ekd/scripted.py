"""A trained ekd HIPNN member re-expressed as a TorchScript module with the deployed-model interface.

hippynn's graph machinery cannot be scripted (variadic module arguments, tensor constants,
data-dependent pair finding), so this module does not try: :func:`script_member` copies the trained
weights of hippynn's torch modules (the network ``Hipnn`` / ``HipnnVec`` / ``HipnnQuad`` and the
energy head ``HEnergy``) into :class:`ScriptedHipnn`, written here to compute the same math, term
by term and in the same order, and scripts it. The class keeps every weight in ``list[Tensor]``
attributes and every hyper-parameter in plain attributes (no submodules, no ``Final``), so its
TorchScript code is the same for every model: what the model-trust rule of format ``ekd-model-2``
(:mod:`ekd.model_file`) compares byte for byte. Its forward is the deployed-model interface::

    forward(species: Tensor[N] int64 atomic numbers (local + ghost atoms),
            pair_first: Tensor[P] int64, pair_second: Tensor[P] int64,   FULL list, both directions
            r_ij: Tensor[P, 3] = x_j - x_i with images applied, Angstrom)
        -> Tensor[N] per-atom energies, kcal/mol

Pairs at or beyond the cutoff may be passed and contribute nothing (the cutoff function is masked
with ``|r_ij| < cutoff``). Forces follow by autograd of the summed (owned) atom energies with
respect to ``r_ij``: with ``g = dE/dr_ij``, ``F_i += g`` and ``F_j -= g``.

The math, per interaction layer (hippynn 0.1.3, ``layers/hiplayers``), for a pair p = (i, j) at
distance d with unit vector u = r_ij / d, N sensitivities, input features z (A, F):

* sensitivities ``s[p, n] = exp(-(1/d - 1/mu_n)^2 sigma_n^2 / 2) * cos^2(pi d / (2 r_c))``
  (hippynn's "inverse" sensitivities with its cosine-squared hard cutoff r_c; mu, sigma trained);
* angular parts ``a[p, c]``: c = 0 the scalar 1; l_max >= 1 adds u (3); l_max = 2 adds the
  traceless symmetric u u^T - I/3 as its 5 upper components (xx, xy, xz, yy, yz);
* environment ``env[i, c, n, f] = sum_{p: first = i} a[p, c] s[p, n] z[j, f]`` (the envsum);
* ``t[i, c, o] = sum_{n, f} env[i, c, n, f] W[n, o, f]`` (the trained interaction weights);
* output ``t[:, 0] + vecscales * sqrt(|t_vec|^2 + cusp) + quadscales * sqrt(|Q|_F^2 + cusp)
  + selfint(z)``, where |Q|_F^2 = 2 (sum_k q_k^2 + q_xx q_yy) for the traceless 5-vector q.

Each interaction layer and each atom layer (``Linear``) is wrapped in hippynn's ResNet block
``y = res(softplus(layer(x))) + adjust(x)``; the energy head adds, per atom, the element offset
and one linear read-out of every interaction block's output features.

How the sums over pairs are computed is chosen once, in :func:`script_member` (:func:`choose_envsum`),
and recorded (``module.envsum_impl``; ``ops_library`` and ``description`` in :func:`metadata`):

* "ekd-tensor" (default for l_max >= 1 when ekd's op library works here):
  ``torch.ops.ekd.tensor_envsum`` with the weights applied before the pair sum,
  ``t[i, c, o] = sum_p a[p, c] sum_n s[p, n] (z W_n)[j, o]``: the same sum in another order
  (agrees with hippynn to ~1e-16 relative), ~2x faster than "ekd" for l_max = 2;
* "ekd" (default for l_max = 0): ``torch.ops.ekd.envsum``, hippynn's order;
* "torch" (no op library): pure torch in hippynn's order (:class:`EnvSumTorch`: pairs scattered
  into padded per-atom neighbour tables, then one batched matrix product; nothing of size
  pairs x sensitivities x features is built).

A module that calls an op needs the library loaded before ``torch.jit.load`` (``import ekd._ops``;
:func:`ekd.model_file.load_model` does that when ``ops_library`` is set). "torch" builds
:class:`ScriptedHipnnTorch` (model kind "hipnn-torch"), whose code calls no op.

Stage methods (``ekd-model-2``, for LAMMPS's per-layer halo exchange): ``embed(species)`` ->
(one-hot features, per-element offsets) and ``interaction(k, z, pair_first, pair_second, r_ij,
n_out=-1)`` -> (block k's output features, the block's per-atom read-out energy), for the first
n_out rows only when n_out >= 0 (the pair sums read all rows of z; the dense layers run on the kept
rows: LAMMPS keeps its owned atoms); ``forward`` is their sum.
:class:`ScriptedToy` (kind "toy") is a small test model with the same interface.

After changing a scripted class, regenerate the canonical code: ``python -m ekd.model_file
--regenerate`` (tests/unit/test_model_trust.py checks it).
"""

import contextlib
import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

#: what :func:`metadata` names as the op library a model calls (ekd.export.OPS_LIBRARY)
OPS_LIBRARY = "libekd_ops.so"

# ---------------------------------------------------------------------------------------------
# environment sums


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
    ``import ekd._ops`` and giving the right numbers on a tiny input with their CPU kernels)."""
    try:
        from . import _ops  # noqa: F401  (loads the op library)
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


def ekd_envsum_available() -> bool:
    """True when ``torch.ops.ekd.envsum`` works here (see :func:`available_ops`)."""
    return "envsum" in available_ops()


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


# ---------------------------------------------------------------------------------------------
# the scripted modules
#
# The classes below hold every weight in list[Tensor] attributes (one entry per layer) and every
# hyper-parameter in plain attributes, with no submodules and no Final constants: TorchScript then
# compiles the same code for every model of a class (width, depth, dtype, cutoff, l_max live in
# data.pkl). That is what lets ekd.model_file (and the LAMMPS plugin) accept a model file only when
# its code is byte-identical to the code this ekd writes (the model-trust rule, FORMAT ekd-model-2).


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """nn.Linear's forward; an empty ``bias`` stands for none (a list[Tensor] cannot hold None)."""
    if bias.numel() == 0:
        return nn.functional.linear(x, weight)
    return nn.functional.linear(x, weight, bias)


def _check_pairs(n_atoms: int, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> None:
    n_pairs = pair_first.shape[0]
    if pair_first.dim() != 1 or pair_second.shape != pair_first.shape:
        raise ValueError(
            "pair_first, pair_second: expected two 1-d tensors of the same length [P], got shapes "
            + str(pair_first.shape)
            + " and "
            + str(pair_second.shape)
        )
    if r_ij.dim() != 2 or r_ij.shape[0] != n_pairs or r_ij.shape[1] != 3:
        raise ValueError("r_ij: expected [P, 3] with P = " + str(n_pairs) + ", got shape " + str(r_ij.shape))
    if n_pairs > 0:
        lo = int(torch.minimum(pair_first.min(), pair_second.min()))
        hi = int(torch.maximum(pair_first.max(), pair_second.max()))
        if lo < 0 or hi >= n_atoms:
            raise ValueError(
                "pair_first, pair_second: atom indices must lie in [0, "
                + str(n_atoms)
                + "), got "
                + str(lo)
                + ".."
                + str(hi)
            )


def _check_stage(k: int, n_interactions: int, z: Tensor, width: int) -> None:
    if k < 0 or k >= n_interactions:
        raise ValueError("interaction: k must lie in [0, " + str(n_interactions) + "), got " + str(k))
    if z.dim() != 2 or z.shape[1] != width:
        raise ValueError(
            "interaction " + str(k) + ": features must be [N, " + str(width) + "], got shape " + str(z.shape)
        )


def _check_rows(k: int, n_out: int, n_atoms: int) -> None:
    if n_out < -1 or n_out > n_atoms:
        raise ValueError(
            "interaction "
            + str(k)
            + ": n_out must be -1 (all rows) or lie in [0, "
            + str(n_atoms)
            + "] (the rows of z), got "
            + str(n_out)
        )


def _empty(dtype: torch.dtype) -> Tensor:
    return torch.zeros(0, dtype=dtype)


def _copy(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.detach().clone().to(dtype)


class ScriptedHipnn(nn.Module):
    """A HIPNN energy model with the deployed-model interface and the stage methods of
    ``ekd-model-2`` (see the module docstring); pair sums with ekd's ops ("ekd" / "ekd-tensor").

    Build it with :func:`build_module` / :func:`script_member`; weights are copies of a trained
    member's. Per interaction block k (one entry per block in each list): the layer's
    sensitivities (mu, sigma, layer_cutoff), interaction weights [N * F_in, F_out], self-interaction,
    vector/quadrupole scales, the ResNet's res and adjust linears, the block's atom layers
    (``atom_*[atom_start[k]:atom_start[k + 1]]``) and the energy head's read-out.
    """

    l_max: int
    n_species: int
    known_species: str
    n_interactions: int
    cutoff: float
    envsum_impl: str
    metadata_json: str
    feature_widths: list[int]  # TorchScript reads these annotations
    beta: float
    threshold: float
    layer_cutoff: list[float]
    cusp_reg: list[float]
    has_adjust: list[bool]
    atom_start: list[int]
    mu: list[Tensor]
    sigma: list[Tensor]
    int_weights: list[Tensor]
    selfint_w: list[Tensor]
    selfint_b: list[Tensor]
    vecscales: list[Tensor]
    quadscales: list[Tensor]
    res_w: list[Tensor]
    res_b: list[Tensor]
    adjust_w: list[Tensor]
    adjust_b: list[Tensor]
    atom_w: list[Tensor]
    atom_b: list[Tensor]
    atom_res_w: list[Tensor]
    atom_res_b: list[Tensor]
    readout_w: list[Tensor]
    readout_b: list[Tensor]

    def __init__(
        self, network, henergy, species: tuple[int, ...], l_max: int, envsum: str, dtype: torch.dtype = torch.float64
    ):
        super().__init__()
        _check_supported(network, henergy, species)
        act = network.activation
        self.beta, self.threshold = float(act.beta), float(act.threshold)
        self.l_max = int(l_max)
        self.n_species = len(species)
        self.known_species = ", ".join(str(int(z)) for z in species)
        self.n_interactions = len(network.blocks)
        self.envsum_impl = envsum
        self.metadata_json = ""
        # atomic number -> model species index, -1 for elements the model does not know
        species_index = torch.full((max(species) + 1,), -1, dtype=torch.long)
        species_index[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("species_index", species_index)
        # HEnergy's first layer: a bias-free Linear of the one-hot species = per-element offsets
        self.register_buffer("offsets", _copy(henergy.layers[0].weight.reshape(-1), dtype))
        names = (
            "mu sigma int_weights selfint_w selfint_b vecscales quadscales res_w res_b adjust_w adjust_b "
            "atom_w atom_b atom_res_w atom_res_b readout_w readout_b"
        ).split()
        lists: dict[str, list[Tensor]] = {name: [] for name in names}
        self.layer_cutoff, self.cusp_reg, self.has_adjust, self.atom_start = [], [], [], [0]
        widths = []

        def add_linear(prefix: str, layer: nn.Linear) -> None:
            lists[prefix + "w"].append(_copy(layer.weight, dtype))
            lists[prefix + "b"].append(_empty(dtype) if layer.bias is None else _copy(layer.bias, dtype))

        for k, block in enumerate(network.blocks):
            wrapped = block[0]
            base = wrapped.base_layer
            sens = base.sensitivity
            n_sense, nf_in, nf_out = int(base.n_dist), int(base.nf_in), int(base.nf_out)
            widths.append(nf_in)
            self.layer_cutoff.append(float(sens.cutoff.hard_max_dist))
            self.cusp_reg.append(float(getattr(base, "cusp_reg", 0.0)))
            lists["mu"].append(_copy(sens.mu, dtype))  # [1, N]
            lists["sigma"].append(_copy(sens.sigma, dtype))
            # int_weights [N, O, F] -> [N * F, O], row n * F + f: the layout of env [A, C, N, F]
            w = base.int_weights.detach().permute(0, 2, 1).reshape(n_sense * nf_in, nf_out)
            lists["int_weights"].append(_copy(w, dtype))
            add_linear("selfint_", base.selfint)
            zeros = torch.zeros(nf_out, dtype=dtype)
            lists["vecscales"].append(_copy(base.vecscales, dtype) if l_max >= 1 else zeros)
            lists["quadscales"].append(_copy(base.quadscales, dtype) if l_max >= 2 else zeros.clone())
            add_linear("res_", wrapped.res_layer)
            self.has_adjust.append(bool(wrapped.needs_size_adjust))
            if wrapped.needs_size_adjust:
                add_linear("adjust_", wrapped.adjust_layer)
            else:
                lists["adjust_w"].append(_empty(dtype))
                lists["adjust_b"].append(_empty(dtype))
            for lay in block[1:]:
                if lay.needs_size_adjust:
                    raise NotImplementedError("atom layer with a size-adjusting ResNet wrapper (not built by ekd)")
                add_linear("atom_", lay.base_layer)
                add_linear("atom_res_", lay.res_layer)
            self.atom_start.append(len(lists["atom_w"]))
            add_linear("readout_", henergy.layers[k + 1])
        for name, values in lists.items():
            setattr(self, name, values)
        widths.append(int(lists["readout_w"][-1].shape[1]))
        self.feature_widths = widths
        self.cutoff = self.layer_cutoff[0]

    def _species(self, species: Tensor) -> Tensor:
        """atomic numbers [N] -> model species indices [N]; clear error for unknown elements."""
        n_table = self.species_index.shape[0]
        idx = self.species_index[species.clamp(0, n_table - 1)]
        bad = (idx < 0) | (species != species.clamp(0, n_table - 1))
        if bool(bad.any()):
            unknown = torch.unique(species[bad])
            names = [str(int(unknown[k])) for k in range(unknown.shape[0])]
            raise ValueError(
                "species: atomic number(s) "
                + ", ".join(names)
                + " are not among this model's species ("
                + self.known_species
                + ")"
            )
        return idx

    def _angular(self, r: Tensor, d: Tensor) -> Tensor:
        """r [P, 3], d [P] -> angular parts a [P, C] (C = 1, 4, 9 for l_max 0, 1, 2)."""
        n_pairs = r.shape[0]
        one = torch.ones((n_pairs, 1), dtype=r.dtype, device=r.device)
        if self.l_max == 0:
            return one
        u = r / d.unsqueeze(1)
        if self.l_max == 1:
            return torch.cat([one, u], dim=1)
        uu = u.unsqueeze(1) * u.unsqueeze(2)
        uu = (uu + uu.transpose(1, 2)) / 2
        trace = torch.diagonal(uu, dim1=1, dim2=2).sum(dim=1) / 3.0
        uu = uu - trace.unsqueeze(1).unsqueeze(2) * torch.eye(3, dtype=r.dtype, device=r.device).unsqueeze(0)
        # the upper components hippynn keeps (xx, xy, xz, yy, yz); zz follows from tracelessness
        quad = uu.reshape(n_pairs, 9)[:, torch.tensor([0, 1, 2, 4, 5], device=r.device)]
        return torch.cat([one, u, quad], dim=1)

    def _sensitivities(self, k: int, d: Tensor) -> Tensor:
        """d [P] Angstrom -> [P, N] of block k: inverse sensitivities times the cos^2 cutoff (zero at
        and beyond the cutoff)."""
        mu = self.mu[k]
        sigma = self.sigma[k]
        cutoff = self.layer_cutoff[k]
        base = torch.exp(-0.5 * ((d.unsqueeze(1) ** -1 - mu**-1) ** 2 / (sigma**-2)))
        cut = torch.cos(math.pi / 2 * d / cutoff) ** 2
        cut = cut * (d < cutoff).to(cut.dtype)
        return base * cut.unsqueeze(1)

    def _contract(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        if self.envsum_impl == "ekd":
            return _contract_envsum(angular, s, z, weights, pair_first, pair_second)
        return _contract_tensor_envsum(angular, s, z, weights, pair_first, pair_second)

    def _interaction(
        self, k: int, z: Tensor, pair_first: Tensor, pair_second: Tensor, d: Tensor, angular: Tensor, n_out: int
    ) -> tuple[Tensor, Tensor]:
        s = self._sensitivities(k, d)
        t = self._contract(angular, s, z, self.int_weights[k], pair_first, pair_second)  # [A, C, O]
        if n_out >= 0:
            # the pair sums read every row of z; the dense layers run on the rows the caller keeps
            # (LAMMPS's halo mode: owned atoms; the others' rows come from their owners)
            t = t[:n_out]
            z = z[:n_out]
        out = t[:, 0]
        if self.l_max >= 1:
            vec = torch.sqrt(torch.square(t[:, 1:4]).sum(dim=1) + self.cusp_reg[k])
            out = out + vec * self.vecscales[k].unsqueeze(0)
        if self.l_max >= 2:
            q = t[:, 4:9]
            quad = 2 * (torch.square(q).sum(dim=1) + q[:, 0] * q[:, 3])
            out = out + torch.sqrt(quad + self.cusp_reg[k]) * self.quadscales[k].unsqueeze(0)
        out = out + _linear(z, self.selfint_w[k], self.selfint_b[k])
        middle = nn.functional.softplus(out, self.beta, self.threshold)
        adjusted = z
        if self.has_adjust[k]:
            adjusted = _linear(z, self.adjust_w[k], self.adjust_b[k])
        z = _linear(middle, self.res_w[k], self.res_b[k]) + adjusted
        for a in range(self.atom_start[k], self.atom_start[k + 1]):
            inner = nn.functional.softplus(_linear(z, self.atom_w[a], self.atom_b[a]), self.beta, self.threshold)
            z = _linear(inner, self.atom_res_w[a], self.atom_res_b[a]) + z
        return z, _linear(z, self.readout_w[k], self.readout_b[k]).squeeze(1)

    @torch.jit.export
    def embed(self, species: Tensor) -> tuple[Tensor, Tensor]:
        """species [N] int64 atomic numbers -> (one-hot features z0 [N, F_0], offsets e0 [N] kcal/mol)."""
        if species.dim() != 1:
            raise ValueError("species: expected a 1-d tensor of atomic numbers [N], got shape " + str(species.shape))
        idx = self._species(species)
        z = nn.functional.one_hot(idx, self.n_species).to(self.offsets.dtype)
        return z, self.offsets[idx]

    @torch.jit.export
    def interaction(
        self, k: int, z: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor, n_out: int = -1
    ) -> tuple[Tensor, Tensor]:
        """Block k: features z [N, F_k] -> (z [M, F_{k+1}], the block's per-atom energy [M] kcal/mol)
        for the first M = n_out rows (-1: M = N, all rows); the pair sums still read all N rows of z."""
        _check_stage(k, self.n_interactions, z, self.feature_widths[k])
        _check_pairs(z.shape[0], pair_first, pair_second, r_ij)
        _check_rows(k, n_out, z.shape[0])
        r = r_ij.to(self.offsets.dtype)
        d = torch.linalg.vector_norm(r, dim=1)
        return self._interaction(k, z.to(self.offsets.dtype), pair_first, pair_second, d, self._angular(r, d), n_out)

    def forward(self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> Tensor:
        """species [N] int64, pair_first/pair_second [P] int64, r_ij [P, 3] Angstrom -> energies [N] kcal/mol."""
        if species.dim() != 1:
            raise ValueError("species: expected a 1-d tensor of atomic numbers [N], got shape " + str(species.shape))
        _check_pairs(species.shape[0], pair_first, pair_second, r_ij)
        z, energy = self.embed(species)
        r = r_ij.to(self.offsets.dtype)
        d = torch.linalg.vector_norm(r, dim=1)
        angular = self._angular(r, d)
        for k in range(self.n_interactions):
            z, e = self._interaction(k, z, pair_first, pair_second, d, angular, -1)
            energy = energy + e
        return energy.to(r_ij.dtype)


class ScriptedHipnnTorch(ScriptedHipnn):
    """:class:`ScriptedHipnn` with the pure-torch pair sums (envsum "torch"): its code calls no op of
    ekd's library, so it loads where the library is missing (model kind "hipnn-torch")."""

    def _contract(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        return _contract_torch(angular, s, z, weights, pair_first, pair_second)


class ScriptedToy(nn.Module):
    """TESTS AND BENCHMARKS ONLY: a small message-passing model with the deployed-model interface
    and the stage methods (model kind "toy"; random weights, no chemistry).

    Species embedding h_i, then per layer h_i <- tanh(h_i + sum_j W_k(|r_ij|) * h_j), with the
    radial weights W_k a linear map of Gaussians times the smooth cutoff
    f_c(r) = (cos(pi r / rc) + 1) / 2; energy e_i = e0[species_i] + a short-range repulsion
    1/2 sum_j A exp(-r / rho) f_c(r) (that keeps MD from collapsing; block 0's energy) +
    MLP(h_i) after the last layer (the last block's energy). All in kcal/mol; r_ij and the
    results in the model dtype.
    """

    cutoff: float
    n_interactions: int
    metadata_json: str
    feature_widths: list[int]
    gamma: float
    repulsion: float
    rho: float
    radial: list[Tensor]

    def __init__(
        self,
        atomic_numbers: list[int],
        cutoff: float,
        n_interactions: int,
        width: int,
        n_basis: int,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        if n_interactions < 1:
            raise ValueError(f"toy model: n_interactions must be >= 1, got {n_interactions}")
        self.cutoff = float(cutoff)
        self.n_interactions = int(n_interactions)
        self.metadata_json = ""
        self.feature_widths = [int(width)] * (n_interactions + 1)
        z_index = torch.full((max(atomic_numbers) + 1,), -1, dtype=torch.long)
        z_index[torch.tensor(atomic_numbers)] = torch.arange(len(atomic_numbers))
        self.register_buffer("z_index", z_index)
        self.register_buffer("centers", torch.linspace(0.6, cutoff, n_basis).to(dtype))
        self.gamma = float((n_basis / cutoff) ** 2)
        # random draws in this order and in float32, as ekd's earlier toy model made them
        embedding = torch.randn(len(atomic_numbers), width)
        radial = [nn.Linear(n_basis, width, bias=False).weight.detach() for _ in range(n_interactions)]
        hidden, out = nn.Linear(width, width), nn.Linear(width, 1)
        e0 = 10.0 * torch.randn(len(atomic_numbers))
        self.register_buffer("embedding", embedding.to(dtype))
        self.radial = [w.to(dtype) for w in radial]
        self.register_buffer("hidden_w", hidden.weight.detach().to(dtype))
        self.register_buffer("hidden_b", hidden.bias.detach().to(dtype))
        self.register_buffer("out_w", out.weight.detach().to(dtype))
        self.register_buffer("out_b", out.bias.detach().to(dtype))
        self.register_buffer("e0", e0.to(dtype))
        self.repulsion = 300.0
        self.rho = 0.3

    def _basis(self, r_ij: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d = torch.linalg.vector_norm(r_ij, dim=1)
        inside = d < self.cutoff
        # where(inside) twice: no NaN gradients from cos beyond the cutoff
        fc = torch.where(inside, 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0), torch.zeros_like(d))
        basis = torch.exp(-self.gamma * (d.unsqueeze(1) - self.centers.to(d.dtype)) ** 2) * fc.unsqueeze(1)
        return d, fc, basis

    def _interaction(
        self,
        k: int,
        h: Tensor,
        pair_first: Tensor,
        pair_second: Tensor,
        d: Tensor,
        fc: Tensor,
        basis: Tensor,
        n_out: int,
    ) -> tuple[Tensor, Tensor]:
        message = nn.functional.linear(basis, self.radial[k]) * h[pair_second]
        summed = torch.zeros_like(h).index_add(0, pair_first, message)
        e = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        if k == 0:
            e = e.index_add(0, pair_first, 0.5 * self.repulsion * torch.exp(-d / self.rho) * fc)
        if n_out >= 0:
            # the rows the caller keeps (see ScriptedHipnn._interaction)
            h, summed, e = h[:n_out], summed[:n_out], e[:n_out]
        h = torch.tanh(h + summed)
        if k == self.n_interactions - 1:
            hidden = torch.tanh(nn.functional.linear(h, self.hidden_w, self.hidden_b))
            e = e + nn.functional.linear(hidden, self.out_w, self.out_b).squeeze(1)
        return h, e

    @torch.jit.export
    def embed(self, species: Tensor) -> tuple[Tensor, Tensor]:
        """species [N] -> (embedding h0 [N, width], offsets e0 [N] kcal/mol)."""
        z = species.clamp(0, self.z_index.shape[0] - 1)
        idx = self.z_index[z]
        if bool(((idx < 0) | (species != z)).any()):
            raise ValueError("toy model: an atomic number is not among the model's species")
        return self.embedding[idx], self.e0[idx]

    @torch.jit.export
    def interaction(
        self, k: int, z: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor, n_out: int = -1
    ) -> tuple[Tensor, Tensor]:
        """Layer k: h [N, width] -> (h [M, width], the layer's per-atom energy [M] kcal/mol) for the
        first M = n_out rows (-1: M = N); the messages still read all N rows of h."""
        _check_stage(k, self.n_interactions, z, self.feature_widths[k])
        _check_pairs(z.shape[0], pair_first, pair_second, r_ij)
        _check_rows(k, n_out, z.shape[0])
        d, fc, basis = self._basis(r_ij)
        return self._interaction(k, z, pair_first, pair_second, d, fc, basis, n_out)

    def forward(self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> Tensor:
        h, energy = self.embed(species)
        d, fc, basis = self._basis(r_ij)
        for k in range(self.n_interactions):
            h, e = self._interaction(k, h, pair_first, pair_second, d, fc, basis, -1)
            energy = energy + e
        return energy


# ---------------------------------------------------------------------------------------------
# building from a trained member


def _check_supported(network, henergy, species) -> None:
    """Refuse hippynn options this module does not re-implement (ekd's models never use them)."""
    from hippynn.layers.hiplayers import InverseSensitivityModule
    from hippynn.layers.hiplayers.sensitivity import CosCutoff
    from hippynn.layers.transform import ResNetWrapper

    if not network.resnet or network.resnet is not True:
        raise NotImplementedError(f"scripted HIPNN: only resnet=True networks are supported, got {network.resnet!r}")
    if type(network.activation) is not nn.Softplus:
        raise NotImplementedError(f"scripted HIPNN: only Softplus activation is supported, got {network.activation}")
    for block in network.blocks:
        if not all(isinstance(lay, ResNetWrapper) for lay in block):
            raise NotImplementedError("scripted HIPNN: every layer must be wrapped in hippynn's ResNetWrapper")
        sens = block[0].base_layer.sensitivity
        if type(sens) is not InverseSensitivityModule or type(sens.cutoff) is not CosCutoff:
            raise NotImplementedError(
                f"scripted HIPNN: only inverse sensitivities with the cos^2 cutoff are supported, got {sens}"
            )
    if henergy.first_is_interacting or len(henergy.layers) != len(network.blocks) + 1:
        raise NotImplementedError("scripted HIPNN: the energy head must read the one-hot species and every block")
    if any(lay.out_features != 1 for lay in henergy.layers):
        raise NotImplementedError("scripted HIPNN: only single-target energy heads are supported")
    net_species = [int(z) for z in network.species_set.tolist()]
    if net_species != [0, *species]:
        raise ValueError(f"scripted HIPNN: network species {net_species} do not match the model's [0, *{species}]")


def _resolve(member_or_dir):
    """A Member, a Model (ekd.models) or a member directory -> (Model, role)."""
    from .models import Model
    from .train import Member, load_member

    if isinstance(member_or_dir, str | Path):
        member_or_dir = load_member(Path(member_or_dir))
    if isinstance(member_or_dir, Member):
        return member_or_dir.model, str(member_or_dir.spec.get("role", ""))
    if isinstance(member_or_dir, Model):
        return member_or_dir, ""
    raise TypeError(f"expected an ekd Member, Model or member directory, got {type(member_or_dir).__name__}")


@contextlib.contextmanager
def _quiet_jit():
    # torch 2.13 deprecates torch.jit.script/save/load with a warning per call; TorchScript is
    # still what LAMMPS runs without Python
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*", category=DeprecationWarning)
        yield


def build_module(member_or_dir, dtype: torch.dtype = torch.float64, envsum: str = "auto") -> ScriptedHipnn:
    """The unscripted :class:`ScriptedHipnn` (:class:`ScriptedHipnnTorch` for envsum "torch") of a
    member, in eval mode; its weights are plain tensors (no parameters, nothing requires gradients).

    member_or_dir: an :class:`ekd.train.Member`, an :class:`ekd.models.Model` or a member's
    directory (with ``model.pt``). dtype: of the weights, r_ij and the energies.
    envsum: how the interaction sums are computed (see :func:`choose_envsum`): "auto", "ekd"
    (``torch.ops.ekd.envsum``, hippynn's order), "ekd-tensor" (``torch.ops.ekd.tensor_envsum``,
    weights first) or "torch" (pure torch, hippynn's order).
    """
    if envsum not in ("auto", *_CONTRACTIONS):
        raise ValueError(f"envsum: expected 'auto' or one of {list(_CONTRACTIONS)}, got {envsum!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    model, _ = _resolve(member_or_dir)
    envsum = choose_envsum(model.config.l_max, envsum)
    network = model.network.torch_module
    henergy = model.henergy.torch_module
    cls = ScriptedHipnnTorch if envsum == "torch" else ScriptedHipnn
    return cls(network, henergy, model.species, model.config.l_max, envsum, dtype).eval()


def script_member(member_or_dir, dtype: torch.dtype = torch.float64, envsum: str = "auto") -> torch.jit.ScriptModule:
    """TorchScript module of a trained member with the deployed-model interface.

    Returns ``torch.jit.script`` of :func:`build_module` (same arguments). The module's
    ``envsum_impl`` says which pair sums it calls ("ekd" / "ekd-tensor": ekd's ops, which need the
    op library loaded before ``torch.jit.load``; "torch": pure torch); ``cutoff`` (Angstrom) and
    ``n_interactions``, ``feature_widths`` and ``metadata_json`` (empty until
    :func:`ekd.model_file.save_model` binds the metadata) are attributes too; ``embed`` and
    ``interaction`` are the stage methods of ``ekd-model-2``. Inference only.
    """
    module = build_module(member_or_dir, dtype=dtype, envsum=envsum)
    with _quiet_jit():
        return torch.jit.script(module)


def metadata(member_or_dir, module: nn.Module | None = None) -> dict:
    """Fields of :class:`ekd.export.ModelMetadata` for a member's deployed model.

    module: the (scripted) module returned by :func:`script_member`; its dtype and envsum choice
    are recorded. Without it: float64 and the envsum "auto" would pick now.
    Returns cutoff (the hard cutoff, Angstrom), n_interactions, species (element symbols in model
    order), dtype, ops_library (``libekd_ops.so`` if the module calls ekd's ops, else None), kind
    ("hipnn", or "hipnn-torch" for the pure-torch pair sums: the module's class), role,
    description (architecture and envsum), energy_unit, length_unit.
    """
    from ase.data import chemical_symbols

    model, role = _resolve(member_or_dir)
    cfg = model.config
    if module is not None:
        dtype = str(module.offsets.dtype).removeprefix("torch.")
        impl = str(module.envsum_impl)
    else:
        dtype, impl = "float64", choose_envsum(model.config.l_max)
    return {
        "cutoff": float(cfg.cutoff_hard),
        "n_interactions": int(cfg.n_interactions),
        "species": [chemical_symbols[z] for z in model.species],
        "dtype": dtype,
        "ops_library": OPS_LIBRARY if impl in ("ekd", "ekd-tensor") else None,
        "kind": "hipnn-torch" if impl == "torch" else "hipnn",
        "role": role,
        "description": (
            f"ekd HIPNN ({('Hipnn', 'HipnnVec', 'HipnnQuad')[cfg.l_max]}, l_max={cfg.l_max}, width={cfg.width}, "
            f"n_sensitivities={cfg.n_sensitivities}, n_atom_layers={cfg.n_atom_layers}), envsum={impl}"
        ),
        "energy_unit": "kcal/mol",
        "length_unit": "angstrom",
    }


def example_hipnn(
    envsum: str = "torch", l_max: int = 2, n_interactions: int = 1, width: int = 4, dtype: torch.dtype = torch.float64
) -> ScriptedHipnn:
    """A small unscripted HIPNN module with random weights (no training): what the canonical-code
    generator (:func:`ekd.model_file.regenerate`) and tests script. Seeds torch's generator in a
    fork (the caller's random state is left alone)."""
    from .config import ModelConfig
    from .models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        arch = ModelConfig(
            l_max=l_max,
            n_interactions=n_interactions,
            n_atom_layers=1,
            width=width,
            n_sensitivities=3,
            cutoff_soft_min=0.8,
            cutoff_soft_max=2.0,
            cutoff_hard=2.5,
        )
        model = build_model(arch, [1, 6])
        return build_module(model, dtype=dtype, envsum=envsum)
