"""Arithmetic over the ring Z_{2^b}, 1 <= b <= 64, stored in unsigned numpy arrays.

Vectors live in ``uint32`` for ``b <= 32`` and ``uint64`` otherwise; numpy's unsigned
arithmetic wraps modulo 2^32 / 2^64 for free, so reducing to 2^b is one ``&`` with
``2^b - 1`` (never a Python-int ``%``).

Layering: :mod:`dp` is the lower layer and must not import :mod:`secagg`, so the one
implementation of :func:`check_bits`, :func:`ring_dtype` and :func:`ring_mask` lives in
:mod:`dp._ring` and raises :mod:`dp.errors` types.  This module re-exports them through
:func:`secagg_errors`, a thin wrapper that turns :class:`~dp.errors.DPTypeError` /
:class:`~dp.errors.DPValueError` into :class:`~secagg.errors.SecAggTypeError` /
:class:`~secagg.errors.SecAggValueError` (chained, same message), so every
``except SecAggValueError`` in and around :mod:`secagg` keeps working.  We wrap rather
than define one class deriving from both hierarchies because the raising code lives in
:mod:`dp` and cannot name a :mod:`secagg` class without pointing the layers both ways.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from dp import _ring
from dp._ring import MAX_BITS, MIN_BITS
from dp.errors import DPTypeError, DPValueError
from secagg._validate import check_int
from secagg.errors import SecAggTypeError, SecAggValueError

__all__ = ["MAX_BITS", "MIN_BITS", "check_bits", "reduce_inplace", "ring_dtype", "ring_mask"]

RingArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def secagg_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Wrap a :mod:`dp` function so its argument errors surface as :mod:`secagg.errors` types.

    :class:`~dp.errors.DPTypeError` becomes :class:`SecAggTypeError` and
    :class:`~dp.errors.DPValueError` becomes :class:`SecAggValueError`, with the same message
    and the original chained as ``__cause__``; everything else passes through unchanged.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except DPTypeError as exc:
            raise SecAggTypeError(str(exc)) from exc
        except DPValueError as exc:
            raise SecAggValueError(str(exc)) from exc

    return wrapper


check_bits = secagg_errors(_ring.check_bits)
ring_dtype = secagg_errors(_ring.ring_dtype)
ring_mask = secagg_errors(_ring.ring_mask)


def check_dim(d: object) -> int:
    """Return the vector length ``d`` if it is an int >= 0, else raise a typed error."""
    return check_int("d", d, 0)


def reduce_inplace(x: RingArray, bits: int) -> None:
    """Reduce ``x`` modulo ``2**bits`` in place (no-op for 32 and 64 bits)."""
    bits = check_bits(bits)
    if bits not in (32, 64):
        np.bitwise_and(x, x.dtype.type(ring_mask(bits)), out=x)
