"""Configuration loading: defaults, the force-weight schedule, and field-named errors."""

import pytest

from ekd import config

from ..conftest import check_missing_and_malformed


def test_embedded_default_is_small_and_complete():
    cfg = config.default_config()
    assert cfg.ensemble.n_teachers >= 2 and cfg.model.width < 128
    # round trip through YAML is lossless
    assert config.loads(cfg.to_yaml()) == cfg
    assert cfg.digest() == config.loads(cfg.to_yaml()).digest()


def test_dataclass_defaults_are_the_paper_hyper_parameters():
    cfg = config.loads("{}")
    m, t = cfg.model, cfg.train
    assert (m.l_max, m.n_interactions, m.n_atom_layers, m.width, m.n_sensitivities) == (2, 2, 4, 128, 20)
    assert (m.cutoff_soft_min, m.cutoff_soft_max, m.cutoff_hard) == (0.75, 5.5, 6.5)
    assert (t.lr, t.lr_factor, t.lr_patience, t.termination_patience, t.max_epochs) == (1e-3, 0.5, 15, 30, 400)
    assert (t.w_energy, t.w_l2, t.w_hierarchicality) == (1.0, 1e-4, 0.1)
    assert cfg.ensemble.n_teachers == 8


def test_paper_force_schedule():
    t = config.loads("{}").train
    # 10 at epoch 1, 9 at 20, ... 1 at 180, 0.5 from 200 on
    expected = {1: 10, 19: 10, 20: 9, 40: 8, 100: 5, 179: 2, 180: 1, 199: 1, 200: 0.5, 400: 0.5}
    assert {e: t.force_weight(e) for e in expected} == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: {lrr: 0.1}", r"train: unknown key\(s\) \['lrr'\]"),
        ("modle: {}", r"config: unknown key\(s\) \['modle'\]"),
        ("train: {lr: fast}", "train.lr: expected a number, got 'fast'"),
        ("train: {max_epochs: 1.5}", "train.max_epochs: expected an integer"),
        ("train: {lr: -1}", "train.lr: must be > 0"),
        ("train: {kernels: cuda}", r"train.kernels: must be one of \['ekd', 'hippynn-numba', 'pytorch'\]"),
        ("train: {force_schedule: [[1, 2.0], [1, 1.0]]}", "train.force_schedule: epochs must be strictly increasing"),
        ("model: {l_max: 3}", "model.l_max: must be 0, 1 or 2"),
        ("model: {cutoff_soft_max: 9.0}", "model.cutoff_soft_min: cutoffs must satisfy"),
        ("ensemble: {student_model: {width: 0}}", "ensemble.student_model.width: must be >= 1"),
        ("ensemble: {controls: yes please}", "ensemble.controls: expected true or false"),
        ("data: {test_fraction: 0.9}", r"data.test_fraction: must be in \(0, 0.5\)"),
        ("- 1\n- 2", "the top level must be a mapping"),
        # non-finite numbers pass "> 0" checks: refused for every float field, naming it
        ("train: {lr: .inf}", r"train.lr: expected a finite number, got inf"),
        ("model: {cutoff_hard: .inf}", r"model.cutoff_hard: expected a finite number, got inf"),
        ("train: {w_l2: .nan}", r"train.w_l2: expected a finite number, got nan"),
        ("train: {lr: '-inf'}", r"train.lr: expected a finite number, got '-inf'"),
        ("train: {force_schedule: [[1, .inf]]}", r"train.force_schedule\[0\]\[1\]: expected a finite number"),
        ("evaluate: {conformer_window: .inf}", r"evaluate.conformer_window: expected a finite number"),
        ("md: {timesteps_fs: [0.5, .inf]}", r"md.timesteps_fs\[1\]: expected a finite number"),
        ("md: {t_max_ps: .inf}", r"md.t_max_ps: expected a finite number"),
        ("md: {density: 0}", r"md.density: must be > 0"),
        ("model: {cutoff_soft_min: 0}", r"model.cutoff_soft_min: cutoffs must satisfy 0 <"),
        ("train: {lr: 0}", r"train.lr: must be > 0"),
    ],
)
def test_bad_configs_name_the_field(text, message):
    with pytest.raises(config.ConfigError, match=message):
        config.loads(text)


def test_load_missing_file_and_bad_yaml(tmp_path):
    unclosed = "train: [unclosed"
    check_missing_and_malformed(config.load, config.ConfigError, tmp_path, "bad.yaml", unclosed, "not valid YAML")


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")):
        config.load(path)


def test_generate_options_are_validated_by_the_generator():
    cfg = config.loads("data: {generate: {n_train_molecules: 3, levels: [gfn2_xtb]}}")
    assert cfg.data.generate_options(seed=5).n_train_molecules == 3
    assert cfg.data.generate_options(seed=5).seed == 5
    with pytest.raises(config.ConfigError, match=r"data.generate: unknown key\(s\) \['n_train_mols'\]"):
        config.loads("data: {generate: {n_train_mols: 3}}")
    with pytest.raises(config.ConfigError, match="data.generate: .*n_train_molecules"):
        config.loads("data: {generate: {n_train_molecules: -1}}")


def test_sections_built_in_python_refuse_non_finite_floats():
    """The dataclasses check themselves too (they are public: ``TrainConfig(lr=...)``)."""
    with pytest.raises(config.ConfigError, match="lr: must be a finite number, got inf"):
        config.TrainConfig(lr=float("inf"))
    with pytest.raises(config.ConfigError, match="cutoff_hard: must be a finite number"):
        config.ModelConfig(cutoff_hard=float("inf"))
    with pytest.raises(config.ConfigError, match="force_schedule: must be finite numbers"):
        config.TrainConfig(force_schedule=((1, float("nan")),))
