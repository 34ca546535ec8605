"""Renyi-DP curves of the mechanisms in :mod:`dp.events` and the RDP -> (epsilon, delta) conversion.

A curve is an array ``rdp[k]`` = epsilon(alpha_k) such that the mechanism is
(alpha_k, rdp[k])-RDP for every order alpha_k > 1 of ``orders``.  Curves add under
composition.  Every function returns an upper bound; where the literature gives no tight
value we round the safe way (documented per function).

Sources:

* Gaussian: Mironov, "Renyi Differential Privacy", CSF 2017: alpha / (2 z^2).
* Poisson-subsampled Gaussian: Mironov, Talwar, Zhang, "Renyi Differential Privacy of the
  Sampled Gaussian Mechanism", 2019, Section 3.3 (exact A_alpha; series for fractional
  orders), the analysis used by opacus and TF Privacy.
* Laplace: Mironov 2017, Proposition 6.
* Sum of n discrete Gaussians: Kairouz, Liu, Steinke, ICML 2021, Theorem 1 / Proposition 14.
* Skellam: Agarwal, Kairouz, Liu, NeurIPS 2021.
* Poisson subsampling of any mechanism: Zhu, Wang, "Poisson Subsampled Renyi Differential
  Privacy", ICML 2019, Theorem 5 (general upper bound).
* Sampling without replacement: Wang, Balle, Kasiviswanathan, AISTATS 2019, Theorem 9.
* Conversion: Canonne, Kamath, Steinke 2020 (Prop. 12) / Balle et al. 2020 (Thm. 21):
  epsilon = rdp + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1), the
  conversion opacus uses, together with the total-variation bound
  delta <= sqrt(1 - exp(-rdp)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from dp._validate import check_nonnegative, check_probability
from dp.errors import AccountingError, DPTypeError, DPValueError
from dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    FixedSizeSampledEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    SkellamEvent,
)

__all__ = [
    "DEFAULT_ORDERS",
    "Adjacency",
    "Orders",
    "ddg_rdp",
    "event_rdp",
    "fixed_size_subsampled_rdp",
    "gaussian_rdp",
    "laplace_rdp",
    "poisson_subsampled_rdp",
    "rdp_to_delta",
    "rdp_to_epsilon",
    "skellam_rdp",
    "subsampled_gaussian_rdp",
]

FloatArray = npt.NDArray[np.float64]
#: RDP orders: a sequence of floats or a float array.
Orders = Sequence[float] | npt.NDArray[np.float64]
Adjacency = Literal["add_remove", "replace_one"]

#: Orders used when none are given: opacus's default set (1.1, 1.2, ..., 10.9, 12, ..., 63)
#: extended with 11 and a few large orders (as in dp_accounting) for very small epsilons.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(11, 64)]
    + [80.0, 96.0, 128.0, 160.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0]
)

_LOG_HALF = math.log(0.5)
_MAX_GENERIC_ORDER = 4096  # generic subsampling bounds sum over l <= alpha


# --------------------------------------------------------------------------- helpers


def _orders(orders: Orders) -> FloatArray:
    try:
        a = np.asarray(orders, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DPTypeError(f"orders must be a sequence of real numbers: {exc}") from exc
    if a.size == 0:
        raise DPValueError("orders must not be empty")
    if not np.all(np.isfinite(a)) or np.any(a <= 1.0):
        raise DPValueError("every RDP order must be finite and > 1")
    return a


def _logsumexp(x: FloatArray) -> float:
    if x.size == 0:
        return -math.inf
    m = float(np.max(x))
    if math.isinf(m):
        return m
    return m + math.log(float(np.sum(np.exp(x - m))))


_lgamma = np.frompyfunc(math.lgamma, 1, 1)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def _log_gamma(x: FloatArray) -> FloatArray:
    return np.asarray(_lgamma(x), dtype=np.float64)


def _log_comb(a: float, i: FloatArray) -> FloatArray:
    """log |binomial(a, i)| for real a and integer i (via log-gamma; sign handled by callers)."""
    return math.lgamma(a + 1.0) - _log_gamma(i + 1.0) - _log_gamma(a - i + 1.0)


def _log_erfc(x: FloatArray) -> FloatArray:
    """log(erfc(x)) accurate over the whole real line (asymptotic series where erfc underflows)."""
    out = np.empty_like(x)
    big = x > 26.0
    small = ~big
    if np.any(small):
        out[small] = np.log(np.asarray(_erfc(x[small]), dtype=np.float64))
    if np.any(big):
        xb = x[big]
        u = 1.0 / (2.0 * xb * xb)
        series = 1.0 + u * (-1.0 + u * (3.0 + u * (-15.0 + u * (105.0 + u * (-945.0 + u * 10395.0)))))
        out[big] = -xb * xb - np.log(xb) - 0.5 * math.log(math.pi) + np.log(series)
    return out


# --------------------------------------------------------------------------- Gaussian family


def gaussian_rdp(noise_multiplier: float, orders: Orders = DEFAULT_ORDERS) -> FloatArray:
    """RDP of the Gaussian mechanism: alpha / (2 z^2) (infinite when z = 0)."""
    a = _orders(orders)
    z = float(noise_multiplier)
    if z == 0:
        return np.full_like(a, np.inf)
    return a / (2.0 * z * z)


def _log_a_int(q: float, z: float, alpha: int) -> float:
    """log A_alpha of the sampled Gaussian for integer alpha (exact finite sum).

    Written as A = 1 + sum_{i>=2} C(alpha,i) q^i (1-q)^{alpha-i} (e^{(i^2-i)/(2 z^2)} - 1), all
    terms positive, so that log A keeps full relative precision when A is close to 1.
    """
    if alpha < 2:
        return 0.0
    i = np.arange(2, alpha + 1, dtype=np.float64)
    x = (i * i - i) / (2 * z * z)
    log_expm1 = np.where(x > 30.0, x + np.log1p(-np.exp(-np.minimum(x, 700.0))), np.log(np.expm1(np.minimum(x, 30.0))))
    terms = _log_comb(float(alpha), i) + i * math.log(q) + (alpha - i) * math.log1p(-q) + log_expm1
    log_rest = _logsumexp(terms)
    return float(np.logaddexp(0.0, log_rest))


def _log_a_frac(q: float, z: float, alpha: float, max_terms: int = 1 << 21) -> float:
    """log A_alpha of the sampled Gaussian for fractional alpha (Mironov-Talwar-Zhang series).

    The generalised binomial series alternates in sign after the first floor(alpha) + 1
    terms and its terms decay only polynomially, so it is evaluated vectorised in growing
    blocks until the tail terms are decreasing and below exp(-25) of the total; the
    remainder of an alternating series with decreasing terms is at most the last term's
    magnitude, which is added (safe side).  Returns +inf (safe) if it does not converge
    or cancellation leaves nothing.
    """
    z0 = z * z * math.log(1.0 / q - 1.0) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    k0 = math.floor(alpha) + 1
    n = 512
    while n <= max_terms:
        i = np.arange(n, dtype=np.float64)
        j = alpha - i
        logc = _log_comb(alpha, i)
        sign = np.where(i <= k0, 1.0, np.where(((i - k0) % 2) == 0, 1.0, -1.0))
        log_s0 = logc + i * log_q + j * log_1mq + (i * i - i) / (2 * z * z)
        log_s0 += _LOG_HALF + _log_erfc((i - z0) / (math.sqrt(2.0) * z))
        log_s1 = logc + j * log_q + i * log_1mq + (j * j - j) / (2 * z * z)
        log_s1 += _LOG_HALF + _log_erfc((z0 - j) / (math.sqrt(2.0) * z))
        both = np.concatenate([log_s0, log_s1])
        sgn = np.concatenate([sign, sign])
        pos = _logsumexp(both[sgn > 0])
        neg = _logsumexp(both[sgn < 0])
        if neg >= pos:
            return math.inf
        total = pos + math.log1p(-math.exp(neg - pos)) if neg > -math.inf else pos
        tail = np.logaddexp(log_s0[-32:], log_s1[-32:])  # |term i| (s0 and s1 share the sign)
        if n - 32 > alpha + 1 and float(tail[-1]) < total - 25.0 and bool(np.all(np.diff(tail) <= 0)):
            return float(np.logaddexp(total, tail[-1]))
        n *= 2
    return math.inf


#: Below this log A_alpha the fractional series loses relative precision to cancellation
#: (its terms are O(1) and alternate), so the interpolation bound is used instead.
_FRAC_TRUSTED = 1e-10
#: Terms of the fractional series tried before falling back to the interpolation bound.
_FRAC_MAX_TERMS = 1 << 13


@functools.lru_cache(maxsize=4096)
def _log_a_int_cached(q: float, z: float, alpha: int) -> float:
    return _log_a_int(q, z, alpha)


def _log_a_interpolated(q: float, z: float, alpha: float) -> float:
    """Upper bound on log A_alpha from the exact integer orders around alpha.

    log A_alpha = log E[(P/Q)^alpha] is convex in alpha (Hoelder), and log A_1 = 0, so
    between k = floor(alpha) and k + 1 it lies below the chord.
    """
    k = math.floor(alpha)
    lo = _log_a_int_cached(q, z, k) if k >= 2 else 0.0
    hi = _log_a_int_cached(q, z, k + 1)
    return lo + (alpha - k) * (hi - lo)


@functools.lru_cache(maxsize=512)
def _subsampled_gaussian_cached(q: float, z: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    out = []
    for a in orders:
        if float(a).is_integer():
            log_a = _log_a_int_cached(q, z, int(a))
        else:
            bound = _log_a_interpolated(q, z, a)
            series = _log_a_frac(q, z, a, _FRAC_MAX_TERMS)
            log_a = min(series, bound) if _FRAC_TRUSTED <= series < math.inf else bound
        out.append(log_a / (a - 1.0))
    return tuple(out)


def _sound_curve(a: FloatArray, rdp: FloatArray, cap: FloatArray | None = None) -> FloatArray:
    """Clamp a computed RDP curve to what is true of every Renyi divergence: >= 0,
    non-decreasing in the order (values raised to the running maximum over smaller orders:
    the safe side), and at most ``cap`` (e.g. the unsampled curve) where given."""
    r = np.maximum(np.asarray(rdp, dtype=np.float64), 0.0)
    if cap is not None:
        r = np.minimum(r, cap)
    idx = np.argsort(a, kind="stable")
    r[idx] = np.maximum.accumulate(r[idx])
    return r


def subsampled_gaussian_rdp(
    sampling_rate: float, noise_multiplier: float, orders: Orders = DEFAULT_ORDERS
) -> FloatArray:
    """RDP of the Poisson-subsampled Gaussian mechanism (add/remove adjacency).

    Exact log A_alpha / (alpha - 1) (Mironov, Talwar, Zhang 2019), matching opacus's and
    TF Privacy's analysis; numerically stable in log space for integer and fractional orders.

    Always sound: integer orders are the exact finite sum (all terms positive, full
    relative precision even for values near 1e-16); a fractional order takes the series
    only where it is trustworthy (log A_alpha >= 1e-10, converged within 2^13 terms) and
    never above the chord between the exact neighbouring integer orders (log A_alpha is
    convex in alpha), which it falls back to otherwise.  The curve is then clamped: never
    negative, never above the unsampled alpha / (2 z^2), and non-decreasing in the order.
    """
    a = _orders(orders)
    q, z = float(sampling_rate), float(noise_multiplier)
    if not 0 < q <= 1:
        raise DPValueError(f"sampling_rate must be in (0, 1], got {q}")
    if z == 0:
        return np.full_like(a, np.inf)
    unsampled = a / (2.0 * z * z)
    if q == 1.0:
        return unsampled
    raw = np.array(_subsampled_gaussian_cached(q, z, tuple(float(x) for x in a)), dtype=np.float64)
    return _sound_curve(a, raw, unsampled)


# --------------------------------------------------------------------------- other mechanisms


def laplace_rdp(noise_multiplier: float, orders: Orders = DEFAULT_ORDERS) -> FloatArray:
    """RDP of the Laplace mechanism with scale b = noise_multiplier x L1 sensitivity (Mironov 2017, Prop. 6).

    epsilon(alpha) = log(alpha/(2 alpha - 1) e^{(alpha-1)/b} + (alpha-1)/(2 alpha-1) e^{-alpha/b}) / (alpha - 1),
    exact for every real order; tends to the pure epsilon 1/b.
    """
    a = _orders(orders)
    b = float(noise_multiplier)
    if b == 0:
        return np.full_like(a, np.inf)
    eps = 1.0 / b
    x = np.log(a / (2 * a - 1)) + (a - 1) * eps
    y = np.log((a - 1) / (2 * a - 1)) - a * eps
    return np.asarray(np.logaddexp(x, y) / (a - 1), dtype=np.float64)


def _ceil_orders(a: FloatArray) -> FloatArray:
    return np.ceil(a)


def ddg_rdp(
    l2_sensitivity: float,
    sigma: float,
    dim: int,
    n_shares: int,
    orders: Orders = DEFAULT_ORDERS,
    *,
    l1_sensitivity: float | None = None,
) -> FloatArray:
    """RDP of the sum of ``n_shares`` equal discrete Gaussians (Kairouz, Liu, Steinke, ICML 2021).

    With per-share scale s = sigma / sqrt(n), m shares summed (variance m s^2) and
    tau_m = 10 sum_{k=1}^{m-1} exp(-2 pi^2 s^2 k / (k + 1)) (valid for s >= 1/2), the bound is
    min(alpha D2^2 / (2 m s^2) + tau_m d,
    alpha/2 (D2^2 / (m s^2) + 2 D1 tau_m / (sqrt(m) s) + tau_m^2 d),
    alpha/2 (D2 / (sqrt(m) s) + tau_m sqrt(d))^2).

    Safe-side choices: (1) the bound is minimised over every m <= n, which is valid because
    adding further independent noise cannot increase a Renyi divergence (for m = 1 it is
    the exact discrete Gaussian bound of Canonne, Kamath, Steinke 2020, valid for any
    s > 0, so s < 1/2 falls back to it); (2) fractional orders are evaluated at
    ceil(alpha), valid because D_alpha is non-decreasing in alpha; (3) without an explicit
    L1 bound D1 = min(sqrt(d) D2, D2^2) (for an integer vector the L1 norm is at most the squared L2 norm).

    Args:
        l2_sensitivity: D2, lattice units.
        sigma: standard deviation of the summed counted noise, lattice units (sqrt(n) s).
        dim: d.
        n_shares: n.
        orders: RDP orders.
        l1_sensitivity: optional D1.
    """
    a = _ceil_orders(_orders(orders))
    d2, sig, d, n = float(l2_sensitivity), float(sigma), int(dim), int(n_shares)
    if sig == 0:
        return np.full_like(a, np.inf)
    d1 = float(l1_sensitivity) if l1_sensitivity is not None else min(math.sqrt(d) * d2, d2 * d2)
    s = sig / math.sqrt(n)
    if s < 0.5 or n == 1:
        ms = np.array([1.0])
    elif n <= 4096:
        ms = np.arange(1, n + 1, dtype=np.float64)
    else:
        ms = np.unique(np.concatenate([np.round(np.geomspace(1, n, 2048)), np.arange(1, 257), [n]]))
    k = np.arange(1, int(ms[-1]), dtype=np.float64)
    terms = 10.0 * np.exp(-2.0 * math.pi**2 * s * s * k / (k + 1.0))
    tau_all = np.concatenate([[0.0], np.cumsum(terms)])  # tau_all[m-1] = tau_m
    tau = tau_all[(ms - 1).astype(np.int64)][:, None]
    sm = np.sqrt(ms)[:, None] * s  # std of m shares
    aa = a[None, :]
    b1 = aa * d2 * d2 / (2 * sm * sm) + tau * d
    b2 = aa / 2 * (d2 * d2 / (sm * sm) + 2 * d1 * tau / sm + tau * tau * d)
    b3 = aa / 2 * (d2 / sm + tau * math.sqrt(d)) ** 2
    return np.asarray(np.min(np.minimum(np.minimum(b1, b2), b3), axis=0), dtype=np.float64)


def skellam_rdp(
    l2_sensitivity: float,
    l1_sensitivity: float,
    mu_total: float,
    orders: Orders = DEFAULT_ORDERS,
) -> FloatArray:
    """RDP of Skellam noise Poisson(mu) - Poisson(mu) (variance V = 2 mu) (Agarwal, Kairouz, Liu 2021).

    epsilon(alpha) = alpha D2^2 / (2 V) + min(((2 alpha - 1) D2^2 + 6 D1) / (4 V^2), 3 D1 / (2 V)),
    lattice units.  Fractional orders are evaluated at ceil(alpha) (safe: D_alpha is
    non-decreasing in alpha).
    """
    a = _ceil_orders(_orders(orders))
    d2, d1, mu = float(l2_sensitivity), float(l1_sensitivity), float(mu_total)
    if mu == 0:
        return np.full_like(a, np.inf)
    v = 2.0 * mu
    extra = np.minimum(((2 * a - 1) * d2 * d2 + 6 * d1) / (4 * v * v), 3 * d1 / (2 * v))
    return np.asarray(a * d2 * d2 / (2 * v) + extra, dtype=np.float64)


# --------------------------------------------------------------------------- generic subsampling


def _int_orders(a: FloatArray) -> FloatArray:
    top = int(np.max(np.ceil(a)))
    if top > _MAX_GENERIC_ORDER:
        raise AccountingError(f"generic subsampling bounds support orders up to {_MAX_GENERIC_ORDER}; "
                              f"got {top}: pass smaller orders")
    return np.arange(2, max(top, 2) + 1, dtype=np.float64)


def poisson_subsampled_rdp(
    sampling_rate: float,
    base: Callable[[FloatArray], FloatArray],
    orders: Orders = DEFAULT_ORDERS,
) -> FloatArray:
    """Upper bound on the RDP of a Poisson-subsampled mechanism with RDP curve ``base`` (Zhu, Wang 2019, Thm. 5).

    For integer alpha >= 2 and rate q:
    (alpha - 1) eps'(alpha) <= log((1-q)^{alpha-1} (alpha q - q + 1) + C(alpha,2) q^2 (1-q)^{alpha-2} e^{eps(2)}
    + 3 sum_{l=3}^{alpha} C(alpha,l) q^l (1-q)^{alpha-l} e^{(l-1) eps(l)}).
    Fractional orders use ceil(alpha) (safe); the result is capped by the unsampled curve,
    which sampling can never exceed.

    Args:
        sampling_rate: q in (0, 1].
        base: function mapping an array of orders to the base mechanism's RDP there.
        orders: RDP orders.
    """
    a = _orders(orders)
    q = float(sampling_rate)
    if not 0 < q <= 1:
        raise DPValueError(f"sampling_rate must be in (0, 1], got {q}")
    unsampled = base(a)
    if q == 1.0:
        return unsampled
    ints = _int_orders(a)
    eps_int = base(ints)  # eps_int[l - 2] = eps(l)
    lq, l1q = math.log(q), math.log1p(-q)
    cache: dict[int, float] = {}
    out = np.empty_like(a)
    for k, order in enumerate(a):
        m = max(math.ceil(order), 2)
        if m not in cache:
            terms = [(m - 1) * l1q + math.log(m * q - q + 1)]
            terms.append(math.log(m * (m - 1) / 2) + 2 * lq + (m - 2) * l1q + float(eps_int[0]))
            if m >= 3:
                ls = np.arange(3, m + 1, dtype=np.float64)
                t = math.log(3.0) + _log_comb(float(m), ls) + ls * lq + (m - ls) * l1q + (ls - 1) * eps_int[1 : m - 1]
                terms.extend(t.tolist())
            cache[m] = _logsumexp(np.asarray(terms)) / (m - 1)
        out[k] = min(cache[m], float(unsampled[k]))
    return out


def fixed_size_subsampled_rdp(
    sampling_rate: float,
    base: Callable[[FloatArray], FloatArray],
    orders: Orders = DEFAULT_ORDERS,
    eps_inf: float = math.inf,
) -> FloatArray:
    """Upper bound on the RDP of sampling without replacement (replace-one adjacency).

    Wang, Balle, Kasiviswanathan, AISTATS 2019, Theorem 9, with gamma = m / n:
    (alpha - 1) eps'(alpha) <= log(1 + gamma^2 C(alpha,2) min(4 (e^{eps(2)} - 1),
    e^{eps(2)} min(2, (e^{eps_inf} - 1)^2))
    + sum_{j=3}^{alpha} gamma^j C(alpha,j) e^{(j-1) eps(j)} min(2, (e^{eps_inf} - 1)^j)).
    ``base`` must already be the replace-one curve.  Fractional orders use ceil(alpha).
    """
    a = _orders(orders)
    g = float(sampling_rate)
    unsampled = base(a)
    if g >= 1.0:
        return unsampled
    ints = _int_orders(a)
    eps_int = base(ints)
    lg = math.log(g)

    def log_cap(j: float) -> float:
        # log min(2, (e^{eps_inf} - 1)^j)
        if eps_inf == math.inf:
            return math.log(2.0)
        em1 = math.expm1(eps_inf)
        if em1 <= 0:
            return -math.inf
        return min(math.log(2.0), j * math.log(em1))

    cache: dict[int, float] = {}
    out = np.empty_like(a)
    for k, order in enumerate(a):
        m = max(math.ceil(order), 2)
        if m not in cache:
            e2 = float(eps_int[0])
            first = min(
                math.log(4.0) + (math.log(math.expm1(e2)) if e2 > 0 else -math.inf),
                e2 + log_cap(2.0),
            )
            terms = [0.0, 2 * lg + math.log(m * (m - 1) / 2) + first]
            if m >= 3:
                js = np.arange(3, m + 1, dtype=np.float64)
                caps = np.array([log_cap(j) for j in js])
                t = js * lg + _log_comb(float(m), js) + (js - 1) * eps_int[1 : m - 1] + caps
                terms.extend(t.tolist())
            cache[m] = _logsumexp(np.asarray(terms)) / (m - 1)
        out[k] = min(cache[m], float(unsampled[k]))
    return out


# --------------------------------------------------------------------------- events -> curves


def _gaussian_only_multiplier(event: PrivacyEvent) -> float | None:
    """Effective noise multiplier if ``event`` is a (composition of) Gaussian(s), else None."""
    if isinstance(event, GaussianEvent):
        return event.noise_multiplier
    if isinstance(event, SelfComposedEvent):
        z = _gaussian_only_multiplier(event.event)
        return None if z is None else z / math.sqrt(event.count)
    if isinstance(event, ComposedEvent) and event.events:
        inv = 0.0
        for e in event.events:
            z = _gaussian_only_multiplier(e)
            if z is None:
                return None
            if z == 0:
                return 0.0
            inv += 1.0 / (z * z)
        return 1.0 / math.sqrt(inv)
    return None


def _eps_inf(event: PrivacyEvent, factor: float) -> float:
    """Pure-DP epsilon of ``event`` (infinite unless it is built from Laplace noise)."""
    if isinstance(event, LaplaceEvent):
        return math.inf if event.noise_multiplier == 0 else factor / event.noise_multiplier
    if isinstance(event, SelfComposedEvent):
        return event.count * _eps_inf(event.event, factor)
    if isinstance(event, ComposedEvent):
        return float(sum(_eps_inf(e, factor) for e in event.events))
    if isinstance(event, (PoissonSampledEvent, FixedSizeSampledEvent)):
        return _eps_inf(event.event, factor)
    return math.inf


def _curve(event: PrivacyEvent, a: FloatArray, adjacency: Adjacency) -> FloatArray:
    f = 2.0 if adjacency == "replace_one" else 1.0
    if isinstance(event, GaussianEvent):
        return gaussian_rdp(event.noise_multiplier / f, a)
    if isinstance(event, LaplaceEvent):
        return laplace_rdp(event.noise_multiplier / f, a)
    if isinstance(event, DistributedDiscreteGaussianEvent):
        l1 = None if event.l1_sensitivity is None else f * event.l1_sensitivity
        return ddg_rdp(f * event.l2_sensitivity, event.sigma, event.dim, event.n_shares, a, l1_sensitivity=l1)
    if isinstance(event, SkellamEvent):
        return skellam_rdp(f * event.l2_sensitivity, f * event.l1_sensitivity, event.mu_total, a)
    if isinstance(event, SelfComposedEvent):
        return event.count * _curve(event.event, a, adjacency)
    if isinstance(event, ComposedEvent):
        total = np.zeros_like(a)
        for e in event.events:
            total = total + _curve(e, a, adjacency)
        return total
    if isinstance(event, PoissonSampledEvent):
        if adjacency != "add_remove":
            raise AccountingError("Poisson sampling is analysed under add/remove adjacency; this accountant uses "
                                  f"{adjacency!r}: use an add/remove accountant (the default)")
        z = _gaussian_only_multiplier(event.event)
        if z is not None:
            return subsampled_gaussian_rdp(event.sampling_rate, z, a)
        inner = event.event
        _curve(inner, a[:1], adjacency)  # surface unsupported inner events before the long loop
        return poisson_subsampled_rdp(event.sampling_rate, lambda o: _curve(inner, o, adjacency), a)
    if isinstance(event, FixedSizeSampledEvent):
        if adjacency != "replace_one":
            raise AccountingError("fixed-size sampling without replacement is analysed under replace-one "
                                  "adjacency: use an accountant with adjacency='replace_one'")
        inner = event.event
        _curve(inner, a[:1], adjacency)
        return fixed_size_subsampled_rdp(event.sampling_rate, lambda o: _curve(inner, o, adjacency), a,
                                         eps_inf=_eps_inf(inner, f))
    raise AccountingError(f"no RDP bound for event type {type(event).__name__}")


def event_rdp(
    event: PrivacyEvent,
    orders: Orders = DEFAULT_ORDERS,
    *,
    adjacency: Adjacency = "add_remove",
) -> FloatArray:
    """RDP curve of ``event`` at ``orders``.

    Args:
        event: a :class:`~dp.events.PrivacyEvent`.
        orders: RDP orders (all > 1).
        adjacency: ``"add_remove"`` (default; Poisson sampling) or ``"replace_one"``
            (fixed-size sampling; base sensitivities are doubled).

    Raises:
        AccountingError: the event (or a nested one) has no bound under this adjacency.
    """
    if not isinstance(event, PrivacyEvent):
        raise DPTypeError(f"event must be a PrivacyEvent, got {type(event).__name__}")
    if adjacency not in ("add_remove", "replace_one"):
        raise DPValueError(f"adjacency must be 'add_remove' or 'replace_one', got {adjacency!r}")
    a = _orders(orders)
    curve = np.asarray(_curve(event, a, adjacency), dtype=np.float64)
    if np.any(np.isnan(curve)):
        raise AccountingError(f"RDP curve of {type(event).__name__} is undefined (NaN) at some order")
    return curve


# --------------------------------------------------------------------------- conversion


def _check_delta(delta: object) -> float:
    try:
        return check_probability("delta", delta)
    except DPValueError as exc:
        raise DPValueError(f"{exc}; choose delta well below 1/population") from None


def _check_epsilon(epsilon: object) -> float:
    return check_nonnegative("epsilon", epsilon)


def rdp_to_epsilon(orders: Orders, rdp: Sequence[float] | FloatArray, delta: float) -> tuple[float, float]:
    """Smallest epsilon over ``orders`` such that the RDP curve implies (epsilon, delta)-DP.

    Returns:
        (epsilon, optimal order); (inf, nan) when every order is infinite.
    """
    d = _check_delta(delta)
    a = _orders(orders)
    r = np.asarray(rdp, dtype=np.float64).reshape(-1)
    if r.shape != a.shape:
        raise DPValueError(f"orders and rdp must have the same length ({a.size} != {r.size})")
    if np.any(np.isnan(r)):
        raise DPValueError("rdp contains NaN")
    r = np.maximum(r, 0.0)  # a Renyi divergence is >= 0; negative values are rounding noise
    with np.errstate(over="ignore", invalid="ignore"):
        eps = r - (math.log(d) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
        eps = np.where(d * d + np.expm1(-r) > 0, 0.0, eps)  # TV bound: delta >= sqrt(1 - e^{-rdp})
    eps = np.maximum(eps, 0.0)
    finite = np.isfinite(eps)
    if not np.any(finite):
        return math.inf, math.nan
    idx = int(np.argmin(np.where(finite, eps, np.inf)))
    return float(eps[idx]), float(a[idx])


def rdp_to_delta(orders: Orders, rdp: Sequence[float] | FloatArray, epsilon: float) -> tuple[float, float]:
    """Smallest delta over ``orders`` such that the RDP curve implies (epsilon, delta)-DP.

    Returns:
        (delta, optimal order); delta is 1.0 when no order gives anything better.
    """
    e = _check_epsilon(epsilon)
    a = _orders(orders)
    r = np.asarray(rdp, dtype=np.float64).reshape(-1)
    if r.shape != a.shape:
        raise DPValueError(f"orders and rdp must have the same length ({a.size} != {r.size})")
    if np.any(np.isnan(r)):
        raise DPValueError("rdp contains NaN")
    r = np.maximum(r, 0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_delta = (a - 1) * (r - e + np.log1p(-1.0 / a)) - np.log(a)
        log_tv = 0.5 * np.log(-np.expm1(-r))
        log_delta = np.minimum(log_delta, log_tv)
    log_delta = np.where(np.isnan(log_delta), np.inf, log_delta)
    idx = int(np.argmin(log_delta))
    return float(min(math.exp(min(float(log_delta[idx]), 0.0)), 1.0)), float(a[idx])
