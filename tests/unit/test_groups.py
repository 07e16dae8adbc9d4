"""ekd.groups, the vocabulary: the group names a run's plan makes are the ones ekd.groups makes and
parses (main groups vs the studies' groups), and the report reads the studies' groups by them."""

from pathlib import Path

from ekd import config, groups
from ekd.workflow import plan

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_names_of_a_plan_with_every_study():
    cfg = config.load(CONFIGS / "studies_demo.yaml")
    got = {g.label: g for g in plan(cfg)}
    e = cfg.ensemble
    main = [groups.TEACHER, *(groups.student_group(g) for g in range(1, e.generations + 1))]
    studies = [
        *(groups.variant_group(groups.student_group(1), v) for v in e.student_variants),
        *(groups.teacher_subset_group(k) for k in e.teacher_subsets),
        groups.STUDENT_EXTERNAL,
    ]
    assert set(main) | set(studies) <= set(got)
    for name, g in got.items():
        assert g.role in groups.ROLES
        # the main groups and only they match the names md.roles may name without the run having them
        assert groups.is_main_group(name) == (g.study is None), name
    assert groups.student_group(2) == "student_gen2" and groups.generation_of("student_gen2") == 2
    assert groups.generation_of("control", default=1) == 1
    assert not groups.is_main_group("student_gen0") and not groups.is_main_group("studnt_gen1")
