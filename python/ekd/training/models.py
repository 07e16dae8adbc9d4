"""HIPNN models built as hippynn graphs, from a :class:`~ekd.config.ModelConfig`.

A :class:`Model` holds the graph nodes one training routine needs: inputs (species, positions),
the network, the energy head with its hierarchicality, the forces F = -dE/dR and an L2 term.
Units are ekd's: positions in Angstrom, energies in kcal/mol, forces in kcal/mol/Angstrom.

Inputs are padded batches, as in :class:`~ekd.data.Dataset`:

* species (n, A) int64 atomic numbers, 0 = no atom, padding after the real atoms of each row
  (hippynn's pair finder trims frames to the largest atom count of the batch, so an empty slot
  between real atoms would silently drop atoms: :func:`check_padding`);
* positions (n, A, 3) Angstrom (anything in padding; it does not contribute).

Interaction kernels: :func:`use_kernels` selects them for the process (:mod:`ekd.ops.kernels`;
:func:`build_model` picks ekd's own op library unless another was chosen first).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ModelConfig
from ..data import Dataset

# hippynn reads its settings once, at import: no progress bars unless asked for; "False" would
# break its import (found with the hippynn release ekd pins), "none" is the accepted spelling.
os.environ.setdefault("HIPPYNN_PROGRESS", "none")
# hippynn prints and warns for every batch holding a pair closer than its innermost sensitivity
# function; rattled training geometries do that routinely, and it is the data layer's business.
os.environ.setdefault("HIPPYNN_WARN_LOW_DISTANCES", "false")

#: names of the graph's inputs and outputs (also the hippynn db_names)
SPECIES, POSITIONS, ENERGY, FORCES = "species", "coordinates", "energy", "forces"

# hippynn network module per tensor-sensitivity order l_max
_NETWORKS = {0: "Hipnn", 1: "HipnnVec", 2: "HipnnQuad"}

# the kernels chosen in this process through use_kernels (None: not yet; build_model picks "ekd")
_active_kernels: str | None = None


def _import_hippynn():
    """``import hippynn`` without its import-time warnings, which are not actionable here: it
    builds a sparse tensor (torch warns about invariant checks) and calls torch.jit.script
    (deprecated in torch 2.13)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*", category=DeprecationWarning)
        import hippynn
    return hippynn


def check_padding(species: np.ndarray | torch.Tensor, where: str = "species") -> None:
    """Raise ValueError unless every row of ``species`` (n, A) is real atoms (> 0) then padding (0)."""
    z = np.asarray(species)
    if z.ndim != 2:
        raise ValueError(f"{where}: expected an (n, A) array of atomic numbers, got shape {z.shape}")
    if (z < 0).any():
        raise ValueError(f"{where}: atomic numbers must be >= 0 (0 = padding), got {int(z.min())}")
    real = z > 0
    # after the first empty slot of a row, every slot must be empty
    bad = (np.cumsum(~real, axis=1) > 0) & real
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(
            f"{where}: configuration {i} has padding (0) before a real atom ({z[i].tolist()}); "
            "padding must come after the real atoms"
        )


def use_kernels(name: str) -> str:
    """Select the interaction kernels (envsum / sensesum / featsum) for every model in this process.

    name: "ekd" (ekd's op library, the default), "hippynn-numba" or "pytorch" (hippynn's
    uncompiled pure-torch kernels); see :mod:`ekd.ops.kernels`. Returns the implementation in use.
    """
    global _active_kernels
    _import_hippynn()
    from ..ops.kernels import use_kernels as _use

    _active_kernels = _use(name)
    return _active_kernels


@dataclass
class Model:
    """A HIPNN energy model and the hippynn nodes around it.

    Graph (hippynn nodes): ``species`` (n, A) and ``positions`` (n, A, 3) Angstrom ->
    ``network`` -> ``henergy`` (HEnergyNode) -> ``energy`` (n, 1) kcal/mol,
    ``hierarchicality`` (n, 1); ``forces`` = -dE/dR (n, A, 3) kcal/mol/Angstrom (zero in padding);
    ``l2``: scalar, sum of squared weights of the network and of the energy head's interacting
    layers (not biases, not the per-element offsets, which are fitted to the data and frozen).
    """

    config: ModelConfig
    species: tuple[int, ...]
    species_node: object
    positions: object
    network: object
    henergy: object
    energy: object
    forces: object
    hierarchicality: object
    l2: object
    #: the per-atom head predicting the teachers' force spread (:class:`SigmaHead`), or None
    uncertainty: torch.nn.Module | None = None

    def modules(self) -> torch.nn.ModuleDict:
        """Every trainable torch module; its state dict is what :func:`ekd.training.train.load_member` needs."""
        mods = {"network": self.network.torch_module, "energy": self.henergy.torch_module}
        if self.uncertainty is not None:
            mods["uncertainty"] = self.uncertainty
        return torch.nn.ModuleDict(mods)

    def graph_module(self, forces: bool = True, training: bool = False, features: bool = False):
        """A hippynn GraphModule: (species, positions) -> (energy, [forces], [hierarchicality, l2],
        [last features]).

        forces: include F = -dE/dR (double backward when trained on).
        training: also return the hierarchicality (n, 1) and the L2 term (scalar).
        features: also return the network's last atom features (n_real_atoms, F), real atoms in
            row-major order of the padded batch (the order of ``x[species > 0]``): what
            :class:`SigmaHead` reads.
        """
        from hippynn.graphs import GraphModule

        outputs = [self.energy] + ([self.forces] if forces else [])
        if training:
            outputs += [self.hierarchicality, self.l2]
        if features:
            outputs.append(self.network.feature_nodes[-1])
        return GraphModule([self.species_node, self.positions], outputs)

    @property
    def energy_offsets(self) -> dict[int, float]:
        """Per-element energy offsets (kcal/mol) of the energy head's non-interacting layer."""
        w = self.henergy.torch_module.layers[0].weight.detach().reshape(-1)
        return {z: float(v) for z, v in zip(self.species, w.tolist(), strict=True)}


#: the smallest teachers' spread (kcal/mol/Angstrom) the head is trained towards: a spread of 0
#: (one teacher, or members that agree to rounding) has no logarithm; 1e-3 is far below any spread
#: of trained members seen here (~0.1-10) and far below force errors that matter in MD
SIGMA_FLOOR = 1e-3
#: the head's learning rate over the member's (train.lr): a small regression on features that the
#: energy loss moves, it has no balance with the energy to keep; at the member's rate it moved its
#: log sigma by ~0.2 in 50 Adam steps (measured on the tests' xtb set), far less than the ~1-3 that
#: the spread spans between atoms
SIGMA_LR_FACTOR = 10.0


class SigmaHead(torch.nn.Module):
    """Per-atom log of the teachers' force spread from a member's last atom features.

    ``forward(features (n_atoms, F)) -> log sigma (n_atoms,)``, sigma in kcal/mol/Angstrom, where
    the teachers' spread is sigma_i = sqrt(mean_m |F_m,i - <F>_i|^2) (the ``forces_std`` of
    :class:`ekd.deploy.calculator.EKDCalculator` and LAMMPS; from the labels' per-component spread
    by :func:`atom_sigma`). One softplus hidden layer of the features' width, then a linear read-out:
    the features are trained for the energy, not for the spread, so a linear map of them alone
    would be a weaker predictor than the energy head's read-out is of the energy.

    Trained by :mod:`ekd.training.train` on DETACHED features (the network never sees its loss), so
    the energy and forces of a member with the head are those of the member without it, bit for
    bit with the same seed: the head's weights are drawn from their own generator (the global
    random state the rest of training draws from is untouched), its loss adds no gradient to any
    other parameter and Adam scales each parameter's step by that parameter's own moments. The
    loss is the mean squared error of log sigma (over real atoms): the target is a measured number
    per atom, not a noisy sample of an error, so a regression fits it directly (a Gaussian NLL
    would fit the spread of a residual, which the labels do not hold), and the logarithm because
    the spread is positive and spans orders of magnitude between relaxed and distorted atoms.
    """

    def __init__(self, width: int, seed: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.hidden = torch.nn.Linear(width, width)
            self.out = torch.nn.Linear(width, 1)
        self.to(dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.softplus(self.hidden(features))
        return self.out(h).squeeze(-1)


def atom_sigma(forces_std: np.ndarray | torch.Tensor):
    """Per-component spread (..., 3) -> per-atom sigma (...) = sqrt(sum_c std_c^2) = the spread of
    the force vectors, sqrt(mean_m |F_m - <F>|^2) (same units)."""
    if isinstance(forces_std, torch.Tensor):
        return torch.sqrt((forces_std * forces_std).sum(-1))
    return np.sqrt((np.asarray(forces_std) ** 2).sum(-1))


def add_sigma_head(model: Model, seed: int, log_sigma_mean: float = 0.0) -> Model:
    """Give ``model`` a :class:`SigmaHead` (weights from ``seed``), its read-out bias set to
    ``log_sigma_mean`` (the training data's mean log sigma: the head starts at the typical spread);
    returns the same model."""
    width = model.network.torch_module.feature_sizes[-1]
    model.uncertainty = SigmaHead(int(width), seed)
    with torch.no_grad():
        model.uncertainty.out.bias.fill_(float(log_sigma_mean))
    return model


def param_groups(model: Model, lr: float) -> list[dict]:
    """The optimizer's parameter groups: every trainable parameter at ``lr``, the uncertainty
    head's (if any) in a group of its own at SIGMA_LR_FACTOR x ``lr`` (decayed with the rest).
    The network's group comes first (the training log reports its rate)."""
    head = set(model.uncertainty.parameters()) if model.uncertainty is not None else set()
    groups = [{"params": [p for p in model.modules().parameters() if p.requires_grad and p not in head]}]
    if head:
        groups.append({"params": list(model.uncertainty.parameters()), "lr": lr * SIGMA_LR_FACTOR})
    return groups


class _WeightsL2(torch.nn.Module):
    """Sum of squared weights: the network's regularisation parameters and the energy head's
    interacting layers. hippynn's ``l2reg(network)`` covers the network only."""

    def __init__(self, network: torch.nn.Module, energy: torch.nn.Module):
        super().__init__()
        # kept out of the module tree (plain attributes in a tuple) so that the state dict of a
        # graph holding this term does not list the network's parameters twice
        self._targets = (network, energy)

    def forward(self, *_ignored):
        network, energy = self._targets
        params = list(network.regularization_params())
        params += [lay.weight for lay in energy.layers[1:]]
        return sum(torch.sum(p * p) for p in params)


def build_model(
    model: ModelConfig,
    species: Sequence[int],
    dataset: Dataset | None = None,
    train_index: np.ndarray | Sequence[int] | None = None,
    energy: str = "energy",
) -> Model:
    """Build a HIPNN model (random weights; seed torch first for reproducibility).

    Selects the "ekd" interaction kernels unless :func:`use_kernels` was called before.

    model: the architecture. species: atomic numbers the model handles (sorted and de-duplicated
    here; padding 0 is added). dataset, train_index: if given, the per-element energy offsets
    are fitted to ``dataset.properties[energy]`` over ``train_index`` (all configurations if None)
    by hippynn's hierarchical energy initialisation (least squares on the composition, offsets
    then frozen; higher energy layers scaled down). Without data, offsets keep their random
    initialisation (for models whose state is loaded afterwards).
    """
    hippynn = _import_hippynn()
    if _active_kernels is None:
        # hippynn's own default on import would be numba (JIT-compiled in every process)
        use_kernels("ekd")
    from hippynn.graphs import inputs, networks, physics, targets
    from hippynn.graphs.nodes.loss import _LPReg
    from hippynn.pretraining import hierarchical_energy_initialization

    hippynn.settings.WARN_LOW_DISTANCES = False  # see the top of this module
    zs = tuple(sorted({int(z) for z in species}))
    if not zs or zs[0] <= 0:
        raise ValueError(f"species: expected positive atomic numbers, got {list(species)}")
    species_node = inputs.SpeciesNode(db_name=SPECIES)
    positions = inputs.PositionsNode(db_name=POSITIONS)
    net_cls = getattr(networks, _NETWORKS[model.l_max])
    network_params = {
        "possible_species": [0, *zs],
        "n_features": model.width,
        "n_sensitivities": model.n_sensitivities,
        "dist_soft_min": model.cutoff_soft_min,
        "dist_soft_max": model.cutoff_soft_max,
        "dist_hard_max": model.cutoff_hard,
        "n_interaction_layers": model.n_interactions,
        "n_atom_layers": model.n_atom_layers,
    }
    network = net_cls("HIPNN", (species_node, positions), module_kwargs=network_params)
    henergy = targets.HEnergyNode("HEnergy", network)
    henergy.mol_energy.db_name = ENERGY
    forces = physics.GradientNode("forces", (henergy, positions), sign=-1)
    forces.db_name = FORCES
    l2 = _LPReg(network, p=2, module=_WeightsL2(network.torch_module, henergy.torch_module))

    if dataset is not None:
        idx = np.arange(len(dataset)) if train_index is None else np.asarray(train_index)
        sub = dataset.subset(idx).require(energy)
        unknown = sorted(set(sub.elements) - set(zs))
        if unknown:
            raise ValueError(f"dataset has elements {unknown} that the model's species {list(zs)} do not include")
        shim = _TrainSplit(
            {
                SPECIES: torch.as_tensor(sub.species),
                ENERGY: torch.as_tensor(sub.properties[energy][:, None], dtype=torch.float64),
            }
        )
        with contextlib.redirect_stdout(io.StringIO()):  # hippynn prints the offsets
            hierarchical_energy_initialization(
                henergy, shim, trainable_after=False, energy_name=ENERGY, species_name=SPECIES
            )
        # the fit runs in float64 and leaves its result in that dtype: back to the model's
        e0 = henergy.torch_module.layers[0]
        e0.weight.data = e0.weight.data.to(henergy.torch_module.layers[-1].weight.dtype)
    else:
        henergy.torch_module.layers[0].weight.requires_grad_(False)

    return Model(
        config=model,
        species=zs,
        species_node=species_node,
        positions=positions,
        network=network,
        henergy=henergy,
        energy=henergy.mol_energy,
        forces=forces,
        hierarchicality=henergy.hierarchicality,
        l2=l2,
    )


class _TrainSplit:
    """The part of a hippynn Database that the hierarchical energy initialisation reads."""

    def __init__(self, arrays: dict[str, torch.Tensor]):
        self.splits = {"train": arrays}
