"""Argument checks shared by the benchmark modules (typed errors, one wording)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import numpy as np

from secagg.errors import SecAggTypeError, SecAggValueError

__all__ = ["check_choice", "check_choices", "check_fraction", "check_int", "check_stage_ids"]


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (either bound optional), else a typed error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SecAggTypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise SecAggValueError(f"{name} must be an int in [{lo}, {hi}], got {v}")
    return v


def check_fraction(value: object, name: str, *, closed: bool = False) -> float:
    """``value`` as a float in ``[0, 1)`` (``closed``: ``(0, 1]``, a rate), else a typed error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SecAggTypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    if not (0.0 < v <= 1.0 if closed else 0.0 <= v < 1.0):
        raise SecAggValueError(f"{name} must be in {'(0, 1]' if closed else '[0, 1)'}, got {v}")
    return v


def check_choice(value: object, name: str, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else a typed error."""
    if value not in choices:
        raise SecAggValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def check_choices(values: Iterable[object], name: str, choices: Collection[str]) -> list[str]:
    """Every one of ``values`` checked by :func:`check_choice`; all unknown ones named at once."""
    out = list(values)
    bad = [v for v in out if v not in choices]
    if bad:
        raise SecAggValueError(f"unknown {name} {bad}; use {list(choices)}")
    return [str(v) for v in out]


def check_stage_ids(
    ids_by_stage: Mapping[str, Iterable[int]] | None, n: int, stages: Collection[str]
) -> dict[str, frozenset[int]]:
    """Stage name -> client indices in ``[0, n)``, every stage present (empty when absent)."""
    out = {s: frozenset[int]() for s in stages}
    if ids_by_stage is None:
        return out
    check_choices(ids_by_stage, "dropout stage(s)", stages)
    for s in stages:
        ids = frozenset(int(i) for i in ids_by_stage.get(s, ()))
        if any(not 0 <= i < n for i in ids):
            raise SecAggValueError(f"dropouts[{s!r}] must hold client indices in [0, {n})")
        out[s] = ids
    return out
