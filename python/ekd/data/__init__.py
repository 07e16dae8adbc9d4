"""Data layer: ANI-layout HDF5 files <-> ekd Datasets (internal units) <-> hippynn Databases.

The reference-data generator lives in :mod:`ekd.data.generate` (it needs RDKit and tblite and is
imported on demand).
"""

from .ani import DataFileError, MoleculeGroup, read_ani, read_file_attrs, write_ani
from .dataset import (
    Dataset,
    DataUnitWarning,
    Units,
    check_plausible_units,
    from_groups,
    load_dataset,
    random_split,
    resolve_units,
)

__all__ = [
    "DataFileError",
    "DataUnitWarning",
    "Dataset",
    "MoleculeGroup",
    "Units",
    "check_plausible_units",
    "from_groups",
    "load_dataset",
    "random_split",
    "read_ani",
    "read_file_attrs",
    "resolve_units",
    "write_ani",
]
