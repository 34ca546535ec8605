"""Fixed-point encoding of real vectors into Z_{2^b} and the overflow (headroom) check.

A client's real vector ``x`` (model units) is clipped coordinate-wise to
``[-clip, clip]``, multiplied by ``scale`` (integer units per model unit), rounded to an
integer by *unbiased stochastic rounding* (``floor(y) + 1`` with probability
``y - floor(y)``, driven by an injected random source, so ``E[encode(x)] = x * scale``)
and wrapped into Z_{2^b} (two's complement, ``& (2^b - 1)``).  Each encoded coordinate
lies in ``[-max_abs, max_abs]`` with ``max_abs = ceil(clip * scale)``.

Secure aggregation returns the sum modulo ``2^b``.  :func:`centered_lift` maps a residue
to its representative in the centred range ``[-2^(b-1), 2^(b-1))``; it is the true
integer sum exactly when ``|sum| <= 2^(b-1) - 1``.  :func:`check_headroom` proves that
before anything is encoded and raises :class:`~secagg.errors.HeadroomError` otherwise
(Flower's SecAgg+ has no such guard: past about 1,000 clients its sums silently wrap).

Bounds used by :func:`check_headroom` (``w_i`` integer client weights, 1 by default):

* ``"deterministic"``: ``|sum| <= max_abs * sum_i w_i`` always (stochastic rounding never
  exceeds ``ceil``, so rounding is covered exactly, with failure probability 0).
* ``"gaussian-tail"`` (``noise_std = s > 0``, ``noise="gaussian"``): the total noise per
  coordinate is ``s``-sub-Gaussian (true for a sum of independent continuous or discrete
  Gaussians with ``s^2`` = sum of their ``sigma^2``; Canonne, Kamath, Steinke 2020), so
  ``P(|Z| >= t) <= 2 exp(-t^2 / (2 s^2))``; with a union bound over ``d`` coordinates,
  ``t = s * sqrt(2 ln(2 d / failure_prob))``.
* ``"skellam-chernoff"`` (``noise="skellam"``): the total noise is Skellam with variance
  ``s^2`` (``mu = s^2 / 2`` per side); the Chernoff bound
  ``P(Z >= t) <= exp(-(t asinh(t / 2mu) - sqrt(4 mu^2 + t^2) + 2 mu))``, doubled for two
  sides and union-bounded over ``d`` coordinates, is solved for ``t``.

In the probabilistic cases the guarantee is: with probability at least
``1 - failure_prob`` no coordinate of the sum wraps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from dp import _ring
from secagg._validate import check_int, check_number
from secagg.crypto.prg import _CHUNK_BYTES, _LITTLE, _PAD, _ZEROS_MV, SEED_SIZE, keystream
from secagg.errors import HeadroomError, SecAggTypeError, SecAggValueError
from secagg.rand import RngLike, as_random_source
from secagg.ring import check_bits, ring_dtype, ring_mask, secagg_errors

__all__ = ["FixedPointEncoder", "Headroom", "centered_lift", "check_headroom"]

RingArray = npt.NDArray[np.unsignedinteger[Any]]
"""A vector over Z_{2^b}: ``uint32`` for b <= 32, ``uint64`` above (checked at run time)."""
NoiseKind = Literal["gaussian", "skellam"]
_ENCODE_CHUNK = _CHUNK_BYTES // 8  # coordinates per chunk: 256 KiB temporaries stay in cache


def _int_arg(value: object, name: str, minimum: int) -> int:
    return check_int(name, value, minimum)


def _real_arg(value: object, name: str, *, positive: bool) -> float:
    return check_number(name, value, lo=0.0, lo_open=positive)


def _capacity(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _min_bits(total: int) -> int:
    """Smallest b with ``2^(b-1) - 1 >= total`` (may exceed 64)."""
    return max(1, (total).bit_length() + 1)


def _weight_sum(n: int, weights: Sequence[int] | npt.NDArray[Any] | None) -> int:
    """Validate ``n`` integer weights >= 0 and return their exact (Python-int) sum."""
    if weights is None:
        return n
    if isinstance(weights, np.ndarray):
        if weights.ndim != 1 or weights.dtype.kind not in "ui":
            raise SecAggTypeError(f"weights must be a 1-D integer array, got {weights.dtype} of shape {weights.shape}")
        items: list[object] = list(weights.tolist())
    elif isinstance(weights, Sequence) and not isinstance(weights, (str, bytes)):
        items = list(weights)
    else:
        raise SecAggTypeError(f"weights must be a sequence of ints, got {type(weights).__name__}")
    if len(items) != n:
        raise SecAggValueError(f"weights must have one entry per client (n={n}), got {len(items)}")
    total = 0
    for x in items:
        total += check_int("weights entry", x, 0)
    return total


@dataclass(frozen=True)
class Headroom:
    """Result of :func:`check_headroom` (all magnitudes in encoded integer units).

    Attributes:
        n: number of clients.
        bits: ring bit width ``b``.
        capacity: ``2^(b-1) - 1``, the largest ``|sum|`` that lifts correctly.
        worst_case: deterministic bound ``max_abs * sum(weights)`` on ``|sum|`` without noise.
        noise_bound: high-probability bound on ``|noise|`` per coordinate (0 without noise).
        total: ``worst_case + noise_bound``; the check passed, so ``total <= capacity``.
        bound: which bound was used: ``"deterministic"``, ``"gaussian-tail"`` or
            ``"skellam-chernoff"``.
        failure_prob: probability that some coordinate still wraps (0.0 if deterministic).
        min_bits: smallest ring width for which the check would pass.
    """

    n: int
    bits: int
    capacity: int
    worst_case: int
    noise_bound: int
    total: int
    bound: str
    failure_prob: float
    min_bits: int

    @property
    def spare_bits(self) -> int:
        """``bits - min_bits``: how many bits could be dropped and still pass."""
        return self.bits - self.min_bits


def _gaussian_tail(std: float, d: int, failure_prob: float) -> float:
    return std * math.sqrt(2.0 * math.log(2.0 * d / failure_prob))


def _skellam_tail(std: float, d: int, failure_prob: float) -> float:
    mu = std * std / 2.0
    target = math.log(2.0 * d / failure_prob)  # need rate(t) >= target

    def rate(t: float) -> float:
        return t * math.asinh(t / (2.0 * mu)) - math.sqrt(4.0 * mu * mu + t * t) + 2.0 * mu

    lo, hi = 0.0, max(1.0, std)
    while rate(hi) < target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if rate(mid) >= target:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    return hi


def check_headroom(
    n: int,
    bits: int,
    max_abs: float,
    *,
    weights: Sequence[int] | npt.NDArray[Any] | None = None,
    noise_std: float = 0.0,
    failure_prob: float = 1e-9,
    noise: NoiseKind = "gaussian",
    d: int = 1,
) -> Headroom:
    """Check that the centred sum of ``n`` clients' encoded vectors cannot wrap Z_{2^bits}.

    Call this before encoding anything.  It is a pure function of its arguments.

    Args:
        n: number of clients summed (>= 1).
        bits: ring bit width, 1..64.
        max_abs: largest ``|coordinate|`` one client sends before weighting, in encoded
            integer units (:attr:`FixedPointEncoder.max_abs`); a float is rounded up.
        weights: optional ``n`` non-negative integer client weights (for example capped
            example counts); client ``i``'s coordinates are at most ``w_i * max_abs``.
        noise_std: standard deviation (sub-Gaussian parameter for ``noise="gaussian"``)
            of the *total* noise added to each coordinate of the sum, in integer units.
        failure_prob: allowed probability that any coordinate wraps because of noise,
            in (0, 1); unused without noise.
        noise: ``"gaussian"`` (continuous or discrete Gaussian) or ``"skellam"``.
        d: number of coordinates (for the union bound over the vector).

    Returns:
        A :class:`Headroom` describing the bound used.

    Raises:
        HeadroomError: the sum could reach ``2^(bits-1)`` in absolute value; the message
            gives the smallest sufficient ``bits``.
    """
    n = _int_arg(n, "n", 1)
    bits = check_bits(bits)
    if isinstance(max_abs, (int, np.integer)) and not isinstance(max_abs, bool):
        if int(max_abs) < 0:
            raise SecAggValueError(f"max_abs must be >= 0, got {max_abs}")
        m_int = int(max_abs)  # exact, even above 2^53
    else:
        m_int = math.ceil(_real_arg(max_abs, "max_abs", positive=False))
    std = _real_arg(noise_std, "noise_std", positive=False)
    d = _int_arg(d, "d", 1)
    check_number("failure_prob", failure_prob, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if noise not in ("gaussian", "skellam"):
        raise SecAggValueError(f"noise must be 'gaussian' or 'skellam', got {noise!r}")
    weight_sum = _weight_sum(n, weights)
    worst = m_int * weight_sum
    if std > 0.0:
        if noise == "gaussian":
            tail, bound = _gaussian_tail(std, d, float(failure_prob)), "gaussian-tail"
        else:
            tail, bound = _skellam_tail(std, d, float(failure_prob)), "skellam-chernoff"
        noise_bound = math.ceil(tail)
        prob = float(failure_prob)
    else:
        noise_bound, bound, prob = 0, "deterministic", 0.0
    total = worst + noise_bound
    capacity = _capacity(bits)
    need = _min_bits(total)
    if total > capacity:
        raise HeadroomError(
            f"the sum of n={n} clients can reach |sum| = {total} ({bound} bound: {worst} from inputs"
            + (f" + {noise_bound} from noise at failure_prob={prob:g}" if noise_bound else "")
            + f") but a {bits}-bit ring only holds |sum| <= {capacity}: use bits >= {need}, "
            "fewer clients, smaller weights, or a smaller clip or scale"
        )
    return Headroom(
        n=n,
        bits=bits,
        capacity=capacity,
        worst_case=worst,
        noise_bound=noise_bound,
        total=total,
        bound=bound,
        failure_prob=prob,
        min_bits=need,
    )


#: Representative in ``[-2^(bits-1), 2^(bits-1))`` of each residue mod ``2^bits``: the one
#: implementation is :func:`dp._ring.centered_lift` (dp is the lower layer), re-exported
#: with :mod:`secagg.errors` types by :func:`secagg.ring.secagg_errors`.
centered_lift = secagg_errors(_ring.centered_lift)


@dataclass(frozen=True)
class FixedPointEncoder:
    """Clip, scale, stochastically round and wrap real vectors into Z_{2^bits}.

    Attributes:
        bits: ring bit width, 1..64 (2..64 in practice: 1 bit holds only 0 and -1).
        scale: integer units per model unit (> 0); resolution is ``1 / scale``.
        clip: coordinate-wise clipping bound in model units (> 0).

    Raises:
        HeadroomError: even one client's value ``ceil(clip * scale)`` does not fit the
            centred range of ``bits`` bits.
    """

    bits: int
    scale: float
    clip: float

    def __post_init__(self) -> None:
        bits = check_bits(self.bits)
        scale = _real_arg(self.scale, "scale", positive=True)
        clip = _real_arg(self.clip, "clip", positive=True)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "clip", clip)
        if self.max_abs > _capacity(bits):
            raise HeadroomError(
                f"clip * scale = {clip * scale:g} does not fit a {bits}-bit ring (|value| <= {_capacity(bits)}): "
                "use more bits or a smaller clip or scale"
            )

    @property
    def max_abs(self) -> int:
        """Largest ``|encoded coordinate|`` of one client: ``ceil(clip * scale)``."""
        return math.ceil(self.clip * self.scale)

    @classmethod
    def fit(
        cls,
        n: int,
        bits: int,
        clip: float,
        *,
        weights: Sequence[int] | npt.NDArray[Any] | None = None,
    ) -> FixedPointEncoder:
        """The encoder with the largest power-of-two ``scale`` whose deterministic
        headroom for ``n`` clients (and ``weights``) passes.

        Raises:
            HeadroomError: the ring cannot hold the sum of ``n`` clients' values even at
                magnitude 1 (total weight above ``2^(bits-1) - 1``).
        """
        n = _int_arg(n, "n", 1)
        bits = check_bits(bits)
        clip = _real_arg(clip, "clip", positive=True)
        weight_sum = _weight_sum(n, weights)
        per_unit = _capacity(bits) // max(1, weight_sum)  # largest allowed max_abs
        if per_unit < 1:
            raise HeadroomError(
                f"a {bits}-bit ring cannot hold the sum of n={n} clients with total weight {weight_sum}: "
                f"use bits >= {_min_bits(weight_sum)}"
            )
        exponent = math.floor(math.log2(per_unit / clip))
        scale = math.ldexp(1.0, exponent)
        while math.ceil(clip * scale) > per_unit:
            scale /= 2.0
        while math.ceil(clip * scale * 2.0) <= per_unit:
            scale *= 2.0
        return cls(bits=bits, scale=scale, clip=clip)

    def headroom(
        self,
        n: int,
        *,
        weights: Sequence[int] | npt.NDArray[Any] | None = None,
        noise_std: float = 0.0,
        failure_prob: float = 1e-9,
        noise: NoiseKind = "gaussian",
        d: int = 1,
    ) -> Headroom:
        """:func:`check_headroom` for this encoder's ``bits`` and ``max_abs``."""
        return check_headroom(
            n,
            self.bits,
            self.max_abs,
            weights=weights,
            noise_std=noise_std,
            failure_prob=failure_prob,
            noise=noise,
            d=d,
        )

    def encode(self, x: npt.ArrayLike, rng: RngLike = None, *, weight: int = 1) -> RingArray:
        """Encode a real array into Z_{2^bits}.

        Args:
            x: real values in model units, any shape.
            rng: randomness for stochastic rounding (see :mod:`secagg.rand`).
            weight: non-negative integer multiplier applied after rounding (so the
                result is ``weight * round(clip(x) * scale)`` exactly).

        Returns:
            Array of ``x``'s shape and dtype ``ring_dtype(bits)``.

        Raises:
            SecAggValueError: ``x`` contains NaN or infinite values.
            HeadroomError: ``weight * max_abs`` does not fit the centred range.
        """
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "fiub":
                raise SecAggTypeError(f"x must be a real array, got dtype {x.dtype}")
            arr = x.astype(np.float64, copy=False)
        else:
            try:
                arr = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise SecAggTypeError(f"x must be an array of real numbers: {exc}") from exc
        w = _int_arg(weight, "weight", 0)
        if w * self.max_abs > _capacity(self.bits):
            raise HeadroomError(
                f"weight {w} times max_abs {self.max_abs} does not fit a {self.bits}-bit ring: "
                "use more bits, a smaller weight, or a smaller clip or scale"
            )
        if arr.size and not math.isfinite(float(np.sum(arr))):  # cheap screen; exact check below
            finite = np.isfinite(arr)
            if not finite.all():
                bad = np.flatnonzero(~finite.reshape(-1))
                nan = int(np.isnan(arr).sum())
                raise SecAggValueError(
                    f"x has {nan} NaN and {bad.size - nan} infinite value(s) (first at flat index {int(bad[0])}); "
                    "clean the update (for example skip the client) before encoding"
                )
        return self._round_and_wrap(arr, as_random_source(rng).bytes(SEED_SIZE), w)

    def _round_and_wrap(self, arr: npt.NDArray[np.float64], seed: bytes, weight: int) -> RingArray:
        """Clip, scale, stochastically round, weight and reduce, chunk by chunk in cache.

        The uniform bits are the mask PRG's AES-128-CTR keystream of ``seed`` (the words of
        ``expand(seed, arr.size, 64)``, 53 bits each), so the result is a deterministic
        function of ``seed``.
        """
        dtype = ring_dtype(self.bits)
        out = np.empty(arr.shape, dtype=dtype)
        flat_in = arr.reshape(-1)
        flat_out = out.reshape(-1)
        n = flat_in.size
        chunk = min(n, _ENCODE_CHUNK) or 1
        ubuf = np.empty(chunk * 8 + _PAD, dtype=np.uint8)
        ubuf_mv = ubuf.data
        u_all = ubuf[: chunk * 8].view(np.uint64)
        y_all = np.empty(chunk, dtype=np.float64)
        lo_all = np.empty(chunk, dtype=np.float64)
        up_all = np.empty(chunk, dtype=np.bool_)
        r_all = np.empty(chunk, dtype=np.int64)
        mask = np.int64(ring_mask(self.bits)) if self.bits < 64 else None
        stream = keystream(seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            stream.update_into(_ZEROS_MV[: m * 8], ubuf_mv[: m * 8 + _PAD])
            u, y, lo, up, r = u_all[:m], y_all[:m], lo_all[:m], up_all[:m], r_all[:m]
            if not _LITTLE:
                u.byteswap(inplace=True)
            np.clip(flat_in[start : start + m], -self.clip, self.clip, out=y)
            y *= self.scale
            np.floor(y, out=lo)
            y -= lo  # fractional part p in [0, 1)
            y *= 2.0**53
            u >>= np.uint64(11)  # 53 uniform bits
            np.less(u, y, out=up)  # P(round up) = p (to 2^-53), so E[result] = clip(x) * scale
            np.copyto(r, lo, casting="unsafe")  # exact: |lo| <= max_abs < 2^63
            r += up
            if weight != 1:
                r *= weight
            if mask is None:
                flat_out[start : start + m] = r.view(np.uint64)  # two's complement = residue mod 2^64
            else:
                np.bitwise_and(r, mask, out=r)
                np.copyto(flat_out[start : start + m], r, casting="unsafe")
        return cast(RingArray, out)

    def decode(self, total: npt.NDArray[Any], count: int = 1) -> npt.NDArray[np.float64]:
        """Decode a (sum of) encoded vector(s): ``centered_lift(total) / (scale * count)``.

        Args:
            total: residues mod ``2^bits`` (for example the secure-aggregation sum).
            count: divisor, >= 1: 1 returns the sum in model units; the number of
                clients (or the total weight) returns their (weighted) mean.

        Returns:
            ``float64`` array of ``total``'s shape.
        """
        c = _int_arg(count, "count", 1)
        if isinstance(total, np.ndarray) and total.dtype.kind == "u" and self.bits <= 53:
            # Fast exact path: residues below 2^53 are exact float64 values.
            f: npt.NDArray[np.float64]
            if total.dtype.itemsize * 8 > self.bits:
                f = np.array(np.bitwise_and(total, total.dtype.type(ring_mask(self.bits))), dtype=np.float64)
            else:
                f = np.array(total, dtype=np.float64)
            np.subtract(f, float(1 << self.bits), out=f, where=f >= float(1 << (self.bits - 1)))
            f /= self.scale * c
            return f
        out = np.array(centered_lift(total, self.bits), dtype=np.float64)
        out /= self.scale * c
        return out
