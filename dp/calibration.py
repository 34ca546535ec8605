"""Noise calibration: the smallest noise multiplier meeting a target (epsilon, delta) over T rounds.

The search is a bisection on the chosen accountant, and the value returned is always the
upper end of the final bracket, whose epsilon was checked to be <= the target: rounding
errs on the side of more noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dp._validate import check_int, check_positive, check_probability
from dp.accountants import make_accountant
from dp.errors import DPValueError
from dp.events import MAX_COUNT, GaussianEvent, PoissonSampledEvent, PrivacyEvent
from dp.rdp import _check_delta

__all__ = ["MAX_NOISE_MULTIPLIER", "calibrate", "calibrate_noise_multiplier"]

#: Largest noise multiplier the search tries before declaring the target unreachable.
MAX_NOISE_MULTIPLIER = 1e9


def _positive(name: str, value: object) -> float:
    return check_positive(name, value)


def _rounds(rounds: object) -> int:
    return check_int("rounds", rounds, low=1, high=MAX_COUNT)


def calibrate(
    epsilon_of: Callable[[float], float],
    target_epsilon: float,
    *,
    tol: float = 1e-4,
    lower: float = 0.0,
    upper: float = MAX_NOISE_MULTIPLIER,
    start: float | None = None,
    factor: float = 2.0,
) -> float:
    """Smallest x in (lower, upper] with ``epsilon_of(x) <= target_epsilon`` (to relative ``tol``).

    ``epsilon_of`` must be non-increasing in x (more noise, less epsilon).  The result's
    epsilon has been evaluated and is <= the target.

    The bracket [lo, hi] (epsilon(lo) > target >= epsilon(hi)) is found by doubling/halving
    from ``start`` (default 1, or ``lower`` doubled) in steps of ``factor`` (pass a start
    close to the answer and a small factor to save evaluations), and then narrowed by regula falsi on
    (log x, log epsilon) with the Illinois modification, with a bisection step after two
    steps that did not halve the bracket; it stops when
    ``hi - lo <= tol * hi`` and returns ``hi``.  Typically 6-10 evaluations instead of
    bisection's 15-20, which matters for the numerical accountants.

    Raises:
        DPValueError: the target is not reached even at ``upper``.
    """
    target = _positive("target_epsilon", target_epsilon)
    tol = _positive("tol", tol)
    factor = _positive("factor", factor)
    if factor <= 1:
        raise DPValueError(f"factor must be > 1, got {factor}")
    hi = min(max(1.0, 2.0 * lower) if start is None else max(float(start), lower), upper)
    e_hi = epsilon_of(hi)
    lo, e_lo = lower, math.inf
    while e_hi > target:
        if hi >= upper:
            raise DPValueError(f"target epsilon {target} is unreachable even with noise {upper:g}; raise the "
                               "target epsilon or delta, or lower the number of rounds or the sampling rate")
        lo, e_lo = hi, e_hi
        hi = min(factor * hi, upper)
        e_hi = epsilon_of(hi)
    if lo == lower and hi > lower:  # look for a finite lower end below hi by halving (a few steps at most)
        for _ in range(60):
            cand = max(hi / factor, lower)
            if cand <= lower or hi - cand <= tol * hi:
                break
            e = epsilon_of(cand)
            if e > target:
                lo, e_lo = cand, e
                break
            hi, e_hi = cand, e
    log_t = math.log(target)

    def f(e: float) -> float:  # > 0 above the target; finite stand-in for an infinite epsilon
        return math.log(e) - log_t if 0 < e < math.inf else (math.inf if e > 0 else -math.inf)

    f_lo, f_hi = f(e_lo), f(e_hi)
    last = 0  # +1: hi moved last, -1: lo moved last (Illinois: halve the stale end's value)
    bisect_next, slow = False, 0
    while hi - lo > tol * hi:
        width = hi - lo
        x = 0.5 * (lo + hi)
        if not bisect_next and lo > 0 and math.isfinite(f_lo) and math.isfinite(f_hi) and f_lo > f_hi:
            a, b = math.log(lo), math.log(hi)
            guess = math.exp(a + (b - a) * f_lo / (f_lo - f_hi))
            # aim just past the estimated root, on the side of the end that did not move last, so
            # that an accurate guess closes the bracket from both sides in two evaluations
            guess += 0.4 * tol * hi * (-1 if last == 1 else 1 if last == -1 else 0)
            margin = 0.1 * tol * hi
            x = min(max(guess, lo + margin), hi - margin)
        e = epsilon_of(x)
        if e <= target:
            hi, e_hi, f_hi = x, e, f(e)
            if last == 1:
                f_lo *= 0.5
            last = 1
        else:
            lo, e_lo, f_lo = x, e, f(e)
            if last == -1:
                f_hi *= 0.5
            last = -1
        slow = slow + 1 if hi - lo > 0.5 * width else 0
        bisect_next = slow >= 2  # two slow steps in a row: bisect once
    return hi


def _event(noise_multiplier: float, sampling_rate: float) -> PrivacyEvent:
    g = GaussianEvent(noise_multiplier)
    return g if sampling_rate == 1.0 else PoissonSampledEvent(sampling_rate, g)


def calibrate_noise_multiplier(  # noqa: PLR0917 - the agreed signature
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling_rate: float = 1.0,
    accountant: str = "rdp",
    tol: float = 1e-4,
) -> float:
    """Noise multiplier z for ``rounds`` Poisson-subsampled Gaussian releases to be (target_epsilon, delta)-DP.

    Args:
        target_epsilon: epsilon budget (> 0).
        delta: target delta in (0, 1).
        rounds: number of releases T (>= 1).
        sampling_rate: Poisson inclusion probability q in (0, 1]; 1.0 means no sampling
            (use 1.0 for the server adversary, who sees who took part).
        accountant: ``"rdp"``, ``"opacus-rdp"``, ``"prv"`` or ``"pld"``.
        tol: relative width of the final bisection bracket.

    Returns:
        z = noise standard deviation / L2 sensitivity; rounded up (safe side).

    Raises:
        DPValueError: bad input, or the target is unreachable (z would exceed
            :data:`MAX_NOISE_MULTIPLIER`).
        AccountingError: the backend accountant failed (e.g. PRV, opacus#601).
    """
    target = _positive("target_epsilon", target_epsilon)
    d = _check_delta(delta)
    t = _rounds(rounds)
    q = check_probability("sampling_rate", sampling_rate, allow_one=True)
    make_accountant(accountant)  # fail fast on an unknown or unavailable accountant

    def epsilon_with(name: str, **options: Any) -> Callable[[float], float]:
        def epsilon_of(z: float) -> float:
            acc = make_accountant(name, **options)
            acc.compose(_event(z, q), t)
            return acc.get_epsilon(d)

        return epsilon_of

    if accountant == "rdp":
        return calibrate(epsilon_with("rdp"), target, tol=tol)
    # numerical accountants: start from the (fast) RDP answer, which they can only lower;
    # for PLD narrow it down on a 10x coarser grid (pessimistic, so still an upper bound)
    # and finish on the configured grid in small steps from there
    start = calibrate(epsilon_with("rdp"), target, tol=1e-2)
    if accountant == "pld" and q < 1.0:
        start = calibrate(epsilon_with("pld", value_discretization_interval=1e-3), target, tol=1e-3,
                          start=start, factor=1.25)
        return calibrate(epsilon_with(accountant), target, tol=tol, start=start, factor=1.01)
    return calibrate(epsilon_with(accountant), target, tol=tol, start=start, factor=1.25)
