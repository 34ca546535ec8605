"""Privacy events: immutable, validated descriptions of what a mechanism released.

An event says *what happened* (which noise, which sampling, how often); accountants in
:mod:`dp.accountants` turn a sequence of events into an (epsilon, delta) guarantee.  This
follows the design of Google's ``dp_accounting`` events, extended with the mechanisms a
distributed-DP secure-aggregation round actually uses: the sum of ``n`` discrete Gaussians
(Kairouz, Liu, Steinke, ICML 2021) and Skellam noise (Agarwal, Kairouz, Liu, NeurIPS 2021).

Every event is a frozen dataclass whose constructor validates its fields (no NaN, no
infinity, no ``bool`` posing as a number, noise >= 0, sampling rate in (0, 1]) and raises
:class:`~dp.errors.DPValueError` / :class:`~dp.errors.DPTypeError` otherwise.
:meth:`PrivacyEvent.to_dict` gives a JSON-ready dictionary and :func:`event_from_dict`
rebuilds the identical event (exact round trip, used to replay a ledger).

Units.  ``noise_multiplier`` is noise standard deviation (Gaussian) or scale (Laplace)
divided by the L2 (Gaussian) or L1 (Laplace) sensitivity.  The distributed events
(:class:`DistributedDiscreteGaussianEvent`, :class:`SkellamEvent`) live on the integer
lattice the noise is sampled on: sensitivities and ``sigma`` are in the *scaled integer
domain* (after scaling and rounding, before modular reduction), because their privacy
bounds depend on the lattice and not only on the ratio of noise to sensitivity.

Adjacency.  Sensitivities are those of one participant's contribution (add/remove-one
adjacency).  :class:`FixedSizeSampledEvent` is analysed under replace-one adjacency, for
which the accountant doubles the sensitivity of the inner event (see :mod:`dp.rdp`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dp._validate import check_int, check_nonnegative, check_positive
from dp.errors import DPTypeError, DPValueError

__all__ = [
    "MAX_COUNT",
    "ComposedEvent",
    "DistributedDiscreteGaussianEvent",
    "FixedSizeSampledEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "PoissonSampledEvent",
    "PrivacyEvent",
    "SelfComposedEvent",
    "SkellamEvent",
    "event_from_dict",
]


# --------------------------------------------------------------------------- validation


#: Largest count (rounds, repetitions, shares, coordinates) an event or accountant accepts:
#: 2**53, the largest integer a float holds exactly.  Anything larger is an error
#: (:class:`~dp.errors.DPValueError`), never an ``OverflowError`` deep in the arithmetic.
MAX_COUNT = 2**53


def _real(
    name: str,
    value: object,
    *,
    positive: bool = False,
    upper: float | None = None,
) -> float:
    """Return ``value`` as a finite Python float >= 0 (> 0 if ``positive``), <= ``upper``."""
    x = check_positive(name, value) if positive else check_nonnegative(name, value)
    if upper is not None and x > upper:
        raise DPValueError(f"{name} must be <= {upper}, got {x}")
    return x


def _integer(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as a Python int in [``minimum``, :data:`MAX_COUNT`] (``bool`` and floats refused)."""
    return check_int(name, value, low=minimum, high=MAX_COUNT)


def _event(name: str, value: object) -> PrivacyEvent:
    if not isinstance(value, PrivacyEvent):
        raise DPTypeError(f"{name} must be a PrivacyEvent, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- events

_REGISTRY: dict[str, type[PrivacyEvent]] = {}


@dataclass(frozen=True)
class PrivacyEvent:
    """Base class of privacy events.  Subclasses are frozen and validated on construction."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            _REGISTRY[cls.TYPE] = cls

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description; :func:`event_from_dict` rebuilds the identical event."""
        raise NotImplementedError  # pragma: no cover


@dataclass(frozen=True)
class GaussianEvent(PrivacyEvent):
    """One release of a sum with Gaussian noise N(0, (z C)^2 I) where C bounds each L2 contribution.

    Attributes:
        noise_multiplier: z = noise standard deviation / L2 sensitivity (>= 0; 0 means no noise
            and an infinite epsilon).
    """

    TYPE: ClassVar[str] = "gaussian"
    noise_multiplier: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", _real("noise_multiplier", self.noise_multiplier))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "noise_multiplier": self.noise_multiplier}


@dataclass(frozen=True)
class LaplaceEvent(PrivacyEvent):
    """One release with coordinate-wise Laplace noise of scale b = ``noise_multiplier`` x L1 sensitivity.

    Attributes:
        noise_multiplier: Laplace scale / L1 sensitivity (>= 0); pure epsilon is 1 / noise_multiplier.
    """

    TYPE: ClassVar[str] = "laplace"
    noise_multiplier: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", _real("noise_multiplier", self.noise_multiplier))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "noise_multiplier": self.noise_multiplier}


@dataclass(frozen=True)
class DistributedDiscreteGaussianEvent(PrivacyEvent):
    """Release of a sum to which ``n_shares`` parties each added discrete Gaussian noise.

    Bound: Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
    Learning with Secure Aggregation", ICML 2021 (Theorem 1 and Proposition 14).  Only the
    noise actually counted goes here: after dropouts, the survivors' shares; against the
    server, the survivors' shares less the colluders'.

    Attributes:
        l2_sensitivity: bound on the L2 norm of one participant's scaled, rounded integer
            vector (lattice units, > 0).
        sigma: standard deviation per coordinate of the *summed* counted noise, in lattice
            units: ``sqrt(n_shares)`` times the scale parameter of one share (>= 0).
        dim: number of coordinates d (>= 1).
        n_shares: number of independent, equal discrete Gaussian shares summed (>= 1).
        l1_sensitivity: optional bound on the L1 norm of one participant's integer vector;
            when ``None`` the accountant uses min(sqrt(d) x L2, L2^2), valid on the lattice.
    """

    TYPE: ClassVar[str] = "distributed_discrete_gaussian"
    l2_sensitivity: float
    sigma: float
    dim: int
    n_shares: int
    l1_sensitivity: float | None = None

    def __post_init__(self) -> None:
        l2 = _real("l2_sensitivity", self.l2_sensitivity, positive=True)
        object.__setattr__(self, "l2_sensitivity", l2)
        object.__setattr__(self, "sigma", _real("sigma", self.sigma))
        object.__setattr__(self, "dim", _integer("dim", self.dim, minimum=1))
        object.__setattr__(self, "n_shares", _integer("n_shares", self.n_shares, minimum=1))
        if self.l1_sensitivity is not None:
            l1 = _real("l1_sensitivity", self.l1_sensitivity, positive=True)
            if l1 < l2:
                raise DPValueError(f"l1_sensitivity ({l1}) must be >= l2_sensitivity ({l2}): an L1 norm is never "
                                   "below the L2 norm of the same vector")
            object.__setattr__(self, "l1_sensitivity", l1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "l2_sensitivity": self.l2_sensitivity,
            "sigma": self.sigma,
            "dim": self.dim,
            "n_shares": self.n_shares,
            "l1_sensitivity": self.l1_sensitivity,
        }


@dataclass(frozen=True)
class SkellamEvent(PrivacyEvent):
    """Release of a sum with Skellam noise Poisson(mu_total) - Poisson(mu_total) per coordinate.

    Bound: Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
    Learning", NeurIPS 2021.  A sum of Skellam(mu) shares is Skellam(sum of mu), so only the
    total counted noise matters; ``n_shares`` is recorded for the audit trail.

    Attributes:
        l2_sensitivity: L2 bound of one participant's integer vector (lattice units, > 0).
        l1_sensitivity: L1 bound of the same vector (>= l2_sensitivity).
        mu_total: Skellam parameter of the summed counted noise (variance 2 x mu_total, >= 0).
        n_shares: number of shares summed (>= 1).
    """

    TYPE: ClassVar[str] = "skellam"
    l2_sensitivity: float
    l1_sensitivity: float
    mu_total: float
    n_shares: int = 1

    def __post_init__(self) -> None:
        l2 = _real("l2_sensitivity", self.l2_sensitivity, positive=True)
        l1 = _real("l1_sensitivity", self.l1_sensitivity, positive=True)
        if l1 < l2:
            raise DPValueError(f"l1_sensitivity ({l1}) must be >= l2_sensitivity ({l2})")
        object.__setattr__(self, "l2_sensitivity", l2)
        object.__setattr__(self, "l1_sensitivity", l1)
        object.__setattr__(self, "mu_total", _real("mu_total", self.mu_total))
        object.__setattr__(self, "n_shares", _integer("n_shares", self.n_shares, minimum=1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "mu_total": self.mu_total,
            "n_shares": self.n_shares,
        }


@dataclass(frozen=True)
class PoissonSampledEvent(PrivacyEvent):
    """Each participant is included independently with probability ``sampling_rate``; then ``event``.

    Amplification by sampling only protects against observers who do not learn who took part.

    Attributes:
        sampling_rate: inclusion probability q in (0, 1].
        event: what is released about the sampled participants (add/remove adjacency).
    """

    TYPE: ClassVar[str] = "poisson_sampled"
    sampling_rate: float
    event: PrivacyEvent

    def __post_init__(self) -> None:
        q = _real("sampling_rate", self.sampling_rate, upper=1.0)
        if q == 0:
            raise DPValueError("sampling_rate must be in (0, 1], got 0.0")
        object.__setattr__(self, "sampling_rate", q)
        _event("event", self.event)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "sampling_rate": self.sampling_rate, "event": self.event.to_dict()}


@dataclass(frozen=True)
class FixedSizeSampledEvent(PrivacyEvent):
    """A uniformly random subset of exactly ``sample_size`` of ``population_size`` (no replacement).

    Analysed under *replace-one* adjacency (the population size is public), following
    Wang, Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical
    Moments Accountant", AISTATS 2019 (Theorem 9, a general upper bound).  The inner event's
    sensitivities are per participant; replacing one participant moves the sum by up to twice
    that, which the accountant accounts for.

    Attributes:
        sample_size: m, 1 <= m <= population_size.
        population_size: n >= 1.
        event: what is released about the sample.
    """

    TYPE: ClassVar[str] = "fixed_size_sampled"
    sample_size: int
    population_size: int
    event: PrivacyEvent

    def __post_init__(self) -> None:
        m = _integer("sample_size", self.sample_size, minimum=1)
        n = _integer("population_size", self.population_size, minimum=1)
        if m > n:
            raise DPValueError(f"sample_size ({m}) must be <= population_size ({n})")
        object.__setattr__(self, "sample_size", m)
        object.__setattr__(self, "population_size", n)
        _event("event", self.event)

    @property
    def sampling_rate(self) -> float:
        """m / n."""
        return self.sample_size / self.population_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "sample_size": self.sample_size,
            "population_size": self.population_size,
            "event": self.event.to_dict(),
        }


@dataclass(frozen=True)
class SelfComposedEvent(PrivacyEvent):
    """``event`` repeated ``count`` times (adaptively) on the same data.

    Attributes:
        event: the repeated event.
        count: number of repetitions (>= 1).
    """

    TYPE: ClassVar[str] = "self_composed"
    event: PrivacyEvent
    count: int

    def __post_init__(self) -> None:
        _event("event", self.event)
        object.__setattr__(self, "count", _integer("count", self.count, minimum=1))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "event": self.event.to_dict(), "count": self.count}


@dataclass(frozen=True)
class ComposedEvent(PrivacyEvent):
    """Several events applied (adaptively) to the same data, in order.

    Attributes:
        events: the events (any iterable is accepted; always stored as a tuple; may be empty).
    """

    TYPE: ClassVar[str] = "composed"
    events: Sequence[PrivacyEvent] = field(default=())

    def __post_init__(self) -> None:
        raw = self.events
        if isinstance(raw, (PrivacyEvent, str, bytes, Mapping)) or not isinstance(raw, Iterable):
            raise DPTypeError(f"events must be a sequence of PrivacyEvent, got {type(raw).__name__}")
        items = tuple(raw)
        for i, e in enumerate(items):
            _event(f"events[{i}]", e)
        object.__setattr__(self, "events", items)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "events": [e.to_dict() for e in self.events]}


# --------------------------------------------------------------------------- from dict

_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required keys, optional keys) besides "type"
    "gaussian": (("noise_multiplier",), ()),
    "laplace": (("noise_multiplier",), ()),
    "distributed_discrete_gaussian": (("l2_sensitivity", "sigma", "dim", "n_shares"), ("l1_sensitivity",)),
    "skellam": (("l2_sensitivity", "l1_sensitivity", "mu_total"), ("n_shares",)),
    "poisson_sampled": (("sampling_rate", "event"), ()),
    "fixed_size_sampled": (("sample_size", "population_size", "event"), ()),
    "self_composed": (("event", "count"), ()),
    "composed": (("events",), ()),
}


def event_from_dict(d: Mapping[str, Any]) -> PrivacyEvent:
    """Rebuild an event from :meth:`PrivacyEvent.to_dict` output (or its JSON round trip).

    Raises:
        DPTypeError: ``d`` (or a nested event) is not a mapping.
        DPValueError: unknown ``type``, missing or unexpected keys, or invalid values.
    """
    if not isinstance(d, Mapping):
        raise DPTypeError(f"an event description must be a mapping, got {type(d).__name__}")
    kind = d.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise DPValueError(f"unknown event type {kind!r}; expected one of {sorted(_FIELDS)}")
    required, optional = _FIELDS[kind]
    keys = set(d) - {"type"}
    missing = [k for k in required if k not in keys]
    extra = sorted(keys - set(required) - set(optional))
    if missing or extra:
        raise DPValueError(f"event {kind!r}: missing keys {missing}, unexpected keys {extra}")
    kwargs: dict[str, Any] = {k: d[k] for k in keys}
    if "event" in kwargs:
        kwargs["event"] = event_from_dict(kwargs["event"])
    if kind == "composed":
        seq = kwargs["events"]
        if isinstance(seq, (str, bytes, Mapping)) or not isinstance(seq, Iterable):
            raise DPTypeError("composed event: 'events' must be a list of event descriptions")
        kwargs["events"] = tuple(event_from_dict(e) for e in seq)
    cls = _REGISTRY[kind]
    return cls(**kwargs)
