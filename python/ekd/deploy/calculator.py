"""ASE calculator running exported ekd models (the files LAMMPS's ``pair_style ekd`` runs).

``EKDCalculator("model.pt")`` or ``EKDCalculator(["a.pt", "b.pt", "c.pt"])`` (an ensemble: mean
energy, forces and stress, plus the spread). Results are in ASE units: eV, eV/Angstrom, eV/A^3.

* ``energy``/``free_energy`` (eV), ``energies`` (per atom, eV), ``forces`` [N, 3] (eV/A),
  ``stress`` (Voigt, eV/A^3; periodic cells only) — ensemble means;
* ``forces_std`` [N]: per-atom spread of the members' forces, sqrt(mean_m |F_m - <F>|^2) (eV/A),
  the quantity LAMMPS exposes as the per-atom ``force_std`` of ``pair_style ekd``; for ONE model
  with an uncertainty head (a student trained with ``ensemble.student_uncertainty``: the module's
  ``has_sigma``), that model's prediction of its teachers' spread, from the same evaluation; 0 for
  one model without a head;
* ``energy_std``: standard deviation (population) of the members' energies, eV.

Forces and stress come from the gradient of the energy with respect to the pair vectors
r_ij = x_j - x_i + shift (see :mod:`ekd.deploy.model_file`), as in LAMMPS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from ..ops import library as _ops
from ..ops import threads as _threads
from ..ops.devices import resolve_device
from ..ops.order import inverse_order, spatial_order
from ..units import EV_TO_KCALMOL
from . import aoti
from .model_file import load_model


class EKDCalculator(Calculator):
    """ASE calculator for one exported model or an ensemble of them (see the module docstring).

    model_path: a file or a list of files written by :func:`ekd.deploy.model_file.save_model` (TorchScript)
    or :func:`ekd.deploy.aoti.export_module` (AOTInductor ``.pt2``, told apart by content); the
    members may differ in cutoff and depth but must cover the elements of the structures they see.
    device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (:func:`ekd.ops.devices.resolve_device`: a GPU
    that ekd cannot use is a one-line error); every kind of model file runs on it, except AOTInductor
    packages (compiled for the CPU). trust_code: load files whose code is not the code this ekd writes
    (ekd-model-1 files, custom modules) -- only for files you trust, since loading runs their code
    (see :mod:`ekd.deploy.model_file`, "Model files and trust").
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "forces_std", "energy_std"]

    #: atoms closer than this (Angstrom, periodic images included) are an error, not a NaN
    MIN_DISTANCE = 1e-8

    def __init__(
        self,
        model_path: str | Path | Sequence[str | Path],
        device: str | torch.device = "cpu",
        trust_code: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        paths = [model_path] if isinstance(model_path, str | Path) else list(model_path)
        if not paths:
            raise ValueError("EKDCalculator: give at least one model file")
        self.device = resolve_device(device, "EKDCalculator(device=...)")
        _threads.check_wait_policy(torch.get_num_threads(), "EKDCalculator")
        self.models = []
        self.metadata = []
        for p in paths:
            # the format is chosen by the file's content (an AOTInductor package or TorchScript)
            if aoti.is_package(p):
                if self.device.type != "cpu":
                    raise ValueError(
                        f"EKDCalculator: {p} is an AOTInductor package compiled for the CPU: use device='cpu'"
                    )
                module, meta = aoti.load_package(p, trust_code=trust_code)
            else:
                module, meta = load_model(p, device=self.device, trust_code=trust_code)
            self.models.append(module)
            self.metadata.append(meta)
        self.cutoff = max(m.cutoff for m in self.metadata)
        self.atomic_numbers = set.intersection(*(set(m.atomic_numbers) for m in self.metadata))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        numbers = atoms.numbers
        missing = sorted(set(numbers.tolist()) - self.atomic_numbers)
        if missing:
            raise ValueError(
                f"EKDCalculator: atomic numbers {missing} are not among the species of every model "
                f"({[list(m.species) for m in self.metadata]})"
            )
        dev = self.device
        positions = torch.tensor(atoms.positions, dtype=torch.float64, device=dev)
        pbc = torch.tensor(atoms.pbc, dtype=torch.bool, device=dev)
        cell = torch.tensor(np.asarray(atoms.cell), dtype=torch.float64, device=dev)
        _ops.check_cell(cell)  # also when not periodic: the pair vectors use it
        periodic = bool(pbc.any())
        # evaluated in a spatial order (neighbours near in memory: up to 3x faster on a shuffled
        # box), every per-atom result handed back in the caller's order via `back`
        order = spatial_order(positions, cell, pbc)
        back = inverse_order(order)
        positions = positions[order]
        first, second, shifts = _ops.neighbor_list(
            positions, self.cutoff, cell if periodic else None, pbc if periodic else False
        )
        r_ij = _ops.pair_vectors(positions, first, second, shifts, cell)
        self._check_distances(r_ij, first, second, shifts, order)
        species = torch.tensor(numbers, dtype=torch.long, device=dev)[order]
        n = len(atoms)

        energies, forces, virials = [], [], []
        # one model that predicts its teachers' spread reports that prediction as forces_std
        head = len(self.models) == 1 and bool(getattr(self.models[0], "has_sigma", False))
        sigma = None
        for module, meta in zip(self.models, self.metadata, strict=True):
            if isinstance(module, aoti.AOTIModel):
                e_atoms, g = module.energy_and_gradient(species, first, second, r_ij)
            else:
                r = r_ij.detach().to(getattr(torch, meta.dtype)).requires_grad_(True)
                if head:
                    e_atoms, sigma = module.energy_and_sigma(species, first, second, r)
                else:
                    e_atoms = module(species, first, second, r)
                (g,) = torch.autograd.grad(e_atoms.sum(), r)
            g = g.to(torch.float64)
            f = torch.zeros(n, 3, dtype=torch.float64, device=dev)
            f.index_add_(0, first, g).index_add_(0, second, -g)
            energies.append(e_atoms.detach().to(torch.float64))
            forces.append(f)
            virials.append(-(r_ij.detach().T @ g))  # W = -sum_p r_ij (x) dE/dr_ij, kcal/mol
        e = torch.stack(energies)[:, back]  # [M, N] kcal/mol
        f = torch.stack(forces)[:, back]  # [M, N, 3] kcal/mol/A
        w = torch.stack(virials).mean(0)
        to_ev = 1.0 / EV_TO_KCALMOL
        f_mean = f.mean(0)
        self.results["energies"] = (e.mean(0) * to_ev).cpu().numpy()
        self.results["energy"] = self.results["free_energy"] = float(e.sum(1).mean() * to_ev)
        self.results["energy_std"] = float(e.sum(1).std(unbiased=False) * to_ev)
        self.results["forces"] = (f_mean * to_ev).cpu().numpy()
        if sigma is not None:
            self.results["forces_std"] = (sigma.detach().to(torch.float64)[back] * to_ev).cpu().numpy()
        else:
            self.results["forces_std"] = (((f - f_mean) ** 2).sum(2).mean(0).sqrt() * to_ev).cpu().numpy()
        if atoms.pbc.all():
            # ASE's stress is dE/d(strain) / V = -W / V
            sigma = -0.5 * (w + w.T) * to_ev / atoms.get_volume()
            s = sigma.cpu().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        # the virial is useful for comparisons with LAMMPS also without a periodic cell (eV)
        self.results["virial"] = (w * to_ev).cpu().numpy()

    def _check_distances(self, r_ij, first, second, shifts, order) -> None:
        """Two atoms at one position (or an atom on its own periodic image) have no finite energy:
        say which (in the caller's numbering: atom k of the sorted structure is ``order[k]``)
        instead of returning NaN."""
        close = torch.linalg.vector_norm(r_ij, dim=1) < self.MIN_DISTANCE
        if not bool(close.any()):
            return
        p = int(torch.nonzero(close)[0, 0])
        i, j = int(order[first[p]]), int(order[second[p]])
        shift = [int(v) for v in shifts[p].tolist()] if shifts is not None and len(shifts) else [0, 0, 0]
        if any(shift):
            which = f"atom {i} and a periodic image of atom {j} (cell shift {shift}) are"
        else:
            which = f"atoms {min(i, j)} and {max(i, j)} are"
        d = float(torch.linalg.vector_norm(r_ij[p]))
        raise ValueError(
            f"EKDCalculator: {which} at the same position (distance {d:.3g} Angstrom, atom indices from 0); "
            "the energy is not finite. Remove or move one of them"
        )
