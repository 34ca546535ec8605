"""Argument checks shared by every :mod:`dp` module (the one validator module of the package).

Each ``check_*`` returns the value normalised to a plain Python type (``int``, ``float``,
``bool``, ``str``) or raises a typed :class:`~dp.errors.DPError`:

* :class:`~dp.errors.DPTypeError` for the wrong type.  ``bool`` (and ``numpy.bool_``) is
  never accepted where a number is wanted, and a float is never accepted where an int is;
* :class:`~dp.errors.DPValueError` for a value out of range, NaN or infinite.  Absurd
  magnitudes (an int of ``10**400`` where a float is wanted) are a ``DPValueError``, never
  an ``OverflowError``.

Numbers are accepted as Python ``int``/``float`` and their numpy counterparts (anything
registered as :class:`numbers.Integral` / :class:`numbers.Real`).  Bounds are compared in
exact arithmetic for ints, so no check overflows.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Collection

import numpy as np

from dp.errors import DPTypeError, DPValueError

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_nonnegative",
    "check_positive",
    "check_probability",
    "check_real",
    "show_int",
]


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def show_int(n: int) -> str:
    """``str(n)``, or ``"an int of N bits"`` for huge ``n`` (whose decimal form is useless
    in a message and can even exceed Python's int-to-str digit limit)."""
    return str(n) if n.bit_length() <= 128 else f"an int of {n.bit_length()} bits"


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as a Python ``int`` in ``[low, high]`` (either bound optional).

    Raises:
        DPTypeError: ``value`` is a bool, a float or not an integer at all.
        DPValueError: ``value`` is below ``low`` or above ``high``.
    """
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise DPTypeError(f"{name} must be an int, got {type(value).__name__}")
    n = operator.index(value)
    if low is not None and n < low:
        raise DPValueError(f"{name} must be >= {low}, got {show_int(n)}")
    if high is not None and n > high:
        raise DPValueError(f"{name} must be <= {high}, got {show_int(n)}")
    return n


def check_real(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite Python ``float`` in the interval from ``low`` to ``high``.

    ``low_open``/``high_open`` exclude the bound itself.  NaN and +-inf are always refused.

    Raises:
        DPTypeError: ``value`` is a bool or not a real number.
        DPValueError: ``value`` is NaN, infinite, too large for a float, or out of range.
    """
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise DPTypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:
        raise DPValueError(f"{name} must be finite, got an int too large for a float") from None
    if math.isnan(x):
        raise DPValueError(f"{name} is NaN; pass a finite number")
    if math.isinf(x):
        raise DPValueError(f"{name} must be finite, got {x}")
    too_low = x < low or (low_open and x == low)
    too_high = x > high or (high_open and x == high)
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise DPValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {x}")
    return x


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a finite float ``> 0``.

    Raises:
        DPTypeError: not a real number (or a bool).
        DPValueError: NaN, infinite, too large for a float, or ``<= 0``.
    """
    x = check_real(name, value)
    if x <= 0:
        raise DPValueError(f"{name} must be > 0, got {x}")
    return x


def check_nonnegative(name: str, value: object) -> float:
    """Return ``value`` as a finite float ``>= 0``.

    Raises:
        DPTypeError: not a real number (or a bool).
        DPValueError: NaN, infinite, too large for a float, or ``< 0``.
    """
    x = check_real(name, value)
    if x < 0:
        raise DPValueError(f"{name} must be >= 0, got {x}")
    return x


def check_probability(name: str, value: object, *, allow_zero: bool = False, allow_one: bool = False) -> float:
    """Return ``value`` as a float in ``(0, 1)``; ``allow_zero``/``allow_one`` close the ends.

    Raises:
        DPTypeError: not a real number (or a bool).
        DPValueError: NaN, or outside the interval.
    """
    return check_real(name, value, low=0.0, high=1.0, low_open=not allow_zero, high_open=not allow_one)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` as a Python ``bool``; ints such as ``0``/``1`` are refused.

    Raises:
        DPTypeError: ``value`` is not a ``bool`` / ``numpy.bool_``.
    """
    if not _is_bool(value):
        raise DPTypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """Return ``value`` if it is one of the strings ``choices``.

    Raises:
        DPTypeError: ``value`` is not a ``str``.
        DPValueError: ``value`` is not among ``choices``.
    """
    if not isinstance(value, str):
        raise DPTypeError(f"{name} must be a str, got {type(value).__name__}")
    if value not in choices:
        raise DPValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value
