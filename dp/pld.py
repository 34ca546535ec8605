"""Tight (epsilon, delta) for lattice noise: a Gaussian that dominates the distributed discrete Gaussian.

The RDP bounds of :mod:`dp.rdp` for the sum of ``n`` discrete Gaussians (Kairouz, Liu,
Steinke, ICML 2021) are evaluated at integer orders and, once sampled, go through a generic
amplification bound.  This module proves, numerically and per event, that the lattice
mechanism is *dominated* by a continuous Gaussian mechanism with a slightly smaller noise
``s_eff``: every (epsilon, delta) statement, subsampled or composed, that holds for the
Gaussian with noise multiplier ``z_eff = s_eff / D2`` then holds for the lattice mechanism,
up to an explicit additive slack (below 1e-60 in practice).  The PLD accountant
(:class:`dp.accountants.PldAccountant`) uses it; the figure is the exact Gaussian privacy
profile (unsampled) or dp_accounting's pessimistic PLD of the Poisson-subsampled Gaussian.

**Theorem** (what :func:`ddg_domination` computes; proof sketch with citations).
Let ``Z`` be a symmetric, log-concave distribution on the integers with CDF ``F`` and let
``g(j) = Phi^{-1}(F(j))``.  If ``g(j) - g(j - 1) <= 1 / s`` for every integer ``j``, then for
every integer vector ``Delta`` the pair (``Delta + Z^d``, ``Z^d``) (coordinates i.i.d.) is
``||Delta||_2 / s``-GDP, i.e. a post-processing of (N(||Delta||_2 / s, 1), N(0, 1)).

1. Log-concavity gives a monotone likelihood ratio, so the optimal tests between
   ``v + Z`` and ``Z`` (integer ``v > 0``) are threshold tests; the trade-off function is the
   piecewise-linear curve through the points (S(t), F(t - v)), S = 1 - F.  A Gaussian
   trade-off function G_mu is convex, so it lies below that curve iff it lies below every
   vertex: ``g(t) - g(t - v) <= mu`` for all t, which telescopes from the unit increments:
   mu = v / s.  (Neyman-Pearson; Dong, Roth, Su, "Gaussian Differential Privacy", JRSS-B
   2022, Definition 2.1 and Proposition 2.2.)  By the symmetry of Z, v < 0 and the reversed
   pair are the same.
2. G_mu-domination of a pair is equivalent to the pair being a post-processing of the
   Gaussian pair (Blackwell; Dong, Roth, Su, Theorem 2.10).  Post-processing the d
   coordinates independently shows the product pair is a post-processing of the product
   Gaussian pair, whose trade-off function is G_{||mu||_2} (Dong, Roth, Su, Corollary 3.3).
3. Poisson subsampling and composition preserve post-processing: the subsampled pair
   ((1 - q) Q + q P, Q) is the same post-processing of the subsampled Gaussian pair, in both
   directions (Zhu, Dong, Wang, AISTATS 2022, Theorem 11), and T rounds of dominated pairs
   are dominated by T rounds of the Gaussian pairs.

The noise of one coordinate of a distributed-DG round is ``Z = Y_1 + ... + Y_m``, ``Y_i``
discrete Gaussians N_Z(0, s^2) (each log-concave; sums of log-concave sequences are
log-concave, Hoggar 1974).  Its probability mass function has no closed form, so we bound it:
by Poisson summation the characteristic function of ``Y_i`` is ``a(t) / (1 + e0)`` with
``a(t) = sum_l exp(-s^2 (t - 2 pi l)^2 / 2)`` and ``e0 = 2 sum_{l>=1} exp(-2 pi^2 l^2 s^2)``,
and for ``|t| <= pi``, ``0 <= a(t) - exp(-s^2 t^2 / 2) <= rho = 2.01 exp(-pi^2 s^2 / 2)``
(s >= 1).  Fourier inversion then gives, for every k,
``|P[Z = k] - c^m g_k| <= A = m rho e^{m rho} + exp(-m pi^2 s^2 / 2) / (pi^2 m s^2)`` with
``g_k = exp(-k^2 / (2 m s^2)) / sqrt(2 pi m s^2)`` and ``c = 1 / (1 + e0)``: the mass function
is that of a discrete Gaussian of variance ``m s^2`` up to the relative error
``r = A e^{m e0} / g_R`` on ``|k| <= R``.  (For m = 1 the mass function is exact, r = 0.)

The infinite check over ``j`` is made finite by replacing the tails beyond ``R`` with
geometric tails of ratio at most ``P[Z = R] / P[Z = R - 1]`` (which keeps log-concavity);
there ``g`` is concave (``-log Phi-bar`` is convex), so its increments decrease and the
largest one is computed.  The modified noise ``Z~`` differs from ``Z`` in total variation by
at most ``tv = 4 exp(-R^2 / (2 m s^2)) (1 + 1 / (1 - ratio))`` per coordinate (each discrete
Gaussian is sub-Gaussian with variance proxy ``s^2``, Canonne, Kamath, Steinke, NeurIPS 2020),
so a run of ``T`` rounds in ``d`` coordinates has, for every epsilon,
``delta_true(eps) <= delta_gauss(eps) + (1 + e^eps) T d tv`` (the *slack*, reported).

Numerics: the tail sums are computed in log space by blocks (relative error below
``(B + R / B) u``), ``Phi^{-1}`` with scipy's ``ndtri_exp``, and the largest increment is
raised by a margin that covers the summation, the relative error ``r`` and ``ndtri_exp``
(``|d g / d log S| <= sqrt(pi / 2)`` for ``S <= 1/2``).  The tests compare the result with an exact
enumeration of the lattice pair at small parameters and with dp_accounting's discrete
Gaussian PLD.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri_exp

from dp.errors import DPValueError
from dp.events import DistributedDiscreteGaussianEvent

__all__ = ["GaussianDomination", "ddg_domination", "lattice_gdp_sigma"]

_U = 2.0**-52
_BLOCK = 8192
#: Tails are cut where the sub-Gaussian bound is below exp(-_LOG_TAIL): tv ~ 1e-100.
_LOG_TAIL = 230.0
#: Refuse (None) rather than hold more than this many points of the mass function.
_MAX_POINTS = 20_000_000
#: The approximation of the sum of m shares is used only where its relative error is below this.
_MAX_REL = 1e-12
#: Smallest acceptable cut: tv stays below ~exp(-60).
_MIN_LOG_TAIL = 60.0


@dataclass(frozen=True)
class GaussianDomination:
    """A continuous Gaussian that dominates a lattice noise mechanism (see the module docstring).

    Attributes:
        noise_multiplier: ``z_eff = effective_sigma / l2_sensitivity``: every guarantee of the
            Gaussian mechanism with this multiplier holds for the lattice mechanism, plus
            ``tv`` (per release) in the slack ``(1 + e^eps) x sum of tv``.
        effective_sigma: ``s_eff`` in lattice units (a little below the noise's std).
        tv: total-variation distance, per release (all ``dim`` coordinates), between the true
            noise and the noise for which the domination was proved.
        shares_used: shares whose sum was analysed (``n_shares``, or 1 when the per-share scale
            is too small for the sum's mass function to be bounded tightly).
    """

    noise_multiplier: float
    effective_sigma: float
    tv: float
    shares_used: int


def _log_tail_sums(lw: np.ndarray, log_tail: float) -> np.ndarray:
    """log V(k) = log(sum_{i=k}^{R} w_i + tail) for k = 0..R+1 (V(R+1) = tail), by blocks."""
    r = lw.size - 1
    out = np.empty(r + 2)
    out[r + 1] = log_tail
    running = log_tail
    for end in range(r + 1, 0, -_BLOCK):
        start = max(0, end - _BLOCK)
        seg = lw[start:end][::-1]  # k = end-1 ... start (increasing weights)
        ref = float(seg[-1])
        with np.errstate(under="ignore"):
            cs = np.cumsum(np.exp(seg - ref))
        vals = np.logaddexp(running, ref + np.log(cs))
        out[start:end] = vals[::-1]
        running = float(vals[-1])
    return out


def lattice_gdp_sigma(sigma_w: float, radius: int, rel_err: float) -> float:
    """s_eff for a symmetric log-concave lattice noise whose mass function on ``|k| <= radius``
    is proportional to ``exp(-k^2 / (2 sigma_w^2))`` up to relative error ``rel_err``, with the
    geometric tails of the module docstring beyond ``radius``.

    Returns the largest s with ``g(j) - g(j - 1) <= 1 / s`` for every j, rounded down safely.
    """
    if not (sigma_w > 0 and radius >= 2 and 0 <= rel_err < 1e-6):
        raise DPValueError("lattice_gdp_sigma needs sigma_w > 0, radius >= 2 and a small rel_err")
    k = np.arange(radius + 1, dtype=np.float64)
    lw = -(k * k) / (2.0 * sigma_w * sigma_w)
    log_ratio = float(lw[radius] - lw[radius - 1]) + math.log1p(-rel_err) - math.log1p(rel_err)
    ratio = math.exp(log_ratio)
    log_tail = float(lw[radius]) + log_ratio - math.log1p(-ratio)  # w_R r / (1 - r)
    log_v = _log_tail_sums(lw, log_tail)
    log_m = float(np.logaddexp(lw[0], math.log(2.0) + log_v[1]))
    # log S~(j) for j = 0..R+1 (S~(R+1) = tail * r)
    log_s = np.empty(radius + 2)
    log_s[: radius + 1] = log_v[1:] - log_m
    log_s[radius + 1] = log_tail + log_ratio - log_m
    q = ndtri_exp(np.minimum(log_s, math.log(0.5)))  # Phi^{-1}(S~(j)) = -g~(j) <= 0
    inc = np.empty(radius + 2)
    inc[0] = -2.0 * q[0]
    inc[1:] = q[:-1] - q[1:]
    top = float(np.max(inc))
    # error budget on log S~: relative error of the mass function (both sums and the normaliser),
    # blocked summation, and the rounding of the log-weights
    err_log = 4.0 * rel_err + 16.0 * _U * (_BLOCK + radius / _BLOCK + 8) + 4.0 * _U * _LOG_TAIL * 2
    err_q = 1e-13 * (1.0 + float(np.max(np.abs(q))))
    margin = 2.0 * (math.sqrt(math.pi / 2.0) * err_log + err_q)
    return 1.0 / (top + margin)


def _log_sum_bound(s: float, m: int) -> float:
    """log A, the absolute error bound of the module docstring (valid for s >= 1)."""
    log_rho = math.log(2.01) - math.pi**2 * s * s / 2.0
    rho = math.exp(log_rho)
    a = math.log(m) + log_rho + m * rho
    b = -m * math.pi**2 * s * s / 2.0 - math.log(math.pi**2 * m * s * s)
    return float(np.logaddexp(a, b))


def _plan_sum(s: float, m: int) -> tuple[float, int, float] | None:
    """(sigma_w, radius, rel_err) for the sum of m shares of scale s, or None if not tight enough."""
    sigma = math.sqrt(m) * s
    if s < 1.0:
        return None
    e0 = 2.0 * math.exp(-2.0 * math.pi**2 * s * s) * 1.01
    log_a = _log_sum_bound(s, m) + m * e0
    # cut where the relative error of the approximation reaches _MAX_REL
    log_norm = -0.5 * math.log(2.0 * math.pi * sigma * sigma)
    budget = log_norm - log_a + math.log(_MAX_REL)  # need R^2/(2 sigma^2) <= budget
    log_cut = min(_LOG_TAIL, budget)
    if log_cut < _MIN_LOG_TAIL:
        return None
    radius = math.ceil(sigma * math.sqrt(2.0 * log_cut))
    log_g_r = -(radius * radius) / (2.0 * sigma * sigma) + log_norm
    rel = math.exp(log_a - log_g_r)
    if rel > _MAX_REL:  # pragma: no cover - ceil moved R past the budget
        radius -= 1
        log_g_r = -(radius * radius) / (2.0 * sigma * sigma) + log_norm
        rel = math.exp(log_a - log_g_r)
    return sigma, radius, rel


def _tv(sigma_w: float, radius: int) -> float:
    ratio = math.exp(-(2 * radius - 1) / (2.0 * sigma_w * sigma_w))
    return 4.0 * math.exp(-(radius * radius) / (2.0 * sigma_w * sigma_w)) * (1.0 + 1.0 / -math.expm1(math.log(ratio)))


@functools.lru_cache(maxsize=1024)
def _domination(l2: float, sigma: float, dim: int, n: int) -> GaussianDomination | None:
    s = sigma / math.sqrt(n)
    plan = _plan_sum(s, n) if n > 1 else None
    used = n
    if plan is None:  # one share: its mass function is exact, any s > 0
        used = 1
        radius = math.ceil(s * math.sqrt(2.0 * _LOG_TAIL)) + 2
        plan = (s, radius, 0.0)
    sigma_w, radius, rel = plan
    if radius + 2 > _MAX_POINTS:
        return None
    s_eff = lattice_gdp_sigma(sigma_w, radius, rel)
    tv = dim * _tv(sigma_w, radius)
    return GaussianDomination(s_eff / l2, s_eff, tv, used)


def ddg_domination(event: DistributedDiscreteGaussianEvent) -> GaussianDomination | None:
    """The Gaussian that dominates ``event`` (module docstring), or None when the noise is too
    wide to analyse here (over 2e7 lattice points) or zero.

    The event's shift must be an integer vector of L2 norm at most ``l2_sensitivity`` (what
    conditional rounding guarantees); the L1 bound is not needed.
    """
    if not isinstance(event, DistributedDiscreteGaussianEvent):
        raise DPValueError(f"ddg_domination needs a DistributedDiscreteGaussianEvent, got {type(event).__name__}")
    if event.sigma == 0:
        return None
    return _domination(event.l2_sensitivity, event.sigma, event.dim, event.n_shares)
