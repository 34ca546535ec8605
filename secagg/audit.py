"""Empirical privacy audit of a distributed-DP secure-aggregation run (canaries, one run).

:func:`run_canary_audit` runs ``rounds`` rounds of ``clients`` clients through the real
distributed-DP pipeline and returns an empirical *lower* bound on epsilon
(:mod:`dp.audit`, Steinke, Nasr, Jagielski, NeurIPS 2023) beside the accountant's *upper*
bound for the same rounds (:class:`dp.tracker.PrivacyTracker`).  A lower bound above the
upper bound means the mechanism leaks more than the accounting says (a bug), except with
probability at most ``1 - confidence``.

The experiment, round after round:

* ``canaries`` of the clients are canary clients.  Before the run, canary ``i`` is
  *inserted* with probability 1/2, independently (``included[i]``); an inserted canary
  sends ``clip_norm * e_{j_i}`` every round (a basis direction of the model, a distinct
  coordinate per canary, so canaries do not interfere; norm ``clip_norm`` is the worst
  case for the Gaussian-type noise), a canary that was not inserted sends a zero update.
  Either way the canary client takes part and adds its noise share, so the number of
  noise shares does not depend on who was inserted.
* The other clients send random updates of norm about ``clip_norm``; ``colluders`` of
  them (the plan's count, from ``corrupt_fraction``) collude with the server.
* Every client's update goes through :meth:`secagg.spec.RoundSpec.encode` (clip, rotate,
  scale, conditionally round, add the client's discrete Gaussian or Skellam share, wrap
  into the ring) for a fresh :func:`secagg.spec.build_spec` round (new round id, so a
  new rotation).  The vectors are summed by a full simulated SecAgg+ round
  (:func:`secagg.simulate.run_simulation` on the spec's protocol configuration:
  ``aggregation="protocol"``, checked against the plain sum) or directly modulo
  ``2^bits`` (``aggregation="direct"``, the same numbers, faster).

The adversary audited is the one the ``server`` figure of :mod:`dp.tracker` holds
against: the aggregation server with its colluding clients.  It sees each round's
unmasked aggregate, subtracts the colluders' encoded vectors (their noise shares
included), decodes with :meth:`~secagg.spec.RoundSpec.decode`, subtracts every other
non-canary client's clipped update (DP's adversary knows everyone else's data), and
scores canary ``i`` by the inner product of what is left with its direction, summed over
rounds.  It does not know the honest clients' noise shares or which canaries were
inserted.  The upper bound printed beside it is the tracker's server epsilon for the
same rounds (``m - 1 - c`` honest shares of ``m`` survivors, no sampling amplification);
the experiment keeps the canary's own share in the sum under both hypotheses, which can
only make the true epsilon slightly smaller than that figure.

``noise=False`` is a **deliberately broken mechanism** for testing the auditor: the
clients encode with noise multiplier ``1e-4`` (:data:`BROKEN_NOISE_MULTIPLIER`: discrete
Gaussian shares are then zero, Skellam shares almost all zero) while the
accountant is still asked about the configured ``noise_multiplier``, as a buggy
implementation that forgot the noise would claim.  The audit must catch it.

Why one run gives a lower bound far below the upper bound: see ``docs/audit.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dp.audit import OneRunAudit, audit_scores
from dp.clipping import clip_l2
from dp.tracker import PrivacyTracker
from secagg._validate import check_choice, check_fraction, check_int, check_number, check_optional_int
from secagg.errors import SecAggError, SecAggValueError
from secagg.rounds import round_privacy
from secagg.simulate import run_simulation
from secagg.spec import ArraySpec, DPAggregation, RoundSpec, build_spec

__all__ = [
    "AGGREGATIONS",
    "BROKEN_NOISE_MULTIPLIER",
    "SERVER_ADVERSARY",
    "AuditSumMismatch",
    "CanaryAudit",
    "run_canary_audit",
]

#: How the encoded vectors are summed: a full simulated protocol round, or directly mod 2^bits.
AGGREGATIONS: tuple[str, ...] = ("protocol", "direct")
#: Noise multiplier the deliberately broken mechanism (``noise=False``) encodes with.
#: 1e-4 keeps a Skellam share's mu inside the sampler's range at any cohort size; the noise is
#: 10^4 times below the claim, so the mechanism is in effect noiseless.
BROKEN_NOISE_MULTIPLIER = 1e-4
#: The adversary of both figures of a :class:`CanaryAudit`.
SERVER_ADVERSARY = (
    "server: the aggregation server with its colluding clients; it sees every round's unmasked aggregate, "
    "removes the colluders' noise shares and every non-canary update, and does not know the honest clients' "
    "noise shares or which canaries were inserted (no sampling amplification)"
)
_MAX_CANARIES = 100_000


class AuditSumMismatch(SecAggError):
    """The protocol round's sum differs from the plain modular sum of the same vectors."""


@dataclass(frozen=True)
class CanaryAudit:
    """Result of :func:`run_canary_audit`: both epsilons are against :data:`SERVER_ADVERSARY`.

    Attributes:
        epsilon_lower: empirical lower bound at ``confidence`` (0.0: nothing refuted).
        epsilon_upper: the accountant's server epsilon for the same rounds (the stated epsilon).
        epsilon_release: the accountant's release figure, for reference (not audited).
        delta: delta of both figures.
        confidence: ``P[epsilon_lower > true epsilon] <= 1 - confidence``.
        adversary: whom both figures are against.
        canaries, included: canary clients, and how many were inserted.
        k_plus, k_minus, guesses, correct: the best guess counts and their outcome.
        clients, rounds, dim: the run (clients per round, including the canary clients).
        clip_norm, noise_multiplier, mechanism: the configured mechanism (what the
            accountant is told, also when ``noise`` is False).
        colluders: clients colluding with the server (their shares are removed).
        bits, scale: ring width and lattice scale of the plan.
        accountant: accountant name.
        noise: False for the deliberately broken mechanism (noise off).
        aggregation: ``"protocol"`` or ``"direct"``.
        seed: the seed, if the run was seeded.
        one_run: the :class:`dp.audit.OneRunAudit` behind ``epsilon_lower``.
        scores: every canary's score (not in :meth:`to_dict`).
        inserted: whether each canary was inserted (not in :meth:`to_dict`).
    """

    epsilon_lower: float
    epsilon_upper: float
    epsilon_release: float
    delta: float
    confidence: float
    adversary: str
    canaries: int
    included: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    clients: int
    rounds: int
    dim: int
    clip_norm: float
    noise_multiplier: float
    mechanism: str
    colluders: int
    bits: int
    scale: float
    accountant: str
    noise: bool
    aggregation: str
    seed: int | None
    one_run: OneRunAudit = field(repr=False)
    scores: npt.NDArray[np.float64] = field(repr=False, compare=False)
    inserted: npt.NDArray[np.bool_] = field(repr=False, compare=False)

    @property
    def passed(self) -> bool:
        """Whether the lower bound stays at or below the stated (upper) epsilon."""
        return self.epsilon_lower <= self.epsilon_upper

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also what :func:`dp.report.build_report` takes as ``audit``)."""
        return {
            "kind": "canary audit, one run (Steinke, Nasr, Jagielski 2023)",
            "passed": self.passed,
            "epsilon_lower": self.epsilon_lower,
            "epsilon_upper": self.epsilon_upper,
            "epsilon_release": self.epsilon_release,
            "delta": self.delta,
            "confidence": self.confidence,
            "adversary": self.adversary,
            "canaries": self.canaries,
            "included": self.included,
            "k_plus": self.k_plus,
            "k_minus": self.k_minus,
            "guesses": self.guesses,
            "correct": self.correct,
            "clients": self.clients,
            "rounds": self.rounds,
            "dim": self.dim,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "mechanism": self.mechanism,
            "colluders": self.colluders,
            "bits": self.bits,
            "scale": self.scale,
            "accountant": self.accountant,
            "noise": self.noise,
            "aggregation": self.aggregation,
            "seed": self.seed,
            "per_choice": self.one_run.to_dict()["per_choice"],
            "choices": self.one_run.choices,
        }


def _background(rng: np.random.Generator, dim: int, clip_norm: float) -> npt.NDArray[np.float64]:
    """A random update of norm ``clip_norm * U(0.5, 1.5)`` (so some are clipped)."""
    v = rng.standard_normal(dim)
    return np.asarray(v * (clip_norm * rng.uniform(0.5, 1.5) / max(float(np.linalg.norm(v)), 1e-300)))


def _default_dim(canaries: int) -> int:
    return 1 << max(4, (canaries - 1).bit_length())


def run_canary_audit(
    canaries: int = 500,
    *,
    clients: int | None = None,
    rounds: int = 1,
    dim: int | None = None,
    clip_norm: float = 1.0,
    noise_multiplier: float = 2.0,
    mechanism: Literal["discrete_gaussian", "skellam"] = "discrete_gaussian",
    delta: float = 1e-5,
    confidence: float = 0.95,
    corrupt_fraction: float = 0.0,
    accountant: str = "rdp",
    noise: bool = True,
    aggregation: str = "protocol",
    guess_counts: tuple[tuple[int, int], ...] | None = None,
    seed: int | None = None,
) -> CanaryAudit:
    """Run a canary audit of a distributed-DP run; see the module docstring for the experiment.

    Args:
        canaries: canary clients (each inserted with probability 1/2); at least 2.
        clients: clients per round, canary clients included (default ``canaries + 8``);
            the ``clients - canaries`` others send random updates, and must number at least
            the colluders.
        rounds: rounds; every client takes part in every round (no sampling).
        dim: model dimension, at least ``canaries`` (default: the next power of two, >= 16).
        clip_norm: L2 clip of each update (model units); canaries have exactly this norm.
        noise_multiplier: noise guaranteed against the server / L2 sensitivity, per round.
        mechanism: ``"discrete_gaussian"`` or ``"skellam"``.
        delta: delta of both figures.
        confidence: confidence of the lower bound.
        corrupt_fraction: fraction of clients assumed to collude with the server (sets the
            colluders of the plan; those clients' shares are removed by the adversary).
        accountant: accountant of the upper bound (see :func:`dp.accountants.make_accountant`).
        noise: False runs the **deliberately broken** mechanism (noise off); the stated
            epsilon stays that of ``noise_multiplier``.
        aggregation: ``"protocol"`` (a simulated SecAgg+ round per round) or ``"direct"``.
        guess_counts: ``(k_plus, k_minus)`` choices (default
            :func:`dp.audit.default_guess_counts`).
        seed: seeds everything (inclusion, updates, noise shares, protocol keys) for a
            reproducible audit; None draws fresh OS randomness.  A seeded run's noise is
            predictable: audits only, never training.

    Raises:
        SecAggValueError, SecAggTypeError: bad arguments.
        dp.errors.DPError: no distributed-DP plan fits, or the accountant fails.
        AuditSumMismatch: the protocol's sum differs from the plain sum (a bug).
    """
    m = check_int("canaries", canaries, 2, _MAX_CANARIES)
    n = m + 8 if clients is None else check_int("clients", clients, 3)
    if n < m:
        raise SecAggValueError(f"clients ({n}) must include the {m} canary clients")
    t_rounds = check_int("rounds", rounds, 1, 10_000)
    d = _default_dim(m) if dim is None else check_int("dim", dim, 1, 2**24)
    if d < m:
        raise SecAggValueError(f"dim ({d}) must be >= canaries ({m}): each canary gets its own direction")
    clip = check_number("clip_norm", clip_norm, lo=0.0, lo_open=True)
    z = check_number("noise_multiplier", noise_multiplier, lo=0.0, lo_open=True)
    check_choice("mechanism", mechanism, ("discrete_gaussian", "skellam"))
    cf = check_fraction("corrupt_fraction", corrupt_fraction)
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_optional_int("seed", seed, 0)
    if not isinstance(noise, bool):
        raise SecAggValueError("noise must be True or False")

    seq = np.random.SeedSequence(seed)
    gen_seed, noise_seed, proto_seed = seq.spawn(3)
    rng = np.random.default_rng(gen_seed)
    noise_rng = np.random.default_rng(noise_seed)
    proto_rng = np.random.default_rng(proto_seed)

    inserted = rng.random(m) < 0.5
    coords = rng.permutation(d)[:m]
    layout = (ArraySpec("update", (d,), "float64"),)
    claimed = DPAggregation(clip_norm=clip, noise_multiplier=z, mechanism=mechanism)
    used = claimed if noise else DPAggregation(
        clip_norm=clip, noise_multiplier=BROKEN_NOISE_MULTIPLIER, mechanism=mechanism
    )
    specs_kw: dict[str, Any] = {"dropout_fraction": 0.0, "corrupt_fraction": cf}
    claimed_plan = build_spec(n, layout, claimed, round_id=bytes(16), **specs_kw).plan
    assert claimed_plan is not None
    c = claimed_plan.colluders
    background = n - m
    if background < c:
        raise SecAggValueError(
            f"{c} colluders need at least {c} non-canary clients, got {background} (raise clients or lower "
            "corrupt_fraction)"
        )
    honest_background = background - c

    tracker = PrivacyTracker(delta, accountant=accountant)
    scores = np.zeros(m)
    spec: RoundSpec | None = None
    for t in range(t_rounds):
        spec = build_spec(n, layout, used, round_index=t, round_id=rng.bytes(16), **specs_kw)
        assert spec.plan is not None
        vectors = []
        known = np.zeros(d)  # the honest non-canary clients' clipped updates: known to the adversary
        for i in range(m):
            update = np.zeros(d)
            if inserted[i]:
                update[coords[i]] = clip
            vectors.append(spec.encode(update, rng=noise_rng))
        for j in range(background):
            update = _background(rng, d, clip)
            vectors.append(spec.encode(update, rng=noise_rng))
            if j < honest_background:
                known += clip_l2(update, clip)[0]
        mask = (1 << spec.bits) - 1
        total = np.zeros(spec.d, dtype=np.uint64)
        for v in vectors:
            total += v.astype(np.uint64)
        total &= np.uint64(mask)
        if aggregation == "protocol":
            result = run_simulation(spec.protocol, vectors, rng=proto_rng)
            if len(result.survivors) != n or not np.array_equal(result.aggregate, total):
                raise AuditSumMismatch(f"round {t}: the protocol's sum differs from the plain sum of the vectors")
        colluding = np.zeros(spec.d, dtype=np.uint64)
        for v in vectors[m + honest_background :]:
            colluding += v.astype(np.uint64)
        view = (total - (colluding & np.uint64(mask))) & np.uint64(mask)
        mean, _ = spec.decode(view, n - c)
        residual = mean * (n - c) - known
        scores += residual[coords]
        tracker.record_round(round_privacy(claimed_plan.noise_report(n)))

    assert spec is not None and spec.plan is not None  # rounds >= 1
    figures = tracker.current()
    one = audit_scores(scores, inserted, delta=delta, confidence=confidence, guess_counts=guess_counts)
    return CanaryAudit(
        epsilon_lower=one.epsilon_lower,
        epsilon_upper=figures.server_epsilon,
        epsilon_release=figures.release_epsilon,
        delta=figures.delta,
        confidence=one.confidence,
        adversary=SERVER_ADVERSARY,
        canaries=m,
        included=one.included,
        k_plus=one.k_plus,
        k_minus=one.k_minus,
        guesses=one.guesses,
        correct=one.correct,
        clients=n,
        rounds=t_rounds,
        dim=d,
        clip_norm=clip,
        noise_multiplier=z,
        mechanism=mechanism,
        colluders=c,
        bits=spec.bits,
        scale=spec.plan.scale,
        accountant=accountant,
        noise=noise,
        aggregation=aggregation,
        seed=seed,
        one_run=one,
        scores=scores,
        inserted=inserted,
    )

