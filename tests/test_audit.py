"""Empirical privacy audit: the bound computations (dp.audit) checked statistically, the
canary experiment through the real distributed-DP pipeline (secagg.audit), the command
and the report section."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from dp.audit import (
    MAX_EPSILON,
    audit_scores,
    clopper_pearson_upper,
    count_correct_guesses,
    default_guess_counts,
    many_runs_epsilon_lower_bound,
    one_run_epsilon_lower_bound,
    one_run_p_value,
)
from dp.errors import DPTypeError, DPValueError

# ----------------------------------------------------------------------------- p-value


def _p_value_by_hand(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 3.1 of Steinke, Nasr, Jagielski (2023), written out term by term."""
    q = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    tail = sum(pmf[v:])
    alpha = max((sum(pmf[v - i : v]) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, tail + 2 * m * delta * alpha)


@pytest.mark.parametrize(("m", "r", "v", "eps", "delta"), [
    (50, 20, 15, 0.5, 0.0), (50, 20, 15, 0.5, 1e-3), (100, 30, 30, 2.0, 1e-4), (10, 10, 3, 0.1, 0.01),
    (40, 0, 0, 1.0, 1e-5), (40, 12, 0, 1.0, 1e-5),
])  # fmt: skip
def test_p_value_matches_the_theorem_written_out(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(_p_value_by_hand(m, r, v, eps, delta), rel=1e-9)


def test_p_value_without_delta_is_the_binomial_tail() -> None:
    q = float(special.expit(1.3))
    assert one_run_p_value(1000, 200, 150, 1.3) == pytest.approx(float(stats.binom.sf(149, 200, q)), rel=1e-12)
    assert one_run_p_value(1000, 200, 150, 1.3, 1e-6) >= one_run_p_value(1000, 200, 150, 1.3)


# ----------------------------------------------------------------------------- the bound


@pytest.mark.parametrize("r", [1, 2, 10, 100, 1000])
def test_all_guesses_right_gives_the_closed_form(r: int) -> None:
    # P[Bin(r, q) >= r] = q^r = 1 - confidence  =>  eps = logit(0.05^(1/r)), or 0 when that is negative
    q = 0.05 ** (1 / r)
    want = max(0.0, math.log(q / (1 - q)))
    assert one_run_epsilon_lower_bound(r, r, r, confidence=0.95) == pytest.approx(want, abs=1e-6)


def test_bound_is_the_first_crossing_of_the_level() -> None:
    for m, r, v, delta in [(1000, 200, 170, 1e-5), (500, 100, 100, 1e-4), (2000, 1000, 700, 1e-6)]:
        eps = one_run_epsilon_lower_bound(m, r, v, delta=delta, confidence=0.95)
        assert 0 < eps < MAX_EPSILON
        grid = np.linspace(0, eps, 200)
        assert all(one_run_p_value(m, r, v, float(e), delta) <= 0.05 for e in grid)  # every smaller eps rejected
        assert one_run_p_value(m, r, v, eps + 1e-6, delta) > 0.05


def test_bound_is_monotone_in_what_it_should_be() -> None:
    m, r = 1000, 200
    by_correct = [one_run_epsilon_lower_bound(m, r, v, delta=1e-5) for v in range(100, 201, 10)]
    assert by_correct == sorted(by_correct) and by_correct[0] == 0.0 and by_correct[-1] > 3
    by_conf = [one_run_epsilon_lower_bound(m, r, 170, delta=1e-5, confidence=c) for c in (0.5, 0.9, 0.95, 0.99)]
    assert by_conf == sorted(by_conf, reverse=True)
    by_delta = [one_run_epsilon_lower_bound(m, r, 190, delta=d) for d in (0.0, 1e-6, 1e-5, 1e-4)]
    assert by_delta == sorted(by_delta, reverse=True)
    # chance-level guessing refutes nothing
    assert one_run_epsilon_lower_bound(m, r, 100, delta=1e-5) == 0.0


def _rr_trial(rng: np.random.Generator, m: int, eps: float, k: int, confidence: float) -> float:
    """One-run audit of randomized response: canary i's bit is released flipped w.p. 1/(1+e^eps)."""
    inserted = rng.random(m) < 0.5
    keep = rng.random(m) < special.expit(eps)
    released = np.where(keep, inserted, ~inserted)
    scores = released + 1e-3 * rng.random(m)  # tie-break independent of who was inserted
    return audit_scores(scores, inserted, delta=0.0, confidence=confidence, guess_counts=[(k, k)]).epsilon_lower


def test_one_run_bound_is_valid_at_its_confidence_on_randomized_response() -> None:
    """Randomized response is exactly eps-DP and the binomial null is exact for it: the bound may
    exceed eps in at most 1 - confidence of the runs (Monte Carlo), and it is informative."""
    rng = np.random.default_rng(20231)
    eps, confidence, trials = 1.0, 0.8, 400
    bounds = np.array([_rr_trial(rng, 200, eps, 50, confidence) for _ in range(trials)])
    rate = float(np.mean(bounds > eps))
    assert rate <= (1 - confidence) + 3 * math.sqrt(0.2 * 0.8 / trials), rate
    assert np.median(bounds) > 0.4 * eps  # tight mechanism: the bound gets close
    # a claim below the truth is refuted often: the audit has power
    assert float(np.mean(bounds > 0.5 * eps)) > 0.5


def test_many_runs_bound_is_valid_and_tight_on_randomized_response() -> None:
    rng = np.random.default_rng(2020)
    eps, n = 2.0, 2000
    p_wrong = 1 / (1 + math.exp(eps))
    bounds = []
    for _ in range(500):
        fp, fn = rng.binomial(n, p_wrong), rng.binomial(n, p_wrong)
        bounds.append(many_runs_epsilon_lower_bound(false_positives=int(fp), negatives=n, false_negatives=int(fn),
                                                    positives=n, delta=0.0, confidence=0.9))
    arr = np.array(bounds)
    assert float(np.mean(arr > eps)) <= 0.1 + 3 * math.sqrt(0.09 / 500)
    assert np.median(arr) > 0.8 * eps


def test_clopper_pearson_known_values() -> None:
    # no successes in n trials: 1 - (1 - confidence)^(1/n)
    assert clopper_pearson_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-9)
    assert clopper_pearson_upper(100, 100, 0.95) == 1.0
    assert clopper_pearson_upper(30, 100, 0.95) > 0.3


def test_many_runs_with_perfect_attack_is_bounded_by_the_run_count() -> None:
    few = many_runs_epsilon_lower_bound(false_positives=0, negatives=100, false_negatives=0, positives=100)
    more = many_runs_epsilon_lower_bound(false_positives=0, negatives=10_000, false_negatives=0, positives=10_000)
    assert 0 < few < more < math.log(10_000)


def test_guessing_counts_top_and_bottom() -> None:
    scores = np.array([5.0, 1.0, 4.0, 0.0, 3.0, 2.0])
    inserted = np.array([True, False, False, False, True, True])
    assert count_correct_guesses(scores, inserted, 2, 2) == (4, 3)  # top: 0 (in), 2 (out); bottom: 3, 1 (out)
    assert count_correct_guesses(scores, inserted, 0, 0) == (0, 0)
    assert default_guess_counts(1000) == ((20, 20), (50, 50), (100, 100), (250, 250), (500, 500))
    assert default_guess_counts(3) == ((1, 1),)


def test_bonferroni_over_choices_lowers_each_bound() -> None:
    rng = np.random.default_rng(5)
    inserted = rng.random(400) < 0.5
    scores = inserted + rng.normal(0, 0.5, 400)
    one = audit_scores(scores, inserted, guess_counts=[(50, 50)])
    five = audit_scores(scores, inserted, guess_counts=[(50, 50), (10, 10), (20, 20), (100, 100), (200, 200)])
    same = next(c for c in five.per_choice if c[:2] == (50, 50))
    assert same[3] < one.epsilon_lower and five.choices == 5


@pytest.mark.parametrize(("call", "error"), [
    (lambda: one_run_p_value(10, 11, 0, 1.0), DPValueError),
    (lambda: one_run_p_value(10, 5, 6, 1.0), DPValueError),
    (lambda: one_run_p_value(10, 5, 3, -1.0), DPValueError),
    (lambda: one_run_p_value(10, 5, 3, math.nan), DPValueError),
    (lambda: one_run_p_value(10, 5.0, 3, 1.0), DPTypeError),  # type: ignore[arg-type]
    (lambda: one_run_epsilon_lower_bound(10, 5, 3, confidence=1.0), DPValueError),
    (lambda: one_run_epsilon_lower_bound(10, 5, 3, delta=True), DPTypeError),
    (lambda: one_run_epsilon_lower_bound(10**400, 5, 3), DPValueError),
    (lambda: count_correct_guesses([1.0, 2.0], [True], 1, 0), DPValueError),
    (lambda: count_correct_guesses([1.0, math.inf], [True, False], 1, 0), DPValueError),
    (lambda: count_correct_guesses([1.0, 2.0], [True, False], 2, 1), DPValueError),
    (lambda: count_correct_guesses([1.0, 2.0], [2, 0], 1, 0), DPTypeError),
    (lambda: audit_scores([1.0, 2.0], [True, False], guess_counts=[]), DPValueError),
    (lambda: many_runs_epsilon_lower_bound(false_positives=5, negatives=4, false_negatives=0, positives=4),
     DPValueError),
])  # fmt: skip
def test_bad_arguments_are_typed_errors(call: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]


def test_dp_audit_imports_no_secagg() -> None:
    code = "import dp.audit, sys; bad = [m for m in sys.modules if m.startswith('secagg')]; assert not bad, bad"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


# ----------------------------------------------------------------------------- the experiment

from secagg.audit import SERVER_ADVERSARY, CanaryAudit, run_canary_audit  # noqa: E402


@pytest.fixture(scope="module")
def small() -> CanaryAudit:
    return run_canary_audit(200, rounds=2, noise_multiplier=3.0, aggregation="direct", seed=11)


@pytest.fixture(scope="module")
def broken() -> CanaryAudit:
    return run_canary_audit(200, rounds=2, noise_multiplier=3.0, aggregation="direct", noise=False, seed=11)


def test_small_audit_stays_below_the_stated_epsilon(small: CanaryAudit) -> None:
    assert small.passed and small.noise
    assert 0.0 <= small.epsilon_lower < small.epsilon_upper
    assert small.adversary == SERVER_ADVERSARY
    assert small.clients == 208 and small.dim == 256 and small.rounds == 2
    assert small.correct <= small.guesses
    # the canaries' scores separate on average (the noise is not infinite) ...
    assert small.scores[small.inserted].mean() > small.scores[~small.inserted].mean()


def test_broken_mechanism_is_caught(small: CanaryAudit, broken: CanaryAudit) -> None:
    assert broken.epsilon_upper == small.epsilon_upper  # the same (false) claim
    assert not broken.passed and broken.epsilon_lower > broken.epsilon_upper
    assert broken.correct == broken.guesses  # without noise every guess is right
    # noiseless scores: an inserted canary scores rounds * clip_norm (up to rounding), the others 0
    assert np.allclose(broken.scores[broken.inserted], 2.0, atol=0.2)
    assert np.allclose(broken.scores[~broken.inserted], 0.0, atol=0.2)


def test_upper_bound_is_the_trackers_server_figure(small: CanaryAudit) -> None:
    from dp.tracker import PrivacyTracker
    from secagg.rounds import round_privacy
    from secagg.spec import ArraySpec, DPAggregation, build_spec

    spec = build_spec(208, (ArraySpec("update", (256,), "float64"),), DPAggregation(1.0, 3.0), dropout_fraction=0.0)
    assert spec.plan is not None
    tracker = PrivacyTracker(1e-5)
    for _ in range(2):
        tracker.record_round(round_privacy(spec.plan.noise_report(208)))
    assert small.epsilon_upper == pytest.approx(tracker.current().server_epsilon, rel=1e-12)


def test_audit_is_reproducible_with_a_seed(small: CanaryAudit) -> None:
    again = run_canary_audit(200, rounds=2, noise_multiplier=3.0, aggregation="direct", seed=11)
    assert again.epsilon_lower == small.epsilon_lower
    assert np.array_equal(again.scores, small.scores)


def test_protocol_round_sums_the_same_as_the_direct_sum() -> None:
    via_protocol = run_canary_audit(20, clients=28, noise_multiplier=3.0, aggregation="protocol", seed=4)
    direct = run_canary_audit(20, clients=28, noise_multiplier=3.0, aggregation="direct", seed=4)
    assert np.array_equal(via_protocol.scores, direct.scores)
    assert via_protocol.aggregation == "protocol" and via_protocol.passed


def test_colluders_shares_are_removed() -> None:
    res = run_canary_audit(50, clients=80, noise_multiplier=3.0, corrupt_fraction=0.2, aggregation="direct",
                           seed=8, noise=False)
    assert res.colluders > 0
    assert np.allclose(res.scores[res.inserted], 1.0, atol=0.2)


@pytest.mark.parametrize("kwargs", [
    {"canaries": 1}, {"canaries": 20, "clients": 10}, {"canaries": 20, "dim": 10}, {"canaries": 20, "rounds": 0},
    {"canaries": 20, "aggregation": "carrier pigeon"}, {"canaries": 20, "noise": 0},
])  # fmt: skip
def test_bad_experiment_arguments(kwargs: dict[str, object]) -> None:
    from secagg.errors import SecAggError

    with pytest.raises(SecAggError):
        run_canary_audit(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the command


@dataclass
class _Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., _Run]:
    from secagg.cli import main

    def run(*args: str) -> _Run:
        rc = main(list(args))
        out = capsys.readouterr()
        return _Run(rc, out.out, out.err)

    return run


def test_audit_help_exists(cli: Callable[..., _Run]) -> None:
    out = cli("audit", "--help")
    assert out.returncode == 0
    assert "--no-noise" in out.stdout and "DELIBERATELY BROKEN" in out.stdout


def test_audit_command_passes_and_prints_both_figures(cli: Callable[..., _Run]) -> None:
    out = cli("audit", "--canaries", "100", "--noise-multiplier", "3", "--direct-sum", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert "empirical lower bound: epsilon >=" in out.stdout
    assert "accountant's upper bound: epsilon <=" in out.stdout
    assert "against: server" in out.stdout


def test_audit_command_fails_loudly_on_the_broken_mechanism(cli: Callable[..., _Run]) -> None:
    out = cli("audit", "--canaries", "100", "--noise-multiplier", "3", "--direct-sum", "--seed", "1", "--no-noise")
    assert out.returncode == 1
    assert "DELIBERATELY BROKEN" in out.stdout
    assert "AUDIT FAILED" in out.stderr


def test_audit_command_json(cli: Callable[..., _Run]) -> None:
    out = cli("audit", "--canaries", "50", "--direct-sum", "--seed", "2", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["passed"] is True and doc["epsilon_lower"] <= doc["epsilon_upper"]
    assert doc["adversary"] == SERVER_ADVERSARY


def test_audit_command_writes_the_report_with_the_audit(cli: Callable[..., _Run], tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "run.jsonl")
    out = cli("audit", "--canaries", "50", "--direct-sum", "--seed", "2", "--ledger", str(ledger),
              "--report-dir", str(tmp_path / "rep"), "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["audit"]["passed"] is True and doc["audit"]["adversary"] == SERVER_ADVERSARY


def test_skellam_audit_passes_and_catches_the_broken_mechanism() -> None:
    ok = run_canary_audit(100, mechanism="skellam", noise_multiplier=3.0, aggregation="direct", seed=3)
    bad = run_canary_audit(100, mechanism="skellam", noise_multiplier=3.0, aggregation="direct", seed=3, noise=False)
    assert ok.passed and not bad.passed and ok.mechanism == "skellam"


@pytest.mark.parametrize("args", [
    ("--canaries", "1"), ("--canaries", "20", "--clients", "10"), ("--canaries", "20", "--dim", "8"),
    ("--delta", "0"), ("--confidence", "1"), ("--noise-multiplier", "-1"), ("--ledger", "x.jsonl"),
])  # fmt: skip
def test_audit_command_usage_errors(cli: Callable[..., _Run], args: tuple[str, ...]) -> None:
    out = cli("audit", *args)
    assert out.returncode == 2, out.stderr


def test_rounding_never_shows_a_figure_on_the_unsafe_side() -> None:
    from secagg.commands.audit import _round

    for x in (2.16801063, 0.123456789, 1234.5678, 3.0, 9.99999):
        assert float(_round(x, up=True)) >= x
        assert float(_round(x, up=False)) <= x


# ----------------------------------------------------------------------------- the report


def _ledger(path: Path) -> Path:
    from dp.events import GaussianEvent
    from dp.ledger import Ledger

    led = Ledger.create(path, {"accountant": "rdp", "delta": 1e-5}, now="2024-05-01T00:00:00Z")
    ev = GaussianEvent(3.0)
    led.append({
        "round": 0, "round_id": "00", "sampled": 10, "survivors": 10, "dropouts": 0, "clip_norm": 1.0,
        "mechanism": {"name": "gaussian", "noise_multiplier": 3.0}, "noise_present": 3.0, "noise_guaranteed": 3.0,
        "epsilon": {"release": None, "server": None}, "events": {"release": ev.to_dict(), "server": ev.to_dict()},
    })  # fmt: skip
    return path


def test_report_includes_the_audit_section(tmp_path: Path, small: CanaryAudit, broken: CanaryAudit) -> None:
    from dp.report import build_report, save_report

    ledger = _ledger(tmp_path / "run.jsonl")
    plain = build_report(ledger, accountants=["rdp"])
    assert "audit" not in plain  # the report without an audit is unchanged
    rep = build_report(ledger, accountants=["rdp"], audit=small.to_dict())
    assert rep["audit"]["epsilon_lower"] == small.epsilon_lower
    assert not any("AUDIT FAILED" in w for w in rep["warnings"])
    text = save_report(rep, tmp_path / "ok", "md").read_text()
    assert "## Empirical privacy audit" in text and "Passed" in text
    bad = build_report(ledger, accountants=["rdp"], audit=broken.to_dict())
    assert any("EMPIRICAL AUDIT FAILED" in w for w in bad["warnings"])
    html = save_report(bad, tmp_path / "bad", "html").read_text()
    assert "Empirical privacy audit" in html and "FAILED" in html
    as_json = save_report(build_report(ledger, accountants=["rdp"], audit=small.to_dict()), tmp_path / "j", "json")
    assert json.loads(as_json.read_text())["audit"]["passed"] is True


def test_report_refuses_a_malformed_audit(tmp_path: Path) -> None:
    from dp.report import build_report

    ledger = _ledger(tmp_path / "run.jsonl")
    with pytest.raises(DPValueError):
        build_report(ledger, accountants=["rdp"], audit={"epsilon_lower": 1.0})
    with pytest.raises(DPValueError):
        build_report(ledger, accountants=["rdp"], audit={"epsilon_lower": math.nan, "epsilon_upper": 1.0, "delta": 1e-5,
                                    "confidence": 0.95, "adversary": "server"})
