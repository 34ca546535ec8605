"""L2 clipping and the adaptive clipper (Andrew et al. 2021).

Statistical tests use fixed seeds and a false-alarm threshold of p < 1e-4 (|z| < 3.9).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dp.clipping import AdaptiveClipper, clip_l2, l2_norm
from dp.errors import DPTypeError, DPValueError
from dp.mechanisms import DiscreteGaussian

# ------------------------------------------------------------------------------------ clip_l2


def test_clip_l2_scales_down_and_reports_norm() -> None:
    x = np.array([[3.0, 0.0], [0.0, 4.0]])
    y, norm = clip_l2(x, 1.0)
    assert norm == 5.0
    assert y.shape == (2, 2) and y.dtype == np.float64
    np.testing.assert_allclose(y, x / 5.0, rtol=1e-15)
    assert l2_norm(y) <= 1.0
    assert x[0, 0] == 3.0  # input untouched


def test_clip_l2_leaves_small_updates_and_copies() -> None:
    x = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    y, norm = clip_l2(x, 1.0)
    assert norm == pytest.approx(math.sqrt(0.14), rel=1e-6)
    np.testing.assert_array_equal(y, x.astype(np.float64))
    y[0] = 100.0
    assert x[0] == np.float32(0.1)
    yi, ni = clip_l2(np.array([3, 4], dtype=np.int64), 10.0)
    assert ni == 5.0 and yi.dtype == np.float64


def test_clip_l2_extreme_magnitudes() -> None:
    big = np.array([3e200, 4e200])
    y, n = clip_l2(big, 1.0)
    assert n == pytest.approx(5e200, rel=1e-15)
    np.testing.assert_allclose(y, [0.6, 0.8], rtol=1e-15)
    tiny = np.array([3e-200, 4e-200])
    y, n = clip_l2(tiny, 1.0)
    assert n == pytest.approx(5e-200, rel=1e-15)
    np.testing.assert_array_equal(y, tiny)
    assert clip_l2(np.zeros(5), 1.0)[1] == 0.0


def test_clip_l2_errors() -> None:
    for bad in ([1.0, math.nan], [math.inf, 0.0], np.array([[-math.inf]])):
        with pytest.raises(DPValueError):
            clip_l2(bad, 1.0)
    with pytest.raises(DPValueError):
        clip_l2(np.array([]), 1.0)
    for wrong in (np.array([True, False]), np.array(["a"]), np.array([1 + 1j])):
        with pytest.raises(DPTypeError):
            clip_l2(wrong, 1.0)
    for c in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(DPValueError):
            clip_l2([1.0], c)
    with pytest.raises(DPTypeError):
        clip_l2([1.0], True)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    st.floats(1e-3, 1e3),
)
def test_clip_l2_properties(x: np.ndarray, c: float) -> None:
    y, norm = clip_l2(x, c)
    top = float(np.max(np.abs(x)))
    ref = top * float(np.linalg.norm(x / top)) if top > 0 else 0.0  # scaled: no underflow
    assert norm == pytest.approx(ref, rel=1e-12, abs=1e-300)
    assert l2_norm(y) <= c
    if norm <= c:
        np.testing.assert_array_equal(y, x)
    else:
        np.testing.assert_allclose(y, x * (c / norm), rtol=1e-12, atol=1e-300)


# ----------------------------------------------------------------------------- AdaptiveClipper


def test_update_is_geometric_and_immutable_without_noise() -> None:
    c0 = AdaptiveClipper(2.0, target_quantile=0.5, learning_rate=0.2)
    c1 = c0.update(80, 100)
    assert c1 is not c0 and c0.clip_norm == 2.0 and c0.rounds == 0
    assert c1.clip_norm == pytest.approx(2.0 * math.exp(-0.2 * (0.8 - 0.5)), rel=1e-15)
    assert c1.rounds == 1 and c1.last_fraction == 0.8
    assert c0.update(50, 100).clip_norm == 2.0  # at the target quantile nothing moves
    assert c0.update(0, 10).clip_norm > 2.0  # everything clipped: grow
    with pytest.raises(dataclasses.FrozenInstanceError):
        c0.clip_norm = 1.0  # type: ignore[misc]


def test_indicator_and_clip() -> None:
    c = AdaptiveClipper(1.0)
    assert c.indicator(1.0) == 1 and c.indicator(1.0000001) == 0
    y, n = c.clip(np.array([0.0, 2.0]))
    assert n == 2.0 and l2_norm(y) <= 1.0


def test_converges_to_target_quantile() -> None:
    """Norms ~ |N(0, 1)| scaled by 3: the 0.7-quantile is 3 * 1.0364. With sigma_b = n/20
    (the paper's choice) the clip norm ends within 15 % of it after 150 rounds."""
    rng = np.random.default_rng(0)
    n = 500
    target = 3.0 * 1.0364333894937898
    c = AdaptiveClipper(0.1, target_quantile=0.7, learning_rate=0.2, count_stddev=n / 20)
    for r in range(150):
        norms = np.abs(rng.standard_normal(n)) * 3.0
        count = sum(c.indicator(float(v)) for v in norms)
        c = c.update(count, n, rng=r)
    assert c.rounds == 150
    assert abs(c.clip_norm / target - 1) < 0.15


def test_update_noise_is_discrete_gaussian_with_stated_multiplier() -> None:
    c = AdaptiveClipper(1.0, count_stddev=3.0)
    assert c.noise_multiplier == 6.0
    n, count = 100, 37
    zs = np.array([round(c.update(count, n, rng=i).last_fraction * 2 * n - 2 * count) for i in range(3000)])  # type: ignore[operator]
    var = DiscreteGaussian(6.0).variance
    assert abs(zs.mean()) / math.sqrt(var / zs.size) < 3.9
    # var of the sample variance of a (near-)Gaussian: 2 var^2 / n
    assert abs(zs.var() - var) / math.sqrt(2 * var * var / zs.size) < 3.9


def test_update_reproducible_with_seed() -> None:
    c = AdaptiveClipper(1.0, count_stddev=2.0)
    assert c.update(5, 10, rng=7) == c.update(5, 10, rng=7)


def test_privacy_event_and_description() -> None:
    from dp.events import GaussianEvent

    c = AdaptiveClipper(1.0, count_stddev=12.5)
    ev = c.privacy_event()
    assert isinstance(ev, GaussianEvent) and ev.noise_multiplier == 25.0
    d = c.privacy_description()
    assert d["noise_multiplier"] == 25.0 and d["l2_sensitivity"] == 1.0
    with pytest.raises(DPValueError):
        AdaptiveClipper(1.0).privacy_event()


def test_adaptive_clipper_validation() -> None:
    for kwargs in ({"clip_norm": 0.0}, {"clip_norm": math.nan}, {"clip_norm": 1.0, "target_quantile": 1.0},
                   {"clip_norm": 1.0, "target_quantile": 0.0}, {"clip_norm": 1.0, "learning_rate": -0.1},
                   {"clip_norm": 1.0, "count_stddev": -1.0}, {"clip_norm": 1.0, "count_stddev": math.inf},
                   {"clip_norm": 1.0, "rounds": -1}):
        with pytest.raises(DPValueError):
            AdaptiveClipper(**kwargs)  # type: ignore[arg-type]
    bad_types: list[dict[str, object]] = [{"clip_norm": "1"}, {"clip_norm": True}, {"clip_norm": 1.0, "rounds": 1.0}]
    for kw in bad_types:
        with pytest.raises(DPTypeError):
            AdaptiveClipper(**kw)  # type: ignore[arg-type]
    c = AdaptiveClipper(1.0, count_stddev=1.0)
    with pytest.raises(DPValueError):
        c.update(11, 10)
    with pytest.raises(DPValueError):
        c.update(-1, 10)
    with pytest.raises(DPValueError):
        c.update(0, 0)
    with pytest.raises(DPTypeError):
        c.update(True, 10)
    with pytest.raises(DPTypeError):
        c.update(3, 10.0)  # type: ignore[arg-type]
    with pytest.raises(DPValueError):  # exp(-eta (b - gamma)) overflows the allowed range
        AdaptiveClipper(1.0, learning_rate=1e6).update(0, 1)
    assert c.rounds == 0 and c.clip_norm == 1.0
