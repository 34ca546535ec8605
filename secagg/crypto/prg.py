"""Mask PRG: AES-128-CTR keystream expanded straight into numpy vectors over Z_{2^b}.

A PRG seed is 32 bytes.  ``expand(seed, d, bits)`` is the vector whose ``i``-th
coordinate is the ``i``-th little-endian word (4 bytes for ``bits <= 32``, 8 bytes above)
of the AES-128-CTR keystream with

* key ``seed[:16]`` (AES-128), and
* initial counter block ``seed[16:32]``, incremented as one 128-bit big-endian integer
  modulo 2^128 per 16-byte block (NIST SP 800-38A, the standard incrementing function
  applied to the whole block),

reduced modulo ``2^bits`` (``& (2^bits - 1)``, never a Python-int ``%``).  Keeping the
low ``bits`` bits of a uniform word gives an exactly uniform element of Z_{2^b}.  A mask
of ``d`` words uses ``d * 4 / 16`` (or ``d * 8 / 16``) counter blocks; by the PRP/PRF
switching lemma the keystream of ``q`` blocks is distinguishable from uniform with
advantage at most about ``q^2 / 2^129`` (about 2^-91 for ``d = 10^6`` words of 8 bytes).

Why AES-128 and not AES-256: 128-bit keys give 128-bit security against key search,
ample for a mask that lives for one round, and AES-128 runs 10 rounds instead of 14,
so its keystream costs about a quarter less time; the keystream is most of a round's
cost.  The other 16 bytes of the seed make the starting counter secret and
seed-dependent as well.  (Share encryption, :mod:`secagg.crypto.aead`, stays AES-256-GCM.)

:class:`Masker` adds or subtracts such masks into an accumulator in place.  It keeps a
preallocated keystream buffer (128 KiB, 15 bytes longer than the data because
``update_into`` requires it) and a cached zero input.  :meth:`Masker.add_many` applies
many masks at once **chunk-outer**: for each 128 KiB chunk of the accumulator it runs
every seed's keystream for that chunk and adds it while the accumulator's chunk is
still in cache (one AES-CTR context per seed keeps each stream's position; at most 256
contexts are open at once, longer lists take several passes).  No
allocation proportional to ``d`` and no Python loop over elements; its speed is bounded
by OpenSSL's AES-CTR throughput plus one vector addition per mask.

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

AES-128-CTR keyed by 128 bits of an HKDF output has none of these problems (AES is a
pseudorandom permutation under standard assumptions, 2^128 keys) and is faster than
MT19937 on AES-NI hardware.

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
from secagg.ring import check_bits, check_dim, ring_dtype, ring_mask

__all__ = ["AES_KEY_SIZE", "SEED_SIZE", "Masker", "expand", "keystream", "keystream_at"]

SEED_SIZE = 32
"""PRG seed size in bytes: a 16-byte AES-128 key followed by a 16-byte initial counter block."""

AES_KEY_SIZE = 16
"""AES key size of the mask PRG in bytes (AES-128); the key is ``seed[:AES_KEY_SIZE]``."""

RingArray = npt.NDArray[np.unsignedinteger[Any]]
"""A vector over Z_{2^b}: ``uint32`` for b <= 32, ``uint64`` above (checked at run time)."""

_PAD = 15  # update_into wants an output buffer block_size - 1 bytes longer than the input
_CHUNK_BYTES = 1 << 18  # 256 KiB of keystream per update_into in expand() (and secagg.encoding)
_MASK_CHUNK_BYTES = 1 << 17  # Masker: 128 KiB of the accumulator per chunk (measured best for 21 masks)
_MAX_STREAMS = 256  # Masker.add_many: AES-CTR contexts open at once (bounds memory for huge mask lists)
_LITTLE = sys.byteorder == "little"
_ZEROS = np.zeros(_CHUNK_BYTES, dtype=np.uint8)
_ZEROS.flags.writeable = False
_ZEROS_MV = _ZEROS.data


def _seed(seed: object) -> bytes:
    if not isinstance(seed, (bytes, bytearray, memoryview)):
        raise SecAggTypeError(f"seed must be bytes, got {type(seed).__name__}")
    raw = bytes(seed)
    if len(raw) != SEED_SIZE:
        raise SecAggValueError(
            f"seed must be {SEED_SIZE} bytes (AES-128 key and initial counter block), got {len(raw)}"
        )
    return raw


def keystream(seed: bytes) -> CipherContext:
    """The mask PRG's raw keystream for a 32-byte ``seed``: an AES-128-CTR encryptor with
    key ``seed[:16]`` and initial counter block ``seed[16:32]``.  Encrypting zero bytes
    with it yields the keystream that :func:`expand` reads as words (benchmarks time this
    exact cipher as the hardware bound of masking).

    Raises:
        SecAggTypeError, SecAggValueError: ``seed`` is not 32 bytes.
    """
    key = _seed(seed)
    return Cipher(algorithms.AES(key[:AES_KEY_SIZE]), modes.CTR(key[AES_KEY_SIZE:])).encryptor()


def keystream_at(seed: bytes, offset: int) -> CipherContext:
    """:func:`keystream` positioned ``offset`` bytes into the stream (AES-CTR is seekable:
    the counter block of byte ``offset`` is the initial counter block plus
    ``offset // 16``, modulo 2^128; the first ``offset % 16`` bytes of that block are
    generated and dropped).  The words of ``expand(seed, d, bits)[start:]`` are the
    keystream from ``offset = start * itemsize``: a coordinate range of a mask costs only
    its own bytes, which is what lets a mask be expanded in parallel pieces or streamed.

    Raises:
        SecAggTypeError, SecAggValueError: ``seed`` is not 32 bytes or ``offset`` is not an
            int >= 0.
    """
    key = _seed(seed)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise SecAggTypeError(f"offset must be an int, got {type(offset).__name__}")
    offset = int(offset)
    if offset < 0:
        raise SecAggValueError(f"offset must be >= 0, got {offset}")
    if offset == 0:
        return keystream(key)
    block, skip = divmod(offset, 16)
    counter = (int.from_bytes(key[AES_KEY_SIZE:], "big") + block) % (1 << 128)
    enc = Cipher(algorithms.AES(key[:AES_KEY_SIZE]), modes.CTR(counter.to_bytes(16, "big"))).encryptor()
    if skip:
        enc.update(bytes(skip))
    return enc


def expand(seed: bytes, d: int, bits: int) -> RingArray:
    """The PRG output: ``d`` uniform elements of Z_{2^bits} from a 32-byte ``seed``.

    Args:
        seed: 32 bytes (AES-128 key, then the initial counter block).
        d: vector length (>= 0).
        bits: ring bit width, 1..64.

    Returns:
        A new array of shape ``(d,)`` and dtype :func:`secagg.ring.ring_dtype` (``bits``),
        values in ``[0, 2^bits)``.
    """
    enc = keystream(seed)
    bits = check_bits(bits)
    d = check_dim(d)
    dtype = ring_dtype(bits)
    n = d * np.dtype(dtype).itemsize
    buf = np.empty(n + _PAD, dtype=np.uint8)
    out_mv = buf.data
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

    One ``Masker`` per vector shape: it owns a 128 KiB keystream buffer reused by every
    call, so :meth:`add` and :meth:`add_many` allocate nothing proportional to ``d``.  Not
    thread-safe (use one per thread).

    Args:
        d: vector length (>= 0).
        bits: ring bit width, 1..64.
    """

    __slots__ = ("_buf_mv", "_chunk", "_item", "_ks", "_mask", "bits", "d", "dtype")

    def __init__(self, d: int, bits: int) -> None:
        self.bits: int = check_bits(bits)
        self.d: int = check_dim(d)
        self.dtype: type[np.uint32] | type[np.uint64] = ring_dtype(self.bits)
        self._item = np.dtype(self.dtype).itemsize
        self._chunk = max(1, min(self.d, _MASK_CHUNK_BYTES // self._item))  # elements per chunk
        nbytes = self._chunk * self._item
        buf = np.empty(nbytes + _PAD, dtype=np.uint8)
        self._buf_mv = buf.data
        self._ks = cast(RingArray, buf[:nbytes].view(self.dtype))
        self._mask = None if self.bits in (32, 64) else self.dtype(ring_mask(self.bits))

    def __repr__(self) -> str:
        return f"Masker(d={self.d}, bits={self.bits})"

    def _check_start(self, start: object, acc: RingArray) -> int:
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
            raise SecAggTypeError(f"start must be an int, got {type(start).__name__}")
        first = int(start)
        if first < 0 or first + acc.shape[0] > self.d:
            raise SecAggValueError(
                f"coordinates [{first}, {first + acc.shape[0]}) are outside the vector of length {self.d}"
            )
        return first

    def _check_acc(self, acc: object, whole: bool = True) -> RingArray:
        if not isinstance(acc, np.ndarray):
            raise SecAggTypeError(f"acc must be a numpy array, got {type(acc).__name__}")
        if acc.dtype != self.dtype:
            raise SecAggTypeError(
                f"acc must have dtype {np.dtype(self.dtype).name} for {self.bits}-bit masks, got {acc.dtype}"
            )
        if (whole and acc.shape != (self.d,)) or acc.ndim != 1:
            raise SecAggValueError(f"acc must have shape ({self.d},), got {acc.shape}")
        if not acc.flags.writeable:
            raise SecAggValueError("acc is read-only; pass a writeable array (for example acc.copy())")
        return acc

    @staticmethod
    def _check_sign(sign: object) -> int:
        if isinstance(sign, bool) or not isinstance(sign, (int, np.integer)) or int(sign) not in (1, -1):
            raise SecAggValueError(f"sign must be +1 or -1, got {sign!r}")
        return int(sign)

    @classmethod
    def _check_masks(cls, masks: object) -> list[tuple[bytes, int]]:
        if isinstance(masks, (bytes, bytearray, memoryview, str)) or not isinstance(masks, Iterable):
            raise SecAggTypeError(f"masks must be an iterable of (seed, sign) pairs, got {type(masks).__name__}")
        out = []
        for item in masks:
            if not isinstance(item, tuple) or len(item) != 2:
                raise SecAggTypeError(f"each mask must be a (seed, sign) tuple, got {item!r:.60}")
            out.append((_seed(item[0]), cls._check_sign(item[1])))
        return out

    def add(self, acc: npt.NDArray[Any], seed: bytes, sign: int = 1) -> None:
        """``acc <- acc + sign * expand(seed, d, bits)  (mod 2^bits)``, in place.

        The one-mask case of :meth:`add_many`.

        Args:
            acc: writeable array of shape ``(d,)`` and dtype ``ring_dtype(bits)``.
            seed: 32-byte PRG seed.
            sign: ``+1`` to add the mask, ``-1`` to subtract it.

        Raises:
            SecAggTypeError / SecAggValueError: bad ``acc``, ``seed`` or ``sign``; ``acc``
                is then unchanged.
        """
        self.add_many(acc, ((seed, sign),))

    def add_many(self, acc: npt.NDArray[Any], masks: Iterable[tuple[bytes, int]], *, start: int | None = None) -> None:
        """``acc <- acc + sum of sign * expand(seed, d, bits)  (mod 2^bits)`` over the
        ``(seed, sign)`` pairs of ``masks``, in place.

        With ``start``, ``acc`` is a piece of the vector: its ``m`` values are coordinates
        ``start .. start + m - 1``, and only those coordinates of each mask are generated
        (seeking the AES-CTR stream, :func:`keystream_at`).  Applying the masks to the
        pieces of a vector, in any order or in different processes, gives exactly the
        whole-vector result (streaming, parallel expansion).

        Works chunk-outer: for each 128 KiB chunk of ``acc``, every mask's keystream for
        that chunk is generated into the shared buffer and added while the chunk is in
        cache; the result equals applying the masks one after the other.

        Args:
            acc: writeable array of shape ``(d,)`` (or ``(m,)`` with ``start``) and dtype
                ``ring_dtype(bits)``.
            masks: ``(seed, sign)`` pairs: 32-byte PRG seeds, signs ``+1`` or ``-1``.
            start: None (``acc`` is the whole vector) or the coordinate of ``acc[0]``,
                with ``start + m <= d``.

        Raises:
            SecAggTypeError / SecAggValueError: bad ``acc``, ``start``, a bad seed or sign;
                every entry is validated before ``acc`` is touched, so ``acc`` is then
                unchanged.
        """
        a = self._check_acc(acc, whole=start is None)
        first = 0 if start is None else self._check_start(start, a)
        checked = self._check_masks(masks)
        for i in range(0, len(checked), _MAX_STREAMS):
            self._apply(a, checked[i : i + _MAX_STREAMS], first)

    def _apply(self, acc: RingArray, masks: list[tuple[bytes, int]], first: int = 0) -> None:
        """One chunk-outer pass of validated masks over ``acc`` (coordinates ``first ..``)."""
        offset = first * self._item
        streams = [(keystream_at(seed, offset), np.add if sign > 0 else np.subtract) for seed, sign in masks]
        item, chunk, ks, buf_mv, mask, d = self._item, self._chunk, self._ks, self._buf_mv, self._mask, acc.shape[0]
        for start in range(0, d, chunk):
            m = min(chunk, d - start)
            nbytes = m * item
            zeros, out = _ZEROS_MV[:nbytes], buf_mv[: nbytes + _PAD]
            k = ks[:m]
            part = acc[start : start + m]
            for enc, op in streams:
                enc.update_into(zeros, out)
                if not _LITTLE:
                    k.byteswap(inplace=True)
                op(part, k, out=part)  # wraps mod 2^32 / 2^64, a multiple of 2^bits
            if mask is not None:
                np.bitwise_and(part, mask, out=part)
