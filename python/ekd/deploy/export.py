"""``ekd export``: a trained ekd member -> one self-describing model file (format and trust rule:
:mod:`ekd.deploy.model_file`), run by the ASE calculator (:mod:`ekd.deploy.calculator`) and by LAMMPS
(``pair_style ekd``) alike. Does not import torch at import time.
"""

from __future__ import annotations

from pathlib import Path

from .model_file import save_model

__all__ = ["export_member"]


def export_member(member_dir: str | Path, path: str | Path, dtype: str = "float32", envsum: str = "auto"):
    """``ekd export``: a trained ekd member (any role) -> one self-describing TorchScript file.

    The hippynn network is re-expressed as a scriptable module (:mod:`ekd.scripted`, proven equal
    to the hippynn model in its tests) and saved with :func:`save_model` (format ekd-model-2, kind
    "hipnn", or "hipnn-torch" for envsum "torch"). Returns the metadata.
    """
    import torch

    from ..scripted import metadata, script_member

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
    module = script_member(Path(member_dir), dtype=dtypes[dtype], envsum=envsum)
    return save_model(module, path, metadata(Path(member_dir), module))
