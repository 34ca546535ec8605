"""Privacy accountants: turn a sequence of :mod:`dp.events` into (epsilon, delta).

Every accountant follows the :class:`Accountant` protocol:

* ``compose(event, count=1)`` validates *first* and only then records the event; an invalid
  or unsupported event raises a typed error and leaves the accountant exactly as it was
  (opacus's accountants append to their history and dp_accounting's mutate their state
  before some failures; these do not);
* ``get_epsilon(delta)`` / ``get_delta(epsilon)`` (``DPValueError`` for delta outside (0, 1),
  NaN, negative epsilon);
* ``copy()`` and ``events`` (the recorded events, for replaying a ledger).

Implementations:

* :class:`RdpAccountant` (``"rdp"``) -- our own RDP accountant; every event type of
  :mod:`dp.events`; no optional dependency.
* :class:`OpacusRdpAccountant` (``"opacus-rdp"``) -- opacus's RDP analysis.
* :class:`PrvAccountant` (``"prv"``) -- opacus's PRV accountant (Gopi, Lee, Wutschitz 2021);
  tighter, but known to crash or hang for some parameters (opacus#601, #604): those cases
  raise :class:`~dp.errors.AccountingError` advising ``"rdp"``.
* :class:`PldAccountant` (``"pld"``) -- Google dp_accounting's privacy-loss-distribution
  accountant (pessimistic discretisation, so an upper bound); it also accounts for the
  distributed discrete Gaussian (sampled or not) through the Gaussian that dominates it
  (:mod:`dp.pld`).

The three backends are optional (installed with the ``torch`` / ``accounting`` extras),
imported only when used, and support only Gaussian and Poisson-subsampled Gaussian events
(and compositions of them; ``"pld"`` also the distributed discrete Gaussian); anything else
raises :class:`~dp.errors.AccountingError`.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from dp._validate import check_int
from dp.errors import AccountingError, DPTypeError, DPValueError
from dp.events import (
    MAX_COUNT,
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
)
from dp.rdp import (
    DEFAULT_ORDERS,
    Adjacency,
    Orders,
    _check_delta,
    _check_epsilon,
    _log_erfc,
    _orders,
    event_rdp,
    rdp_to_delta,
    rdp_to_epsilon,
)

__all__ = [
    "ACCOUNTANT_NAMES",
    "Accountant",
    "OpacusRdpAccountant",
    "PldAccountant",
    "PrvAccountant",
    "RdpAccountant",
    "available_accountants",
    "make_accountant",
]

#: Names accepted by :func:`make_accountant`.
ACCOUNTANT_NAMES: tuple[str, ...] = ("rdp", "opacus-rdp", "prv", "pld")


@runtime_checkable
class Accountant(Protocol):
    """What every accountant offers (see the module docstring for the contract)."""

    name: str

    def compose(self, event: PrivacyEvent, count: int = 1) -> None:
        """Record ``event`` ``count`` times; on any error nothing is recorded."""

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before any event)."""

    def get_delta(self, epsilon: float) -> float:
        """Delta spent so far at ``epsilon`` (0.0 before any event)."""

    def copy(self) -> Accountant:
        """An independent accountant with the same configuration and history."""

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        """Recorded events in order (``SelfComposedEvent`` when ``count`` > 1)."""


def _check_event(event: object) -> PrivacyEvent:
    if not isinstance(event, PrivacyEvent):
        raise DPTypeError(f"event must be a dp.events.PrivacyEvent, got {type(event).__name__}")
    return event


def _check_count(count: object) -> int:
    """``count`` as an int in [1, :data:`dp.events.MAX_COUNT`]; bool and float are a DPTypeError."""
    return check_int("count", count, low=1, high=MAX_COUNT)


@functools.lru_cache(maxsize=256)
def _cached_curve(event: PrivacyEvent, orders: tuple[float, ...], adjacency: Adjacency) -> tuple[float, ...]:
    """RDP curves of repeated identical rounds are computed once (events are frozen and hashable)."""
    return tuple(event_rdp(event, orders, adjacency=adjacency).tolist())


class RdpAccountant:
    """Renyi-DP accountant for every event in :mod:`dp.events` (no optional dependency).

    Curves from :func:`dp.rdp.event_rdp` are summed; epsilon uses the tight conversion of
    :func:`dp.rdp.rdp_to_epsilon` minimised over ``orders``.

    Args:
        orders: RDP orders (default :data:`dp.rdp.DEFAULT_ORDERS`).
        adjacency: ``"add_remove"`` (default; Poisson sampling) or ``"replace_one"``
            (fixed-size sampling without replacement).
    """

    name = "rdp"

    def __init__(self, orders: Orders | None = None, adjacency: Adjacency = "add_remove") -> None:
        if adjacency not in ("add_remove", "replace_one"):
            raise DPValueError(f"adjacency must be 'add_remove' or 'replace_one', got {adjacency!r}")
        self._orders = _orders(DEFAULT_ORDERS if orders is None else orders)
        self._orders.setflags(write=False)
        self._orders_key = tuple(float(a) for a in self._orders)
        self._adjacency: Adjacency = adjacency
        self._rdp = np.zeros_like(self._orders)
        self._events: tuple[PrivacyEvent, ...] = ()

    @property
    def orders(self) -> tuple[float, ...]:
        """The RDP orders used."""
        return self._orders_key

    @property
    def adjacency(self) -> Adjacency:
        """Neighbouring relation of the guarantee."""
        return self._adjacency

    @property
    def rdp(self) -> npt.NDArray[np.float64]:
        """Copy of the accumulated RDP curve (one value per order)."""
        return self._rdp.copy()

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        return self._events

    def compose(self, event: PrivacyEvent, count: int = 1) -> None:
        """Add ``count`` x the RDP curve of ``event``; validate everything before changing state."""
        ev = _check_event(event)
        n = _check_count(count)
        curve = _cached_curve(ev, self._orders_key, self._adjacency)  # may raise; nothing changed yet
        new_rdp = self._rdp + n * np.asarray(curve, dtype=np.float64)
        recorded = ev if n == 1 else SelfComposedEvent(ev, n)
        self._rdp, self._events = new_rdp, (*self._events, recorded)

    def get_epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """(epsilon, optimal order) at ``delta``; (0.0, nan) before any event."""
        d = _check_delta(delta)
        if not self._events:
            return 0.0, math.nan
        return rdp_to_epsilon(self._orders, self._rdp, d)

    def get_epsilon(self, delta: float) -> float:
        return self.get_epsilon_and_order(delta)[0]

    def get_delta(self, epsilon: float) -> float:
        e = _check_epsilon(epsilon)
        if not self._events:
            return 0.0
        return rdp_to_delta(self._orders, self._rdp, e)[0]

    def copy(self) -> RdpAccountant:
        other = RdpAccountant(self._orders, self._adjacency)
        other._rdp = self._rdp.copy()
        other._events = self._events
        return other

    def __repr__(self) -> str:
        return f"RdpAccountant(events={len(self._events)}, adjacency={self._adjacency!r})"


# --------------------------------------------------------------------------- backends


def _gaussian_terms(event: PrivacyEvent, count: int) -> list[tuple[float, float, int]]:
    """(noise multiplier, sampling rate, steps) entries for a backend, or AccountingError."""
    if isinstance(event, GaussianEvent):
        return [(event.noise_multiplier, 1.0, count)]
    if isinstance(event, PoissonSampledEvent):
        inner = _gaussian_terms(event.event, 1)
        if all(q == 1.0 for _, q, _ in inner):
            inv = 0.0
            for z, _, steps in inner:
                if z == 0:
                    return [(0.0, event.sampling_rate, count)]
                inv += steps / (z * z)
            return [(1.0 / math.sqrt(inv), event.sampling_rate, count)]
    elif isinstance(event, SelfComposedEvent):
        return [(z, q, steps * count) for z, q, steps in _gaussian_terms(event.event, event.count)]
    elif isinstance(event, ComposedEvent):
        # composition is commutative: repeating (A, B) count times spends what A x count + B x count does
        out: list[tuple[float, float, int]] = []
        for e in event.events:
            out.extend(_gaussian_terms(e, count))
        return out
    raise AccountingError(f"this backend accounts only for Gaussian and Poisson-subsampled Gaussian events, not "
                          f"{type(event).__name__}; use accountant='rdp'")


_Term = tuple[float, float, int]


def _dominated(event: PrivacyEvent) -> tuple[PrivacyEvent, float]:
    """``event`` with every distributed discrete Gaussian replaced by the Gaussian that dominates
    it (:func:`dp.pld.ddg_domination`), and the total-variation slack of the replacement."""
    if isinstance(event, DistributedDiscreteGaussianEvent):
        from dp.pld import ddg_domination

        if event.sigma == 0:
            return GaussianEvent(0.0), 0.0
        dom = ddg_domination(event)
        if dom is None:
            raise AccountingError("the distributed discrete Gaussian of this event is too wide for the lattice "
                                  "analysis (over 2e7 points per coordinate): use accountant='rdp'")
        return GaussianEvent(dom.noise_multiplier), dom.tv
    if isinstance(event, PoissonSampledEvent):
        inner, tv = _dominated(event.event)
        return PoissonSampledEvent(event.sampling_rate, inner), tv
    if isinstance(event, SelfComposedEvent):
        inner, tv = _dominated(event.event)
        return SelfComposedEvent(inner, event.count), tv * event.count
    if isinstance(event, ComposedEvent):
        parts = [_dominated(e) for e in event.events]
        return ComposedEvent([e for e, _ in parts]), sum(t for _, t in parts)
    return event, 0.0


def _merge(history: list[_Term], terms: list[_Term]) -> list[_Term]:
    out = list(history)
    for z, q, steps in terms:
        if out and out[-1][0] == z and out[-1][1] == q:
            out[-1] = (z, q, out[-1][2] + steps)
        else:
            out.append((z, q, steps))
    return out


def _require(module: str, extra: str, name: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise AccountingError(f"accountant {name!r} needs the optional package {module!r}: "
                              f"pip install 'secagg[{extra}]', or use accountant='rdp'")


class _BackendAccountant:
    """Shared machinery: validated history of (noise multiplier, sampling rate, steps)."""

    name = ""

    def __init__(self) -> None:
        self._history: list[tuple[float, float, int]] = []
        self._events: tuple[PrivacyEvent, ...] = ()

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        return self._events

    @property
    def history(self) -> tuple[tuple[float, float, int], ...]:
        """(noise multiplier, sampling rate, steps) entries as the backend sees them."""
        return tuple(self._history)

    def compose(self, event: PrivacyEvent, count: int = 1) -> None:
        """Record ``event``; AccountingError (state unchanged) if the backend cannot account for it."""
        ev = _check_event(event)
        n = _check_count(count)
        new_history = _merge(self._history, _gaussian_terms(ev, n))
        if any(steps > MAX_COUNT for _, _, steps in new_history):
            raise DPValueError(f"more than {MAX_COUNT} repetitions of one event in total (nested self-composition); "
                               "no training run composes that many")
        recorded = ev if n == 1 else SelfComposedEvent(ev, n)
        self._history, self._events = new_history, (*self._events, recorded)

    def _non_private(self) -> bool:
        return any(z == 0 for z, _, _ in self._history)

    def _copy_into(self, other: _BackendAccountant) -> None:
        other._history = list(self._history)
        other._events = self._events

    def __repr__(self) -> str:
        return f"{type(self).__name__}(events={len(self._events)})"


class OpacusRdpAccountant(_BackendAccountant):
    """opacus's ``RDPAccountant`` (opacus's orders and conversion; epsilon clamped at >= 0).

    ``get_delta`` converts opacus's RDP curve with :func:`dp.rdp.rdp_to_delta` (opacus has none).

    Args:
        orders: RDP orders passed to opacus (default: opacus's ``DEFAULT_ALPHAS``).
    """

    name = "opacus-rdp"

    def __init__(self, orders: Orders | None = None) -> None:
        _require("opacus", "torch", self.name)
        super().__init__()
        self._alphas = None if orders is None else [float(a) for a in _orders(orders)]

    def _alphas_or_default(self) -> list[float]:
        if self._alphas is not None:
            return self._alphas
        from opacus.accountants import RDPAccountant

        return [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]

    def get_epsilon(self, delta: float) -> float:
        d = _check_delta(delta)
        if not self._history:
            return 0.0
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = list(self._history)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            eps = float(acc.get_epsilon(delta=d, alphas=self._alphas_or_default()))
        if math.isnan(eps):
            raise AccountingError("opacus's RDP accountant returned NaN; use accountant='rdp'")
        return max(eps, 0.0)

    def get_delta(self, epsilon: float) -> float:
        e = _check_epsilon(epsilon)
        if not self._history:
            return 0.0
        from opacus.accountants.analysis.rdp import compute_rdp

        alphas = self._alphas_or_default()
        total = np.zeros(len(alphas))
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for z, q, steps in self._history:
                total = total + np.asarray(compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=alphas), float)
        return rdp_to_delta(alphas, total, e)[0]

    def copy(self) -> OpacusRdpAccountant:
        other = OpacusRdpAccountant(self._alphas)
        self._copy_into(other)
        return other


_PRV_ERRORS = (RuntimeError, ValueError, FloatingPointError, OverflowError, ZeroDivisionError, IndexError,
               MemoryError)


class PrvAccountant(_BackendAccountant):
    """opacus's ``PRVAccountant`` (numerical composition of privacy random variables).

    Returns opacus's *upper* estimate (estimate + ``eps_error``).  Known failures -- "Discrete
    mean differs significantly from continuous mean" (opacus#601, #604), "Cannot compute
    epsilon", overflow, or a discretisation grid so large it would take minutes -- raise
    :class:`~dp.errors.AccountingError` telling you to use ``accountant='rdp'``.

    Args:
        eps_error: allowed error on epsilon (default 0.01, opacus's).
        max_grid: refuse (AccountingError) when the PRV grid would exceed this many points.
    """

    name = "prv"

    def __init__(self, eps_error: float = 0.01, max_grid: int = 4_000_000) -> None:
        _require("opacus", "torch", self.name)
        super().__init__()
        if isinstance(eps_error, bool) or not isinstance(eps_error, (int, float)) or not 0 < float(eps_error) < 1:
            raise DPValueError(f"eps_error must be in (0, 1), got {eps_error!r}")
        self._eps_error = float(eps_error)
        self._max_grid = int(max_grid)

    def _accountant(self, delta_error: float) -> Any:
        from opacus.accountants import PRVAccountant
        from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

        acc = PRVAccountant()
        acc.history = list(self._history)
        try:  # predict the grid size with opacus's own domain rule before paying for it
            prvs = [PoissonSubsampledGaussianPRV(q, z) for z, q, _ in self._history]
            domain = acc._get_domain(prvs=prvs, num_self_compositions=[s for _, _, s in self._history],
                                     eps_error=self._eps_error, delta_error=delta_error)
            size = int(domain.size)
        except AttributeError:  # pragma: no cover - opacus internals changed; skip the guard
            size = 0
        if size > self._max_grid:
            raise AccountingError(f"the PRV accountant would need a {size}-point grid for this history (large "
                                  "epsilon; opacus#604): use accountant='rdp' instead")
        return acc

    def get_epsilon(self, delta: float) -> float:
        d = _check_delta(delta)
        if not self._history:
            return 0.0
        if self._non_private():
            return math.inf
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                acc = self._accountant(d / 1000)
                eps = float(acc.get_epsilon(delta=d, eps_error=self._eps_error))
        except AccountingError:
            raise
        except _PRV_ERRORS as exc:
            raise AccountingError(f"opacus's PRV accountant failed for these parameters ({exc}; known issues "
                                  "opacus#601, #604): use accountant='rdp' instead") from exc
        if not math.isfinite(eps):
            raise AccountingError(f"opacus's PRV accountant returned {eps} for these parameters (opacus#604): "
                                  "use accountant='rdp' instead")
        return max(eps, 0.0)

    def get_delta(self, epsilon: float) -> float:
        """Upper bound delta_hat(epsilon - eps_error) + delta_error from the PRV error analysis."""
        e = _check_epsilon(epsilon)
        if not self._history:
            return 0.0
        if self._non_private():
            return 1.0
        delta_error = 1e-10
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                acc = self._accountant(delta_error)
                dprv = acc._get_dprv(eps_error=self._eps_error, delta_error=delta_error)
                est = float(dprv.compute_delta_estimate(max(e - self._eps_error, 0.0)))
        except AccountingError:
            raise
        except (*_PRV_ERRORS, AttributeError) as exc:
            raise AccountingError(f"opacus's PRV accountant failed for these parameters ({exc}): use "
                                  "accountant='rdp' instead") from exc
        if not math.isfinite(est):
            raise AccountingError("opacus's PRV accountant returned a non-finite delta: use accountant='rdp'")
        return min(max(est, 0.0) + delta_error, 1.0)

    def copy(self) -> PrvAccountant:
        other = PrvAccountant(self._eps_error, self._max_grid)
        self._copy_into(other)
        return other


def _log_phi(x: float) -> float:
    """log of the standard normal CDF, accurate far into the lower tail."""
    return math.log(0.5) + float(_log_erfc(np.array([-x / math.sqrt(2.0)]))[0])


def gaussian_delta(mu: float, epsilon: float) -> float:
    """Exact delta(epsilon) of a Gaussian mechanism with mu = sensitivity / std (Balle and Wang 2018).

    delta = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2).  T compositions of
    Gaussians with multipliers z_i are one Gaussian with mu = sqrt(sum 1/z_i^2), so this is
    also the exact privacy profile of any number of unsampled Gaussian rounds.
    """
    if mu == 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    la = _log_phi(-epsilon / mu + mu / 2)
    lb = _log_phi(-epsilon / mu - mu / 2)
    diff = epsilon + lb - la
    if diff >= 0:  # rounding at delta ~ 0
        return 0.0
    return min(max(math.exp(la) * -math.expm1(diff), 0.0), 1.0)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Smallest epsilon (rounded up to relative 1e-12) with :func:`gaussian_delta` <= ``delta``."""
    if mu == 0 or gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    if math.isinf(mu):
        return math.inf
    lo, hi = 0.0, max(1.0, mu * mu)
    while gaussian_delta(mu, hi) > delta:
        lo, hi = hi, 2.0 * hi
        if hi > 1e300:  # pragma: no cover - delta below float resolution
            return math.inf
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mu, mid) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


class PldAccountant(_BackendAccountant):
    """Google dp_accounting's ``PLDAccountant`` (pessimistic discretisation: an upper bound).

    Unsampled Gaussian rounds are composed analytically: T rounds with multipliers z_i are
    one Gaussian with ``1 / z_eff^2 = sum 1 / z_i^2`` (the sum of the rounds' privacy-loss
    random variables is again Gaussian).  A history of unsampled Gaussians only is then
    answered with the exact Gaussian privacy profile (Balle and Wang 2018), in
    milliseconds whatever T (:attr:`composition` is ``"analytic"``); Poisson-sampled rounds,
    whose loss distribution has no closed form under composition, go through dp_accounting's
    numerical PLD composition, together with the one merged Gaussian (``"numeric"``).

    A :class:`~dp.events.DistributedDiscreteGaussianEvent` (alone, Poisson-sampled or composed)
    is accounted as the Gaussian with multiplier ``z_eff`` that dominates it
    (:func:`dp.pld.ddg_domination`: the lattice pair is a post-processing of the Gaussian pair
    up to a total-variation slack ``tv``), so it is composed and subsampled exactly like a
    Gaussian.  The slack enters every figure: ``delta(eps) = delta_gauss(eps) + (1 + e^eps) *
    sum tv`` and ``get_epsilon(delta)`` answers at ``delta (1 - 1e-9)`` after checking that
    the slack fits in the remaining ``1e-9 delta`` (it is below 1e-40 in practice).

    Args:
        value_discretization_interval: PLD grid step (smaller is tighter and slower).
    """

    name = "pld"

    def __init__(self, value_discretization_interval: float = 1e-4) -> None:
        _require("dp_accounting", "accounting", self.name)
        super().__init__()
        v = value_discretization_interval
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < float(v) < 1:
            raise DPValueError(f"value_discretization_interval must be in (0, 1), got {v!r}")
        self._interval = float(v)
        self._cache: tuple[tuple[tuple[float, float, int], ...], Any] | None = None
        self._tv = 0.0

    @property
    def tv_slack(self) -> float:
        """Total-variation slack of the lattice events recorded so far (0.0 without any)."""
        return self._tv

    def compose(self, event: PrivacyEvent, count: int = 1) -> None:
        """Record ``event`` (a distributed discrete Gaussian through its dominating Gaussian)."""
        ev = _check_event(event)
        n = _check_count(count)
        dominated, tv = _dominated(ev)
        new_history = _merge(self._history, _gaussian_terms(dominated, n))
        if any(steps > MAX_COUNT for _, _, steps in new_history):
            raise DPValueError(f"more than {MAX_COUNT} repetitions of one event in total (nested self-composition); "
                               "no training run composes that many")
        recorded = ev if n == 1 else SelfComposedEvent(ev, n)
        self._history, self._events = new_history, (*self._events, recorded)
        self._tv += n * tv

    def _split(self) -> tuple[float, list[_Term]]:
        """(mu of the merged unsampled Gaussians, 0 if none; the sampled terms)."""
        inv = 0.0
        sampled: list[_Term] = []
        for z, q, steps in self._history:
            if q == 1.0:
                inv = math.inf if z == 0 else inv + steps / (z * z)
            else:
                sampled.append((z, q, steps))
        return math.sqrt(inv), sampled

    @property
    def composition(self) -> str:
        """``"analytic"`` (unsampled Gaussians only: exact closed form), ``"numeric"`` (dp_accounting's
        PLD composition for sampled rounds) or ``"none"`` (no event yet)."""
        if not self._history:
            return "none"
        return "numeric" if self._split()[1] else "analytic"

    def _pld(self) -> Any:
        key = tuple(self._history)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        from dp_accounting import dp_event
        from dp_accounting.pld import pld_privacy_accountant

        mu, sampled = self._split()
        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=self._interval)
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                if mu > 0:
                    acc.compose(dp_event.GaussianDpEvent(1.0 / mu))
                for z, q, steps in sampled:
                    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), steps)
        except Exception as exc:  # dp_accounting raises assorted types
            raise AccountingError(f"dp_accounting's PLD accountant failed ({exc}): use accountant='rdp'") from exc
        self._cache = (key, acc)
        return acc

    def get_epsilon(self, delta: float) -> float:
        d = _check_delta(delta)
        if not self._history:
            return 0.0
        if self._tv == 0.0:
            return self._epsilon(d)
        eps = self._epsilon(d * (1.0 - 1e-9))
        if (1.0 + math.exp(min(eps, 700.0))) * self._tv > 1e-9 * d:
            raise AccountingError(f"the lattice analysis leaves a slack of {self._tv:.3g} (times 1 + e^eps), too "
                                  f"large for delta {d:g}: use accountant='rdp'")
        return eps

    def _epsilon(self, d: float) -> float:
        mu, sampled = self._split()
        if math.isinf(mu):
            return math.inf
        if not sampled:
            return gaussian_epsilon(mu, d)
        try:
            eps = float(self._pld().get_epsilon(d))
        except AccountingError:
            raise
        except Exception as exc:
            raise AccountingError(f"dp_accounting's PLD accountant failed ({exc}): use accountant='rdp'") from exc
        if math.isnan(eps):
            raise AccountingError("dp_accounting's PLD accountant returned NaN: use accountant='rdp'")
        return max(eps, 0.0)

    def get_delta(self, epsilon: float) -> float:
        e = _check_epsilon(epsilon)
        if not self._history:
            return 0.0
        slack = (1.0 + math.exp(min(e, 700.0))) * self._tv if self._tv > 0 else 0.0
        return min(self._delta(e) + slack, 1.0)

    def _delta(self, e: float) -> float:
        mu, sampled = self._split()
        if math.isinf(mu):
            return 1.0
        if not sampled:
            return gaussian_delta(mu, e)
        try:
            delta = float(self._pld().get_delta(e))
        except AccountingError:
            raise
        except Exception as exc:
            raise AccountingError(f"dp_accounting's PLD accountant failed ({exc}): use accountant='rdp'") from exc
        return min(max(delta, 0.0), 1.0)

    def copy(self) -> PldAccountant:
        other = PldAccountant(self._interval)
        self._copy_into(other)
        other._cache = self._cache
        other._tv = self._tv
        return other


# --------------------------------------------------------------------------- factory


def make_accountant(name: str = "rdp", **options: Any) -> Accountant:
    """Build an accountant by name: ``"rdp"``, ``"opacus-rdp"``, ``"prv"`` or ``"pld"``.

    ``options`` go to the class constructor (e.g. ``orders=`` for ``"rdp"``).

    Raises:
        DPValueError: unknown name.
        AccountingError: the backend's optional package is not installed.
    """
    if not isinstance(name, str) or name not in ACCOUNTANT_NAMES:
        raise DPValueError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANT_NAMES)}")
    if name == "rdp":
        return RdpAccountant(**options)
    if name == "opacus-rdp":
        return OpacusRdpAccountant(**options)
    if name == "prv":
        return PrvAccountant(**options)
    return PldAccountant(**options)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_accountants() -> tuple[str, ...]:
    """Names of the accountants whose (optional) packages are installed, ``"rdp"`` first."""
    names = ["rdp"]
    if _importable("opacus") and _importable("torch"):
        names += ["opacus-rdp", "prv"]
    if _importable("dp_accounting"):
        names.append("pld")
    return tuple(names)
