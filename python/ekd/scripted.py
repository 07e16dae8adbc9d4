"""A trained ekd HIPNN member re-expressed as a TorchScript module with the deployed-model interface.

hippynn's graph machinery cannot be scripted (variadic module arguments, tensor constants,
data-dependent pair finding), so this module does not try: :func:`script_member` copies the trained
weights of hippynn's torch modules (the network ``Hipnn`` / ``HipnnVec`` / ``HipnnQuad`` and the
energy head ``HEnergy``) into small scriptable modules written here that compute the same math,
term by term and in the same order, and scripts the result. Its forward is the deployed-model
interface of :mod:`ekd.export`::

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
:func:`ekd.export.load_model` does that when ``ops_library`` is set).
"""

import contextlib
import math
import warnings
from pathlib import Path
from typing import Final

import torch
from torch import Tensor, nn

#: what :func:`metadata` names as the op library a model calls (ekd.export.OPS_LIBRARY)
OPS_LIBRARY = "libekd_ops.so"

# upper components of a flattened symmetric 3 x 3 tensor that hippynn keeps (xx, xy, xz, yy, yz):
# the zz component follows from tracelessness
_QUAD_COMPONENTS = (0, 1, 2, 4, 5)


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


class Contraction(nn.Module):
    """The interaction sum of a layer, t [A, C, O] (see the module docstring), from angular parts
    [P, C], sensitivities [P, N], features z [A, F], weights [N * F, O] and the pairs."""

    def forward(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        raise NotImplementedError


class EnvSumOp(Contraction):
    """hippynn's order (envsum of the stacked sensitivities, then the weights) with
    ``torch.ops.ekd.envsum``: sensitivities [P, S], features [A, F] -> env [A, S, F]."""

    def forward(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        env = torch.ops.ekd.envsum(_stack(angular, s), z, pair_first, pair_second)
        return _weigh(env, weights, angular.shape[1])


class TensorEnvSumOp(Contraction):
    """The weights first, then the pair sum with ``torch.ops.ekd.tensor_envsum``:
    x[j, n, o] = sum_f W[n, o, f] z[j, f], t[i, c, o] = sum_{p: first=i} a[p, c] sum_n s[p, n] x[j, n, o].
    Same sum as hippynn's in another order; per pair N O + C O products instead of C N F, and no
    [P, C N] stacked sensitivities (the gain grows with l_max)."""

    def forward(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        n_sense = s.shape[1]
        n_feat = z.shape[1]
        n_out = weights.shape[1]
        # weights [N * F, O] (row n F + f) -> [F, N * O]
        w = weights.reshape(n_sense, n_feat, n_out).permute(1, 0, 2).reshape(n_feat, n_sense * n_out)
        x = torch.mm(z, w).reshape(z.shape[0], n_sense, n_out)
        return torch.ops.ekd.tensor_envsum(angular, s, x, pair_first, pair_second)


class EnvSumTorchContraction(Contraction):
    """hippynn's order with the pure-torch :class:`EnvSumTorch`."""

    def __init__(self):
        super().__init__()
        self.envsum = EnvSumTorch()

    def forward(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        env = self.envsum(_stack(angular, s), z, pair_first, pair_second)
        return _weigh(env, weights, angular.shape[1])


class EnvSumTorch(nn.Module):
    """Pure-torch envsum: ``env[i, s, f] = sum_{p: first=i} sensitivities[p, s] features[second[p], f]``.

    sensitivities [P, S], features [A, F] -> env [A, S, F]. Each pair is scattered into a slot of
    its first atom's padded neighbour table (``index_put``: [A, K, S] sensitivities and [A, K, F]
    neighbour features, K = most pairs of any atom), then one batched matrix product contracts the
    slots. Nothing of size pairs x S x F exists, forward or backward (an ``index_add`` of the
    per-pair outer products would build P x S x F elements twice and was ~15x slower than the op
    on a 3,000-atom box); the price is the padding, K * A instead of P rows.
    """

    def forward(self, sensitivities: Tensor, features: Tensor, pair_first: Tensor, pair_second: Tensor) -> Tensor:
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
# layers


class Interaction(nn.Module):
    """One HIPNN interaction layer (l_max 0, 1 or 2) inside hippynn's ResNet wrapper.

    features [A, F_in], pairs, distances d [P], angular parts a [P, C] -> features [A, F_out].
    """

    l_max: Final[int]
    n_components: Final[int]
    n_sense: Final[int]
    nf_in: Final[int]
    nf_out: Final[int]
    cutoff: Final[float]
    cusp_reg: Final[float]
    beta: Final[float]
    threshold: Final[float]

    def __init__(self, wrapped, l_max: int, contraction: Contraction, beta: float, threshold: float):
        """wrapped: hippynn's ``ResNetWrapper`` around an ``InteractLayer`` / ``...Vec`` / ``...Quad``."""
        super().__init__()
        base = wrapped.base_layer
        sens = base.sensitivity
        self.l_max = int(l_max)
        self.n_components = (1, 4, 9)[l_max]
        self.n_sense = int(base.n_dist)
        self.nf_in = int(base.nf_in)
        self.nf_out = int(base.nf_out)
        self.cutoff = float(sens.cutoff.hard_max_dist)
        self.cusp_reg = float(getattr(base, "cusp_reg", 0.0))
        self.beta = float(beta)
        self.threshold = float(threshold)
        self.contraction = contraction
        # [1, N] each, trained
        self.mu = nn.Parameter(sens.mu.detach().clone())
        self.sigma = nn.Parameter(sens.sigma.detach().clone())
        # int_weights [N, O, F] -> [N * F, O], row n * F + f: the layout of env [A, C, N, F]
        w = base.int_weights.detach().permute(0, 2, 1).reshape(self.n_sense * self.nf_in, self.nf_out)
        self.weights = nn.Parameter(w.clone())
        self.selfint = _copy_linear(base.selfint)
        out = self.nf_out
        self.vecscales = nn.Parameter(base.vecscales.detach().clone() if l_max >= 1 else torch.zeros(out))
        self.quadscales = nn.Parameter(base.quadscales.detach().clone() if l_max >= 2 else torch.zeros(out))
        self.res = _copy_linear(wrapped.res_layer)
        self.adjust = _copy_linear(wrapped.adjust_layer) if wrapped.needs_size_adjust else nn.Identity()

    def sensitivities(self, d: Tensor) -> Tensor:
        """d [P] Angstrom -> [P, N]: inverse sensitivities times the cos^2 cutoff (zero at and
        beyond the cutoff)."""
        base = torch.exp(-0.5 * ((d.unsqueeze(1) ** -1 - self.mu**-1) ** 2 / (self.sigma**-2)))
        cut = torch.cos(math.pi / 2 * d / self.cutoff) ** 2
        cut = cut * (d < self.cutoff).to(cut.dtype)
        return base * cut.unsqueeze(1)

    def forward(self, z: Tensor, pair_first: Tensor, pair_second: Tensor, d: Tensor, angular: Tensor) -> Tensor:
        s = self.sensitivities(d)
        t = self.contraction(angular, s, z, self.weights, pair_first, pair_second)  # [A, C, O]
        out = t[:, 0]
        if self.l_max >= 1:
            vec = torch.sqrt(torch.square(t[:, 1:4]).sum(dim=1) + self.cusp_reg)
            out = out + vec * self.vecscales.unsqueeze(0)
        if self.l_max >= 2:
            q = t[:, 4:9]
            quad = 2 * (torch.square(q).sum(dim=1) + q[:, 0] * q[:, 3])
            out = out + torch.sqrt(quad + self.cusp_reg) * self.quadscales.unsqueeze(0)
        out = out + self.selfint(z)
        middle = nn.functional.softplus(out, self.beta, self.threshold)
        return self.res(middle) + self.adjust(z)


class AtomLayer(nn.Module):
    """A HIPNN atom layer in hippynn's ResNet wrapper: ``res(softplus(W x + b)) + x``."""

    beta: Final[float]
    threshold: Final[float]

    def __init__(self, wrapped, beta: float, threshold: float):
        super().__init__()
        if wrapped.needs_size_adjust:
            raise NotImplementedError("atom layer with a size-adjusting ResNet wrapper (not built by ekd)")
        self.beta = float(beta)
        self.threshold = float(threshold)
        self.base = _copy_linear(wrapped.base_layer)
        self.res = _copy_linear(wrapped.res_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.res(nn.functional.softplus(self.base(x), self.beta, self.threshold)) + x


class Block(nn.Module):
    """Interaction layer, its atom layers, and the energy head's read-out of the block's output."""

    def __init__(self, interaction: Interaction, atom_layers: list[AtomLayer], readout: nn.Linear):
        super().__init__()
        self.interaction = interaction
        self.atom_layers = nn.ModuleList(atom_layers)
        self.readout = readout

    def forward(
        self, z: Tensor, pair_first: Tensor, pair_second: Tensor, d: Tensor, angular: Tensor
    ) -> tuple[Tensor, Tensor]:
        """-> (features [A, F_out], this block's per-atom energy [A])."""
        z = self.interaction(z, pair_first, pair_second, d, angular)
        for layer in self.atom_layers:
            z = layer(z)
        return z, self.readout(z).squeeze(1)


class ScriptedHipnn(nn.Module):
    """A HIPNN energy model with the deployed-model interface (see the module docstring).

    Build it with :func:`script_member`; weights are copies of a trained member's.
    """

    l_max: Final[int]
    n_species: Final[int]
    cutoff: Final[float]
    n_interactions: Final[int]
    envsum_impl: Final[str]
    known_species: Final[str]

    def __init__(self, network, henergy, species: tuple[int, ...], l_max: int, envsum: str):
        super().__init__()
        _check_supported(network, henergy, species)
        act = network.activation
        beta, threshold = float(act.beta), float(act.threshold)
        self.l_max = int(l_max)
        self.n_species = len(species)
        self.known_species = ", ".join(str(int(z)) for z in species)
        self.n_interactions = len(network.blocks)
        self.envsum_impl = envsum
        # atomic number -> model species index, -1 for elements the model does not know
        species_index = torch.full((max(species) + 1,), -1, dtype=torch.long)
        species_index[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("species_index", species_index)
        # HEnergy's first layer: a bias-free Linear of the one-hot species = per-element offsets
        self.offsets = nn.Parameter(henergy.layers[0].weight.detach().reshape(-1).clone())
        blocks = []
        for k, block in enumerate(network.blocks):
            impl = _CONTRACTIONS[envsum]()
            interaction = Interaction(block[0], l_max, impl, beta, threshold)
            atom_layers = [AtomLayer(lay, beta, threshold) for lay in block[1:]]
            blocks.append(Block(interaction, atom_layers, _copy_linear(henergy.layers[k + 1])))
        self.blocks = nn.ModuleList(blocks)
        self.cutoff = blocks[0].interaction.cutoff
        self.register_buffer("quad_components", torch.tensor(_QUAD_COMPONENTS), persistent=False)

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

    def angular(self, r: Tensor, d: Tensor) -> Tensor:
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
        quad = uu.reshape(n_pairs, 9)[:, self.quad_components]
        return torch.cat([one, u, quad], dim=1)

    def forward(self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> Tensor:
        """species [N] int64, pair_first/pair_second [P] int64, r_ij [P, 3] Angstrom -> energies [N] kcal/mol."""
        if species.dim() != 1:
            raise ValueError("species: expected a 1-d tensor of atomic numbers [N], got shape " + str(species.shape))
        n_atoms = species.shape[0]
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
        idx = self._species(species)
        dtype = self.offsets.dtype
        r = r_ij.to(dtype)
        d = torch.linalg.vector_norm(r, dim=1)
        angular = self.angular(r, d)
        z = nn.functional.one_hot(idx, self.n_species).to(dtype)
        energy = self.offsets[idx]
        for block in self.blocks:
            z, e = block(z, pair_first, pair_second, d, angular)
            energy = energy + e
        return energy.to(r_ij.dtype)


# ---------------------------------------------------------------------------------------------
# building from a trained member


def _copy_linear(layer: nn.Linear) -> nn.Linear:
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    out = out.to(layer.weight.dtype)
    out.weight.data.copy_(layer.weight.detach())
    if layer.bias is not None:
        out.bias.data.copy_(layer.bias.detach())
    return out


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
    """The unscripted :class:`ScriptedHipnn` of a member (eval mode, no parameter gradients).

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
    module = ScriptedHipnn(network, henergy, model.species, model.config.l_max, envsum)
    module = module.to(dtype).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def script_member(member_or_dir, dtype: torch.dtype = torch.float64, envsum: str = "auto") -> torch.jit.ScriptModule:
    """TorchScript module of a trained member with the deployed-model interface.

    Returns ``torch.jit.script`` of :func:`build_module` (same arguments). The module's
    ``envsum_impl`` says which pair sums it calls ("ekd" / "ekd-tensor": ekd's ops, which need the
    op library loaded before ``torch.jit.load``; "torch": pure torch); ``cutoff`` (Angstrom) and
    ``n_interactions`` are attributes too. Inference only: no parameter requires gradients.
    """
    module = build_module(member_or_dir, dtype=dtype, envsum=envsum)
    with _quiet_jit():
        return torch.jit.script(module)


def metadata(member_or_dir, module: nn.Module | None = None) -> dict:
    """Fields of :class:`ekd.export.ModelMetadata` for a member's deployed model.

    module: the (scripted) module returned by :func:`script_member`; its dtype and envsum choice
    are recorded. Without it: float64 and the envsum "auto" would pick now.
    Returns cutoff (the hard cutoff, Angstrom), n_interactions, species (element symbols in model
    order), dtype, ops_library (``libekd_ops.so`` if the module calls ekd's ops, else None), role,
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
        "role": role,
        "description": (
            f"ekd HIPNN ({('Hipnn', 'HipnnVec', 'HipnnQuad')[cfg.l_max]}, l_max={cfg.l_max}, width={cfg.width}, "
            f"n_sensitivities={cfg.n_sensitivities}, n_atom_layers={cfg.n_atom_layers}), envsum={impl}"
        ),
        "energy_unit": "kcal/mol",
        "length_unit": "angstrom",
    }
