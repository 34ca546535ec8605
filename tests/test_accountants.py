"""Accountants: one contract for all, cross-checks against opacus and dp_accounting, calibration.

Measured cross-check figures (recorded in docs/accounting.md):
* RdpAccountant vs opacus RDPAccountant, 48-point grid, opacus's orders: max relative
  difference of epsilon 1.6e-10 (tolerance 1e-6).
* RdpAccountant vs dp_accounting RdpAccountant (its orders; epsilon): 1e-6 where
  dp_accounting's fractional-order series is accurate (see tests/test_rdp.py).
* PldAccountant vs the exact Gaussian profile: 1e-6 relative; PLD <= RDP everywhere
  (PLD is tighter); PLD and PRV agree to within PRV's eps_error (0.01) + 1%.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np
import pytest

from dp.accountants import (
    ACCOUNTANT_NAMES,
    Accountant,
    PrvAccountant,
    RdpAccountant,
    available_accountants,
    make_accountant,
)
from dp.calibration import calibrate_noise_multiplier
from dp.errors import AccountingError, DPError, DPTypeError, DPValueError
from dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    FixedSizeSampledEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    SkellamEvent,
)
from dp.rdp import rdp_to_epsilon

AVAILABLE = available_accountants()
OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
SGM = PoissonSampledEvent(0.01, GaussianEvent(1.0))


def _snapshot(acc: Accountant) -> tuple[Any, ...]:
    return (acc.events, acc.get_epsilon(1e-5))


@pytest.fixture(params=AVAILABLE)
def accountant(request: pytest.FixtureRequest) -> Accountant:
    return make_accountant(request.param)


# ----------------------------------------------------------------------------- contract


def test_rdp_is_always_available_and_names_are_known() -> None:
    assert AVAILABLE[0] == "rdp"
    assert set(AVAILABLE) <= set(ACCOUNTANT_NAMES)
    with pytest.raises(DPValueError):
        make_accountant("moments")


def test_contract_interface(accountant: Accountant) -> None:
    assert isinstance(accountant, Accountant)
    assert accountant.name in ACCOUNTANT_NAMES
    assert len(accountant.events) == 0
    assert accountant.get_epsilon(1e-5) == 0.0
    assert accountant.get_delta(1.0) == 0.0
    accountant.compose(SGM, 10)
    eps = accountant.get_epsilon(1e-5)
    assert 0 < eps < math.inf
    assert list(accountant.events) == [SelfComposedEvent(SGM, 10)]
    # more spending, more epsilon; smaller delta, more epsilon
    assert accountant.get_epsilon(1e-7) > eps
    more = accountant.copy()
    more.compose(SGM, 10)
    assert more.get_epsilon(1e-5) > eps
    # get_delta inverts get_epsilon (upper bounds both ways, up to the backend's errors)
    back = accountant.get_delta(eps)
    assert 0 < back <= 1e-5 * 1.05


def test_copy_is_independent(accountant: Accountant) -> None:
    accountant.compose(SGM)
    twin = accountant.copy()
    twin.compose(SGM, 5)
    assert len(accountant.events) == 1 and len(twin.events) == 2
    assert twin.get_epsilon(1e-5) > accountant.get_epsilon(1e-5)


def test_replay_from_events_reproduces_epsilon(accountant: Accountant) -> None:
    accountant.compose(SGM, 3)
    accountant.compose(PoissonSampledEvent(0.02, GaussianEvent(1.5)))
    fresh = make_accountant(accountant.name)
    for e in accountant.events:
        fresh.compose(e)
    assert fresh.get_epsilon(1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)


BAD_DELTAS: list[tuple[Any, type[DPError]]] = [
    (0.0, DPValueError), (1.0, DPValueError), (-1e-5, DPValueError), (1.5, DPValueError),
    (math.nan, DPValueError), (math.inf, DPValueError), (True, DPTypeError), ("1e-5", DPTypeError),
]


def test_bad_delta_raises_and_changes_nothing(accountant: Accountant) -> None:
    accountant.compose(SGM, 2)
    before = _snapshot(accountant)
    for delta, error in BAD_DELTAS:
        with pytest.raises(error):
            accountant.get_epsilon(delta)
    for epsilon in (-0.1, math.nan, math.inf):
        with pytest.raises(DPValueError):
            accountant.get_delta(epsilon)
    assert _snapshot(accountant) == before


BAD_COMPOSE: list[tuple[Any, Any, type[DPError]]] = [
    (SGM, 0, DPValueError),
    (SGM, -1, DPValueError),
    (SGM, 1.0, DPTypeError),
    (SGM, True, DPTypeError),
    (SGM, 10**400, DPValueError),
    (SGM, 2**53 + 1, DPValueError),
    (SGM, 1e400, DPTypeError),
    (SGM, np.float64(3.0), DPTypeError),
    ({"type": "gaussian", "noise_multiplier": 1.0}, 1, DPTypeError),
    (None, 1, DPTypeError),
    # add/remove accountants cannot take fixed-size sampling (replace-one adjacency), even nested
    (ComposedEvent([SGM, FixedSizeSampledEvent(10, 100, GaussianEvent(1.0))]), 1, AccountingError),
]


def test_bad_compose_raises_and_changes_nothing(accountant: Accountant) -> None:
    accountant.compose(SGM, 2)
    before = _snapshot(accountant)
    for event, count, error in BAD_COMPOSE:
        with pytest.raises(error):
            accountant.compose(event, count)
        assert _snapshot(accountant) == before


@pytest.mark.parametrize("name", [n for n in AVAILABLE if n != "rdp"])
def test_backends_refuse_what_they_cannot_account_for(name: str) -> None:
    acc = make_accountant(name)
    acc.compose(SGM)
    before = _snapshot(acc)
    ddg = DistributedDiscreteGaussianEvent(10.0, 30.0, 100, 5)  # "pld" accounts for it (dp.pld), the others not
    for unsupported in (LaplaceEvent(1.0), SkellamEvent(10.0, 20.0, 450.0),
                        *(() if name == "pld" else (ddg,)),
                        ComposedEvent([ddg, LaplaceEvent(1.0)]),  # first part valid (for pld), second not
                        ComposedEvent([GaussianEvent(1.0), LaplaceEvent(1.0)]),  # first part valid, second not
                        PoissonSampledEvent(0.1, PoissonSampledEvent(0.5, GaussianEvent(1.0)))):
        with pytest.raises(AccountingError, match="rdp"):
            acc.compose(unsupported)
        assert _snapshot(acc) == before


def test_no_noise_means_infinite_epsilon(accountant: Accountant) -> None:
    accountant.compose(PoissonSampledEvent(0.1, GaussianEvent(0.0)))
    assert accountant.get_epsilon(1e-5) == math.inf
    assert accountant.get_delta(10.0) == 1.0


def test_peers_record_bad_input_we_do_not() -> None:
    """opacus appends an invalid step to its history, and dp_accounting keeps half of a failed
    composition; our accountants validate first (the events cannot even be built)."""
    opacus = pytest.importorskip("opacus.accountants")
    peer = opacus.RDPAccountant()
    peer.step(noise_multiplier=-1.0, sample_rate=2.0)  # accepted silently
    assert peer.history == [(-1.0, 2.0, 1)]
    with pytest.raises(DPValueError):
        PoissonSampledEvent(2.0, GaussianEvent(-1.0))
    da = pytest.importorskip("dp_accounting")
    from dp_accounting.rdp import rdp_privacy_accountant as rdp_mod

    peer2 = rdp_mod.RdpAccountant([2.0, 3.0])
    bad = da.ComposedDpEvent([da.GaussianDpEvent(1.0), da.PoissonSampledDpEvent(2.0, da.GaussianDpEvent(1.0))])
    with pytest.raises(ValueError):
        peer2.compose(bad)
    assert np.all(peer2.rdp > 0)  # the Gaussian half stayed recorded
    ours = RdpAccountant([2.0, 3.0])
    with pytest.raises(AccountingError):
        ours.compose(ComposedEvent([GaussianEvent(1.0), FixedSizeSampledEvent(1, 2, GaussianEvent(1.0))]))
    assert np.all(ours.rdp == 0) and ours.events == ()


# ----------------------------------------------------------------------------- cross-checks


def test_rdp_matches_opacus_rdp_on_grid() -> None:
    if "opacus-rdp" not in AVAILABLE:
        pytest.skip("opacus not installed")
    worst = 0.0
    for z in (0.5, 1.0, 2.0, 5.0):
        for q in (0.001, 0.01, 0.1, 1.0):
            ours = RdpAccountant(OPACUS_ORDERS)
            ours.compose(PoissonSampledEvent(q, GaussianEvent(z)))
            theirs = make_accountant("opacus-rdp")
            theirs.compose(PoissonSampledEvent(q, GaussianEvent(z)))
            default = RdpAccountant()
            default.compose(PoissonSampledEvent(q, GaussianEvent(z)))
            for t in (1, 100, 1000):
                if t > 1:
                    for acc in (ours, theirs, default):
                        acc.compose(PoissonSampledEvent(q, GaussianEvent(z)), t - len(acc.events))
                a, b = ours.get_epsilon(1e-5), theirs.get_epsilon(1e-5)
                worst = max(worst, abs(a - b) / b)
                # our default orders extend opacus's, so they never do worse
                assert default.get_epsilon(1e-5) <= a * (1 + 1e-12)
    assert worst <= 1e-6, worst


def test_rdp_matches_dp_accounting_rdp_epsilon() -> None:
    da = pytest.importorskip("dp_accounting")
    from dp_accounting.rdp import rdp_privacy_accountant as rdp_mod

    orders = list(rdp_mod.DEFAULT_RDP_ORDERS)
    for z, q, t in ((1.0, 0.01, 1000), (2.0, 0.001, 100), (0.8, 0.05, 500), (1.1, 1.0, 10)):
        theirs = rdp_mod.RdpAccountant(orders)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs.compose(da.PoissonSampledDpEvent(q, da.GaussianDpEvent(z)), t)
        ours = RdpAccountant(orders)
        ours.compose(PoissonSampledEvent(q, GaussianEvent(z)), t)
        # convert our curve on the orders dp_accounting evaluated accurately (integer ones)
        ints = [float(a).is_integer() for a in orders]
        mine = rdp_to_epsilon(np.array(orders)[ints], ours.rdp[ints], 1e-5)[0]
        theirs_int = rdp_mod.compute_epsilon(np.array(orders)[ints], theirs.rdp[ints], 1e-5)[0]
        assert mine == pytest.approx(theirs_int, rel=1e-6)
        # on all orders ours is never larger (their fractional orders overestimate)
        assert ours.get_epsilon(1e-5) <= theirs.get_epsilon(1e-5) * (1 + 1e-9)


def test_pld_is_tighter_than_rdp_and_close_to_prv() -> None:
    if "pld" not in AVAILABLE:
        pytest.skip("dp_accounting not installed")
    for z, q, t in ((1.0, 0.01, 100), (0.8, 0.001, 1000), (1.0, 1.0, 10)):
        ev = PoissonSampledEvent(q, GaussianEvent(z))
        pld, rdp = make_accountant("pld"), make_accountant("rdp")
        pld.compose(ev, t)
        rdp.compose(ev, t)
        e_pld, e_rdp = pld.get_epsilon(1e-5), rdp.get_epsilon(1e-5)
        assert e_pld <= e_rdp
        if "prv" in AVAILABLE:
            prv = make_accountant("prv")
            prv.compose(ev, t)
            # PRV reports estimate + eps_error (0.01); PLD is a pessimistic discretisation
            assert abs(prv.get_epsilon(1e-5) - e_pld) <= 0.011 + 0.01 * e_pld


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if phi(-mid / mu + mu / 2) - math.exp(mid) * phi(-mid / mu - mu / 2) > delta:
            lo = mid
        else:
            hi = mid
    return hi


@pytest.mark.parametrize(("z", "t"), [(1.0, 10), (2.0, 100), (0.5, 1)])
def test_pld_matches_exact_gaussian_profile(z: float, t: int) -> None:
    """Balle & Wang 2018, Thm 8: the T-fold Gaussian has an exact (epsilon, delta) profile."""
    if "pld" not in AVAILABLE:
        pytest.skip("dp_accounting not installed")
    exact = _exact_gaussian_epsilon(math.sqrt(t) / z, 1e-5)
    pld = make_accountant("pld")
    pld.compose(GaussianEvent(z), t)
    e = pld.get_epsilon(1e-5)
    assert e >= exact * (1 - 1e-9)  # pessimistic (up to the reference's own rounding)
    assert e == pytest.approx(exact, rel=1e-6)
    rdp = make_accountant("rdp")
    rdp.compose(GaussianEvent(z), t)
    assert rdp.get_epsilon(1e-5) >= exact


def test_prv_crash_becomes_accounting_error() -> None:
    if "prv" not in AVAILABLE:
        pytest.skip("opacus not installed")
    acc = PrvAccountant()
    acc.compose(PoissonSampledEvent(0.5, GaussianEvent(0.5)), 1000)  # huge epsilon: opacus#604 territory
    before = acc.events
    with pytest.raises(AccountingError, match="rdp"):
        acc.get_epsilon(1e-5)
    assert acc.events == before
    rdp = make_accountant("rdp")
    rdp.compose(PoissonSampledEvent(0.5, GaussianEvent(0.5)), 1000)
    assert math.isfinite(rdp.get_epsilon(1e-5))


def test_prv_known_crash_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """opacus#601: 'Discrete mean differs significantly from continuous mean.'"""
    if "prv" not in AVAILABLE:
        pytest.skip("opacus not installed")
    import opacus.accountants.prv as prv_mod

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Discrete mean differs significantly from continuous mean.")

    monkeypatch.setattr(prv_mod, "discretize", boom)
    acc = PrvAccountant()
    acc.compose(SGM, 10)
    with pytest.raises(AccountingError, match="601"):
        acc.get_epsilon(1e-5)


def test_missing_backend_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in ("opacus", "dp_accounting") else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    assert available_accountants() == ("rdp",)
    for name in ("opacus-rdp", "prv", "pld"):
        with pytest.raises(AccountingError, match="pip install"):
            make_accountant(name)


def test_rdp_accountant_options() -> None:
    acc = RdpAccountant([2.0, 4.0], adjacency="replace_one")
    acc.compose(FixedSizeSampledEvent(10, 1000, GaussianEvent(1.0)), 5)
    assert acc.adjacency == "replace_one" and acc.orders == (2.0, 4.0)
    eps, order = acc.get_epsilon_and_order(1e-5)
    assert order in (2.0, 4.0) and eps > 0
    with pytest.raises(AccountingError):
        acc.compose(SGM)
    with pytest.raises(DPValueError):
        RdpAccountant(adjacency="neighbours")  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        RdpAccountant([0.5])
    clone = copy.copy(acc.rdp)
    clone[:] = 0
    assert np.all(acc.rdp > 0)  # the property hands out a copy


# ----------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(("target", "q", "t"), [(3.0, 0.01, 1000), (1.0, 0.1, 50), (8.0, 1.0, 10)])
def test_calibration_is_safe_and_tight(target: float, q: float, t: int) -> None:
    tol = 1e-4
    z = calibrate_noise_multiplier(target, 1e-5, t, q, tol=tol)

    def eps(zz: float) -> float:
        acc = RdpAccountant()
        acc.compose(PoissonSampledEvent(q, GaussianEvent(zz)) if q < 1 else GaussianEvent(zz), t)
        return acc.get_epsilon(1e-5)

    assert eps(z) <= target  # rounded up: the safe side
    assert eps(z * (1 - 2 * tol)) > target  # and not much more noise than needed


@pytest.mark.filterwarnings("ignore:Optimal order")
def test_calibration_matches_opacus() -> None:
    utils = pytest.importorskip("opacus.accountants.utils")
    z = calibrate_noise_multiplier(3.0, 1e-5, 1000, 0.01, accountant="opacus-rdp", tol=1e-6)
    theirs = utils.get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.01, steps=1000,
                                        epsilon_tolerance=1e-5)
    assert z == pytest.approx(theirs, rel=1e-3)


def test_calibration_errors() -> None:
    with pytest.raises(DPValueError, match="unreachable"):
        calibrate_noise_multiplier(1e-12, 1e-12, 10**6, 1.0)
    for bad in ({"target_epsilon": 0.0}, {"target_epsilon": math.nan}, {"delta": 1.0}, {"rounds": 0},
                {"sampling_rate": 0.0}, {"sampling_rate": math.nan}):
        args: dict[str, Any] = {"target_epsilon": 1.0, "delta": 1e-5, "rounds": 10, "sampling_rate": 0.1, **bad}
        with pytest.raises(DPValueError):
            calibrate_noise_multiplier(**args)
    with pytest.raises(DPTypeError):
        calibrate_noise_multiplier(1.0, 1e-5, 10.0, 0.1)  # type: ignore[arg-type]
    for rounds in (10**400, 2**53 + 1):
        with pytest.raises(DPValueError):
            calibrate_noise_multiplier(1.0, 1e-5, rounds, 0.1)
    with pytest.raises(DPTypeError):
        calibrate_noise_multiplier(1.0, 1e-5, True, 0.1)  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        calibrate_noise_multiplier(1.0, 1e-5, 10, 0.1, accountant="nope")


def test_nested_self_composition_beyond_max_count_is_refused(accountant: Accountant) -> None:
    from dp.events import MAX_COUNT

    huge = SelfComposedEvent(SelfComposedEvent(SGM, MAX_COUNT), MAX_COUNT)
    before = _snapshot(accountant)
    try:
        accountant.compose(huge)
    except DPError:
        assert _snapshot(accountant) == before
    else:  # the RDP accountant scales its curve: a finite or infinite figure, never an exception
        assert accountant.get_epsilon(1e-5) >= 0


@pytest.mark.skipif("pld" not in AVAILABLE, reason="dp-accounting not installed")
def test_pld_composes_unsampled_gaussians_analytically() -> None:
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    from dp.accountants import PldAccountant

    acc = PldAccountant()
    assert acc.composition == "none"
    acc.compose(GaussianEvent(2.0), 30)
    acc.compose(GaussianEvent(4.0), 40)
    assert acc.composition == "analytic"
    z_eff = 1 / math.sqrt(30 / 4 + 40 / 16)
    ref = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-5)
    ref.compose(dp_event.GaussianDpEvent(z_eff))
    eps = acc.get_epsilon(1e-6)
    # exact closed form: never above dp_accounting's pessimistic figure, and within its grid error
    assert ref.get_epsilon(1e-6) - 1e-4 <= eps <= ref.get_epsilon(1e-6)
    assert acc.get_delta(eps) == pytest.approx(1e-6, rel=1e-6)
    acc.compose(SGM, 5)  # a sampled event: numeric path, with the merged Gaussian
    assert acc.composition == "numeric" and acc.get_epsilon(1e-6) > eps


@pytest.mark.skipif("pld" not in AVAILABLE, reason="dp-accounting not installed")
def test_pld_calibration_is_safe() -> None:
    z = calibrate_noise_multiplier(1.0, 1e-5, 10_000, 0.001, accountant="pld")
    acc = make_accountant("pld")
    acc.compose(PoissonSampledEvent(0.001, GaussianEvent(z)), 10_000)
    assert 0.999 <= acc.get_epsilon(1e-5) <= 1.0
    assert z < calibrate_noise_multiplier(1.0, 1e-5, 10_000, 0.001)  # tighter than RDP
