"""Argument checks of the benchmark modules: the package's own checks
(:mod:`secagg._validate`) in the benchmarks' argument order, plus the two that only the
benchmarks need (lists of choices, dropout stage maps)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from secagg import _validate as _v
from secagg.errors import SecAggValueError

__all__ = ["check_choice", "check_choices", "check_fraction", "check_int", "check_stage_ids"]


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (:func:`secagg._validate.check_int`)."""
    return _v.check_int(name, value, low, high)


def check_fraction(value: object, name: str, *, closed: bool = False) -> float:
    """``value`` as a float in ``[0, 1)`` (``closed``: ``(0, 1]``, a rate)."""
    if closed:
        return _v.check_number(name, value, lo=0.0, hi=1.0, lo_open=True)
    return _v.check_fraction(name, value)


def check_choice(value: object, name: str, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices`` (:func:`secagg._validate.check_choice`)."""
    return _v.check_choice(name, value, choices)


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
