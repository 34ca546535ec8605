"""Bit-packing of vectors of ``b``-bit values (1 <= b <= 64) into exactly ceil(d*b/8) bytes.

Wire format (byte-planar, little-endian).  Write ``b = w_1 + w_2 + ... + w_k + r`` where
the ``w_j`` are taken greedily from {64, 32, 16, 8} (64 only when ``b = 64``) and
``0 <= r < 8``.  The packed string is the concatenation, from the least significant
bits up, of

* for each ``w_j``: the ``d`` values' bits ``[o_j, o_j + w_j)`` as ``d`` contiguous
  little-endian ``w_j``-bit integers (``o_j`` = sum of the previous widths), then
* if ``r > 0``: the ``d`` values' top ``r`` bits as one LSB-first bit stream (value ``i``
  occupies stream bits ``[i*r, (i+1)*r)``, stream bit ``t`` is bit ``t mod 8`` of byte
  ``t // 8``), padded with zero bits to a whole byte.

So ``b = 20`` is 2 bytes (low 16 bits) plus half a byte (top 4 bits) per value, i.e.
2.5 bytes a value, and for ``b`` in {8, 16, 32, 64} the packed string is exactly the
little-endian array (a zero-copy view on unpacking).  The total is
``packed_size(d, b) = ceil(d * b / 8)`` bytes: only the last byte can hold padding, and
:func:`unpack` rejects non-zero padding bits as well as any length mismatch with
:class:`~secagg.errors.MessageError`.  Every plane is handled with a few whole-array
numpy operations (no Python loop over elements).
"""

from __future__ import annotations

import sys
from math import gcd
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from secagg.errors import MessageError, SecAggTypeError, SecAggValueError
from secagg.ring import check_bits, check_dim, ring_dtype, ring_mask

__all__ = ["pack", "packed_size", "plane_widths", "unpack"]

RingArray = npt.NDArray[np.unsignedinteger[Any]]
"""A vector over Z_{2^b}: ``uint32`` for b <= 32, ``uint64`` above (checked at run time)."""
_LITTLE = sys.byteorder == "little"
_LE: dict[int, np.dtype[Any]] = {8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4"), 64: np.dtype("<u8")}


def packed_size(d: int, bits: int) -> int:
    """Bytes taken by ``d`` packed ``bits``-bit values: ``ceil(d * bits / 8)``."""
    return (check_dim(d) * check_bits(bits) + 7) // 8


def plane_widths(bits: int) -> tuple[tuple[int, ...], int]:
    """``((w_1, ..., w_k), r)``: the byte-aligned plane widths and the remainder bits of
    the wire format (see the module docstring)."""
    bits = check_bits(bits)
    if bits == 64:
        return (64,), 0
    widths: list[int] = []
    left = bits
    for w in (32, 16, 8):
        if left >= w:
            widths.append(w)
            left -= w
    return tuple(widths), left


def _pack_small(h: npt.NDArray[np.uint8], r: int) -> npt.NDArray[np.uint8]:
    """Pack ``d`` values of ``r`` < 8 bits (in uint8) LSB-first into ceil(d*r/8) bytes."""
    d = h.size
    nbytes = (d * r + 7) // 8
    if r == 1:
        return np.packbits(h, bitorder="little")
    m = 8 // gcd(r, 8)  # values per group; a group is m*r/8 whole bytes (<= 7)
    group_bytes = m * r // 8
    groups = -(-d // m)
    if groups * m != d:
        padded = np.zeros(groups * m, dtype=np.uint8)
        padded[:d] = h
        h = padded
    cols = h.reshape(groups, m)
    if group_bytes == 1:  # r in {2, 4}: whole groups fit one byte
        acc8 = cols[:, 0].copy()
        for k in range(1, m):
            acc8 |= cols[:, k] << np.uint8(k * r)
        return acc8[:nbytes]
    acc = cols[:, 0].astype(np.uint64)
    for k in range(1, m):
        acc |= cols[:, k].astype(np.uint64) << np.uint64(k * r)
    if not _LITTLE:
        acc = acc.astype("<u8")
    return acc.view(np.uint8).reshape(groups, 8)[:, :group_bytes].reshape(-1)[:nbytes]


def _unpack_small(p: npt.NDArray[np.uint8], r: int, d: int) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`_pack_small` (``p`` has exactly ceil(d*r/8) bytes)."""
    if r == 1:
        return np.unpackbits(p, count=d, bitorder="little")
    m = 8 // gcd(r, 8)
    group_bytes = m * r // 8
    groups = -(-d // m)
    small_mask = np.uint8((1 << r) - 1)
    out = np.empty((groups, m), dtype=np.uint8)
    if group_bytes == 1:
        full = np.zeros(groups, dtype=np.uint8)
        full[: p.size] = p
        for k in range(m):
            np.bitwise_and(full >> np.uint8(k * r), small_mask, out=out[:, k])
        return out.reshape(-1)[:d]
    raw = np.zeros((groups, 8), dtype=np.uint8)
    flat = np.zeros(groups * group_bytes, dtype=np.uint8)
    flat[: p.size] = p
    raw[:, :group_bytes] = flat.reshape(groups, group_bytes)
    words = raw.reshape(-1).view("<u8")
    for k in range(m):
        np.bitwise_and(words >> np.uint64(k * r), np.uint64(small_mask), out=out[:, k], casting="unsafe")
    return out.reshape(-1)[:d]


def _as_values(values: object, bits: int) -> npt.NDArray[np.integer]:
    if not isinstance(values, np.ndarray):
        raise SecAggTypeError(f"values must be a numpy array, got {type(values).__name__}")
    if values.dtype.kind not in "ui":
        raise SecAggTypeError(f"values must have an integer dtype, got {values.dtype}")
    if values.ndim != 1:
        raise SecAggValueError(f"values must be one-dimensional, got shape {values.shape}")
    if values.size:
        if values.dtype.kind == "i" and int(values.min()) < 0:
            raise SecAggValueError(f"values must be in [0, 2**{bits}), found a negative value")
        if values.dtype.itemsize * 8 > bits and int(values.max()) > ring_mask(bits):
            raise SecAggValueError(
                f"values must be in [0, 2**{bits}); reduce them modulo 2**{bits} first (secagg.ring.reduce_inplace)"
            )
    return values


def pack(values: npt.NDArray[Any], bits: int) -> bytes:
    """Pack a 1-D integer array of values in ``[0, 2^bits)`` into ``packed_size(d, bits)`` bytes.

    Raises:
        SecAggTypeError: ``values`` is not an integer numpy array.
        SecAggValueError: ``values`` is not 1-D or holds a value outside ``[0, 2^bits)``.
    """
    bits = check_bits(bits)
    v = _as_values(values, bits)
    d = v.size
    widths, r = plane_widths(bits)
    if not r and len(widths) == 1:  # 8, 16, 32, 64 bits: the little-endian array itself
        return bytes(np.ascontiguousarray(v, dtype=_LE[bits]).tobytes())
    out = np.empty(packed_size(d, bits), dtype=np.uint8)
    pos = 0
    offset = 0
    work: npt.NDArray[Any] = np.asarray(v, dtype=ring_dtype(bits))  # no copy for ring arrays
    for w in widths:
        nb = d * w // 8
        plane = out[pos : pos + nb].view(_LE[w])
        if offset == 0:
            np.copyto(plane, work, casting="unsafe")  # keeps the low w bits
        else:
            np.copyto(plane, work >> work.dtype.type(offset), casting="unsafe")
        pos += nb
        offset += w
    if r:
        high = (work >> work.dtype.type(offset)).astype(np.uint8) if offset else work.astype(np.uint8)
        out[pos:] = _pack_small(high, r)
    return bytes(out.tobytes())


def unpack(data: bytes | bytearray | memoryview, bits: int, d: int, *, copy: bool = False) -> RingArray:
    """Inverse of :func:`pack`: ``d`` values of ``bits`` bits as a ``ring_dtype(bits)`` array.

    Args:
        data: exactly ``packed_size(d, bits)`` bytes: ``bytes``, ``bytearray`` or a
            C-contiguous ``memoryview`` (of any item format; its bytes are read, for
            example a payload view into a received message, without a copy).
        bits: value width, 1..64.
        d: number of values.
        copy: return a fresh writeable array.  By default the result is read-only; for
            ``bits`` in {32, 64} it is then a zero-copy view of ``data`` (keep ``data``
            alive and unmodified while using it).

    Raises:
        SecAggTypeError: ``data`` is not bytes-like.
        MessageError: ``data`` has the wrong length or non-zero padding bits, or is a
            non-contiguous memoryview.
    """
    bits = check_bits(bits)
    d = check_dim(d)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SecAggTypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")
    if isinstance(data, memoryview) and (data.ndim != 1 or data.itemsize != 1):
        if not data.c_contiguous:
            raise MessageError("packed vector memoryview is not contiguous; pass bytes(view)")
        data = data.cast("B")
    expected = packed_size(d, bits)
    if len(data) != expected:
        raise MessageError(f"packed vector has {len(data)} bytes, expected {expected} for d={d} values of {bits} bits")
    raw = np.frombuffer(data, dtype=np.uint8)
    widths, r = plane_widths(bits)
    dtype: Any = ring_dtype(bits)
    if r:
        tail_bits = (d * r) % 8
        if tail_bits and int(raw[-1]) >> tail_bits:
            raise MessageError("packed vector has non-zero padding bits in its last byte")
    out: npt.NDArray[Any]
    if not r and len(widths) == 1 and _LE[widths[0]].itemsize == np.dtype(dtype).itemsize and _LITTLE:
        out = raw.view(dtype)  # zero-copy: 32 or 64 bits
        if copy:
            return cast(RingArray, out.copy())
    else:
        out = np.empty(d, dtype=dtype)
        pos = 0
        offset = 0
        for w in widths:
            nb = d * w // 8
            plane = raw[pos : pos + nb].view(_LE[w])
            if offset == 0:
                np.copyto(out, plane, casting="unsafe")
            else:
                out |= plane.astype(dtype) << dtype(offset)
            pos += nb
            offset += w
        if r:
            high = _unpack_small(raw[pos:], r, d)
            if offset == 0:
                np.copyto(out, high, casting="unsafe")
            else:
                out |= high.astype(dtype) << dtype(offset)
        if copy:
            return cast(RingArray, out)
    out.flags.writeable = False
    return cast(RingArray, out)
