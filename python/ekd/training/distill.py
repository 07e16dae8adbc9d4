"""Ensemble knowledge distillation: label configurations with an ensemble's forces.

Every member predicts forces -dE/dR by autograd; their mean over members (Eq. 3 of the paper)
becomes the students' force target and the per-atom, per-component standard deviation over
members records the ensemble's disagreement. Both go into an augmented dataset in the same ANI
layout, next to the original energies, and into an extxyz copy for other trainers
(:func:`write_augmented_xyz`: MACE, NequIP/Allegro, SevenNet read it with their own options).
Generations are a loop in the caller: the students of generation g are the members of the
ensemble that labels generation g + 1.

The force-weight schedule of the students lives in :meth:`ekd.config.TrainConfig.force_weight`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import Dataset, Units

#: file keys of the augmented dataset
ENSEMBLE_FORCES_KEY = "ekd_ensemble.forces"
ENSEMBLE_FORCES_STD_KEY = "ekd_ensemble.forces_std"
#: extxyz keys of the augmented dataset (info: energy; arrays: the rest), in eV and eV/Angstrom as
#: MACE, NequIP and SevenNet expect; none is an ASE calculator property name (``energy``,
#: ``forces``), which ASE and NequIP would treat as the file's own results
XYZ_KEYS = {
    "energy": "ekd_energy",
    "ensemble_forces": "ekd_forces",
    "ensemble_forces_std": "ekd_forces_std",
    "reference_forces": "ekd_reference_forces",
}
XYZ_UNITS = {"energy_unit": "eV", "length_unit": "Angstrom"}


def ensemble_predict(members: Sequence, dataset: Dataset, forces: bool = True) -> dict[str, np.ndarray]:
    """Predictions of every member and their ensemble statistics (float64).

    members: objects with ``predict(dataset, forces)`` (see :class:`ekd.training.train.Member`).
    Returns "energy" (k, n) kcal/mol, "energy_mean" (n,) and, if ``forces``, "forces"
    (k, n, A, 3) kcal/mol/Angstrom, "forces_mean" (n, A, 3) (the mean over members, Eq. 3) and
    "forces_std" (n, A, 3) (population standard deviation over members, per atom and component;
    0 for a single member). Padding entries are 0.

    Raises ValueError naming the member and configuration if a member predicts NaN or inf.
    """
    if len(members) == 0:
        raise ValueError("ensemble_predict: no members given")
    energies, all_forces = [], []
    for k, member in enumerate(members):
        e, f = member.predict(dataset, forces=forces)
        e = np.asarray(e, dtype=np.float64)
        if e.shape != (len(dataset),):
            raise ValueError(f"member {k}: expected energies of shape ({len(dataset)},), got {e.shape}")
        bad = ~np.isfinite(e)
        if forces:
            f = np.asarray(f, dtype=np.float64)
            if f.shape != dataset.coordinates.shape:
                raise ValueError(f"member {k}: expected forces of shape {dataset.coordinates.shape}, got {f.shape}")
            bad |= ~np.isfinite(f).all(axis=(1, 2))
            all_forces.append(f)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"member {k} ({_describe(member)}) predicted a non-finite value for configuration {i} "
                f"(molecule {dataset.molecule_names[dataset.molecule[i]]!r}, "
                f"conformer {dataset.conformer[i]}) "
                f"of {dataset.source or 'the dataset'}; {int(bad.sum())} configuration(s) affected"
            )
        energies.append(e)
    out = {"energy": np.stack(energies), "energy_mean": np.mean(energies, axis=0)}
    if forces:
        stacked = np.stack(all_forces)
        out["forces"] = stacked
        out["forces_mean"] = stacked.mean(axis=0)
        out["forces_std"] = stacked.std(axis=0)
    return out


def _describe(member) -> str:
    directory = getattr(member, "directory", None)
    return str(directory) if directory is not None else type(member).__name__


def label_dataset(members: Sequence, dataset: Dataset) -> Dataset:
    """``dataset`` with properties "ensemble_forces" (mean over members) and
    "ensemble_forces_std" (their spread), both (n, A, 3) kcal/mol/Angstrom."""
    pred = ensemble_predict(members, dataset, forces=True)
    return dataset.with_properties(ensemble_forces=pred["forces_mean"], ensemble_forces_std=pred["forces_std"])


def check_labels_file(path: str | os.PathLike, n_configurations: int | None = None) -> None:
    """Read every array of a finished labels file (see :func:`write_augmented`) once, so that a
    truncated or damaged file is named before members train on it, with the fix: the file is
    remade from the teaching ensemble when it (and its ``.json`` record) is deleted.

    n_configurations: the number of configurations it must hold (the training pool's)."""
    import h5py

    from ..store import CorruptFileError

    path = Path(path)
    fix = f"delete it and {path.with_suffix('.json').name} next to it and run the same command again (it is remade)"
    count = 0
    try:
        with h5py.File(path, "r") as h5:

            def visit(name, item):
                nonlocal count
                if isinstance(item, h5py.Dataset):
                    item[()]
                    if name.endswith("/coordinates") or name == "coordinates":
                        count += item.shape[0]

            h5.visititems(visit)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise CorruptFileError(f"{path}: labels file is truncated or corrupt ({e}); {fix}") from None
    if n_configurations is not None and count != n_configurations:
        raise CorruptFileError(
            f"{path}: labels file holds {count} configurations, the training pool {n_configurations}; {fix}"
        )


def write_augmented(
    dataset: Dataset,
    path: str | os.PathLike,
    energy_key: str,
    units: Units | None = None,
    reference_forces_key: str | None = None,
):
    """Write a labelled dataset in the ANI layout (atomically, via :meth:`Dataset.save`).

    Keys written: the original energies ("energy" property) under ``energy_key``; the ensemble
    forces and their spread under ``ekd_ensemble.forces`` / ``ekd_ensemble.forces_std``; and the
    dataset's "reference_forces", if it has them, under ``reference_forces_key`` (default: the
    energy key with ``.energy`` replaced by ``.forces``, as in the ANI releases and ekd's
    generated data; not written if the energy key does not end in ``.energy``).
    units: the file's units (default Hartree and Angstrom, as in the ANI releases); energies and
        forces are converted from ekd's internal ones.
    """
    units = Units() if units is None else units
    _check_labelled(dataset, "write_augmented")
    keys = labels_file_keys(energy_key, reference_forces_key, "reference_forces" in dataset.properties)
    return dataset.save(path, keys, units)


def _check_labelled(dataset: Dataset, who: str) -> None:
    for name in ("energy", "ensemble_forces", "ensemble_forces_std"):
        if name not in dataset.properties:
            raise ValueError(
                f"{who}: the dataset has no {name!r} property (has {sorted(dataset.properties)}); "
                "label it with label_dataset first"
            )
        if name != "energy" and not dataset.mask(name).all():
            raise ValueError(f"{who}: {name!r} has NaN values; refusing to write them")


def labels_file_keys(
    energy_key: str, reference_forces_key: str | None = None, reference_forces: bool = True
) -> dict[str, str]:
    """{dataset property: file key} of a labels file (see :func:`write_augmented`)."""
    keys = {
        "energy": energy_key,
        "ensemble_forces": ENSEMBLE_FORCES_KEY,
        "ensemble_forces_std": ENSEMBLE_FORCES_STD_KEY,
    }
    if reference_forces:
        if reference_forces_key is None and energy_key.endswith(".energy"):
            reference_forces_key = energy_key[: -len(".energy")] + ".forces"
        if reference_forces_key is not None:
            keys["reference_forces"] = reference_forces_key
    if len(set(keys.values())) != len(keys):
        raise ValueError(f"write_augmented: file keys must be distinct, got {keys}")
    return keys


def write_augmented_xyz(dataset: Dataset, path: str | os.PathLike) -> Path:
    """A labelled dataset as extended XYZ for other trainers (atomically; read back and compared
    before it replaces ``path``: :func:`ekd.data.ase_files.write_extxyz`).

    One frame per configuration, molecules in the dataset's order. Keys (:data:`XYZ_KEYS`):
    info ``ekd_energy`` (the reference energy, eV); arrays ``ekd_forces`` (the ensemble-mean forces,
    eV/Angstrom), ``ekd_forces_std`` (their population standard deviation over members, per atom and
    Cartesian component, eV/Angstrom) and, when the dataset has them, ``ekd_reference_forces`` (the
    data's own forces, NaN where unknown); info ``molecule`` and ``conformer`` (the configuration's
    identity) and ``energy_unit="eV"``, ``length_unit="Angstrom"`` (what ekd reads back). No cell,
    ``pbc="F F F"``.
    """
    from ..data.ase_files import write_extxyz

    _check_labelled(dataset, "write_augmented_xyz")
    keys = {name: key for name, key in XYZ_KEYS.items() if name in dataset.properties}
    return write_extxyz(path, dataset.to_groups(keys, Units("ev", "angstrom")), XYZ_UNITS)
