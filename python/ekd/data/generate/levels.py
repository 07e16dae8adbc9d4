"""Labels of the levels of theory other than GFN2-xTB (which drives the sampling and is computed
with it) for given geometries; reuses what is known (a correction level reuses its base level)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

log = logging.getLogger("ekd.data.generate")


def label_levels(
    levels, numbers: np.ndarray, coordinates: np.ndarray, stats: dict, what: str, known: Mapping | None = None
) -> dict:
    """File-key -> array of every level but GFN2-xTB (which drives the sampling and is computed
    there) for ``coordinates`` (n_conf, n, 3); NaN where a calculation failed (counted in
    ``stats["label_failures"]``; the data layer masks NaN). ``known``: file-key -> array already
    computed for these coordinates; levels found there are not recomputed (nor returned), and a
    level that corrects another (``labels.CORRECTS``) reuses the other's energies."""
    from ..labels import CORRECTS, LEVELS, XTB, LabelError, label

    known = dict(known or {})
    todo = [lv for lv in levels if lv != XTB and f"{lv}.energy" not in known]
    # base levels before the levels that correct them
    todo.sort(key=lambda lv: lv in CORRECTS)
    properties = {}
    for level in todo:
        base = CORRECTS.get(level)
        base_energy = known.get(f"{base}.energy", properties.get(f"{base}.energy")) if base else None
        e_arr = np.full(len(coordinates), np.nan)
        f_arr = np.full(coordinates.shape, np.nan)
        for i, pos in enumerate(coordinates):
            given = {base: float(base_energy[i])} if base_energy is not None else {}
            if given and not np.isfinite(given[base]):  # the base level failed here: so does this one
                stats["label_failures"] = stats.get("label_failures", 0) + 1
                continue
            try:
                energy, forces = label(level, numbers, pos, given)
            except LabelError as e:
                log.warning("%s configuration %d: %s", what, i, e)
                stats["label_failures"] = stats.get("label_failures", 0) + 1
                continue
            e_arr[i] = energy
            if forces is not None:
                f_arr[i] = forces
        properties[f"{level}.energy"] = e_arr
        if LEVELS[level]:
            properties[f"{level}.forces"] = f_arr
    return properties


def xtb_sample(xtb, numbers: np.ndarray, pos: np.ndarray, bonds: np.ndarray, reference: float, cap: float, stats: dict):
    """GFN2-xTB (energy Hartree, forces Hartree/Angstrom) of a sampled geometry ``pos``, or None
    when the sample is rejected -- two atoms closer than 0.5 Angstrom, a bond graph other than
    ``bonds``, a failed calculation, or an energy more than ``cap`` above ``reference`` (Hartree) -- which is counted
    in ``stats["samples_rejected"]``."""
    from ..labels import LabelError
    from ..molecules import connectivity, min_distance

    result = None
    if min_distance(pos) >= 0.5 and np.array_equal(connectivity(numbers, pos), bonds):
        try:
            energy, forces = xtb(pos)
        except LabelError:
            pass
        else:
            if not energy - reference > cap:
                result = energy, forces
    if result is None:
        stats["samples_rejected"] += 1
    return result


def xtb_record(task, numbers, coords, energies, forces, n_relaxed: int, levels, stats: dict, t0: float, what: str):
    """The record of a group whose GFN2-xTB configurations are ``coords`` / ``energies`` /
    ``forces`` (lists, one entry per configuration), with the other ``levels`` labelled here."""
    from ..labels import XTB
    from .record import finish

    coordinates = np.stack(coords)
    properties = {f"{XTB}.energy": np.array(energies), f"{XTB}.forces": np.stack(forces)}
    properties.update(label_levels(levels, numbers, coordinates, stats, what))
    return finish(task, numbers, coordinates, properties, n_relaxed, stats, t0, levels)
