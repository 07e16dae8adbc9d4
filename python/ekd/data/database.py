"""Hand a :class:`~ekd.data.dataset.Dataset` to hippynn as a Database with explicit splits.

hippynn's own ANI readers are not used: ``PyAniFileDB`` crashed on small first groups and kept
NaN energies on these machines (see the project notes); ekd reads, converts and masks itself and
gives hippynn plain padded arrays:

* ``species`` (n, A) int64, ``coordinates`` (n, A, 3) float (Angstrom)
* per-configuration targets as (n, 1), per-atom targets as (n, A, 3), in kcal/mol(/Angstrom)
* ``indices``: the configuration's index in the Dataset, so predictions map back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .dataset import Dataset


def database_arrays(dataset: Dataset, targets: Sequence[str], dtype=torch.float32) -> dict[str, torch.Tensor]:
    """The padded arrays hippynn consumes; every target must be known for every configuration."""
    arrays = {
        "species": torch.as_tensor(dataset.species, dtype=torch.int64),
        "coordinates": torch.as_tensor(dataset.coordinates, dtype=dtype),
        "indices": torch.arange(len(dataset), dtype=torch.int64),
    }
    for name in targets:
        known = dataset.mask(name)
        if not known.all():
            raise ValueError(
                f"target {name!r} is missing (NaN) for {int((~known).sum())} of {len(dataset)} configurations "
                f"of {dataset.source or 'the dataset'}; select them out with Dataset.require({name!r}) first"
            )
        arr = dataset.properties[name]
        arr = arr[:, None] if arr.ndim == 1 else arr
        arrays[name] = torch.as_tensor(arr, dtype=dtype)
    return arrays


def to_database(
    dataset: Dataset,
    targets: Sequence[str],
    splits: Mapping[str, np.ndarray],
    seed: int = 0,
    dtype=torch.float32,
    device: torch.device | str | None = None,
):
    """A hippynn ``Database`` whose splits are exactly ``splits`` (name -> dataset indices).

    Configurations in no split are left out. ``splits`` must hold "train", "valid" and "test",
    non-empty and disjoint.
    """
    from hippynn.databases import Database

    for name in ("train", "valid", "test"):
        if name not in splits or len(splits[name]) == 0:
            raise ValueError(f"splits: {name!r} must be given and non-empty, got {len(splits.get(name, []))} entries")
    used = np.concatenate([np.asarray(v, dtype=np.int64) for v in splits.values()])
    if len(np.unique(used)) != len(used):
        raise ValueError("splits: a configuration appears in more than one split")
    if used.min() < 0 or used.max() >= len(dataset):
        raise ValueError(f"splits: indices must lie in [0, {len(dataset)}), got {used.min()}..{used.max()}")
    order = np.sort(used)
    arrays = database_arrays(dataset.subset(order), targets, dtype)
    arrays["indices"] = torch.as_tensor(order, dtype=torch.int64)
    db = Database(
        arrays,
        inputs=["species", "coordinates"],
        targets=list(targets),
        seed=seed,
        pin_memory=False,
        quiet=True,
    )
    names = list(splits)
    for name in names[:-1]:
        db.make_explicit_split(name, torch.as_tensor(np.sort(splits[name]), dtype=torch.int64))
    db.split_the_rest(names[-1])
    if device is not None:
        db.send_to_device(torch.device(device))
    return db
