"""Score models on any benchmark file (``ekd score``): exported model files, or the members of a
run, on an ANI-layout HDF5 file with its own keys and units.

* The file is read by ekd's one loader (:func:`ekd.data.load_dataset`): its units are what the
  caller declares (``--energy-unit`` / ``--length-unit``), checked against the file's
  ``energy_unit`` / ``length_unit`` attributes (a contradiction is an error), else the attribute's,
  else the ANI releases' Hartree / Angstrom. Keys: ``energy_key`` or the file's only ``*.energy``
  key; ``forces_key`` or, when the file has it, the forces of the energy's level (``<level>.forces``).
  Configurations without a reference energy are left out, as in a run's evaluation.
* Metrics are :mod:`ekd.evaluate`'s (the numbers of a run's ``metrics.json``): energy RMSE/MAE,
  conformer ΔE RMSE/MAE over all pairs of a molecule's configurations within the window, force
  RMSE/MAE per component. When the file has a per-configuration ``kind`` dataset (strings), only
  configurations with ``kind == "conformer"`` form ΔE pairs; the energy and force errors use every
  configuration.
* Groups: the model files given form one group ("models", one member per file); a run directory
  gives its groups (teacher, student_gen1, ..., or those asked for). Each group: its members'
  scores, their mean ± std, and the score of the ensembled (mean) prediction.
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

from .data import DataFileError, Dataset, Units, load_dataset, resolve_units
from .evaluate import METRICS, evaluate_role, summarize
from .evaluate import score as score_predictions

SCHEMA = "ekd.score/1"
#: the per-configuration dataset that marks conformers (only these form ΔE pairs when present)
KIND_KEY = "kind"
CONFORMER = "conformer"
DEFAULT_WINDOW = 100.0
MODELS_GROUP = "models"


class ScoreError(ValueError):
    """A scoring request that cannot be done as asked; the message says why and what to do."""


# ------------------------------------------------------------------------------------------
# the benchmark file


@dataclass(frozen=True)
class TestSet:
    """A benchmark file in internal units.

    data: the configurations with a known reference energy (``energy``, ``reference_forces`` if
        a forces key is used). conformer: (n,) bool, the configurations that may form ΔE pairs.
    """

    path: Path
    data: Dataset
    keys: dict[str, str]
    units: Units
    conformer: np.ndarray
    has_kind: bool
    n_without_energy: int = 0
    skipped: tuple[dict, ...] = ()

    def subset(self, keep: np.ndarray, skipped: Sequence[dict]) -> TestSet:
        return TestSet(
            self.path,
            self.data.subset(keep),
            self.keys,
            self.units,
            self.conformer[keep],
            self.has_kind,
            self.n_without_energy,
            tuple(skipped),
        )


def _property_keys(path: Path) -> list[str]:
    """Names of the per-configuration arrays of an ANI-layout file (every group's, sorted)."""
    import h5py

    from .data.ani import _NON_PROPERTY_KEYS, _iter_h5_groups, _open

    keys: set[str] = set()
    with _open(path) as h5:
        for _, g in _iter_h5_groups(h5, str(path)):
            keys.update(k for k, v in g.items() if isinstance(v, h5py.Dataset) and k not in _NON_PROPERTY_KEYS)
    return sorted(keys)


def choose_keys(
    path: str | os.PathLike, energy_key: str | None = None, forces_key: str | None = None
) -> dict[str, str]:
    """{"energy": key[, "reference_forces": key]} of data file ``path`` (see the module docstring)."""
    path = Path(path)
    if energy_key and forces_key:
        return {"energy": energy_key, "reference_forces": forces_key}
    present = _property_keys(path)
    if not energy_key:
        energies = [k for k in present if k.endswith(".energy") or k == "energy"]
        if len(energies) != 1:
            found = f"it has {energies}" if energies else f"it has no '*.energy' key (keys: {present})"
            raise ScoreError(f"{path}: which energy to score against? {found}; choose one with --energy-key")
        energy_key = energies[0]
    keys = {"energy": energy_key}
    if forces_key:
        keys["reference_forces"] = forces_key
    else:
        level = energy_key[: -len("energy")] if energy_key.endswith("energy") else None
        if level is not None and f"{level}forces" in present:
            keys["reference_forces"] = f"{level}forces"
    return keys


def _conformer_marks(path: Path, data: Dataset) -> tuple[np.ndarray, bool]:
    """(n,) True where a configuration may form ΔE pairs, and whether the file has ``kind``.

    Called on the dataset as loaded (before any subset): its rows are the file's groups in order,
    each group's configurations in file order."""
    import h5py

    from .data.ani import _iter_h5_groups, _open

    kinds: dict[str, np.ndarray | None] = {}
    with _open(path) as h5:
        for name, g in _iter_h5_groups(h5, str(path)):
            item = g.get(KIND_KEY)
            if item is None:
                kinds[name] = None
                continue
            raw = item[()] if isinstance(item, h5py.Dataset) else None
            n_conf = g["coordinates"].shape[0] if g["coordinates"].ndim == 3 else 1
            if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "SUO" or raw.shape != (n_conf,):
                raise DataFileError(
                    f"{path}: group {name!r}, key {KIND_KEY!r}: expected {n_conf} strings (one per configuration, "
                    f"e.g. 'conformer'), got {raw.dtype if isinstance(raw, np.ndarray) else type(raw).__name__} "
                    f"of shape {getattr(raw, 'shape', ())}"
                )
            kinds[name] = np.array([(s.decode() if isinstance(s, bytes) else str(s)).strip() for s in raw])
    marked = [name for name, k in kinds.items() if k is not None]
    if not marked:
        return np.ones(len(data), dtype=bool), False
    unmarked = [name for name in data.molecule_names if kinds.get(name) is None]
    if unmarked:
        raise DataFileError(
            f"{path}: groups {marked[:3]} mark their configurations with a {KIND_KEY!r} dataset but "
            f"{unmarked[:3]}{' and more' if len(unmarked) > 3 else ''} do not; give every group a {KIND_KEY!r} "
            f"dataset ('{CONFORMER}' for the configurations that form ΔE pairs) or none"
        )
    rows = np.concatenate([kinds[name] for name in data.molecule_names])
    if rows.shape != (len(data),):
        raise DataFileError(f"{path}: {KIND_KEY!r} datasets hold {rows.size} entries for {len(data)} configurations")
    return rows == CONFORMER, True


def load_test(
    path: str | os.PathLike,
    energy_key: str | None = None,
    forces_key: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
) -> TestSet:
    """Read a benchmark file (see the module docstring for keys and units)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--test {path}: no such file")
    keys = choose_keys(path, energy_key, forces_key)
    try:
        declared = Units(energy_unit, length_unit)
    except ValueError as e:
        raise ScoreError(f"{e} (--energy-unit / --length-unit)") from None
    options = ("--energy-unit", "--length-unit")
    # resolved here only to be reported; the loader checks the same declaration against the file
    units = resolve_units(path, declared, options)
    data = load_dataset(path, keys, declared, declared_as=options)
    conformer, has_kind = _conformer_marks(path, data)
    known = data.mask("energy")
    if not known.any():
        raise DataFileError(f"{path}: no configuration has a reference energy under {keys['energy']!r} (all NaN)")
    return TestSet(path, data.subset(known), keys, units, conformer[known], has_kind, int((~known).sum()))


# ------------------------------------------------------------------------------------------
# models


#: predict(data, advance) -> (energy (n,) kcal/mol, forces (n, A, 3) kcal/mol/Angstrom); advance(k)
#: is called with the number of configurations done (progress)
Predictor = Callable[[Dataset, Callable[[int], None]], tuple[np.ndarray, np.ndarray]]


@dataclass
class ModelGroup:
    """Members scored together (one row of the tables): names, known elements, predictors."""

    label: str
    role: str
    generation: int = 0
    names: list[str] = field(default_factory=list)
    elements: list[tuple[int, ...]] = field(default_factory=list)
    predictors: list[Predictor] = field(default_factory=list)
    study: str | None = None

    def add(self, name: str, elements: Sequence[int], predictor: Predictor) -> None:
        self.names.append(name)
        self.elements.append(tuple(int(z) for z in elements))
        self.predictors.append(predictor)


def predict_model_file(module, cutoff: float, dtype: str, data: Dataset, advance=None, batch_size: int = 64):
    """Energies (n,) kcal/mol and forces (n, A, 3) kcal/mol/Angstrom (0 in padding) of an exported
    model on isolated configurations, ``batch_size`` configurations per model call: the op
    library's batched neighbor list (no periodic images), one forward and one backward pass. Forces
    from the gradient with respect to the pair vectors, as in :class:`ekd.calculator.EKDCalculator`."""
    import torch

    from . import _ops

    n, a = data.species.shape
    energies = np.empty(n)
    forces = np.zeros((n, a, 3))
    dt = getattr(torch, dtype)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        real = data.species[sl] > 0
        b = real.shape[0]
        counts = torch.as_tensor(real.sum(axis=1))
        batch = torch.repeat_interleave(torch.arange(b), counts)
        species = torch.as_tensor(data.species[sl][real], dtype=torch.long)
        positions = torch.as_tensor(data.coordinates[sl][real], dtype=torch.float64)
        cell = torch.zeros(b, 3, 3, dtype=torch.float64)
        pbc = torch.zeros(b, 3, dtype=torch.bool)
        first, second, _ = _ops.neighbor_list(positions, cutoff, cell, pbc, batch=batch)
        r = (positions[second] - positions[first]).to(dt).requires_grad_(True)
        e_atoms = module(species, first, second, r)
        (g,) = torch.autograd.grad(e_atoms.sum(), r)
        g = g.to(torch.float64)
        f = torch.zeros(positions.shape[0], 3, dtype=torch.float64)
        f.index_add_(0, first, g).index_add_(0, second, -g)
        e = torch.zeros(b, dtype=torch.float64).index_add_(0, batch, e_atoms.detach().to(torch.float64))
        energies[sl] = e.numpy()
        block = np.zeros((b, a, 3))
        block[real] = f.numpy()
        forces[sl] = block
        if advance is not None:
            advance(b)
    return energies, forces


def model_files(paths: Sequence[str | os.PathLike], trust_code: bool = False, batch_size: int = 64) -> ModelGroup:
    """Exported model files (``ekd export``) as one group, one member per file."""
    from .model_file import load_model

    if not paths:
        raise ScoreError("give at least one model file (or --run-dir)")
    group = ModelGroup(MODELS_GROUP, "model")
    for p in paths:
        module, meta = load_model(p, trust_code=trust_code)

        def predict(data, advance, module=module, meta=meta):
            return predict_model_file(module, meta.cutoff, meta.dtype, data, advance, batch_size)

        group.add(str(p), meta.atomic_numbers, predict)
    return group


def run_groups(
    run_dir: str | os.PathLike, labels: Sequence[str] | None = None
) -> tuple[list[ModelGroup], float, list[str]]:
    """The groups of a run directory (``labels``, or every group whose members are all trained), the
    run's conformer window, and the labels of the groups left out because they are not fully trained.
    Members predict as in the run's own evaluation (:meth:`ekd.train.Member.predict`)."""
    from . import config
    from .train import load_member
    from .workflow import Run

    run_dir = Path(run_dir)
    stamp = run_dir / "config.yaml"
    if not stamp.is_file():
        raise ScoreError(f"--run-dir {run_dir}: no config.yaml there; is it a run directory made by `ekd run`?")
    cfg = config.load(stamp)
    # read only: Run writes nothing into an existing run directory that has its config.yaml
    run = Run(cfg, run_dir, progress=False)
    available = run.groups()
    if labels:
        chosen = [run.group(label) for label in labels]
    else:
        chosen = available
    out, left_out = [], []
    for g in chosen:
        dirs = [run.member_dir(g, m) for m in range(g.n_members)]
        unfinished = [d for d in dirs if not (d / "done.json").exists()]
        if unfinished:
            if labels:
                raise ScoreError(
                    f"--groups {g.label}: {len(unfinished)} of its {g.n_members} members are not trained "
                    f"(no {unfinished[0] / 'done.json'}); finish the run (ekd run) or leave the group out"
                )
            left_out.append(g.label)  # not asked for by name: left out, and said so
            continue
        group = ModelGroup(g.label, g.role, g.generation, study=g.study)
        for d in dirs:
            member = load_member(d)

            def predict(data, advance, member=member):
                energy, forces = member.predict(data, forces=True)
                advance(len(data))
                return energy, forces

            group.add(str(d.relative_to(run_dir)), member.species, predict)
        out.append(group)
    if not out:
        raise ScoreError(f"--run-dir {run_dir}: no group has all its members trained yet; finish the run first")
    return out, float(cfg.evaluate.conformer_window), left_out


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
        for name, known in zip(group.names, group.elements, strict=True):
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
    """evaluate_role of one group on ``test``, with ΔE pairs formed by conformers only when the file
    marks them (``kind``)."""
    data = test.data
    reference = {
        "energy": data.properties["energy"],
        "forces": data.properties.get("reference_forces"),
        "molecule": data.molecule,
        "species": data.species,
    }
    result = evaluate_role(predictions, reference, window)
    if not test.has_kind or test.conformer.all():
        return result
    c = test.conformer
    sub_ref = {
        "energy": reference["energy"][c],
        "forces": None,
        "molecule": data.molecule[c],
        "species": data.species[c],
    }
    pairs = evaluate_role({"energy": predictions["energy"][:, c], "forces": None}, sub_ref, window)
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
        """The groups in the layout of a run's metrics (:mod:`ekd.evaluate`), for :mod:`ekd.report`."""
        roles = {}
        for label, g in self.groups.items():
            entry = {k: g[k] for k in ("role", "generation", "n_members")}
            entry[set_name] = {k: g[k] for k in ("members", "summary", "ensemble")}
            roles[label] = entry
        sets = {
            set_name: {
                "description": str(self.test.path),
                "n_configurations": len(self.test.data),
                "n_molecules": int(np.unique(self.test.data.molecule).size),
            }
        }
        return {"config": {"evaluate": {"conformer_window": self.window}}, "sets": sets, "roles": roles}


def score_models(
    test: TestSet,
    groups: Sequence[ModelGroup],
    window: float = DEFAULT_WINDOW,
    molecules: bool = False,
    progress: bool = False,
) -> ScoreResult:
    """Predict ``test`` with every member of every group and score them (see the module docstring).
    ``molecules``: also per-molecule scores (``groups[label]["per_molecule"]``)."""
    from tqdm import tqdm

    if not (isinstance(window, int | float) and math.isfinite(window) and window > 0):
        raise ScoreError(f"--conformer-window must be a number of kcal/mol > 0, got {window!r}")
    total = len(test.data) * sum(len(g.names) for g in groups)
    out, preds = {}, {}
    with tqdm(total=total, desc="scoring", unit="conf", disable=not progress, leave=False) as bar:
        for group in groups:
            energies, forces = [], []
            for predict in group.predictors:
                e, f = predict(test.data, bar.update)
                energies.append(np.asarray(e, dtype=np.float64))
                forces.append(np.asarray(f, dtype=np.float64))
            p = {"energy": np.stack(energies), "forces": np.stack(forces)}
            entry = {
                "role": group.role,
                "generation": group.generation,
                "n_members": len(group.names),
                "member_names": list(group.names),
                **score_group(p, test, window),
            }
            if group.study:
                entry["study"] = group.study
            if molecules:
                entry["per_molecule"] = per_molecule(p, test, window)
            out[group.label] = entry
            preds[group.label] = p
    return ScoreResult(test, window, out, preds)


# ------------------------------------------------------------------------------------------
# output


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    rule = "-" * len(line(header))
    return [rule, line(header), rule, *map(line, rows), rule]


def format_result(result: ScoreResult, molecules: bool = False) -> str:
    """The tables ``ekd score`` prints: per group its members, their mean ± std, the ensemble."""
    from .report import COLUMNS, fmt

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
    for label, g in result.groups.items():
        rows.append(
            [label, str(g["n_members"]), *(fmt(g["summary"][k]["mean"], g["summary"][k]["std"]) for k, _ in COLUMNS)]
        )
        if g["n_members"] > 1:
            rows.append([f"  ensembled {label}", "mean", *(fmt(g["ensemble"][k]) for k, _ in COLUMNS)])
        for name, s in zip(g["member_names"], g["members"], strict=True) if g["n_members"] > 1 else ():
            rows.append([f"  {name}", "1", *(fmt(s[k]) for k, _ in COLUMNS)])
    lines += _table(header, rows)
    if molecules:
        for label, g in result.groups.items():
            k = g["n_members"]
            lines.append("")
            lines.append(f"{label}: per molecule, " + ("the ensembled prediction" if k > 1 else "the model"))
            body = [
                [mol, str(s["n_configurations"]), *(fmt(s["ensemble"][key]) for key, _ in COLUMNS)]
                for mol, s in g["per_molecule"].items()
            ]
            lines += _table(["molecule", "n", *(h for _, h in COLUMNS)], body)
    return "\n".join(lines)


def write_json(result: ScoreResult, path: str | os.PathLike) -> Path:
    """The result as strict JSON (NaN -> null), written atomically."""
    from .evaluate import _plain
    from .store import atomic_text

    path = Path(path)
    text = json.dumps(_plain(result.to_dict(), "score"), indent=1, allow_nan=False)
    atomic_text(path, text + "\n")
    return path


def plot(result: ScoreResult, out_dir: str | os.PathLike) -> list[Path]:
    """``energy_parity.png`` and ``forces_parity.png`` (the ensembled prediction of each group against
    the reference; energies relative to each molecule's lowest reference energy) and ``errors.png``
    (E, ΔE and F RMSE per group, members' mean ± std). Needs matplotlib."""
    from .report import _bar_groups, _figure, _save

    out_dir = Path(out_dir)
    data = result.test.data
    ref_e = data.properties["energy"]
    lowest = np.full(len(data.molecule_names), np.inf)
    np.minimum.at(lowest, data.molecule, ref_e)
    offset = lowest[data.molecule]
    ref_f = data.properties.get("reference_forces")
    labels = list(result.groups)
    colours = [f"C{i % 10}" for i in range(len(labels))]
    written = []

    fig = _figure(4.6, 4.4)
    ax = fig.subplots()
    for label, colour in zip(labels, colours, strict=True):
        pred = result.predictions[label]["energy"].mean(axis=0)
        ax.scatter(ref_e - offset, pred - offset, s=6, alpha=0.6, color=colour, label=label)
    _diagonal(ax)
    ax.set_xlabel("reference E − molecule's lowest reference E (kcal/mol)")
    ax.set_ylabel("predicted E − same offset (kcal/mol)")
    ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "energy_parity.png"))

    if ref_f is not None:
        fig = _figure(4.6, 4.4)
        ax = fig.subplots()
        ok = (data.species > 0) & np.isfinite(ref_f).all(axis=-1)
        for label, colour in zip(labels, colours, strict=True):
            pred = result.predictions[label]["forces"].mean(axis=0)
            ax.scatter(ref_f[ok].ravel(), pred[ok].ravel(), s=3, alpha=0.4, color=colour, label=label)
        _diagonal(ax)
        ax.set_xlabel("reference force component (kcal/mol/Å)")
        ax.set_ylabel("predicted force component (kcal/mol/Å)")
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / "forces_parity.png"))

    fig = _figure(max(4.0, 1.6 + 1.2 * len(labels)), 4.0)
    ax = fig.subplots()
    metrics = [("energy_rmse", "E"), ("delta_e_rmse", "ΔE"), ("force_rmse", "F")]
    bars = [
        (
            label,
            colour,
            [result.groups[label]["summary"][k]["mean"] for k, _ in metrics],
            [result.groups[label]["summary"][k]["std"] for k, _ in metrics],
        )
        for label, colour in zip(labels, colours, strict=True)
    ]
    _bar_groups(ax, [name for _, name in metrics], bars, "kcal/mol, kcal/mol/Å")
    ax.legend(fontsize=7)
    ax.set_title(f"{result.test.path.name} (error bars: std over members)", fontsize=9)
    written.append(_save(fig, out_dir / "errors.png"))
    return written


def _diagonal(ax) -> None:
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.6)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)


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
    "plot",
    "predict_model_file",
    "run_groups",
    "score_models",
    "write_json",
]
