"""SecAggFedAvg as a complete Flower strategy, over the in-process grid
(tests/_flower_deploy.LocalGrid): DP needs a tracker, node sampling matches the
accounting, too few nodes is an error at once, federated evaluation (secure and clear),
a server optimiser fed the secure aggregate, adaptive clipping accounted in the round's
own event, and refusing nodes named with their reasons."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from _flower_deploy import LocalGrid
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAdam, FedAvgM

from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.flower import ClientPolicy, SecAggClient, SecAggConfig, SecAggFedAvg, SecAggServer, register

FAST = {"stage_timeout": 1.0, "poll_interval": 0.001}


def _delta(p: int, size: int, scale: float = 0.01) -> np.ndarray:
    return scale * (p + 1) * np.cos(np.arange(size) + p)


def _train(scale: float = 0.01) -> Any:
    def train(arrays: ArrayRecord, config: ConfigRecord, context: Context) -> Any:
        p = int(context.node_config["partition-id"])
        cur = {k: v.numpy() for k, v in arrays.items()}
        size = sum(a.size for a in cur.values())
        d, out, pos = _delta(p, size, scale), {}, 0
        for k, a in cur.items():
            out[k] = (a + d[pos : pos + a.size].reshape(a.shape)).astype(a.dtype)
            pos += a.size
        return out, 10 * (p + 1)

    return train


def _evaluate(arrays: ArrayRecord, config: ConfigRecord, context: Context) -> tuple[dict[str, float], int]:
    p = int(context.node_config["partition-id"])
    return {"loss": 1.0 + p, "accuracy": 0.1 * p}, 10 * (p + 1)


def _app(scale: float = 0.01, *, evaluate: bool = True) -> ClientApp:
    app = ClientApp()
    register(app, _train(scale), evaluate_fn=_evaluate if evaluate else None)

    @app.evaluate()
    def clear_eval(message: Message, context: Context) -> Message:
        metrics, n = _evaluate(message.content.array_records["arrays"], ConfigRecord(), context)
        return Message(RecordDict({"metrics": MetricRecord({**metrics, "num-examples": n})}), reply_to=message)

    return app


def _initial() -> ArrayRecord:
    from flwr.app import Array

    return ArrayRecord({"w": Array(np.zeros(12, np.float32)), "b": Array(np.zeros(4, np.float32))})


def _tracker() -> Any:
    from dp.tracker import PrivacyTracker

    return PrivacyTracker(delta=1e-5)


# ----------------------------------------------------------------------------- construction


def test_dp_mode_without_a_tracker_is_refused_at_construction() -> None:
    with pytest.raises(SecAggValueError, match="tracker"):
        SecAggFedAvg(mode="dp")
    with pytest.raises(SecAggValueError, match="tracker"):
        SecAggFedAvg(SecAggConfig(mode="dp"))
    with pytest.raises(SecAggValueError, match="tracker"):
        SecAggFedAvg(SecAggServer(SecAggConfig(mode="dp")))
    SecAggFedAvg(mode="dp", tracker=_tracker())  # with one it is fine


def test_sampling_must_match_the_accounting() -> None:
    # dp: fixed-size sampling of a fraction is refused (the tracker accounts Poisson sampling)
    with pytest.raises(SecAggValueError, match="Poisson"):
        SecAggFedAvg(mode="dp", tracker=_tracker(), sampling="fixed", fraction_train=0.5)
    # a config claiming another rate than the strategy samples with
    with pytest.raises(SecAggValueError, match="must agree"):
        SecAggFedAvg(SecAggConfig(mode="dp", sampling_rate=0.3), tracker=_tracker(), fraction_train=0.5)
    # fixed-size sampling never claims a Poisson rate
    with pytest.raises(SecAggValueError, match="sampling_rate"):
        SecAggFedAvg(SecAggConfig(sampling_rate=0.3), sampling="fixed")
    s = SecAggFedAvg(mode="dp", tracker=_tracker(), fraction_train=0.5)
    assert s.sampling == "poisson" and s.secagg.config.sampling_rate == 0.5
    assert "Poisson" in s.sampling_description()
    s = SecAggFedAvg(mode="dp", tracker=_tracker(), sampling="fixed", fraction_train=1.0)
    assert s.secagg.config.sampling_rate is None
    assert SecAggFedAvg().sampling == "fixed"


def test_bad_strategy_arguments_are_typed() -> None:
    with pytest.raises(SecAggValueError):
        SecAggFedAvg(min_train_nodes=2)
    with pytest.raises(SecAggTypeError):
        SecAggFedAvg(optimizer=object())  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError):
        SecAggFedAvg(evaluate="maybe")
    with pytest.raises(SecAggValueError):
        SecAggFedAvg(SecAggServer(SecAggConfig()), tracker=_tracker())


# ----------------------------------------------------------------------------- too few nodes


def test_too_few_nodes_is_a_clear_error_at_once_not_a_hang() -> None:
    grid = LocalGrid(_app(), 2)  # Flower's default local simulation: 2 virtual nodes
    strategy = SecAggFedAvg(SecAggConfig(**FAST), node_wait=0.5)
    t0 = time.monotonic()
    with pytest.raises(SecAggValueError, match=r"at least 3 connected nodes.*2 connected.*num-supernodes"):
        strategy.start(grid, _initial(), num_rounds=1)
    assert time.monotonic() - t0 < 5.0
    assert grid.handled == 0  # nothing was sent


# ----------------------------------------------------------------------------- dp: Poisson, ledger


def test_dp_poisson_sampling_is_what_the_tracker_and_ledger_record(tmp_path: Any) -> None:
    from dp.events import PoissonSampledEvent
    from dp.ledger import read_ledger, verify_ledger

    grid = LocalGrid(_app(), 10)
    tracker = _tracker()
    cfg = SecAggConfig(mode="dp", clip_norm=1.0, noise_multiplier=0.8, neighbors="all", min_clients=3, **FAST)
    strategy = SecAggFedAvg(cfg, tracker=tracker, ledger=tmp_path / "ledger.jsonl", fraction_train=0.6,
                            evaluate="none", rng=b"poisson-test-seed")
    strategy.start(grid, _initial(), num_rounds=3)
    done = strategy.results
    assert len(done) + len(strategy.skipped) == 3 and done
    sizes = {len(r.nodes) for r in done}
    assert all(3 <= n <= 10 for n in sizes)
    for ev in tracker.events:
        assert isinstance(ev.release, PoissonSampledEvent) and ev.release.sampling_rate == 0.6
    assert verify_ledger(tmp_path / "ledger.jsonl").ok
    header, records = read_ledger(tmp_path / "ledger.jsonl")
    assert "Poisson" in header["sampling"] and len(records) == len(done)
    assert [r["sampled"] for r in records] == [len(r.nodes) for r in done]
    rep = strategy.report()
    assert rep["epsilon"]["server"]["epsilon"] >= rep["epsilon"]["release"]["epsilon"] > 0
    assert "server" in rep["epsilon"]["server"]["against"] and "released" in rep["epsilon"]["release"]["against"]


def test_a_ledger_path_without_dp_records_every_round(tmp_path: Any) -> None:
    from dp.ledger import read_ledger, verify_ledger

    strategy = SecAggFedAvg(SecAggConfig(mode="fedavg", bound=0.5, **FAST), ledger=tmp_path / "plain.jsonl",
                            evaluate="none")  # fmt: skip
    strategy.start(LocalGrid(_app(), 4), _initial(), num_rounds=2)
    assert verify_ledger(tmp_path / "plain.jsonl").ok
    _, records = read_ledger(tmp_path / "plain.jsonl")
    assert [r["survivors"] for r in records] == [4, 4] and records[0]["mechanism"]["name"] == "none"


# ----------------------------------------------------------------------------- server optimiser


class _Nodes:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))



def test_a_server_optimiser_is_fed_the_secure_aggregate() -> None:
    grid = LocalGrid(_app(), 4)
    cfg = SecAggConfig(mode="fedavg", bound=0.5, max_weight=100, **FAST)
    adam = SecAggFedAvg(cfg, evaluate="none", optimizer=FedAdam(eta=0.05, tau=1e-3))
    r_adam = adam.start(grid, _initial(), num_rounds=1)
    (res,) = adam.results
    avg = np.concatenate([res.arrays[k].numpy() for k in ("w", "b")])  # the secure FedAvg aggregate
    got = np.concatenate([r_adam.arrays[k].numpy() for k in ("w", "b")])
    # a fresh FedAdam given that aggregate as the round's one reply
    ref = FedAdam(eta=0.05, tau=1e-3)
    ref.configure_train(1, _initial(), ConfigRecord(), _Nodes(2))  # type: ignore[arg-type]
    reply = Message(RecordDict({"arrays": res.arrays, "metrics": MetricRecord({"num-examples": 1})}),
                    dst_node_id=0, message_type="train")  # fmt: skip
    want_rec, _ = ref.aggregate_train(1, [reply])
    assert want_rec is not None
    want = np.concatenate([want_rec[k].numpy() for k in ("w", "b")])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert r_adam.arrays["w"].numpy().dtype == np.float32
    assert not np.allclose(got, avg, atol=1e-4)  # Adam's step, not the average
    assert np.all(np.sign(got[np.abs(avg) > 1e-3]) == np.sign(avg[np.abs(avg) > 1e-3]))

    mom = SecAggFedAvg(cfg, evaluate="none", optimizer=FedAvgM(server_momentum=0.9))
    r_mom = mom.start(LocalGrid(_app(), 4), _initial(), num_rounds=2)
    assert len(mom.results) == 2 and np.all(np.isfinite(r_mom.arrays["w"].numpy()))


# ----------------------------------------------------------------------------- adaptive clipping


def test_adaptive_clipping_moves_the_clip_towards_the_quantile_and_is_accounted(tmp_path: Any) -> None:
    from dp.clipping import AdaptiveClipper
    from dp.ledger import read_ledger

    # every update has norm ~ 0.1..0.4, far above C=0.005: nearly all clipped, so C grows
    grid = LocalGrid(_app(scale=0.1), 6)
    tracker = _tracker()
    cfg = SecAggConfig(mode="dp", noise_multiplier=0.3, neighbors="all", min_clients=4, **FAST)
    clipper = AdaptiveClipper(clip_norm=0.005, target_quantile=0.5, learning_rate=0.5)
    strategy = SecAggFedAvg(cfg, tracker=tracker, clipper=clipper, ledger=tmp_path / "l.jsonl", evaluate="none")
    strategy.start(grid, _initial(), num_rounds=2)
    r1, r2 = strategy.results
    assert r1.clip_norm == pytest.approx(0.005)
    assert r1.unclipped_fraction is not None and r1.unclipped_fraction < 0.5
    assert r2.clip_norm is not None and r2.clip_norm > r1.clip_norm
    assert strategy.secagg.clipper.clip_norm > r2.clip_norm and strategy.secagg.clipper.rounds == 2
    # the indicator is not a model array, and the round is one event per adversary
    assert set(r1.update.keys()) == {"w", "b"} and len(tracker.events) == 2
    _, records = read_ledger(tmp_path / "l.jsonl")
    assert records[0]["adaptive_clipping"]["clip_norm"] == pytest.approx(0.005)
    assert records[0]["clip_norm"] == pytest.approx(0.005 * np.sqrt(1.25))  # the joint vector's L2 clip
    assert "secagg-clip-norm" in r1.metrics()

    with pytest.raises(SecAggValueError, match="count_stddev"):
        SecAggFedAvg(cfg, tracker=_tracker(), clipper=AdaptiveClipper(clip_norm=1.0, count_stddev=1.0))
    with pytest.raises(SecAggValueError, match="dp"):
        SecAggFedAvg(SecAggConfig(), clipper=AdaptiveClipper(clip_norm=1.0))


# ----------------------------------------------------------------------------- evaluation


def test_secure_federated_evaluation_reveals_only_the_weighted_means() -> None:
    grid = LocalGrid(_app(), 5)
    strategy = SecAggFedAvg(SecAggConfig(mode="fedavg", bound=0.5, **FAST), evaluate="secure",
                            evaluate_metrics=("loss", "accuracy"))  # fmt: skip
    result = strategy.start(grid, _initial(), num_rounds=1)
    got = result.evaluate_metrics_clientapp[1]
    w = np.array([10.0 * (p + 1) for p in range(5)])
    assert got["secagg-eval-secure"] == 1 and got["num-examples"] == int(w.sum())
    assert got["loss"] == pytest.approx(float(np.dot(w, 1.0 + np.arange(5)) / w.sum()), abs=1e-6)
    assert got["accuracy"] == pytest.approx(float(np.dot(w, 0.1 * np.arange(5)) / w.sum()), abs=1e-6)
    assert "secure" in strategy.report()["evaluation"]
    # no evaluate message was sent in the clear: every message was a secagg stage
    assert grid.handled == 2 * 5 * 4


def test_clear_federated_evaluation_is_flowers_and_says_so() -> None:
    grid = LocalGrid(_app(), 4)
    strategy = SecAggFedAvg(SecAggConfig(mode="fedavg", bound=0.5, **FAST), evaluate="clear")
    result = strategy.start(grid, _initial(), num_rounds=1)
    got = result.evaluate_metrics_clientapp[1]
    assert got["secagg-eval-secure"] == 0
    w = np.array([10.0 * (p + 1) for p in range(4)])
    assert got["loss"] == pytest.approx(float(np.dot(w, 1.0 + np.arange(4)) / w.sum()))
    assert "in the clear" in strategy.report()["evaluation"]


def test_a_node_without_evaluate_fn_refuses_a_secure_evaluation_and_is_named() -> None:
    grid = LocalGrid(_app(evaluate=False), 4)
    strategy = SecAggFedAvg(SecAggConfig(mode="fedavg", bound=0.5, **FAST), evaluate="secure")
    result = strategy.start(grid, _initial(), num_rounds=1)
    assert 1 not in result.evaluate_metrics_clientapp
    (abort,) = strategy.aborts
    assert "no evaluate_fn" in str(abort) and len(abort.refused) == 4


# ----------------------------------------------------------------------------- refusals


def _picky_app(refusing: set[int]) -> ClientApp:
    """Nodes whose partition is in ``refusing`` take part in dp rounds only."""
    app = ClientApp()
    ok = SecAggClient(_train())
    picky = SecAggClient(_train(), policy=ClientPolicy(require_dp=True))

    @app.train("secagg")
    def handler(message: Message, context: Context) -> Message:
        p = int(context.node_config["partition-id"])
        return (picky if p in refusing else ok)(message, context)  # type: ignore[no-any-return]

    return app


def test_a_refusing_node_tells_the_server_why_and_the_result_names_it() -> None:
    grid = LocalGrid(_picky_app({1}), 5)
    strategy = SecAggFedAvg(SecAggConfig(mode="fedavg", bound=0.5, neighbors="all", threshold=3, **FAST),
                            evaluate="none")  # fmt: skip
    strategy.start(grid, _initial(), num_rounds=1)
    (res,) = strategy.results
    bad = grid.node_ids[1]
    assert list(res.refused) == [bad] and "only takes part in dp rounds" in res.refused[bad]
    assert bad not in res.survivors and res.metrics()["secagg-refused"] == 1
    assert res.to_dict()["refused"] == {str(bad): res.refused[bad]}
    assert strategy.report()["refused"] == {str(bad): res.refused[bad]}


def test_when_refusals_abort_a_round_the_abort_names_them() -> None:
    grid = LocalGrid(_picky_app({0, 2}), 4)
    strategy = SecAggFedAvg(SecAggConfig(mode="fedavg", bound=0.5, neighbors="all", threshold=3, **FAST),
                            evaluate="none")  # fmt: skip
    strategy.start(grid, _initial(), num_rounds=1)
    (abort,) = strategy.aborts
    assert sorted(abort.refused) == [grid.node_ids[0], grid.node_ids[2]]
    assert f"node {grid.node_ids[0]}: RemoteProtocolError: this client only takes part in dp rounds" in str(abort)
