"""``ekd`` on bad input: one line ``ekd: error: ...`` and a non-zero exit for every error that
ekd expects (the traceback only with --debug), a traceback and a request to report it for a bug.
Runs are tiny (GFN2-xTB labels of small molecules, tests/conftest.py; members of width 8 trained
for 2 epochs)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from ekd import cli
from ekd.cli import errors as cli_errors
from ekd.data import write_ani

from ..conftest import xtb_groups

TINY = """
name: tiny-cli
seed: 1
workers: 1
data: {{train: {train}, test: null}}
model: {{l_max: 0, n_interactions: 1, n_atom_layers: 1, width: 8, n_sensitivities: 4}}
train: {{max_epochs: 2, lr_patience: 2, termination_patience: 3, batch_size: 16, force_schedule: [[1, 5.0]]}}
ensemble: {{n_teachers: 2, n_students: 1, generations: 1, controls: false, baseline: false}}
md: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    pytest.importorskip("tblite.interface")
    d = tmp_path_factory.mktemp("cli_data")
    return write_ani(d / "train.h5", xtb_groups(("H2O", "CH4", "NH3"), n_conf=12))


def _config(directory, data_file, text=TINY, **replace):
    text = text.format(train=data_file)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = directory / "config.in.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file):
    """A run directory whose teachers are trained (through the CLI)."""
    d = tmp_path_factory.mktemp("cli_run")
    cfg = _config(d, data_file)
    run_dir = d / "run"
    assert cli.main(["train", "--config", str(cfg), "--run-dir", str(run_dir), "--role", "teacher", "--quiet"]) == 0
    return cfg, run_dir


def _copy(trained, tmp_path):
    cfg, run_dir = trained
    shutil.copytree(run_dir, tmp_path / "run")
    return cfg, tmp_path / "run"


def _error(capsys) -> str:
    """The one error line on stderr (and nothing else there)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[ekd")]
    assert len(lines) == 1 and lines[0].startswith("ekd: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------
# item 6: --workers, md.roles / --roles


@pytest.mark.parametrize("value", ["0", "-2"])
@pytest.mark.parametrize("verb", [["run"], ["train", "--role", "teacher"], ["md-stability"]])
def test_workers_below_one_is_an_error(tmp_path, verb, value, capsys):
    # a missing data file: the old code, which ignored --workers 0, fails on it instead
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{train: {tmp_path / 'missing.h5'}}}\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main([*verb, "--config", str(cfg), "--run-dir", str(tmp_path), "--workers", value])
    assert exit_.value.code == 2
    assert f"argument --workers: must be >= 1, got {value}" in _error(capsys)


def test_misspelt_md_role_in_the_config_is_an_error_before_any_training(tmp_path, data_file, capsys):
    cfg = _config(tmp_path, data_file, **{"md: {enabled: false}": "md: {roles: [teacher, studnet_gen1]}"})
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--config", str(cfg), "--run-dir", str(run_dir), "--quiet"]) == 2
    line = _error(capsys)
    assert "md.roles: 'studnet_gen1' is not a group of this run" in line
    assert "its groups are teacher, student_gen1" in line
    assert not (run_dir / "gen0").exists()  # nothing was trained


def test_misspelt_or_absent_role_in_roles_is_an_error(trained, capsys):
    cfg, run_dir = trained
    for roles, bad in (("teacher,studnt_gen1", "'studnt_gen1'"), ("teacher,student_gen2", "'student_gen2'")):
        argv = ["md-stability", "--config", str(cfg), "--run-dir", str(run_dir), "--roles", roles, "--quiet"]
        assert cli.main(argv) == 2
        line = _error(capsys)
        assert f"{bad} is not a group of this run" in line and "teacher, student_gen1" in line
    assert not (run_dir / "md").exists()


def test_select_roles_keeps_the_defaults_tolerance_for_absent_main_roles():
    from ekd.md.stability import select_roles

    assert select_roles(["teacher", "student_gen2", "baseline"], ["teacher", "student_gen1"]) == ["teacher"]
    with pytest.raises(ValueError, match="'student_gen2' is not a group"):
        select_roles(["teacher", "student_gen2"], ["teacher", "student_gen1"], strict=True)
    with pytest.raises(ValueError, match="'teachers' is not a group"):
        select_roles(["teachers"], ["teacher", "student_gen1"])


# ------------------------------------------------------------------------------------------
# item 10: config.yaml is written once; a run dir without --config uses it


def test_config_yaml_is_kept_by_a_refused_run_and_by_export(trained, tmp_path, capsys):
    cfg, run_dir = _copy(trained, tmp_path)
    stamp = run_dir / "config.yaml"
    original = stamp.read_text()
    changed = tmp_path / "changed.yaml"
    changed.write_text(cfg.read_text().replace("width: 8", "width: 12"))
    assert cli.main(["train", "--config", str(changed), "--run-dir", str(run_dir), "--role", "teacher"]) == 2
    assert "computed from a different configuration" in _error(capsys)
    assert stamp.read_text() == original
    # export without --config: the run's own configuration, not the default (whose groups differ)
    argv = ["export", "--run-dir", str(run_dir), "--role", "teacher", "--member", "5", "-o", str(tmp_path / "m.pt")]
    assert cli.main(argv) == 2
    assert "--member 5: teacher has members 0..1" in _error(capsys)
    assert stamp.read_text() == original


def test_a_run_dir_without_config_uses_its_own(trained, tmp_path, capsys):
    _, run_dir = _copy(trained, tmp_path)
    done = sorted(run_dir.glob("gen0/teacher/member_*/done.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    # the default configuration would be refused here (other architecture); the run's is reused
    assert cli.main(["train", "--run-dir", str(run_dir), "--role", "teacher", "--quiet"]) == 0
    assert [p.stat().st_mtime_ns for p in done] == stamps
    assert "'role': 'teacher'" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# item 11: messages instead of tracebacks


@pytest.mark.parametrize("verb", [["train", "--role", "student"], ["distill"], ["export", "--role", "student"]])
def test_generation_beyond_the_configured_ones(trained, verb, tmp_path, capsys):
    cfg, run_dir = trained
    argv = [*verb, "--config", str(cfg), "--run-dir", str(run_dir), "--generation", "7"]
    if verb[0] == "export":
        argv += ["-o", str(tmp_path / "m.pt")]
    assert cli.main(argv) == 2
    assert "--generation 7: this configuration has 1 student generation(s) (ensemble.generations: 1)" in _error(capsys)


def test_role_that_the_run_does_not_have(trained, capsys):
    cfg, run_dir = trained
    for role, why in (("baseline", "ensemble.baseline: true"), ("control", "ensemble.controls is false")):
        argv = ["train", "--config", str(cfg), "--run-dir", str(run_dir), "--role", role]
        assert cli.main(argv) == 2
        line = _error(capsys)
        assert f"--role {role}: this run has no {role} group" in line and why in line


def test_output_into_a_missing_directory(trained, tmp_path, capsys):
    _, run_dir = trained
    member = run_dir / "gen0" / "teacher" / "member_00"
    out = tmp_path / "nowhere" / "m.pt"
    assert cli.main(["export", str(member), "-o", str(out)]) == 2
    assert f"-o {out}: directory {out.parent} does not exist" in _error(capsys)
    assert cli.main(["export", str(member), "-o", str(tmp_path)]) == 2
    assert "is a directory" in _error(capsys)


def test_model_file_error_is_one_line(trained, tmp_path, monkeypatch, capsys):
    from ekd.deploy import export
    from ekd.deploy.model_file import ModelFileError

    def refuse(*args, **kwargs):
        raise ModelFileError("m.pt: metadata.json does not belong to these weights;\nre-export the model")

    monkeypatch.setattr(export, "export_member", refuse)
    _, run_dir = trained
    argv = ["export", str(run_dir / "gen0" / "teacher" / "member_00"), "-o", str(tmp_path / "m.pt")]
    assert cli.main(argv) == 2
    assert _error(capsys) == "ekd: error: m.pt: metadata.json does not belong to these weights;; re-export the model"


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_checkpoint_names_the_file_and_the_fix(trained, tmp_path, damage, capsys):
    import torch

    cfg, run_dir = _copy(trained, tmp_path)
    member = run_dir / "gen0" / "teacher" / "member_01"
    (member / "done.json").unlink()  # as if killed during training: a checkpoint is left
    ckpt = member / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(b"" if damage == "empty" else ckpt.read_bytes()[:300])
    argv = ["train", "--config", str(cfg), "--run-dir", str(run_dir), "--role", "teacher", "--member", "1", "--quiet"]
    assert cli.main(argv) == 2
    line = _error(capsys)
    assert f"{ckpt}: checkpoint of teacher member 1 (generation 0) is not readable" in line
    assert ("(empty" if damage == "empty" else "(truncated or corrupt") in line
    assert "delete it to restart that member from scratch" in line
    ckpt.unlink()  # the fix works
    assert cli.main(argv) == 0 and (member / "done.json").exists()


def test_truncated_member_model_names_the_file_and_the_fix(trained, tmp_path, capsys):
    _, run_dir = _copy(trained, tmp_path)
    member = run_dir / "gen0" / "teacher" / "member_00"
    model = member / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    assert cli.main(["export", str(member), "-o", str(tmp_path / "m.pt")]) == 2
    line = _error(capsys)
    assert f"{model}: model of a trained member is not readable (truncated or corrupt, 1000 bytes" in line
    assert f"delete {member} and run the same command again to retrain that member" in line


def test_truncated_labels_file_says_delete_and_rerun(trained, tmp_path, capsys):
    cfg, run_dir = _copy(trained, tmp_path)
    assert cli.main(["distill", "--config", str(cfg), "--run-dir", str(run_dir), "--quiet"]) == 0
    labels = run_dir / "labels" / "gen1.h5"
    capsys.readouterr()
    labels.write_bytes(labels.read_bytes()[: labels.stat().st_size // 2])
    argv = ["train", "--config", str(cfg), "--run-dir", str(run_dir), "--role", "student", "--quiet"]
    assert cli.main(argv) == 2
    line = _error(capsys)
    assert f"{labels}: labels file is truncated or corrupt" in line and "delete it and gen1.json" in line
    labels.unlink()
    (run_dir / "labels" / "gen1.json").unlink()
    assert cli.main(argv) == 0  # the fix works: labels remade, student trained


def test_full_disk_names_the_file_and_loses_nothing(trained, tmp_path, monkeypatch, capsys):
    import torch

    from ekd.training import train

    cfg, run_dir = _copy(trained, tmp_path)
    member = run_dir / "gen0" / "teacher" / "member_00"
    for name in ("done.json", "model.pt"):
        (member / name).unlink()
    log_before = (member / "train_log.jsonl").read_text()

    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    real_save = torch.save
    monkeypatch.setattr(train.torch, "save", full)
    argv = ["train", "--config", str(cfg), "--run-dir", str(run_dir), "--role", "teacher", "--member", "0", "--quiet"]
    assert cli.main(argv) == 2
    line = _error(capsys)
    assert f"could not write {member / 'checkpoint.pt'}: the disk is full" in line
    assert "nothing already computed is lost" in line
    assert [p.name for p in member.iterdir() if ".tmp" in p.name] == []
    monkeypatch.setattr(train.torch, "save", real_save)
    assert cli.main(argv) == 0 and (member / "done.json").exists()
    assert len((member / "train_log.jsonl").read_text().splitlines()) == len(log_before.splitlines())


def test_unexpected_error_shows_the_traceback_and_asks_for_a_report(tmp_path, monkeypatch, capsys):
    from ekd import workflow

    def bug(*args, **kwargs):
        return {}["no such key"]

    monkeypatch.setattr(workflow, "run", bug)
    assert cli.main(["run", "--run-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'no such key'" in err and "please report it" in err


def test_debug_shows_the_traceback_of_an_expected_error(tmp_path, capsys):
    argv = ["export", "--run-dir", str(tmp_path / "nope"), "-o", str(tmp_path / "m.pt")]
    assert cli.main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        assert cli.main(debug) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("ekd: error: run directory")


def test_errors_from_worker_processes_are_told_apart_like_local_ones():
    from ekd.jobs import run_parallel
    from ekd.units import energy_factor

    with pytest.raises(ValueError) as ekd_raised:
        run_parallel(energy_factor, ["furlong", "furlong"], workers=2, desc="", progress=False)
    assert cli_errors.expected(ekd_raised.value)
    with pytest.raises(ValueError) as python_raised:
        run_parallel(int, ["x", "y"], workers=2, desc="", progress=False)
    assert not cli_errors.expected(python_raised.value)
    json.dumps(cli_errors.message(ekd_raised.value))
