"""Injectable randomness (the one implementation; :mod:`secagg.rand` re-exports it).

Every function in :mod:`dp` and :mod:`secagg` that needs randomness takes an ``rng``
argument accepted by :func:`as_random_source`:

* ``None`` (the default): a fresh :class:`RandomSource` keyed from ``os.urandom`` —
  cryptographically secure;
* ``bytes`` or ``int``: a deterministic :class:`RandomSource` derived from that seed, so
  known-answer tests can replay exact transcripts (never use a guessable seed in
  production);
* a :class:`RandomSource`; or a :class:`numpy.random.Generator` (for statistics only:
  numpy's generators are not cryptographic).

:class:`RandomSource` is an AES-256-CTR keystream (OpenSSL through ``cryptography``),
written straight into preallocated numpy buffers.

This module lives in :mod:`dp`, the lower layer, so that ``import dp`` loads no
:mod:`secagg` module; it raises :class:`~dp.errors.DPTypeError` /
:class:`~dp.errors.DPValueError` (subclasses of ``TypeError`` / ``ValueError``).
:mod:`secagg.rand` re-exports :class:`RandomSource` and :data:`RngLike` as the very same
objects and wraps :func:`as_random_source` so that callers of :mod:`secagg` see
:mod:`secagg.errors` types.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dp._validate import check_int
from dp.errors import DPTypeError, DPValueError

__all__ = ["MAX_BYTES", "RandomSource", "RngLike", "as_random_source"]

#: Largest single :meth:`RandomSource.bytes` request (1 TiB); more is a caller bug.
MAX_BYTES = 1 << 40

_ZERO_NONCE = bytes(16)
_BLOCK = 16


class RandomSource:
    """Cryptographically secure random source (AES-256-CTR keystream).

    ``seed=None`` keys it from ``os.urandom(32)``; a ``bytes``/``int`` seed gives a
    reproducible stream (for tests and known-answer vectors).

    Raises:
        DPTypeError: ``seed`` is a bool or not bytes/int/None.
        DPValueError: an int ``seed`` is negative.
    """

    def __init__(self, seed: bytes | int | None = None) -> None:
        if seed is None:
            key = os.urandom(32)
        elif isinstance(seed, bool):
            raise DPTypeError("seed must be bytes, int or None, not bool")
        elif isinstance(seed, int):
            if seed < 0:
                raise DPValueError("an int seed must be >= 0")
            key = hashlib.sha256(b"secagg/rand/v1/int" + seed.to_bytes((seed.bit_length() + 8) // 8, "big")).digest()
        elif isinstance(seed, (bytes, bytearray)):
            key = hashlib.sha256(b"secagg/rand/v1/bytes" + bytes(seed)).digest()
        else:
            raise DPTypeError(f"seed must be bytes, int or None, got {type(seed).__name__}")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()

    def fill(self, out: npt.NDArray[np.generic]) -> None:
        """Overwrite the C-contiguous array ``out`` with random bytes, in place."""
        if not out.flags.c_contiguous:
            raise DPValueError("fill needs a C-contiguous array")
        view = out.reshape(-1).view(np.uint8)
        if view.size == 0:
            return
        # update_into needs an output buffer block_size - 1 bytes longer than the input.
        src = np.zeros(view.size, dtype=np.uint8)
        dst = np.empty(view.size + _BLOCK - 1, dtype=np.uint8)
        self._enc.update_into(memoryview(src), memoryview(dst))  # type: ignore[arg-type]
        view[:] = dst[: view.size]

    def bytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        return self._enc.update(bytes(check_int("n", n, low=0, high=MAX_BYTES)))

    def uint64(self, size: int | tuple[int, ...]) -> npt.NDArray[np.uint64]:
        """Uniform ``uint64`` values of the given shape."""
        out = np.empty(size, dtype=np.uint64)
        self.fill(out)
        return out

    def random(self, size: int | tuple[int, ...]) -> npt.NDArray[np.float64]:
        """Uniform floats in [0, 1) with 53 random bits each."""
        return (self.uint64(size) >> np.uint64(11)).astype(np.float64) * (2.0**-53)

    def integers(self, high: int, size: int | tuple[int, ...]) -> npt.NDArray[np.int64]:
        """Exactly uniform integers in ``[0, high)``, ``1 <= high <= 2**62`` (rejection
        sampling on the smallest covering power of two, so no modulo bias)."""
        high = check_int("high", high, low=1, high=1 << 62)
        n = int(np.prod(size, dtype=np.int64)) if isinstance(size, tuple) else int(size)
        nbits = max(1, (high - 1).bit_length())
        mask = np.uint64((1 << nbits) - 1)
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            want = n - filled
            draw = self.uint64(want + want // 2 + 8) & mask
            ok = draw[draw < np.uint64(high)][:want]
            out[filled : filled + ok.size] = ok.astype(np.int64)
            filled += ok.size
        return out.reshape(size)


class _NumpySource(RandomSource):
    """Adapter: a numpy ``Generator`` behind the :class:`RandomSource` interface."""

    def __init__(self, gen: np.random.Generator) -> None:
        self._gen = gen

    def fill(self, out: npt.NDArray[np.generic]) -> None:
        if not out.flags.c_contiguous:
            raise DPValueError("fill needs a C-contiguous array")
        view = out.reshape(-1).view(np.uint8)
        view[:] = np.frombuffer(self._gen.bytes(view.size), dtype=np.uint8)

    def bytes(self, n: int) -> bytes:
        return self._gen.bytes(check_int("n", n, low=0, high=MAX_BYTES))


RngLike = RandomSource | np.random.Generator | bytes | int | None


def as_random_source(rng: RngLike) -> RandomSource:
    """Normalise an ``rng`` argument (see the module docstring) to a :class:`RandomSource`.

    Raises:
        DPTypeError: ``rng`` is none of the accepted kinds (or a bool seed).
        DPValueError: an int seed is negative.
    """
    if isinstance(rng, RandomSource):
        return rng
    if isinstance(rng, np.random.Generator):
        return _NumpySource(rng)
    if rng is None or isinstance(rng, (bytes, bytearray, int)):
        return RandomSource(rng)
    raise DPTypeError(
        f"rng must be None, a seed (bytes/int), a RandomSource or a numpy Generator; got {type(rng).__name__}"
    )
