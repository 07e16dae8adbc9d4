"""Configuration: frozen dataclasses, loaded from YAML and validated on load.

Every error names the field by its dotted path (``train.lr: expected a number, got 'fast'``).
Unknown keys are errors too: a misspelt option must not silently fall back to a default.

The embedded default (:data:`DEFAULT_YAML`) is small enough to run the whole workflow on a
2-core CPU in minutes; ``configs/paper.yaml`` holds the paper's hyper-parameters.

Modules: :mod:`.schema` (the sections and their checks), :mod:`.loading` (YAML, ``base:``, the
embedded default), :mod:`.typed` (building checked dataclasses from plain data).
"""

from .loading import DEFAULT_YAML, default_config, load, loads
from .schema import Config, DataConfig, EnsembleConfig, EvaluateConfig, MDConfig, ModelConfig, TrainConfig
from .typed import ConfigError, build

__all__ = [
    "DEFAULT_YAML",
    "Config",
    "ConfigError",
    "DataConfig",
    "EnsembleConfig",
    "EvaluateConfig",
    "MDConfig",
    "ModelConfig",
    "TrainConfig",
    "build",
    "default_config",
    "load",
    "loads",
]
