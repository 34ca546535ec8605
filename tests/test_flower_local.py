"""secagg.flower over an in-process grid (tests/_flower_deploy.LocalGrid): every message is
deflated/inflated as Flower ships it and each node's Context goes through protobuf between
messages, as on a SuperNode.  Fast tests of the server driver, the client handler, the
session persistence, the wire forms, accounting and the ledger."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from _flower_deploy import LocalGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from secagg.client import ClientSession, ClientState
from secagg.encoding import FixedPointEncoder
from secagg.errors import MessageError, ProtocolAbort, SecAggTypeError, SecAggValueError
from secagg.flower import (
    ClientPolicy,
    CountingGrid,
    LocalUpdate,
    SecAggConfig,
    SecAggFedAvg,
    SecAggServer,
    SecureRoundAbort,
    SecureRoundResult,
    StageReport,
    register,
)
from secagg.flower._codec import export_session, pack_payload, restore_session, unpack_payload
from secagg.messages import MaskedInput, Stage, decode_message
from secagg.spec import RoundSpec, make_config

STAGES = [s.value for s in Stage]
FAST = {"stage_timeout": 1.0, "poll_interval": 0.001}


def _ints(p: int, size: int, bits: int) -> np.ndarray:
    j = np.arange(size, dtype=np.int64)
    return ((p + 1) * 7919 + j * (2 * p + 3) * 104729) % (1 << bits)


def _delta(p: int, size: int) -> np.ndarray:
    j = np.arange(size)
    return 0.01 * (p + 1) * np.cos(j + p)


def _app(kind: str, bits: int = 32) -> ClientApp:
    """A ClientApp whose node p returns known integers / a known update with weight 10 (p + 1)."""
    app = ClientApp()

    def train(arrays: ArrayRecord, config: ConfigRecord, context: Context) -> Any:
        p = int(context.node_config["partition-id"])
        cur = {k: v.numpy() for k, v in arrays.items()}
        if kind == "integer":
            size = sum(a.size for a in cur.values())
            flat = _ints(p, size, bits)
            out, pos = {}, 0
            for k, a in cur.items():
                out[k] = flat[pos : pos + a.size].reshape(a.shape)
                pos += a.size
            return LocalUpdate(out, 1)
        size = sum(a.size for k, a in cur.items() if a.dtype.kind == "f")
        d = _delta(p, size)
        out, pos = {}, 0
        for k, a in cur.items():
            if a.dtype.kind == "f":
                out[k] = (a + d[pos : pos + a.size].reshape(a.shape)).astype(a.dtype)
                pos += a.size
            else:
                out[k] = a + 100  # not aggregated: must be ignored
        return out, 10 * (p + 1)

    register(app, train)
    return app


def run_secure_round(grid: Any, nodes: Any, arrays: Any, config: SecAggConfig, **kw: Any) -> SecureRoundResult:
    """One round with a fresh SecAggServer."""
    return SecAggServer(config).run_round(grid, nodes, arrays, **kw)


def _killer(grid: LocalGrid, plan: dict[str, list[int]]) -> Any:
    """on_stage hook: after stage S closes, the partitions in plan[S] go silent."""

    def hook(rep: StageReport) -> None:
        for p in plan.get(rep.stage, []):
            grid.kill(grid.node_ids[p])

    return hook


# ----------------------------------------------------------------------------- integer mode


def test_integer_round_gives_exact_sum_of_all_nodes() -> None:
    grid = LocalGrid(_app("integer", 16), 5)
    tmpl = {"a": np.zeros((3, 4), np.int64), "b": np.zeros(7, np.int32)}
    res = run_secure_round(grid, grid.get_node_ids(), tmpl, SecAggConfig(mode="integer", bits=16, **FAST))
    want = sum(_ints(p, 19, 16) for p in range(5)) % (1 << 16)
    got = np.concatenate([res.arrays["a"].numpy().ravel(), res.arrays["b"].numpy().ravel()])
    assert res.arrays["a"].numpy().shape == (3, 4)
    np.testing.assert_array_equal(got, want)
    assert res.survivors == tuple(grid.node_ids) and res.update is None
    assert all(v == () for v in res.dropped.values())
    assert grid.handled == 5 * 4  # one message per node and stage


@pytest.mark.parametrize(
    ("plan", "recovered"),
    [
        ({"advertise_keys": [2]}, []),  # silent from share_keys on: never shared keys
        ({"share_keys": [1]}, [1]),  # silent at masked input: its mask key is recovered
        ({"masked_input": [4]}, []),  # silent at unmasking: its input is in the sum
        ({"advertise_keys": [0], "share_keys": [3]}, [3]),
    ],
)
def test_integer_round_with_dropouts_sums_the_survivors(plan: dict[str, list[int]], recovered: list[int]) -> None:
    grid = LocalGrid(_app("integer", 20), 7)
    tmpl = {"x": np.zeros(33, np.int64)}
    cfg = SecAggConfig(mode="integer", bits=20, neighbors="all", threshold=4, **FAST)
    res = SecAggServer(cfg).run_round(grid, grid.get_node_ids(), tmpl, on_stage=_killer(grid, plan))
    survivors = [grid.partition_of(n) for n in res.survivors]
    dead_before_input = {p for s in ("advertise_keys", "share_keys") for p in plan.get(s, [])}
    assert set(survivors) == set(range(7)) - dead_before_input
    want = sum(_ints(p, 33, 20) for p in survivors) % (1 << 20)
    np.testing.assert_array_equal(res.arrays["x"].numpy(), want)
    assert sorted(grid.partition_of(n) for n in res.recovered) == recovered
    silent = {grid.partition_of(n) for v in res.dropped.values() for n in v}
    assert silent == {p for v in plan.values() for p in v}


# ----------------------------------------------------------------------------- fedavg mode


def test_fedavg_round_is_the_weighted_mean_within_encoder_resolution() -> None:
    grid = LocalGrid(_app("fedavg"), 5)
    g = {"w": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6), "steps": np.arange(3), "b": np.zeros(5)}
    cfg = SecAggConfig(mode="fedavg", bound=0.5, max_weight=100, neighbors="all", threshold=3, **FAST)
    res = SecAggServer(cfg).run_round(grid, grid.get_node_ids(), g, on_stage=_killer(grid, {"share_keys": [1]}))
    surv = [grid.partition_of(n) for n in res.survivors]
    assert surv == [0, 2, 3, 4]
    w = np.array([10.0 * (p + 1) for p in surv])
    want = sum(wi * _delta(p, 29) for wi, p in zip(w, surv, strict=True)) / w.sum()
    assert res.total_weight == int(w.sum())
    upd = np.concatenate([res.update["w"].numpy().ravel(), res.update["b"].numpy().ravel()])
    enc = FixedPointEncoder.fit(5, 32, 0.5, weights=[100] * 5)
    assert np.max(np.abs(upd - want)) <= 1.0 / enc.scale  # stochastic rounding: < 1 unit per coordinate
    assert np.all(np.abs(upd) <= 0.5)
    np.testing.assert_array_equal(res.arrays["steps"].numpy(), np.arange(3))  # int array untouched
    assert res.arrays["w"].numpy().dtype == np.float32
    np.testing.assert_allclose(res.arrays["w"].numpy(), g["w"] + res.update["w"].numpy(), atol=1e-6)


def test_fedavg_update_is_clipped_to_the_bound() -> None:
    app = ClientApp()
    register(app, lambda a, c, ctx: ({k: v.numpy() + 5.0 for k, v in a.items()}, 3))
    grid = LocalGrid(app, 3)
    res = run_secure_round(grid, grid.get_node_ids(), {"w": np.zeros(8)}, SecAggConfig(bound=0.25, **FAST))
    np.testing.assert_allclose(res.update["w"].numpy(), 0.25)


# ----------------------------------------------------------------------------- dp mode, ledger, accountant


def test_dp_round_feeds_the_tracker_and_ledger_records_the_dropouts(tmp_path: Any) -> None:
    from dp.ledger import Ledger, read_ledger, verify_ledger
    from dp.tracker import PrivacyTracker

    grid = LocalGrid(_app("dp"), 6)
    g = {"w": np.zeros(40, np.float32)}
    cfg = SecAggConfig(mode="dp", clip_norm=1.0, noise_multiplier=0.8, neighbors="all", threshold=3,
                       min_clients=3, **FAST)
    tracker = PrivacyTracker(delta=1e-5)
    probe = SecAggServer(cfg, tracker=tracker)
    ledger = Ledger.create(tmp_path / "ledger.jsonl", probe.ledger_header(6, g))
    server = SecAggServer(cfg, tracker=tracker, ledger=ledger)
    head0 = server.ledger_head
    res = server.run_round(grid, grid.get_node_ids(), g, on_stage=_killer(grid, {"advertise_keys": [5],
                                                                                    "share_keys": [0]}))
    assert len(res.survivors) == 4 and res.noise.shares_present == 4
    assert res.privacy is not None and 0 < res.privacy.release_epsilon <= res.privacy.server_epsilon
    assert np.all(np.isfinite(res.update["w"].numpy()))
    assert verify_ledger(tmp_path / "ledger.jsonl").ok
    header, rounds = read_ledger(tmp_path / "ledger.jsonl")
    assert header["transport"] == "flower" and len(rounds) == 1
    rec = rounds[0]
    assert rec["sampled"] == 6 and rec["survivors"] == 4 and rec["dropouts"] == 2
    assert rec["dropped_nodes"]["share_keys"] == [grid.node_ids[5]]
    assert rec["dropped_nodes"]["masked_input"] == [grid.node_ids[0]]
    assert rec["ledger_head_sent"] == head0 and res.ledger_head == server.ledger_head != head0
    assert rec["epsilon"]["server"] == pytest.approx(res.privacy.server_epsilon)
    assert rec["mechanism"]["name"] == "distributed_discrete_gaussian"
    assert rec["transport"] == "flower" and rec["survivor_nodes"] == list(res.survivors)
    assert rec["protocol"] == res.protocol and rec["protocol"]["n"] == 6
    assert rec["security_mode"] == res.security_mode == "semi-honest" and "member_nodes" not in rec
    # every node that took part keeps the ledger head it was shown (an anchor against truncation)
    kept = grid.context(grid.node_ids[1]).state.config_records["secagg.ledger-heads"]["values"]
    assert list(kept) == [head0]
    assert verify_ledger(tmp_path / "ledger.jsonl", anchors=list(kept)).ok


def test_dp_budget_is_checked_before_any_message_is_sent() -> None:
    from dp.errors import BudgetExceededError
    from dp.tracker import PrivacyTracker

    grid = CountingGrid(LocalGrid(_app("dp"), 4))
    tracker = PrivacyTracker(delta=1e-5, budget_epsilon=0.01)
    cfg = SecAggConfig(mode="dp", noise_multiplier=1.0, neighbors="all", min_clients=3, **FAST)  # type: ignore[arg-type]
    server = SecAggServer(cfg, tracker=tracker)
    with pytest.raises(BudgetExceededError, match="3 survivors"):  # the cohort floor: the worst accepted round
        server.run_round(grid, grid.get_node_ids(), {"w": np.zeros(8)})
    assert tracker.rounds == 0 and server.round_index == 0 and grid.sent == {}


def test_client_policy_refuses_too_little_noise() -> None:
    app = ClientApp()
    register(app, lambda a, c, ctx: (a, 1), policy=ClientPolicy(min_noise_multiplier=2.0))
    grid = LocalGrid(app, 4)
    cfg = SecAggConfig(mode="dp", noise_multiplier=1.0, min_clients=3, **FAST)
    with pytest.raises(SecureRoundAbort) as info:
        run_secure_round(grid, grid.get_node_ids(), {"w": np.zeros(8)}, cfg)
    assert info.value.stage == "advertise_keys"
    assert sorted(info.value.dropped["advertise_keys"]) == grid.node_ids
    # nothing is kept on a node that refused
    assert all("secagg.session" not in grid.context(n).state for n in grid.node_ids)


def test_client_policy_refuses_modes() -> None:
    app = ClientApp()
    register(app, lambda a, c, ctx: (a, 1), policy=ClientPolicy(require_dp=True))
    grid = LocalGrid(app, 3)
    with pytest.raises(SecureRoundAbort):
        run_secure_round(grid, grid.get_node_ids(), {"w": np.zeros(4)}, SecAggConfig(**FAST))
    with pytest.raises(SecAggValueError):
        ClientPolicy(modes=("fedsgd",))
    with pytest.raises(SecAggValueError):
        ClientPolicy(min_noise_multiplier=-1.0)


# ----------------------------------------------------------------------------- aborts and failures


def test_too_few_survivors_abort_and_notify_nodes() -> None:
    grid = LocalGrid(_app("integer"), 4)
    cfg = SecAggConfig(mode="integer", neighbors="all", **FAST)
    server = SecAggServer(cfg)
    with pytest.raises(SecureRoundAbort) as info:
        server.run_round(grid, grid.get_node_ids(), {"x": np.zeros(5, np.int64)},
                         on_stage=_killer(grid, {"advertise_keys": [0, 1]}))
    exc = info.value
    assert isinstance(exc, ProtocolAbort) and exc.excluded == {}
    assert exc.stage == "share_keys" and exc.nodes == tuple(grid.node_ids)
    assert sorted(exc.dropped["share_keys"]) == grid.node_ids  # 2 silent, 2 excluded (too few neighbours)
    assert server.round_index == 0 and server.last is None
    # the live nodes got the abort notice and forgot the round
    grid.pull_messages(list(grid._pending))
    for n in grid.node_ids[2:]:
        assert "secagg.session" not in grid.context(n).state
    # the server object keeps serving: a fresh cohort completes
    grid2 = LocalGrid(_app("integer"), 3)
    assert len(server.run_round(grid2, grid2.get_node_ids(), {"x": np.zeros(5, np.int64)}).survivors) == 3


def test_garbage_reply_excludes_that_node_and_the_round_goes_on() -> None:
    inner = _app("integer", 16)

    class Liar:
        def __call__(self, msg: Message, ctx: Context) -> Message:
            reply = inner(msg, ctx)
            stage = msg.content.config_records["secagg"]["stage"]
            if int(ctx.node_config["partition-id"]) == 2 and stage == "share_keys":
                reply.content.array_records["secagg.payload"] = pack_payload(b"SAgg\x01\x99junk")
            return reply

    grid = LocalGrid(Liar(), 7)
    cfg = SecAggConfig(mode="integer", bits=16, neighbors="all", threshold=4, **FAST)
    reports: list[StageReport] = []
    res = run_secure_round(grid, grid.get_node_ids(), {"x": np.zeros(9, np.int64)}, cfg, on_stage=reports.append)
    bad = grid.node_ids[2]
    assert list(res.excluded) == [bad] and "share_keys" in res.excluded[bad]
    assert bad not in res.dropped["share_keys"] and bad not in res.survivors  # excluded, not a dropout
    assert reports[1].excluded == res.excluded and reports[1].silent == () and bad not in reports[1].answered
    assert res.metrics()["secagg-excluded"] == 1 and res.metrics()["secagg-dropouts"] == 0
    want = sum(_ints(p, 9, 16) for p in (0, 1, 3, 4, 5, 6)) % (1 << 16)
    np.testing.assert_array_equal(res.arrays["x"].numpy(), want)


def _truncating(inner: Any, partition: int) -> Any:
    """A ClientApp whose node ``partition`` cuts its masked input short (the bytes the
    deployment test's example app sends with ``truncate-masked-input=1``)."""

    def app(msg: Message, ctx: Context) -> Message:
        reply = inner(msg, ctx)
        stage = msg.content.config_records["secagg"]["stage"]
        if int(ctx.node_config["partition-id"]) == partition and stage == "masked_input" and not reply.has_error():
            data = unpack_payload(reply.content.array_records["secagg.payload"])
            assert isinstance(decode_message(data), MaskedInput)
            reply.content.array_records["secagg.payload"] = pack_payload(data[: len(data) // 2])
        return reply

    return app


@pytest.mark.parametrize("mode", ["integer", "fedavg"])
def test_a_truncated_masked_input_excludes_that_node_and_the_others_complete(tmp_path: Any, mode: str) -> None:
    from dp.ledger import Ledger, read_ledger

    grid = LocalGrid(_truncating(_app(mode, 16), 3), 5)
    tmpl = {"x": np.zeros(40, np.int64 if mode == "integer" else np.float32)}
    cfg = SecAggConfig(mode=mode, bits=16 if mode == "integer" else 32, bound=0.5, max_weight=100,
                       neighbors="all", threshold=3, **FAST)  # fmt: skip
    ledger = Ledger.create(tmp_path / "l.jsonl", SecAggServer(cfg).ledger_header(5, tmpl, delta=1e-5))
    res = SecAggServer(cfg, ledger=ledger).run_round(grid, grid.node_ids, tmpl)
    bad = grid.node_ids[3]
    assert list(res.excluded) == [bad] and "masked_input" in res.excluded[bad]
    assert res.recovered == (bad,)  # its mask key is reconstructed, like a dropout's at that stage
    assert all(v == () for v in res.dropped.values())
    rest = [0, 1, 2, 4]
    assert [grid.partition_of(n) for n in res.survivors] == rest
    if mode == "integer":
        np.testing.assert_array_equal(res.arrays["x"].numpy(), sum(_ints(p, 40, 16) for p in rest) % (1 << 16))
    else:
        w = np.array([10.0 * (p + 1) for p in rest])
        want = sum(wi * _delta(p, 40) for wi, p in zip(w, rest, strict=True)) / w.sum()
        scale = FixedPointEncoder.fit(5, 32, 0.5, weights=[100] * 5).scale
        assert np.max(np.abs(res.update["x"].numpy() - want)) <= 1.0 / scale
    (rec,) = read_ledger(tmp_path / "l.jsonl")[1]
    assert rec["excluded"] == {str(bad): res.excluded[bad]} and rec["survivors"] == 4
    assert rec["spec"] == res.fingerprint and all(v == [] for v in rec["dropped_nodes"].values())


def test_train_fn_errors_make_the_node_silent() -> None:
    app = ClientApp()

    def train(a: ArrayRecord, c: ConfigRecord, ctx: Context) -> Any:
        p = int(ctx.node_config["partition-id"])
        cur = {k: v.numpy() for k, v in a.items()}
        if p == 0:
            return {"w": np.full(3, np.nan)}, 1  # NaN update: refused locally
        if p == 1:
            return {"v": np.zeros(3)}, 1  # wrong layout
        return {"w": cur["w"] + 0.1}, 1

    register(app, train)
    grid = LocalGrid(app, 6)
    res = run_secure_round(grid, grid.get_node_ids(), {"w": np.zeros(3)},
                           SecAggConfig(neighbors="all", threshold=3, **FAST))
    assert [grid.partition_of(n) for n in res.survivors] == [2, 3, 4, 5]
    scale = FixedPointEncoder.fit(6, 32, 1.0, weights=[1000] * 6).scale
    np.testing.assert_allclose(res.update["w"].numpy(), 0.1, atol=1.0 / scale)


def test_bad_arguments_are_typed() -> None:
    grid = LocalGrid(_app("integer"), 3)
    with pytest.raises(SecAggValueError):
        run_secure_round(grid, grid.node_ids[:2], {"x": np.zeros(2, np.int64)}, SecAggConfig(mode="integer"))
    with pytest.raises(SecAggValueError):
        run_secure_round(grid, [1, 1, 2], {"x": np.zeros(2, np.int64)}, SecAggConfig(mode="integer"))
    with pytest.raises(SecAggTypeError):
        run_secure_round(grid, grid.node_ids, [np.zeros(2)], SecAggConfig(mode="integer"))
    with pytest.raises(SecAggValueError):
        run_secure_round(grid, grid.node_ids, {"x": np.zeros(2)}, SecAggConfig(mode="integer"))  # floats
    for bad in ({"mode": "sum"}, {"bits": 1}, {"stage_timeout": 0}, {"neighbors": "some"},
                {"dropout_fraction": 1.0}, {"mechanism": "laplace"}, {"max_weight": 1.5}):
        with pytest.raises((SecAggValueError, SecAggTypeError)):
            SecAggConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(SecAggTypeError):
        SecAggServer(SecAggConfig(), ledger=object())
    with pytest.raises(SecAggValueError):
        SecAggServer(SecAggConfig(mode="dp"), ledger=type("L", (), {"append": 1, "head_for_clients": 1})())


# ----------------------------------------------------------------------------- the FedAvg strategy


def test_secagg_fedavg_strategy_runs_rounds() -> None:
    grid = LocalGrid(_app("fedavg"), 4)
    strategy = SecAggFedAvg(SecAggConfig(bound=0.5, neighbors="all", threshold=2, **FAST), fraction_evaluate=0.0)
    init = ArrayRecord({"w": Array(np.zeros(10, np.float32))})
    result = strategy.start(grid=grid, initial_arrays=init, num_rounds=2)
    assert len(strategy.results) == 2 and not strategy.aborts
    w = np.array([10.0, 20.0, 30.0, 40.0])
    step = sum(wi * _delta(p, 10) for p, wi in enumerate(w)) / w.sum()
    np.testing.assert_allclose(result.arrays["w"].numpy(), 2 * step, atol=1e-5)
    assert result.train_metrics_clientapp[2]["secagg-survivors"] == 4


def test_counting_grid_counts_each_node() -> None:
    grid = LocalGrid(_app("integer"), 3)
    counting = CountingGrid(grid)
    run_secure_round(counting, grid.node_ids, {"x": np.zeros(1000, np.int64)}, SecAggConfig(mode="integer", **FAST))
    assert set(counting.sent) == set(grid.node_ids) == set(counting.received)
    assert counting.sent == grid.sent and counting.received == grid.received
    assert all(v > 4000 for v in counting.received.values())  # the 1000 masked 32-bit values went up


# ----------------------------------------------------------------------------- wire forms


def test_payload_roundtrip_and_rejections() -> None:
    data = bytes(range(256)) * 3
    assert unpack_payload(pack_payload(data)) == data
    with pytest.raises(MessageError):
        unpack_payload(ArrayRecord({"bytes": Array(np.zeros(3, np.uint8))}))  # numpy stype
    with pytest.raises(MessageError):
        unpack_payload(ArrayRecord({"x": Array(dtype="uint8", shape=(1,), stype="secagg/bytes", data=b"a")}))
    with pytest.raises(MessageError):
        unpack_payload(ArrayRecord({"bytes": Array(dtype="uint8", shape=(5,), stype="secagg/bytes", data=b"a")}))
    with pytest.raises(SecAggTypeError):
        pack_payload("text")  # type: ignore[arg-type]


def _first_request(grid: LocalGrid, node: int, spec: RoundSpec, cid: int = 1) -> Message:
    ctl = ConfigRecord({"kind": "request", "stage": "advertise_keys", "round": spec.round_id.hex(), "cid": cid})
    return Message(RecordDict({"secagg": ctl, "secagg.payload": pack_payload(spec.to_bytes())}), node,
                   "train.secagg")  # fmt: skip


def test_a_replayed_first_message_is_refused_and_the_session_kept() -> None:
    grid = LocalGrid(_app("integer"), 3)
    node = grid.node_ids[0]
    spec = SecAggServer(SecAggConfig(mode="integer", neighbors="all")).plan_round(3, {"x": np.zeros(4, np.int64)})
    (first,) = grid.pull_messages(list(grid.push_messages([_first_request(grid, node, spec)])))
    assert not first.has_error()
    state = grid.context(node).state.config_records["secagg.session"]
    for _ in range(2):  # the server replays the key-advertisement request
        (again,) = grid.pull_messages(list(grid.push_messages([_first_request(grid, node, spec)])))
        assert again.has_error() and "already joined" in again.error.reason
    # no fresh session: the one in progress is untouched
    assert grid.context(node).state.config_records["secagg.session"] == state
    # and after the round is forgotten (finished or aborted), a replay is still refused
    ctx = grid.context(node)
    del ctx.state["secagg.session"]
    from flwr.common.serde import context_to_proto

    grid._contexts[node] = context_to_proto(ctx).SerializeToString()
    (late,) = grid.pull_messages(list(grid.push_messages([_first_request(grid, node, spec)])))
    assert late.has_error() and "already joined" in late.error.reason
    assert "secagg.session" not in grid.context(node).state


def test_a_journal_refuses_a_round_replayed_in_another_run(tmp_path: Any) -> None:
    from secagg.flower import SecAggClient

    journal = tmp_path / "joined.txt"
    spec = SecAggServer(SecAggConfig(mode="integer", neighbors="all")).plan_round(3, {"x": np.zeros(4, np.int64)})
    replies = []
    for _run in range(2):  # Flower keeps one context per run: the second run starts from an empty state
        app = ClientApp()
        app.train("secagg")(SecAggClient(lambda a, c, ctx: (a, 1), journal=journal))
        grid = LocalGrid(app, 3)
        (reply,) = grid.pull_messages(list(grid.push_messages([_first_request(grid, grid.node_ids[0], spec)])))
        replies.append(reply)
    assert not replies[0].has_error()
    assert replies[1].has_error() and "already joined" in replies[1].error.reason
    assert journal.read_text().split() == [spec.round_id.hex()]
    with pytest.raises(SecAggTypeError):
        SecAggClient(lambda a, c, ctx: (a, 1), journal=3)  # type: ignore[arg-type]


def test_a_node_sent_another_model_than_the_spec_names_refuses_to_train() -> None:
    trained: list[int] = []
    inner = _app("fedavg")

    def app(msg: Message, ctx: Context) -> Message:
        p = int(ctx.node_config["partition-id"])
        if msg.content.config_records["secagg"]["stage"] == "masked_input":
            if p == 1:  # the server hands this node a crafted model (Pasquini et al.)
                w = msg.content.array_records["arrays"]["w"].numpy().copy()
                w[0] = 7.0
                msg.content.array_records["arrays"] = ArrayRecord({"w": Array(w)})
            trained.append(p)
        return inner(msg, ctx)

    grid = LocalGrid(app, 5)
    res = run_secure_round(grid, grid.node_ids, {"w": np.zeros(6, np.float32)},
                           SecAggConfig(bound=0.5, neighbors="all", threshold=3, **FAST))  # fmt: skip
    assert res.dropped["masked_input"] == (grid.node_ids[1],)  # it refused: an error reply, silence
    assert "model digest" in res.errors[grid.node_ids[1]]
    assert [grid.partition_of(n) for n in res.survivors] == [0, 2, 3, 4]


def test_the_first_message_is_the_round_spec() -> None:
    seen: list[bytes] = []
    inner = _app("integer")

    def app(msg: Message, ctx: Context) -> Message:
        if msg.content.config_records["secagg"]["stage"] == "advertise_keys":
            seen.append(unpack_payload(msg.content.array_records["secagg.payload"]))
        return inner(msg, ctx)

    grid = LocalGrid(app, 3)
    res = run_secure_round(grid, grid.node_ids, {"x": np.zeros(4, np.int64)}, SecAggConfig(mode="integer", **FAST))
    assert len(set(seen)) == 1
    spec = RoundSpec.from_bytes(seen[0])
    assert spec.fingerprint == res.fingerprint and spec.round_id.hex() == res.round_id and spec.mode == "integer"
    assert spec.model_digest is not None


# ----------------------------------------------------------------------------- session persistence


def _sessions(n: int = 4) -> tuple[Any, list[ClientSession]]:
    from secagg.server import ServerSession

    cfg, _ = make_config(n, 6, 16, neighbors="all", threshold=2, rng=b"s" * 32)
    return ServerSession(cfg, auto_close=False), [ClientSession(cfg, i + 1, rng=bytes([i]) * 32) for i in range(n)]


def test_session_export_restore_at_every_stage_completes_the_round() -> None:
    server, clients = _sessions()
    vec = [np.full(6, i + 1, np.uint32) for i in range(4)]
    for c in clients:
        server.receive(c.start().encode())
    outbox = server.close_stage()
    while outbox:
        nxt = {}
        for cid, msg in outbox.items():
            data = export_session(clients[cid - 1])
            assert export_session(restore_session(data)) == data  # canonical
            clients[cid - 1] = restore_session(data)
            reply = clients[cid - 1].receive(msg.encode())
            if reply is None and clients[cid - 1].state is ClientState.AWAIT_INPUT:
                reply = clients[cid - 1].provide_input(vec[cid - 1])
            if reply is not None:
                server.receive(reply.encode())
        nxt = server.close_stage()
        outbox = nxt
    assert server.result is not None
    np.testing.assert_array_equal(server.result.aggregate, np.full(6, 10))


def test_session_export_is_the_client_sessions_own_state_and_refuses_bad_bytes() -> None:
    _, clients = _sessions()
    c = clients[0]
    c.start()
    c.provide_input(np.zeros(6, np.uint32))  # an early input is part of the (secret) state
    data = export_session(c)
    assert data == c.export_state() and export_session(restore_session(data)) == data
    assert restore_session(data).stage is c.stage
    with pytest.raises(SecAggTypeError):
        export_session(object())  # type: ignore[arg-type]
    good = export_session(clients[1])
    for broken in (b"", b"[]", b"{", good[:-1], good + b"\x00", good[:4] + b"\x09" + good[5:]):
        with pytest.raises(MessageError):
            restore_session(broken)


def test_client_refuses_a_stage_without_a_session() -> None:
    app = _app("integer")
    grid = LocalGrid(app, 3)
    ctl = ConfigRecord({"kind": "request", "stage": "share_keys", "round": "00" * 16, "cid": 1})
    msg = Message(RecordDict({"secagg": ctl,
                              "secagg.payload": pack_payload(b"SAgg")}), grid.node_ids[0], "train.secagg")
    ids = list(grid.push_messages([msg]))
    (reply,) = grid.pull_messages(ids)
    assert reply.has_error() and "no secagg session" in reply.error.reason
    msg2 = Message(RecordDict({"secagg": ConfigRecord({"stage": "share_keys"})}), grid.node_ids[0], "train.secagg")
    (reply2,) = grid.pull_messages(list(grid.push_messages([msg2])))
    assert reply2.has_error() and "malformed" in reply2.error.reason


def test_torch_model_updates_through_the_torch_adapter() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))

    app = ClientApp()

    def train(arrays: ArrayRecord, config: ConfigRecord, ctx: Context) -> LocalUpdate:
        model = make()
        model.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            model[0].weight.add_(0.05 * (int(ctx.node_config["partition-id"]) + 1))
        return LocalUpdate(model, 1)  # an nn.Module: state dict taken through secagg.torch

    register(app, train)
    grid = LocalGrid(app, 3)
    init = ArrayRecord(make().state_dict())
    res = run_secure_round(grid, grid.node_ids, init, SecAggConfig(**FAST))
    delta = res.arrays["0.weight"].numpy() - init["0.weight"].numpy()
    scale = FixedPointEncoder.fit(3, 32, 1.0, weights=[1000] * 3).scale
    np.testing.assert_allclose(delta, 0.1, atol=1.0 / scale + 1e-6)
    np.testing.assert_array_equal(res.arrays["1.num_batches_tracked"].numpy(), init["1.num_batches_tracked"].numpy())
    model = make()
    model.load_state_dict(res.arrays.to_torch_state_dict())  # composes with torch directly


def test_secagg_flower_without_flwr_says_how_to_install() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'flwr':\n"
        "            raise ModuleNotFoundError('blocked')\n"
        "sys.meta_path.insert(0, B())\n"
        "import secagg\n"
        "try:\n"
        "    import secagg.flower\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e.name, 'secagg[flower]' in str(e))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.split() == ["flwr", "True"], out.stderr


def test_a_reply_the_session_refuses_excludes_that_node_only() -> None:
    from secagg.messages import ShareKeys, decode_message

    inner = _app("integer", 16)

    class Cheat:
        def __call__(self, msg: Message, ctx: Context) -> Message:
            reply = inner(msg, ctx)
            stage = msg.content.config_records["secagg"]["stage"]
            if int(ctx.node_config["partition-id"]) == 1 and stage == "share_keys":
                sk = decode_message(unpack_payload(reply.content.array_records["secagg.payload"]))
                assert isinstance(sk, ShareKeys)
                bad = ShareKeys(sk.round_id, sk.sender, sk.shares[:-1])  # drops a neighbour's shares
                reply.content.array_records["secagg.payload"] = pack_payload(bad.encode())
            return reply

    grid = LocalGrid(Cheat(), 5)
    nodes = sorted(grid.get_node_ids())
    res = run_secure_round(grid, nodes, {"x": np.zeros(4, np.int64)},
                           SecAggConfig(mode="integer", neighbors="all", **FAST))  # fmt: skip
    assert len(res.survivors) == 4 and nodes[1] not in res.survivors
    assert list(res.excluded) == [nodes[1]] and all(v == () for v in res.dropped.values())


# ----------------------------------------------------------------------------- active mode (alliance)


def _alliance_files(
    tmp_path: Any, members: dict[int, int], outsiders: list[int]
) -> tuple[Any, dict[int, dict[str, str]]]:
    """Key files for partitions (``members``: partition -> member id; ``outsiders``: a key
    not in the alliance) and the alliance file; return (alliance, node configs)."""
    from secagg.identity import Alliance, IdentityKey

    keys = {p: IdentityKey.generate() for p in [*members, *outsiders]}
    alliance = Alliance({m: keys[p].public_bytes() for p, m in members.items()})
    (tmp_path / "alliance.json").write_text(alliance.to_json())
    configs = {}
    for p, k in keys.items():
        (tmp_path / f"node{p}.key").write_text(k.private_bytes().hex())
        configs[p] = {"identity-key": str(tmp_path / f"node{p}.key"), "alliance": str(tmp_path / "alliance.json")}
    return alliance, configs


def test_active_round_refuses_the_outsider_and_its_ledger_verifies_against_the_alliance(tmp_path: Any) -> None:
    from dp.ledger import Ledger, read_ledger
    from secagg.cli import main as cli
    from secagg.errors import SignatureError
    from secagg.rounds import verify_contributions

    members = {0: 3, 1: 1, 2: 2}  # partition -> member id (not the node order)
    alliance, configs = _alliance_files(tmp_path, members, [3])
    grid = LocalGrid(_app("integer", 16), 4, node_configs=configs)
    tmpl = {"x": np.zeros(21, np.int64)}
    cfg = SecAggConfig(mode="integer", bits=16, alliance=str(tmp_path / "alliance.json"), **FAST)
    assert cfg.alliance == alliance and cfg.security_mode == "active"
    probe = SecAggServer(cfg)
    ledger = Ledger.create(tmp_path / "ledger.jsonl", probe.ledger_header(3, tmpl, delta=1e-6))
    server = SecAggServer(cfg, ledger=ledger)
    res = server.run_round(grid, grid.get_node_ids(), tmpl)
    outsider = grid.node_ids[3]
    assert list(res.refused) == [outsider] and "not in the alliance" in res.refused[outsider]
    assert res.security_mode == "active"
    assert res.members == {m: grid.node_ids[p] for p, m in members.items()}
    assert sorted(grid.partition_of(n) for n in res.survivors) == [0, 1, 2]
    np.testing.assert_array_equal(res.arrays["x"].numpy(), sum(_ints(p, 21, 16) for p in range(3)) % (1 << 16))
    header, (rec,) = read_ledger(tmp_path / "ledger.jsonl")
    assert header["security_mode"] == "active"
    assert header["alliance"] == {"fingerprint": alliance.fingerprint, "members": 3}
    assert rec["security_mode"] == "active" and rec["refused_nodes"] == {str(outsider): res.refused[outsider]}
    assert rec["member_nodes"] == {str(m): n for m, n in sorted(res.members.items())}
    assert len(verify_contributions(rec, alliance)) == 3
    assert cli(["verify", str(tmp_path / "ledger.jsonl"), "--alliance", str(tmp_path / "alliance.json")]) == 0
    # one byte of one signature changed: the check fails
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    sig = rec["audit"]["advertisements"][0]["signature"]
    bad = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    (tmp_path / "bad.jsonl").write_text("\n".join([lines[0], lines[1].replace(sig, bad)]) + "\n")
    with pytest.raises(SignatureError):
        verify_contributions(json.loads(lines[1].replace(sig, bad)), alliance)
    assert cli(["verify", str(tmp_path / "bad.jsonl"), "--alliance", str(tmp_path / "alliance.json")]) != 0
    # a second round (5 stages in active mode) asks only the outsider to identify again: refused again
    handled = grid.handled
    res2 = server.run_round(grid, grid.get_node_ids(), tmpl)
    assert grid.handled - handled == 1 + 3 * 5 and list(res2.refused) == [outsider]


def test_active_mode_refusals_downgrade_and_missing_identity(tmp_path: Any) -> None:
    members = {0: 1, 1: 2, 2: 3}
    alliance, configs = _alliance_files(tmp_path, members, [])
    tmpl = {"x": np.zeros(5, np.int64)}
    # nodes with identities refuse a semi-honest round (a downgrade)
    grid = LocalGrid(_app("integer", 16), 3, node_configs=configs)
    with pytest.raises(SecureRoundAbort) as exc:
        run_secure_round(grid, grid.get_node_ids(), tmpl, SecAggConfig(mode="integer", bits=16, **FAST))
    assert len(exc.value.refused) == 3 and all("semi-honest" in r for r in exc.value.refused.values())
    # nodes without identities cannot identify: no active round
    plain = LocalGrid(_app("integer", 16), 3)
    with pytest.raises(SecureRoundAbort) as exc:
        run_secure_round(plain, plain.get_node_ids(), tmpl, SecAggConfig(mode="integer", bits=16, alliance=alliance,
                                                                          **FAST))
    assert len(exc.value.refused) == 3 and all("no alliance identity" in r for r in exc.value.refused.values())
    # member ids must be the protocol ids 1..N; identity and alliance go together
    with pytest.raises(SecAggValueError):
        SecAggConfig(alliance=type(alliance)({1: alliance[1], 2: alliance[2], 5: alliance[3]}))
    from secagg.flower import SecAggClient

    with pytest.raises(SecAggValueError):
        SecAggClient(lambda a, c, x: (a, 1), alliance=alliance)


def test_active_round_with_a_member_absent_runs_without_it(tmp_path: Any) -> None:
    """A member with no node in the cohort (not sampled, offline) is silent from the start:
    it counts against the dropout tolerance, the others' round completes and verifies."""
    from dp.ledger import Ledger, read_ledger
    from secagg.rounds import verify_contributions

    alliance, configs = _alliance_files(tmp_path, {p: p + 1 for p in range(5)}, [])
    grid = LocalGrid(_app("integer", 16), 5, node_configs=configs)
    tmpl = {"x": np.zeros(9, np.int64)}
    cfg = SecAggConfig(mode="integer", bits=16, alliance=alliance, dropout_fraction=0.2, **FAST)
    ledger = Ledger.create(tmp_path / "ledger.jsonl", SecAggServer(cfg).ledger_header(5, tmpl, delta=1e-6))
    res = SecAggServer(cfg, ledger=ledger).run_round(grid, grid.node_ids[1:], tmpl)  # member 1 not sampled
    assert sorted(res.members) == [2, 3, 4, 5] and not res.refused
    assert res.survivors == tuple(grid.node_ids[1:]) and res.protocol["n"] == 5
    np.testing.assert_array_equal(res.arrays["x"].numpy(), sum(_ints(p, 9, 16) for p in range(1, 5)) % (1 << 16))
    _, (rec,) = read_ledger(tmp_path / "ledger.jsonl")
    assert [c.client for c in verify_contributions(rec, alliance)] == [2, 3, 4, 5]
    assert rec["sampled"] == 5 and rec["survivors"] == 4 and rec["dropouts"] == 1, rec
    assert rec["absent_members"] == [1] and rec["member_nodes"] == {str(p + 1): grid.node_ids[p] for p in range(1, 5)}
