"""Exact, vectorised samplers for integer-valued DP noise.

Every sampler returns ``int64`` arrays whose distribution is *exactly* the stated one
(assuming the random source is uniform), not a floating-point approximation of it:

* :func:`sample_discrete_laplace` -- P(Z = z) proportional to ``exp(-|z| / scale)``;
* :func:`sample_discrete_gaussian` -- P(Z = z) proportional to ``exp(-z^2 / (2 sigma^2))``
  (Canonne, Kamath, Steinke 2020, rejection from a discrete Laplace);
* :func:`sample_poisson` -- P(K = k) = ``exp(-mu) mu^k / k!``;
* :func:`sample_skellam` -- ``Poisson(mu) - Poisson(mu)`` (variance ``2 mu``).

The float parameter a user passes is taken at face value as an exact rational number
(``Fraction(sigma)``; sigma^2 is ``Fraction(sigma) ** 2``), and the sampler is exact for
that number.

How exactness is achieved (the only place floating point is used)
-----------------------------------------------------------------
All randomness is drawn as uniform integers (from :class:`dp.rand.RandomSource`). Every
random decision is either integer arithmetic (uniform integers in ``[0, t)`` by rejection,
sign bits) or a comparison "``U < exp(-gamma)``" of a uniform real ``U`` in [0, 1) with an
exponential, where ``gamma`` is an exact rational (discrete Laplace / Gaussian) or an exact
expression in logarithms (Poisson). Such a comparison is a Bernoulli(exp(-gamma)) trial.

1. *Fast path (vectorised).* ``U`` is known to 53 bits, i.e. to lie in the interval
   ``[a 2^-53, (a + 1) 2^-53)``. numpy computes ``p = exp(-gamma)`` in float64 and the
   decision is taken only if the whole interval of ``U`` lies below
   ``p (1 - 2^-30)`` or above ``p (1 + 2^-30) + 2^-1000``. The analysis: ``gamma`` is
   formed from a handful of correctly rounded IEEE operations on exactly represented
   integers and floats and is within ``2^-35`` of the exact value whenever
   ``gamma <= 709`` (worst case: the Poisson log-pmf, whose terms cancel by at most a
   factor 50; beyond 709, ``exp(-gamma) < 2^-1000``). numpy's ``exp``/``log`` are accurate
   to a few ulp (about ``2^-50`` relative), so the float ``p`` is within a relative
   ``2^-34`` of the exact one and the margin ``2^-30`` is 16 times the worst float error: a
   fast-path decision always equals the exact one. This is the one assumption of the
   design: numpy's ``exp``/``log`` are accurate to better than ``2^-34`` relative (every
   libm and numpy's SIMD kernels are within 4 ulp = ``2^-50``; the test suite checks it).
2. *Exact fallback.* When ``U`` lies within the margin (probability about ``2^-29`` per
   comparison, so about once in a few hundred calls of 10^6 samples), the decision is
   recomputed in Python: more bits of ``U`` are drawn on demand and ``exp(-gamma)`` is
   enclosed with :mod:`decimal` arithmetic (correctly rounded ``exp``/``ln``, directed
   rounding for divisions, Stirling's series with its rigorous remainder for ``ln k!``),
   doubling the precision until the comparison is decided. This terminates with
   probability one and is exact.

Geometric variables (the building block of the discrete Laplace) are sampled by inversion
with the same certification: ``V = max{v : U < exp(-v / s)}`` is read off ``-s ln U`` when
the float interval around it contains no integer, and otherwise searched exactly.

Ranges: ``scale`` and ``sigma`` in ``[2^-40, 2^40]``, ``mu`` in ``[2^-40, 2^48]`` (so every
float intermediate stays normal and every integer stays far below ``2^53``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from decimal import MAX_EMAX, MIN_EMIN, ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt

from dp._validate import check_int, check_positive
from dp.errors import DPError, DPTypeError, DPValueError
from dp.rand import RandomSource, RngLike, as_random_source

__all__ = [
    "MAX_MU",
    "MAX_SAMPLES",
    "MAX_SCALE",
    "MIN_MU",
    "MIN_SCALE",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "sample_poisson",
    "sample_skellam",
]

MIN_SCALE: Final = 2.0**-40
"""Smallest accepted ``scale`` (discrete Laplace) and ``sigma`` (discrete Gaussian)."""
MAX_SCALE: Final = 2.0**40
"""Largest accepted ``scale`` and ``sigma``."""
MIN_MU: Final = 2.0**-40
"""Smallest accepted Poisson / Skellam ``mu``."""
MAX_MU: Final = 2.0**48
"""Largest accepted Poisson / Skellam ``mu``."""

Size = int | tuple[int, ...]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
# gamma enclosure at a given number of decimal digits: (lower, upper) with lower <= gamma <= upper.
GammaBounds = Callable[[int], tuple[Fraction, Fraction]]

# Fast-path margin (relative, on p = exp(-gamma)) and absolute floor; see the module docstring.
# Tests monkeypatch _REL_MARGIN to a large value to exercise the exact fallback.
_REL_MARGIN = 2.0**-30
_ABS_FLOOR: Final = 2.0**-1000
_ULP53: Final = 2.0**-53
_BLOCK: Final = 1 << 17  # samples processed per vectorised block (keeps temporaries in cache)
_START_PREC: Final = 40  # decimal digits of the first exact enclosure
_INT_LIMIT: Final = 1 << 62


# ----------------------------------------------------------------------------- validation


#: Most samples one call may ask for (2**40); larger sizes are refused with DPValueError.
MAX_SAMPLES: Final = 1 << 40


def _check_param(name: str, value: object, low: float, high: float) -> float:
    """``value`` as a float in ``[low, high]`` (``low > 0``); DPTypeError / DPValueError otherwise.

    Only ``int``/``float`` and numpy numbers are accepted (not ``Fraction``/``Decimal``).
    """
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise DPTypeError(f"{name} must be a real number (int or float), got {type(value).__name__}")
    x = check_positive(name, value)
    if not low <= x <= high:
        raise DPValueError(f"{name} must lie in [{low!r}, {high!r}], got {x!r}")
    return x


def _check_size(size: object) -> tuple[tuple[int, ...], int]:
    """Normalise ``size`` (int or tuple of ints, all >= 0) to (shape, number of elements)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, (bool, np.bool_)):
        dims: tuple[object, ...] = (size,)
    elif isinstance(size, tuple):
        dims = size
    else:
        raise DPTypeError(f"size must be an int or a tuple of ints, got {type(size).__name__}")
    shape: list[int] = []
    for d in dims:
        shape.append(check_int("size entries", d, low=0, high=MAX_SAMPLES))
    total = math.prod(shape)
    if total > MAX_SAMPLES:
        raise DPValueError(f"size asks for {total} samples; at most {MAX_SAMPLES} per call")
    return tuple(shape), total


# ------------------------------------------------------------- exact arithmetic (fallback)


def _ctx(prec: int, rounding: str) -> Context:
    return Context(prec=prec, rounding=rounding, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _to_decimal(x: Fraction, prec: int, rounding: str) -> Decimal:
    """``x`` rounded to ``prec`` digits in the direction ``rounding`` (FLOOR/CEILING)."""
    return _ctx(prec, rounding).divide(Decimal(x.numerator), Decimal(x.denominator))


def _widen(d: Decimal, prec: int) -> tuple[Fraction, Fraction]:
    """Enclosure of a value whose correctly rounded ``prec``-digit result is ``d``.

    The rounding error is at most one unit in the last place, <= ``10^(1-prec) |d|``;
    widening by ``10^(2-prec) |d|`` leaves a factor 10 of safety.
    """
    f = Fraction(d)
    err = abs(f) / 10 ** (prec - 2)
    return f - err, f + err


def _exp_neg_bounds(g_lo: Fraction, g_hi: Fraction, prec: int) -> tuple[Fraction, Fraction]:
    """``(lo, hi)`` with ``lo <= exp(-g) <= hi`` for every ``g`` in ``[g_lo, g_hi]``."""
    a = _to_decimal(g_hi, prec, ROUND_CEILING)  # a >= g_hi
    b = _to_decimal(g_lo, prec, ROUND_FLOOR)  # b <= g_lo
    ctx = _ctx(prec, ROUND_HALF_EVEN)
    lo, _ = _widen(ctx.exp(-a), prec)
    _, hi = _widen(ctx.exp(-b), prec)
    return max(lo, Fraction(0)), hi


def _ln_bounds(x_lo: Fraction, x_hi: Fraction, prec: int) -> tuple[Fraction, Fraction]:
    """``(lo, hi)`` with ``lo <= ln x <= hi`` for every ``x`` in ``[x_lo, x_hi]`` (``x_lo > 0``)."""
    ctx = _ctx(prec, ROUND_HALF_EVEN)
    lo, _ = _widen(ctx.ln(_to_decimal(x_lo, prec, ROUND_FLOOR)), prec)
    _, hi = _widen(ctx.ln(_to_decimal(x_hi, prec, ROUND_CEILING)), prec)
    return lo, hi


@functools.lru_cache(maxsize=256)
def _ln_bounds_cached(x: Fraction, prec: int) -> tuple[Fraction, Fraction]:
    return _ln_bounds(x, x, prec)


def _atan_inv_bounds(x: int, digits: int) -> tuple[Fraction, Fraction]:
    """Enclosure of ``arctan(1/x)`` (alternating series: consecutive partial sums bracket it)."""
    tol = Fraction(1, 10 ** (digits + 5))
    s = Fraction(0)
    n = 0
    while True:
        term = Fraction(1, (2 * n + 1) * x ** (2 * n + 1))
        nxt = s + term if n % 2 == 0 else s - term
        if term < tol:
            return (min(s, nxt), max(s, nxt))
        s = nxt
        n += 1


@functools.lru_cache(maxsize=16)
def _ln_2pi_bounds(prec: int) -> tuple[Fraction, Fraction]:
    """Enclosure of ``ln(2 pi)``; pi from Machin's formula with rigorous bounds."""
    a_lo, a_hi = _atan_inv_bounds(5, prec)
    b_lo, b_hi = _atan_inv_bounds(239, prec)
    pi_lo = 16 * a_lo - 4 * b_hi
    pi_hi = 16 * a_hi - 4 * b_lo
    return _ln_bounds(2 * pi_lo, 2 * pi_hi, prec)


_BERNOULLI: list[Fraction] = [Fraction(1)]  # B_0, B_1, ... (B_1 = -1/2 convention)


def _bernoulli(n: int) -> Fraction:
    """Bernoulli number ``B_n`` (exact), from the recurrence sum_k C(m+1, k) B_k = 0."""
    while len(_BERNOULLI) <= n:
        m = len(_BERNOULLI)
        acc = sum((math.comb(m + 1, k) * _BERNOULLI[k] for k in range(m)), Fraction(0))
        _BERNOULLI.append(-acc / (m + 1))
    return _BERNOULLI[n]


def _ln_factorial_bounds(k: int, prec: int) -> tuple[Fraction, Fraction]:
    """Enclosure of ``ln(k!)``.

    Small ``k``: exactly from ``k!``. Large ``k``: Stirling's series for ``ln Gamma(z)``,
    ``z = k + 1``, whose remainder after any number of terms is bounded by the first
    omitted term (real ``z > 0``); terms are added until that bound is below
    ``10^-(prec + 5)``. Requiring ``z >= prec`` makes this reachable (the smallest term is
    about ``exp(-2 pi z)``).
    """
    if k < max(1000, prec):
        f = Fraction(math.factorial(k))
        return _ln_bounds(f, f, prec)
    z = k + 1
    lz_lo, lz_hi = _ln_bounds(Fraction(z), Fraction(z), prec + 10)
    l2p_lo, l2p_hi = _ln_2pi_bounds(prec + 10)
    half_z = Fraction(2 * z - 1, 2)
    base_lo = half_z * lz_lo - z + l2p_lo / 2
    base_hi = half_z * lz_hi - z + l2p_hi / 2
    tol = Fraction(1, 10 ** (prec + 5))
    series = Fraction(0)
    j = 1
    prev = None
    while True:
        term = _bernoulli(2 * j) / (2 * j * (2 * j - 1) * Fraction(z) ** (2 * j - 1))
        if abs(term) < tol or (prev is not None and abs(term) >= prev):
            rem = abs(term)
            return base_lo + series - rem, base_hi + series + rem
        series += term
        prev = abs(term)
        j += 1


class _LazyUniform:
    """A uniform real ``U`` in [0, 1) known to ``nbits`` bits: ``U`` in ``[v 2^-n, (v+1) 2^-n)``.

    Further bits are drawn from the random source only when a comparison needs them.
    """

    __slots__ = ("_rs", "nbits", "value")

    def __init__(self, rs: RandomSource, value: int, nbits: int) -> None:
        self._rs = rs
        self.value = value
        self.nbits = nbits

    def _extend(self) -> None:
        self.value = (self.value << 64) | int.from_bytes(self._rs.bytes(8), "big")
        self.nbits += 64

    def less_exp_neg(self, gamma: GammaBounds) -> bool:
        """Exactly decide ``U < exp(-gamma)``."""
        prec = _START_PREC
        while True:
            g_lo, g_hi = gamma(prec)
            if g_hi <= 0:
                return True  # exp(-gamma) >= 1 > U
            if self.value >= 1 and g_lo >= self.nbits:
                return False  # U >= 2^-n > e^-n >= exp(-gamma)
            p_lo, p_hi = _exp_neg_bounds(g_lo, g_hi, prec)
            scale = 1 << self.nbits
            u_lo = Fraction(self.value, scale)
            u_hi = Fraction(self.value + 1, scale)
            if u_hi <= p_lo:
                return True
            if u_lo >= p_hi:
                return False
            if Fraction(1, scale) > p_hi - p_lo:
                self._extend()
            else:
                prec *= 2


def _exact(g: Fraction) -> GammaBounds:
    return lambda _prec: (g, g)


def _ratio_gammas(r: IntArray, scale: Fraction) -> Callable[[int], GammaBounds]:
    """``i -> r[i] / scale`` (exact)."""
    return lambda i: _exact(Fraction(int(r[i])) / scale)


def _cks_gammas(ay: IntArray, shift: Fraction, s2: Fraction) -> Callable[[int], GammaBounds]:
    """``i -> (|y_i| - sigma^2/t)^2 / (2 sigma^2)`` (exact)."""
    return lambda i: _exact((Fraction(int(ay[i])) - shift) ** 2 / (2 * s2))


# ------------------------------------------------------------------- vectorised building blocks


def _uniform53(rs: RandomSource, n: int) -> npt.NDArray[np.uint64]:
    """``n`` uniform 53-bit integers ``a``: the top bits of uniform reals ``U`` in [0, 1)."""
    raw = rs.uint64(n)
    np.right_shift(raw, np.uint64(11), out=raw)
    return raw


def _bits(rs: RandomSource, n: int) -> BoolArray:
    """``n`` independent fair bits."""
    raw = np.empty((n + 7) // 8, dtype=np.uint8)
    rs.fill(raw)
    return np.unpackbits(raw)[:n].astype(np.bool_)


def _uniform_int(rs: RandomSource, t: int, n: int) -> IntArray:
    """``n`` exactly uniform integers in ``[0, t)``, ``1 <= t < 2^62`` (rejection, no modulo bias)."""
    if t == 1:
        return np.zeros(n, dtype=np.int64)
    if t <= 1 << 31:
        nbits = (t - 1).bit_length()
        mask32 = np.uint32((1 << nbits) - 1)
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            want = n - filled
            draw = np.empty(want + want // 2 + 16, dtype=np.uint32)
            rs.fill(draw)
            draw &= mask32
            ok = draw[draw < np.uint32(t)][:want]
            out[filled : filled + ok.size] = ok
            filled += ok.size
        return out
    return rs.integers(t, n)


def _bernoulli_exp_neg(
    rs: RandomSource, gamma_f: FloatArray, exact: Callable[[int], GammaBounds]
) -> BoolArray:
    """Vectorised exact Bernoulli(exp(-gamma_i)) trials.

    ``gamma_f`` is the float64 approximation of each ``gamma_i`` (within ``2^-33`` when
    ``gamma_i <= 709``); ``exact(i)`` gives rigorous enclosures of ``gamma_i`` for the
    fallback.
    """
    n = gamma_f.size
    a = _uniform53(rs, n)
    a_f = a.astype(np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        p = np.exp(-gamma_f)
        yes = (a_f + 1.0) * _ULP53 <= p * (1.0 - _REL_MARGIN)
        no = a_f * _ULP53 >= p * (1.0 + _REL_MARGIN) + _ABS_FLOOR
    for i in np.flatnonzero(~(yes | no)):
        yes[i] = _LazyUniform(rs, int(a[i]), 53).less_exp_neg(exact(int(i)))
    return yes


def _geometric_inversion(rs: RandomSource, s: Fraction, n: int) -> IntArray:
    """``n`` samples of ``V`` with ``P(V >= v) = exp(-v / s)``, ``v = 0, 1, ...`` (exact).

    ``V = max{v : U < exp(-v/s)} = ceil(-s ln U) - 1``. With ``U`` in
    ``[a 2^-53, (a+1) 2^-53)``, ``-s ln U`` lies within ``s / a`` of ``L = -s ln(mid)``;
    widened by the float margin, an interval free of integers certifies ``V``.
    """
    s_f = float(s)
    a = _uniform53(rs, n)
    a_f = a.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lg = -s_f * np.log((a_f + 0.5) * _ULP53)
        # |ln U - ln mid| <= 2^-53 / (a 2^-53) = 1/a (mid may round to an end of U's interval)
        delta = np.abs(lg) * _REL_MARGIN + (s_f / a_f) * (1.0 + _REL_MARGIN) + 2.0**-60
        lo = lg - delta
        hi = lg + delta
        flo = np.floor(lo)
        zero = hi < 1.0  # then ceil(-s ln U) = 1 (it is > 0), so V = 0
        ok = zero | ((flo == np.floor(hi)) & (lo > flo) & np.isfinite(hi))
    v = np.where(zero, 0.0, flo)
    out = np.zeros(n, dtype=np.int64)
    out[ok] = v[ok].astype(np.int64)
    for i in np.flatnonzero(~ok):
        guess = float(lg[i])
        out[i] = _exact_inversion(rs, int(a[i]), s, int(guess) if math.isfinite(guess) and guess < 2.0**40 else 0)
    return out


def _exact_inversion(rs: RandomSource, a: int, s: Fraction, guess: int) -> int:
    """Exact ``max{v >= 0 : U < exp(-v/s)}`` for ``U`` with 53-bit prefix ``a``."""
    u = _LazyUniform(rs, a, 53)
    v = max(0, guess)
    while v > 0 and not u.less_exp_neg(_exact(Fraction(v) / s)):
        v -= 1
    while u.less_exp_neg(_exact(Fraction(v + 1) / s)):
        v += 1
    return v


def _truncated_geometric(rs: RandomSource, scale: Fraction, scale_f: float, t: int, n: int) -> IntArray:
    """``n`` samples of ``R`` in ``{0, ..., t-1}`` with ``P(R = r)`` proportional to ``exp(-r/scale)``.

    Uniform ``r``, accepted with probability ``exp(-r/scale) >= exp(-t/scale)``.
    """
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        r = _uniform_int(rs, t, need + need // 2 + 16)
        gamma = r.astype(np.float64) / scale_f
        acc = _bernoulli_exp_neg(rs, gamma, _ratio_gammas(r, scale))
        got = r[acc][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


def _geometric(rs: RandomSource, scale: Fraction, n: int) -> IntArray:
    """``n`` samples of ``X >= 0`` with ``P(X = x) = (1 - q) q^x``, ``q = exp(-1/scale)``.

    ``X = t V + R`` with ``t = max(1, floor(scale))``: ``R = X mod t`` (truncated geometric,
    by rejection) and ``V = X div t`` (geometric with ``q^t``, by inversion) are independent;
    this keeps the inversion's scale ``scale / t`` below 2 (Canonne et al., Algorithm 2).
    """
    t = max(1, math.floor(scale))
    r = _truncated_geometric(rs, scale, float(scale), t, n) if t > 1 else np.zeros(n, dtype=np.int64)
    v = _geometric_inversion(rs, scale / t, n)
    if v.size and int(v.max()) > (_INT_LIMIT - t) // t:  # probability < exp(-2^21)
        raise DPError("discrete Laplace sample out of the int64 range; this has probability < exp(-2^21)")
    return v * t + r


def _discrete_laplace(rs: RandomSource, scale: Fraction, n: int) -> IntArray:
    """``n`` samples with ``P(Z = z)`` proportional to ``exp(-|z| / scale)``.

    ``Z = +-X`` with ``X`` geometric and a fair sign, rejecting ``-0`` (so 0 is not counted twice).
    """
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        m = need + need // 2 + 16 if scale < 2 else need + need // 8 + 16
        x = _geometric(rs, scale, m)
        neg = _bits(rs, m)
        keep = ~(neg & (x == 0))
        z = np.where(neg, -x, x)[keep][:need]
        out[filled : filled + z.size] = z
        filled += z.size
    return out


def _discrete_gaussian(rs: RandomSource, sigma: float, n: int) -> IntArray:
    """``n`` samples of the discrete Gaussian N_Z(0, sigma^2) (Canonne, Kamath, Steinke, Alg. 3).

    ``Y`` ~ discrete Laplace with integer scale ``t = floor(sigma) + 1``, accepted with
    probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``.
    """
    t = math.floor(sigma) + 1
    s2 = Fraction(sigma) ** 2
    s2_f = float(s2)
    shift_f = s2_f / t
    shift = s2 / t
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        m = min(need + need // 2 + 16, _BLOCK)
        y = _discrete_laplace(rs, Fraction(t), m)
        ay = np.abs(y)
        d = ay.astype(np.float64) - shift_f
        gamma = d * d / (2.0 * s2_f)
        acc = _bernoulli_exp_neg(rs, gamma, _cks_gammas(ay, shift, s2))
        got = y[acc][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


# ------------------------------------------------------------------------------ Poisson

_LN_2PI: Final = math.log(2.0 * math.pi)
_STIRLERR_TABLE: Final = np.array(
    [0.0] + [math.lgamma(k + 1.0) - (k + 0.5) * math.log(k) + k - 0.5 * _LN_2PI for k in range(1, 16)]
)


def _stirlerr(k: FloatArray) -> FloatArray:
    """``ln k! - ((k + 1/2) ln k - k + ln(2 pi)/2)`` for ``k >= 1`` (Loader 2000)."""
    out = np.empty_like(k)
    small = k <= 15
    out[small] = _STIRLERR_TABLE[k[small].astype(np.int64)]
    kk = k[~small]
    k2 = kk * kk
    s0, s1, s2, s3, s4 = 1 / 12, 1 / 360, 1 / 1260, 1 / 1680, 1 / 1188
    out[~small] = (s0 - (s1 - (s2 - (s3 - s4 / k2) / k2) / k2) / k2) / kk
    return out


def _bd0(x: FloatArray, mu: float) -> FloatArray:
    """``x ln(x/mu) + mu - x`` computed without cancellation (Loader 2000), ``x > 0``."""
    d = x - mu
    out = np.empty_like(x)
    near = np.abs(d) < 0.1 * (x + mu)
    xs, ds = x[near], d[near]
    v = ds / (xs + mu)
    s = ds * v
    ej = 2.0 * xs * v
    v2 = v * v
    # |v| < 0.1, so each term is at least 100 times smaller than the previous; stop once
    # v2^j < 2^-60 relative to the first term for every entry (at most 10 terms).
    top = float(v2.max()) if v2.size else 0.0
    terms = 1 if top == 0.0 else min(10, max(1, math.ceil(-60.0 * math.log(2.0) / math.log(top))))
    for j in range(1, terms + 1):
        ej *= v2
        s += ej / (2 * j + 1)
    out[near] = s
    xf = x[~near]
    out[~near] = xf * np.log(xf / mu) + mu - xf
    return out


def _poisson_logpmf(k: IntArray, mu: float) -> FloatArray:
    """``ln P(K = k)`` for ``K ~ Poisson(mu)``, float64, accurate to a few ulp of its terms."""
    out = np.full(k.shape, -np.inf)
    zero = k == 0
    out[zero] = -mu
    pos = k > 0
    kf = k[pos].astype(np.float64)
    out[pos] = -_stirlerr(kf) - _bd0(kf, mu) - 0.5 * np.log(2.0 * np.pi * kf)
    return out


class _PoissonPlan:
    """Rejection sampler for Poisson(mu) from ``m + Y``, ``Y`` ~ discrete Laplace(b), ``m = floor(mu)``.

    Acceptance probability of ``k = m + y`` is ``exp(-gamma(k))`` with
    ``gamma(k) = C - ln P(K = k) - |y| / b``; ``C`` (an exact float) bounds
    ``ln P(K = k) + |k - m| / b`` from above for every ``k >= 0``. Each side of ``m`` is
    concave in ``k``, so the maximum is at the integer where the log-ratio of consecutive
    terms changes sign; ``C`` adds a ``2^-20`` relative slack over the float maximum.
    """

    def __init__(self, mu: float) -> None:
        self.mu = mu
        self.mu_exact = Fraction(mu)
        self.m = math.floor(mu)
        cands = [math.sqrt(mu) * c for c in np.geomspace(0.05, 4.0, 48)]
        if mu < 1:  # small mu: P(1)/P(0) = mu, so the Laplace ratio exp(-1/b) must be about mu
            cands += [c / -math.log(mu) for c in np.geomspace(0.25, 4.0, 24)]
        best: tuple[float, float, float] | None = None
        for cand in cands:
            b = float(min(max(cand, MIN_SCALE), MAX_SCALE))
            if 1.0 / b > 700.0 or mu * math.exp(1.0 / b) > 2.0**50:
                continue  # envelope maximum far out (or useless envelope): skip this scale
            cst = self._envelope(b)
            acc = math.tanh(0.5 / b) * math.exp(-cst)
            if best is None or acc > best[0]:
                best = (acc, b, cst)
        assert best is not None
        self.acceptance, self.b, self.C = best
        self.b_exact = Fraction(self.b)
        self.C_exact = Fraction(self.C)

    def _envelope(self, b: float) -> float:
        mu, m = self.mu, self.m
        right = max(m, math.ceil(mu * math.exp(1.0 / b)) - 1)
        left = min(m, math.floor(mu * math.exp(-1.0 / b)))
        cands = {0, m}
        for c in (left, right):
            cands.update(range(max(0, c - 3), c + 4))
        k = np.array(sorted(cands), dtype=np.int64)
        h = _poisson_logpmf(k, mu) + np.abs(k - m) / b
        top = float(np.max(h))
        return top + 2.0**-20 * (1.0 + abs(top))

    def gamma_bounds(self, k: int) -> GammaBounds:
        """Rigorous enclosure of ``gamma(k) = C + mu - k ln mu + ln k! - |k - m| / b``."""
        mu = self.mu_exact
        lin = self.C_exact + mu - Fraction(abs(k - self.m)) / self.b_exact

        def bounds(prec: int) -> tuple[Fraction, Fraction]:
            p = prec + 10 + len(str(k))
            lm_lo, lm_hi = _ln_bounds_cached(mu, p)
            lf_lo, lf_hi = _ln_factorial_bounds(k, p)
            return lin - k * lm_hi + lf_lo, lin - k * lm_lo + lf_hi

        return bounds


def _poisson_gammas(plan: _PoissonPlan, k: IntArray) -> Callable[[int], GammaBounds]:
    return lambda i: plan.gamma_bounds(int(k[i]))


@functools.lru_cache(maxsize=64)
def _poisson_plan(mu: float) -> _PoissonPlan:
    return _PoissonPlan(mu)


def _poisson(rs: RandomSource, mu: float, n: int) -> IntArray:
    plan = _poisson_plan(mu)
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        m = min(int(need / plan.acceptance * 1.15) + 16, _BLOCK)
        y = _discrete_laplace(rs, plan.b_exact, m)
        k = y + plan.m
        k = k[k >= 0]
        gamma = plan.C - _poisson_logpmf(k, mu) - np.abs(k - plan.m) / plan.b
        acc = _bernoulli_exp_neg(rs, gamma, _poisson_gammas(plan, k))
        got = k[acc][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


# ------------------------------------------------------------------------------ public API


def sample_discrete_laplace(scale: float, size: Size, rng: RngLike = None) -> IntArray:
    """Exact discrete Laplace samples: ``P(Z = z) = tanh(1/(2 scale)) exp(-|z| / scale)``.

    Args:
        scale: the Laplace scale ``b`` (same units as the integers), in ``[2^-40, 2^40]``.
        size: output shape (int or tuple of ints).
        rng: random source (default: a fresh AES-CTR CSPRNG); see :mod:`dp.rand`.

    Returns:
        ``int64`` array of shape ``size``. Variance ``2 q / (1 - q)^2``, ``q = exp(-1/scale)``.
    """
    s = _check_param("scale", scale, MIN_SCALE, MAX_SCALE)
    shape, n = _check_size(size)
    rs = as_random_source(rng)
    sf = Fraction(s)
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        out[start:stop] = _discrete_laplace(rs, sf, stop - start)
    return out.reshape(shape)


def sample_discrete_gaussian(sigma: float, size: Size, rng: RngLike = None) -> IntArray:
    """Exact discrete Gaussian samples: ``P(Z = z)`` proportional to ``exp(-z^2 / (2 sigma^2))``.

    Canonne, Kamath, Steinke (NeurIPS 2020), Algorithm 3, vectorised; exact for
    ``sigma^2 = Fraction(sigma) ** 2``.

    Args:
        sigma: the scale parameter (variance slightly below ``sigma^2``), in ``[2^-40, 2^40]``.
        size: output shape (int or tuple of ints).
        rng: random source (default: a fresh AES-CTR CSPRNG).

    Returns:
        ``int64`` array of shape ``size``.
    """
    s = _check_param("sigma", sigma, MIN_SCALE, MAX_SCALE)
    shape, n = _check_size(size)
    rs = as_random_source(rng)
    return _discrete_gaussian(rs, s, n).reshape(shape)


def sample_poisson(mu: float, size: Size, rng: RngLike = None) -> IntArray:
    """Exact Poisson(mu) samples.

    Method: rejection from ``floor(mu) + Y`` with ``Y`` an exact discrete Laplace whose scale
    maximises the acceptance rate (about 0.75 for large ``mu``); the acceptance test compares
    a uniform with ``exp(-gamma)`` exactly (float fast path, exact :mod:`decimal` fallback
    with Stirling's series and its remainder bound for ``ln k!``).

    Args:
        mu: the mean, in ``[2^-40, 2^48]``.
        size: output shape (int or tuple of ints).
        rng: random source (default: a fresh AES-CTR CSPRNG).

    Returns:
        ``int64`` array of shape ``size``.
    """
    m = _check_param("mu", mu, MIN_MU, MAX_MU)
    shape, n = _check_size(size)
    rs = as_random_source(rng)
    return _poisson(rs, m, n).reshape(shape)


def sample_skellam(mu: float, size: Size, rng: RngLike = None) -> IntArray:
    """Exact symmetric Skellam samples ``Poisson(mu) - Poisson(mu)`` (mean 0, variance ``2 mu``).

    A sum of ``n`` independent Skellam(mu) values is Skellam(``n mu``), which is why it suits
    distributed noise (Agarwal, Kairouz, Liu 2021).

    Args:
        mu: the mean of each Poisson term, in ``[2^-40, 2^48]``.
        size: output shape (int or tuple of ints).
        rng: random source (default: a fresh AES-CTR CSPRNG).

    Returns:
        ``int64`` array of shape ``size``.
    """
    m = _check_param("mu", mu, MIN_MU, MAX_MU)
    shape, n = _check_size(size)
    rs = as_random_source(rng)
    both = _poisson(rs, m, 2 * n)
    return (both[:n] - both[n:]).reshape(shape)
