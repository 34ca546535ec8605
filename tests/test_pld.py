"""The Gaussian that dominates the distributed discrete Gaussian (dp.pld), checked against exact
enumerations of the lattice pair and against dp_accounting's discrete Gaussian PLD."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from dp.accountants import PldAccountant, RdpAccountant, gaussian_delta
from dp.errors import AccountingError, DPValueError
from dp.events import DistributedDiscreteGaussianEvent, GaussianEvent, PoissonSampledEvent
from dp.pld import ddg_domination, lattice_gdp_sigma

EPS_GRID = np.linspace(0.0, 6.0, 61)


def _dg_pmf(s: float, half: int) -> np.ndarray:
    k = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-(k * k) / (2 * s * s))
    return w / w.sum()


def _sum_pmf(s: float, m: int, half: int) -> np.ndarray:
    one = _dg_pmf(s, half)
    out = one
    for _ in range(m - 1):
        out = np.convolve(out, one)
    return out  # centred, length m (2 half + 1) - (m - 1)


def _hockey(p: np.ndarray, q: np.ndarray, eps: float) -> float:
    return float(np.maximum(p - math.exp(eps) * q, 0.0).sum())


def _exact_delta_1d(pmf: np.ndarray, v: int, eps: float) -> float:
    """delta(eps) of the pair (v + Z, Z), both directions, by enumeration."""
    p = np.concatenate([np.zeros(v), pmf])
    q = np.concatenate([pmf, np.zeros(v)])
    return max(_hockey(p, q, eps), _hockey(q, p, eps))


@pytest.mark.parametrize("s", [0.5, 0.8, 1.5, 3.0])
def test_single_discrete_gaussian_is_dominated(s: float) -> None:
    dom = ddg_domination(DistributedDiscreteGaussianEvent(1.0, s, 1, 1))
    assert dom is not None and dom.shares_used == 1
    pmf = _dg_pmf(s, int(40 * s) + 40)
    for v in (1, 2, 3, 5, 8):
        mu = v / dom.effective_sigma
        for eps in EPS_GRID:
            assert _exact_delta_1d(pmf, v, eps) <= gaussian_delta(mu, eps) + dom.tv + 1e-13


def test_small_scale_is_worse_than_the_continuous_gaussian() -> None:
    # at s = 0.5 the discrete Gaussian leaks more than N(0, 0.25) (total variation 0.787 vs 0.683
    # for a unit shift): the domination must see that, not assume the continuous figure
    dom = ddg_domination(DistributedDiscreteGaussianEvent(1.0, 0.5, 1, 1))
    assert dom is not None and dom.effective_sigma < 0.45
    assert _exact_delta_1d(_dg_pmf(0.5, 60), 1, 0.0) > gaussian_delta(1 / 0.5, 0.0)


def test_sum_of_discrete_gaussians_is_dominated() -> None:
    s, m = 4.5, 3
    dom = ddg_domination(DistributedDiscreteGaussianEvent(10.0, math.sqrt(m) * s, 1, m))
    assert dom is not None and dom.shares_used == m  # the sum itself was analysed, not one share
    assert 0.999 * math.sqrt(m) * s < dom.effective_sigma < math.sqrt(m) * s
    pmf = _sum_pmf(s, m, 200)
    for v in (1, 3, 7, 10):
        mu = v / dom.effective_sigma
        for eps in EPS_GRID:
            assert _exact_delta_1d(pmf, v, eps) <= gaussian_delta(mu, eps) + dom.tv + 1e-13


def test_vector_shift_is_dominated() -> None:
    # d = 2, integer shift (3, 4) of L2 norm 5: enumerate the product pair exactly
    s, m = 4.5, 2
    dom = ddg_domination(DistributedDiscreteGaussianEvent(5.0, math.sqrt(m) * s, 2, m))
    assert dom is not None
    pmf = _sum_pmf(s, m, 120)
    c = pmf.size // 2
    log_p = np.log(np.maximum(pmf, 1e-300))
    k = np.arange(pmf.size)

    def shifted(v: int) -> np.ndarray:
        out = np.full(pmf.size, -np.inf)
        out[v:] = log_p[: pmf.size - v]
        return out

    lp = shifted(3)[:, None] + shifted(4)[None, :]
    lq = log_p[:, None] + log_p[None, :]
    assert k[c] == c
    for eps in EPS_GRID[::3]:
        with np.errstate(invalid="ignore"):
            fwd = float(np.maximum(np.exp(lp) - math.exp(eps) * np.exp(lq), 0).sum())
            rev = float(np.maximum(np.exp(lq) - math.exp(eps) * np.exp(lp), 0).sum())
        assert max(fwd, rev) <= gaussian_delta(5.0 / dom.effective_sigma, eps) + dom.tv + 1e-13
    assert dom.noise_multiplier == pytest.approx(dom.effective_sigma / 5.0)


def test_tight_for_wide_noise() -> None:
    for sigma, n in ((20.0, 1), (300.0, 99), (175.0, 999), (36000.0, 9)):
        dom = ddg_domination(DistributedDiscreteGaussianEvent(100.0, sigma, 16384, n))
        assert dom is not None and dom.shares_used == n
        assert 0.9998 * sigma < dom.effective_sigma < sigma
        assert dom.tv < 1e-40


def test_small_shares_fall_back_to_one_share() -> None:
    dom = ddg_domination(DistributedDiscreteGaussianEvent(1.0, 0.8 * math.sqrt(50), 10, 50))
    assert dom is not None and dom.shares_used == 1 and dom.effective_sigma < 0.8


def test_bad_arguments() -> None:
    with pytest.raises(DPValueError):
        ddg_domination(GaussianEvent(1.0))  # type: ignore[arg-type]
    with pytest.raises(DPValueError):
        lattice_gdp_sigma(0.0, 10, 0.0)
    assert ddg_domination(DistributedDiscreteGaussianEvent(1.0, 0.0, 1, 3)) is None


dp_accounting = pytest.importorskip("dp_accounting")


@pytest.mark.parametrize(("s", "v", "q", "t"), [(2.0, 3, 1.0, 1), (3.0, 2, 0.1, 5), (1.2, 1, 0.5, 3),
                                                (20.0, 5, 0.01, 100)])
def test_pld_accountant_never_below_dp_accountings_discrete_gaussian(s: float, v: int, q: float, t: int) -> None:
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    # connect-the-dots (Doroshenko et al. 2022): dp_accounting's tightest upper bound for the
    # exact lattice pair; the default pessimistic rounding is looser (0.0406 vs 0.0358 at s = 20)
    ref = pld_lib.from_discrete_gaussian_mechanism(s, sensitivity=v, sampling_prob=q,
                                                   value_discretization_interval=1e-5, use_connect_dots=True)
    ref = ref.self_compose(t)
    event = DistributedDiscreteGaussianEvent(float(v), s, 1, 1)
    acc = PldAccountant()
    acc.compose(event if q == 1.0 else PoissonSampledEvent(q, event), t)
    for delta in (1e-3, 1e-5, 1e-8):
        ours = acc.get_epsilon(delta)
        theirs = float(ref.get_epsilon_for_delta(delta))
        assert ours >= theirs * (1 - 1e-3) - 1e-6, (delta, ours, theirs)


def test_pld_accountant_tighter_than_rdp_for_distributed_rounds() -> None:
    event = DistributedDiscreteGaussianEvent(3688.0, 3688.0, 16384, 99)
    for ev, count in ((event, 1), (PoissonSampledEvent(0.01, event), 1000)):
        pld, rdp = PldAccountant(), RdpAccountant()
        pld.compose(ev, count)
        rdp.compose(ev, count)
        assert pld.composition == ("analytic" if count == 1 else "numeric")
        assert 0 < pld.tv_slack < 1e-30
        assert pld.get_epsilon(1e-5) < 0.95 * rdp.get_epsilon(1e-5)
        assert pld.get_delta(pld.get_epsilon(1e-5)) <= 1e-5 * (1 + 1e-6)


def test_pld_accountant_refuses_a_large_slack() -> None:
    acc = PldAccountant()
    acc.compose(DistributedDiscreteGaussianEvent(10.0, 10.0, 4, 2))
    acc._tv = 1e-3  # as if the lattice analysis had left a visible slack
    with pytest.raises(AccountingError, match="slack"):
        acc.get_epsilon(1e-5)
    assert acc.get_delta(1.0) >= (1 + math.e) * 1e-3
    assert acc.copy().tv_slack == 1e-3


def test_committed_tightness_table_row_is_the_code_output() -> None:
    from dp.tightness import format_row, tightness_row

    doc = (Path(__file__).resolve().parents[1] / "docs" / "accounting.md").read_text()
    line = format_row(tightness_row(4.0, 100))
    assert line in doc
    rows = [ln for ln in doc.splitlines() if re.match(r"\| [0-9.]+ \| (none|q = )", ln)]
    assert len(rows) == 36
