"""secagg.rounds: the accounting and ledger record of a finished secure round, shared by the
torch adapter and the Flower integration (budget first, then the tracker, then the ledger;
a refused or invalid round leaves both unchanged); the record names the round's spec."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.distributed import DistributedPlan, plan_distributed
from dp.errors import BudgetExceededError, LedgerError
from dp.events import event_from_dict
from dp.ledger import Ledger, read_ledger, verify_ledger
from dp.tracker import PrivacyTracker, RoundEvents
from secagg.errors import HeadroomError, SecAggTypeError, SecAggValueError
from secagg.graph import ThreatModel
from secagg.messages import RoundConfig
from secagg.rounds import (
    NOISE_UNITS,
    PlainRound,
    account_round,
    check_budget,
    ledger_header,
    protocol_summary,
    round_privacy,
)
from secagg.spec import (
    ArraySpec,
    DPAggregation,
    FedAvgAggregation,
    IntegerSum,
    RoundSpec,
    build_spec,
    cohort_floor,
    fedavg_encoder,
    make_config,
)

N = 8


def _plan(mechanism: str = "discrete_gaussian") -> DistributedPlan:
    return plan_distributed(
        clients_expected=N, min_clients=5, colluders=1, dim=20, clip_norm=1.0, noise_multiplier=1.0,
        mechanism=mechanism,  # type: ignore[arg-type]
    )


def _protocol(plan: DistributedPlan) -> RoundConfig:
    cfg, _ = make_config(N, plan.padded_dim, plan.bits, neighbors="all", min_clients=plan.min_clients,
                         corrupt_fraction=0.125, dropout_fraction=0.25, round_id=bytes(range(16)))
    return cfg


def _ledger(tmp_path: Path, tracker: PrivacyTracker) -> Ledger:
    return Ledger.create(tmp_path / "l.jsonl", {"accountant": tracker.accountant, "delta": tracker.delta})


def _dp_spec(dp_plan: DistributedPlan, ledger_head: str | None = None) -> RoundSpec:
    return RoundSpec(_protocol(dp_plan), "dp", (ArraySpec("w", (dp_plan.dim,), "float32"),), plan=dp_plan,
                     ledger_head=ledger_head)  # fmt: skip


def _dp_args(
    dp_plan: DistributedPlan, survivors: int = 6, ledger_head_sent: str | None = None, **kw: Any
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "spec": _dp_spec(dp_plan, ledger_head_sent),
        "survivors": survivors,
        "dropped": {"share_keys": [3], "masked_input": [7]},
        "sampling_rate": 0.5,
    }
    args.update(kw)
    return args


def test_cohort_floor_defaults_and_clamps() -> None:
    c = ThreatModel(20, 0.1, 0.1).colluders
    assert cohort_floor(20, dropout_fraction=0.1, corrupt_fraction=0.1) == (max(c + 2, 16), c)
    assert cohort_floor(20, dropout_fraction=0.1, corrupt_fraction=0.1, min_clients=1) == (c + 2, c)
    assert cohort_floor(20, dropout_fraction=0.1, corrupt_fraction=0.1, min_clients=99) == (20, c)
    assert cohort_floor(20, dropout_fraction=0.1, corrupt_fraction=0.1, min_clients=12) == (12, c)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(3, 300), drop=st.floats(0.0, 0.45), bad=st.floats(0.0, 0.3), floor=st.none() | st.integers(1, 400))
def test_cohort_floor_leaves_an_honest_share_and_fits_the_cohort(
    n: int, drop: float, bad: float, floor: int | None
) -> None:
    m, c = cohort_floor(n, dropout_fraction=drop, corrupt_fraction=bad, min_clients=floor)
    assert c == ThreatModel(n, drop, bad).colluders
    assert m <= n and (m >= c + 2 or m == n)
    if floor is not None and c + 2 <= floor <= n:
        assert m == floor


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_round_privacy_describes_the_survivors_noise(mechanism: str) -> None:
    noise = _plan(mechanism).noise_report(6)
    rp = round_privacy(noise, 0.25)
    assert rp.mechanism == ("skellam" if mechanism == "skellam" else "distributed_discrete_gaussian")
    assert (rp.n_present, rp.n_guaranteed) == (6, 6 - 1 - 1)
    assert (rp.sigma_present, rp.sigma_guaranteed) == (noise.sigma_present, noise.sigma_guaranteed)
    assert rp.sampling_rate == 0.25 and round_privacy(noise).sampling_rate == 1.0
    assert rp.dim == noise.dim and rp.l2_sensitivity == noise.l2_sensitivity
    with pytest.raises(SecAggTypeError):
        round_privacy(rp)  # type: ignore[arg-type]


def test_dp_round_is_recorded_in_tracker_and_ledger(tmp_path: Path) -> None:
    plan = _plan()
    tracker = PrivacyTracker(1e-5)
    ledger = _ledger(tmp_path, tracker)
    head0 = ledger.head_for_clients()
    acct = account_round(tracker, ledger, **_dp_args(plan, ledger_head_sent=head0, extra={"transport": "x"}))
    assert acct.noise == plan.noise_report(6)
    assert acct.privacy == tracker.current() and tracker.rounds == 1
    assert acct.ledger_head == ledger.head_for_clients() != head0
    assert verify_ledger(tmp_path / "l.jsonl", anchors=[head0], expect_head=acct.ledger_head).ok
    _, records = read_ledger(tmp_path / "l.jsonl")
    rec = records[0]
    assert acct.record is not None and {k: rec[k] for k in acct.record} == acct.record
    assert (rec["sampled"], rec["survivors"], rec["dropouts"]) == (N, 6, 2)
    assert rec["dropped_per_stage"] == {"share_keys": 1, "masked_input": 1}
    assert rec["round_id"] == bytes(range(16)).hex() and rec["ledger_head_sent"] == head0
    assert rec["protocol"] == protocol_summary(_protocol(plan)) and rec["transport"] == "x"
    assert rec["clip_norm"] == plan.clip_norm and rec["noise_units"] == NOISE_UNITS
    assert rec["mechanism"]["name"] == "distributed_discrete_gaussian"
    assert rec["mechanism"]["sigma_client"] == plan.sigma_client and rec["mechanism"]["dim"] == plan.padded_dim
    assert rec["noise_present"] == acct.noise.sigma_present
    assert rec["noise_guaranteed"] == acct.noise.sigma_guaranteed
    assert rec["epsilon"] == {"release": acct.privacy.release_epsilon, "server": acct.privacy.server_epsilon}
    # an auditor replaying the record's events gets the same figures
    replay = PrivacyTracker(1e-5).record_events(
        RoundEvents(event_from_dict(rec["events"]["release"]), event_from_dict(rec["events"]["server"]))
    )
    assert math.isclose(replay.server_epsilon, acct.privacy.server_epsilon, rel_tol=1e-12)
    assert math.isclose(replay.release_epsilon, acct.privacy.release_epsilon, rel_tol=1e-12)


def test_skellam_record_carries_mu() -> None:
    plan = _plan("skellam")
    acct = account_round(PrivacyTracker(1e-5), None, **_dp_args(plan))
    assert acct.record is None and acct.ledger_head is None and acct.privacy is not None
    acct2 = account_round(None, None, **_dp_args(plan))
    assert acct2.privacy is None and acct2.noise == plan.noise_report(6)


def test_budget_refusal_records_nothing(tmp_path: Path) -> None:
    plan = _plan()
    tracker = PrivacyTracker(1e-5, budget_epsilon=0.5)
    ledger = _ledger(tmp_path, tracker)
    before = (tmp_path / "l.jsonl").read_bytes()
    with pytest.raises(BudgetExceededError, match="nothing was recorded"):
        account_round(tracker, ledger, **_dp_args(plan))
    assert tracker.rounds == 0 and (tmp_path / "l.jsonl").read_bytes() == before
    assert ledger.head_for_clients().startswith("1:")


def test_check_budget_previews_and_refuses_per_adversary() -> None:
    noise = _plan().noise_report(5)  # the cohort floor: the worst round accepted
    assert check_budget(None, noise, round_index=0) is None
    free = PrivacyTracker(1e-5)
    figs = check_budget(free, noise, round_index=0, sampling_rate=0.1)
    assert figs == free.preview_round(round_privacy(noise, 0.1)) and free.rounds == 0
    assert figs is not None and figs.release_epsilon < figs.server_epsilon
    between = (figs.release_epsilon + figs.server_epsilon) / 2
    with pytest.raises(BudgetExceededError, match="5 survivors"):
        check_budget(PrivacyTracker(1e-5, budget_epsilon=between), noise, round_index=3, sampling_rate=0.1)
    release_only = PrivacyTracker(1e-5, budget_epsilon=between, budget_against="release")
    assert check_budget(release_only, noise, round_index=3, sampling_rate=0.1) == figs


def test_bad_extra_fields_record_nothing(tmp_path: Path) -> None:
    plan = _plan()
    tracker = PrivacyTracker(1e-5)
    ledger = _ledger(tmp_path, tracker)
    with pytest.raises(SecAggValueError, match="survivors"):
        account_round(tracker, ledger, **_dp_args(plan, extra={"survivors": 99}))
    with pytest.raises(LedgerError):
        account_round(tracker, ledger, **_dp_args(plan, extra={"blob": object()}))
    with pytest.raises(LedgerError):
        account_round(tracker, ledger, **_dp_args(plan, extra={"x": math.nan}))
    assert tracker.rounds == 0 and ledger.head_for_clients().startswith("1:")


def test_round_without_dp(tmp_path: Path) -> None:
    tracker = PrivacyTracker(1e-5)
    ledger = _ledger(tmp_path, tracker)
    lay = (ArraySpec("w", (10,), "float32"),)
    fedavg = build_spec(5, lay, FedAvgAggregation(bound=0.5, max_weight=16), neighbors="all", round_index=4)
    acct = account_round(tracker, ledger, fedavg, survivors=4, dropped={"masked_input": [2]}, total_weight=40)
    assert acct.privacy is None and acct.noise is None and tracker.rounds == 0
    _, records = read_ledger(tmp_path / "l.jsonl")
    rec = records[0]
    assert rec["round"] == 4 and rec["total_weight"] == 40 and rec["clip_norm"] == 0.5
    assert rec["mechanism"] == {"name": "none", "mode": "fedavg", "weighting": "example counts capped at max_weight",
                                "max_weight": 16}
    assert rec["epsilon"] == {"release": None, "server": None} and rec["noise_present"] == 0.0
    ints = build_spec(5, (ArraySpec("x", (10,), "int64"),), IntegerSum(8), neighbors="all")
    integer = account_round(None, None, ints, survivors=5, dropped={}, total_weight=5)
    assert integer.record is None and integer.privacy is None
    assert PlainRound("integer", 255.0, 5).mechanism() == {"name": "none", "mode": "integer"}


def test_inconsistent_arguments_are_refused() -> None:
    plan = _plan()
    tracker = PrivacyTracker(1e-5)
    with pytest.raises(SecAggValueError):  # a DP round weighs every survivor once
        account_round(tracker, None, **_dp_args(plan, total_weight=3))
    with pytest.raises(SecAggTypeError):  # the round is described by its spec only
        account_round(tracker, None, **_dp_args(plan, spec=plan))
    with pytest.raises(SecAggValueError):  # survivors outside [0, n]
        account_round(tracker, None, **_dp_args(plan, survivors=N + 1))
    with pytest.raises(SecAggTypeError):
        account_round(tracker, None, **_dp_args(plan, excluded=[1]))
    with pytest.raises(SecAggValueError, match="PrivacyTracker"):  # a DP ledger record needs epsilons
        account_round(None, object(), **_dp_args(plan))  # type: ignore[arg-type]
    assert tracker.rounds == 0


def test_module_imports_neither_torch_nor_flwr() -> None:
    code = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'flwr', 'opacus'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, B())\n"
        "import secagg.rounds\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(16, 64), n=st.integers(3, 12), seed=st.integers(0, 2**32 - 1))
def test_weighted_fedavg_vectors_sum_to_the_weighted_mean(bits: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    size, bound, cap = 9, 0.5, 20
    spec = build_spec(n, (ArraySpec("u", (size,), "float64"),), FedAvgAggregation(bound, cap, bits), neighbors="all")
    assert spec.encoder is not None
    updates = rng.uniform(-bound, bound, size=(n, size))
    weights = rng.integers(0, cap + 1, size=n)
    weights[0] = max(int(weights[0]), 1)
    total = np.zeros(size + 1, dtype=np.uint64)
    for u, w in zip(updates, weights, strict=True):
        vec = spec.encode(u, num_examples=int(w), rng=seed)
        assert vec.shape == (size + 1,) and int(vec[-1]) == w
        total = (total + vec.astype(np.uint64)) & np.uint64((1 << bits) - 1 if bits < 64 else 2**64 - 1)
    mean, weight = spec.decode(total.astype(vec.dtype), n)
    assert weight == int(weights.sum())
    want = (weights[:, None] * updates).sum(axis=0) / weight
    assert np.max(np.abs(mean - want)) <= 1.0 / spec.encoder.scale + 1e-12  # stochastic rounding: < 1 unit each


def test_weighted_fedavg_errors() -> None:
    spec = build_spec(4, (ArraySpec("u", (4,), "float64"),), FedAvgAggregation(1.0, 10, 16), neighbors="all")
    with pytest.raises(SecAggValueError, match="total weight is 0"):
        spec.decode(np.zeros(5, dtype=np.uint32), 4)
    with pytest.raises(HeadroomError):  # 2^20 clients of weight 2^20 cannot fit 32 bits
        fedavg_encoder(2**20, 32, 1.0, 2**20)


def test_ledger_header_describes_the_run(tmp_path: Path) -> None:
    plan = _plan()
    tracker = PrivacyTracker(1e-5, budget_epsilon=8.0)
    layout = {"size": 20}
    dp = ledger_header(tracker, planned_clients=N, dropout_fraction=0.25, corrupt_fraction=0.125, layout=layout,
                       plan=plan, population=100, extra={"transport": "test"})
    assert dp["accountant"] == "rdp" and dp["delta"] == 1e-5 and dp["budget"] == 8.0 and dp["population"] == 100
    assert dp["cohort_floor"] == plan.min_clients and dp["threat_model"]["colluders"] == plan.colluders
    assert DistributedPlan.from_dict(dp["dp"]) == plan and dp["transport"] == "test" and dp["layout"] == layout
    Ledger.create(tmp_path / "dp.jsonl", dp)
    plain = ledger_header(None, planned_clients=N, dropout_fraction=0.1, corrupt_fraction=0.0, layout=layout,
                          aggregation={"mode": "fedavg"}, delta=1e-6)
    assert plain["dp"] is None and plain["aggregation"] == {"mode": "fedavg"} and plain["accountant"] == "none"
    assert "budget" not in plain and "cohort_floor" not in plain
    Ledger.create(tmp_path / "plain.jsonl", plain)
    common: dict[str, Any] = {"planned_clients": N, "dropout_fraction": 0.1, "corrupt_fraction": 0.0,
                              "layout": layout}
    with pytest.raises(SecAggValueError, match="delta"):
        ledger_header(None, aggregation={}, **common)
    with pytest.raises(SecAggValueError):
        ledger_header(tracker, plan=plan, aggregation={}, **common)
    with pytest.raises(SecAggValueError):
        ledger_header(tracker, **common)
    with pytest.raises(SecAggValueError, match="delta"):
        ledger_header(tracker, plan=plan, extra={"delta": 0.5}, **common)


# ----------------------------------------------------------------------------- a round described by its spec

_LAYOUT = (ArraySpec("w", (4, 5), "float32"),)
_MODEL = {"w": np.zeros((4, 5), np.float32)}


def test_spec_round_record_names_the_spec(tmp_path: Path) -> None:
    tracker = PrivacyTracker(1e-5)
    ledger = _ledger(tmp_path, tracker)
    head0 = ledger.head_for_clients()
    spec = build_spec(N, _LAYOUT, DPAggregation(clip_norm=1.0, noise_multiplier=1.0, min_clients=5), round_index=3,
                      model=_MODEL, ledger_head=head0, neighbors="all", dropout_fraction=0.25, rng=1)
    acct = account_round(tracker, ledger, spec, survivors=6, dropped={"masked_input": [2, 7]},
                         excluded={7: "masked_input: truncated masked input"}, sampling_rate=0.5)
    assert spec.plan is not None and acct.noise == spec.plan.noise_report(6)
    _, records = read_ledger(tmp_path / "l.jsonl")
    rec = records[0]
    assert rec["spec"] == spec.fingerprint and rec["model_digest"] == spec.model_digest
    assert rec["round"] == 3 and rec["round_id"] == spec.round_id.hex() and rec["ledger_head_sent"] == head0
    assert rec["layout"] == spec.layout_fingerprint and rec["protocol"] == protocol_summary(spec.protocol)
    assert rec["excluded"] == {"7": "masked_input: truncated masked input"}
    assert rec["epsilon"]["server"] == acct.privacy.server_epsilon  # type: ignore[union-attr]
    assert verify_ledger(tmp_path / "l.jsonl", anchors=[head0]).ok


def test_spec_round_without_dp_records_the_revealed_weight(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, PrivacyTracker(1e-5))
    spec = build_spec(5, _LAYOUT, FedAvgAggregation(bound=0.5, max_weight=16), model=_MODEL, neighbors="all", rng=2)
    acct = account_round(None, ledger, spec, survivors=4, dropped={"masked_input": [2]}, total_weight=40)
    assert acct.privacy is None and acct.record is not None
    assert acct.record["total_weight"] == 40 and acct.record["clip_norm"] == 0.5
    assert acct.record["mechanism"]["max_weight"] == 16 and acct.record["spec"] == spec.fingerprint
    integer = build_spec(5, (ArraySpec("x", (3,), "int64"),), IntegerSum(16), neighbors="all", rng=3)
    rec = account_round(None, None, integer, survivors=5, dropped={}, total_weight=5)
    assert rec.record is None and rec.noise is None
    assert integer.model_digest is None


def test_spec_round_refuses_inconsistent_arguments(tmp_path: Path) -> None:
    tracker = PrivacyTracker(1e-5)
    ledger = _ledger(tmp_path, tracker)
    fed = build_spec(5, _LAYOUT, FedAvgAggregation(), neighbors="all", rng=4)
    dp_spec = build_spec(N, _LAYOUT, DPAggregation(clip_norm=1.0, noise_multiplier=1.0, min_clients=5),
                         neighbors="all", dropout_fraction=0.25, rng=5)
    with pytest.raises(SecAggValueError, match="total_weight"):
        account_round(tracker, ledger, fed, survivors=4, dropped={})
    with pytest.raises(SecAggValueError, match="total_weight"):
        account_round(tracker, ledger, dp_spec, survivors=6, dropped={}, total_weight=60)
    with pytest.raises(SecAggValueError):
        account_round(tracker, ledger, dp_spec, survivors=N + 1, dropped={})
    with pytest.raises(SecAggTypeError):
        account_round(tracker, ledger, dp_spec.to_dict(), survivors=6, dropped={})  # type: ignore[arg-type]
    with pytest.raises(SecAggTypeError):
        account_round(tracker, ledger, dp_spec, survivors=6, dropped={}, excluded=[7])  # type: ignore[arg-type]
    assert tracker.rounds == 0 and ledger.head_for_clients().startswith("1:")
