"""Noise calibration: the smallest noise multiplier meeting a target (epsilon, delta) over T rounds.

The search is a bisection on the chosen accountant, and the value returned is always the
upper end of the final bracket, whose epsilon was checked to be <= the target: rounding
errs on the side of more noise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

from dp.accountants import make_accountant
from dp.errors import DPTypeError, DPValueError
from dp.events import GaussianEvent, PoissonSampledEvent, PrivacyEvent
from dp.rdp import _check_delta

__all__ = ["MAX_NOISE_MULTIPLIER", "calibrate", "calibrate_noise_multiplier"]

#: Largest noise multiplier the search tries before declaring the target unreachable.
MAX_NOISE_MULTIPLIER = 1e6


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DPTypeError(f"{name} must be a real number, got {type(value).__name__}")
    x = float(value)
    if math.isnan(x) or math.isinf(x) or x <= 0:
        raise DPValueError(f"{name} must be finite and > 0, got {x}")
    return x


def _rounds(rounds: object) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral):
        raise DPTypeError(f"rounds must be an integer, got {type(rounds).__name__}")
    t = int(rounds)
    if t < 1:
        raise DPValueError(f"rounds must be >= 1, got {t}")
    return t


def calibrate(
    epsilon_of: Callable[[float], float],
    target_epsilon: float,
    *,
    tol: float = 1e-4,
    lower: float = 0.0,
    upper: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """Smallest x in (lower, upper] with ``epsilon_of(x) <= target_epsilon`` (to relative ``tol``).

    ``epsilon_of`` must be non-increasing in x (more noise, less epsilon).  The result's
    epsilon has been evaluated and is <= the target.

    Raises:
        DPValueError: the target is not reached even at ``upper``.
    """
    target = _positive("target_epsilon", target_epsilon)
    tol = _positive("tol", tol)
    lo, hi = lower, min(max(1.0, 2.0 * lower), upper)
    while epsilon_of(hi) > target:
        if hi >= upper:
            raise DPValueError(f"target epsilon {target} is unreachable even with noise {upper:g}; raise the "
                               "target epsilon or delta, or lower the number of rounds or the sampling rate")
        lo, hi = hi, min(2.0 * hi, upper)
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if epsilon_of(mid) <= target:
            hi = mid
        else:
            lo = mid
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
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, numbers.Real):
        raise DPTypeError(f"sampling_rate must be a real number, got {type(sampling_rate).__name__}")
    q = float(sampling_rate)
    if math.isnan(q) or not 0 < q <= 1:
        raise DPValueError(f"sampling_rate must be in (0, 1], got {q}")
    make_accountant(accountant)  # fail fast on an unknown or unavailable accountant

    def epsilon_of(z: float) -> float:
        acc = make_accountant(accountant)
        acc.compose(_event(z, q), t)
        return acc.get_epsilon(d)

    return calibrate(epsilon_of, target, tol=tol)
