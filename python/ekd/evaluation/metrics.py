"""Scores of trained members on a test set: energy, conformer energy difference (ΔE) and force errors.

Everything here works on numpy arrays and plain dicts (no model code): the workflow predicts, this
module scores. Units are ekd's internal ones: kcal/mol for energies, kcal/mol/Å for forces.

Shapes (n configurations padded to A atoms, k members)::

    pred_energy, ref_energy   (n,)       kcal/mol; NaN in ``ref_energy`` = unknown, masked
    molecule                  (n,)       int, identity of the molecule (file group) of each configuration
    species                   (n, A)     int, atomic numbers, 0 in padding
    pred_forces, ref_forces   (n, A, 3)  kcal/mol/Å; NaN in ``ref_forces`` = unknown, masked per atom
    predictions["energy"]     (k, n)     one row per member
    predictions["forces"]     (k, n, A, 3) or None

``metrics.json`` schema (written by :func:`write_metrics`, read by :func:`load_metrics`)::

    {
      "schema": "ekd.metrics/1",
      "config": {...},                       # the effective configuration (Config.to_dict())
      "sets": {                              # the test sets scored, e.g. test_pool and test_split
        "<set>": {"description": str, "n_configurations": int, "n_molecules": int}
      },
      "roles": {                             # (historical key) one entry per group of members (a row of
        "<group name>": {                    # the report): teacher, student_gen1, control, ... (ekd.groups)
          "role": str,                       # teacher | student | control | baseline
          "generation": int,                 # 0 for teachers, 1.. for students/controls/baseline
          "n_members": int,
          "<set>": {                         # evaluate_group(...) of this group on this set
            "members":  [score, ...],        # one score per member, in member order
            "summary":  {"<metric>": {"mean": float|null, "std": float|null, "n": int}},
            "ensemble": score,               # score of the mean prediction of the members
            "calibration": calibration(...)  # only groups with an uncertainty head (issue 28)
          }
        }
      }
    }

    score = {
      "energy_rmse", "energy_mae",           # kcal/mol, over configurations with a finite reference
      "delta_e_rmse", "delta_e_mae",         # kcal/mol, over conformer pairs (see score())
      "force_rmse", "force_mae",             # kcal/mol/Å per Cartesian component, real atoms only
      "n_configurations", "n_molecules", "n_pairs", "n_window_excluded",
      "n_atoms", "n_nonfinite_predictions"   # counts (ints)
    }

A metric that cannot be computed (no reference forces, no molecule with two conformers, ...) is
``null``; so is a non-finite one (a member that predicted NaN), which ``n_nonfinite_predictions``
then shows. The file is strict JSON (no NaN literals) so that any JSON tool can read it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..store import atomic_write

SCHEMA = "ekd.metrics/1"

#: the error metrics of a score, in report order (all others in a score are counts)
METRICS: tuple[str, ...] = (
    "energy_rmse",
    "energy_mae",
    "delta_e_rmse",
    "delta_e_mae",
    "force_rmse",
    "force_mae",
)
COUNTS: tuple[str, ...] = (
    "n_configurations",
    "n_molecules",
    "n_pairs",
    "n_window_excluded",
    "n_atoms",
    "n_nonfinite_predictions",
)


class MetricsFileError(ValueError):
    """A metrics.json that does not follow the schema above."""


# ------------------------------------------------------------------------------------------
# one member (or one ensembled prediction)


def _as_array(x, name: str, ndim: int, dtype=np.float64) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def _rmse_mae(err: np.ndarray) -> tuple[float | None, float | None]:
    if err.size == 0:
        return None, None
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


def conformer_pair_errors(
    pred_energy: np.ndarray, ref_energy: np.ndarray, molecule: np.ndarray, window: float = 100.0
) -> dict:
    """Sums of squared and absolute ΔE errors over all conformer pairs of the same molecule.

    For a pair (i, j) of conformers of one molecule the error is
    ``(pred_i - pred_j) - (ref_i - ref_j) = d_i - d_j`` with ``d = pred - ref``. Conformers whose
    reference energy is unknown (NaN) or more than ``window`` kcal/mol above their molecule's lowest
    reference energy are left out first.

    The pairs are never materialised (a molecule of ANI-1x has up to thousands of conformers, i.e.
    millions of pairs): per molecule with c conformers and centred errors x = d - mean(d),
    ``sum_{i<j} (d_i - d_j)^2 = c * sum_i x_i^2`` and, with x sorted ascending,
    ``sum_{i<j} |d_i - d_j| = sum_k x_(k) * (2k - c + 1)``. O(n log n), no Python loop.

    Returns {"n_pairs", "sum_sq", "sum_abs", "n_window_excluded"} (sums in (kcal/mol)^2, kcal/mol).
    """
    ref = np.asarray(ref_energy, dtype=np.float64)
    known = np.isfinite(ref)
    ref = ref[known]
    d = np.asarray(pred_energy, dtype=np.float64)[known] - ref
    _, inv = np.unique(np.asarray(molecule)[known], return_inverse=True)
    n_mol = int(inv.max()) + 1 if inv.size else 0

    lowest = np.full(n_mol, np.inf)
    np.minimum.at(lowest, inv, ref)
    keep = ref - lowest[inv] <= window
    n_excluded = int((~keep).sum())
    inv, d = inv[keep], d[keep]

    c = np.bincount(inv, minlength=n_mol)
    n_pairs = int((c * (c - 1) // 2).sum())
    if n_pairs == 0:
        return {"n_pairs": 0, "sum_sq": 0.0, "sum_abs": 0.0, "n_window_excluded": n_excluded}
    # centring first: the closed forms subtract large equal terms otherwise
    mean = np.bincount(inv, weights=d, minlength=n_mol) / np.maximum(c, 1)
    x = d - mean[inv]
    sum_sq = float(np.sum(c[inv] * x**2))
    order = np.lexsort((x, inv))
    inv_s, x_s = inv[order], x[order]
    start = np.cumsum(c) - c
    rank = np.arange(inv_s.size) - start[inv_s]
    sum_abs = float(np.sum(x_s * (2 * rank - c[inv_s] + 1)))
    return {"n_pairs": n_pairs, "sum_sq": sum_sq, "sum_abs": sum_abs, "n_window_excluded": n_excluded}


def score(
    pred_energy,
    ref_energy,
    molecule,
    species,
    pred_forces=None,
    ref_forces=None,
    window: float = 100.0,
) -> dict:
    """Errors of one set of predictions against the reference (see the module docstring for shapes).

    - ``energy_rmse`` / ``energy_mae`` (kcal/mol): over configurations whose reference energy is
      finite. Every such configuration counts, however high it lies above its molecule's minimum.
    - ``delta_e_rmse`` / ``delta_e_mae`` (kcal/mol): conformer energy differences over all unordered
      pairs of conformers of the same molecule. As in the paper (Smith et al.), conformers more than
      ``window`` kcal/mol above that molecule's lowest *reference* energy are excluded from ΔE (not
      from the energy errors); a molecule with fewer than 2 remaining conformers contributes no pair.
    - ``force_rmse`` / ``force_mae`` (kcal/mol/Å): per Cartesian component, over real atoms
      (species > 0) whose three reference components are finite. ``None`` without forces.
    - counts: ``n_configurations`` (energy-scored), ``n_molecules`` (among those), ``n_pairs``,
      ``n_window_excluded`` (conformers dropped from ΔE by the window), ``n_atoms`` (force-scored),
      ``n_nonfinite_predictions`` (non-finite predicted energies + force components where scored).

    Predictions are not masked: a NaN prediction makes the affected metrics NaN, which
    :func:`write_metrics` stores as null and ``n_nonfinite_predictions`` explains.
    """
    pe = _as_array(pred_energy, "pred_energy", 1)
    re = _as_array(ref_energy, "ref_energy", 1)
    mol = _as_array(molecule, "molecule", 1, dtype=None)
    sp = _as_array(species, "species", 2, dtype=None)
    n = re.shape[0]
    for name, arr in (("pred_energy", pe), ("molecule", mol)):
        if arr.shape != (n,):
            raise ValueError(f"`{name}` must have the shape of `ref_energy` ({n},), got {arr.shape}")
    if sp.shape[0] != n:
        raise ValueError(f"`species` must be {n} x A (one row per configuration), got {sp.shape}")
    if not window > 0:
        raise ValueError(f"`window` must be > 0 kcal/mol, got {window}")

    known = np.isfinite(re)
    out: dict = {}
    out["energy_rmse"], out["energy_mae"] = _rmse_mae(pe[known] - re[known])
    nonfinite = int((~np.isfinite(pe[known])).sum())

    pairs = conformer_pair_errors(pe, re, mol, window)
    if pairs["n_pairs"]:
        out["delta_e_rmse"] = math.sqrt(pairs["sum_sq"] / pairs["n_pairs"])
        out["delta_e_mae"] = pairs["sum_abs"] / pairs["n_pairs"]
    else:
        out["delta_e_rmse"] = out["delta_e_mae"] = None

    n_atoms = 0
    out["force_rmse"] = out["force_mae"] = None
    if pred_forces is not None and ref_forces is not None:
        pf = _as_array(pred_forces, "pred_forces", 3)
        rf = _as_array(ref_forces, "ref_forces", 3)
        want = (*sp.shape, 3)
        for name, arr in (("pred_forces", pf), ("ref_forces", rf)):
            if arr.shape != want:
                raise ValueError(f"`{name}` must be n x A x 3 = {want} (as `species`), got {arr.shape}")
        ok = (sp > 0) & np.isfinite(rf).all(axis=-1)
        n_atoms = int(ok.sum())
        out["force_rmse"], out["force_mae"] = _rmse_mae(pf[ok] - rf[ok])
        nonfinite += int((~np.isfinite(pf[ok])).sum())

    out.update(
        n_configurations=int(known.sum()),
        n_molecules=int(np.unique(mol[known]).size),
        n_pairs=pairs["n_pairs"],
        n_window_excluded=pairs["n_window_excluded"],
        n_atoms=n_atoms,
        n_nonfinite_predictions=nonfinite,
    )
    return out


# ------------------------------------------------------------------------------------------
# many members


def summarize(member_scores: Sequence[Mapping]) -> dict:
    """Mean and standard deviation of each metric across members.

    Returns ``{metric: {"mean", "std", "n"}}`` for every metric of :data:`METRICS`; ``n`` is the
    number of members with a finite value, and mean/std are over those (``None`` if there are none).
    The std is the population std (ddof=0): it describes the spread of *these* members, and stays
    defined (0) for a single member, where ddof=1 would be undefined.
    """
    if not member_scores:
        raise ValueError("summarize: no member scores given")
    out = {}
    for key in METRICS:
        vals = np.array(
            [s.get(key) for s in member_scores if s.get(key) is not None and math.isfinite(s[key])],
            dtype=np.float64,
        )
        if vals.size:
            out[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=0)), "n": int(vals.size)}
        else:
            out[key] = {"mean": None, "std": None, "n": 0}
    return out


def evaluate_group(predictions: Mapping, reference: Mapping, window: float = 100.0) -> dict:
    """Scores of every member of a group, their summary, and the score of the ensembled prediction.

    predictions: {"energy": (k, n), "forces": (k, n, A, 3) or None} — one row per member.
    reference: {"energy": (n,), "forces": (n, A, 3) or None, "molecule": (n,), "species": (n, A)}.
    The ensembled prediction is the mean over members of energies and of forces (Eq. 3 of the
    paper for forces). Force metrics are ``None`` when either side has no forces.

    Returns {"members": [score, ...], "summary": summarize(members), "ensemble": score}.
    """
    energy = _as_array(predictions["energy"], 'predictions["energy"]', 2)
    k = energy.shape[0]
    if k == 0:
        raise ValueError('predictions["energy"] must have at least one member (row), got shape (0, ...)')
    forces = predictions.get("forces")
    if forces is not None:
        forces = _as_array(forces, 'predictions["forces"]', 4)
        if forces.shape[0] != k:
            raise ValueError(f'predictions["forces"] must have {k} members like the energies, got {forces.shape}')
    ref_forces = reference.get("forces")
    if ref_forces is None:
        forces = None  # nothing to score them against

    def one(e, f):
        return score(e, reference["energy"], reference["molecule"], reference["species"], f, ref_forces, window)

    members = [one(energy[i], None if forces is None else forces[i]) for i in range(k)]
    ensemble = one(energy.mean(axis=0), None if forces is None else forces.mean(axis=0))
    return {"members": members, "summary": summarize(members), "ensemble": ensemble}


#: the former name of :func:`evaluate_group` (it scores a group, whatever its role)
evaluate_role = evaluate_group

# ------------------------------------------------------------------------------------------
# calibration of predicted uncertainty (students with an uncertainty head, issue 28)

#: the calibration numbers of one member, in report order (Spearman rho; "_max": per configuration,
#: the largest value over its atoms)
CALIBRATION: tuple[str, ...] = (
    "rho_teachers",  # predicted sigma_i vs the teachers' sigma_i, over atoms
    "rho_error",  # predicted sigma_i vs the member's own |F_i - F_ref,i|, over atoms
    "rho_teachers_max",
    "rho_error_max",
)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation of two 1-d arrays (ties get their mean rank); None for fewer
    than 3 points or a constant array (no ranking to compare)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: arrays of different sizes {x.shape} and {y.shape}")
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rx, ry = _ranks(x), _ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(v.size, dtype=np.float64)
    # ties: every member of a group of equal values gets the group's mean rank
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def calibration(
    pred_sigma: np.ndarray,
    member_forces: np.ndarray,
    teacher_forces: np.ndarray | None,
    ref_forces: np.ndarray | None,
    species: np.ndarray,
) -> dict:
    """How well a group's predicted per-atom uncertainty ranks atoms and configurations.

    pred_sigma (k, n, A): each member's predicted teachers' force spread (kcal/mol/Å);
    member_forces (k, n, A, 3): the members' forces; teacher_forces (t, n, A, 3): the teaching
    ensemble's members' forces on the same configurations (None: not known, e.g. an external
    teacher), whose spread sigma_i = sqrt(mean_t |F_t,i - <F>_i|^2) is what the head learnt;
    ref_forces (n, A, 3): the reference forces (NaN unknown; None: none). Atoms: real ones (with
    a known reference for the error correlations).

    Returns {"members": [{CALIBRATION key: rho or None}, ...], "summary": {key: {mean, std, n}},
    "teachers": {"rho_error", "rho_error_max"}}: the last is the teacher ensemble's own sigma
    against the error of its mean, the number a student's "rho_error" is measured against.
    """
    sig = _as_array(pred_sigma, "pred_sigma", 3)
    real = np.asarray(species) > 0
    t_sigma = None
    teachers: dict = {"rho_error": None, "rho_error_max": None}
    if teacher_forces is not None:
        tf = _as_array(teacher_forces, "teacher_forces", 4)
        t_mean = tf.mean(axis=0)
        t_sigma = np.sqrt(((tf - t_mean) ** 2).sum(-1).mean(0))
    known = real.copy()
    if ref_forces is not None:
        ref = _as_array(ref_forces, "ref_forces", 3)
        known &= np.isfinite(ref).all(-1)
        if t_sigma is not None:
            teachers = _rhos(t_sigma, np.linalg.norm(t_mean - ref, axis=-1), known, "rho_error")
    members = []
    for i in range(sig.shape[0]):
        row = dict.fromkeys(CALIBRATION)
        if t_sigma is not None:
            row.update(_rhos(sig[i], t_sigma, real, "rho_teachers"))
        if ref_forces is not None:
            row.update(_rhos(sig[i], np.linalg.norm(member_forces[i] - ref, axis=-1), known, "rho_error"))
        members.append(row)
    summary = {}
    for key in CALIBRATION:
        vals = np.array([m[key] for m in members if m[key] is not None], dtype=np.float64)
        summary[key] = (
            {"mean": float(vals.mean()), "std": float(vals.std(ddof=0)), "n": int(vals.size)}
            if vals.size
            else {"mean": None, "std": None, "n": 0}
        )
    return {"members": members, "summary": summary, "teachers": teachers}


def _rhos(a: np.ndarray, b: np.ndarray, mask: np.ndarray, key: str) -> dict:
    """{key: rho over the atoms of ``mask``, key_max: rho over configurations of their largest
    value over those atoms} (configurations without such an atom left out)."""
    rows = mask.any(axis=1)
    a_max = np.where(mask, a, -np.inf).max(axis=1)[rows]
    b_max = np.where(mask, b, -np.inf).max(axis=1)[rows]
    return {key: spearman(a[mask], b[mask]), key + "_max": spearman(a_max, b_max)}


# ------------------------------------------------------------------------------------------
# metrics.json


def plain_json(obj, where: str = "metrics"):
    """numpy -> Python; non-finite floats -> None (strict JSON). ``where`` names the place in errors."""
    if isinstance(obj, Mapping):
        return {str(k): plain_json(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return plain_json(obj.tolist(), where)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in metrics.json")


def _check_schema(metrics, source: str) -> None:
    if not isinstance(metrics, Mapping):
        raise MetricsFileError(f"{source}: expected a JSON object at the top level, got {type(metrics).__name__}")
    missing = [k for k in ("config", "sets", "roles") if k not in metrics]
    if missing:
        raise MetricsFileError(f"{source}: missing top-level key(s) {missing}; expected config, sets, roles")
    schema = metrics.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise MetricsFileError(f"{source}: schema {schema!r} is not the supported {SCHEMA!r}")
    for label, entry in metrics["roles"].items():
        for key in ("role", "generation", "n_members"):
            if key not in entry:
                raise MetricsFileError(f"{source}: roles.{label} has no {key!r}")
        for name in entry:
            if name in metrics["sets"]:
                for part in ("members", "summary", "ensemble"):
                    if part not in entry[name]:
                        raise MetricsFileError(f"{source}: roles.{label}.{name} has no {part!r}")


def write_metrics(path: str | os.PathLike, metrics: Mapping) -> Path:
    """Write ``metrics`` (schema in the module docstring) as strict JSON, atomically.

    numpy arrays and scalars become lists and numbers; NaN/inf become null. The file appears
    complete or not at all (temp file in the same directory, then rename).
    """
    path = Path(path)
    doc = {"schema": SCHEMA, **plain_json(metrics)}
    _check_schema(doc, str(path))
    text = json.dumps(doc, indent=1, allow_nan=False)
    return atomic_write(path, text + "\n")


def load_metrics(path: str | os.PathLike) -> dict:
    """Read a metrics.json written by :func:`write_metrics`; a clear error if it is not one."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetricsFileError(f"metrics file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise MetricsFileError(f"{path}: not valid JSON ({e})") from e
    _check_schema(metrics, str(path))
    return metrics


__all__ = [
    "COUNTS",
    "METRICS",
    "SCHEMA",
    "MetricsFileError",
    "conformer_pair_errors",
    "evaluate_group",
    "evaluate_role",
    "load_metrics",
    "plain_json",
    "score",
    "summarize",
    "write_metrics",
]
