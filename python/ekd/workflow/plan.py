"""The plan of a run: its groups of members (teachers, students by generation, controls,
baseline, the studies' groups), each member's seed, and a one-paragraph description."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import store
from ..config import Config
from ..groups import (
    BASELINE,
    CONTROL,
    STUDENT,
    STUDENT_EXTERNAL,
    TEACHER,
    student_group,
    teacher_subset_group,
    variant_group,
)
from .common import run_digest


class UnknownGroupError(ValueError, KeyError):
    """A group name that the run's configuration does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


# ------------------------------------------------------------------------------------------
# groups (the words: ekd.groups)


@dataclass(frozen=True)
class Group:
    """A set of members trained the same way (one row of the report)."""

    label: str  # the group's name (teacher, student_gen1, control, ...); field name kept: digests use it
    role: str  # teacher, student, control or baseline
    generation: int
    n_members: int
    forces: str | None  # dataset property used as force target
    directory: str  # relative to the run dir
    labels_from: str | None = None  # name of the group whose ensemble made the force labels
    # the studies (docs/results.md): None for the main groups
    study: str | None = None  # "capacity", "teachers" (ensemble size) or "external"
    variant: str | None = None  # capacity: the ensemble.student_variants entry (student architecture)
    teacher_members: int | None = None  # teachers: labels from the first k members of labels_from

    def identity(self) -> dict:
        """The fields as a dict for digests; the study fields (added with the studies) only when
        set, so that the main groups keep the digests they had before the studies."""
        return store.without_added_defaults(asdict(self), STUDY_FIELDS)


#: Group fields that the studies added, with the value they have in a main group
STUDY_FIELDS = {"study": None, "variant": None, "teacher_members": None}


#: labels_from of the students of an external (not trained here) teacher ensemble
EXTERNAL = "external"


def plan(cfg: Config) -> list[Group]:
    """Every group of members of a run, in training order: the main groups (teachers, students by
    generation, controls, baseline), then the studies' groups (capacity variants, students of
    teacher subsets, students of an external teacher)."""
    e = cfg.ensemble
    groups = [Group(TEACHER, TEACHER, 0, e.n_teachers, None, "gen0/teacher")]
    previous = TEACHER
    for g in range(1, e.generations + 1):
        name = student_group(g)
        groups.append(Group(name, STUDENT, g, e.n_students, "ensemble_forces", f"gen{g}/student", previous))
        previous = name
    if e.controls:
        groups.append(Group(CONTROL, CONTROL, 1, e.n_students, None, "control"))
    if e.baseline and cfg.data.reference_forces_key:
        groups.append(Group(BASELINE, BASELINE, 1, e.n_students, "reference_forces", "baseline"))
    ns = e.study_members or e.n_students
    for name in e.student_variants:
        groups.append(
            Group(
                variant_group(student_group(1), name),
                STUDENT,
                1,
                ns,
                "ensemble_forces",
                f"variants/{name}/student",
                TEACHER,
                study="capacity",
                variant=name,
            )
        )
        if e.controls:
            groups.append(
                Group(
                    variant_group(CONTROL, name),
                    CONTROL,
                    1,
                    ns,
                    None,
                    f"variants/{name}/control",
                    study="capacity",
                    variant=name,
                )
            )
    for k in e.teacher_subsets:
        groups.append(
            Group(
                teacher_subset_group(k),
                STUDENT,
                1,
                ns,
                "ensemble_forces",
                f"teachers_k{k}/student",
                TEACHER,
                study="teachers",
                teacher_members=k,
            )
        )
    if e.external_teacher:
        groups.append(
            Group(
                STUDENT_EXTERNAL,
                STUDENT,
                1,
                ns,
                "ensemble_forces",
                "external/student",
                EXTERNAL,
                study="external",
            )
        )
    return groups


def member_seed(cfg: Config, group: Group, member: int) -> int:
    # distinct and reproducible per (role, generation, member)
    return int(run_digest([cfg.seed, group.label, member]), 16) % (2**31)


def describe(cfg: Config) -> str:
    m, s, t, e = cfg.model, cfg.student_model, cfg.train, cfg.ensemble
    min_epochs = f", not before epoch {t.min_epochs}" if t.min_epochs else ""
    return (
        f"config `{cfg.name}`: {e.n_teachers} teachers, {e.n_students} students per generation, "
        f"{e.generations} generation(s), controls {'on' if e.controls else 'off'}, "
        f"baseline {'on' if e.baseline else 'off'}; teacher HIPNN l_max={m.l_max}, "
        f"{m.n_interactions} interaction layers, {m.n_atom_layers}x{m.width} atom layers, "
        f"{m.n_sensitivities} sensitivities, cutoffs {m.cutoff_soft_min}/{m.cutoff_soft_max}/{m.cutoff_hard} A; "
        f"student l_max={s.l_max}, {s.n_interactions} interactions, {s.n_atom_layers}x{s.width}; "
        f"at most {t.max_epochs} epochs (lr {t.lr}, x{t.lr_factor} after {t.lr_patience}, stop after "
        f"{t.termination_patience}{min_epochs}); force-weight schedule {list(map(list, t.force_schedule))}; "
        f"data: train `{cfg.data.train}`, test `{cfg.data.test}`, energy key `{cfg.data.energy_key}`."
    )
