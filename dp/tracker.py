"""Per-round privacy tracking against two adversaries, reported side by side.

A distributed-DP secure-aggregation round protects a client against two different
observers, and the guarantees differ:

``release``
    Anyone who sees only what is released (the aggregate or the trained model) and does
    not know who took part.  Amplification by client sampling applies, and the noise
    shares of the *other* survivors count: ``m - 1`` shares for ``m`` survivors.
``server``
    The aggregation server, which chooses or sees the participants.  Against it there is
    no sampling amplification, and only the noise *guaranteed* against it counts: the
    shares of the other honest survivors, ``m - 1 - c`` with ``c`` colluders.

The share-counting rule (one rule for the whole library, see ``docs/accounting.md``):
the accounting uses add/remove-one-client adjacency, under which the protected client's
own noise share leaves together with its data, so it never protects it.  A survivor that
colludes with the server can subtract its share, so it protects nobody against the
server.  Hence ``m - 1`` shares against the release, ``m - 1 - c`` against the server.

:class:`PrivacyTracker` keeps one accountant per adversary and reports both cumulative
epsilons for every round; it never reports only the (smaller) release figure.  Dropouts
are handled by describing each round with the numbers of its survivors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from dp._validate import check_choice, check_int, check_nonnegative, check_positive, check_probability
from dp.accountants import Accountant, make_accountant
from dp.calibration import calibrate, calibrate_noise_multiplier
from dp.errors import BudgetExceededError, DPTypeError, DPValueError
from dp.events import (
    MAX_COUNT,
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SkellamEvent,
)
from dp.rdp import _check_delta

__all__ = [
    "MECHANISMS",
    "RELEASE_AGAINST",
    "SERVER_AGAINST",
    "Mechanism",
    "PrivacyTracker",
    "RoundEpsilon",
    "RoundEvents",
    "RoundPrivacy",
    "ServerCalibration",
    "calibrate_for_server",
]

Mechanism = Literal["distributed_discrete_gaussian", "skellam", "gaussian"]
MECHANISMS: tuple[str, ...] = ("distributed_discrete_gaussian", "skellam", "gaussian")

#: Who the ``release`` figure protects against.
RELEASE_AGAINST = (
    "release: anyone who sees only the released aggregate/model and does not know who took part "
    "(client-sampling amplification applies; the other survivors' noise shares count: m - 1 of m)"
)
#: Who the ``server`` figure protects against.
SERVER_AGAINST = (
    "server: the aggregation server, which chooses or sees the participants (no sampling amplification; "
    "only noise guaranteed against it counts: the other honest survivors' shares, m - 1 - c)"
)


def _real(name: str, value: object, *, positive: bool = False) -> float:
    return check_positive(name, value) if positive else check_nonnegative(name, value)


def _int(name: str, value: object, minimum: int) -> int:
    return check_int(name, value, low=minimum, high=MAX_COUNT)


def _lattice_l1(l2: float, dim: int) -> float:
    """L1 bound of an integer vector with L2 norm <= l2 in dim coordinates."""
    return max(l2, min(math.sqrt(dim) * l2, l2 * l2))


def _others(sigma_present: float, n_present: int) -> float:
    """Std of the other ``n_present - 1`` equal shares when ``n_present`` shares have std ``sigma_present``."""
    return sigma_present * math.sqrt((n_present - 1) / n_present)


def _inner_event(mechanism: str, l2: float, sigma: float, dim: int, n: int) -> PrivacyEvent:
    """The un-sampled event for ``n`` shares summing to per-coordinate std ``sigma``."""
    if mechanism == "distributed_discrete_gaussian":
        return DistributedDiscreteGaussianEvent(l2, sigma if n > 0 else 0.0, dim, max(n, 1))
    if mechanism == "skellam":
        return SkellamEvent(l2, _lattice_l1(l2, dim), sigma * sigma / 2.0 if n > 0 else 0.0, max(n, 1))
    return GaussianEvent(sigma / l2 if n > 0 else 0.0)


class RoundEvents(NamedTuple):
    """The two events of one round (store their ``to_dict()`` in the ledger)."""

    release: PrivacyEvent
    server: PrivacyEvent


@dataclass(frozen=True)
class RoundPrivacy:
    """What one round spent, described by its survivors' numbers (dropout-aware).

    Units: for ``"distributed_discrete_gaussian"`` and ``"skellam"`` the sensitivity and
    the sigmas are in the scaled integer (lattice) domain the noise is sampled on; for
    ``"gaussian"`` any unit, as long as all three agree.

    Attributes:
        sampling_rate: clients sampled / population, in (0, 1] (1.0: everyone takes part).
        l2_sensitivity: L2 bound of one client's (scaled, rounded) contribution, > 0.
        sigma_present: per-coordinate std of all noise in the aggregate: the ``n_present``
            survivors' equal shares, ``sqrt(n_present) * sigma_client``.
        sigma_guaranteed: per-coordinate std of the noise that protects one honest client
            against the server: the ``n_guaranteed`` shares of the *other* honest survivors,
            ``sqrt(n_guaranteed) * sigma_client`` (the
            :attr:`dp.distributed.NoiseReport.sigma_guaranteed`).
        dim: number of coordinates.
        n_present: surviving clients ``m`` whose noise is in the aggregate (>= 1).
        n_guaranteed: shares that protect one honest client against the server,
            ``m - 1 - c`` for ``c`` colluders (:attr:`dp.distributed.NoiseReport.shares_guaranteed`);
            0 <= n_guaranteed <= n_present - 1.
        mechanism: ``"distributed_discrete_gaussian"``, ``"skellam"`` or ``"gaussian"``.

    Share counting (add/remove-one-client adjacency): the protected client's own share
    leaves together with its data, so the release event counts the other ``m - 1`` shares
    (std ``sigma_present * sqrt((m - 1) / m)``) and the server event the ``n_guaranteed``
    shares given here.
    """

    sampling_rate: float
    l2_sensitivity: float
    sigma_present: float
    sigma_guaranteed: float
    dim: int
    n_present: int
    n_guaranteed: int
    mechanism: Mechanism = "distributed_discrete_gaussian"

    def __post_init__(self) -> None:
        q = check_probability("sampling_rate", self.sampling_rate, allow_one=True)
        l2 = _real("l2_sensitivity", self.l2_sensitivity, positive=True)
        sp = _real("sigma_present", self.sigma_present)
        sg = _real("sigma_guaranteed", self.sigma_guaranteed)
        d = _int("dim", self.dim, 1)
        n_p = _int("n_present", self.n_present, 1)
        n_g = _int("n_guaranteed", self.n_guaranteed, 0)
        if n_g > n_p - 1:
            raise DPValueError(f"n_guaranteed ({n_g}) cannot exceed n_present - 1 ({n_p - 1}): the protected "
                               "client's own share never protects it (add/remove adjacency)")
        if sg > _others(sp, n_p) * (1 + 1e-12):
            raise DPValueError(f"sigma_guaranteed ({sg}) cannot exceed the std of the other survivors' shares, "
                               f"sigma_present * sqrt((n_present - 1) / n_present) = {_others(sp, n_p)}")
        if n_g == 0 and sg != 0:
            raise DPValueError("n_guaranteed is 0 (every survivor colludes), so sigma_guaranteed must be 0")
        if self.mechanism not in MECHANISMS:
            raise DPValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        for name, value in (("sampling_rate", q), ("l2_sensitivity", l2), ("sigma_present", sp),
                            ("sigma_guaranteed", sg), ("dim", d), ("n_present", n_p), ("n_guaranteed", n_g)):
            object.__setattr__(self, name, value)

    def events(self) -> RoundEvents:
        """release: PoissonSampled(rate, the other m - 1 survivors' shares); server: the guaranteed
        ``n_guaranteed`` shares, un-sampled."""
        present = _inner_event(self.mechanism, self.l2_sensitivity, _others(self.sigma_present, self.n_present),
                               self.dim, self.n_present - 1)
        guaranteed = _inner_event(self.mechanism, self.l2_sensitivity, self.sigma_guaranteed, self.dim,
                                  self.n_guaranteed)
        return RoundEvents(PoissonSampledEvent(self.sampling_rate, present), guaranteed)


@dataclass(frozen=True)
class RoundEpsilon:
    """Cumulative epsilons after a round, labelled by adversary.

    Attributes:
        round: number of rounds recorded so far (1-based).
        release_epsilon: against the release adversary (see :data:`RELEASE_AGAINST`).
        server_epsilon: against the aggregation server (see :data:`SERVER_AGAINST`).
        delta: the delta both figures are for.
        accountant: accountant name.
    """

    round: int
    release_epsilon: float
    server_epsilon: float
    delta: float
    accountant: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form with both figures and whom they hold against."""
        return {
            "round": self.round,
            "delta": self.delta,
            "accountant": self.accountant,
            "release": {"epsilon": self.release_epsilon, "against": RELEASE_AGAINST},
            "server": {"epsilon": self.server_epsilon, "against": SERVER_AGAINST},
        }

    def __str__(self) -> str:
        return (f"round {self.round}: epsilon {self.release_epsilon:.4g} against the release (with sampling "
                f"amplification), {self.server_epsilon:.4g} against the server (no amplification, guaranteed "
                f"noise only); delta {self.delta:g}, accountant {self.accountant}")


BudgetAgainst = Literal["both", "server", "release"]


class PrivacyTracker:
    """Cumulative (epsilon, delta) against the release adversary and the server, round by round.

    Args:
        delta: the delta both figures are reported at, in (0, 1).
        accountant: accountant name (see :func:`dp.accountants.make_accountant`); the
            distributed discrete Gaussian needs ``"rdp"`` or ``"pld"`` (tight: the Gaussian
            that dominates the lattice noise, :mod:`dp.pld`), Skellam ``"rdp"``.
        budget_epsilon: optional epsilon budget; a round that would exceed it is refused
            with :class:`~dp.errors.BudgetExceededError` before anything is recorded.
        population: optional number of clients that could be sampled; used for
            sanity checks (see :meth:`warnings`).
        budget_against: which figure(s) the budget applies to: ``"both"`` (default),
            ``"server"`` or ``"release"``.
    """

    def __init__(
        self,
        delta: float,
        accountant: str = "rdp",
        budget_epsilon: float | None = None,
        population: int | None = None,
        budget_against: BudgetAgainst = "both",
    ) -> None:
        self._delta = _check_delta(delta)
        self._budget = None if budget_epsilon is None else _real("budget_epsilon", budget_epsilon, positive=True)
        self._population = None if population is None else _int("population", population, 1)
        if budget_against not in ("both", "server", "release"):
            raise DPValueError(f"budget_against must be 'both', 'server' or 'release', got {budget_against!r}")
        self._budget_against: BudgetAgainst = budget_against
        self._release: Accountant = make_accountant(accountant)
        self._server: Accountant = make_accountant(accountant)
        self._name = accountant
        self._history: tuple[RoundEpsilon, ...] = ()
        self._events: tuple[RoundEvents, ...] = ()

    # ---------------------------------------------------------------- properties
    @property
    def delta(self) -> float:
        """The delta of both figures."""
        return self._delta

    @property
    def accountant(self) -> str:
        """Accountant name."""
        return self._name

    @property
    def budget_epsilon(self) -> float | None:
        """Epsilon budget, if any."""
        return self._budget

    @property
    def budget_against(self) -> BudgetAgainst:
        """Which figure(s) the budget applies to: ``"both"``, ``"server"`` or ``"release"``."""
        return self._budget_against

    @property
    def population(self) -> int | None:
        """Population size, if given."""
        return self._population

    @property
    def rounds(self) -> int:
        """Rounds recorded."""
        return len(self._history)

    @property
    def history(self) -> tuple[RoundEpsilon, ...]:
        """Cumulative figures after each recorded round."""
        return self._history

    @property
    def events(self) -> tuple[RoundEvents, ...]:
        """The two events of each recorded round."""
        return self._events

    def current(self) -> RoundEpsilon:
        """Cumulative figures now (round 0 and epsilon 0.0 before any round)."""
        if self._history:
            return self._history[-1]
        return RoundEpsilon(0, 0.0, 0.0, self._delta, self._name)

    def release_accountant(self) -> Accountant:
        """Copy of the release-adversary accountant."""
        return self._release.copy()

    def server_accountant(self) -> Accountant:
        """Copy of the server-adversary accountant."""
        return self._server.copy()

    def warnings(self) -> list[str]:
        """Human-readable warnings about the configuration (e.g. delta >= 1/population)."""
        out = []
        if self._population is not None and self._delta >= 1.0 / self._population:
            out.append(f"delta {self._delta:g} is not below 1/population = {1.0 / self._population:g}: a "
                       "mechanism that publishes one client's data outright could meet it")
        return out

    # ---------------------------------------------------------------- recording
    @staticmethod
    def events_for(round: RoundPrivacy) -> RoundEvents:
        """The (release, server) events a round contributes."""
        if not isinstance(round, RoundPrivacy):
            raise DPTypeError(f"round must be a RoundPrivacy, got {type(round).__name__}")
        return round.events()

    def record_round(self, round: RoundPrivacy) -> RoundEpsilon:
        """Record one round in both accountants (both or neither) and return both figures.

        Raises:
            BudgetExceededError: the round would take a budgeted figure past the budget
                (nothing recorded).
            AccountingError: the accountant cannot account for the mechanism (nothing recorded).
        """
        return self.record_events(self._checked_events(round))

    def preview_round(self, round: RoundPrivacy) -> RoundEpsilon:
        """The figures :meth:`record_round` would report, without recording anything.

        The round is validated as :meth:`record_round` would (population included), but the
        budget is not applied: pass the result to :meth:`exceeds_budget` to ask before a round.
        """
        return self._compute(self._checked_events(round))[0]

    def exceeds_budget(self, figures: RoundEpsilon) -> bool:
        """Whether ``figures`` take a budgeted figure past the budget.

        Which figures count is :attr:`budget_against` (``"both"``, ``"server"`` or
        ``"release"``); always False without a budget.
        """
        if not isinstance(figures, RoundEpsilon):
            raise DPTypeError(f"figures must be a RoundEpsilon, got {type(figures).__name__}")
        if self._budget is None:
            return False
        checked = {
            "both": (figures.release_epsilon, figures.server_epsilon),
            "server": (figures.server_epsilon,),
            "release": (figures.release_epsilon,),
        }
        return max(checked[self._budget_against]) > self._budget

    def _checked_events(self, round: RoundPrivacy) -> RoundEvents:
        events = self.events_for(round)
        if self._population is not None and round.n_present > self._population:
            raise DPValueError(f"n_present ({round.n_present}) exceeds the population ({self._population})")
        return events

    def _compute(self, events: RoundEvents) -> tuple[RoundEpsilon, Accountant, Accountant]:
        if not isinstance(events, tuple) or len(events) != 2:
            raise DPTypeError("events must be a RoundEvents(release, server) pair")
        release_event, server_event = events
        release, server = self._release.copy(), self._server.copy()
        release.compose(release_event)
        server.compose(server_event)
        figures = RoundEpsilon(self.rounds + 1, release.get_epsilon(self._delta), server.get_epsilon(self._delta),
                               self._delta, self._name)
        return figures, release, server

    def record_events(self, events: RoundEvents) -> RoundEpsilon:
        """Record a round given its two events (e.g. replayed from a ledger); both or neither."""
        result, release, server = self._compute(events)
        if self.exceeds_budget(result):
            raise BudgetExceededError(
                f"round {result.round} would spend epsilon {result.release_epsilon:.4g} against the release and "
                f"{result.server_epsilon:.4g} against the server, over the budget {self._budget:g} "
                f"({self._budget_against}); nothing was recorded")
        pair = RoundEvents(events[0], events[1])
        self._release, self._server = release, server
        self._history, self._events = (*self._history, result), (*self._events, pair)
        return result


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class ServerCalibration:
    """Result of :func:`calibrate_for_server`.

    Attributes:
        share_sigma: per-client noise std per coordinate (lattice units for the discrete
            mechanisms; for Skellam the share is Skellam(share_sigma^2 / 2)).
        sigma_guaranteed: std of the counted shares at the target's operating point,
            ``share_sigma * sqrt(n_counted)``.
        n_counted: shares that protect one client at that point (add/remove adjacency: the
            client's own share never counts): ``cohort_floor - 1 - colluders`` for the
            server target, ``cohort_floor - 1`` for the release target.
        epsilon: epsilon achieved after ``rounds`` rounds (<= the target).
        delta: delta.
        rounds: rounds.
        against: ``"server"`` or ``"release"``.
        note: plain-language statement of what was targeted.
    """

    share_sigma: float
    sigma_guaranteed: float
    n_counted: int
    epsilon: float
    delta: float
    rounds: int
    against: str
    note: str


def calibrate_for_server(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    l2_sensitivity: float,
    dim: int,
    cohort_floor: int,
    colluders: int = 0,
    mechanism: Mechanism = "distributed_discrete_gaussian",
    accountant: str = "rdp",
    against: Literal["server", "release"] = "server",
    sampling_rate: float | None = None,
    tol: float = 1e-4,
) -> ServerCalibration:
    """Per-client noise for a distributed-DP run, targeting the SERVER figure at the cohort floor by default.

    By default the target is met against the aggregation server in the worst round the
    protocol accepts: only ``cohort_floor`` clients survive, ``colluders`` of them collude
    with the server, and there is no sampling amplification, so only the
    ``cohort_floor - 1 - colluders`` shares of the *other* honest survivors count (the
    protected client's own share leaves with it under add/remove adjacency, and a colluder
    subtracts its own).  Every accepted round then satisfies the target against the
    server, and the release figure is at least as good.  Pass ``against="release"`` (with
    ``sampling_rate``) to target the release adversary instead (the other
    ``cohort_floor - 1`` survivors' shares, with amplification); the returned ``note``
    says which.

    Args:
        target_epsilon: epsilon after ``rounds`` rounds.
        delta: delta in (0, 1).
        rounds: number of rounds.
        l2_sensitivity: L2 bound of one client's scaled, rounded contribution (lattice units).
        dim: number of coordinates.
        cohort_floor: fewest survivors the round accepts (>= 2; >= colluders + 2 for the server).
        colluders: clients assumed to collude with the server.
        mechanism: noise mechanism.
        accountant: accountant name; ``"pld"`` is the tight choice for the discrete Gaussian
            (:mod:`dp.pld`), ``"rdp"`` the published bounds.
        against: ``"server"`` (default) or ``"release"``.
        sampling_rate: client sampling rate; required for ``against="release"``.
        tol: relative tolerance of the bisection (result rounded up).

    Raises:
        DPValueError: bad input, no honest share at the floor, or an unreachable target.
    """
    target = _real("target_epsilon", target_epsilon, positive=True)
    d = _check_delta(delta)
    t = _int("rounds", rounds, 1)
    l2 = _real("l2_sensitivity", l2_sensitivity, positive=True)
    dimension = _int("dim", dim, 1)
    floor = _int("cohort_floor", cohort_floor, 1)
    bad = _int("colluders", colluders, 0)
    mechanism = check_choice("mechanism", mechanism, MECHANISMS)  # type: ignore[assignment]
    check_choice("against", against, ("server", "release"))
    if against == "server":
        n = floor - 1 - bad
        if n < 1:
            raise DPValueError(f"cohort_floor ({floor}) - 1 - colluders ({bad}) = {n}: no noise is guaranteed against "
                               "the server (a client's own share never protects it and colluders subtract theirs); "
                               "need cohort_floor >= colluders + 2")
        q = 1.0
        note = (f"calibrated against the SERVER adversary at the cohort floor: {floor} survivors, {bad} colluding, "
                f"so the {n} shares of the other honest survivors count; no sampling amplification")
    else:
        if sampling_rate is None:
            raise DPValueError("against='release' needs sampling_rate")
        q = check_probability("sampling_rate", sampling_rate, allow_one=True)
        n = floor - 1
        if n < 1:
            raise DPValueError(f"cohort_floor ({floor}) must be >= 2: a client's own share never protects it")
        note = (f"calibrated against the RELEASE adversary (sampling rate {q:g}, amplification applies) at the "
                f"cohort floor of {floor} survivors, so the {n} shares of the other survivors count; the figure "
                "against the server is weaker")
    make_accountant(accountant)

    def event(share: float) -> PrivacyEvent:
        inner = _inner_event(mechanism, l2, share * math.sqrt(n), dimension, n)
        return inner if against == "server" else PoissonSampledEvent(q, inner)

    def epsilon_of(share: float) -> float:
        acc = make_accountant(accountant)
        acc.compose(event(share), t)
        return acc.get_epsilon(d)

    start = None
    if accountant == "pld" and mechanism != "skellam":
        # the lattice noise is accounted as the Gaussian that dominates it (dp.pld), a hair
        # below its std: start at the central Gaussian's answer and search upwards in 1% steps
        z = calibrate_noise_multiplier(target, d, t, q, accountant="pld", tol=tol)
        start = z * l2 / math.sqrt(n)
    share = calibrate(epsilon_of, target, tol=tol, start=start, factor=1.01 if start is not None else 2.0)
    return ServerCalibration(share, share * math.sqrt(n), n, epsilon_of(share), d, t, against, note)
