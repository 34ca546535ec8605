"""Shamir t-of-m secret sharing over the prime field GF(p), p = 2^31 - 1, vectorised with numpy.

A secret of ``L`` bytes (1 <= L <= 65535; the protocol shares 32-byte keys and seeds) is
read as the little-endian integer ``s = int.from_bytes(secret, "little")`` and cut into
``ceil(8 L / 30)`` chunks of 30 bits (each below p).  Every chunk is shared with its own
independent polynomial of degree ``t - 1`` whose other coefficients are uniform in
[0, p), so any ``t - 1`` shares are independent of the secret (information-theoretic
security, whatever the field size).  A 32-byte secret becomes 9 chunks and a share
value of 38 bytes.

Speed: sharing evaluates all polynomials at all points with one modular matrix product
(a cached Vandermonde matrix; float64 BLAS on exact 11-bit limbs when large), and
reconstruction from exactly ``t`` shares is one dot product with Lagrange coefficients
at 0 that are cached per set of x-coordinates.  Given more than ``t`` shares,
:func:`reconstruct` interpolates all of them, checks that the polynomial has degree
below ``t`` and otherwise runs Gao's error-correcting decoder (Reed-Solomon unique
decoding), naming the bad shares when at most ``(m - t) // 2`` of the ``m`` are bad.

Share value layout (``Share.value``): secret length ``L`` as 2 bytes big-endian, then
the ``ceil(8 L / 30)`` field elements as 4-byte big-endian unsigned integers below p.
Wire layout (:meth:`Share.to_bytes`): version byte ``0x01``, ``x`` as 4 bytes big-endian,
then the value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from secagg.errors import InconsistentSharesError, SecAggTypeError, SecAggValueError, ShareError
from secagg.rand import RngLike, as_random_source

__all__ = [
    "CHUNK_BITS",
    "MAX_CHECKED_SHARES",
    "MAX_SECRET_BYTES",
    "PRIME",
    "SHARE_VERSION",
    "Reconstruction",
    "Share",
    "combine",
    "reconstruct",
    "share_value_size",
    "split",
    "split_many",
]

PRIME = (1 << 31) - 1
"""The field modulus p = 2^31 - 1 (a Mersenne prime).  x-coordinates live in [1, p)."""
CHUNK_BITS = 30
"""Bits of secret carried by one field element (2^30 < p)."""
MAX_SECRET_BYTES = 0xFFFF
"""Longest secret :func:`split` accepts (its length is stored in 2 bytes)."""
SHARE_VERSION = 1
"""Version byte at the start of :meth:`Share.to_bytes`."""
MAX_CHECKED_SHARES = 2048
"""Most shares :func:`reconstruct` checks in one call (the check builds an m x m table)."""

_P = np.int64(PRIME)
_CHUNK_MASK = (1 << CHUNK_BITS) - 1
_HEADER = 2  # secret length, 2 bytes big-endian
_WIRE_HEADER = 5  # version byte + x (4 bytes big-endian)
_SMALL_PRODUCT = 1 << 15  # below this many multiply-adds, broadcast in int64 instead of BLAS
_LIMB_BITS = 11
_LIMB_MASK = np.int64((1 << _LIMB_BITS) - 1)
_MAX_INNER = 2048  # 2048 * (2^11 - 1) * (2^31 - 1) < 2^53: float64 dot products stay exact
_PY_CHUNKS_MAX = 64  # secrets of at most this many chunks are converted with Python ints

I64 = npt.NDArray[np.int64]


def _n_chunks(length: int) -> int:
    return (8 * length + CHUNK_BITS - 1) // CHUNK_BITS


def share_value_size(secret_length: int) -> int:
    """Bytes of :attr:`Share.value` for a secret of ``secret_length`` bytes (2 + 4 per chunk)."""
    if isinstance(secret_length, bool) or not isinstance(secret_length, int):
        raise SecAggTypeError(f"secret_length must be an int, got {type(secret_length).__name__}")
    if not 1 <= secret_length <= MAX_SECRET_BYTES:
        raise SecAggValueError(f"secret_length must be in [1, {MAX_SECRET_BYTES}], got {secret_length}")
    return _HEADER + 4 * _n_chunks(secret_length)


def _check_x(x: object, what: str = "x") -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise SecAggTypeError(f"{what} must be an int, got {type(x).__name__}")
    xi = int(x)
    if not 1 <= xi < PRIME:
        raise ShareError(f"{what} must be in [1, 2^31 - 1), got {xi}; use client ids >= 1 as x-coordinates")
    return xi


@dataclass(frozen=True)
class Share:
    """One Shamir share: the x-coordinate (a client id, 1 <= x < 2^31 - 1) and the value bytes.

    The value holds the evaluations of every chunk polynomial at ``x`` (layout in the module
    docstring).  Construction validates the layout, so a ``Share`` object is always
    well-formed; the value is kept out of ``repr`` because shares are secret material.
    """

    x: int
    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", _check_x(self.x))
        value = self.value
        if isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
            object.__setattr__(self, "value", value)
        if not isinstance(value, bytes):
            raise SecAggTypeError(f"Share.value must be bytes, got {type(value).__name__}")
        if len(value) < _HEADER + 4:
            raise ShareError(f"share value of {len(value)} bytes is too short; it needs a length and 4-byte elements")
        length = (value[0] << 8) | value[1]
        if length == 0:
            raise ShareError("share value declares a secret of 0 bytes; secrets have at least 1 byte")
        n = _n_chunks(length)
        if len(value) != _HEADER + 4 * n:
            raise ShareError(
                f"share value of {len(value)} bytes does not match its declared {length}-byte secret "
                f"(expected {_HEADER + 4 * n} bytes)"
            )
        if max(struct.unpack_from(f">{n}I", value, _HEADER)) >= PRIME:
            raise ShareError("share value holds a field element >= 2^31 - 1; the share is corrupted")

    @property
    def secret_length(self) -> int:
        """Length in bytes of the shared secret."""
        return (self.value[0] << 8) | self.value[1]

    def to_bytes(self) -> bytes:
        """Canonical encoding: version byte, ``x`` (4 bytes big-endian), value."""
        return bytes((SHARE_VERSION,)) + self.x.to_bytes(4, "big") + self.value

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Share:
        """Decode :meth:`to_bytes` output; :class:`ShareError` on any malformed input."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SecAggTypeError(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _WIRE_HEADER + _HEADER + 4:
            raise ShareError(f"encoded share of {len(data)} bytes is truncated")
        if data[0] != SHARE_VERSION:
            raise ShareError(f"unknown share encoding version {data[0]} (this library reads {SHARE_VERSION})")
        return cls(int.from_bytes(data[1:_WIRE_HEADER], "big"), data[_WIRE_HEADER:])


@dataclass(frozen=True)
class Reconstruction:
    """Result of :func:`reconstruct`: the secret and the x-coordinates of shares found bad.

    ``bad`` is empty when every given share was consistent.  The secret is kept out of ``repr``.
    """

    secret: bytes = field(repr=False)
    bad: tuple[int, ...]


# --------------------------------------------------------------------------- chunking


def _secret_to_chunks(secret: bytes) -> I64:
    n = _n_chunks(len(secret))
    if n <= _PY_CHUNKS_MAX:
        s = int.from_bytes(secret, "little")
        return np.array([(s >> (CHUNK_BITS * j)) & _CHUNK_MASK for j in range(n)], dtype=np.int64)
    bits = np.zeros(n * CHUNK_BITS, dtype=np.int64)
    bits[: 8 * len(secret)] = np.unpackbits(np.frombuffer(secret, dtype=np.uint8), bitorder="little")
    weights = np.int64(1) << np.arange(CHUNK_BITS, dtype=np.int64)
    out: I64 = bits.reshape(n, CHUNK_BITS) @ weights
    return out


def _chunks_to_secret(chunks: I64, length: int) -> bytes | None:
    """Inverse of :func:`_secret_to_chunks`; ``None`` when the chunks encode no valid secret."""
    if chunks.size and int(chunks.max()) > _CHUNK_MASK:
        return None
    if chunks.size <= _PY_CHUNKS_MAX:
        s = 0
        for c in reversed(chunks.tolist()):
            s = (s << CHUNK_BITS) | c
        if s >> (8 * length):
            return None
        return s.to_bytes(length, "little")
    bits = ((chunks[:, None] >> np.arange(CHUNK_BITS, dtype=np.int64)) & 1).astype(np.uint8).reshape(-1)
    if bits[8 * length :].any():
        return None
    return np.packbits(bits[: 8 * length], bitorder="little").tobytes()


# --------------------------------------------------------------------------- field helpers


def _inv_list(values: list[int]) -> list[int]:
    """Modular inverses of nonzero field elements (Montgomery batch trick: one ``pow``)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % PRIME
        inv = inv * values[i] % PRIME
    return out


def _inv_all(values: I64) -> I64:
    """Modular inverses of nonzero field elements, as an int64 array."""
    return np.array(_inv_list(values.tolist()), dtype=np.int64)


def _prod_rows(mat: I64) -> I64:
    """Product mod p along axis 1 (pairwise tree, log2(cols) vector steps)."""
    while mat.shape[1] > 1:
        if mat.shape[1] % 2:
            mat = np.concatenate([mat, np.ones((mat.shape[0], 1), dtype=np.int64)], axis=1)
        mat = (mat[:, 0::2] * mat[:, 1::2]) % _P
    return mat[:, 0].copy()


def _limbs(a: I64) -> tuple[npt.NDArray[np.float64], ...]:
    return (
        (a & _LIMB_MASK).astype(np.float64),
        ((a >> _LIMB_BITS) & _LIMB_MASK).astype(np.float64),
        (a >> (2 * _LIMB_BITS)).astype(np.float64),
    )


def _matmul_mod(a: I64, b: I64, a_limbs: tuple[npt.NDArray[np.float64], ...] | None = None) -> I64:
    """``a @ b mod p`` for int64 matrices with entries in [0, p), exactly.

    Small products broadcast in int64 (each product < 2^62, reduced before summing).  Large
    ones split ``a`` into three 11-bit limbs and use float64 BLAS on blocks of 2048 inner
    terms, where every partial sum is an integer below 2^53 and therefore exact.
    """
    m, inner = a.shape
    n = b.shape[1]
    if m * inner * n <= _SMALL_PRODUCT:
        out: I64 = ((a[:, :, None] * b[None, :, :]) % _P).sum(axis=1) % _P
        return out
    limbs = _limbs(a) if a_limbs is None else a_limbs
    bf = b.astype(np.float64)
    acc = np.zeros((m, n), dtype=np.int64)
    for k0 in range(0, inner, _MAX_INNER):
        bb = bf[k0 : k0 + _MAX_INNER]
        parts = [(limb[:, k0 : k0 + _MAX_INNER] @ bb).astype(np.int64) % _P for limb in limbs]
        acc += (parts[0] + ((parts[1] << _LIMB_BITS) % _P) + ((parts[2] << (2 * _LIMB_BITS)) % _P)) % _P
        acc %= _P
    return acc


class _Vandermonde:
    """Powers ``x_i^j`` mod p for j < t, with lazily computed float limbs for BLAS."""

    def __init__(self, xs: tuple[int, ...], t: int) -> None:
        x = np.array(xs, dtype=np.int64)
        v = np.empty((len(xs), t), dtype=np.int64)
        v[:, 0] = 1
        filled = 1
        while filled < t:
            step = min(filled, t - filled)
            xp = (v[:, filled - 1] * x) % _P  # x^filled
            v[:, filled : filled + step] = (v[:, :step] * xp[:, None]) % _P
            filled += step
        v.flags.writeable = False
        self.v = v
        self._limbs: tuple[npt.NDArray[np.float64], ...] | None = None

    def times(self, coeffs: I64) -> I64:
        if self.v.shape[0] * self.v.shape[1] * coeffs.shape[1] <= _SMALL_PRODUCT:
            return _matmul_mod(self.v, coeffs)
        if self._limbs is None:
            self._limbs = _limbs(self.v)
        return _matmul_mod(self.v, coeffs, self._limbs)


_LARGE_TABLE = 1 << 16  # entries above which a cached table costs megabytes: keep only a few


@lru_cache(maxsize=256)
def _vandermonde_small(xs: tuple[int, ...], t: int) -> _Vandermonde:
    return _Vandermonde(xs, t)


@lru_cache(maxsize=2)
def _vandermonde_large(xs: tuple[int, ...], t: int) -> _Vandermonde:
    return _Vandermonde(xs, t)


def _vandermonde(xs: tuple[int, ...], t: int) -> _Vandermonde:
    """Cached per (x-set, t): a client shares its two secrets with the same holders."""
    if len(xs) * t <= _LARGE_TABLE:
        return _vandermonde_small(xs, t)
    return _vandermonde_large(xs, t)


_PY_LAGRANGE_MAX = 32  # up to this many points, Python ints beat numpy's per-call overhead


@lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> I64:
    """lambda_i = prod_{j != i} x_j / (x_j - x_i) mod p, so f(0) = sum_i lambda_i f(x_i)."""
    numer = 1  # prod_j (-x_j)
    for xj in xs:
        numer = numer * (PRIME - xj) % PRIME
    if len(xs) <= _PY_LAGRANGE_MAX:
        denoms = []  # prod_{j != i}(x_i - x_j) * (-x_i)
        for xi in xs:
            d = PRIME - xi
            for xj in xs:
                if xj != xi:
                    d = d * (xi - xj) % PRIME
            denoms.append(d)
        lam = np.array([numer * v % PRIME for v in _inv_list(denoms)], dtype=np.int64)
    else:
        x = np.array(xs, dtype=np.int64)
        diff = (x[:, None] - x[None, :]) % _P
        np.fill_diagonal(diff, 1)
        denom = (_prod_rows(diff) * ((-x) % _P)) % _P
        lam = (_inv_all(denom) * numer) % _P
    lam.flags.writeable = False
    return lam


class _Basis:
    """Interpolation data for a set of m x-coordinates (used when m > t).

    ``g0`` = prod (X - x_i) (m + 1 coefficients, lowest first); ``qt[j, i]`` = coefficient of
    X^j in g0 / (X - x_i); ``w[i]`` = 1 / prod_{j != i}(x_i - x_j).  The interpolating
    polynomial of values y is then sum_i y_i w_i g0 / (X - x_i).
    """

    def __init__(self, xs: tuple[int, ...]) -> None:
        x = np.array(xs, dtype=np.int64)
        m = x.size
        g0 = _poly_from_roots(x)
        qt = np.empty((m, m), dtype=np.int64)
        qt[m - 1] = 1
        for j in range(m - 1, 0, -1):
            qt[j - 1] = (g0[j] + x * qt[j]) % _P
        diff = (x[:, None] - x[None, :]) % _P
        np.fill_diagonal(diff, 1)
        self.x = x
        self.g0 = g0
        self.q = np.ascontiguousarray(qt.T)  # q[i, j]
        self.w = _inv_all(_prod_rows(diff))
        for arr in (self.x, self.g0, self.q, self.w):
            arr.flags.writeable = False


def _poly_from_roots(x: I64) -> I64:
    """Coefficients (lowest degree first) of prod_i (X - x_i) mod p."""
    g = np.ones(1, dtype=np.int64)
    for xi in x.tolist():
        nxt = np.zeros(g.size + 1, dtype=np.int64)
        nxt[1:] = g  # X * g
        nxt[:-1] -= g * xi  # - x_i * g
        g = nxt % _P
    return g


@lru_cache(maxsize=64)
def _basis_small(xs: tuple[int, ...]) -> _Basis:
    return _Basis(xs)


@lru_cache(maxsize=2)
def _basis_large(xs: tuple[int, ...]) -> _Basis:
    return _Basis(xs)


def _basis(xs: tuple[int, ...]) -> _Basis:
    return _basis_small(xs) if len(xs) ** 2 <= _LARGE_TABLE else _basis_large(xs)


# --------------------------------------------------------------------------- polynomials (Gao)


def _trim(a: I64) -> I64:
    nz = np.flatnonzero(a)
    return a[: nz[-1] + 1] if nz.size else a[:0]


def _deg(a: I64) -> int:
    return a.size - 1  # trimmed polys only; the zero polynomial has degree -1


def _poly_sub(a: I64, b: I64) -> I64:
    n = max(a.size, b.size)
    out = np.zeros(n, dtype=np.int64)
    out[: a.size] = a
    out[: b.size] -= b
    return _trim(out % _P)


def _poly_mul(a: I64, b: I64) -> I64:
    if a.size == 0 or b.size == 0:
        return a[:0]
    if a.size < b.size:
        a, b = b, a
    out = np.zeros(a.size + b.size - 1, dtype=np.int64)
    for i, bi in enumerate(b.tolist()):
        if bi:
            out[i : i + a.size] = (out[i : i + a.size] + a * bi) % _P
    return _trim(out)


def _poly_divmod(a: I64, b: I64) -> tuple[I64, I64]:
    db = _deg(b)
    rem = a.copy()
    if _deg(a) < db:
        return a[:0], _trim(rem)
    inv_lead = pow(int(b[-1]), -1, PRIME)
    q = np.zeros(_deg(a) - db + 1, dtype=np.int64)
    for i in range(_deg(a) - db, -1, -1):
        coef = (int(rem[i + db]) * inv_lead) % PRIME
        if coef:
            q[i] = coef
            rem[i : i + db + 1] = (rem[i : i + db + 1] - b * coef) % _P
    return _trim(q), _trim(rem[: max(db, 0)])


def _poly_eval(f: I64, x: I64) -> I64:
    acc = np.zeros(x.size, dtype=np.int64)
    for c in f[::-1].tolist():
        acc = (acc * x + c) % _P
    return acc


def _gao_decode(basis: _Basis, g1: I64, t: int) -> I64 | None:
    """Gao's Reed-Solomon decoder: the polynomial of degree < t within distance (m - t) / 2
    of the received word whose interpolant is ``g1``, or ``None`` when there is none."""
    m = basis.x.size
    r0, r1 = _trim(basis.g0.copy()), _trim(g1)
    v0, v1 = np.zeros(0, dtype=np.int64), np.ones(1, dtype=np.int64)
    while 2 * _deg(r1) >= m + t:
        q, r = _poly_divmod(r0, r1)
        r0, r1 = r1, r
        v0, v1 = v1, _poly_sub(v0, _poly_mul(q, v1))
    if v1.size == 0:
        return None
    f, rem = _poly_divmod(r1, v1)
    if rem.size or _deg(f) >= t:
        return None
    return f


# --------------------------------------------------------------------------- public API


def _check_threshold(threshold: object) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)):
        raise SecAggTypeError(f"threshold must be an int, got {type(threshold).__name__}")
    t = int(threshold)
    if t < 1:
        raise ShareError(f"threshold must be >= 1, got {t}")
    return t


def _check_secret(secret: object) -> bytes:
    if isinstance(secret, (bytearray, memoryview)):
        secret = bytes(secret)
    if not isinstance(secret, bytes):
        raise SecAggTypeError(f"secret must be bytes, got {type(secret).__name__}")
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ShareError(f"secret must have 1 to {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    return secret


def split(secret: bytes, threshold: int, xs: Sequence[int], rng: RngLike = None) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the returned shares recover it.

    Args:
        secret: 1 to 65535 bytes.
        threshold: t >= 1; fewer than t shares are independent of the secret.
        xs: distinct x-coordinates (client ids) in [1, 2^31 - 1), at least t of them.
        rng: randomness for the polynomial coefficients (see :mod:`secagg.rand`).

    Returns:
        One :class:`Share` per x-coordinate, in the order of ``xs``.
    """
    return split_many([secret], threshold, xs, rng)[0]


def split_many(secrets: Sequence[bytes], threshold: int, xs: Sequence[int], rng: RngLike = None) -> list[list[Share]]:
    """Share several secrets among the same x-coordinates in one vectorised pass.

    Equivalent to calling :func:`split` on each secret (with fresh, independent
    polynomials), about twice as fast for the two secrets a SecAgg client shares.
    Returns one list of shares (in the order of ``xs``) per secret.

    Randomness: the coefficients of X^1 .. X^(t-1) are drawn as one ``(t - 1, chunks)``
    array of uniform integers in [0, p) (row = power), chunks of all secrets concatenated.
    """
    if isinstance(secrets, (bytes, bytearray, str)) or not isinstance(secrets, Sequence):
        raise SecAggTypeError("secrets must be a sequence of bytes objects")
    clean = [_check_secret(s) for s in secrets]
    if not clean:
        raise ShareError("secrets is empty; pass at least one secret")
    t = _check_threshold(threshold)
    if isinstance(xs, (bytes, str)) or not isinstance(xs, Sequence):
        raise SecAggTypeError("xs must be a sequence of ints")
    xt = tuple(_check_x(x, "every x") for x in xs)
    if len(set(xt)) != len(xt):
        dup = sorted({x for x in xt if xt.count(x) > 1})
        raise ShareError(f"duplicate x-coordinates {dup}; every share holder needs its own x")
    if len(xt) < t:
        raise ShareError(f"threshold {t} exceeds the {len(xt)} share holders; use t <= len(xs)")
    src = as_random_source(rng)

    chunks = [_secret_to_chunks(s) for s in clean]
    widths = [c.size for c in chunks]
    coeffs = np.empty((t, sum(widths)), dtype=np.int64)
    coeffs[0] = np.concatenate(chunks)
    if t > 1:
        coeffs[1:] = src.integers(PRIME, (t - 1, coeffs.shape[1]))
    values = _vandermonde(xt, t).times(coeffs).astype(">u4")

    out: list[list[Share]] = []
    start = 0
    for secret, width in zip(clean, widths, strict=True):
        header = len(secret).to_bytes(_HEADER, "big")
        block = values[:, start : start + width]
        out.append([_make_share(x, header + row.tobytes()) for x, row in zip(xt, block, strict=True)])
        start += width
    return out


def _make_share(x: int, value: bytes) -> Share:
    """Build a Share from values this module computed (already valid): skip re-validation."""
    share = object.__new__(Share)
    object.__setattr__(share, "x", x)
    object.__setattr__(share, "value", value)
    return share


def _parse(shares: Sequence[Share], threshold: int) -> tuple[int, tuple[int, ...], I64, int]:
    t = _check_threshold(threshold)
    if isinstance(shares, (bytes, str)) or not isinstance(shares, Sequence):
        raise SecAggTypeError("shares must be a sequence of Share objects")
    xl: list[int] = []
    values: list[bytes] = []
    for s in shares:
        if not isinstance(s, Share):
            raise SecAggTypeError(f"shares must be Share objects, got {type(s).__name__}; use Share.from_bytes")
        xl.append(s.x)
        values.append(s.value)
    if len(xl) < t:
        raise ShareError(f"need at least {t} shares to reconstruct, got {len(xl)}")
    xs = tuple(xl)
    if len(set(xs)) != len(xs):
        dup = sorted({x for x in xs if xs.count(x) > 1})
        raise ShareError(f"duplicate shares for x = {dup}; pass each holder's share once")
    head = values[0][:_HEADER]
    size = len(values[0])
    if any(len(v) != size or v[:_HEADER] != head for v in values):
        odd = [x for x, v in zip(xs, values, strict=True) if len(v) != size or v[:_HEADER] != head]
        raise ShareError(
            f"shares for x = {odd} have a different value length from the share for x = {xs[0]} "
            f"({size} bytes); all shares of one secret have the same length"
        )
    length = (head[0] << 8) | head[1]
    raw = b"".join([v[_HEADER:] for v in values])
    ys = np.frombuffer(raw, dtype=">u4").astype(np.int64).reshape(len(shares), -1)
    return t, xs, ys, length


def reconstruct(shares: Sequence[Share], threshold: int) -> Reconstruction:
    """Recover a secret, correcting bad shares when possible.

    With exactly ``t`` shares this is Lagrange interpolation at 0 (a corrupted share then
    goes undetected unless it breaks the encoding, which it does with probability about
    1 - 2^-(chunks + padding bits)).  With ``m > t`` shares every share is checked: if all
    lie on one polynomial of degree < t, ``bad`` is empty; otherwise Gao's decoder
    corrects up to ``(m - t) // 2`` bad shares and ``bad`` names them.

    Raises:
        ShareError: too few shares, duplicate x, mixed value lengths, more than
            ``MAX_CHECKED_SHARES`` shares with ``m > t``.
        InconsistentSharesError: more than ``(m - t) // 2`` bad shares (``bad`` is None), or
            the shares do not encode a valid secret.
    """
    t, xs, ys, length = _parse(shares, threshold)
    m = len(xs)
    if m == t:
        lam = _lagrange_at_zero(xs)
        chunks = ((lam[:, None] * ys) % _P).sum(axis=0) % _P
        secret = _chunks_to_secret(chunks, length)
        if secret is None:
            raise InconsistentSharesError(
                f"the {t} shares do not encode a valid {length}-byte secret: at least one is corrupted; "
                "pass more than t shares to locate it",
                bad=None,
            )
        return Reconstruction(secret, ())

    if m > MAX_CHECKED_SHARES:
        raise ShareError(
            f"{m} shares given: checking more than {MAX_CHECKED_SHARES} at once needs an m x m table; "
            f"pass exactly t = {t} shares, or at most {MAX_CHECKED_SHARES}"
        )
    basis = _basis(xs)
    weighted = (ys * basis.w[:, None]) % _P  # (m, chunks)
    g1 = _matmul_mod(np.ascontiguousarray(weighted.T), basis.q)  # (chunks, m): interpolant coefficients
    chunks = g1[:, 0].copy()
    bad: set[int] = set()
    limit = (m - t) // 2
    for c in np.flatnonzero(g1[:, t:].any(axis=1)).tolist():
        f = _gao_decode(basis, g1[c], t)
        if f is None:
            bad = set(xs)  # mark as undecodable
            break
        wrong = _poly_eval(f, basis.x) != ys[:, c]
        bad.update(x for x, w in zip(xs, wrong.tolist(), strict=True) if w)
        if len(bad) > limit:
            break
        chunks[c] = f[0] if f.size else 0
    if len(bad) > limit:
        raise InconsistentSharesError(
            f"the {m} shares are inconsistent and more than (m - t) // 2 = {limit} of them are bad; "
            "cannot tell which: discard this set of shares",
            bad=None,
        )
    secret = _chunks_to_secret(chunks, length)
    if secret is None:
        raise InconsistentSharesError(
            f"the shares do not encode a valid {length}-byte secret (too many corrupted shares)", bad=None
        )
    return Reconstruction(secret, tuple(sorted(bad)))


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares (strict).

    Uses exactly t shares when given t (fast path, Lagrange coefficients cached per x-set).
    Given more, every share is checked and any inconsistency raises
    :class:`InconsistentSharesError` whose ``bad`` names the bad x-coordinates when at most
    ``(m - t) // 2`` of the ``m`` shares are bad (``None`` beyond that).  Use
    :func:`reconstruct` to get the corrected secret together with the bad x-coordinates.

    Raises:
        ShareError: too few shares, duplicate x, mixed value lengths (the x range and value
            layout are validated when a :class:`Share` is built).
        InconsistentSharesError: see above.
    """
    rec = reconstruct(shares, threshold)
    if rec.bad:
        raise InconsistentSharesError(
            f"shares for x = {list(rec.bad)} are inconsistent with the others; exclude them (or call reconstruct)",
            bad=rec.bad,
        )
    return rec.secret
