"""Distributed DP pipeline (dp.distributed): planner, client encode, server decode, noise report.

Statistical tests use fixed seeds; each states its false-alarm rate (the probability that a
correct implementation fails it), all at most 1e-4.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp.distributed import (
    AUTO_BITS_RANGE,
    DEFAULT_ROUNDING_BETA,
    DistributedPlan,
    NoiseReport,
    conditional_round,
    modular_clip_probability,
    plan_distributed,
    rounded_norm_bound,
    wrap,
)
from dp.errors import DPError, DPTypeError, DPValueError
from dp.rotation import HadamardRotation
from secagg.encoding import centered_lift
from secagg.ring import ring_dtype


def small_plan(**kw: object) -> DistributedPlan:
    args: dict[str, object] = {
        "clients_expected": 8,
        "min_clients": 6,
        "colluders": 1,
        "dim": 200,
        "clip_norm": 1.0,
        "noise_multiplier": 1.0,
    }
    args.update(kw)
    return plan_distributed(**args)  # type: ignore[arg-type]


def modular_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros(vectors[0].shape, dtype=np.uint64)
    for v in vectors:
        total += v.astype(np.uint64)
    return total & np.uint64((1 << bits) - 1)


# ----------------------------------------------------------------- conditional rounding


def test_rounded_norm_bound_formula() -> None:
    # Kairouz, Liu, Steinke 2021: min(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2), (c + sqrt(d))^2)
    c, d, beta = 100.0, 1024, math.exp(-0.5)
    assert math.isclose(rounded_norm_bound(c, d, beta) ** 2, c * c + d / 4 + 1.0 * (c + 16.0), rel_tol=1e-12)
    assert rounded_norm_bound(c, d, 0.0) == c + 32.0  # deterministic bound
    assert rounded_norm_bound(0.0, 1, 1e-9) == 1.0  # the deterministic branch is smaller here
    assert rounded_norm_bound(c, d, 1e-9) > rounded_norm_bound(c, d, 0.5)


@settings(max_examples=50, deadline=None)
@given(
    dim=st.integers(min_value=1, max_value=400),
    norm=st.floats(min_value=0.0, max_value=1e4),
    beta=st.sampled_from([0.0, 1e-6, DEFAULT_ROUNDING_BETA, 0.99]),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_conditional_rounding_respects_bound(dim: int, norm: float, beta: float, seed: int) -> None:
    g = np.random.default_rng(seed)
    y = g.normal(size=dim)
    y *= norm / max(float(np.linalg.norm(y)), 1e-300)
    bound = rounded_norm_bound(float(np.linalg.norm(y)), dim, beta)
    r = conditional_round(y, bound, rng=seed, max_attempts=10_000)
    assert r.dtype == np.int64 and r.shape == y.shape
    assert float(np.linalg.norm(r.astype(np.float64))) <= bound
    assert np.all((r == np.floor(y)) | (r == np.ceil(y)))


def test_conditional_rounding_unbiased_when_bound_is_loose() -> None:
    # 4000 repetitions of rounding 0.3: mean ~ 0.3 +- sqrt(0.21/4000) = 0.0072;
    # |z| > 4.5 has false-alarm probability 7e-6.
    y = np.full(4000, 0.3)
    r = conditional_round(y, 1e9, rng=11)
    assert abs(float(r.mean()) - 0.3) < 4.5 * math.sqrt(0.21 / 4000)


def test_conditional_rounding_retry_cap_raises() -> None:
    y = np.full(100, 0.5)  # every rounding has norm^2 = #ups, ~50; bound 1 is (almost) never met
    with pytest.raises(DPError, match="attempts"):
        conditional_round(y, 1.0, rng=1, max_attempts=3)
    with pytest.raises(DPValueError):
        conditional_round(np.array([np.inf]), 1.0)
    with pytest.raises(DPValueError):
        conditional_round(y, 1.0, max_attempts=0)


# ------------------------------------------------------------------------------- wrapping


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(min_value=2, max_value=64), data=st.data())
def test_wrap_unwrap_round_trip(bits: int, data: st.DataObject) -> None:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    vals = data.draw(st.lists(st.integers(min_value=lo, max_value=hi), min_size=1, max_size=40))
    v = np.array([*vals, lo, hi, 0], dtype=np.int64)
    w = wrap(v, bits)
    assert w.dtype == ring_dtype(bits)
    assert int(w.max()) <= 2**bits - 1
    np.testing.assert_array_equal(centered_lift(w, bits), v)


# ------------------------------------------------------------------------- the planner


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_planner_meets_guarantee_and_clipping_target(mechanism: str) -> None:
    p = plan_distributed(
        clients_expected=50,
        min_clients=30,
        colluders=5,
        dim=3000,
        clip_norm=2.0,
        noise_multiplier=0.8,
        mechanism=mechanism,  # type: ignore[arg-type]
    )
    shares = 30 - 1 - 5
    assert math.isclose(math.sqrt(shares) * p.sigma_client, 0.8 * p.l2_sensitivity, rel_tol=1e-12)
    if mechanism == "skellam":
        assert p.mu_client is not None and math.isclose(2 * p.mu_client, p.sigma_client**2, rel_tol=1e-12)
    else:
        assert p.mu_client is None
    assert p.l2_sensitivity == rounded_norm_bound(2.0 * p.scale, p.padded_dim, p.rounding_beta)
    assert p.layout.padding <= 0.25 * 3000
    assert AUTO_BITS_RANGE[0] <= p.bits <= AUTO_BITS_RANGE[1]
    assert p.rounding_inflation <= 0.01
    assert p.upload_bytes == math.ceil(p.padded_dim * p.bits / 8)

    def bound(scale: float) -> float:
        l2 = rounded_norm_bound(2.0 * scale, p.padded_dim, p.rounding_beta)
        sig = 0.8 * l2 / math.sqrt(shares)
        return modular_clip_probability(
            bits=p.bits,
            clients=50,
            scaled_clip=2.0 * scale,
            block_size=p.block_size,
            padded_dim=p.padded_dim,
            mechanism=mechanism,  # type: ignore[arg-type]
            noise=sig * sig / 2 if mechanism == "skellam" else sig,
            rounding_beta=p.rounding_beta,
        )

    # the stated probability is the bound at the chosen scale, within the target ...
    assert math.isclose(bound(p.scale), p.modular_clip_prob, rel_tol=1e-9)
    assert p.modular_clip_prob <= 1e-6
    # ... and the scale is the largest that meets it
    assert bound(p.scale * (1 + 1e-6)) > 1e-6
    # bits=None picked the smallest width: one bit fewer fails the clipping target or the overhead
    try:
        fewer = plan_distributed(
            clients_expected=50,
            min_clients=30,
            colluders=5,
            dim=3000,
            clip_norm=2.0,
            noise_multiplier=0.8,
            mechanism=mechanism,  # type: ignore[arg-type]
            bits=p.bits - 1,
            block_size=p.block_size,
        )
    except DPValueError:
        pass
    else:
        assert fewer.rounding_inflation > 0.01


def test_more_bits_more_scale_less_inflation() -> None:
    plans = [small_plan(bits=b) for b in (12, 16, 20)]
    scales = [p.scale for p in plans]
    assert scales == sorted(scales)
    infl = [p.rounding_inflation for p in plans]
    assert infl == sorted(infl, reverse=True)
    for p in plans:
        assert p.modular_clip_prob <= 1e-6


def test_modular_clip_probability_properties() -> None:
    kw: dict[str, object] = {
        "clients": 10,
        "scaled_clip": 50.0,
        "block_size": 256,
        "padded_dim": 1024,
        "mechanism": "discrete_gaussian",
        "noise": 20.0,
        "rounding_beta": DEFAULT_ROUNDING_BETA,
    }
    probs = [modular_clip_probability(bits=b, **kw) for b in range(4, 16)]  # type: ignore[arg-type]
    assert all(0.0 <= q <= 1.0 for q in probs)
    assert probs == sorted(probs, reverse=True) and probs[0] == 1.0 and probs[-1] < 1e-12
    more = modular_clip_probability(bits=10, **{**kw, "clients": 20})  # type: ignore[arg-type]
    assert more >= modular_clip_probability(bits=10, **kw)  # type: ignore[arg-type]
    smaller_blocks = modular_clip_probability(bits=10, **{**kw, "block_size": 16})  # type: ignore[arg-type]
    assert smaller_blocks >= modular_clip_probability(bits=10, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_modular_clip_bound_holds_empirically(mechanism: str) -> None:
    # Worst case for the signal: every client sends the same basis vector at full norm, so
    # each rotated coordinate is exactly +-clip*scale/sqrt(block). Pick a threshold where
    # the one-coordinate bound p1 is sizeable and check the empirical exceedance rate.
    n, dim, bits = 6, 64, 12
    p = plan_distributed(
        clients_expected=n,
        min_clients=n,
        colluders=0,
        dim=dim,
        clip_norm=1.0,
        noise_multiplier=0.5,
        mechanism=mechanism,  # type: ignore[arg-type]
        bits=bits,
        modular_clip_prob=0.5,
    )
    x = np.zeros(dim)
    x[5] = 3.0  # clipped to norm 1
    noise = p.mu_client if mechanism == "skellam" else p.sigma_client
    assert noise is not None
    threshold_bits = bits - 1  # a narrower ring, so that exceedances happen
    p1 = modular_clip_probability(
        bits=threshold_bits,
        clients=n,
        scaled_clip=p.scale,
        block_size=p.block_size,
        padded_dim=1,
        mechanism=mechanism,  # type: ignore[arg-type]
        noise=noise,
        rounding_beta=p.rounding_beta,
    )
    assert 0.0 < p1 < 1.0
    rounds, hits, total = 150, 0, 0
    g = np.random.default_rng(3)
    for r in range(rounds):
        rot = HadamardRotation(p.layout, b"r%d" % r)
        s = np.zeros(p.padded_dim, dtype=np.int64)
        for _ in range(n):
            y = rot.rotate(x / 3.0) * p.scale
            s += conditional_round(y, p.l2_sensitivity, rng=g)
            s += p.noise.sample(p.padded_dim, rng=g)
        half = 2 ** (threshold_bits - 1)
        hits += int(np.sum((s >= half) | (s < -half)))
        total += s.size
    # hits ~ Binomial(total, q) with q <= p1; fails only if the bound is wrong, or with
    # probability < 1e-6 (Chernoff, 5 sigma plus 10 counts of slack) otherwise.
    assert hits <= total * p1 + 5 * math.sqrt(total * p1) + 10


def test_planner_typed_errors() -> None:
    base: dict[str, object] = {
        "clients_expected": 10,
        "min_clients": 8,
        "colluders": 1,
        "dim": 100,
        "clip_norm": 1.0,
        "noise_multiplier": 1.0,
    }

    def bad(exc: type[Exception], match: str | None = None, **kw: object) -> None:
        with pytest.raises(exc, match=match):
            plan_distributed(**{**base, **kw})  # type: ignore[arg-type]

    bad(DPValueError, "dim", dim=0)
    bad(DPValueError, "min_clients", min_clients=11)
    bad(DPValueError, "colluders", colluders=7)
    bad(DPValueError, "clip_norm", clip_norm=0.0)
    bad(DPValueError, "clip_norm", clip_norm=float("inf"))
    bad(DPValueError, "noise_multiplier", noise_multiplier=float("nan"))
    bad(DPValueError, "mechanism", mechanism="laplace")
    bad(DPTypeError, "dim", dim=10.0)
    bad(DPTypeError, "bits", bits=True)
    bad(DPValueError, "bits", bits=65)
    bad(DPValueError, "modular_clip_prob", modular_clip_prob=0.0)
    bad(DPValueError, "rounding_beta", rounding_beta=1.0)
    # bit width too small for the planned sum: the message names the width that would do
    bad(DPValueError, r"bits=4 cannot hold the sum.*at least \d+ bits", bits=4)
    bad(DPValueError, "no bit width in 8..32", noise_multiplier=1e9)


def test_hand_made_inconsistent_plan_is_rejected() -> None:
    p = small_plan()
    with pytest.raises(DPValueError, match="noise_multiplier"):
        dataclasses.replace(p, sigma_client=p.sigma_client / 2)
    with pytest.raises(DPValueError, match="l2_sensitivity"):
        dataclasses.replace(p, l2_sensitivity=p.clip_norm * p.scale)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.bits = 3  # type: ignore[misc]


# ----------------------------------------------------------------- encode / decode


def test_encode_output_and_determinism() -> None:
    p = small_plan()
    x = np.linspace(-1, 1, 200).reshape(10, 20)  # any shape with dim elements
    before = x.copy()
    a = p.encode(x, b"seed-1", rng=5)
    assert a.shape == (p.padded_dim,) and a.dtype == ring_dtype(p.bits)
    assert int(a.max()) < 2**p.bits
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(a, p.encode(x, b"seed-1", rng=5))
    assert not np.array_equal(a, p.encode(x, b"seed-2", rng=5))


def test_single_client_round_trip_without_wrap_errors() -> None:
    # One client's vector decodes to its clipped update plus its own noise share.
    p = small_plan(bits=24)
    x = np.random.default_rng(0).normal(size=200)
    x *= 0.5 / np.linalg.norm(x)
    out = p.decode(p.encode(x, b"s", rng=1), b"s")
    err = out - x
    # error per coordinate: one share of noise plus rounding, std ~ sigma_client / scale
    assert float(np.sqrt(np.mean(err**2))) < 3 * (p.sigma_client + 1) / p.scale


def test_encode_decode_typed_errors() -> None:
    p = small_plan()
    x = np.zeros(200)
    x[7] = np.nan
    x[9] = np.inf
    with pytest.raises(DPValueError, match=r"1 NaN and 1 infinite.*index 7"):
        p.encode(x, b"s", rng=0)
    with pytest.raises(DPValueError, match="dim=200"):
        p.encode(np.zeros(201), b"s", rng=0)
    with pytest.raises(DPTypeError):
        p.encode(np.array(["x"] * 200), b"s", rng=0)
    with pytest.raises(DPTypeError):
        p.encode(np.zeros(200), "seed", rng=0)  # type: ignore[arg-type]
    good = p.encode(np.zeros(200), b"s", rng=0)
    with pytest.raises(DPValueError, match="shape"):
        p.decode(good[:-1], b"s")
    with pytest.raises(DPTypeError):
        p.decode(good.astype(np.float64), b"s")
    with pytest.raises(DPValueError, match="modulo"):
        p.decode(good.astype(np.uint64) + np.uint64(2**p.bits), b"s")


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_end_to_end_unbiased_with_planned_variance(mechanism: str) -> None:
    # n clients encode, the modular sum is decoded; over R rounds (fresh round seeds) the
    # error decoded - sum(clipped updates) must have mean 0 per coordinate and variance
    # n * Var(share) / scale^2 (+ rounding, at most n/4 / scale^2).
    n, dim, rounds = 8, 200, 40
    p = small_plan(mechanism=mechanism)
    g = np.random.default_rng(2024)
    xs = g.normal(size=(n, dim)) * g.uniform(0.1, 0.3, size=(n, 1))  # norms ~1.4-4: most get clipped
    norms = np.linalg.norm(xs, axis=1, keepdims=True)
    truth = (xs * np.minimum(1.0, p.clip_norm / norms)).sum(axis=0)
    errs = np.empty((rounds, dim))
    for r in range(rounds):
        seed = b"round-%d" % r
        total = modular_sum([p.encode(x, seed, rng=g) for x in xs], p.bits)
        errs[r] = p.decode(total, seed) - truth
    v_lo = n * p.noise.variance / p.scale**2
    v_hi = (n * p.noise.variance + n / 4) / p.scale**2
    assert v_hi / v_lo < 1.001  # rounding is negligible at this scale
    alpha = 1e-4  # two-sided false-alarm rate of each chi-square check below
    # (1) unbiased per coordinate: sum_j R * mean_j^2 / V ~ chi2(dim)
    q = float(rounds * np.sum(errs.mean(axis=0) ** 2))
    assert stats.chi2.ppf(alpha / 2, dim) <= q / v_hi and q / v_lo <= stats.chi2.ppf(1 - alpha / 2, dim)
    # (2) planned variance: sum of all squared errors / V ~ chi2(R * dim)
    ss = float(np.sum(errs**2))
    k = rounds * dim
    assert stats.chi2.ppf(alpha / 2, k) <= ss / v_hi and ss / v_lo <= stats.chi2.ppf(1 - alpha / 2, k)


# --------------------------------------------------------------------- noise report


def test_noise_report_arithmetic() -> None:
    p = small_plan()  # expected 8, floor 6, 1 colluder
    floor = p.noise_report(6)
    assert isinstance(floor, NoiseReport)
    assert floor.shares_present == 6 and floor.shares_guaranteed == 4
    assert math.isclose(floor.noise_multiplier_server, 1.0, rel_tol=1e-12)
    full = p.noise_report(8)
    assert full.shares_present == 8 and full.shares_guaranteed == 6
    assert math.isclose(full.sigma_present, math.sqrt(8) * p.sigma_client, rel_tol=1e-12)
    assert math.isclose(full.sigma_guaranteed, math.sqrt(6) * p.sigma_client, rel_tol=1e-12)
    assert math.isclose(full.sigma_present_model * p.scale, full.sigma_present, rel_tol=1e-12)
    assert math.isclose(full.sigma_guaranteed_model * p.scale, full.sigma_guaranteed, rel_tol=1e-12)
    assert math.isclose(full.noise_multiplier_release, full.sigma_present / p.l2_sensitivity, rel_tol=1e-12)
    assert full.noise_multiplier_release > full.noise_multiplier_server > floor.noise_multiplier_server
    assert full.l2_sensitivity == p.l2_sensitivity and full.dim == p.padded_dim
    assert full.l1_sensitivity == min(math.sqrt(p.padded_dim) * p.l2_sensitivity, p.l2_sensitivity**2)
    assert full.mechanism == "discrete_gaussian" and full.colluders == 1
    d = full.to_dict()
    assert d["sigma_guaranteed"] == full.sigma_guaranteed and set(d) == set(NoiseReport.__dataclass_fields__)
    with pytest.raises(DPValueError, match="cohort floor"):
        p.noise_report(5)
    with pytest.raises(DPValueError):
        p.noise_report(9)
    with pytest.raises(DPTypeError):
        p.noise_report(6.0)  # type: ignore[arg-type]
    assert p.to_dict()["padded_dim"] == p.padded_dim


# ----------------------------------------------------------------- plan serialisation


@settings(max_examples=20, deadline=None)
@given(
    mechanism=st.sampled_from(["discrete_gaussian", "skellam"]),
    dim=st.integers(1, 3000),
    clients=st.integers(3, 40),
    z=st.floats(0.3, 4.0),
    bits=st.none() | st.integers(16, 40),
)
def test_plan_dict_round_trip_is_exact(mechanism: str, dim: int, clients: int, z: float, bits: int | None) -> None:
    try:
        p = small_plan(mechanism=mechanism, dim=dim, clients_expected=clients, min_clients=3, noise_multiplier=z,
                       bits=bits)
    except DPValueError:  # no width holds this sum: nothing to serialise
        return
    again = DistributedPlan.from_dict(json.loads(json.dumps(p.to_dict(), allow_nan=False)))
    assert again == p and again.to_dict() == p.to_dict()
    assert again.layout == p.layout and again.noise == p.noise


def test_plan_from_dict_refuses_bad_documents() -> None:
    p = small_plan(mechanism="skellam")
    good = p.to_dict()
    assert DistributedPlan.from_dict(good) == p
    with pytest.raises(DPTypeError):
        DistributedPlan.from_dict([("dim", 200)])  # type: ignore[arg-type]
    edits: list[dict[str, object]] = [
        {"noise_multiplier": None},  # wrong type
        {"bits": "16"},
        {"max_rounding_attempts": True},
        {"mechanism": "laplace"},
        {"block_size": 3},  # not a power of two
        {"sigma_client": p.sigma_client / 2},  # too little noise for the noise multiplier
        {"mu_client": p.sigma_client},  # mu != sigma^2 / 2
        {"padded_dim": p.padded_dim + 1},  # derived figures must follow from the rest
        {"padded_dim": float(p.padded_dim)},
        {"rounding_inflation": p.rounding_inflation * 2},
        {"extra": 1},  # unknown key
    ]
    for edit in edits:
        with pytest.raises(DPValueError):
            DistributedPlan.from_dict({**good, **edit})
    for key in ("scale", "block_size", "padded_dim"):
        with pytest.raises(DPValueError, match="missing"):
            DistributedPlan.from_dict({k: v for k, v in good.items() if k != key})


@pytest.mark.parametrize("field", ["dim", "clients_expected", "min_clients", "colluders"])
@pytest.mark.parametrize(("value", "err"), [(10**400, DPValueError), (3.0, DPTypeError), (True, DPTypeError)])
def test_absurd_counts_are_typed_errors(field: str, value: object, err: type[DPError]) -> None:
    from dp.distributed import plan_distributed

    kwargs: dict[str, object] = {
        "clients_expected": 10, "min_clients": 5, "colluders": 0, "dim": 10, "clip_norm": 1.0, "noise_multiplier": 1.0,
    }
    kwargs[field] = value
    with pytest.raises(err):
        plan_distributed(**kwargs)  # type: ignore[arg-type]
