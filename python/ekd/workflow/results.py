"""What a run does with its trained members: predictions on the test sets (cached), the
evaluation (``metrics.json``), and the MD stability sweep of their exported model files.

Functions of a :class:`ekd.workflow.Run` (its methods of the same names call them).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import store
from ..data import Dataset
from .common import run_digest
from .inputs import check_test_elements, load_test_pool, load_torsion
from .plan import Group


def test_sets(run) -> dict[str, tuple[Dataset, str]]:
    sets = {
        "test_split": (
            run.train_data.subset(run.splits["test"]),
            "in-distribution test split of the training pool (never trained on)",
        )
    }
    pool = load_test_pool(run.cfg, run.paths)
    if pool is not None:
        sets["test_pool"] = (pool, f"out-of-sample pool ({run.paths.test.name})")
    scans = load_torsion(run.cfg, run.paths)
    if scans is not None:
        check_test_elements(run.train_data, scans, run.paths.torsion)
        # one molecule group per scan: ΔE over the pairs of points of each scan
        sets["test_torsion"] = (scans, f"out-of-sample torsion scans ({run.paths.torsion.name}, GFN2-xTB)")
    return sets


def predictions(run, group: Group, m: int, name: str, data: Dataset) -> dict[str, np.ndarray]:
    """A member's predictions on a test set, cached next to the member."""
    from ..training.train import load_member

    path = run.member_dir(group, m) / f"predictions_{name}.npz"
    content = store.bytes_digest(data.coordinates.tobytes(), data.species.tobytes())
    digest = run_digest([run.member_digest(group, m), name, content])
    if path.exists():
        with np.load(path) as z:
            if str(z["digest"]) == digest:
                return {"energy": z["energy"], "forces": z["forces"]}
    energy, forces = load_member(run.member_dir(group, m), run.device).predict(data, forces=True)
    store.atomic_write(path, lambda tmp: np.savez(tmp, energy=energy, forces=forces, digest=np.array(digest)))
    return {"energy": energy, "forces": forces}


def sigma_predictions(run, group: Group, m: int, name: str, data: Dataset) -> np.ndarray:
    """A member's predicted teachers' force spread (n, A) kcal/mol/A on a test set (its uncertainty
    head), cached next to the member like :func:`predictions`."""
    from ..training.train import load_member

    path = run.member_dir(group, m) / f"sigma_{name}.npz"
    content = store.bytes_digest(data.coordinates.tobytes(), data.species.tobytes())
    digest = run_digest([run.member_digest(group, m), name, content, "sigma"])
    if path.exists():
        with np.load(path) as z:
            if str(z["digest"]) == digest:
                return z["sigma"]
    sigma = load_member(run.member_dir(group, m), run.device).predict_sigma(data)
    store.atomic_write(path, lambda tmp: np.savez(tmp, sigma=sigma, digest=np.array(digest)))
    return sigma


def _calibration(run, group: Group, name: str, data: Dataset, preds: list[dict]) -> dict:
    """metrics.calibration of ``group`` (members with an uncertainty head) on one test set, against
    its teaching ensemble's spread (trained here; None for an external teacher)."""
    from ..evaluation.metrics import calibration

    sigma = np.stack([sigma_predictions(run, group, m, name, data) for m in range(group.n_members)])
    teacher_forces = None
    teaching = next((g for g in run.groups() if g.label == group.labels_from), None)
    if teaching is not None:
        n = group.teacher_members or teaching.n_members
        teacher_forces = np.stack([predictions(run, teaching, m, name, data)["forces"] for m in range(n)])
    return calibration(
        sigma,
        np.stack([p["forces"] for p in preds]),
        teacher_forces,
        data.properties.get("reference_forces"),
        data.species,
    )


def evaluate(run) -> dict:
    from ..evaluation.metrics import evaluate_role, write_metrics

    sets = test_sets(run)
    metrics: dict = {"config": run.cfg.to_dict(), "sets": {}, "roles": {}}
    for name, (data, description) in sets.items():
        metrics["sets"][name] = {
            "description": description,
            "n_configurations": len(data),
            "n_molecules": int(len(np.unique(data.molecule))),
        }
    for group in run.groups():
        entry = {"role": group.role, "generation": group.generation, "n_members": group.n_members}
        if group.study:
            entry.update(study=group.study, variant=group.variant, teacher_members=group.teacher_members)
            if group.variant:
                entry["model"] = asdict(run.model_of(group))
        for name, (data, _) in sets.items():
            preds = [predictions(run, group, m, name, data) for m in range(group.n_members)]
            reference = {
                "energy": data.properties["energy"],
                "forces": data.properties.get("reference_forces"),
                "molecule": data.molecule,
                "species": data.species,
            }
            entry[name] = evaluate_role(
                {
                    "energy": np.stack([p["energy"] for p in preds]),
                    "forces": np.stack([p["forces"] for p in preds]),
                },
                reference,
                run.cfg.evaluate.conformer_window,
            )
            if run.has_sigma_head(group):
                entry[name]["calibration"] = _calibration(run, group, name, data, preds)
        metrics["roles"][group.label] = entry
    write_metrics(run.run_dir / "metrics.json", metrics)
    return metrics


def md_stability(run, metrics: dict | None = None, strict_roles: bool = False, progress: bool | None = None) -> dict:
    """The MD stability sweep of ``cfg.md`` over this run's members (resumable; see
    :mod:`ekd.md.stability`): the members of the groups ``md.roles`` names are exported to
    ``md/models/`` (once) and their files handed to :func:`ekd.md.stability.md_stability`. Its
    table joins ``metrics.json`` (key ``md_stability``, per engine) and its section the
    report, when the run has been evaluated. strict_roles: every name of ``md.roles`` must be
    a group of the run (see :func:`ekd.md.stability.select_roles`); progress: of the sweep
    (None: this run's)."""
    from ..evaluation.metrics import load_metrics, write_metrics
    from ..md.stability import md_stability as sweep
    from ..md.stability import select_roles

    md = run.cfg.md
    roles = select_roles(md.roles, [g.label for g in run.groups()], strict=strict_roles)
    models = export_models(run, roles, md.n_models, md.dtype, run.run_dir / "md")
    # members with an uncertainty head: their training configurations set their alarm threshold
    training = {
        role: [run.train_data.subset(run.splits[f"train_{m}"]) for m in range(len(paths))]
        for role, paths in models.items()
        if run.has_sigma_head(run.group(role))
    }
    progress = run.progress if progress is None else progress
    out = sweep(run.cfg, run.run_dir, models, progress=progress, training=training)
    path = run.run_dir / "metrics.json"
    if metrics is None and path.exists():
        metrics = load_metrics(path)
    if metrics is not None:
        entry = {
            "table": out["table"],
            "markdown": out["markdown"],
            "figure": str(Path(out["figure"]).relative_to(run.run_dir)),
            "md": asdict(run.cfg.md),
            **({"sigma_thresholds": out["sigma_thresholds"], "alarms": out["alarms"]} if out["alarms"] else {}),
        }
        metrics = {**metrics, "md_stability": {**metrics.get("md_stability", {}), run.cfg.md.engine: entry}}
        write_metrics(path, metrics)
        run.report(metrics)
    return out


def export_models(run, roles, n_models: int | None, dtype: str, out_dir: Path) -> dict[str, list[str]]:
    """{group name: exported model files} of the finished members of the groups ``roles`` of
    ``run`` (a :class:`Run`), exported to ``out_dir/models/`` once: an export is reused while the
    member's done.json and the model-file format are those it was made from."""
    from ..deploy.export import export_member
    from ..deploy.model_file import FORMAT

    models = {}
    for role in roles:
        group = run.group(role)
        n = group.n_members if n_models is None else min(n_models, group.n_members)
        paths = []
        for m in range(n):
            src = run.member_dir(group, m)
            if not (src / "done.json").exists():
                raise FileNotFoundError(f"md-stability: {role} member {m} ({src}) is not trained yet (no done.json)")
            dst = out_dir / "models" / f"{role}_m{m:02d}_{dtype}.pt"
            stamp = dst.with_suffix(".json")
            # the model-file format is part of the stamp: exports of an earlier format (which this
            # ekd would refuse to open untrusted) are redone, not handed to the MD engines
            want = {"source": store.file_digest(src / "done.json"), "format": FORMAT}
            if not (dst.exists() and stamp.exists() and json.loads(stamp.read_text()) == want):
                dst.parent.mkdir(parents=True, exist_ok=True)
                export_member(src, dst, dtype=dtype)
                store.atomic_text(stamp, json.dumps(want))
            paths.append(str(dst))
        models[role] = paths
    return models
