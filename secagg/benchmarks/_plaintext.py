"""Baseline (a): numpy summation of the same vectors, no security at all."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.errors import SecAggValueError

__all__ = ["PlaintextSum", "plaintext_sum"]


@dataclass(frozen=True)
class PlaintextSum:
    """Result of :func:`plaintext_sum`.

    Attributes:
        total: the sum (mod 2^32 for uint32 vectors, mod 2^64 for uint64), shape (d,).
        seconds: time spent in the additions only (producing the vectors is not timed),
            by the clock given to :func:`plaintext_sum`.
        count: vectors summed.
    """

    total: npt.NDArray[Any] = field(repr=False)
    seconds: float
    count: int


def plaintext_sum(
    vectors: Iterable[npt.NDArray[Any]], *, clock: Callable[[], float] = time.perf_counter
) -> PlaintextSum:
    """Sum 1-D unsigned integer vectors with ``np.add(acc, v, out=acc)`` (wrapping), timing
    only the additions with ``clock`` (``time.perf_counter`` = wall clock,
    ``time.process_time`` = CPU time of this process).

    Raises:
        SecAggValueError: no vectors, or vectors of different shapes or dtypes.
    """
    acc: npt.NDArray[Any] | None = None
    seconds, count = 0.0, 0
    for v in vectors:
        if acc is None:
            if v.ndim != 1 or v.dtype.kind != "u":
                raise SecAggValueError(f"vectors must be 1-D unsigned integer arrays, got {v.dtype} {v.shape}")
            acc = np.zeros_like(v)
        elif v.shape != acc.shape or v.dtype != acc.dtype:
            raise SecAggValueError(f"all vectors must be {acc.dtype} {acc.shape}, got {v.dtype} {v.shape}")
        t0 = clock()
        np.add(acc, v, out=acc)
        seconds += clock() - t0
        count += 1
    if acc is None:
        raise SecAggValueError("plaintext_sum needs at least one vector")
    return PlaintextSum(acc, seconds, count)
