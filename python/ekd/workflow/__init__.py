"""The EKD workflow: data -> teachers -> ensemble forces -> students (generation 1..g) ->
controls and baseline -> evaluation -> report, in one resumable run directory.

Layout of a run directory::

    config.yaml                 the effective configuration of the run
    data/train.h5, data/test.h5 generated (or the configured files are used in place)
    splits.npz                  common test split + each member's train/valid split
    gen0/teacher/member_00/     one directory per trained member (see ekd.training.train)
    labels/gen1.h5              augmented dataset: energies + ensemble forces of generation 0
    gen1/student/member_00/ ... students of generation 1 (taught by gen0), gen2 by gen1, ...
    control/member_00/          student architecture, energies only
    baseline/member_00/         student architecture, the dataset's own forces
    metrics.json, report.md, figures/

Resuming: every stage output records a digest of exactly what it was computed from (the
relevant config sections and, for students, the labels they learned from). A rerun reuses
outputs whose digest matches, continues interrupted members from their checkpoints, and refuses
to mix in an output made from a different configuration (it says which and what to do).

Modules: :mod:`.plan` (the groups of a run), :mod:`.inputs` (data, units, splits, what a member
job loads), :mod:`.rundir` (:class:`Run`: the stages, training), :mod:`.results` (evaluation and
MD of the trained members).
"""

from ..store import RunDirError
from .inputs import (
    MIN_CONFIGURATIONS,
    DataPaths,
    check_test_elements,
    data_units,
    load_member_data,
    load_pool,
    load_test_pool,
    load_train,
    make_splits,
    member_splits,
    prepare_data,
    train_keys,
)
from .plan import EXTERNAL, Group, UnknownGroupError, describe, member_seed, plan
from .results import export_models
from .rundir import Run, run

__all__ = [
    "EXTERNAL",
    "MIN_CONFIGURATIONS",
    "DataPaths",
    "Group",
    "Run",
    "RunDirError",
    "UnknownGroupError",
    "check_test_elements",
    "data_units",
    "describe",
    "export_models",
    "load_member_data",
    "load_pool",
    "load_test_pool",
    "load_train",
    "make_splits",
    "member_seed",
    "member_splits",
    "plan",
    "prepare_data",
    "run",
    "train_keys",
]
