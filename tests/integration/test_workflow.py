"""A tiny end-to-end EKD run (seconds): files, shapes, NaN-freedom, and resumption after an
interruption injected mid-run. Data: GFN2-xTB labels of small molecules (tests/conftest.py),
with a separate out-of-sample file of molecules the training never sees."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ekd import config
from ekd.data import write_ani
from ekd.workflow import Run, RunDirError

from ..conftest import xtb_groups

TINY = """
name: tiny
seed: 3
workers: 1
data:
  train: {train}
  test: {test}
model: {{l_max: 1, n_interactions: 1, n_atom_layers: 1, width: 8, n_sensitivities: 4}}
train:
  max_epochs: 4
  lr_patience: 2
  termination_patience: 3
  batch_size: 16
  force_schedule: [[1, 5.0], [3, 1.0]]
ensemble: {{n_teachers: 2, n_students: 2, generations: 2}}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    train = write_ani(d / "train.h5", xtb_groups(("H2O", "CH4", "NH3", "H2CO"), n_conf=16))
    test = write_ani(d / "test.h5", xtb_groups(("CH3OH",), n_conf=8, seed=5))
    return train, test


def _cfg(files):
    return config.loads(TINY.format(train=files[0], test=files[1]))


def test_run_interrupted_then_resumed(files, tmp_path):
    cfg = _cfg(files)
    run_dir = tmp_path / "run"

    class Interrupt(Exception):
        pass

    def stop(label):
        if label == "student_gen1":
            raise Interrupt

    with pytest.raises(Interrupt):
        Run(cfg, run_dir, progress=False).run_all(on_stage=stop)
    teacher_done = sorted((run_dir / "gen0" / "teacher").glob("member_*/done.json"))
    assert len(teacher_done) == 2 and (run_dir / "labels" / "gen1.h5").exists()
    stamps = {p: p.stat().st_mtime_ns for p in teacher_done}

    metrics = Run(cfg, run_dir, progress=False).run_all()
    # finished members were reused, not retrained
    assert {p: p.stat().st_mtime_ns for p in teacher_done} == stamps
    assert set(metrics["roles"]) == {"teacher", "student_gen1", "student_gen2", "control", "baseline"}
    for label, entry in metrics["roles"].items():
        for set_name in ("test_split", "test_pool"):
            res = entry[set_name]
            assert len(res["members"]) == 2, label
            for score in [*res["members"], res["ensemble"]]:
                for key in ("energy_rmse", "force_rmse"):
                    assert score[key] is not None and np.isfinite(score[key]), (label, set_name, key)
    assert metrics["sets"]["test_pool"]["n_molecules"] == 1
    assert (run_dir / "report.md").exists() and (run_dir / "metrics.json").exists()
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["roles"].keys() == metrics["roles"].keys()

    # the augmented dataset: same configurations, ensemble forces without NaN
    from ekd.data import load_dataset

    labels = load_dataset(run_dir / "labels" / "gen2.h5", {"energy": "gfn2_xtb.energy", "f": "ekd_ensemble.forces"})
    assert np.isfinite(labels.properties["f"]).all() and labels.mask("f").all()


def test_changed_config_is_refused_not_mixed(files, tmp_path):
    cfg = _cfg(files)
    run_dir = tmp_path / "run"
    r = Run(cfg, run_dir, progress=False)
    r.train_group(r.group("teacher"))
    changed = config.loads(TINY.format(train=files[0], test=files[1]).replace("width: 8", "width: 12"))
    with pytest.raises(RunDirError, match="different configuration"):
        Run(changed, run_dir, progress=False).train_group(r.group("teacher"))
