"""Mask PRG: AES-256-CTR keystream expanded straight into numpy vectors over Z_{2^b}.

``expand(seed, d, bits)`` is the vector whose ``i``-th coordinate is the ``i``-th
little-endian word (4 bytes for ``bits <= 32``, 8 bytes above) of the AES-256-CTR
keystream keyed by the 32-byte ``seed`` with an all-zero 16-byte initial counter block,
reduced modulo ``2^bits`` (``& (2^bits - 1)``, never a Python-int ``%``).  Keeping the
low ``bits`` bits of a uniform word gives an exactly uniform element of Z_{2^b}.

:class:`Masker` adds or subtracts such masks into an accumulator in place.  It keeps a
preallocated keystream buffer (256 KiB, 15 bytes longer than the data because
``update_into`` requires it) and a cached zero input, and works chunk by chunk so the
keystream is added while it is still in cache: no allocation proportional to ``d`` and
no Python loop over elements.  Its speed is bounded by OpenSSL's AES-CTR throughput.

Why not numpy's generators
--------------------------
Flower's SecAgg+ derives masks with numpy's MT19937 seeded with a 32-bit fold of the
agreed key (flwrlabs/flower#7522).  That is unacceptable for masking:

* MT19937 (and PCG64, Philox as used by numpy) are statistical generators, not
  cryptographic PRGs: nothing guarantees that outputs are indistinguishable from random
  to an adversary who sees masked vectors.
* MT19937's whole 19937-bit state is recovered from 624 consecutive 32-bit outputs by
  linear algebra; a server that learns part of a mask (for example where it knows the
  input) predicts the rest of it and unmasks the coordinates it did not know.
* A 32-bit seed has only 2^32 values: a server brute-forces it in minutes on one core by
  trying seeds until the unmasked vector looks like a model update.

AES-256-CTR keyed by a 256-bit HKDF output has none of these problems (it is a PRF under
standard assumptions, 2^256 keys) and is faster than MT19937 on AES-NI hardware.

Threat assumptions: ``seed`` is a uniformly random 32-byte secret (an output of
:func:`secagg.crypto.keys.derive` or of a secure ``rng``); a seed expands to exactly one
mask per round (the pairwise seed is shared by the two ends of a pair on purpose, so
their masks cancel).  Never derive two different masks from one seed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.ring import check_bits, ring_dtype, ring_mask

__all__ = ["SEED_SIZE", "Masker", "expand"]

SEED_SIZE = 32
"""PRG seed size in bytes (an AES-256 key)."""

RingArray = npt.NDArray[np.unsignedinteger[Any]]
"""A vector over Z_{2^b}: ``uint32`` for b <= 32, ``uint64`` above (checked at run time)."""

_ZERO_COUNTER = bytes(16)
_PAD = 15  # update_into wants an output buffer block_size - 1 bytes longer than the input
_CHUNK_BYTES = 1 << 18  # 256 KiB of keystream per update_into: stays in L2 while it is added
_LITTLE = sys.byteorder == "little"
_ZEROS = np.zeros(_CHUNK_BYTES, dtype=np.uint8)
_ZEROS.flags.writeable = False
_ZEROS_MV = _ZEROS.data


def _seed(seed: object) -> bytes:
    if not isinstance(seed, (bytes, bytearray, memoryview)):
        raise SecAggTypeError(f"seed must be bytes, got {type(seed).__name__}")
    raw = bytes(seed)
    if len(raw) != SEED_SIZE:
        raise SecAggValueError(f"seed must be {SEED_SIZE} bytes (an AES-256 key), got {len(raw)}")
    return raw


def _dim(d: object) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise SecAggTypeError(f"d must be an int, got {type(d).__name__}")
    if int(d) < 0:
        raise SecAggValueError(f"d must be >= 0, got {d}")
    return int(d)


def _keystream(seed: bytes) -> CipherContext:
    return Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()


def expand(seed: bytes, d: int, bits: int) -> RingArray:
    """The PRG output: ``d`` uniform elements of Z_{2^bits} from a 32-byte ``seed``.

    Args:
        seed: 32-byte AES-256 key.
        d: vector length (>= 0).
        bits: ring bit width, 1..64.

    Returns:
        A new array of shape ``(d,)`` and dtype :func:`secagg.ring.ring_dtype` (``bits``),
        values in ``[0, 2^bits)``.
    """
    key = _seed(seed)
    bits = check_bits(bits)
    d = _dim(d)
    dtype = ring_dtype(bits)
    item = np.dtype(dtype).itemsize
    n = d * item
    buf = np.empty(n + _PAD, dtype=np.uint8)
    out_mv = buf.data
    enc = _keystream(key)
    for start in range(0, n, _CHUNK_BYTES):
        m = min(_CHUNK_BYTES, n - start)
        enc.update_into(_ZEROS_MV[:m], out_mv[start : start + m + _PAD])
    out = cast(RingArray, buf[:n].view(dtype))
    if not _LITTLE:
        out.byteswap(inplace=True)
    if bits not in (32, 64):
        np.bitwise_and(out, dtype(ring_mask(bits)), out=out)
    return out


class Masker:
    """Adds PRG masks into accumulators of shape ``(d,)`` over Z_{2^bits}, in place.

    One ``Masker`` per vector shape: it owns a 256 KiB keystream buffer reused by every
    call, so :meth:`add` allocates nothing proportional to ``d``.  Not thread-safe (use
    one per thread).

    Args:
        d: vector length (>= 0).
        bits: ring bit width, 1..64.
    """

    __slots__ = ("_buf", "_buf_mv", "_chunk", "_item", "_ks", "_mask", "bits", "d", "dtype")

    def __init__(self, d: int, bits: int) -> None:
        self.bits: int = check_bits(bits)
        self.d: int = _dim(d)
        self.dtype: type[np.uint32] | type[np.uint64] = ring_dtype(self.bits)
        self._item = np.dtype(self.dtype).itemsize
        self._chunk = max(1, min(self.d, _CHUNK_BYTES // self._item))  # elements per chunk
        nbytes = self._chunk * self._item
        self._buf = np.empty(nbytes + _PAD, dtype=np.uint8)
        self._buf_mv = self._buf.data
        self._ks = cast(RingArray, self._buf[:nbytes].view(self.dtype))
        self._mask = None if self.bits in (32, 64) else self.dtype(ring_mask(self.bits))

    def __repr__(self) -> str:
        return f"Masker(d={self.d}, bits={self.bits})"

    def _check_acc(self, acc: object) -> RingArray:
        if not isinstance(acc, np.ndarray):
            raise SecAggTypeError(f"acc must be a numpy array, got {type(acc).__name__}")
        if acc.dtype != self.dtype:
            raise SecAggTypeError(
                f"acc must have dtype {np.dtype(self.dtype).name} for {self.bits}-bit masks, got {acc.dtype}"
            )
        if acc.shape != (self.d,):
            raise SecAggValueError(f"acc must have shape ({self.d},), got {acc.shape}")
        if not acc.flags.writeable:
            raise SecAggValueError("acc is read-only; pass a writeable array (for example acc.copy())")
        return acc

    @staticmethod
    def _check_sign(sign: object) -> int:
        if isinstance(sign, bool) or not isinstance(sign, (int, np.integer)) or int(sign) not in (1, -1):
            raise SecAggValueError(f"sign must be +1 or -1, got {sign!r}")
        return int(sign)

    def _apply(self, acc: RingArray, key: bytes, sign: int) -> None:
        enc = _keystream(key)
        item, chunk, ks, buf_mv, mask = self._item, self._chunk, self._ks, self._buf_mv, self._mask
        op = np.add if sign > 0 else np.subtract
        for start in range(0, self.d, chunk):
            m = min(chunk, self.d - start)
            enc.update_into(_ZEROS_MV[: m * item], buf_mv[: m * item + _PAD])
            k = ks[:m]
            if not _LITTLE:
                k.byteswap(inplace=True)
            a = acc[start : start + m]
            op(a, k, out=a)
            if mask is not None:
                np.bitwise_and(a, mask, out=a)

    def add(self, acc: npt.NDArray[Any], seed: bytes, sign: int = 1) -> None:
        """``acc <- acc + sign * expand(seed, d, bits)  (mod 2^bits)``, in place.

        Args:
            acc: writeable array of shape ``(d,)`` and dtype ``ring_dtype(bits)``.
            seed: 32-byte PRG seed.
            sign: ``+1`` to add the mask, ``-1`` to subtract it.

        Raises:
            SecAggTypeError / SecAggValueError: bad ``acc``, ``seed`` or ``sign``; ``acc``
                is then unchanged.
        """
        a = self._check_acc(acc)
        key = _seed(seed)
        s = self._check_sign(sign)
        self._apply(a, key, s)

    def add_many(self, acc: npt.NDArray[Any], masks: Iterable[tuple[bytes, int]]) -> None:
        """Apply several ``(seed, sign)`` masks to ``acc`` in place.

        Every seed and sign is validated before ``acc`` is touched, so a bad entry leaves
        ``acc`` unchanged.
        """
        a = self._check_acc(acc)
        checked = [(_seed(seed), self._check_sign(sign)) for seed, sign in masks]
        for key, s in checked:
            self._apply(a, key, s)
