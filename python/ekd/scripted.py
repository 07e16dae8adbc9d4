"""A trained ekd HIPNN member re-expressed as a TorchScript module with the deployed-model interface.

hippynn's graph machinery cannot be scripted (variadic module arguments, tensor constants,
data-dependent pair finding), so this module does not try: :func:`script_member` copies the trained
weights of hippynn's torch modules (the network ``Hipnn`` / ``HipnnVec`` / ``HipnnQuad`` and the
energy head ``HEnergy``) into :class:`ScriptedHipnn`, written here to compute the same math, term
by term and in the same order, and scripts it. The class keeps every weight in ``list[Tensor]``
attributes and every hyper-parameter in plain attributes (no submodules, no ``Final``), so its
TorchScript code is the same for every model: what the model-trust rule of format ``ekd-model-2``
(:mod:`ekd.deploy.model_file`) compares byte for byte. Its forward is the deployed-model interface::

    forward(species: Tensor[N] int64 atomic numbers (local + ghost atoms),
            pair_first: Tensor[P] int64, pair_second: Tensor[P] int64,   FULL list, both directions
            r_ij: Tensor[P, 3] = x_j - x_i with images applied, Angstrom)
        -> Tensor[N] per-atom energies, kcal/mol

Pairs at or beyond the cutoff may be passed and contribute nothing (the cutoff function is masked
with ``|r_ij| < cutoff``). Forces follow by autograd of the summed (owned) atom energies with
respect to ``r_ij``: with ``g = dE/dr_ij``, ``F_i += g`` and ``F_j -= g``.
The model classes live in :mod:`ekd.scripted_hipnn` (HIPNN: the math, term by term),
:mod:`ekd.envsum` (the pair sums) and :mod:`ekd.script_helpers` (input checks they share); this
module holds :class:`ScriptedToy` and turns trained members into scripted modules
(:func:`build_module`, :func:`script_member`, :func:`metadata`). Their names stay importable from
here.

Stage methods (``ekd-model-2``, for LAMMPS's per-layer halo exchange): ``embed(species)`` ->
(one-hot features, per-element offsets); ``geometry(r_ij)`` -> the pair geometry every block reads
(HIPNN: distances and angular parts; toy: distances, cutoff function, radial basis), computed and
differentiated once per evaluation; ``interaction_geo(k, z, pair_first, pair_second, geometry,
n_out=-1)`` -> (block k's output features, the block's per-atom read-out energy), for the first
n_out rows only when n_out >= 0 (the pair sums read all rows of z; the dense layers run on the kept
rows: LAMMPS keeps its owned atoms); ``interaction(k, z, pair_first, pair_second, r_ij, n_out=-1)``
is the same with the geometry computed inside (what files of the previous ekd-model-2 code offer);
``forward`` is their sum. :class:`ScriptedToy` (kind "toy") is a small test model with the same
interface.

After changing a scripted class, regenerate the canonical code: ``python -m ekd.deploy.model_file
--regenerate`` (tests/unit/test_model_trust.py checks it).
"""

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from .envsum import (  # noqa: F401  (the pair sums' names, importable from here as before)
    _CONTRACTIONS,
    _NEEDS,
    Contraction,
    EnvSumOp,
    EnvSumTorch,
    EnvSumTorchContraction,
    TensorEnvSumOp,
    _contract_envsum,
    _contract_tensor_envsum,
    _contract_torch,
    _stack,
    _weigh,
    available_ops,
    choose_envsum,
    envsum_torch,
)
from .script_helpers import (  # noqa: F401
    _check_geometry,
    _check_index,
    _check_pairs,
    _check_rows,
    _check_stage,
    _check_vectors,
    _linear,
    _quiet_jit,
)
from .scripted_hipnn import ScriptedHipnn, ScriptedHipnnTorch, _check_supported, _copy, _empty  # noqa: F401

#: what :func:`metadata` names as the op library a model calls (ekd.deploy.export.OPS_LIBRARY)
OPS_LIBRARY = "libekd_ops.so"


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
        _check_pairs(z.shape[0], pair_first, pair_second, r_ij)
        return self.interaction_geo(k, z, pair_first, pair_second, self.geometry(r_ij), n_out)

    @torch.jit.export
    def geometry(self, r_ij: Tensor) -> list[Tensor]:
        """r_ij [P, 3] -> [distances [P], cutoff function [P], radial basis [P, n_basis]]."""
        _check_vectors(r_ij)
        d, fc, basis = self._basis(r_ij)
        return [d, fc, basis]

    @torch.jit.export
    def interaction_geo(
        self, k: int, z: Tensor, pair_first: Tensor, pair_second: Tensor, geometry: list[Tensor], n_out: int = -1
    ) -> tuple[Tensor, Tensor]:
        """:meth:`interaction` with the pair geometry given (``geometry(r_ij)``)."""
        _check_stage(k, self.n_interactions, z, self.feature_widths[k])
        _check_geometry(z.shape[0], pair_first, pair_second, geometry, [0, 0, self.centers.shape[0]])
        _check_rows(k, n_out, z.shape[0])
        return self._interaction(k, z, pair_first, pair_second, geometry[0], geometry[1], geometry[2], n_out)

    def forward(self, species: Tensor, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> Tensor:
        h, energy = self.embed(species)
        d, fc, basis = self.geometry(r_ij)
        for k in range(self.n_interactions):
            h, e = self._interaction(k, h, pair_first, pair_second, d, fc, basis, -1)
            energy = energy + e
        return energy


# ---------------------------------------------------------------------------------------------
# building from a trained member


def _resolve(member_or_dir):
    """A Member, a Model (ekd.training.models) or a member directory -> (Model, role)."""
    from .training.models import Model
    from .training.train import Member, load_member

    if isinstance(member_or_dir, str | Path):
        member_or_dir = load_member(Path(member_or_dir))
    if isinstance(member_or_dir, Member):
        return member_or_dir.model, str(member_or_dir.spec.get("role", ""))
    if isinstance(member_or_dir, Model):
        return member_or_dir, ""
    raise TypeError(f"expected an ekd Member, Model or member directory, got {type(member_or_dir).__name__}")


def build_module(member_or_dir, dtype: torch.dtype = torch.float64, envsum: str = "auto") -> ScriptedHipnn:
    """The unscripted :class:`ScriptedHipnn` (:class:`ScriptedHipnnTorch` for envsum "torch") of a
    member, in eval mode; its weights are plain tensors (no parameters, nothing requires gradients).

    member_or_dir: an :class:`ekd.training.train.Member`, an :class:`ekd.training.models.Model` or a member's
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
    return cls(network, henergy, model.species, model.config.l_max, envsum, dtype, head=model.uncertainty).eval()


def script_member(member_or_dir, dtype: torch.dtype = torch.float64, envsum: str = "auto") -> torch.jit.ScriptModule:
    """TorchScript module of a trained member with the deployed-model interface.

    Returns ``torch.jit.script`` of :func:`build_module` (same arguments). The module's
    ``envsum_impl`` says which pair sums it calls ("ekd" / "ekd-tensor": ekd's ops, which need the
    op library loaded before ``torch.jit.load``; "torch": pure torch); ``cutoff`` (Angstrom) and
    ``n_interactions``, ``feature_widths`` and ``metadata_json`` (empty until
    :func:`ekd.deploy.model_file.save_model` binds the metadata) are attributes too; ``embed``,
    ``geometry``, ``interaction_geo`` and ``interaction`` are the stage methods of ``ekd-model-2``.
    Inference only.
    """
    module = build_module(member_or_dir, dtype=dtype, envsum=envsum)
    with _quiet_jit():
        return torch.jit.script(module)


def metadata(member_or_dir, module: nn.Module | None = None) -> dict:
    """Fields of :class:`ekd.deploy.export.ModelMetadata` for a member's deployed model.

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
            + (", uncertainty head (sigma)" if model.uncertainty is not None else "")
        ),
        "energy_unit": "kcal/mol",
        "length_unit": "angstrom",
    }


def example_hipnn(
    envsum: str = "torch", l_max: int = 2, n_interactions: int = 1, width: int = 4, dtype: torch.dtype = torch.float64
) -> ScriptedHipnn:
    """A small unscripted HIPNN module with random weights (no training): what the canonical-code
    generator (:func:`ekd.deploy.model_file.regenerate`) and tests script. Seeds torch's generator in a
    fork (the caller's random state is left alone)."""
    from .config import ModelConfig
    from .training.models import build_model

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
