"""Input checks and small pieces shared by ekd's scripted model classes (:mod:`ekd.scripted_hipnn`
and :class:`ekd.scripted.ScriptedToy`). TorchScript compiles what a class calls into the class's
code, so these functions are part of every kind's canonical code (``ekd/deploy/model_code``)."""

import contextlib
import warnings

import torch
from torch import Tensor, nn


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """nn.Linear's forward; an empty ``bias`` stands for none (a list[Tensor] cannot hold None)."""
    if bias.numel() == 0:
        return nn.functional.linear(x, weight)
    return nn.functional.linear(x, weight, bias)


def _check_pairs(n_atoms: int, pair_first: Tensor, pair_second: Tensor, r_ij: Tensor) -> None:
    _check_index(n_atoms, pair_first, pair_second)
    _check_vectors(r_ij)
    if r_ij.shape[0] != pair_first.shape[0]:
        raise ValueError(
            "r_ij: expected [P, 3] with P = " + str(pair_first.shape[0]) + ", got shape " + str(r_ij.shape)
        )


def _check_vectors(r_ij: Tensor) -> None:
    if r_ij.dim() != 2 or r_ij.shape[1] != 3:
        raise ValueError("r_ij: expected pair vectors [P, 3], got shape " + str(r_ij.shape))


def _check_geometry(
    n_atoms: int, pair_first: Tensor, pair_second: Tensor, geometry: list[Tensor], widths: list[int]
) -> None:
    """geometry: what the model's ``geometry(r_ij)`` returns for these pairs; widths[i] is the
    second dimension of entry i (0: a 1-d entry [P])."""
    _check_index(n_atoms, pair_first, pair_second)
    n_pairs = pair_first.shape[0]
    if len(geometry) != len(widths):
        raise ValueError(
            "geometry: expected the " + str(len(widths)) + " tensors of geometry(r_ij), got " + str(len(geometry))
        )
    for i in range(len(widths)):
        g = geometry[i]
        want = [n_pairs] if widths[i] == 0 else [n_pairs, widths[i]]
        if g.dim() != len(want) or g.shape[0] != n_pairs or (widths[i] > 0 and g.shape[1] != widths[i]):
            raise ValueError(
                "geometry["
                + str(i)
                + "]: expected shape "
                + str(want)
                + " (from geometry(r_ij) of the same pairs), got "
                + str(g.shape)
            )


def _check_index(n_atoms: int, pair_first: Tensor, pair_second: Tensor) -> None:
    n_pairs = pair_first.shape[0]
    if pair_first.dim() != 1 or pair_second.shape != pair_first.shape:
        raise ValueError(
            "pair_first, pair_second: expected two 1-d tensors of the same length [P], got shapes "
            + str(pair_first.shape)
            + " and "
            + str(pair_second.shape)
        )
    if n_pairs > 0:
        lo = int(torch.minimum(pair_first.min(), pair_second.min()))
        hi = int(torch.maximum(pair_first.max(), pair_second.max()))
        if lo < 0 or hi >= n_atoms:
            raise ValueError(
                "pair_first, pair_second: atom indices must lie in [0, "
                + str(n_atoms)
                + "), got "
                + str(lo)
                + ".."
                + str(hi)
            )


def _check_stage(k: int, n_interactions: int, z: Tensor, width: int) -> None:
    if k < 0 or k >= n_interactions:
        raise ValueError("interaction: k must lie in [0, " + str(n_interactions) + "), got " + str(k))
    if z.dim() != 2 or z.shape[1] != width:
        raise ValueError(
            "interaction " + str(k) + ": features must be [N, " + str(width) + "], got shape " + str(z.shape)
        )


def _check_rows(k: int, n_out: int, n_atoms: int) -> None:
    if n_out < -1 or n_out > n_atoms:
        raise ValueError(
            "interaction "
            + str(k)
            + ": n_out must be -1 (all rows) or lie in [0, "
            + str(n_atoms)
            + "] (the rows of z), got "
            + str(n_out)
        )


@contextlib.contextmanager
def _quiet_jit():
    # torch 2.13 deprecates torch.jit.script/save/load with a warning per call; TorchScript is
    # still what LAMMPS runs without Python
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*", category=DeprecationWarning)
        yield
