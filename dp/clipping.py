"""L2 clipping and adaptive clipping by private quantile estimation.

* :func:`clip_l2` bounds the L2 norm of one (flattened) update, which is what gives every
  DP mechanism of :mod:`dp` its sensitivity.
* :class:`AdaptiveClipper` follows Andrew, Thakkar, McMahan, Ramaswamy, "Differentially
  Private Learning with Adaptive Clipping" (NeurIPS 2021): every round each client reports
  one bit ``b_i = 1[||update_i|| <= C]``; the server learns the *noised* fraction of
  unclipped updates and moves ``C`` geometrically towards the target quantile ``gamma``:
  ``C <- C exp(-eta (b_noisy - gamma))``.

Privacy of the clipper's own noise: the released statistic is ``S = sum_i (2 b_i - 1)`` plus
an exact discrete Gaussian of standard deviation ``2 sigma_b`` (``sigma_b`` is the noise on
the plain count, :attr:`AdaptiveClipper.count_stddev`). Adding or removing one client moves
``S`` by exactly 1, so one update is the (discrete) Gaussian mechanism with noise multiplier
``z_b = 2 sigma_b`` -- exactly the paper's ``b_i - 1/2`` centring with sensitivity 1/2. The
number of reporting clients ``n_clients`` is treated as public (the server sees who took
part), as in the paper. Compose this event with the update noise in the accountant
(Andrew et al. split a total multiplier ``z`` as ``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dp._validate import check_int, check_real
from dp.errors import DPTypeError, DPValueError
from dp.rand import RngLike
from dp.samplers import sample_discrete_gaussian

if TYPE_CHECKING:
    from dp.events import GaussianEvent

__all__ = ["AdaptiveClipper", "clip_l2", "l2_norm"]

_TINY: float = 1e-150
_HUGE: float = 1e150
_C_RANGE: tuple[float, float] = (1e-300, 1e300)


def _check_real(name: str, value: object, *, low: float = 0.0, low_open: bool = True, high: float = math.inf) -> float:
    return check_real(name, value, low=low, low_open=low_open, high=high)


def _check_int(name: str, value: object, low: int) -> int:
    return check_int(name, value, low=low)


def _as_float_vector(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """A float64 copy of ``x``; DPTypeError for non-real dtypes, DPValueError for NaN/inf/empty."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise DPTypeError(f"update must be a real numeric array, got dtype {arr.dtype}")
    out = np.array(arr, dtype=np.float64, copy=True)
    if out.size == 0:
        raise DPValueError("update is empty (d = 0); nothing to clip")
    bad = ~np.isfinite(out)
    if bad.any():
        raise DPValueError(f"update contains {int(bad.sum())} NaN/inf value(s); fix the training step before clipping")
    return out


def l2_norm(x: npt.NDArray[np.float64]) -> float:
    """L2 norm of a finite float64 array (all entries, flattened), without overflow or underflow."""
    flat = x.reshape(-1)
    with np.errstate(over="ignore", under="ignore"):
        norm = float(np.sqrt(np.dot(flat, flat)))
    if _TINY < norm < _HUGE:
        return norm
    top = float(np.max(np.abs(flat)))
    if top == 0.0:
        return 0.0
    scaled = flat / top
    return top * float(np.sqrt(np.dot(scaled, scaled)))


def clip_l2(x: npt.ArrayLike, max_norm: float) -> tuple[npt.NDArray[np.float64], float]:
    """Clip ``x`` (any shape, treated as one flattened vector) to L2 norm at most ``max_norm``.

    Args:
        x: the update; real numbers, any shape, at least one entry.
        max_norm: the clipping bound ``C > 0`` (same units as ``x``).

    Returns:
        ``(clipped, norm)``: a float64 copy of ``x`` (same shape) scaled by
        ``min(1, C / norm)`` and guaranteed to satisfy ``||clipped||_2 <= C`` in float64, and
        ``norm``, the pre-clip L2 norm (float64).

    Raises:
        DPTypeError: non-numeric input. DPValueError: NaN/inf, empty input, bad ``max_norm``.
    """
    c = _check_real("max_norm", max_norm)
    out = _as_float_vector(x)
    norm = l2_norm(out)
    if norm > c:
        out *= c / norm
        # Rounding can leave the norm one ulp above C: shrink until it is not.
        while l2_norm(out) > c:
            out *= 1.0 - 2.0**-50
    return out, norm


@dataclass(frozen=True)
class AdaptiveClipper:
    """Adaptive clipping norm by private quantile estimation (Andrew et al. 2021), immutable.

    Args:
        clip_norm: current clipping norm ``C > 0``.
        target_quantile: ``gamma`` in (0, 1), the fraction of updates that should stay unclipped
            (the paper's experiments use 0.5).
        learning_rate: ``eta > 0`` of the geometric update (paper: 0.2).
        count_stddev: ``sigma_b >= 0``, noise standard deviation on the count of unclipped
            updates (paper: expected clients per round / 20). 0 means no noise and no privacy.
        rounds: number of updates applied so far.
        last_fraction: the noised unclipped fraction used by the last update (``None`` before).

    Use :meth:`clip` (or :meth:`indicator`) on each client, then :meth:`update` with the
    number of unclipped updates; it returns a new clipper.
    """

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 0.0
    rounds: int = 0
    last_fraction: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_norm", _check_real("clip_norm", self.clip_norm))
        object.__setattr__(
            self, "target_quantile", _check_real("target_quantile", self.target_quantile, high=1.0)
        )
        if self.target_quantile == 1.0:
            raise DPValueError("target_quantile must be < 1")
        object.__setattr__(self, "learning_rate", _check_real("learning_rate", self.learning_rate))
        object.__setattr__(self, "count_stddev", _check_real("count_stddev", self.count_stddev, low_open=False))
        if 0.0 < self.count_stddev < 2.0**-39:
            raise DPValueError("count_stddev must be 0 (no noise) or >= 2^-39")
        object.__setattr__(self, "rounds", _check_int("rounds", self.rounds, 0))
        if self.last_fraction is not None:
            object.__setattr__(self, "last_fraction", _check_real("last_fraction", self.last_fraction, low=-math.inf))

    def clip(self, x: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], float]:
        """:func:`clip_l2` with the current ``clip_norm``."""
        return clip_l2(x, self.clip_norm)

    def indicator(self, norm: float) -> int:
        """The client's bit ``b = 1`` if ``norm <= clip_norm`` (update not clipped), else 0."""
        n = _check_real("norm", norm, low_open=False)
        return int(n <= self.clip_norm)

    def update(self, indicator_count: int, n_clients: int, rng: RngLike = None) -> AdaptiveClipper:
        """One round: noise the count, move the clipping norm, return the new clipper.

        Args:
            indicator_count: ``sum_i b_i``, the number of reporting clients whose update norm
                was ``<= clip_norm`` (not clipped).
            n_clients: number of clients that reported a bit (public).
            rng: randomness for the noise (default: a fresh CSPRNG).

        Returns:
            A new :class:`AdaptiveClipper` with ``clip_norm = C exp(-eta (b_noisy - gamma))``,
            ``b_noisy = (2 count + Z) / (2 n)``, ``Z`` ~ N_Z(0, (2 sigma_b)^2); ``self`` is unchanged.
        """
        n = _check_int("n_clients", n_clients, 1)
        count = _check_int("indicator_count", indicator_count, 0)
        if count > n:
            raise DPValueError(f"indicator_count ({count}) cannot exceed n_clients ({n})")
        z = int(sample_discrete_gaussian(2.0 * self.count_stddev, 1, rng)[0]) if self.count_stddev > 0 else 0
        frac = (2 * count + z) / (2.0 * n)
        expo = -self.learning_rate * (frac - self.target_quantile)
        new_c = self.clip_norm * math.exp(expo) if expo < 700.0 else math.inf
        if not _C_RANGE[0] <= new_c <= _C_RANGE[1]:
            raise DPValueError(
                f"the clipping norm would leave [{_C_RANGE[0]}, {_C_RANGE[1]}] ({new_c}); "
                "lower learning_rate or count_stddev relative to n_clients"
            )
        return dataclasses.replace(self, clip_norm=new_c, rounds=self.rounds + 1, last_fraction=frac)

    @property
    def noise_multiplier(self) -> float:
        """``2 sigma_b``: noise std over the add/remove sensitivity (1) of ``sum_i (2 b_i - 1)``."""
        return 2.0 * self.count_stddev

    def privacy_description(self) -> dict[str, object]:
        """What one :meth:`update` releases, for the accountant (JSON-friendly)."""
        return {
            "mechanism": "discrete_gaussian",
            "query": "sum over reporting clients of (2 b_i - 1), b_i = 1[norm <= clip_norm]",
            "adjacency": "add/remove one client",
            "l2_sensitivity": 1.0,
            "noise_stddev": 2.0 * self.count_stddev,
            "noise_multiplier": self.noise_multiplier,
            "count_stddev": self.count_stddev,
            "per": "round",
            "reference": "Andrew et al., NeurIPS 2021",
        }

    def privacy_event(self) -> GaussianEvent:
        """The privacy event of one :meth:`update`: ``GaussianEvent(noise_multiplier=2 sigma_b)``.

        For an integer query of sensitivity 1 the discrete Gaussian's moments
        ``E[(p1/p0)^j]`` equal the continuous Gaussian's, ``exp(j (j - 1) / (2 s^2))``, at every
        integer ``j``, so its Renyi divergences, and the integer-order formula of the sampled
        Gaussian analysis, coincide with the Gaussian event's. Sampling amplification is the
        accountant's business (wrap the event as for the model update).

        Raises:
            DPValueError: ``count_stddev == 0`` (the clipper then offers no privacy).
        """
        if self.count_stddev == 0:
            raise DPValueError("count_stddev is 0: the adaptive clipper adds no noise and is not private")
        from dp.events import GaussianEvent

        return GaussianEvent(noise_multiplier=self.noise_multiplier)
