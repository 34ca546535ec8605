"""Fixed-point encoding, centred lift and the headroom (overflow) check."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.encoding import FixedPointEncoder, Headroom, centered_lift, check_headroom
from secagg.errors import HeadroomError, SecAggTypeError, SecAggValueError
from secagg.ring import ring_dtype

EPS = np.finfo(np.float64).eps


def _ring_sum(rows: list[np.ndarray], bits: int) -> np.ndarray:
    """Sum of ring vectors modulo 2**bits, exactly as secure aggregation returns it."""
    total = np.zeros_like(rows[0], dtype=np.uint64)
    for r in rows:
        total += r.astype(np.uint64)  # wraps mod 2**64, a multiple of 2**bits
    if bits < 64:
        total &= np.uint64(2**bits - 1)
    return total.astype(ring_dtype(bits))


# ---------------------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(
    st.integers(min_value=2, max_value=64),
    st.floats(min_value=1e-3, max_value=1e3),
    st.lists(st.floats(min_value=-2e3, max_value=2e3, allow_nan=False), min_size=1, max_size=50),
    st.integers(min_value=0, max_value=2**32),
)
def test_encode_decode_round_trip_within_one_step(bits: int, clip: float, xs: list[float], seed: int) -> None:
    enc = FixedPointEncoder.fit(1, bits, clip)
    x = np.array(xs)
    v = enc.encode(x, rng=seed)
    assert v.dtype == ring_dtype(bits) and v.shape == x.shape
    back = enc.decode(v)
    target = np.clip(x, -clip, clip)
    assert np.all(np.abs(back - target) <= 1.0 / enc.scale + 4 * EPS * np.abs(target))


def test_values_round_to_floor_or_ceil_and_keep_shape() -> None:
    enc = FixedPointEncoder(bits=16, scale=4.0, clip=100.0)
    x = np.array([[0.1, -0.1, 2.5], [-7.3, 0.0, 100.0]])
    k = centered_lift(enc.encode(x, rng=3), 16)
    assert k.shape == x.shape
    assert np.all((k == np.floor(x * 4)) | (k == np.ceil(x * 4)))
    assert k[1, 2] == 400 and k[1, 1] == 0


def test_clipping_is_coordinatewise() -> None:
    enc = FixedPointEncoder(bits=32, scale=2.0**10, clip=0.5)
    back = enc.decode(enc.encode(np.array([3.0, -1e300, 0.25]), rng=0))
    assert np.array_equal(back, [0.5, -0.5, 0.25])


def test_stochastic_rounding_is_unbiased() -> None:
    """Mean of N = 200,000 roundings of x (scale 1) against x.

    Each rounding is Bernoulli(p) above floor(x), std sqrt(p(1-p)); we allow 5.5 standard
    errors.  For a correct rounder the two-sided false-alarm probability is 3.8e-8 per
    value, under 2e-7 for the five values (and the seed is fixed, so the test is
    deterministic).  Round-to-nearest would miss by 0.2 to 0.5, i.e. > 400 standard errors.
    """
    n = 200_000
    enc = FixedPointEncoder(bits=32, scale=1.0, clip=10.0)
    rng = np.random.default_rng(20240601)
    for x in (0.1, 0.3, 0.5, 0.77, -0.4):
        mean = float(enc.decode(enc.encode(np.full(n, x), rng=rng)).mean())
        p = x - math.floor(x)
        se = math.sqrt(p * (1 - p) / n)
        assert abs(mean - x) <= 5.5 * se, (x, mean)


def test_rng_is_injected_and_reproducible() -> None:
    enc = FixedPointEncoder(bits=24, scale=3.0, clip=10.0)
    x = np.linspace(-5, 5, 1000)
    assert np.array_equal(enc.encode(x, rng=b"a"), enc.encode(x, rng=b"a"))
    assert not np.array_equal(enc.encode(x, rng=b"a"), enc.encode(x, rng=b"b"))
    assert not np.array_equal(enc.encode(x), enc.encode(x))


@pytest.mark.parametrize(("bad", "word"), [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_nan_and_inf_are_rejected_by_name(bad: float, word: str) -> None:
    enc = FixedPointEncoder(bits=32, scale=10.0, clip=1.0)
    with pytest.raises(SecAggValueError, match=word):
        enc.encode(np.array([0.0, bad, 1.0]), rng=0)


@pytest.mark.parametrize("bad", [np.array([1 + 2j]), np.array(["a"]), "abc", [[1.0], [2.0, 3.0]]])
def test_non_real_input_is_a_type_error(bad: object) -> None:
    with pytest.raises(SecAggTypeError):
        FixedPointEncoder(bits=32, scale=10.0, clip=1.0).encode(bad)  # type: ignore[arg-type]


def test_scalar_and_integer_inputs() -> None:
    enc = FixedPointEncoder(bits=16, scale=2.0, clip=100.0)
    assert enc.decode(enc.encode(np.float64(1.5), rng=0)).shape == ()
    assert enc.decode(enc.encode(np.array([3, -4]), rng=0)).tolist() == [3.0, -4.0]
    assert enc.encode(np.zeros(0)).shape == (0,)


def test_weight_multiplies_the_rounded_value() -> None:
    enc = FixedPointEncoder(bits=32, scale=8.0, clip=1.0)
    x = np.linspace(-1, 1, 101)
    assert np.array_equal(
        centered_lift(enc.encode(x, rng=5, weight=3), 32), 3 * centered_lift(enc.encode(x, rng=5), 32)
    )
    with pytest.raises(HeadroomError):
        FixedPointEncoder(bits=8, scale=100.0, clip=1.0).encode(x, weight=2)
    with pytest.raises(SecAggValueError):
        enc.encode(x, weight=-1)


def test_weighted_mean_through_the_ring() -> None:
    enc = FixedPointEncoder(bits=32, scale=2.0**12, clip=1.0)
    xs = [np.full(4, 0.5), np.full(4, -0.25), np.full(4, 0.125)]
    ws = [1, 2, 5]
    enc.headroom(3, weights=ws)
    total = _ring_sum([enc.encode(x, rng=i, weight=w) for i, (x, w) in enumerate(zip(xs, ws, strict=True))], 32)
    mean = enc.decode(total, count=sum(ws))
    assert np.allclose(mean, (0.5 - 0.5 + 0.625) / 8)


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [
        ({"bits": 0, "scale": 1.0, "clip": 1.0}, SecAggValueError),
        ({"bits": "8", "scale": 1.0, "clip": 1.0}, SecAggTypeError),
        ({"bits": 8, "scale": 0.0, "clip": 1.0}, SecAggValueError),
        ({"bits": 8, "scale": 1.0, "clip": float("nan")}, SecAggValueError),
        ({"bits": 8, "scale": 1.0, "clip": -1.0}, SecAggValueError),
        ({"bits": 8, "scale": 1000.0, "clip": 1.0}, HeadroomError),
        ({"bits": 1, "scale": 1.0, "clip": 1.0}, HeadroomError),
    ],
)
def test_encoder_validates_parameters(kwargs: dict[str, object], err: type[Exception]) -> None:
    with pytest.raises(err):
        FixedPointEncoder(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [2, 8, 20, 32, 33, 53, 54, 63, 64])
def test_decode_is_the_centred_lift_divided_by_scale_and_count(bits: int) -> None:
    enc = FixedPointEncoder(bits=bits, scale=3.0, clip=1.0 / 3)
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 2**64 - 1, size=1000, dtype=np.uint64, endpoint=True)
    v[:3] = [0, 2**64 - 1, 2 ** (bits - 1)]
    expected = centered_lift(v, bits).astype(np.float64) / (3.0 * 7)
    assert np.array_equal(enc.decode(v, count=7), expected)
    reduced = (v & np.uint64(2**bits - 1)).astype(ring_dtype(bits))
    assert np.array_equal(enc.decode(reduced, count=7), expected)


def test_encoder_is_frozen_and_decode_validates_count() -> None:
    enc = FixedPointEncoder(bits=8, scale=1.0, clip=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        enc.scale = 2.0  # type: ignore[misc]
    with pytest.raises(SecAggValueError):
        enc.decode(np.zeros(3, dtype=np.uint32), count=0)
    with pytest.raises(SecAggTypeError):
        enc.decode(np.zeros(3), count=1)


def test_fit_picks_the_largest_power_of_two_scale() -> None:
    for n, bits, clip, weights in [(1000, 32, 1.0, None), (3, 20, 0.3, [5, 1, 9]), (10, 64, 7.0, None)]:
        enc = FixedPointEncoder.fit(n, bits, clip, weights=weights)
        assert math.log2(enc.scale).is_integer()
        enc.headroom(n, weights=weights)
        with pytest.raises(HeadroomError):
            FixedPointEncoder(bits, enc.scale * 2, clip).headroom(n, weights=weights)
    with pytest.raises(HeadroomError):
        FixedPointEncoder.fit(200, 8, 1.0)


# ---------------------------------------------------------------------------------------
# centred lift
# ---------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(
    st.integers(min_value=1, max_value=64).flatmap(
        lambda b: st.tuples(st.just(b), st.lists(st.integers(0, 2**b - 1), min_size=1))
    )
)
def test_centered_lift_range_and_residue(case: tuple[int, list[int]]) -> None:
    bits, vals = case
    out = centered_lift(np.array(vals, dtype=ring_dtype(bits)), bits)
    assert out.dtype == np.int64
    for v, c in zip(vals, out.tolist(), strict=True):
        assert -(2 ** (bits - 1)) <= c < 2 ** (bits - 1)
        assert (c - v) % 2**bits == 0


def test_centered_lift_edges() -> None:
    assert centered_lift(np.array([0, 1], dtype=np.uint32), 1).tolist() == [0, -1]
    assert centered_lift(np.array([2**63, 2**64 - 1, 5], dtype=np.uint64), 64).tolist() == [-(2**63), -1, 5]
    assert centered_lift(np.array([-3], dtype=np.int64), 20).tolist() == [-3]
    assert centered_lift(np.array([2**19, 2**19 - 1], dtype=np.uint32), 20).tolist() == [-(2**19), 2**19 - 1]
    with pytest.raises(SecAggTypeError):
        centered_lift(np.array([1.0]), 20)


# ---------------------------------------------------------------------------------------
# headroom
# ---------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(
    st.integers(min_value=2, max_value=64),
    st.integers(min_value=1, max_value=3000),
    st.one_of(st.just(2**70), st.integers(min_value=0, max_value=2**70)),
    st.integers(min_value=0, max_value=2**32),
)
def test_headroom_never_lets_a_sum_wrap(bits: int, n: int, pick: int, seed: int) -> None:
    """Values at the bound: whenever the check passes, the lifted ring sum is the true sum;
    one more unit of magnitude that the check rejects really would wrap."""
    capacity = 2 ** (bits - 1) - 1
    largest = capacity // n
    max_abs = largest if pick == 2**70 else pick % (largest + 1)
    h = check_headroom(n, bits, max_abs)
    assert h.worst_case == n * max_abs <= h.capacity == capacity
    mask = 2**bits - 1
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1, 1], size=n).tolist()
    for vals in ([max_abs] * n, [-max_abs] * n, [s * max_abs for s in signs]):
        rows = [np.array([v & mask], dtype=ring_dtype(bits)) for v in vals]
        assert centered_lift(_ring_sum(rows, bits), bits).tolist() == [sum(vals)]
    bigger = max_abs + 1
    if n * bigger > capacity:
        with pytest.raises(HeadroomError):
            check_headroom(n, bits, bigger)
        rows = [np.array([bigger & mask], dtype=ring_dtype(bits))] * n
        assert centered_lift(_ring_sum(rows, bits), bits).tolist() != [n * bigger]
    else:
        check_headroom(n, bits, bigger)


def test_flower_overflow_scenario_is_caught() -> None:
    """1,030 clients with values up to 2**21 overflow 32 bits (Flower reports success)."""
    check_headroom(1000, 32, 2**21)
    with pytest.raises(HeadroomError, match="bits >= 33"):
        check_headroom(1030, 32, 2**21)
    h = check_headroom(1030, 33, 2**21)
    assert h.bound == "deterministic" and h.failure_prob == 0.0 and h.min_bits == 33 and h.spare_bits == 0


def test_weights_scale_the_worst_case() -> None:
    h = check_headroom(3, 32, 100, weights=[1, 2, 7])
    assert h.worst_case == 1000 and isinstance(h, Headroom)
    assert check_headroom(2, 32, 100, weights=np.array([4, 4])).worst_case == 800
    with pytest.raises(HeadroomError):
        check_headroom(2, 8, 10, weights=[7, 7])
    for bad, err in [
        ([1, 2], SecAggValueError),
        ([1, -1, 1], SecAggValueError),
        ([1.5, 1, 1], SecAggTypeError),
        ([True, 1, 1], SecAggTypeError),
        (np.array([1.0, 1.0, 1.0]), SecAggTypeError),
        ("abc", SecAggTypeError),
    ]:
        with pytest.raises(err):
            check_headroom(3, 32, 100, weights=bad)  # type: ignore[arg-type]


def test_gaussian_tail_bound_formula_and_name() -> None:
    h = check_headroom(10, 32, 1000, noise_std=50.0, failure_prob=1e-6, d=1000)
    assert h.bound == "gaussian-tail" and h.failure_prob == 1e-6
    assert h.noise_bound == math.ceil(50.0 * math.sqrt(2 * math.log(2 * 1000 / 1e-6)))
    assert h.total == h.worst_case + h.noise_bound
    with pytest.raises(HeadroomError, match="gaussian-tail"):
        check_headroom(10, 16, 3000, noise_std=1000.0)


@pytest.mark.parametrize("noise", ["gaussian", "skellam"])
def test_noise_bounds_hold_empirically(noise: str) -> None:
    """At failure_prob = 1e-2 the empirical exceedance rate over 200,000 draws (fixed seed)
    must be at most 1e-2; the true rates are about 1e-3, so a correct bound passes with
    overwhelming probability while a bound too small by 30% would fail."""
    std = 2.0
    h = check_headroom(1, 32, 0, noise_std=std, failure_prob=1e-2, noise=noise)  # type: ignore[arg-type]
    assert h.bound == ("gaussian-tail" if noise == "gaussian" else "skellam-chernoff")
    rng = np.random.default_rng(7)
    if noise == "gaussian":
        z = rng.normal(0.0, std, size=200_000)
    else:
        z = (rng.poisson(std**2 / 2, size=200_000) - rng.poisson(std**2 / 2, size=200_000)).astype(float)
    assert np.mean(np.abs(z) > h.noise_bound) <= 1e-2
    assert np.mean(np.abs(z) > 0.7 * h.noise_bound) > 1e-3  # the bound is not vacuous


def test_skellam_bound_is_at_least_the_gaussian_one() -> None:
    for std in (0.5, 3.0, 40.0):
        g = check_headroom(1, 40, 0, noise_std=std).noise_bound
        s = check_headroom(1, 40, 0, noise_std=std, noise="skellam").noise_bound
        assert s >= g


@pytest.mark.parametrize(
    ("args", "kwargs", "err"),
    [
        ((0, 32, 1), {}, SecAggValueError),
        ((1.5, 32, 1), {}, SecAggTypeError),
        ((1, 65, 1), {}, SecAggValueError),
        ((1, 32, -1), {}, SecAggValueError),
        ((1, 32, float("inf")), {}, SecAggValueError),
        ((1, 32, 1), {"noise_std": -1.0}, SecAggValueError),
        ((1, 32, 1), {"failure_prob": 0.0}, SecAggValueError),
        ((1, 32, 1), {"failure_prob": 1.0}, SecAggValueError),
        ((1, 32, 1), {"noise": "laplace"}, SecAggValueError),
        ((1, 32, 1), {"d": 0}, SecAggValueError),
    ],
)
def test_check_headroom_validates(args: tuple[object, ...], kwargs: dict[str, object], err: type[Exception]) -> None:
    with pytest.raises(err):
        check_headroom(*args, **kwargs)  # type: ignore[arg-type]


def test_headroom_is_a_frozen_value() -> None:
    h = check_headroom(2, 32, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.total = 0  # type: ignore[misc]
