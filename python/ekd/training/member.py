"""A trained member: its saved form (``model.pt`` of a member directory, format
``ekd-member/1``) and :class:`Member`, which predicts energies and forces in float64.

:func:`ekd.training.train.train_member` writes the file; evaluation, distillation, scoring and export load
it with :func:`load_member`. A member file is plain data (tensors, numbers, strings) and loads
with ``torch.load(weights_only=True)``; exported model files for other programs are
:mod:`ekd.deploy.model_file`'s.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..data import Dataset
from ..store import load_torch
from .models import Model, add_sigma_head, build_model, check_padding

#: what ``model.pt`` names as the uncertainty head of a member that has one (absent: none)
SIGMA_HEAD = "SigmaHead/1"

MODEL_FORMAT = "ekd-member/1"


def member_payload(model: Model, arch: ModelConfig, spec, tc) -> dict:
    """What ``model.pt`` holds: ``spec`` (a :class:`ekd.training.train.MemberSpec`) and the training
    config ``tc`` are recorded; plain types and tensors only (loads with weights_only=True)."""
    return {
        "format": MODEL_FORMAT,
        "model_config": asdict(arch),
        "species": list(model.species),
        "state_dict": model.modules().state_dict(),
        "energy_offsets": {str(z): v for z, v in model.energy_offsets.items()},
        "units": {"energy": "kcal/mol", "length": "angstrom", "forces": "kcal/mol/angstrom"},
        "spec": asdict(spec),
        "train_dtype": tc.dtype,
        **({"uncertainty_head": SIGMA_HEAD} if model.uncertainty is not None else {}),
    }


class Member:
    """A trained member, loaded from its directory, predicting in float64 on ``device`` (a torch
    device: :func:`ekd.ops.devices.resolve_device` of a name)."""

    def __init__(self, model: Model, directory: Path, payload: dict, device: torch.device | str = "cpu"):
        self.model = model
        self.directory = directory
        self.spec = payload.get("spec", {})
        self.dtype = torch.float64
        self.device = torch.device(device)
        self._net = model.modules().to(self.dtype).to(self.device).eval()
        # the graph's own modules (species encoder, pair indexer) hold buffers too
        self._energy_module = model.graph_module(forces=False).to(self.device).eval()
        self._feature_module = model.graph_module(forces=False, features=True).to(self.device).eval()

    @property
    def has_uncertainty(self) -> bool:
        """Whether the member predicts its teachers' per-atom force spread (:meth:`predict_sigma`)."""
        return self.model.uncertainty is not None

    def predict_sigma(self, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
        """The head's predicted teachers' force spread sigma_i (n, A) kcal/mol/Angstrom, float64 (0 in
        padding); see :class:`ekd.training.models.SigmaHead`. ValueError for a member without a head."""
        if not self.has_uncertainty:
            raise ValueError(f"{self.directory}: this member has no uncertainty head (trained without one)")
        self._check(dataset)
        out = np.zeros(dataset.species.shape)
        species_all = torch.as_tensor(dataset.species, dtype=torch.int64)
        coords_all = torch.as_tensor(dataset.coordinates, dtype=self.dtype)
        for start in range(0, len(dataset), batch_size):
            sl = slice(start, start + batch_size)
            species = species_all[sl].to(self.device)
            with torch.no_grad():
                feats = self._feature_module(species, coords_all[sl].to(self.device))[-1]
                sigma = torch.exp(self.model.uncertainty(feats))
            block = torch.zeros(species.shape, dtype=self.dtype, device=self.device)
            block[species > 0] = sigma
            out[sl] = block.cpu().numpy()
        return out

    def _check(self, dataset: Dataset) -> None:
        check_padding(dataset.species, f"{dataset.source or 'dataset'}: species")
        unknown = sorted(set(dataset.elements) - set(self.species))
        if unknown:
            raise ValueError(
                f"{dataset.source or 'dataset'} has elements {unknown} that the model in {self.directory} "
                f"was not built for (it knows {list(self.species)})"
            )

    @property
    def species(self) -> tuple[int, ...]:
        """Atomic numbers the model handles (sorted)."""
        return self.model.species

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    def predict(
        self, dataset: Dataset, forces: bool = True, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Energies (n,) kcal/mol and, if ``forces``, forces -dE/dR (n, A, 3) kcal/mol/Angstrom
        (0 in padding) by autograd; float64 numpy arrays."""
        self._check(dataset)
        n = len(dataset)
        energies = np.empty(n)
        out_forces = np.zeros(dataset.coordinates.shape) if forces else None
        species_all = torch.as_tensor(dataset.species, dtype=torch.int64)
        coords_all = torch.as_tensor(dataset.coordinates, dtype=self.dtype)
        dev = self.device
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            species, coords = species_all[sl].to(dev), coords_all[sl].to(dev, copy=True)
            if forces:
                coords.requires_grad_(True)
                e = self._energy_module(species, coords)[0]
                f = -torch.autograd.grad(e.sum(), coords)[0]
                f = f * (species > 0).unsqueeze(-1)
                out_forces[sl] = f.detach().cpu().numpy()
            else:
                with torch.no_grad():
                    e = self._energy_module(species, coords)[0]
            energies[sl] = e.detach().reshape(-1).cpu().numpy()
        return energies, out_forces


def load_member(out_dir: Path, device: torch.device | str = "cpu") -> Member:
    """Rebuild and load a member saved by :func:`ekd.training.train.train_member` (its ``model.pt``,
    CPU tensors whatever device trained it) to predict on ``device``."""
    out_dir = Path(out_dir)
    path = out_dir / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model here (has train_member finished? look for done.json)")
    payload = load_torch(
        path, "model of a trained member", f"delete {out_dir} and run the same command again to retrain that member"
    )
    if payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: expected a model of format {MODEL_FORMAT!r}, got {payload.get('format')!r}")
    arch = ModelConfig(**payload["model_config"])
    model = build_model(arch, payload["species"])
    head = payload.get("uncertainty_head")
    if head is not None:
        if head != SIGMA_HEAD:
            raise ValueError(f"{path}: unknown uncertainty head {head!r} (this ekd knows {SIGMA_HEAD!r}); upgrade ekd")
        add_sigma_head(model, seed=0)  # weights replaced by the state dict below
    model.modules().load_state_dict(payload["state_dict"])
    return Member(model, out_dir, payload, device)


__all__ = ["SIGMA_HEAD", "MODEL_FORMAT", "Member", "load_member", "member_payload"]
