"""Exact samplers: goodness of fit against the exact pmf, moments, the exact fallback, errors.

Statistical tests use fixed seeds (so they are deterministic) and a per-test false-alarm
threshold of p < 1e-4: with about 40 statistical assertions in this file a correct sampler
fails one of them, for a fresh seed, with probability below 0.4 %. A wrong sampler (for
example one that uses sigma^2 in place of sigma, drops the sign rejection, or is off by one
in the geometric) fails with p far below 1e-10 at these sample sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp import samplers as S
from dp.errors import DPError, DPTypeError, DPValueError
from dp.rand import RandomSource

ALPHA = 1e-4  # false-alarm rate of each statistical test
Pmf = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]]


# --------------------------------------------------------------------------- reference pmfs


def dg_pmf(sigma: float) -> Pmf:
    """Discrete Gaussian pmf by brute-force normalisation (independent of dp.mechanisms)."""
    kmax = int(60 * sigma) + 10
    ks = np.arange(-kmax, kmax + 1, dtype=np.float64)
    z = math.fsum(np.exp(-(ks * ks) / (2 * sigma * sigma)))
    return lambda k: np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma * sigma)) / z


def dlap_pmf(scale: float) -> Pmf:
    return lambda k: stats.dlaplace.pmf(k, 1.0 / scale)


def poisson_pmf(mu: float) -> Pmf:
    return lambda k: stats.poisson.pmf(k, mu)


def skellam_pmf(mu: float) -> Pmf:
    return lambda k: stats.skellam.pmf(k, mu, mu)


def gof_pvalue(x: npt.NDArray[np.int64], pmf: Pmf, lo: int, hi: int) -> float:
    """Chi-square goodness of fit of integer samples ``x`` to ``pmf``.

    Values ``lo..hi`` are grouped, in order, into bins of expected count >= max(5, n/2000)
    (a short last bin is merged into its neighbour); values outside ``[lo, hi]`` (whose
    total probability the caller makes negligible, checked here) go to the end bins.
    """
    n = x.size
    ks = np.arange(lo, hi + 1, dtype=np.int64)
    exp_k = pmf(ks) * n
    assert abs(exp_k.sum() / n - 1.0) < 1e-9, "range [lo, hi] must hold all but 1e-9 of the mass"
    target = max(5.0, n / 2000)
    bins = np.empty(ks.size, dtype=np.int64)
    current, acc = 0, 0.0
    for i, e in enumerate(exp_k.tolist()):  # greedy: close a bin once it expects >= target
        bins[i] = current
        acc += e
        if acc >= target:
            current, acc = current + 1, 0.0
    nb = int(bins[-1]) + 1
    exp_b = np.bincount(bins, weights=exp_k, minlength=nb)
    if exp_b[-1] < 5:
        bins[bins == nb - 1] = nb - 2
        nb -= 1
        exp_b = np.bincount(bins, weights=exp_k, minlength=nb)
    assert exp_b.min() >= 5
    obs_b = np.bincount(bins[np.clip(x, lo, hi) - lo], minlength=nb)
    return float(stats.chisquare(obs_b, exp_b * (n / exp_b.sum())).pvalue)


# ------------------------------------------------------------------------- goodness of fit

N = 200_000


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5, 17.3, 300.0])
def test_discrete_gaussian_fits_exact_pmf(sigma: float) -> None:
    x = S.sample_discrete_gaussian(sigma, N, rng=int(sigma * 1000))
    assert x.dtype == np.int64
    k = int(12 * sigma) + 8
    assert gof_pvalue(x, dg_pmf(sigma), -k, k) > ALPHA


@pytest.mark.parametrize("scale", [0.25, 1.0, 4.5, 60.0])
def test_discrete_laplace_fits_exact_pmf(scale: float) -> None:
    x = S.sample_discrete_laplace(scale, N, rng=int(scale * 100) + 1)
    k = int(40 * scale) + 20
    assert gof_pvalue(x, dlap_pmf(scale), -k, k) > ALPHA


@pytest.mark.parametrize("mu", [0.05, 1.0, 9.5, 2000.0])
def test_poisson_fits_exact_pmf(mu: float) -> None:
    x = S.sample_poisson(mu, N, rng=int(mu * 100) + 2)
    hi = int(mu + 15 * math.sqrt(mu) + 30)
    assert x.min() >= 0
    assert gof_pvalue(x, poisson_pmf(mu), 0, hi) > ALPHA


@pytest.mark.parametrize("mu", [0.1, 2.0, 50.0])
def test_skellam_fits_exact_pmf(mu: float) -> None:
    x = S.sample_skellam(mu, N, rng=int(mu * 100) + 3)
    k = int(15 * math.sqrt(2 * mu) + 30)
    assert gof_pvalue(x, skellam_pmf(mu), -k, k) > ALPHA


def test_gof_helper_rejects_a_wrong_distribution() -> None:
    """The test statistic has power: DG(sigma) samples do not fit DG(1.05 sigma)."""
    x = S.sample_discrete_gaussian(10.0, N, rng=5)
    assert gof_pvalue(x, dg_pmf(10.5), -150, 150) < 1e-10
    y = S.sample_discrete_laplace(3.0, N, rng=6)
    assert gof_pvalue(y, dlap_pmf(3.1), -200, 200) < 1e-6


# ----------------------------------------------------------------------------------- moments


def _moment_z(x: npt.NDArray[np.int64], pmf: Pmf, lo: int, hi: int) -> tuple[float, float]:
    """z-scores of the sample mean and sample variance against the exact mean and variance."""
    k = np.arange(lo, hi + 1, dtype=np.float64)
    p = pmf(k.astype(np.int64))
    mean = float(np.sum(k * p))
    var = float(np.sum((k - mean) ** 2 * p))
    m4 = float(np.sum((k - mean) ** 4 * p))
    n = x.size
    xf = x.astype(np.float64)
    z_mean = (xf.mean() - mean) / math.sqrt(var / n)
    z_var = (xf.var() - var) / math.sqrt((m4 - var * var) / n)
    return z_mean, z_var


Z_CRIT = 3.9  # two-sided normal quantile for p = 1e-4


@pytest.mark.parametrize(
    ("name", "sampler", "pmf", "lo", "hi"),
    [
        ("dg3", lambda n, r: S.sample_discrete_gaussian(3.0, n, r), dg_pmf(3.0), -60, 60),
        ("dg1000", lambda n, r: S.sample_discrete_gaussian(1000.0, n, r), dg_pmf(1000.0), -15000, 15000),
        ("dlap2", lambda n, r: S.sample_discrete_laplace(2.0, n, r), dlap_pmf(2.0), -120, 120),
        ("sk7", lambda n, r: S.sample_skellam(7.0, n, r), skellam_pmf(7.0), -80, 80),
        ("pois30", lambda n, r: S.sample_poisson(30.0, n, r), poisson_pmf(30.0), 0, 150),
    ],
)
def test_mean_and_variance(name: str, sampler: Callable[[int, int], npt.NDArray[np.int64]], pmf: Pmf, lo: int,
                           hi: int) -> None:
    x = sampler(N, sum(map(ord, name)))
    z_mean, z_var = _moment_z(x, pmf, lo, hi)
    assert abs(z_mean) < Z_CRIT
    assert abs(z_var) < Z_CRIT


def test_symmetric_samplers_have_balanced_signs() -> None:
    for x in (S.sample_discrete_gaussian(0.7, N, rng=11), S.sample_discrete_laplace(0.5, N, rng=12),
              S.sample_skellam(0.3, N, rng=13)):
        pos, neg = int((x > 0).sum()), int((x < 0).sum())
        assert stats.binomtest(pos, pos + neg, 0.5).pvalue > ALPHA


def test_large_parameters() -> None:
    big = 2.0**40
    x = S.sample_discrete_gaussian(big, 4000, rng=1)
    assert x.dtype == np.int64
    assert abs(x.std() / big - 1) < 0.1
    y = S.sample_discrete_laplace(big, 4000, rng=2)
    assert abs(y.std() / (math.sqrt(2) * big) - 1) < 0.15
    mu = 2.0**48
    p = S.sample_poisson(mu, 4000, rng=3)
    assert abs((p.astype(np.float64) - mu).mean()) < 5 * math.sqrt(mu / 4000)
    assert abs(p.astype(np.float64).std() / math.sqrt(mu) - 1) < 0.1


def test_tiny_parameters() -> None:
    tiny = 2.0**-40
    assert not S.sample_discrete_gaussian(tiny, 1000, rng=1).any()
    assert not S.sample_discrete_laplace(tiny, 1000, rng=1).any()
    assert not S.sample_poisson(tiny, 1000, rng=1).any()
    assert not S.sample_skellam(tiny, 1000, rng=1).any()


# ------------------------------------------------------------------- the exact fallback path


@pytest.fixture
def force_fallback(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Widen the fast-path margin so most decisions take the exact (decimal) route; count them."""
    calls = [0]
    original = S._LazyUniform.less_exp_neg

    def counting(self: S._LazyUniform, gamma: S.GammaBounds) -> bool:
        calls[0] += 1
        return original(self, gamma)

    monkeypatch.setattr(S, "_REL_MARGIN", 0.3)
    monkeypatch.setattr(S._LazyUniform, "less_exp_neg", counting)
    return calls


NF = 4000


def test_fallback_discrete_gaussian_and_laplace(force_fallback: list[int]) -> None:
    x = S.sample_discrete_gaussian(1.7, NF, rng=21)
    assert gof_pvalue(x, dg_pmf(1.7), -40, 40) > ALPHA
    y = S.sample_discrete_laplace(2.6, NF, rng=22)
    assert gof_pvalue(y, dlap_pmf(2.6), -150, 150) > ALPHA
    assert force_fallback[0] > NF  # most decisions really went through the exact path


def test_fallback_poisson_small_and_stirling(force_fallback: list[int]) -> None:
    x = S.sample_poisson(3.5, NF, rng=23)
    assert gof_pvalue(x, poisson_pmf(3.5), 0, 60) > ALPHA
    # mu = 4000: k >= 1000, so ln k! comes from Stirling's series with its remainder bound
    y = S.sample_poisson(4000.0, 1500, rng=24)
    assert gof_pvalue(y, poisson_pmf(4000.0), 3000, 5000) > ALPHA
    assert force_fallback[0] > 1500


def test_lazy_uniform_decides_hard_comparisons() -> None:
    """U whose first 53 bits equal those of exp(-gamma): the decision needs more bits, and
    the final interval of U lies entirely on the decided side of a 100-digit exp(-gamma)."""
    rs = RandomSource(99)
    for g in (Fraction(1), Fraction(1, 3), Fraction(355, 113), Fraction(10**6 + 1, 10**6)):
        with localcontext() as ctx:
            ctx.prec = 100
            p = Fraction(Decimal(-g.numerator / Decimal(g.denominator)).exp())
        for _ in range(20):
            prefix = math.floor(p * 2**53)
            u = S._LazyUniform(rs, prefix, 53)
            decided = u.less_exp_neg(S._exact(g))
            assert u.nbits > 53
            lo, hi = Fraction(u.value, 2**u.nbits), Fraction(u.value + 1, 2**u.nbits)
            assert (hi <= p) if decided else (lo >= p)


def test_lazy_uniform_huge_gamma_shortcut() -> None:
    u = S._LazyUniform(RandomSource(1), 5, 53)
    assert u.less_exp_neg(S._exact(Fraction(10**30))) is False
    assert u.less_exp_neg(S._exact(Fraction(0))) is True


@pytest.mark.parametrize("k", [0, 1, 7, 170, 999, 1000, 1001, 54321, 10**9, 10**15])
def test_ln_factorial_bounds(k: int) -> None:
    lo, hi = S._ln_factorial_bounds(k, 40)
    assert lo <= hi
    assert float(hi - lo) <= 1e-30 * max(1.0, math.lgamma(k + 1))
    assert abs(float((lo + hi) / 2) - math.lgamma(k + 1)) <= 1e-12 * max(1.0, math.lgamma(k + 1))


def test_stirling_branch_matches_exact_factorial() -> None:
    k = 1500  # exact: prec >= k forces the factorial branch; Stirling for prec = 40
    s_lo, s_hi = S._ln_factorial_bounds(k, 40)
    e_lo, e_hi = S._ln_factorial_bounds(k, 1600)
    assert s_lo <= e_hi and e_lo <= s_hi
    assert e_hi - e_lo < Fraction(1, 10**1500)


def test_exact_helpers_enclose_true_values() -> None:
    for g in (Fraction(0), Fraction(1, 7), Fraction(5), Fraction(700)):
        lo, hi = S._exp_neg_bounds(g, g, 30)
        assert lo <= Fraction(math.exp(-float(g))) * (1 + Fraction(1, 10**14))
        assert hi >= Fraction(math.exp(-float(g))) * (1 - Fraction(1, 10**14))
        assert hi - lo <= hi / 10**27
    lo, hi = S._ln_2pi_bounds(50)
    assert lo < Fraction(math.log(2 * math.pi)) * (1 + Fraction(1, 10**15)) and hi > lo
    assert hi - lo < Fraction(1, 10**45)
    assert S._bernoulli(2) == Fraction(1, 6)
    assert S._bernoulli(12) == Fraction(-691, 2730)
    assert S._bernoulli(20) == Fraction(-174611, 330)


def test_bernoulli_exp_frequencies() -> None:
    rs = RandomSource(5)
    for g in (0.0, 0.1, 1.0, 3.0, 50.0):
        gam = np.full(100_000, g)
        exact = S._exact(Fraction(g))
        hits = int(S._bernoulli_exp_neg(rs, gam, lambda _i: exact).sum())  # noqa: B023 - used at once
        assert stats.binomtest(hits, gam.size, math.exp(-g)).pvalue > ALPHA


def test_poisson_envelope_bounds_the_log_pmf() -> None:
    """C must dominate ln P(k) + |k - m|/b for every k (checked with scipy's logpmf)."""
    for mu in (2.0**-40, 0.003, 0.5, 1.0, 6.5, 123.4, 5e5):
        plan = S._poisson_plan(mu)
        sd = math.sqrt(mu)
        k = np.unique(np.concatenate([np.arange(0, 200), np.arange(max(0, int(mu - 50 * sd)), int(mu + 50 * sd) + 2)]))
        h = stats.poisson.logpmf(k, mu) + np.abs(k - plan.m) / plan.b
        assert np.all(h <= plan.C)
        assert 0.4 < plan.acceptance <= 1.0


def test_numpy_exp_log_accuracy_assumption() -> None:
    """The fast path assumes numpy's exp/log are accurate to far better than 2^-34 relative."""
    x = np.random.default_rng(0).uniform(0, 745, 2000)
    u = np.random.default_rng(1).uniform(2.0**-53, 1, 2000)
    with localcontext() as ctx:
        ctx.prec = 40
        ref_e = np.array([float(Decimal(-v).exp()) for v in x])
        ref_l = np.array([float(Decimal(v).ln()) for v in u])
    ok = ref_e > 1e-300
    assert np.max(np.abs(np.exp(-x[ok]) / ref_e[ok] - 1)) < 2.0**-45
    assert np.max(np.abs(np.log(u) / ref_l - 1)) < 2.0**-45


# -------------------------------------------------------------- API: shapes, seeds, errors


def test_shapes_and_dtype() -> None:
    for fn in (S.sample_discrete_gaussian, S.sample_discrete_laplace, S.sample_poisson, S.sample_skellam):
        out = fn(1.5, (3, 4), 1)
        assert out.shape == (3, 4) and out.dtype == np.int64
        assert fn(1.5, 0, 1).shape == (0,)
        assert fn(1.5, np.int64(5), 1).shape == (5,)  # type: ignore[arg-type]


def test_reproducible_with_seed_and_generator() -> None:
    a = S.sample_discrete_gaussian(5.0, 1000, rng=42)
    b = S.sample_discrete_gaussian(5.0, 1000, rng=42)
    c = S.sample_discrete_gaussian(5.0, 1000, rng=43)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    g1 = S.sample_skellam(2.0, 500, rng=np.random.default_rng(7))
    g2 = S.sample_skellam(2.0, 500, rng=np.random.default_rng(7))
    assert np.array_equal(g1, g2)
    assert not np.array_equal(S.sample_discrete_laplace(3.0, 200), S.sample_discrete_laplace(3.0, 200))


BAD_VALUES = [0, 0.0, -1.0, math.nan, math.inf, -math.inf, 2.0**41, 2.0**-41]
BAD_TYPES: list[object] = [True, False, "1.0", None, 1 + 2j, [1.0], Fraction(1, 2)]


@pytest.mark.parametrize("fn", [S.sample_discrete_gaussian, S.sample_discrete_laplace])
def test_invalid_scale_parameters(fn: Callable[..., object]) -> None:
    for v in BAD_VALUES:
        with pytest.raises(DPValueError):
            fn(v, 3)
    for t in BAD_TYPES:
        with pytest.raises(DPTypeError):
            fn(t, 3)


@pytest.mark.parametrize("fn", [S.sample_poisson, S.sample_skellam])
def test_invalid_mu(fn: Callable[..., object]) -> None:
    for v in [0, -2.0, math.nan, math.inf, 2.0**49, 2.0**-41]:
        with pytest.raises(DPValueError):
            fn(v, 3)
    for t in BAD_TYPES:
        with pytest.raises(DPTypeError):
            fn(t, 3)


def test_invalid_size_and_rng() -> None:
    with pytest.raises(DPValueError):
        S.sample_discrete_gaussian(1.0, -1)
    with pytest.raises(DPValueError):
        S.sample_discrete_gaussian(1.0, (2, -1))
    for bad in (2.0, True, "3", (2, 1.5), [3]):
        with pytest.raises(DPTypeError):
            S.sample_discrete_gaussian(1.0, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        S.sample_discrete_gaussian(1.0, 3, rng="seed")  # type: ignore[arg-type]


def test_errors_are_dp_errors() -> None:
    assert issubclass(DPValueError, DPError) and issubclass(DPTypeError, DPError)


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=2.0**-40, max_value=2.0**40, allow_nan=False, allow_infinity=False),
       st.integers(min_value=0, max_value=50))
def test_any_valid_sigma_samples(sigma: float, n: int) -> None:
    x = S.sample_discrete_gaussian(sigma, n, rng=n)
    assert x.shape == (n,) and x.dtype == np.int64
    assert np.all(np.abs(x) <= 40 * sigma + 40)


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=2.0**-40, max_value=2.0**48, allow_nan=False, allow_infinity=False))
def test_any_valid_mu_samples(mu: float) -> None:
    x = S.sample_poisson(mu, 20, rng=1)
    assert np.all(x >= 0) and np.all(x <= mu + 40 * math.sqrt(mu) + 40)


@pytest.mark.parametrize(
    ("size", "err"),
    [
        (10**400, DPValueError),
        ((2**30, 2**30), DPValueError),
        (2.0, DPTypeError),
        ((3, True), DPTypeError),
        (-1, DPValueError),
    ],
)
def test_absurd_sizes_are_typed_errors(size: object, err: type[DPError]) -> None:
    with pytest.raises(err):
        S.sample_discrete_gaussian(1.0, size, rng=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "err"), [(10**400, DPValueError), (-(10**400), DPValueError), (True, DPTypeError)])
def test_absurd_parameters_are_typed_errors(value: object, err: type[DPError]) -> None:
    with pytest.raises(err):
        S.sample_discrete_gaussian(value, 3, rng=1)  # type: ignore[arg-type]
