"""PrivacyTracker: both adversaries every round, both-or-neither recording, budget refusal, replay."""

from __future__ import annotations

import json
import math

import pytest

from dp.accountants import available_accountants, make_accountant
from dp.errors import AccountingError, BudgetExceededError, DPTypeError, DPValueError
from dp.events import (
    DistributedDiscreteGaussianEvent,
    FixedSizeSampledEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    SkellamEvent,
    event_from_dict,
)
from dp.tracker import (
    RELEASE_AGAINST,
    SERVER_AGAINST,
    PrivacyTracker,
    RoundEvents,
    RoundPrivacy,
    calibrate_for_server,
)

# 100 sampled of 10,000; 10 dropped out; 5 of the 90 survivors collude with the server, so one
# honest client is protected against the server by the 90 - 1 - 5 = 84 other honest shares.
ROUND = RoundPrivacy(sampling_rate=0.01, l2_sensitivity=1000.0, sigma_present=1000.0 * math.sqrt(90),
                     sigma_guaranteed=1000.0 * math.sqrt(84), dim=10_000, n_present=90, n_guaranteed=84)


def _state(t: PrivacyTracker) -> tuple[object, ...]:
    return (t.rounds, t.history, t.events, t.release_accountant().events, t.server_accountant().events)


def test_both_figures_every_round_and_labelled() -> None:
    tracker = PrivacyTracker(delta=1e-6)
    previous = tracker.current()
    assert previous.round == 0 and previous.release_epsilon == 0.0
    for r in range(1, 4):
        fig = tracker.record_round(ROUND)
        assert fig.round == r
        assert 0 < fig.release_epsilon < fig.server_epsilon < math.inf  # amplification helps only the release
        assert fig.release_epsilon > previous.release_epsilon and fig.server_epsilon > previous.server_epsilon
        previous = fig
    d = fig.as_dict()
    assert d["release"]["against"] == RELEASE_AGAINST and d["server"]["against"] == SERVER_AGAINST
    assert "server" in str(fig) and "release" in str(fig)
    assert len(tracker.history) == 3 and tracker.current() == fig


def test_events_for_round() -> None:
    release, server = PrivacyTracker.events_for(ROUND)
    # the protected client's own share leaves with it (add/remove): the release counts the other 89
    assert isinstance(release, PoissonSampledEvent) and release.sampling_rate == 0.01
    assert isinstance(release.event, DistributedDiscreteGaussianEvent)
    assert release.event.sigma == pytest.approx(1000.0 * math.sqrt(89), rel=1e-15)
    assert release.event.n_shares == 89 and release.event.dim == 10_000
    assert server == DistributedDiscreteGaussianEvent(1000.0, ROUND.sigma_guaranteed, 10_000, 84)
    # the ledger stores to_dict(); replaying it gives the same figures
    stored = [json.dumps(e.to_dict()) for e in (release, server)]
    replay = PrivacyTracker(delta=1e-6)
    fig = replay.record_events(RoundEvents(*(event_from_dict(json.loads(s)) for s in stored)))
    direct = PrivacyTracker(delta=1e-6).record_round(ROUND)
    assert fig == direct


def test_figures_match_separate_accountants() -> None:
    tracker = PrivacyTracker(delta=1e-6)
    fig = tracker.record_round(ROUND)
    rel, srv = make_accountant("rdp"), make_accountant("rdp")
    rel.compose(ROUND.events().release)
    srv.compose(ROUND.events().server)
    assert fig.release_epsilon == rel.get_epsilon(1e-6)
    assert fig.server_epsilon == srv.get_epsilon(1e-6)


def test_dropouts_and_colluders_cost_privacy() -> None:
    def server_eps(n_guaranteed: int) -> float:
        r = RoundPrivacy(0.01, 1000.0, 1000.0 * math.sqrt(90), 1000.0 * math.sqrt(n_guaranteed), 10_000, 90,
                         n_guaranteed)
        return PrivacyTracker(1e-6).record_round(r).server_epsilon

    assert server_eps(89) < server_eps(60) < server_eps(20)
    everyone_colludes = RoundPrivacy(0.01, 1000.0, 1000.0 * math.sqrt(90), 0.0, 10_000, 90, 0)
    fig = PrivacyTracker(1e-6).record_round(everyone_colludes)
    assert fig.server_epsilon == math.inf and fig.release_epsilon < math.inf


@pytest.mark.parametrize("mechanism", ["skellam", "gaussian"])
def test_other_mechanisms(mechanism: str) -> None:
    r = RoundPrivacy(0.05, 100.0, 300.0, 250.0, 1000, 20, 14, mechanism)  # type: ignore[arg-type]
    release, server = r.events()
    inner = SkellamEvent if mechanism == "skellam" else GaussianEvent
    assert isinstance(server, inner)
    assert isinstance(release, PoissonSampledEvent) and isinstance(release.event, inner)
    fig = PrivacyTracker(1e-5).record_round(r)
    assert 0 < fig.release_epsilon < fig.server_epsilon < math.inf


def test_gaussian_rounds_work_with_every_accountant() -> None:
    r = RoundPrivacy(0.05, 1.0, 1.2, 1.0, 10, 20, 14, "gaussian")
    for name in available_accountants():
        fig = PrivacyTracker(1e-5, accountant=name).record_round(r)
        assert fig.accountant == name and 0 < fig.release_epsilon < fig.server_epsilon


def test_budget_refusal_leaves_state_unchanged() -> None:
    tracker = PrivacyTracker(delta=1e-6, budget_epsilon=2.0)
    assert tracker.budget_against == "both"
    preview = tracker.preview_round(ROUND)
    assert tracker.rounds == 0
    first = tracker.record_round(ROUND)
    assert first == preview
    assert first.server_epsilon < 2.0
    n = 1
    while True:
        before = _state(tracker)
        try:
            tracker.record_round(ROUND)
            n += 1
        except BudgetExceededError as exc:
            assert "nothing was recorded" in str(exc)
            assert _state(tracker) == before
            break
        assert n < 100
    assert n >= 2 and tracker.current().server_epsilon <= 2.0
    # the release figure alone would have allowed more rounds
    release_only = PrivacyTracker(delta=1e-6, budget_epsilon=2.0, budget_against="release")
    for _ in range(n + 1):
        release_only.record_round(ROUND)


def test_exceeds_budget_follows_budget_against_and_matches_refusal() -> None:
    fig = PrivacyTracker(delta=1e-6).preview_round(ROUND)
    assert fig.release_epsilon < fig.server_epsilon
    between = (fig.release_epsilon + fig.server_epsilon) / 2
    want = {"both": True, "server": True, "release": False}
    for against, over in want.items():
        t = PrivacyTracker(delta=1e-6, budget_epsilon=between, budget_against=against)  # type: ignore[arg-type]
        assert t.preview_round(ROUND) == fig and t.rounds == 0
        assert t.exceeds_budget(fig) is over
        if over:  # record_round refuses exactly when the preview says so
            with pytest.raises(BudgetExceededError):
                t.record_round(ROUND)
        else:
            assert t.record_round(ROUND) == fig
    assert PrivacyTracker(delta=1e-6).exceeds_budget(fig) is False  # no budget
    with pytest.raises(DPTypeError):
        PrivacyTracker(delta=1e-6).exceeds_budget(fig.as_dict())  # type: ignore[arg-type]


def test_preview_validates_like_record() -> None:
    small = PrivacyTracker(delta=1e-6, population=50)  # ROUND has 90 survivors
    with pytest.raises(DPValueError, match="population"):
        small.preview_round(ROUND)
    with pytest.raises(DPTypeError):
        small.preview_round(ROUND.events())  # type: ignore[arg-type]


def test_both_or_neither() -> None:
    """If the server event cannot be accounted for, the release event is not recorded either."""
    tracker = PrivacyTracker(delta=1e-6)
    tracker.record_round(ROUND)
    before = _state(tracker)
    bad = RoundEvents(PoissonSampledEvent(0.01, GaussianEvent(1.0)), FixedSizeSampledEvent(1, 2, GaussianEvent(1.0)))
    with pytest.raises(AccountingError):
        tracker.record_events(bad)
    assert _state(tracker) == before
    if "opacus-rdp" in available_accountants():
        backend = PrivacyTracker(delta=1e-6, accountant="opacus-rdp")
        before = _state(backend)
        with pytest.raises(AccountingError):
            backend.record_events(RoundEvents(PoissonSampledEvent(0.01, GaussianEvent(1.0)), LaplaceEvent(1.0)))
        assert _state(backend) == before
        with pytest.raises(AccountingError):  # distributed mechanisms need the rdp accountant
            backend.record_round(ROUND)
        assert _state(backend) == before
    with pytest.raises(DPTypeError):
        tracker.record_events((GaussianEvent(1.0),))  # type: ignore[arg-type]
    with pytest.raises(DPTypeError):
        tracker.record_round("round")  # type: ignore[arg-type]


def test_round_privacy_validation() -> None:
    good = {"sampling_rate": 0.1, "l2_sensitivity": 1.0, "sigma_present": 2.0, "sigma_guaranteed": 1.5, "dim": 10,
            "n_present": 5, "n_guaranteed": 4}
    RoundPrivacy(**good)  # type: ignore[arg-type]
    for change in ({"sampling_rate": 0.0}, {"sampling_rate": 1.5}, {"sampling_rate": math.nan},
                   {"l2_sensitivity": 0.0}, {"sigma_present": -1.0}, {"sigma_guaranteed": 2.5},
                   {"n_present": 0}, {"n_guaranteed": 6}, {"n_guaranteed": 5}, {"n_guaranteed": 0}, {"dim": 0},
                   {"sigma_guaranteed": 1.9}, {"dim": 10**400},
                   {"mechanism": "binomial"}, {"sigma_present": math.inf}):
        with pytest.raises(DPValueError):
            RoundPrivacy(**{**good, **change})  # type: ignore[arg-type]
    with pytest.raises(DPTypeError):
        RoundPrivacy(**{**good, "dim": 10.0})  # type: ignore[arg-type]
    with pytest.raises(DPTypeError):
        RoundPrivacy(**{**good, "sampling_rate": True})  # type: ignore[arg-type]


def test_tracker_validation_and_warnings() -> None:
    for bad in (0.0, 1.0, math.nan):
        with pytest.raises(DPValueError):
            PrivacyTracker(bad)
    with pytest.raises(DPValueError):
        PrivacyTracker(1e-5, budget_epsilon=0.0)
    with pytest.raises(DPValueError):
        PrivacyTracker(1e-5, accountant="nope")
    with pytest.raises(DPValueError):
        PrivacyTracker(1e-5, budget_against="nobody")  # type: ignore[arg-type]
    assert PrivacyTracker(0.02, population=100).warnings()
    assert PrivacyTracker(1e-6, population=100).warnings() == []
    small = PrivacyTracker(1e-6, population=50)
    with pytest.raises(DPValueError):
        small.record_round(ROUND)  # 90 survivors out of a population of 50
    assert small.rounds == 0


def test_calibrate_for_server_targets_the_server_at_the_floor() -> None:
    cal = calibrate_for_server(8.0, 1e-6, 20, l2_sensitivity=1000.0, dim=10_000, cohort_floor=60, colluders=10)
    assert cal.against == "server" and "SERVER" in cal.note and "60" in cal.note
    assert cal.n_counted == 49 and cal.epsilon <= 8.0  # 60 - 1 (the client itself) - 10 colluders
    assert cal.sigma_guaranteed == pytest.approx(cal.share_sigma * math.sqrt(49))
    # running 20 rounds at the floor with that noise stays within the target against the server
    tracker = PrivacyTracker(1e-6)
    r = RoundPrivacy(0.01, 1000.0, cal.share_sigma * math.sqrt(60), cal.sigma_guaranteed, 10_000, 60, 49)
    for _ in range(20):
        fig = tracker.record_round(r)
    assert fig.server_epsilon <= 8.0 and fig.release_epsilon < fig.server_epsilon
    # and not much more noise than needed
    r2 = RoundPrivacy(0.01, 1000.0, 0.99 * cal.share_sigma * math.sqrt(60), 0.99 * cal.sigma_guaranteed, 10_000, 60,
                      49)
    tracker2 = PrivacyTracker(1e-6)
    for _ in range(20):
        fig2 = tracker2.record_round(r2)
    assert fig2.server_epsilon > 8.0
    # asking for the release figure instead needs (much) less noise, and says so
    rel = calibrate_for_server(8.0, 1e-6, 20, l2_sensitivity=1000.0, dim=10_000, cohort_floor=60, colluders=10,
                               against="release", sampling_rate=0.01)
    assert rel.share_sigma < cal.share_sigma and "RELEASE" in rel.note


def test_calibrate_for_server_errors() -> None:
    kw = {"l2_sensitivity": 1.0, "dim": 10, "cohort_floor": 10}
    with pytest.raises(DPValueError, match="no noise is guaranteed"):
        calibrate_for_server(1.0, 1e-5, 10, colluders=9, **kw)  # type: ignore[arg-type]
    calibrate_for_server(1.0, 1e-5, 10, colluders=8, **kw)  # type: ignore[arg-type]  # one share left
    with pytest.raises(DPValueError):
        calibrate_for_server(1.0, 1e-5, 10, against="release", sampling_rate=0.1, l2_sensitivity=1.0, dim=10,
                             cohort_floor=1)
    for rounds in (10**400, 2**53 + 1):
        with pytest.raises(DPValueError):
            calibrate_for_server(1.0, 1e-5, rounds, **kw)  # type: ignore[arg-type]
    for rounds in (10.0, True):
        with pytest.raises(DPTypeError):
            calibrate_for_server(1.0, 1e-5, rounds, **kw)  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        calibrate_for_server(1.0, 1e-5, 10, against="release", **kw)  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        calibrate_for_server(1.0, 1e-5, 10, against="someone", **kw)  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        calibrate_for_server(-1.0, 1e-5, 10, **kw)  # type: ignore[arg-type]


def test_release_event_counts_the_other_survivors_only() -> None:
    """The protected client's own share never protects it: m - 1 shares against the release."""
    r = RoundPrivacy(0.1, 1.0, 2.0 * math.sqrt(10), 2.0 * math.sqrt(7), 10, 10, 7, "gaussian")
    release, server = r.events()
    assert isinstance(release, PoissonSampledEvent) and isinstance(release.event, GaussianEvent)
    assert release.event.noise_multiplier == pytest.approx(2.0 * math.sqrt(9), rel=1e-15)
    assert server == GaussianEvent(2.0 * math.sqrt(7))
    alone = RoundPrivacy(0.1, 1.0, 2.0, 0.0, 10, 1, 0, "gaussian")  # one survivor: nothing protects it
    fig = PrivacyTracker(1e-5).record_round(alone)
    assert fig.release_epsilon == math.inf and fig.server_epsilon == math.inf


def _dp_accounting_gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float,
                                    sampling_rate: float = 1.0) -> float:
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    composed = dp_accounting.SelfComposedDpEvent(event, rounds)
    rdp = rdp_privacy_accountant.RdpAccountant()
    rdp.compose(composed)
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(composed)
    return min(float(rdp.get_epsilon(delta)), float(pld.get_epsilon(delta)))


@pytest.mark.parametrize(("floor", "colluders"), [(2, 0), (10, 3), (60, 10)])
@pytest.mark.parametrize("mechanism", ["gaussian", "distributed_discrete_gaussian"])
def test_calibrate_for_server_meets_target_with_floor_minus_one_minus_c_shares(
        floor: int, colluders: int, mechanism: str) -> None:
    """Contract, checked independently with dp_accounting: the calibrated share noise meets the
    target when the server faces floor - 1 - c honest shares.  The distributed discrete
    Gaussian is never more private than a continuous Gaussian of the same std, so the Gaussian
    figure of dp_accounting is a lower bound its epsilon must respect too."""
    target, delta, rounds, l2 = 4.0, 1e-6, 50, 100.0
    cal = calibrate_for_server(target, delta, rounds, l2_sensitivity=l2, dim=1000, cohort_floor=floor,
                               colluders=colluders, mechanism=mechanism)  # type: ignore[arg-type]
    honest = floor - 1 - colluders
    assert cal.n_counted == honest
    z = cal.share_sigma * math.sqrt(honest) / l2
    assert _dp_accounting_gaussian_epsilon(z, rounds, delta) <= target
    if mechanism == "gaussian":
        # tight: 1% less noise misses the target (by RDP, which the calibration used)
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant

        acc = rdp_privacy_accountant.RdpAccountant()
        acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.99 * z), rounds))
        assert acc.get_epsilon(delta) > target


def test_calibrate_for_server_release_counts_floor_minus_one() -> None:
    target, delta, rounds, l2, q = 2.0, 1e-6, 100, 1.0, 0.05
    cal = calibrate_for_server(target, delta, rounds, l2_sensitivity=l2, dim=10, cohort_floor=20,
                               mechanism="gaussian", against="release", sampling_rate=q)
    assert cal.n_counted == 19 and "19" in cal.note
    assert _dp_accounting_gaussian_epsilon(cal.share_sigma * math.sqrt(19) / l2, rounds, delta, q) <= target
    # and the tracker agrees: a round at the floor spends at most the target against the release
    r = RoundPrivacy(q, l2, cal.share_sigma * math.sqrt(20), cal.share_sigma * math.sqrt(19), 10, 20, 19,
                     "gaussian")
    tracker = PrivacyTracker(delta)
    for _ in range(rounds):
        fig = tracker.record_round(r)
    assert fig.release_epsilon <= target * (1 + 1e-9)
