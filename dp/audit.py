"""Empirical privacy auditing: statistical *lower* bounds on epsilon from canary guesses.

An accountant proves an *upper* bound: the mechanism is at most (epsilon, delta)-DP.  An
audit measures a *lower* bound: it runs the mechanism on canaries, lets an attacker guess
which canaries were included, and finds the largest epsilon that the attacker's success
refutes at a chosen confidence.  If the audited lower bound exceeds the accountant's upper
bound, one of them is wrong (a bug in the mechanism or in the accounting), except with
probability at most ``1 - confidence``.

Two procedures, pure math (numpy and scipy; this module never sees a mechanism):

**One training run** (Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023, Theorem 3.1 and its Algorithm for delta > 0).  ``m`` canaries are each
included independently with probability 1/2 (``S_i`` in {-1, +1}); after the run the
attacker scores every canary, guesses "included" for the ``k_plus`` highest scores and
"excluded" for the ``k_minus`` lowest, and abstains on the rest.  If the mechanism is
(epsilon, delta)-DP in each canary, the number ``W`` of correct guesses among the
``r = k_plus + k_minus`` guesses satisfies, for every ``v``,

    P[W >= v] <= P[B >= v] + 2 m delta max_{1 <= i <= v} P[v - i <= B < v] / i,
    B ~ Binomial(r, e^eps / (1 + e^eps)).

The right side is the p-value of the hypothesis "(epsilon, delta)-DP" given ``v`` correct
guesses (:func:`one_run_p_value`); :func:`one_run_epsilon_lower_bound` returns the largest
epsilon it rejects at level ``1 - confidence`` (see there for how the search stays sound).
:func:`audit_scores` does the guessing from scores and, when several guess counts are
tried, splits the level among them (Bonferroni), so picking the best count after seeing
the scores does not inflate the bound.

**Many runs** (Jagielski, Ullman, Oprea, "Auditing Differentially Private Machine
Learning: How Private is Private SGD?", NeurIPS 2020).  Run the mechanism many times with
and without one canary, count the attacker's false positives and false negatives, bound
both rates from above with Clopper-Pearson intervals, and use
``epsilon >= log((1 - delta - FNR) / FPR)`` (and the symmetric ratio):
:func:`many_runs_epsilon_lower_bound`.  Tight for small models that can be trained many
times; one run is far cheaper but looser (see ``docs/audit.md``).

Every figure here is a statistical statement: ``P[lower bound > true epsilon] <= 1 -
confidence`` over the randomness of the canaries' inclusion and of the mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from dp._validate import check_int, check_real
from dp.errors import DPTypeError, DPValueError

__all__ = [
    "MAX_EPSILON",
    "OneRunAudit",
    "audit_scores",
    "clopper_pearson_upper",
    "count_correct_guesses",
    "default_guess_counts",
    "many_runs_epsilon_lower_bound",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
]

#: Largest epsilon the one-run search considers (``e^eps / (1 + e^eps)`` is 1 in float64 beyond ~37).
MAX_EPSILON = 30.0
#: Largest grid step of the first-crossing scan in :func:`one_run_epsilon_lower_bound`.
_SCAN_STEP = 0.05
_MAX_CANARIES = 10**7


def _delta(delta: object) -> float:
    return check_real("delta", delta, low=0.0, high=1.0, high_open=True)


def _confidence(confidence: object) -> float:
    return check_real("confidence", confidence, low=0.0, high=1.0, low_open=True, high_open=True)


def _counts(canaries: object, guesses: object, correct: object) -> tuple[int, int, int]:
    m = check_int("canaries", canaries, low=1, high=_MAX_CANARIES)
    r = check_int("guesses", guesses, low=0, high=m)
    v = check_int("correct", correct, low=0, high=r)
    return m, r, v


# ----------------------------------------------------------------------------- one run


def one_run_p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float = 0.0) -> float:
    """P-value of "the mechanism is (epsilon, delta)-DP" after ``correct`` of ``guesses`` guesses were right.

    Steinke, Nasr, Jagielski (2023), Theorem 3.1: with ``m = canaries`` canaries each
    included with probability 1/2 and ``B ~ Binomial(guesses, e^eps / (1 + e^eps))``,
    returns ``min(1, P[B >= v] + 2 m delta max_{1<=i<=v} P[v - i <= B < v] / i)``.

    Raises:
        DPValueError, DPTypeError: counts outside ``0 <= correct <= guesses <= canaries``,
            ``epsilon`` negative or not finite, ``delta`` outside [0, 1).
    """
    m, r, v = _counts(canaries, guesses, correct)
    eps = check_real("epsilon", epsilon, low=0.0)
    d = _delta(delta)
    return _p_value(m, r, v, eps, d)


def _p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    if v == 0:
        return 1.0
    q = float(special.expit(eps))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[B >= v]
    if delta == 0.0 or tail >= 1.0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    windows = np.cumsum(below)  # windows[i-1] = P[v - i <= B < v]
    alpha = float(np.max(windows / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def one_run_epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, *, delta: float = 0.0, confidence: float = 0.95
) -> float:
    """Largest epsilon refuted at ``confidence`` by ``correct`` right guesses out of ``guesses``.

    Soundness of the search: the lower bound must satisfy ``P[bound > true epsilon] <=
    1 - confidence``.  An (eps*, delta)-DP mechanism is (eps, delta)-DP for every
    ``eps >= eps*``, so it suffices that every epsilon below the returned value is
    rejected, i.e. the value is the *first* point where the p-value rises above the level
    ``1 - confidence``.  The p-value is at least its binomial tail, which increases with
    epsilon, so the first crossing lies below the tail's own crossing (found by
    bisection); the p-value is scanned from 0 on a grid of step at most 0.05 up to there,
    and the first crossing is refined by bisection inside the first grid cell where it
    occurs.  Returns 0.0 when even epsilon = 0 is not rejected (nothing was learned), and
    at most :data:`MAX_EPSILON`.

    Raises:
        DPValueError, DPTypeError: bad counts, ``delta`` outside [0, 1) or ``confidence``
            outside (0, 1).
    """
    m, r, v = _counts(canaries, guesses, correct)
    d = _delta(delta)
    level = 1.0 - _confidence(confidence)
    return _lower_bound(m, r, v, d, level)


def _bisect_last_rejected(f: Any, lo: float, hi: float, level: float) -> float:
    """``f(lo) <= level < f(hi)``: the point below the crossing to ~1e-9 (the rejected side)."""
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if f(mid) <= level:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * max(1.0, hi):
            break
    return lo


def _lower_bound(m: int, r: int, v: int, delta: float, level: float) -> float:
    def p(eps: float) -> float:
        return _p_value(m, r, v, eps, delta)

    if p(0.0) > level:
        return 0.0

    def tail(eps: float) -> float:
        return _p_value(m, r, v, eps, 0.0)

    # p >= tail and tail increases with epsilon: p's first crossing is at or below the tail's
    top = MAX_EPSILON if tail(MAX_EPSILON) <= level else _bisect_last_rejected(tail, 0.0, MAX_EPSILON, level)
    steps = max(1, math.ceil(top / _SCAN_STEP))
    grid = np.linspace(0.0, top, steps + 1)
    prev = 0.0
    for eps in grid[1:]:
        if p(float(eps)) > level:
            return _bisect_last_rejected(p, prev, float(eps), level)
        prev = float(eps)
    return prev


def _as_bool_array(included: npt.ArrayLike, m: int) -> npt.NDArray[np.bool_]:
    arr = np.asarray(included)
    if arr.shape != (m,):
        raise DPValueError(f"included must have one entry per canary ({m}), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
            raise DPTypeError("included must hold booleans (or 0/1): whether each canary was inserted")
        arr = arr.astype(bool)
    return arr


def _as_scores(scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(scores)
    if arr.ndim != 1 or arr.size == 0:
        raise DPValueError(f"scores must be a non-empty 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise DPTypeError(f"scores must be real numbers, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if not np.isfinite(out).all():
        raise DPValueError("scores must be finite")
    if out.size > _MAX_CANARIES:
        raise DPValueError(f"at most {_MAX_CANARIES} canaries, got {out.size}")
    return out


def count_correct_guesses(
    scores: npt.ArrayLike, included: npt.ArrayLike, k_plus: int, k_minus: int
) -> tuple[int, int]:
    """Guess "included" for the ``k_plus`` highest scores and "excluded" for the ``k_minus`` lowest.

    Ties are broken by canary index (a stable sort), which does not depend on who was
    included.  Returns ``(guesses, correct)``.

    Raises:
        DPValueError, DPTypeError: shapes that differ, non-finite scores, or
            ``k_plus + k_minus`` above the number of canaries.
    """
    s = _as_scores(scores)
    m = s.size
    inc = _as_bool_array(included, m)
    kp = check_int("k_plus", k_plus, low=0, high=m)
    km = check_int("k_minus", k_minus, low=0, high=m)
    if kp + km > m:
        raise DPValueError(f"k_plus + k_minus ({kp + km}) exceeds the number of canaries ({m})")
    order = np.argsort(s, kind="stable")  # ascending
    low, high = order[:km], order[m - kp :]
    correct = int(inc[high].sum()) + int((~inc[low]).sum())
    return kp + km, correct


def default_guess_counts(canaries: int) -> tuple[tuple[int, int], ...]:
    """The guess counts :func:`audit_scores` tries by default: ``k_plus = k_minus = k`` for
    ``k`` about 2 %, 5 %, 10 %, 25 % and 50 % of the canaries (duplicates removed, at least 1).

    Few guesses suit a strong attacker (only its most confident guesses count); all the
    canaries suit a weak one.  Trying five costs a factor 5 in the level (Bonferroni).
    """
    m = check_int("canaries", canaries, low=1, high=_MAX_CANARIES)
    ks = sorted({max(1, min(m // 2, round(f * m))) for f in (0.02, 0.05, 0.1, 0.25, 0.5)})
    if m == 1:
        return ((1, 0),)
    return tuple((k, k) for k in ks)


@dataclass(frozen=True)
class OneRunAudit:
    """Result of :func:`audit_scores`.

    Attributes:
        epsilon_lower: the empirical lower bound on epsilon at ``confidence`` (0.0: nothing
            refuted).  It is a lower bound for whoever computed the scores: the adversary
            of the experiment that produced them.
        confidence: ``1 - P[epsilon_lower > true epsilon]`` guaranteed.
        delta: the delta of the refuted (epsilon, delta) claims.
        canaries: number of canaries ``m``.
        included: how many were included.
        k_plus, k_minus: the guess counts of the best choice.
        guesses, correct: ``k_plus + k_minus`` and the correct guesses among them.
        choices: how many (k_plus, k_minus) choices were tried; each was tested at level
            ``(1 - confidence) / choices`` (Bonferroni).
        per_choice: ``(k_plus, k_minus, correct, epsilon_lower)`` of every choice.
    """

    epsilon_lower: float
    confidence: float
    delta: float
    canaries: int
    included: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    choices: int
    per_choice: tuple[tuple[int, int, int, float], ...]

    @property
    def accuracy(self) -> float:
        """Fraction of the best choice's guesses that were right (nan without guesses)."""
        return self.correct / self.guesses if self.guesses else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "epsilon_lower": self.epsilon_lower,
            "confidence": self.confidence,
            "delta": self.delta,
            "canaries": self.canaries,
            "included": self.included,
            "k_plus": self.k_plus,
            "k_minus": self.k_minus,
            "guesses": self.guesses,
            "correct": self.correct,
            "choices": self.choices,
            "per_choice": [list(c) for c in self.per_choice],
        }


def audit_scores(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> OneRunAudit:
    """One-run audit (Steinke, Nasr, Jagielski 2023) from canary scores.

    Args:
        scores: one score per canary, higher meaning "more likely included"; must be
            computed without looking at ``included``.
        included: whether each canary was included (each independently with probability
            1/2: the theorem needs it; the caller draws them).
        delta: delta of the (epsilon, delta) claims tested.
        confidence: the bound exceeds the true epsilon with probability at most
            ``1 - confidence``.
        guess_counts: ``(k_plus, k_minus)`` choices to try (default
            :func:`default_guess_counts`); each is tested at ``(1 - confidence) / len``.
            Fix them before looking at the scores.

    Raises:
        DPValueError, DPTypeError: bad scores, flags, counts or levels.
    """
    s = _as_scores(scores)
    m = s.size
    inc = _as_bool_array(included, m)
    d = _delta(delta)
    conf = _confidence(confidence)
    choices = default_guess_counts(m) if guess_counts is None else tuple(guess_counts)
    if not choices:
        raise DPValueError("guess_counts must name at least one (k_plus, k_minus) choice")
    level = (1.0 - conf) / len(choices)
    results: list[tuple[int, int, int, float]] = []
    for choice in choices:
        if not isinstance(choice, tuple) or len(choice) != 2:
            raise DPTypeError(f"each guess count must be a (k_plus, k_minus) pair, got {choice!r}")
        kp, km = choice
        r, v = count_correct_guesses(s, inc, kp, km)
        results.append((int(kp), int(km), v, _lower_bound(m, r, v, d, level)))
    best = max(results, key=lambda c: c[3])
    return OneRunAudit(
        epsilon_lower=best[3],
        confidence=conf,
        delta=d,
        canaries=m,
        included=int(inc.sum()),
        k_plus=best[0],
        k_minus=best[1],
        guesses=best[0] + best[1],
        correct=best[2],
        choices=len(choices),
        per_choice=tuple(results),
    )


# ----------------------------------------------------------------------------- many runs


def clopper_pearson_upper(successes: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial rate: ``P[rate > bound] <= 1 - confidence``.

    Raises:
        DPValueError, DPTypeError: ``0 <= successes <= trials`` violated or ``confidence``
            outside (0, 1).
    """
    n = check_int("trials", trials, low=1, high=2**53)
    k = check_int("successes", successes, low=0, high=n)
    conf = _confidence(confidence)
    if k == n:
        return 1.0
    return float(stats.beta.ppf(conf, k + 1, n - k))


def many_runs_epsilon_lower_bound(
    *,
    false_positives: int,
    negatives: int,
    false_negatives: int,
    positives: int,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> float:
    """Lower bound on epsilon from a distinguishing test repeated over many runs (Jagielski et al. 2020).

    ``negatives`` runs were made without the canary and ``positives`` with it; the test
    said "canary present" in ``false_positives`` of the former and "absent" in
    ``false_negatives`` of the latter.  Each rate is bounded from above by Clopper-Pearson
    at confidence ``1 - (1 - confidence) / 2`` (union bound), and (epsilon, delta)-DP
    implies ``FPR * e^eps + delta >= 1 - FNR`` and the same with the rates swapped, so

        epsilon >= max(log((1 - delta - FNR_hi) / FPR_hi), log((1 - delta - FPR_hi) / FNR_hi), 0).

    Raises:
        DPValueError, DPTypeError: bad counts or levels.
    """
    d = _delta(delta)
    conf = _confidence(confidence)
    each = 1.0 - (1.0 - conf) / 2.0
    fpr = clopper_pearson_upper(false_positives, negatives, each)
    fnr = clopper_pearson_upper(false_negatives, positives, each)
    best = 0.0
    for num, den in ((1.0 - d - fnr, fpr), (1.0 - d - fpr, fnr)):
        if num > 0.0 and den > 0.0:
            best = max(best, math.log(num / den))
    return best
