"""Arithmetic over the ring Z_{2^b}, 1 <= b <= 64, stored in unsigned numpy arrays.

Vectors live in ``uint32`` for ``b <= 32`` and ``uint64`` otherwise; numpy's unsigned
arithmetic wraps modulo 2^32 / 2^64 for free, so reducing to 2^b is one ``&`` with
``2^b - 1`` (never a Python-int ``%``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from secagg.errors import SecAggTypeError, SecAggValueError

__all__ = ["MAX_BITS", "MIN_BITS", "check_bits", "reduce_inplace", "ring_dtype", "ring_mask"]

MIN_BITS = 1
MAX_BITS = 64

RingArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is an int in [1, 64], else raise a typed error."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise SecAggTypeError(f"bits must be an int, got {type(bits).__name__}")
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise SecAggValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return int(bits)


def check_dim(d: object) -> int:
    """Return the vector length ``d`` if it is an int >= 0, else raise a typed error."""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise SecAggTypeError(f"d must be an int, got {type(d).__name__}")
    if int(d) < 0:
        raise SecAggValueError(f"d must be >= 0, got {d}")
    return int(d)


def ring_dtype(bits: int) -> type[np.uint32] | type[np.uint64]:
    """numpy dtype holding Z_{2^bits}: ``uint32`` up to 32 bits, ``uint64`` above."""
    return np.uint32 if check_bits(bits) <= 32 else np.uint64


def ring_mask(bits: int) -> int:
    """``2**bits - 1``, the mask that reduces a wrapped value into Z_{2^bits}."""
    return (1 << check_bits(bits)) - 1


def reduce_inplace(x: RingArray, bits: int) -> None:
    """Reduce ``x`` modulo ``2**bits`` in place (no-op for 32 and 64 bits)."""
    bits = check_bits(bits)
    if bits not in (32, 64):
        np.bitwise_and(x, x.dtype.type(ring_mask(bits)), out=x)
