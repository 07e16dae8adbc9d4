"""The generator's output files: the parts of a pool assembled (atomically) into one ANI-layout
HDF5 file with the wanted levels only and attributes recording options, units and tool versions;
:func:`summarize` describes such a file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..ani import MoleculeGroup, read_file_attrs, write_ani
from ..dataset import load_dataset
from .options import GenerateError, GenerateOptions, wanted_levels
from .parts import load_part, part_path
from .selection import MoleculeTask

log = logging.getLogger("ekd.data.generate")


def versions(levels: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Versions of the tools that made the data."""
    from importlib.metadata import PackageNotFoundError, version

    import rdkit

    from ... import __version__

    out = {"ekd": __version__, "rdkit": rdkit.__version__}
    for package in ("tblite", "numpy", "ase") + (("pyscf",) if any(lv != "gfn2_xtb" for lv in levels) else ()):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def assemble(
    path: Path, pool: str, tasks: list[MoleculeTask], parts: Path, options: GenerateOptions, accepted: set[str]
) -> None:
    """Write ``path`` from the parts of ``tasks`` (one ``pool``): groups in task order, skipped
    molecules recorded in the file's attributes; error if no molecule produced a configuration."""
    options_hash = options.content_hash()
    levels = wanted_levels(options, pool)
    groups, skipped = [], {}
    keys: list[str] = []
    for task in tasks:
        part = load_part(part_path(parts, task), task, accepted)
        if part.coordinates.shape[0] == 0:
            skipped[task.name] = part.stats.get("skipped", "no configuration")
            continue
        # the wanted levels only (a part may hold more, from an earlier run)
        properties = {k: v for k, v in part.properties.items() if k.rsplit(".", 1)[0] in levels}
        keys = keys or list(properties)
        groups.append(
            MoleculeGroup(
                task.name,
                part.numbers,
                part.coordinates,
                properties,
                {
                    "smiles": task.smiles,
                    "nci_id": task.nci_id,
                    "formula": task.formula,
                    "heavy_atoms": task.heavy_atoms,
                    "n_relaxed": part.n_relaxed,
                    **({"cluster_molecules": task.index} if task.kind == "cluster" else {}),
                    # a scan: its dihedral (atom indices, the k side rotated), settings, measured angles
                    **(
                        {"dihedral": list(task.dihedral), "scan": task.scan, "scan_deg": part.stats["scan_deg"]}
                        if task.kind == "torsion"
                        else {}
                    ),
                },
            )
        )
    if skipped:
        log.warning("generate: %s pool skipped %d molecule(s): %s", pool, len(skipped), skipped)
    if not groups:
        raise GenerateError(f"{pool} pool: no molecule produced a configuration ({skipped})")
    n_conf = sum(g.n_conf for g in groups)
    tool_versions = versions(levels)
    attrs = {
        "energy_unit": "hartree",
        "length_unit": "angstrom",
        "generator": "ekd.data.generate",
        "pool": pool,
        "levels": json.dumps(list(levels)),
        "keys": json.dumps(keys),
        "options": json.dumps(options.to_dict(), sort_keys=True),
        "options_hash": options_hash,
        "n_molecules": len(groups),
        "n_configurations": n_conf,
        "skipped_molecules": json.dumps(skipped),
        "versions": json.dumps(tool_versions, sort_keys=True),
        **{f"{k}_version": v for k, v in tool_versions.items()},
    }
    write_ani(path, groups, attrs)
    log.info("generate: %s: %d configurations of %d molecules -> %s", pool, n_conf, len(groups), path)


def summarize(path: str | os.PathLike) -> str:
    """A few lines about a generated file: sizes, elements, per-key statistics (kcal/mol)."""
    attrs = read_file_attrs(path)
    keys = json.loads(str(attrs.get("keys", "[]"))) or ["gfn2_xtb.energy", "gfn2_xtb.forces"]
    dataset = load_dataset(path, {k: k for k in keys})
    levels = ", ".join(json.loads(str(attrs.get("levels", "[]"))))
    head = [f"{path}: pool {attrs.get('pool', '?')}, levels {levels}"]
    skipped = json.loads(str(attrs.get("skipped_molecules", "{}")))
    if skipped:
        head.append(f"  skipped molecules: {len(skipped)} ({', '.join(skipped)})")
    return "\n".join([*head, dataset.summary()])
