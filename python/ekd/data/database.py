"""A :class:`~ekd.data.dataset.Dataset` as the padded arrays hippynn's graph consumes (the batches
of :mod:`ekd.training.train`).

hippynn's own ANI readers are not used: ``PyAniFileDB`` crashed when the first group had fewer
than 7 atoms and kept NaN energies; ekd reads, converts and masks itself and gives hippynn plain
padded arrays:

* ``species`` (n, A) int64, ``coordinates`` (n, A, 3) float (Angstrom)
* per-configuration targets as (n, 1), per-atom targets as (n, A, 3), in kcal/mol(/Angstrom)
* ``indices``: the configuration's index in the Dataset, so predictions map back.
"""

from __future__ import annotations

from collections.abc import Sequence

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
