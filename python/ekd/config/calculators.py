"""The spelling of an outside ASE calculator, ``MODULE:FACTORY[:ARG]``: checked where a config or a
command line names one (``ensemble.external_teacher``, ``ekd score --calculator``), made into a
calculator by :func:`ekd.training.external.load_calculator`. Parsing imports nothing."""

from __future__ import annotations


def parse_calculator_spec(spec: str) -> tuple[str, str, str | None]:
    """``"MODULE:FACTORY[:ARG]"`` -> (module, factory, arg or None); FACTORY may be dotted
    (``Class.from_file``), ARG is everything after the second colon (a path may hold colons)."""
    parts = str(spec).split(":", 2)
    ok = len(parts) >= 2 and all(p and all(s.isidentifier() for s in p.split(".")) for p in parts[:2])
    if not ok:
        raise ValueError(
            f"calculator {spec!r}: expected MODULE:FACTORY[:ARG] (a Python module, a callable in it that returns "
            "an ASE calculator, and an optional argument), e.g. 'ekd.deploy.calculator:EKDCalculator:model.pt'"
        )
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


__all__ = ["parse_calculator_spec"]
