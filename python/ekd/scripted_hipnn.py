"""The HIPNN model classes of ekd's deployed models: :class:`ScriptedHipnn` (model kind "hipnn",
pair sums with ekd's ops) and :class:`ScriptedHipnnTorch` (kind "hipnn-torch", pure torch). Build
them with :func:`ekd.scripted.build_module` / :func:`ekd.scripted.script_member`.

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

A module that calls an op needs the library loaded before ``torch.jit.load`` (``import ekd.ops.library``;
:func:`ekd.deploy.model_file.load_model` does that when ``ops_library`` is set). "torch" builds
:class:`ScriptedHipnnTorch` (model kind "hipnn-torch"), whose code calls no op.
"""

import math

import torch
from torch import Tensor, nn

from .envsum import _contract_envsum, _contract_tensor_envsum, _contract_torch
from .script_helpers import _check_geometry, _check_pairs, _check_rows, _check_stage, _check_vectors, _linear

# ---------------------------------------------------------------------------------------------
# the scripted modules
#
# The classes below hold every weight in list[Tensor] attributes (one entry per layer) and every
# hyper-parameter in plain attributes, with no submodules and no Final constants: TorchScript then
# compiles the same code for every model of a class (width, depth, dtype, cutoff, l_max live in
# data.pkl). That is what lets ekd.deploy.model_file (and the LAMMPS plugin) accept a model file only when
# its code is byte-identical to the code this ekd writes (the model-trust rule, FORMAT ekd-model-2).


def _empty(dtype: torch.dtype) -> Tensor:
    return torch.zeros(0, dtype=dtype)


def _copy(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.detach().clone().to(dtype)


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
    has_sigma: bool
    sigma_w: list[Tensor]
    sigma_b: list[Tensor]

    def __init__(
        self,
        network,
        henergy,
        species: tuple[int, ...],
        l_max: int,
        envsum: str,
        dtype: torch.dtype = torch.float64,
        head=None,
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
        # the uncertainty head (ekd.training.models.SigmaHead: hidden, out), or empty lists
        self.has_sigma = head is not None
        self.sigma_w = [] if head is None else [_copy(head.hidden.weight, dtype), _copy(head.out.weight, dtype)]
        self.sigma_b = [] if head is None else [_copy(head.hidden.bias, dtype), _copy(head.out.bias, dtype)]
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
        """d [P] Angstrom -> [P, N] of block k: inverse sensitivities times the cos^2 cutoff (zero
        beyond the cutoff). On the CPU ekd's op ``radial_sensitivity`` (one pass over [P, N] and a
        fused backward instead of ~10 ATen ops and their backwards); elsewhere (no CUDA kernel) the
        ATen formula :meth:`_sensitivities_aten`. The two agree to rounding, also at d == cutoff,
        where the op keeps hippynn's ``d <= cutoff`` and gives cos^2(pi / 2) (~4e-33 in float64,
        ~2e-15 in float32) times the Gaussian, the formula 0."""
        if d.device.type == "cpu":
            return torch.ops.ekd.radial_sensitivity(d, self.mu[k], self.sigma[k], self.layer_cutoff[k])
        return self._sensitivities_aten(k, d)

    def _sensitivities_aten(self, k: int, d: Tensor) -> Tensor:
        """:meth:`_sensitivities` with ATen ops (zero at and beyond the cutoff)."""
        mu = self.mu[k]
        sigma = self.sigma[k]
        cutoff = self.layer_cutoff[k]
        # exp's argument clamped at log(2 x the dtype's smallest normal number), as in
        # ekd.ops.kernels.sensitivity: torch's exp takes a 7-15x slower path where the result underflows
        # (most of a box's pairs x sensitivities with the paper's widths); values change by less
        # than that number
        lowest = -86.64339756999317 if d.dtype == torch.float32 else -707.7032713517042
        base = torch.exp((-0.5 * ((d.unsqueeze(1) ** -1 - mu**-1) ** 2 / (sigma**-2))).clamp(min=lowest))
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
        _check_pairs(z.shape[0], pair_first, pair_second, r_ij)
        return self.interaction_geo(k, z, pair_first, pair_second, self.geometry(r_ij), n_out)

    @torch.jit.export
    def geometry(self, r_ij: Tensor) -> list[Tensor]:
        """r_ij [P, 3] Angstrom -> what every block reads of the pairs: [distances d [P], angular
        parts [P, C]] in the model dtype (computed once per evaluation, and differentiated once)."""
        _check_vectors(r_ij)
        r = r_ij.to(self.offsets.dtype)
        d = torch.linalg.vector_norm(r, dim=1)
        return [d, self._angular(r, d)]

    @torch.jit.export
    def interaction_geo(
        self, k: int, z: Tensor, pair_first: Tensor, pair_second: Tensor, geometry: list[Tensor], n_out: int = -1
    ) -> tuple[Tensor, Tensor]:
        """:meth:`interaction` with the pair geometry given (``geometry(r_ij)``)."""
        _check_stage(k, self.n_interactions, z, self.feature_widths[k])
        n_angular = 1 + 3 * min(self.l_max, 1) + 5 * (self.l_max // 2)
        _check_geometry(z.shape[0], pair_first, pair_second, geometry, [0, n_angular])
        _check_rows(k, n_out, z.shape[0])
        dtype = self.offsets.dtype
        d, angular = geometry[0].to(dtype), geometry[1].to(dtype)
        return self._interaction(k, z.to(dtype), pair_first, pair_second, d, angular, n_out)

    @torch.jit.export
    def atom_sigma(self, z: Tensor) -> Tensor:
        """The last block's output features z [M, F_last] -> the predicted teachers' force spread
        sigma [M] kcal/mol/Angstrom, sqrt(mean_m |F_m - <F>|^2) (ekd.training.models.SigmaHead);
        zeros for a model without the head (``has_sigma`` False). No gradient is meant through it."""
        if z.dim() != 2 or z.shape[1] != self.feature_widths[-1]:
            raise ValueError(
                "atom_sigma: expected the last features [M, " + str(self.feature_widths[-1]) + "], got " + str(z.shape)
            )
        if not self.has_sigma:
            return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        x = z.to(self.offsets.dtype)
        hidden = nn.functional.softplus(_linear(x, self.sigma_w[0], self.sigma_b[0]), 1.0, 20.0)
        return torch.exp(_linear(hidden, self.sigma_w[1], self.sigma_b[1]).squeeze(1)).to(z.dtype)

    def _energy_features(
        self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor
    ) -> tuple[Tensor, Tensor]:
        if species.dim() != 1:
            raise ValueError("species: expected a 1-d tensor of atomic numbers [N], got shape " + str(species.shape))
        _check_pairs(species.shape[0], pair_first, pair_second, r_ij)
        z, energy = self.embed(species)
        d, angular = self.geometry(r_ij)
        for k in range(self.n_interactions):
            z, e = self._interaction(k, z, pair_first, pair_second, d, angular, -1)
            energy = energy + e
        return energy.to(r_ij.dtype), z

    @torch.jit.export
    def energy_and_sigma(
        self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward`'s energies [N] kcal/mol and :meth:`atom_sigma` of every atom [N] kcal/mol/Angstrom
        (in r_ij's dtype) from one evaluation; sigma is computed from detached features."""
        energy, z = self._energy_features(species, pair_first, pair_second, r_ij)
        return energy, self.atom_sigma(z.detach()).to(r_ij.dtype)

    def forward(self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> Tensor:
        """species [N] int64, pair_first/pair_second [P] int64, r_ij [P, 3] Angstrom -> energies [N] kcal/mol."""
        return self._energy_features(species, pair_first, pair_second, r_ij)[0]


class ScriptedHipnnTorch(ScriptedHipnn):
    """:class:`ScriptedHipnn` with the pure-torch pair sums (envsum "torch"): its code calls no op of
    ekd's library, so it loads where the library is missing (model kind "hipnn-torch")."""

    def _sensitivities(self, k: int, d: Tensor) -> Tensor:
        """The ATen formula, :meth:`ScriptedHipnn._sensitivities_aten` word for word: a copy, not a
        call, so that this kind's code is the code it had before ScriptedHipnn used the op (files
        exported with it stay canonical; TorchScript names a method by its def, so an alias does
        not do); test_scripted checks the two bodies are equal."""
        mu = self.mu[k]
        sigma = self.sigma[k]
        cutoff = self.layer_cutoff[k]
        # exp's argument clamped at log(2 x the dtype's smallest normal number), as in
        # ekd.ops.kernels.sensitivity: torch's exp takes a 7-15x slower path where the result underflows
        # (most of a box's pairs x sensitivities with the paper's widths); values change by less
        # than that number
        lowest = -86.64339756999317 if d.dtype == torch.float32 else -707.7032713517042
        base = torch.exp((-0.5 * ((d.unsqueeze(1) ** -1 - mu**-1) ** 2 / (sigma**-2))).clamp(min=lowest))
        cut = torch.cos(math.pi / 2 * d / cutoff) ** 2
        cut = cut * (d < cutoff).to(cut.dtype)
        return base * cut.unsqueeze(1)

    def _contract(
        self, angular: Tensor, s: Tensor, z: Tensor, weights: Tensor, pair_first: Tensor, pair_second: Tensor
    ) -> Tensor:
        return _contract_torch(angular, s, z, weights, pair_first, pair_second)
