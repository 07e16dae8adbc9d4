"""Reading a configuration: YAML files (with ``base:`` inheritance) and the embedded default."""

from __future__ import annotations

from pathlib import Path

import yaml

from .schema import Config
from .typed import ConfigError, build

# ------------------------------------------------------------------------------------------
# the embedded default: the full workflow on a 2-core CPU in minutes

DEFAULT_YAML = """\
# ekd embedded default: a deliberately small run of the whole EKD workflow on a 2-core CPU.
# Differences from the paper (configs/paper.yaml): 4 teachers/students instead of 8, a small
# HIPNN (width 32, 2 atom layers, 8 sensitivities), at most 120 epochs with shorter patience and
# a force-weight schedule compressed to fit, and GFN2-xTB stand-in data generated on the fly.
name: default
seed: 0
run_dir: runs/default
workers: 2
data:
  train: generate
  test: generate
  energy_key: gfn2_xtb.energy
  reference_forces_key: gfn2_xtb.forces
  # a second out-of-sample set, test_torsion: 4 NCI molecules (8-13 heavy atoms), one rotatable
  # bond each, rigid GFN2-xTB scans in 15 degree steps (96 points, ~10 CPU-s; in no digest)
  generate: {torsion: {molecules: 4}}
model:
  l_max: 2
  n_interactions: 2
  n_atom_layers: 2
  width: 32
  n_sensitivities: 8
train:
  max_epochs: 120
  lr_patience: 8
  termination_patience: 16
  batch_size: 32
  force_schedule: [[1, 10.0], [6, 9.0], [12, 8.0], [18, 7.0], [24, 6.0], [30, 5.0], [36, 4.0],
                   [42, 3.0], [48, 2.0], [54, 1.0], [60, 0.5]]
ensemble:
  n_teachers: 4
  n_students: 4
  generations: 2
# MD stability (ekd md-stability): 27 molecules (189 atoms, 14.0 A box, just over 2 x the 6.5 A
# cutoff) instead of 448, 0.5 ps NVE instead of 10 ps, 2 models x 2 runs instead of 8 x 10
md:
  n_molecules: 27
  t_max_ps: 0.5
  equilibration_ps: 0.05
  n_runs: 2
  n_models: 2
"""


def default_config() -> Config:
    return loads(DEFAULT_YAML)


# ------------------------------------------------------------------------------------------
# loading and validation


def load(path: str | Path) -> Config:
    """Read a YAML file; keys missing from it take the dataclass defaults (the paper's), or those
    of its ``base`` (see :func:`loads`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, expected a YAML file")
    return loads(path.read_text(), source=str(path), directory=path.parent)


def loads(text: str, source: str = "<config>", directory: str | Path | None = None) -> Config:
    """A configuration from YAML text. A top-level ``base: <file>`` (relative to ``directory``,
    the including file's folder) or ``base: default`` (the embedded default) is read first and
    this text's keys override it, section by section (nested mappings merge; lists replace)."""
    return build(Config, _read_raw(text, source, directory, ()), "")


def _check_unique_keys(node, source: str, path: str = "", done: set | None = None) -> None:
    """Refuse a mapping that gives a key twice: YAML keeps the last one without a word (a second
    ``train:`` section would drop the first). Walks the composed node tree: lines are known there."""
    done = set() if done is None else done
    if id(node) in done:  # an alias of a node already checked (also a recursive one)
        return
    done.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            full = f"{path}.{name}" if path else str(name)
            if name is not None and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if (key.tag, name) in lines:
                    raise ConfigError(
                        f"{source}: key {full!r} is given twice (lines {lines[key.tag, name]} and {line}); YAML "
                        "would keep only the last one: merge them into one"
                    )
                lines[key.tag, name] = line
            _check_unique_keys(value, source, full, done)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, source, f"{path}[{i}]", done)


def _read_raw(text: str, source: str, directory, seen: tuple[str, ...]) -> dict:
    try:
        _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader), source)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if base == "default":
        parent = _read_raw(DEFAULT_YAML, "<embedded default>", None, seen)
    else:
        if not isinstance(base, str):
            raise ConfigError(f"{source}: base: expected a file name or 'default', got {base!r}")
        path = Path(base) if directory is None else Path(directory) / base
        if not path.exists():
            raise ConfigError(f"{source}: base: config file {path} does not exist")
        if path.is_dir():
            raise ConfigError(f"{source}: base: {path} is a directory, expected a YAML file")
        if str(path.resolve()) in seen:
            raise ConfigError(f"{source}: base: {path} includes itself")
        parent = _read_raw(path.read_text(), str(path), path.parent, (*seen, str(path.resolve())))
    return _merge(parent, raw)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
