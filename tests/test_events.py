"""Privacy events: validation, immutability, exact to_dict / event_from_dict round trip."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.errors import DPError, DPTypeError, DPValueError
from dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    FixedSizeSampledEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    SkellamEvent,
    event_from_dict,
)

# ----------------------------------------------------------------------------- strategies

noise = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
rate = st.floats(min_value=1e-9, max_value=1.0, allow_nan=False).filter(lambda q: q > 0)

leaves = st.one_of(
    st.builds(GaussianEvent, noise),
    st.builds(LaplaceEvent, noise),
    st.builds(
        lambda l2, s, d, n, extra: DistributedDiscreteGaussianEvent(l2, s, d, n, None if extra is None else l2 + extra),
        positive, noise, st.integers(1, 10**7), st.integers(1, 10**4), st.none() | noise,
    ),
    st.builds(lambda l2, extra, mu, n: SkellamEvent(l2, l2 + extra, mu, n), positive, noise, noise,
              st.integers(1, 10**4)),
)


def _extend(children: st.SearchStrategy[PrivacyEvent]) -> st.SearchStrategy[PrivacyEvent]:
    return st.one_of(
        st.builds(PoissonSampledEvent, rate, children),
        st.builds(lambda n, m, e: FixedSizeSampledEvent(min(m, n), n, e), st.integers(1, 10**6), st.integers(1, 10**6),
                  children),
        st.builds(SelfComposedEvent, children, st.integers(1, 10**6)),
        st.builds(ComposedEvent, st.lists(children, max_size=4)),
    )


events = st.recursive(leaves, _extend, max_leaves=8)


# ----------------------------------------------------------------------------- round trip


@settings(max_examples=50, deadline=None)
@given(events)
def test_to_dict_round_trip_is_exact(event: PrivacyEvent) -> None:
    d = event.to_dict()
    assert event_from_dict(d) == event
    # through JSON too (how the ledger stores events): floats survive exactly
    again = event_from_dict(json.loads(json.dumps(d)))
    assert again == event
    assert again.to_dict() == d


@settings(max_examples=30, deadline=None)
@given(events)
def test_events_are_frozen_and_hashable(event: PrivacyEvent) -> None:
    hash(event)
    field = dataclasses.fields(event)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field, 1)


def test_numpy_scalars_are_normalised_to_python_types() -> None:
    e = DistributedDiscreteGaussianEvent(np.float32(2.0), np.float64(3.5), np.int64(10), np.int32(4))  # type: ignore[arg-type]
    d = e.to_dict()
    assert type(d["l2_sensitivity"]) is float and type(d["dim"]) is int and type(d["n_shares"]) is int
    json.dumps(d)
    assert event_from_dict(d) == e


# ----------------------------------------------------------------------------- validation

BAD_NUMBERS: list[tuple[Any, type[DPError]]] = [
    (math.nan, DPValueError),
    (math.inf, DPValueError),
    (-math.inf, DPValueError),
    (-1.0, DPValueError),
    (-1e-300, DPValueError),
    (True, DPTypeError),
    ("1.0", DPTypeError),
    (None, DPTypeError),
    (1 + 0j, DPTypeError),
]


@pytest.mark.parametrize(("value", "error"), BAD_NUMBERS)
def test_bad_noise_is_refused(value: Any, error: type[DPError]) -> None:
    with pytest.raises(error):
        GaussianEvent(value)
    with pytest.raises(error):
        LaplaceEvent(value)
    with pytest.raises(error):
        DistributedDiscreteGaussianEvent(1.0, value, 10, 3)
    with pytest.raises(error):
        SkellamEvent(1.0, 2.0, value)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.0000001, 2.0, math.nan, math.inf])
def test_sampling_rate_outside_0_1_is_refused(q: float) -> None:
    with pytest.raises(DPValueError):
        PoissonSampledEvent(q, GaussianEvent(1.0))


def test_sampling_rate_bool_is_refused() -> None:
    with pytest.raises(DPTypeError):
        PoissonSampledEvent(True, GaussianEvent(1.0))


@pytest.mark.parametrize(("count", "error"), [(0, DPValueError), (-3, DPValueError), (1.0, DPTypeError),
                                              (True, DPTypeError), ("2", DPTypeError), (10**400, DPValueError),
                                              (2**53 + 1, DPValueError), (1e400, DPTypeError),
                                              (float("nan"), DPTypeError)])
def test_bad_counts_are_refused(count: Any, error: type[DPError]) -> None:
    with pytest.raises(error):
        SelfComposedEvent(GaussianEvent(1.0), count)


def test_structural_validation() -> None:
    with pytest.raises(DPValueError):
        FixedSizeSampledEvent(11, 10, GaussianEvent(1.0))
    with pytest.raises(DPValueError):
        FixedSizeSampledEvent(0, 10, GaussianEvent(1.0))
    with pytest.raises(DPTypeError):
        PoissonSampledEvent(0.5, {"type": "gaussian", "noise_multiplier": 1.0})  # type: ignore[arg-type]
    with pytest.raises(DPTypeError):
        ComposedEvent([GaussianEvent(1.0), 3.0])  # type: ignore[list-item]
    with pytest.raises(DPTypeError):
        ComposedEvent(GaussianEvent(1.0))  # type: ignore[arg-type]
    with pytest.raises(DPValueError):  # L1 bound below the L2 bound is impossible
        SkellamEvent(2.0, 1.0, 5.0)
    with pytest.raises(DPValueError):
        DistributedDiscreteGaussianEvent(2.0, 1.0, 4, 2, l1_sensitivity=1.0)
    with pytest.raises(DPValueError):
        DistributedDiscreteGaussianEvent(0.0, 1.0, 4, 2)
    with pytest.raises(DPValueError):
        DistributedDiscreteGaussianEvent(1.0, 1.0, 0, 2)
    with pytest.raises(DPValueError):
        DistributedDiscreteGaussianEvent(1.0, 1.0, 4, 0)


def test_composed_event_accepts_any_iterable_and_stores_a_tuple() -> None:
    e = ComposedEvent(GaussianEvent(float(z)) for z in (1, 2))  # type: ignore[arg-type]
    assert isinstance(e.events, tuple) and len(e.events) == 2
    assert ComposedEvent([]) == ComposedEvent(())


def test_fixed_size_rate() -> None:
    assert FixedSizeSampledEvent(25, 100, GaussianEvent(1.0)).sampling_rate == 0.25


# ----------------------------------------------------------------------------- from_dict errors


@pytest.mark.parametrize(
    ("d", "error"),
    [
        ({"type": "nope"}, DPValueError),
        ({"noise_multiplier": 1.0}, DPValueError),
        ({"type": "gaussian"}, DPValueError),
        ({"type": "gaussian", "noise_multiplier": 1.0, "extra": 1}, DPValueError),
        ({"type": "gaussian", "noise_multiplier": "nan"}, DPTypeError),
        ({"type": "gaussian", "noise_multiplier": -2.0}, DPValueError),
        ({"type": "poisson_sampled", "sampling_rate": 0.1, "event": 3}, DPTypeError),
        ({"type": "poisson_sampled", "sampling_rate": 0.1, "event": {"type": "gaussian"}}, DPValueError),
        ({"type": "composed", "events": "abc"}, DPTypeError),
        ({"type": "self_composed", "event": {"type": "laplace", "noise_multiplier": 1.0}, "count": 0}, DPValueError),
        ([("type", "gaussian")], DPTypeError),
    ],
)
def test_event_from_dict_rejects_malformed_input(d: Any, error: type[DPError]) -> None:
    with pytest.raises(error):
        event_from_dict(d)


def test_optional_keys_default() -> None:
    assert event_from_dict({"type": "skellam", "l2_sensitivity": 1.0, "l1_sensitivity": 3.0, "mu_total": 9.0}) == \
        SkellamEvent(1.0, 3.0, 9.0, 1)
    ddg = {"type": "distributed_discrete_gaussian", "l2_sensitivity": 1.0, "sigma": 2.0, "dim": 5, "n_shares": 3}
    assert event_from_dict(ddg) == DistributedDiscreteGaussianEvent(1.0, 2.0, 5, 3)


def test_absurd_integers_anywhere_are_a_dp_value_error() -> None:
    from dp.events import MAX_COUNT

    assert SelfComposedEvent(GaussianEvent(1.0), MAX_COUNT).count == MAX_COUNT
    for make in (lambda: DistributedDiscreteGaussianEvent(1.0, 1.0, 10**400, 2),
                 lambda: DistributedDiscreteGaussianEvent(1.0, 1.0, 10, 10**400),
                 lambda: SkellamEvent(1.0, 1.0, 1.0, 10**400),
                 lambda: FixedSizeSampledEvent(1, 10**400, GaussianEvent(1.0)),
                 lambda: GaussianEvent(10**400)):
        with pytest.raises(DPValueError):
            make()
