"""Frozen dataclasses built from plain data (YAML), checked on the way: the machinery under
:mod:`ekd.config`, independent of what the sections hold.

Every error names the field by its dotted path (``train.lr: expected a number, got 'fast'``);
unknown keys are errors too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import fields
from typing import Any, Literal


class ConfigError(ValueError):
    """An invalid configuration; the message names the field."""


def check_finite(section) -> None:
    """Every float of ``section`` (also inside tuples) is finite: no field means anything by
    inf or NaN, and both pass comparisons such as ``lr > 0`` or escape them silently."""
    for f in fields(section):
        values = getattr(section, f.name)
        flat = list(values) if isinstance(values, tuple) else [values]
        while any(isinstance(v, tuple) for v in flat):
            flat = [x for v in flat for x in (v if isinstance(v, tuple) else (v,))]
        bad = [v for v in flat if isinstance(v, float) and not math.isfinite(v)]
        check(
            not bad,
            f.name,
            "must be finite numbers" if isinstance(values, tuple) else "must be a finite number",
            values,
        )


def check(ok: bool, name: str, expectation: str, got) -> None:
    if not ok:
        raise ConfigError(f"{name}: {expectation}, got {got!r}")


def build(cls, raw: Any, path: str):
    """Construct dataclass ``cls`` from plain data, checking keys and types recursively."""
    where = path or "config"
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    kwargs = {name: _convert(hints[name], value, f"{path}.{name}" if path else name) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{path + '.' if path else ''}{e}") from None


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for a in options:
            try:
                return _convert(a, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: no accepted form matched ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} items, got {value!r}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string: accept it
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        # no float field has a meaning for infinity or NaN (.inf, .nan in YAML): a learning rate or
        # a cutoff of .inf would pass "> 0" and train or run on nonsense
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{path}: unsupported type {tp}")  # pragma: no cover - programming error


def to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
