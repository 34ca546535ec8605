"""Argument checks of :mod:`secagg`: the one place they are written.

Each returns the normalised value or raises :class:`~secagg.errors.SecAggTypeError` (wrong
type, ``bool`` where a number is wanted included) or
:class:`~secagg.errors.SecAggValueError` (right type, bad value).  Messages name the
argument and what was given.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from secagg.errors import SecAggTypeError, SecAggValueError

__all__ = ["check_bytes", "check_choice", "check_fraction", "check_int", "check_number", "check_optional_int"]


def check_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    """An int (numpy ints accepted, bool refused) in ``[lo, hi]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SecAggTypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        if hi is None:
            want = f">= {lo}"
        elif lo is None:
            want = f"<= {hi}"
        else:
            want = f"in [{lo}, {hi}]"
        raise SecAggValueError(f"{name} must be {want}, got {v}")
    return v


def check_optional_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int | None:
    """None, or :func:`check_int`."""
    return None if value is None else check_int(name, value, lo, hi)


def check_number(
    name: str,
    value: object,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number (bool refused) in the given interval (closed unless ``*_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SecAggTypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError as exc:
        raise SecAggValueError(f"{name} is too large for a float: {value!r}") from exc
    if not math.isfinite(v):
        raise SecAggValueError(f"{name} must be finite, got {v!r}")
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise SecAggValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {v!r}")
    return v


def check_fraction(name: str, value: object) -> float:
    """A number in [0, 1)."""
    return check_number(name, value, lo=0.0, hi=1.0, hi_open=True)


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise SecAggValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_bytes(name: str, value: object, size: int | None = None) -> bytes:
    """Bytes (a bytes-like object is copied to bytes), of exactly ``size`` bytes if given."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise SecAggTypeError(f"{name} must be bytes, got {type(value).__name__}")
    raw = bytes(value)
    if size is not None and len(raw) != size:
        raise SecAggValueError(f"{name} must be {size} bytes, got {len(raw)}")
    return raw
