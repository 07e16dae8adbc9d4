"""Score models on any benchmark file (``ekd score``): exported model files, the members of a
run, or any ASE calculator, on an ANI-layout HDF5 file or an ASE-readable file (extxyz, ASE
database) with its own keys and units.

* The file is read by :func:`ekd.evaluation.benchmark.load_test` (its keys, units and conformer marks are
  described there).
* Metrics are :mod:`ekd.evaluation.metrics`'s (the numbers of a run's ``metrics.json``): energy RMSE/MAE,
  conformer ΔE RMSE/MAE over all pairs of a molecule's configurations within the window, force
  RMSE/MAE per component. When the file has a per-configuration ``kind`` dataset (strings), only
  configurations with ``kind == "conformer"`` form ΔE pairs; the energy and force errors use every
  configuration.
* Groups: the model files given form one group ("models", one member per file), ASE calculators
  another ("calculators", one member per ``MODULE:FACTORY[:ARG]``, :func:`calculator_group`); a run directory
  gives its groups (teacher, student_gen1, ..., or those asked for; see :mod:`ekd.groups`). Each
  group: its members' scores, their mean ± std, and the score of the ensembled (mean) prediction.
* A model that lacks an element of the file is an error naming the molecule and element, unless
  ``skip_unknown_elements``: then the molecules with such elements are left out for every model (so
  that all are scored on the same configurations) and listed in the result.

Units of the results: kcal/mol (energies) and kcal/mol/Angstrom (forces), whatever the file's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..deploy.aoti import AOTIModel
from .benchmark import ScoreError, TestSet, choose_keys, load_test
from .metrics import METRICS, evaluate_group, plain_json, summarize
from .metrics import score as score_predictions
from .score_sigma import format_lines as sigma_lines
from .score_sigma import group_calibration
from .tables import COLUMNS, fmt, text_table

SCHEMA = "ekd.evaluation.score/1"
DEFAULT_WINDOW = 100.0
MODELS_GROUP = "models"
CALCULATORS_GROUP = "calculators"

# ------------------------------------------------------------------------------------------
# models


#: predict(data, advance) -> (energy (n,) kcal/mol, forces (n, A, 3) kcal/mol/Angstrom[, sigma (n, A)
#: kcal/mol/Angstrom: a model with an uncertainty head, see score_sigma]); advance(k) is called with
#: the number of configurations done (progress)
Predictor = Callable[[Dataset, Callable[[int], None]], tuple[np.ndarray, np.ndarray]]


@dataclass
class ModelGroup:
    """Members scored together (one row of the tables): the group's name and role (see
    :mod:`ekd.groups`), and per member its name, known elements and predictor."""

    name: str
    role: str
    generation: int = 0
    member_names: list[str] = field(default_factory=list)
    elements: list[tuple[int, ...]] = field(default_factory=list)
    predictors: list[Predictor] = field(default_factory=list)
    study: str | None = None

    def add(self, name: str, elements: Sequence[int], predictor: Predictor) -> None:
        self.member_names.append(name)
        self.elements.append(tuple(int(z) for z in elements))
        self.predictors.append(predictor)


def predict_model_file(
    module, cutoff: float, dtype: str, data: Dataset, advance=None, batch_size: int = 64, device="cpu", sigma=False
):
    """Energies (n,) kcal/mol and forces (n, A, 3) kcal/mol/Angstrom (0 in padding) of an exported
    model on isolated configurations, ``batch_size`` configurations per model call: the op
    library's batched neighbor list (no periodic images), one forward and one backward pass. Forces
    from the gradient with respect to the pair vectors, as in :class:`ekd.deploy.calculator.EKDCalculator`.
    device: the torch device the module is on (the inputs are moved there, the results come back).
    sigma: also the head's predicted sigma (n, A) kcal/mol/Angstrom (0 in padding) from the same
    evaluation (``energy_and_sigma``, as EKDCalculator does), returned third."""
    import torch

    from ..ops import library as _ops
    from ..ops.order import inverse_order, spatial_order

    n, a = data.species.shape
    energies = np.empty(n)
    forces = np.zeros((n, a, 3))
    sigmas = np.zeros((n, a)) if sigma else None
    dt = getattr(torch, dtype)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        real = data.species[sl] > 0
        b = real.shape[0]
        counts = torch.as_tensor(real.sum(axis=1))
        batch = torch.repeat_interleave(torch.arange(b), counts).to(device)
        species = torch.as_tensor(data.species[sl][real], dtype=torch.long, device=device)
        positions = torch.as_tensor(data.coordinates[sl][real], dtype=torch.float64, device=device)
        # each molecule's atoms in a spatial order (as EKDCalculator does), forces handed back in
        # the file's; the molecules keep their places, so `batch` holds for the sorted atoms too
        order = spatial_order(positions, batch=batch)
        species, positions = species[order], positions[order]
        cell = torch.zeros(b, 3, 3, dtype=torch.float64, device=device)
        pbc = torch.zeros(b, 3, dtype=torch.bool, device=device)
        first, second, _ = _ops.neighbor_list(positions, cutoff, cell, pbc, batch=batch)
        r = (positions[second] - positions[first]).to(dt)
        if isinstance(module, AOTIModel):
            e_atoms, g = module.energy_and_gradient(species, first, second, r)
        else:
            r.requires_grad_(True)
            if sigma:
                e_atoms, s_atoms = module.energy_and_sigma(species, first, second, r)
                s_block = np.zeros((b, a))
                s_block[real] = s_atoms.detach().to(torch.float64)[inverse_order(order)].cpu().numpy()
                sigmas[sl] = s_block
            else:
                e_atoms = module(species, first, second, r)
            (g,) = torch.autograd.grad(e_atoms.sum(), r)
        g = g.to(torch.float64)
        f = torch.zeros(positions.shape[0], 3, dtype=torch.float64, device=device)
        f.index_add_(0, first, g).index_add_(0, second, -g)
        e = torch.zeros(b, dtype=torch.float64, device=device)
        e.index_add_(0, batch, e_atoms.detach().to(torch.float64))
        energies[sl] = e.cpu().numpy()
        block = np.zeros((b, a, 3))
        block[real] = f[inverse_order(order)].cpu().numpy()
        forces[sl] = block
        if advance is not None:
            advance(b)
    return (energies, forces, sigmas) if sigma else (energies, forces)


def model_files(
    paths: Sequence[str | os.PathLike], trust_code: bool = False, batch_size: int = 64, device: str = "cpu"
) -> ModelGroup:
    """Exported model files (``ekd export``) as one group, one member per file, evaluated on
    ``device`` (auto, cpu, cuda, cuda:N; AOTInductor packages: the CPU only)."""
    from ..deploy.aoti import is_package, load_package  # noqa: I001
    from ..deploy.model_file import load_model
    from ..ops.devices import resolve_device

    dev = resolve_device(device, "--device")

    if not paths:
        raise ScoreError("give at least one model file (or --run-dir)")
    group = ModelGroup(MODELS_GROUP, "model")
    for p in paths:
        # TorchScript file or AOTInductor package, told apart by content as in EKDCalculator
        if is_package(p):
            if dev.type != "cpu":
                raise ScoreError(f"{p} is an AOTInductor package compiled for the CPU: score it with --device cpu")
            module, meta = load_package(p, trust_code=trust_code)
        else:
            module, meta = load_model(p, device=dev, trust_code=trust_code)

        head = not isinstance(module, AOTIModel) and bool(getattr(module, "has_sigma", False))

        def predict(data, advance, module=module, meta=meta, head=head):
            return predict_model_file(module, meta.cutoff, meta.dtype, data, advance, batch_size, dev, head)

        group.add(str(p), meta.atomic_numbers, predict)
    return group


def calculator_group(specs: Sequence[str]) -> ModelGroup:
    """ASE calculators as one group, one member per spec ``MODULE:FACTORY[:ARG]`` (e.g.
    ``mace.calculators:MACECalculator:model.model``; see :func:`ekd.training.external.load_calculator`),
    each configuration handed over as an isolated ``ase.Atoms`` (eV, eV/Angstrom back). A calculator
    does not declare its elements, so none is left out for it (``--skip-unknown-elements``): one it
    cannot predict is its own error, reported with the configuration."""
    from ..training.external import load_calculator

    group = ModelGroup(CALCULATORS_GROUP, "calculator")
    for spec in specs:
        member = load_calculator(spec)

        def predict(data, advance, member=member):
            return member.predict(data, forces=True, advance=advance)

        group.add(spec, range(1, 119), predict)
    return group


# ------------------------------------------------------------------------------------------
# scoring


def check_elements(test: TestSet, groups: Sequence[ModelGroup], skip: bool = False) -> TestSet:
    """``test`` without the molecules that hold an element some member does not know (``skip``),
    or an error naming the first such molecule, element and model."""
    from ase.data import chemical_symbols

    data = test.data
    drop = np.zeros(len(data), dtype=bool)
    skipped: dict[str, dict] = {}
    for group in groups:
        for name, known in zip(group.member_names, group.elements, strict=True):
            unknown = sorted(set(data.elements) - set(known))
            for z in unknown:
                rows = (data.species == z).any(axis=1)
                molecules = [data.molecule_names[m] for m in np.unique(data.molecule[rows])]
                symbol = chemical_symbols[z]
                if not skip:
                    more = f" (and {len(molecules) - 1} more molecules)" if len(molecules) > 1 else ""
                    raise ScoreError(
                        f"{test.path}: molecule {molecules[0]!r}{more} has element {symbol}, which model {name} "
                        f"does not know (it knows {' '.join(chemical_symbols[k] for k in known)}); score a file "
                        "without it, or leave such molecules out with --skip-unknown-elements"
                    )
                drop |= rows
                for mol in molecules:
                    entry = skipped.setdefault(mol, {"molecule": mol, "elements": [], "models": []})
                    if symbol not in entry["elements"]:
                        entry["elements"].append(symbol)
                    if name not in entry["models"]:
                        entry["models"].append(name)
    if not drop.any():
        return test
    if drop.all():
        raise ScoreError(f"{test.path}: every molecule has an element some model does not know; nothing to score")
    for entry in skipped.values():
        m = data.molecule_names.index(entry["molecule"])
        entry["n_configurations"] = int((data.molecule == m).sum())
    return test.subset(~drop, list(skipped.values()))


def _with_conformer_pairs(full: dict, pairs: dict) -> dict:
    """A score whose ΔE part comes from the conformer-only score ``pairs``."""
    out = dict(full)
    for key in ("delta_e_rmse", "delta_e_mae", "n_pairs", "n_window_excluded"):
        out[key] = pairs[key]
    return out


def score_group(predictions: dict, test: TestSet, window: float) -> dict:
    """evaluate_group of one group on ``test``, with ΔE pairs formed by conformers only when the file
    marks them (``kind``)."""
    data = test.data
    reference = {
        "energy": data.properties["energy"],
        "forces": data.properties.get("reference_forces"),
        "molecule": data.molecule,
        "species": data.species,
    }
    result = evaluate_group(predictions, reference, window)
    if not test.has_kind or test.conformer.all():
        return result
    c = test.conformer
    sub_ref = {
        "energy": reference["energy"][c],
        "forces": None,
        "molecule": data.molecule[c],
        "species": data.species[c],
    }
    pairs = evaluate_group({"energy": predictions["energy"][:, c], "forces": None}, sub_ref, window)
    members = [_with_conformer_pairs(a, b) for a, b in zip(result["members"], pairs["members"], strict=True)]
    return {
        "members": members,
        "summary": summarize(members),
        "ensemble": _with_conformer_pairs(result["ensemble"], pairs["ensemble"]),
    }


def per_molecule(predictions: dict, test: TestSet, window: float) -> dict:
    """{molecule: {"n_configurations", "summary" (members), "ensemble"}} of one group."""
    data = test.data
    forces = data.properties.get("reference_forces")
    ref_e = data.properties["energy"]
    out = {}
    ens_e = predictions["energy"].mean(axis=0)
    ens_f = predictions["forces"].mean(axis=0) if forces is not None else None
    for m in np.unique(data.molecule):
        rows = np.flatnonzero(data.molecule == m)
        pair_rows = rows[test.conformer[rows]]

        def one(e, f, rows=rows, pair_rows=pair_rows):
            ref_f = None if forces is None else forces[rows]
            s = score_predictions(
                e[rows],
                ref_e[rows],
                data.molecule[rows],
                data.species[rows],
                None if f is None else f[rows],
                ref_f,
                window,
            )
            if len(pair_rows) != len(rows):
                # only the conformers pair up (pair_rows may be empty: then no pair)
                p = score_predictions(
                    e[pair_rows], ref_e[pair_rows], data.molecule[pair_rows], data.species[pair_rows], window=window
                )
                s = _with_conformer_pairs(s, p)
            return s

        members = [
            one(predictions["energy"][i], None if ens_f is None else predictions["forces"][i])
            for i in range(predictions["energy"].shape[0])
        ]
        out[data.molecule_names[m]] = {
            "n_configurations": len(rows),
            "summary": summarize(members),
            "ensemble": one(ens_e, ens_f),
        }
    return out


@dataclass
class ScoreResult:
    """Scores of every group on one test set, and the predictions they came from."""

    test: TestSet
    window: float
    groups: dict[str, dict]
    predictions: dict[str, dict[str, np.ndarray]]

    def to_dict(self) -> dict:
        t = self.test
        return {
            "schema": SCHEMA,
            "test": {
                "path": str(t.path),
                "energy_key": t.keys["energy"],
                "forces_key": t.keys.get("reference_forces"),
                "energy_unit": t.units.energy,
                "length_unit": t.units.length,
                "n_configurations": len(t.data),
                "n_molecules": int(np.unique(t.data.molecule).size),
                "n_without_energy": t.n_without_energy,
                "conformers_marked": t.has_kind,
                "n_conformers": int(t.conformer.sum()),
                "skipped_molecules": list(t.skipped),
            },
            "conformer_window": self.window,
            "units": {"energy": "kcal/mol", "forces": "kcal/mol/angstrom"},
            "groups": self.groups,
        }

    def metrics(self, set_name: str = "test") -> dict:
        """The groups in the layout of a run's metrics (:mod:`ekd.evaluation.metrics`), for
        :mod:`ekd.evaluation.report`."""
        groups = {}
        for name, g in self.groups.items():
            entry = {k: g[k] for k in ("role", "generation", "n_members")}
            entry[set_name] = {k: g[k] for k in ("members", "summary", "ensemble")}
            groups[name] = entry
        sets = {
            set_name: {
                "description": str(self.test.path),
                "n_configurations": len(self.test.data),
                "n_molecules": int(np.unique(self.test.data.molecule).size),
            }
        }
        return {"config": {"evaluate": {"conformer_window": self.window}}, "sets": sets, "roles": groups}


def score_models(
    test: TestSet,
    groups: Sequence[ModelGroup],
    window: float = DEFAULT_WINDOW,
    molecules: bool = False,
    progress: bool = False,
) -> ScoreResult:
    """Predict ``test`` with every member of every group and score them (see the module docstring).
    ``molecules``: also per-molecule scores (``groups[name]["per_molecule"]``)."""
    from tqdm import tqdm

    if not (isinstance(window, int | float) and math.isfinite(window) and window > 0):
        raise ScoreError(f"--conformer-window must be a number of kcal/mol > 0, got {window!r}")
    total = len(test.data) * sum(len(g.member_names) for g in groups)
    out, preds = {}, {}
    with tqdm(total=total, desc="scoring", unit="conf", disable=not progress, leave=False) as bar:
        for group in groups:
            energies, forces, sigmas = [], [], []
            for predict in group.predictors:
                e, f, *s = predict(test.data, bar.update)
                energies.append(np.asarray(e, dtype=np.float64))
                forces.append(np.asarray(f, dtype=np.float64))
                sigmas.append(s[0] if s else None)
            p = {"energy": np.stack(energies), "forces": np.stack(forces)}
            entry = {
                "role": group.role,
                "generation": group.generation,
                "n_members": len(group.member_names),
                "member_names": list(group.member_names),
                **score_group(p, test, window),
            }
            if group.study:
                entry["study"] = group.study
            if (cal := group_calibration(sigmas, p["forces"], test.data)) is not None:
                entry["calibration"] = cal
            if molecules:
                entry["per_molecule"] = per_molecule(p, test, window)
            out[group.name] = entry
            preds[group.name] = p
    return ScoreResult(test, window, out, preds)


# ------------------------------------------------------------------------------------------
# output


def format_result(result: ScoreResult, molecules: bool = False) -> str:
    """The tables ``ekd score`` prints: per group its members, their mean ± std, the ensemble."""
    d = result.to_dict()
    t = d["test"]
    forces = repr(t["forces_key"]) if t["forces_key"] else "(none: no force errors)"
    lines = [
        f"{t['path']}: {t['n_configurations']} configurations of {t['n_molecules']} molecules; energy "
        f"{t['energy_key']!r}, forces {forces}; file units {t['energy_unit']}, "
        f"{t['length_unit']}; errors in kcal/mol and kcal/mol/Å; ΔE window {result.window:g} kcal/mol"
        + (f", pairs of the {t['n_conformers']} kind == 'conformer' configurations" if t["conformers_marked"] else "")
    ]
    if t["n_without_energy"]:
        lines.append(f"  left out: {t['n_without_energy']} configurations without a reference energy")
    for s in t["skipped_molecules"]:
        lines.append(
            f"  skipped molecule {s['molecule']!r} ({s['n_configurations']} configurations): element(s) "
            f"{', '.join(s['elements'])} unknown to {', '.join(s['models'])}"
        )
    header = ["", "k", *(h for _, h in COLUMNS)]
    rows = []
    for group, g in result.groups.items():
        rows.append(
            [group, str(g["n_members"]), *(fmt(g["summary"][k]["mean"], g["summary"][k]["std"]) for k, _ in COLUMNS)]
        )
        if g["n_members"] > 1:
            rows.append([f"  ensembled {group}", "mean", *(fmt(g["ensemble"][k]) for k, _ in COLUMNS)])
        for name, s in zip(g["member_names"], g["members"], strict=True) if g["n_members"] > 1 else ():
            rows.append([f"  {name}", "1", *(fmt(s[k]) for k, _ in COLUMNS)])
    lines += text_table(header, rows)
    lines += sigma_lines(result.groups)
    if molecules:
        for group, g in result.groups.items():
            k = g["n_members"]
            lines.append("")
            lines.append(f"{group}: per molecule, " + ("the ensembled prediction" if k > 1 else "the model"))
            body = [
                [mol, str(s["n_configurations"]), *(fmt(s["ensemble"][key]) for key, _ in COLUMNS)]
                for mol, s in g["per_molecule"].items()
            ]
            lines += text_table(["molecule", "n", *(h for _, h in COLUMNS)], body)
    return "\n".join(lines)


def write_json(result: ScoreResult, path: str | os.PathLike) -> Path:
    """The result as strict JSON (NaN -> null), written atomically."""
    from ..store import atomic_text

    path = Path(path)
    text = json.dumps(plain_json(result.to_dict(), "score"), indent=1, allow_nan=False)
    atomic_text(path, text + "\n")
    return path


def plot(result: ScoreResult, out_dir: str | os.PathLike) -> list[Path]:
    """``energy_parity.png``, ``forces_parity.png`` and ``errors.png`` of ``result`` in ``out_dir``
    (see :func:`ekd.evaluation.figures.parity_figures`). Needs matplotlib."""
    from .figures import parity_figures

    data = result.test.data
    reference = {
        "energy": data.properties["energy"],
        "forces": data.properties.get("reference_forces"),
        "molecule": data.molecule,
        "n_molecules": len(data.molecule_names),
        "species": data.species,
    }
    summaries = {name: g["summary"] for name, g in result.groups.items()}
    title = f"{result.test.path.name} (error bars: std over members)"
    return parity_figures(Path(out_dir), reference, result.predictions, summaries, title)


__all__ = [
    "METRICS",
    "SCHEMA",
    "ModelGroup",
    "ScoreError",
    "ScoreResult",
    "TestSet",
    "check_elements",
    "choose_keys",
    "format_result",
    "load_test",
    "model_files",
    "calculator_group",
    "plot",
    "predict_model_file",
    "score_models",
    "write_json",
]
