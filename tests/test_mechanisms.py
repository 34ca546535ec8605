"""Mechanism objects: exact pmfs, variances, continuous noise (KS tests), secure grid mode, errors.

Statistical tests use fixed seeds and a per-test false-alarm threshold of p < 1e-4.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp.errors import DPError, DPTypeError, DPValueError
from dp.mechanisms import DiscreteGaussian, DiscreteLaplace, Gaussian, Laplace, Skellam

ALPHA = 1e-4


def brute_dg(sigma: float) -> tuple[float, float]:
    """(normaliser, variance) of N_Z(0, sigma^2) by direct summation over |k| <= 60 sigma + 10."""
    kmax = int(60 * sigma) + 10
    w = [(k, math.exp(-k * k / (2 * sigma * sigma))) for k in range(-kmax, kmax + 1)]
    z = math.fsum(x for _, x in w)
    return z, math.fsum(k * k * x for k, x in w) / z


# ------------------------------------------------------------------------ discrete Gaussian


@pytest.mark.parametrize("sigma", [2.0**-40, 0.05, 0.5, 0.999, 1.0, 1.3, 4.0, 37.5, 1000.0])
def test_discrete_gaussian_pmf_and_variance_exact(sigma: float) -> None:
    dg = DiscreteGaussian(sigma)
    z, var = brute_dg(sigma)
    assert dg.normalizer == pytest.approx(z, rel=1e-14)
    assert dg.variance == pytest.approx(var, rel=1e-13, abs=1e-300)
    assert dg.variance <= sigma * sigma
    k = np.arange(-int(40 * sigma) - 5, int(40 * sigma) + 6)
    p = dg.pmf(k)
    assert isinstance(p, np.ndarray) and p.shape == k.shape
    assert math.fsum(p) == pytest.approx(1.0, abs=1e-12)
    assert np.array_equal(p, dg.pmf(-k))  # symmetric
    assert dg.pmf(3) == pytest.approx(math.exp(-9 / (2 * sigma * sigma)) / z, rel=1e-13, abs=1e-300)


def test_discrete_gaussian_variance_close_to_sigma_squared_for_large_sigma() -> None:
    # Poisson summation: the gap is 4 pi^2 sigma^4 e^(-2 pi^2 sigma^2) relative, ~1e-7 at sigma = 1
    assert DiscreteGaussian(1.0).variance == pytest.approx(1.0 - 8 * math.pi**2 * math.exp(-2 * math.pi**2), rel=1e-6)
    assert DiscreteGaussian(5.0).variance == 25.0


def test_pmf_scalar_and_non_integers() -> None:
    dg = DiscreteGaussian(2.0)
    assert isinstance(dg.pmf(0), float)
    assert dg.pmf(0.5) == 0.0
    assert dg.pmf(2.0) == dg.pmf(2)
    assert np.array_equal(dg.pmf(np.array([[0, 1], [2, 3]])).shape, (2, 2))  # type: ignore[union-attr]
    with pytest.raises(DPValueError):
        dg.pmf(math.nan)
    with pytest.raises(DPTypeError):
        dg.pmf(True)
    with pytest.raises(DPTypeError):
        dg.pmf("1")


def test_discrete_gaussian_samples_match_pmf() -> None:
    dg = DiscreteGaussian(3.3)
    x = dg.sample(100_000, rng=1)
    assert x.dtype == np.int64
    ks = np.arange(-12, 13)
    obs = np.array([(x == k).sum() for k in ks] + [(np.abs(x) > 12).sum()])
    p = dg.pmf(ks)
    exp = np.append(p, 1 - p.sum()) * x.size  # type: ignore[union-attr]
    assert exp.min() >= 5
    assert stats.chisquare(obs, exp).pvalue > ALPHA


# ------------------------------------------------------------------------- discrete Laplace


@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 7.7, 250.0])
def test_discrete_laplace_pmf_matches_scipy(scale: float) -> None:
    d = DiscreteLaplace(scale)
    k = np.arange(-int(30 * scale) - 5, int(30 * scale) + 6)
    np.testing.assert_allclose(d.pmf(k), stats.dlaplace.pmf(k, 1 / scale), rtol=1e-13, atol=1e-300)
    assert d.variance == pytest.approx(float(stats.dlaplace.var(1 / scale)), rel=1e-12)
    assert math.fsum(d.pmf(np.arange(-int(800 * scale) - 50, int(800 * scale) + 51))) == pytest.approx(1.0, abs=1e-12)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- Skellam


@pytest.mark.parametrize("mu", [0.01, 0.5, 3.0, 80.0, 2500.0])
def test_skellam_pmf_matches_scipy(mu: float) -> None:
    sk = Skellam(mu)
    w = int(12 * math.sqrt(2 * mu)) + 12
    k = np.arange(-w, w + 1)
    np.testing.assert_allclose(sk.pmf(k), stats.skellam.pmf(k, mu, mu), rtol=1e-11)
    assert math.fsum(sk.pmf(k)) == pytest.approx(1.0, abs=1e-10)  # type: ignore[arg-type]
    assert sk.variance == 2 * mu
    assert sk.pmf(1.5) == 0.0


def test_skellam_sum_of_shares_is_skellam() -> None:
    """Sum of 10 Skellam(0.7) shares is Skellam(7): chi-square against Skellam(7).pmf."""
    x = Skellam(0.7).sample((10, 60_000), rng=4).sum(axis=0)
    target = Skellam(7.0)
    ks = np.arange(-10, 11)
    obs = np.array([(x < -10).sum()] + [(x == k).sum() for k in ks] + [(x > 10).sum()])
    p = np.asarray(target.pmf(ks))
    tail = (1 - p.sum()) / 2
    exp = np.concatenate([[tail], p, [tail]]) * x.size
    assert stats.chisquare(obs, exp).pvalue > ALPHA


# ------------------------------------------------------------------- continuous mechanisms


@pytest.mark.parametrize("sigma", [1e-3, 1.0, 42.0])
def test_gaussian_float_ks(sigma: float) -> None:
    g = Gaussian(sigma, secure=False)
    x = g.sample(100_001, rng=7)
    assert x.dtype == np.float64 and x.shape == (100_001,)
    assert stats.kstest(x, stats.norm(scale=sigma).cdf).pvalue > ALPHA
    assert g.variance == sigma**2
    assert g.pdf(0.3 * sigma) == pytest.approx(float(stats.norm.pdf(0.3 * sigma, scale=sigma)), rel=1e-14)
    assert g.grid is None


@pytest.mark.parametrize("scale", [0.2, 3.0])
def test_laplace_float_ks(scale: float) -> None:
    lap = Laplace(scale, secure=False)
    x = lap.sample((300, 300), rng=8)
    assert x.shape == (300, 300)
    assert stats.kstest(x.ravel(), stats.laplace(scale=scale).cdf).pvalue > ALPHA
    assert lap.variance == 2 * scale**2
    xs = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(lap.pdf(xs), stats.laplace.pdf(xs, scale=scale), rtol=1e-14)


@pytest.mark.parametrize("mech", [Gaussian(1.7, secure=True), Laplace(0.9, secure=True), Gaussian(3e5, secure=True,
                                                                                              grid_bits=8)])
def test_secure_mode_lies_on_grid(mech: Gaussian | Laplace) -> None:
    g = mech.grid
    assert g is not None and math.frexp(g)[0] == 0.5  # a power of two
    x = mech.sample(50_000, rng=9)
    units = x / g
    assert np.array_equal(units, np.round(units))
    ref = stats.norm(scale=mech.sigma) if isinstance(mech, Gaussian) else stats.laplace(scale=mech.scale)
    assert stats.kstest(x, ref.cdf).pvalue > ALPHA  # the grid is far finer than the noise
    assert mech.variance <= (ref.var() * (1 + 1e-12))
    assert mech.variance == pytest.approx(ref.var(), rel=1e-6)


def test_secure_add_noise_output_set_does_not_depend_on_input() -> None:
    """Mironov's attack needs outputs whose representable set depends on the input; here
    two nearby inputs give outputs on the same grid, and the noise is exactly discrete."""
    g = Gaussian(1.0, secure=True)
    step = g.grid
    assert step == 2.0**-20
    a = g.add_noise(np.full(1000, 0.1), rng=1)
    b = g.add_noise(np.full(1000, 0.1 + 1e-12), rng=1)
    assert np.array_equal(a, b)  # both inputs snap to the same grid point
    assert np.array_equal(a / step, np.round(a / step))
    lap = Laplace(2.0, secure=True)
    y = lap.add_noise(np.array([[1.0, -3.25], [7.0, 1e6]]), rng=2)
    assert y.shape == (2, 2) and lap.grid is not None
    assert np.array_equal(y / lap.grid, np.round(y / lap.grid))


def test_secure_pmf_on_grid() -> None:
    g = Gaussian(1.0, secure=True, grid_bits=3)
    step = g.grid
    assert step == 0.125
    pts = np.arange(-80, 81) * step
    assert math.fsum(g.pmf(pts)) == pytest.approx(1.0, abs=1e-12)  # type: ignore[arg-type]
    assert g.pmf(step / 2) == 0.0
    with pytest.raises(DPValueError):
        g.pdf(0.0)
    with pytest.raises(DPValueError):
        Gaussian(1.0, secure=False).pmf(0.0)
    with pytest.raises(DPValueError):
        Laplace(1.0, secure=False).pmf(0.0)
    with pytest.raises(DPValueError):
        Laplace(1.0, secure=True).pdf(0.0)
    lp = Laplace(1.0, secure=True, grid_bits=2)
    assert math.fsum(lp.pmf(np.arange(-400, 401) * 0.25)) == pytest.approx(1.0, abs=1e-12)  # type: ignore[arg-type]


def test_continuous_mechanisms_default_to_the_secure_sampler() -> None:
    """Mironov 2012: floating-point noise is attackable, so secure grid noise is the default."""
    for mech in (Gaussian(1.0), Laplace(1.0)):
        assert mech.secure is True
        assert mech.grid is not None
        y = mech.add_noise(np.array([0.3, -1.25]), rng=1)
        assert np.array_equal(y / mech.grid, np.round(y / mech.grid))  # every output is a grid point
    assert Gaussian(1.0) == Gaussian(1.0, secure=True)
    assert Laplace(1.0) == Laplace(1.0, secure=True)


def test_add_noise_errors_and_float_mode() -> None:
    g = Gaussian(1.0, secure=True)
    with pytest.raises(DPValueError):
        g.add_noise(np.array([2.0**40]))  # beyond 2^51 grid steps
    with pytest.raises(DPValueError):
        g.add_noise(np.array([1.0, math.nan]))
    with pytest.raises(DPValueError):
        Gaussian(1.0, secure=False).add_noise([math.inf])
    with pytest.raises(DPTypeError):
        Gaussian(1.0, secure=False).add_noise(np.array(["a"]))
    y = Gaussian(0.5, secure=False).add_noise(np.zeros((4, 5)), rng=3)
    assert y.shape == (4, 5) and y.std() > 0


def test_discrete_add_noise() -> None:
    x = np.arange(10, dtype=np.int32)
    for mech in (DiscreteGaussian(2.0), DiscreteLaplace(2.0), Skellam(2.0)):
        y = mech.add_noise(x, rng=5)
        assert y.dtype == np.int64 and y.shape == x.shape
        with pytest.raises(DPTypeError):
            mech.add_noise(np.array([1.5]))


# ---------------------------------------------------------------------- value-object contract


def test_frozen_equal_hashable() -> None:
    assert DiscreteGaussian(2) == DiscreteGaussian(2.0)
    assert isinstance(DiscreteGaussian(2).sigma, float)
    assert hash(Skellam(3.0)) == hash(Skellam(3))
    assert Gaussian(1.0, secure=False) != Gaussian(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DiscreteGaussian(2.0).sigma = 3.0  # type: ignore[misc]


def test_reproducible_samples() -> None:
    for mech in (DiscreteGaussian(3.0), DiscreteLaplace(3.0), Skellam(3.0), Gaussian(3.0, secure=False),
                 Laplace(3.0, secure=False), Gaussian(3.0), Laplace(3.0)):
        a = mech.sample(64, rng=b"seed")
        b = mech.sample(64, rng=b"seed")
        assert np.array_equal(a, b)
        assert not np.array_equal(a, mech.sample(64, rng=b"other"))


INVALID: list[tuple[object, type[DPError]]] = [
    (0, DPValueError), (-1.0, DPValueError), (math.nan, DPValueError), (math.inf, DPValueError),
    (-math.inf, DPValueError), (2.0**41, DPValueError), (True, DPTypeError), ("1", DPTypeError),
    (None, DPTypeError), (Fraction(1, 2), DPTypeError), (1j, DPTypeError),
]


@pytest.mark.parametrize(("value", "err"), INVALID)
def test_invalid_parameters(value: object, err: type[DPError]) -> None:
    for cls in (DiscreteGaussian, DiscreteLaplace, Gaussian, Laplace):
        with pytest.raises(err):
            cls(value)  # type: ignore[arg-type]
    if value != 2.0**41:
        with pytest.raises(err):
            Skellam(value)  # type: ignore[arg-type]


def test_invalid_secure_and_grid_bits() -> None:
    with pytest.raises(DPTypeError):
        Gaussian(1.0, secure=1)  # type: ignore[arg-type]
    with pytest.raises(DPTypeError):
        Laplace(1.0, secure=True, grid_bits=2.0)  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        Gaussian(1.0, secure=True, grid_bits=31)
    with pytest.raises(DPValueError):
        Laplace(1.0, grid_bits=-1)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=2.0**-40, max_value=2.0**40, allow_nan=False, allow_infinity=False),
       st.integers(min_value=-10**6, max_value=10**6))
def test_pmf_properties(sigma: float, k: int) -> None:
    dg = DiscreteGaussian(sigma)
    p = dg.pmf(k)
    assert 0.0 <= p <= dg.pmf(0) <= 1.0
    assert p == dg.pmf(-k)
    dl = DiscreteLaplace(sigma)
    assert 0.0 <= dl.pmf(k) <= dl.pmf(0) <= 1.0
