"""The ring Z_{2^b}, 1 <= b <= 64: bit-width checks, storage dtype and the centred lift.

This is the one implementation; it lives in :mod:`dp` (the lower layer) so that
``import dp`` loads no :mod:`secagg` module.  It raises :class:`~dp.errors.DPTypeError` /
:class:`~dp.errors.DPValueError`.  :mod:`secagg.ring` and :mod:`secagg.encoding`
re-export these functions wrapped so that callers of :mod:`secagg` see the matching
:mod:`secagg.errors` types (see :mod:`secagg.ring`).

Vectors live in ``uint32`` for ``b <= 32`` and ``uint64`` otherwise; numpy's unsigned
arithmetic wraps modulo 2^32 / 2^64 for free, so reducing to 2^b is one ``&`` with
``2^b - 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from dp.errors import DPTypeError, DPValueError

__all__ = ["MAX_BITS", "MIN_BITS", "centered_lift", "check_bits", "ring_dtype", "ring_mask"]

MIN_BITS = 1
MAX_BITS = 64


def check_bits(bits: int) -> int:
    """Return ``bits`` as an int if it is an int in [1, 64].

    Raises:
        DPTypeError: ``bits`` is not an int (a bool or float counts as not an int).
        DPValueError: ``bits`` is outside [1, 64].
    """
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)):
        raise DPTypeError(f"bits must be an int, got {type(bits).__name__}")
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        shown = bits if int(bits).bit_length() <= 128 else f"an int of {int(bits).bit_length()} bits"
        raise DPValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {shown}")
    return int(bits)


def ring_dtype(bits: int) -> type[np.uint32] | type[np.uint64]:
    """numpy dtype holding Z_{2^bits}: ``uint32`` up to 32 bits, ``uint64`` above.

    Raises:
        DPTypeError, DPValueError: as :func:`check_bits`.
    """
    return np.uint32 if check_bits(bits) <= 32 else np.uint64


def ring_mask(bits: int) -> int:
    """``2**bits - 1``, the mask that reduces a wrapped value into Z_{2^bits}.

    Raises:
        DPTypeError, DPValueError: as :func:`check_bits`.
    """
    return (1 << check_bits(bits)) - 1


def centered_lift(v: npt.NDArray[Any], bits: int) -> npt.NDArray[np.int64]:
    """Representative in ``[-2^(bits-1), 2^(bits-1))`` of each residue of ``v`` mod ``2^bits``.

    ``v`` may have any integer dtype and shape; it is read modulo ``2^bits`` (two's
    complement for signed inputs).  Returns a new ``int64`` array of the same shape.

    Raises:
        DPTypeError: ``v`` is not a numpy array of an integer dtype, or ``bits`` not an int.
        DPValueError: ``bits`` is outside [1, 64].
    """
    bits = check_bits(bits)
    if not isinstance(v, np.ndarray):
        raise DPTypeError(f"v must be a numpy array, got {type(v).__name__}")
    if v.dtype.kind not in "ui":
        raise DPTypeError(f"v must have an integer dtype, got {v.dtype}")
    if bits == 64:
        return v.astype(np.uint64).view(np.int64) if v.dtype.itemsize == 8 else v.astype(np.int64)
    x = v.astype(np.int64)  # wraps uint64 >= 2^63 to negative: same residue mod 2^bits
    np.bitwise_and(x, np.int64(ring_mask(bits)), out=x)
    x -= (x >> np.int64(bits - 1)) << np.int64(bits)
    return x
