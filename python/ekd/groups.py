"""The words for the models of a run, in one place.

* A **member** is one trained model. A **group** is a set of members trained the same way; each
  group has a **name** (``teacher``, ``student_gen2``, ``control@n2_l0``, ...) and a **role**.
* A **role** says how a group's members are trained: ``teacher`` (reference energies and forces),
  ``student`` (reference energies, an ensemble's force labels), ``control`` (reference energies
  only), ``baseline`` (reference energies and forces, student architecture). Groups of the same
  role differ by generation, architecture variant or study.
* **Labels** are the distillation targets: the force labels an ensemble of a group writes for the
  next generation. A group's name is never called its label in new code (``Group.label`` of
  :mod:`ekd.workflow` is the group's name, kept for its many users).

Stored keys keep their historical spelling, so that every existing run directory, digest and
``metrics.json`` stays valid: ``metrics["roles"]`` is a dict keyed by **group name**, ``md.roles`` /
``--roles`` list **group names**, a ``metrics.json`` group entry's ``"role"`` is its role.

Group names are made here, and parsed here, only.
"""

from __future__ import annotations

import re

TEACHER = "teacher"
STUDENT = "student"
CONTROL = "control"
BASELINE = "baseline"
#: every role, in report order
ROLES: tuple[str, ...] = (TEACHER, STUDENT, CONTROL, BASELINE)

#: the students of an external (not trained here) teacher ensemble
STUDENT_EXTERNAL = "student_external"

_GENERATION = re.compile(r"gen(\d+)$")
_MAIN_GROUP = re.compile(rf"({TEACHER}|{CONTROL}|{BASELINE}|{STUDENT}_gen[1-9][0-9]*)")


def student_group(generation: int) -> str:
    """The name of the main students of ``generation`` (1, 2, ...): ``student_gen<generation>``."""
    return f"{STUDENT}_gen{int(generation)}"


def variant_group(main: str, variant: str) -> str:
    """The name of group ``main`` (``student_gen1``, ``control``) trained with the student
    architecture ``variant`` of ``ensemble.student_variants`` (the capacity study)."""
    return f"{main}@{variant}"


def teacher_subset_group(k: int) -> str:
    """The name of the students taught by the first ``k`` teachers (the ensemble-size study)."""
    return f"{STUDENT}_k{int(k)}"


def is_main_group(name: str) -> bool:
    """Whether ``name`` is one of the main groups a configuration may have (teacher, student_gen<g>,
    control, baseline), as opposed to a study's group or a misspelling."""
    return _MAIN_GROUP.fullmatch(name) is not None


def generation_of(name: str, default: int = 0) -> int:
    """The generation a group name ends with (``student_gen2`` -> 2), else ``default``."""
    m = _GENERATION.search(name)
    return int(m.group(1)) if m else int(default)


__all__ = [
    "BASELINE",
    "CONTROL",
    "ROLES",
    "STUDENT",
    "STUDENT_EXTERNAL",
    "TEACHER",
    "generation_of",
    "is_main_group",
    "student_group",
    "teacher_subset_group",
    "variant_group",
]
