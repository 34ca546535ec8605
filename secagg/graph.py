"""Neighbour graphs of SecAgg (complete) and SecAgg+ (random Harary graph), and the
threat-model parameter chooser of Bell et al. (CCS 2020).

Graph.  The clients' ids are sorted, then put in a pseudorandom order: each id gets the
key ``SHA-256("secagg/graph/v1" || len(seed) || seed || id)`` (seed length as 4 bytes
big-endian, id as 8 bytes big-endian) and the ids are sorted by key.  Placed on a ring in
that order, each client is joined to the ``floor(k / 2)`` nearest clients on each side
(a Harary graph); for odd ``k`` a "diameter" edge to the opposite client is added, which
makes every degree ``k`` when the number of clients is even and leaves one client with
``k + 1`` neighbours when it is odd.  ``k >= n - 1`` (or ``k=None``) gives the complete graph.
Every client recomputes its own neighbourhood from the public (ids, k, seed); the seed
must be fixed after the set of ids is (the protocol hashes the round id and the advertised
keys), because whoever can choose the seed can choose the graph.

Parameters.  For ``n`` clients of which at most ``D = floor(dropout_fraction n)`` drop
out and at most ``C = floor(corrupt_fraction n)`` collude with the server, a neighbourhood
is a uniformly random ``k``-subset of the other ``n - 1`` clients, so the number of corrupt
(dropped) neighbours is hypergeometric.  :func:`choose_parameters` returns the smallest
even ``k`` and a threshold ``t`` such that, by exact hypergeometric tail sums and a union
bound over clients,

* security (failure <= 2^-security_bits): no honest client has ``2t - k`` or more corrupt
  neighbours (so ``t > (k + c)/2`` holds in every honest neighbourhood and a server with
  its colluders cannot collect ``t`` shares of both secrets of an honest client), and the
  graph of honest survivors stays connected (else the server learns partial sums);
* correctness (failure <= 2^-correctness_bits): every client keeps at least ``t``
  surviving neighbours and the survivors' graph stays connected;

falling back to the complete graph when no ``k <= n - 2`` works.  Assumptions: the corrupt
and dropped sets do not depend on the permutation (they are fixed before the seed is
known; an adversary that can try ``2^g`` seeds loses ``g`` bits), and the server is
honest-but-curious about dropouts (it does not drop clients on purpose; the client-side
checks of the protocol cover a server that lies).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from secagg.errors import SecAggTypeError, SecAggValueError, UnsafeParametersError

__all__ = [
    "COMPLETE_GRAPH_MAX_CLIENTS",
    "DEFAULT_CORRECTNESS_BITS",
    "DEFAULT_DROPOUT_FRACTION",
    "DEFAULT_SECURITY_BITS",
    "GraphParameters",
    "ThreatModel",
    "check_threshold",
    "choose_parameters",
    "components",
    "disconnection_bound",
    "hypergeometric_tail",
    "neighbour_graph",
    "neighbours",
    "parameters_for_k",
    "parameters_table",
    "permutation",
]

DEFAULT_SECURITY_BITS = 40
"""Statistical security: the chosen graph fails to protect an honest client w.p. <= 2^-40."""
DEFAULT_CORRECTNESS_BITS = 20
"""Correctness: the round cannot recover a needed secret w.p. <= 2^-20."""
DEFAULT_DROPOUT_FRACTION = 0.1
"""Dropout fraction assumed by :func:`parameters_for_k` when none is given."""
COMPLETE_GRAPH_MAX_CLIENTS = 32
"""Up to this many clients :func:`choose_parameters` uses the complete graph: each client
then masks with at most 31 pairwise streams (about 1.5 times Flower's k = 20), and the
threshold is exact (no probabilistic bound) and tolerates about half the cohort dropping."""

_DOMAIN = b"secagg/graph/v1"
_MAX_ID = (1 << 64) - 1
_EPS = 1e-9  # floor(fraction * n) tolerant of binary floating point (0.29 * 100 = 28.999...)


def _check_int(value: object, name: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SecAggTypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if low is not None and v < low:
        raise SecAggValueError(f"{name} must be >= {low}, got {v}")
    return v


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SecAggTypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise SecAggValueError(f"{name} must be in [0, 1), got {v}")
    return v


# --------------------------------------------------------------------------- threat model


@dataclass(frozen=True)
class ThreatModel:
    """What the parameters must withstand.

    Attributes:
        n: number of clients in the round (>= 2).
        dropout_fraction: at most ``floor(dropout_fraction n)`` clients drop out (any stage).
            Count clients that may refuse to answer (malicious ones can always drop) here.
        corrupt_fraction: at most ``floor(corrupt_fraction n)`` clients collude with the server.
        security_bits: the chosen graph protects every honest client except w.p. <= 2^-bits.
        correctness_bits: the round can recover every needed secret except w.p. <= 2^-bits.
    """

    n: int
    dropout_fraction: float
    corrupt_fraction: float
    security_bits: int = DEFAULT_SECURITY_BITS
    correctness_bits: int = DEFAULT_CORRECTNESS_BITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _check_int(self.n, "n", 2))
        object.__setattr__(self, "dropout_fraction", _check_fraction(self.dropout_fraction, "dropout_fraction"))
        object.__setattr__(self, "corrupt_fraction", _check_fraction(self.corrupt_fraction, "corrupt_fraction"))
        for name in ("security_bits", "correctness_bits"):
            bits = _check_int(getattr(self, name), name, 1)
            if bits > 256:
                raise SecAggValueError(f"{name} must be <= 256, got {bits}")
            object.__setattr__(self, name, bits)
        if self.dropout_fraction + self.corrupt_fraction >= 1.0:
            raise SecAggValueError("dropout_fraction + corrupt_fraction must be < 1 (some honest client must survive)")

    @property
    def dropouts(self) -> int:
        """Tolerated number of dropped clients, ``floor(dropout_fraction n)``."""
        return math.floor(self.dropout_fraction * self.n + _EPS)

    @property
    def colluders(self) -> int:
        """Tolerated number of clients colluding with the server, ``floor(corrupt_fraction n)``."""
        return math.floor(self.corrupt_fraction * self.n + _EPS)


@dataclass(frozen=True)
class GraphParameters:
    """A neighbour degree and threshold, with what they guarantee.

    Attributes:
        n: clients the parameters were computed for.
        k: neighbours per client (``n - 1`` for the complete graph).  For odd ``k`` one
            client may get ``k + 1`` neighbours (odd number of clients); the security
            figures already account for it.
        t: Shamir threshold for both secrets of a client.
        complete: whether this is the complete graph (classic SecAgg).
        colluders: clients colluding with the server that the threat model declared
            (global count c).
        dropouts: dropped clients the threat model declared (global count).
        dropouts_tolerated: dropped clients (in total, at any stages: advertising keys,
            sharing keys, before the masked input or before unmasking) the round survives.
            Exact for the complete graph (``n - 1 - t``: every survivor keeps ``t``
            neighbours); for a sparse graph the largest count for which the security and
            correctness targets still hold.  At least ``dropouts``.
        colluders_tolerated: clients colluding with the server that cannot learn an honest
            input: ``min(2t - k - 1, min_clients - 2)`` for the complete graph; the declared
            ``colluders`` for a sparse graph (its bounds are computed for that count).
        min_clients: cohort floor: the server never outputs a sum over fewer inputs (c + 2,
            so every sum holds at least two honest inputs).
        corrupt_neighbours: bound on corrupt neighbours of any honest client that holds
            except w.p. 2^-(security_bits + 1); ``t > (k + corrupt_neighbours) / 2``.
        surviving_neighbours: bound on surviving neighbours of any client that holds except
            w.p. 2^-(correctness_bits + 1).  :func:`choose_parameters` keeps
            ``t <= surviving_neighbours``.
        expected_survivors: mean number of surviving neighbours (rounded down); every
            accepted threshold has ``t <= expected_survivors``.
        security_failure: upper bound on the probability that some honest client is exposed
            (2t - k or more corrupt neighbours, or the honest survivors' graph disconnects).
        correctness_failure: upper bound on the probability that the round cannot complete
            (a client keeps fewer than t surviving neighbours, or the survivors disconnect).
        threat: the threat model the figures refer to.
    """

    n: int
    k: int
    t: int
    complete: bool
    colluders: int
    dropouts: int
    dropouts_tolerated: int
    colluders_tolerated: int
    min_clients: int
    corrupt_neighbours: int
    surviving_neighbours: int
    expected_survivors: int
    security_failure: float
    correctness_failure: float
    threat: ThreatModel = field(repr=False)

    @property
    def security_bits_achieved(self) -> float:
        """``-log2(security_failure)`` (``inf`` when the failure probability is 0)."""
        return math.inf if self.security_failure <= 0.0 else -math.log2(self.security_failure)

    @property
    def correctness_bits_achieved(self) -> float:
        """``-log2(correctness_failure)`` (``inf`` when the failure probability is 0)."""
        return math.inf if self.correctness_failure <= 0.0 else -math.log2(self.correctness_failure)


# --------------------------------------------------------------------------- exact tail bounds


def _support(population: int, successes: int, draws: int) -> tuple[int, int]:
    return max(0, draws - (population - successes)), min(draws, successes)


def _terms(population: int, successes: int, draws: int) -> Iterator[tuple[int, int]]:
    """(j, C(successes, j) C(population - successes, draws - j)) over the support, as exact
    integers from a multiplicative recurrence (each division is exact)."""
    lo, hi = _support(population, successes, draws)
    rest = population - successes
    term = math.comb(successes, lo) * math.comb(rest, draws - lo)
    for j in range(lo, hi + 1):
        yield j, term
        term = term * (successes - j) * (draws - j) // ((j + 1) * (rest - draws + j + 1)) if j < hi else 0


def _tail(population: int, successes: int, draws: int, exceed: int) -> Fraction:
    """P[X > exceed] for X ~ Hypergeometric(population, successes, draws), exactly."""
    lo, hi = _support(population, successes, draws)
    if exceed < lo:
        return Fraction(1)
    if exceed >= hi:
        return Fraction(0)
    total = math.comb(population, draws)
    cum = 0
    for j, term in _terms(population, successes, draws):
        if j > exceed:
            break
        cum += term
    return Fraction(total - cum, total)


def hypergeometric_tail(population: int, successes: int, draws: int, exceed: int) -> float:
    """P[X > exceed] for X ~ Hypergeometric(population, successes, draws), from exact sums.

    Here: the chance that more than ``exceed`` of a client's ``draws`` neighbours, chosen
    uniformly among the other ``population`` clients, are among ``successes`` corrupt (or
    dropped) ones.
    """
    population = _check_int(population, "population", 0)
    successes = _check_int(successes, "successes", 0)
    draws = _check_int(draws, "draws", 0)
    exceed = _check_int(exceed, "exceed")
    if successes > population or draws > population:
        raise SecAggValueError("successes and draws must not exceed population")
    return float(_tail(population, successes, draws, exceed))


def _smallest_bound(population: int, successes: int, draws: int, multiplier: int, budget: Fraction, *, cap: int) -> int:
    """Smallest c with multiplier * P[X > c] <= budget; ``cap + 1`` as soon as c would exceed cap."""
    lo, hi = _support(population, successes, draws)
    total = math.comb(population, draws)
    scaled_total = budget.numerator * total
    if lo - 1 > cap:
        return cap + 1
    if multiplier * total * budget.denominator <= scaled_total:
        return lo - 1
    cum = 0
    for c, term in _terms(population, successes, draws):
        if c > cap:
            return cap + 1
        cum += term
        if multiplier * (total - cum) * budget.denominator <= scaled_total:
            return c
    return hi  # pragma: no cover - P[X > hi] = 0 always meets the budget


def _lcomb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def _screen_bound(population: int, successes: int, draws: int, multiplier: int, log_budget: float) -> int:
    """A lower bound on :func:`_smallest_bound` (no cap), from floating-point logs, for screening.

    The exact answer c satisfies multiplier * pmf(c + 1) <= budget, lies at or above
    mode - 1 (the budget is far below 1 / (draws + 1)) and pmf decreases past the mode, so
    the smallest such c above mode - 1 with a 4x slack for rounding is a lower bound.
    """
    lo, hi = _support(population, successes, draws)
    limit = log_budget + math.log(4.0)
    if lo == hi or math.log(multiplier) - math.log(draws + 1) <= limit:
        return lo - 1  # no useful screen (degenerate or a very loose budget)
    base = math.log(multiplier) - _lcomb(population, draws)

    def ok(c: int) -> bool:  # multiplier * pmf(c + 1) <= 4 budget
        j = c + 1
        if j > hi:
            return True
        return base + _lcomb(successes, j) + _lcomb(population - successes, draws - j) <= limit

    left = max(lo - 1, (draws + 1) * (successes + 1) // (population + 2) - 1)
    right = hi
    while left < right:
        mid = (left + right) // 2
        if ok(mid):
            right = mid
        else:
            left = mid + 1
    return left


def _log_disconnect(n: int, removed: int, half: int) -> float:
    """log of :func:`_disconnect` from lgamma (for screening)."""
    if half < 1:
        return 0.0
    if removed < half:
        return -math.inf
    one = math.log(n) + _lcomb(removed, half) - _lcomb(n, half)
    two = -math.inf
    if removed >= 2 * half:
        two = math.log(n * (n - 1) / 2) + _lcomb(removed, 2 * half) - _lcomb(n, 2 * half)
    return min(0.0, one, two)


def _disconnect(n: int, removed: int, half: int) -> Fraction:
    if half < 1:
        return Fraction(1)
    if removed < half:
        return Fraction(0)
    one = Fraction(n * math.comb(removed, half), math.comb(n, half))
    two = Fraction(0)
    if 2 * half <= n:
        two = Fraction(n * (n - 1) // 2 * math.comb(removed, 2 * half), math.comb(n, 2 * half))
    return min(Fraction(1), one, two)


def disconnection_bound(n: int, removed: int, k: int) -> float:
    """Upper bound on P[removing ``removed`` random clients disconnects the SecAgg+ graph].

    On the ring, the remaining clients are connected unless two separate runs of at least
    ``floor(k / 2)`` consecutive clients are removed (edges reach ``floor(k / 2)`` places
    each way; diameter edges of odd ``k`` only help).  With the removed set a uniformly
    random ``removed``-subset of the ``n`` ring places, the bound is
    ``min(n C(R, w) / C(n, w), C(n, 2) C(R, 2w) / C(n, 2w))`` with ``w = floor(k / 2)``.
    The complete graph (``k >= n - 1``) never disconnects.
    """
    n = _check_int(n, "n", 1)
    removed = _check_int(removed, "removed", 0)
    k = _check_int(k, "k", 1)
    if removed > n:
        raise SecAggValueError("removed must not exceed n")
    if k >= n - 1:
        return 0.0
    return float(_disconnect(n, removed, k // 2))


# --------------------------------------------------------------------------- thresholds


def check_threshold(k: int, t: int, colluders: int, expected_survivors: int) -> None:
    """Refuse a threshold that is unsafe or that cannot be met.

    Args:
        k: neighbours holding shares of a client's secrets.
        t: Shamir threshold.
        colluders: corrupt neighbours to tolerate in that neighbourhood.
        expected_survivors: neighbours expected to survive.

    Raises:
        UnsafeParametersError: unless ``t > (k + colluders) / 2`` (else a server colluding
            with ``colluders`` neighbours could gather ``t`` shares of both the self-mask seed
            and the mask key of an honest client, from disjoint sets of honest neighbours,
            and unmask its input) and ``t <= expected_survivors`` (else the secrets of a
            client are likely unrecoverable and the round aborts).
    """
    k = _check_int(k, "k", 1)
    t = _check_int(t, "t", 1)
    colluders = _check_int(colluders, "colluders", 0)
    expected_survivors = _check_int(expected_survivors, "expected_survivors", 0)
    if colluders > k or expected_survivors > k:
        raise SecAggValueError("colluders and expected_survivors count neighbours: they cannot exceed k")
    if 2 * t <= k + colluders:
        raise UnsafeParametersError(
            f"threshold t={t} is unsafe for k={k} neighbours with {colluders} colluding: it needs "
            f"t > (k + c) / 2, i.e. t >= {(k + colluders) // 2 + 1}, or a server could reconstruct both "
            "secrets of an honest client"
        )
    if t > expected_survivors:
        raise UnsafeParametersError(
            f"threshold t={t} exceeds the {expected_survivors} neighbours expected to survive: the round "
            "would abort; use a larger k, a smaller t or a lower dropout fraction"
        )


@dataclass(frozen=True)
class _Local:
    """Per-neighbourhood bounds for one degree (see :func:`_local`)."""

    k: int
    k_max: int  # largest degree in the graph (k + 1 for odd k: odd client counts)
    corrupt: int  # whp bound on corrupt neighbours of an honest client
    survivors: int  # whp bound on surviving neighbours of any client
    expected: int  # floor of the mean number of surviving neighbours
    complete: bool
    sec_disconnect: Fraction  # P[honest survivors' graph disconnects] (bound)
    cor_disconnect: Fraction  # P[survivors' graph disconnects] (bound)

    @property
    def t_min(self) -> int:
        """Smallest threshold meeting the security target."""
        return (self.k_max + self.corrupt) // 2 + 1


def _local(threat: ThreatModel, k: int, *, scan: bool) -> _Local:
    """Bounds for degree k.

    The security budget 2^-security_bits pays first for the honest survivors' graph
    disconnecting; the rest bounds, by a union over the honest clients, the chance that one
    has more than ``corrupt`` corrupt neighbours, so ``t`` is secure iff
    ``t >= t_min``.  Likewise the correctness budget pays for the survivors' graph
    disconnecting, then for a client keeping fewer than ``survivors`` surviving neighbours,
    so ``t`` meets correctness iff ``t <= survivors`` (and the disconnection term fits).
    ``scan``: stop counting once k cannot work anyway (the chooser).
    """
    n, big_c, big_d = threat.n, threat.colluders, threat.dropouts
    if k >= n - 1:
        zero = Fraction(0)
        return _Local(n - 1, n - 1, big_c, n - 1 - big_d, n - 1 - big_d, True, zero, zero)
    k_max = k + (k % 2)
    sec_disc = _disconnect(n, big_d + big_c, k // 2)
    cor_disc = _disconnect(n, big_d, k // 2)
    sec_left = Fraction(1, 1 << threat.security_bits) - sec_disc
    cor_left = Fraction(1, 1 << threat.correctness_bits) - cor_disc
    # (cor_left < 0: no threshold meets the correctness target; count every neighbour lost.)
    dropped = _smallest_bound(n - 1, big_d, k, n, cor_left, cap=k // 2 if scan else k) if cor_left >= 0 else k
    survivors = max(k - dropped, 0)
    if sec_left >= 0:
        cap = 2 * survivors - k_max - 1 if scan else k_max
        pop = n - 1 - big_d  # neighbours are drawn among the others left after D dropouts
        corrupt = _smallest_bound(pop, big_c, min(k_max, pop), max(n - big_c, 1), sec_left, cap=max(cap, -1))
    else:
        corrupt = k_max  # no threshold meets the security target
    expected = (k * (n - 1 - big_d)) // (n - 1)
    return _Local(k, k_max, max(corrupt, 0), survivors, expected, False, sec_disc, cor_disc)


def _figures(threat: ThreatModel, loc: _Local, t: int) -> tuple[Fraction, Fraction]:
    """(security failure, correctness failure) upper bounds for degree loc.k and threshold t."""
    if loc.complete:
        return Fraction(0), Fraction(0)
    n, big_c, big_d, k = threat.n, threat.colluders, threat.dropouts, loc.k
    pop = n - 1 - big_d
    exposed = _tail(pop, big_c, min(loc.k_max, pop), 2 * t - loc.k_max - 1)
    sec = min(Fraction(1), (n - big_c) * exposed + loc.sec_disconnect)
    starved = _tail(n - 1, big_d, k, k - t)
    cor = min(Fraction(1), n * starved + loc.cor_disconnect)
    return sec, cor


def _sparse_holds(threat: ThreatModel, k: int, t: int, dropped: int) -> bool:
    """Whether degree k and threshold t meet both targets with ``dropped`` dropouts."""
    n = threat.n
    if dropped + threat.colluders + 2 > n:
        return False  # fewer survivors than the cohort floor
    try:
        other = ThreatModel(n, dropped / n, threat.corrupt_fraction, threat.security_bits, threat.correctness_bits)
    except SecAggValueError:
        return False
    if other.dropouts != dropped or other.colluders != threat.colluders:  # pragma: no cover - float guard
        return False
    loc = _local(other, k, scan=False)
    return loc.t_min <= t <= loc.survivors


def _tolerance(threat: ThreatModel, loc: _Local, t: int, min_clients: int) -> tuple[int, int]:
    """(dropouts tolerated, colluders tolerated) of degree loc.k with threshold t."""
    n = threat.n
    if loc.complete:
        return max(0, min(n - 1 - t, n - min_clients)), max(0, min(2 * t - (n - 1) - 1, min_clients - 2))
    # Both targets get harder with every extra dropout: binary search the largest count.
    lo, hi = -1, n - threat.colluders - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _sparse_holds(threat, loc.k, t, mid):
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 0), threat.colluders


def _params(threat: ThreatModel, loc: _Local, t: int) -> GraphParameters:
    sec, cor = _figures(threat, loc, t)
    min_clients = threat.colluders + 2
    dropouts_ok, colluders_ok = _tolerance(threat, loc, t, min_clients)
    return GraphParameters(
        n=threat.n,
        k=loc.k,
        t=t,
        complete=loc.complete,
        colluders=threat.colluders,
        dropouts=threat.dropouts,
        dropouts_tolerated=dropouts_ok,
        colluders_tolerated=colluders_ok,
        min_clients=min_clients,
        corrupt_neighbours=loc.corrupt,
        surviving_neighbours=loc.survivors,
        expected_survivors=loc.expected,
        security_failure=float(sec),
        correctness_failure=float(cor),
        threat=threat,
    )


def _check_floor(threat: ThreatModel) -> None:
    if threat.n < threat.colluders + 2:
        raise UnsafeParametersError(
            f"{threat.n} clients is below the cohort floor c + 2 = {threat.colluders + 2}: a sum would expose "
            "an honest input to the colluders; recruit more clients"
        )


def choose_parameters(threat: ThreatModel) -> GraphParameters:
    """The degree ``k`` and threshold ``t`` for the threat model.

    Up to :data:`COMPLETE_GRAPH_MAX_CLIENTS` clients (alliances, cross-silo cohorts): the
    complete graph with the smallest safe threshold ``t = floor((n - 1 + c) / 2) + 1``,
    which tolerates the most dropouts the declared colluders allow (``n - 1 - t`` at any
    stages, exactly: e.g. 4 of 10 clients, 14 of 30), whatever the declared dropout
    fraction, which must still be met.

    Larger cohorts follow Bell et al. (CCS 2020) with exact hypergeometric tails (see the
    module docstring): ``k`` is the smallest even degree for which some ``t`` has security
    failure <= 2^-security_bits and correctness failure <= 2^-correctness_bits, and ``t`` is
    the largest such threshold, which maximises the corrupt neighbours tolerated.  Even
    degrees only, so the graph is k-regular whatever number of clients advertise keys.
    Corrupt neighbours are bounded among the ``n - 1 - dropouts`` clients left after the
    dropouts (the graph is built over the clients that advertised keys).  Falls back to the
    complete graph (smallest safe ``t``) when no ``k <= n - 2`` works.

    ``dropouts_tolerated`` and ``colluders_tolerated`` of the result say what the chosen
    parameters withstand (see :class:`GraphParameters`).

    Raises:
        UnsafeParametersError: the cohort is below ``colluders + 2``, or even the complete
            graph cannot meet the model (``t > (n - 1 + c) / 2`` and ``t <= n - 1 - dropouts``
            have no solution: fewer colluders or dropouts are needed).
    """
    if not isinstance(threat, ThreatModel):
        raise SecAggTypeError(f"threat must be a ThreatModel, got {type(threat).__name__}")
    _check_floor(threat)
    n, big_c, big_d = threat.n, threat.colluders, threat.dropouts
    full = _local(threat, n - 1, scan=False)
    if full.survivors < full.t_min:
        # A sparse neighbourhood is a sample of the complete one: its whp bounds are worse.
        raise UnsafeParametersError(
            f"no safe parameters for n={n} with {big_c} colluders and {big_d} dropouts, even with the complete "
            f"graph: it needs t >= {full.t_min} but only {full.survivors} neighbours survive; tolerate fewer "
            "colluders or dropouts"
        )
    if n <= COMPLETE_GRAPH_MAX_CLIENTS:
        return _params(threat, full, full.t_min)
    log_sec = -threat.security_bits * math.log(2.0)
    log_cor = -threat.correctness_bits * math.log(2.0)
    slack = math.log(4.0)
    for k in range(2, n - 1, 2):
        # Floating-point screens (relaxations with slack) skip hopeless degrees cheaply;
        # the exact integer analysis below decides.
        if _log_disconnect(n, big_d + big_c, k // 2) > log_sec + slack:
            continue
        if _log_disconnect(n, big_d, k // 2) > log_cor + slack:
            continue
        d_low = _screen_bound(n - 1, big_d, k, n, log_cor)
        c_low = _screen_bound(n - 1 - big_d, big_c, min(k, n - 1 - big_d), max(n - big_c, 1), log_sec)
        if 2 * (k - d_low) <= k + c_low:
            continue
        loc = _local(threat, k, scan=True)
        if loc.survivors >= loc.t_min >= 1:
            return _params(threat, loc, loc.survivors)
    return _params(threat, full, full.t_min)


def parameters_for_k(
    n: int,
    k: int | None,
    t: int | None = None,
    colluders: int | None = None,
    *,
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION,
    security_bits: int = DEFAULT_SECURITY_BITS,
    correctness_bits: int = DEFAULT_CORRECTNESS_BITS,
) -> GraphParameters:
    """Validate (and complete) an explicitly chosen degree, e.g. Flower's ``k = 20``.

    Args:
        n: clients in the round.
        k: neighbours per client; ``None`` or ``k >= n - 1`` means the complete graph.
        t: threshold; ``None`` picks the default: for the complete graph the smallest
            safe ``t``, ``floor((n - 1 + c) / 2) + 1`` (the most dropouts tolerated); for a
            sparse graph the largest ``t`` that meets the correctness target
            (``surviving_neighbours``) if that is safe, else the smallest safe ``t``,
            ``floor((k + c) / 2) + 1`` with ``c`` the whp bound on corrupt neighbours
            (``corrupt_neighbours``).  Check ``correctness_failure``.
        colluders: clients colluding with the server (global count); ``None`` means 0
            (an honest-but-curious server alone).
        dropout_fraction: tolerated fraction of dropped clients.
        security_bits: statistical security target, as in :class:`ThreatModel`.
        correctness_bits: correctness target used for ``surviving_neighbours``.

    Raises:
        UnsafeParametersError: the honest survivors' graph disconnects with probability
            above 2^-security_bits, ``t`` (given or default) fails :func:`check_threshold`
            with ``corrupt_neighbours`` and ``expected_survivors`` (the mean number of
            surviving neighbours, rounded down), or ``n`` is below the cohort floor
            ``colluders + 2``.
    """
    n = _check_int(n, "n", 2)
    c = 0 if colluders is None else _check_int(colluders, "colluders", 0)
    if c >= n:
        raise SecAggValueError(f"colluders must be < n = {n}, got {c}")
    threat = ThreatModel(n, dropout_fraction, c / n, security_bits, correctness_bits)
    _check_floor(threat)
    kk = n - 1 if k is None else _check_int(k, "k", 1)
    if kk < min(2, n - 1):
        raise SecAggValueError(f"k must be >= 2 (or None for the complete graph), got {kk}")
    tt = None if t is None else _check_int(t, "t", 1)
    loc = _local(threat, min(kk, n - 1), scan=False)
    if loc.sec_disconnect > Fraction(1, 1 << threat.security_bits):
        raise UnsafeParametersError(
            f"k={loc.k} is too small for n={n} with {threat.colluders} colluders and {threat.dropouts} dropouts: "
            f"the honest survivors' graph disconnects with probability up to {float(loc.sec_disconnect):.3g} > "
            f"2^-{security_bits} (a security failure: the server would learn partial sums); use a larger k"
        )
    if tt is None:
        tt = loc.t_min if loc.complete else max(loc.survivors, loc.t_min)
    if tt > loc.k:
        raise UnsafeParametersError(f"threshold t={tt} exceeds the k={loc.k} share holders; lower t or raise k")
    check_threshold(loc.k_max, tt, min(loc.corrupt, loc.k_max), loc.expected)
    return _params(threat, loc, tt)


def parameters_table(
    ns: Iterable[int],
    *,
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION,
    colluders: int = 0,
) -> str:
    """A Markdown table of what :func:`choose_parameters` picks for each cohort size in ``ns``.

    Each row is the threat model :func:`secagg.simulate.make_config` builds by default
    (``ThreatModel(n, dropout_fraction, colluders / n)``): the graph, ``k``, ``t``, the
    dropouts tolerated at any stages, the colluders tolerated and the cohort floor.  A
    cohort with no safe parameters says so.  The docs' defaults table is this output.
    """
    c = _check_int(colluders, "colluders", 0)
    lines = [
        "| n | graph | k | t | dropouts tolerated | colluders tolerated | cohort floor |",
        "|---:|:---|---:|---:|---:|---:|---:|",
    ]
    for n in ns:
        n = _check_int(n, "n", 2)
        try:
            p = choose_parameters(ThreatModel(n, dropout_fraction, c / n))
        except UnsafeParametersError:
            lines.append(f"| {n} | no safe parameters | | | | | |")
            continue
        graph = "complete" if p.complete else "SecAgg+"
        lines.append(
            f"| {n} | {graph} | {p.k} | {p.t} | {p.dropouts_tolerated} | {p.colluders_tolerated} | {p.min_clients} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- graphs


def _check_ids(ids: Iterable[int]) -> list[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise SecAggTypeError("ids must be an iterable of ints")
    out = [_check_int(i, "every id", 0) for i in ids]
    if any(i > _MAX_ID for i in out):
        raise SecAggValueError("client ids must be below 2^64")
    if len(set(out)) != len(out):
        dup = sorted({i for i in out if out.count(i) > 1})
        raise SecAggValueError(f"duplicate client ids {dup}")
    return sorted(out)


def _check_seed(seed: object) -> bytes:
    if isinstance(seed, (bytearray, memoryview)):
        seed = bytes(seed)
    if not isinstance(seed, bytes):
        raise SecAggTypeError(f"seed must be bytes, got {type(seed).__name__}")
    return seed


def _check_k(k: object, n: int) -> int | None:
    """``None`` for the complete graph, else the (validated) sparse degree."""
    if k is None:
        return None
    kk = _check_int(k, "k")
    if kk >= n - 1:
        return None
    if kk < 2:
        raise SecAggValueError(f"k must be >= 2 (or None for the complete graph), got {kk}")
    return kk


def _order(sorted_ids: list[int], seed: bytes) -> list[int]:
    base = hashlib.sha256(_DOMAIN + len(seed).to_bytes(4, "big") + seed)

    def key(i: int) -> bytes:
        h = base.copy()
        h.update(i.to_bytes(8, "big"))
        return h.digest()

    return sorted(sorted_ids, key=key)


def permutation(ids: Iterable[int], seed: bytes) -> list[int]:
    """The ring order of the clients: ids sorted by ``SHA-256(domain, seed, id)``.

    Depends only on the set of ids and the seed (not on the order ids are given in).
    """
    return _order(_check_ids(ids), _check_seed(seed))


def _ring_neighbours(order: list[int], pos: int, k: int) -> frozenset[int]:
    n = len(order)
    out = {order[(pos + d) % n] for d in range(1, k // 2 + 1)}
    out.update(order[(pos - d) % n] for d in range(1, k // 2 + 1))
    if k % 2:
        if n % 2 == 0:
            out.add(order[(pos + n // 2) % n])
        else:
            half = (n - 1) // 2
            if pos <= half:
                out.add(order[pos + half])
            if pos >= half:
                out.add(order[pos - half])
    return frozenset(out)


def neighbour_graph(ids: Iterable[int], k: int | None, seed: bytes) -> dict[int, frozenset[int]]:
    """The neighbour graph over ``ids``: ``{id: frozenset of neighbour ids}`` (no self loops).

    Args:
        ids: distinct client ids (ints in [0, 2^64)).
        k: degree of the SecAgg+ graph (>= 2); ``None`` or ``k >= len(ids) - 1`` gives the
            complete graph.  Odd ``k`` with an odd number of clients leaves one client with
            ``k + 1`` neighbours.
        seed: public seed of the permutation (bytes), fixed after the ids are.

    The graph is symmetric and determined by (set of ids, k, seed).
    """
    sorted_ids = _check_ids(ids)
    kk = _check_k(k, len(sorted_ids))
    seed = _check_seed(seed)
    if kk is None:
        everyone = frozenset(sorted_ids)
        return {i: everyone - {i} for i in sorted_ids}
    order = _order(sorted_ids, seed)
    return {cid: _ring_neighbours(order, pos, kk) for pos, cid in enumerate(order)}


def neighbours(ids: Iterable[int], k: int | None, seed: bytes, client: int) -> frozenset[int]:
    """One client's neighbourhood in :func:`neighbour_graph` (``O(n log n)``, no full graph)."""
    sorted_ids = _check_ids(ids)
    kk = _check_k(k, len(sorted_ids))
    seed = _check_seed(seed)
    client = _check_int(client, "client")
    if client not in set(sorted_ids):
        raise SecAggValueError(f"client {client} is not among the ids")
    if kk is None:
        return frozenset(sorted_ids) - {client}
    order = _order(sorted_ids, seed)
    return _ring_neighbours(order, order.index(client), kk)


def components(graph: Mapping[int, Collection[int]], alive: Iterable[int]) -> list[frozenset[int]]:
    """Connected components of the graph induced on the ``alive`` clients.

    Returns the components sorted by their smallest id.  The server of the protocol aborts
    when a component is smaller than the cohort floor, because it would learn that
    component's sum on its own.

    Raises:
        SecAggValueError: an alive id is not a node of ``graph``.
    """
    if not isinstance(graph, Mapping):
        raise SecAggTypeError(f"graph must be a mapping id -> neighbours, got {type(graph).__name__}")
    if isinstance(alive, (str, bytes)) or not isinstance(alive, Iterable):
        raise SecAggTypeError("alive must be an iterable of ids")
    live = set(alive)
    unknown = sorted(i for i in live if i not in graph)
    if unknown:
        raise SecAggValueError(f"alive ids {unknown[:10]} are not in the graph")
    seen: set[int] = set()
    out: list[frozenset[int]] = []
    for start in sorted(live):
        if start in seen:
            continue
        comp = {start}
        stack = [start]
        while stack:
            u = stack.pop()
            for v in graph[u]:
                if v in live and v not in comp:
                    comp.add(v)
                    stack.append(v)
        seen |= comp
        out.append(frozenset(comp))
    return out
