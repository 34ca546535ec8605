"""The torch adapter: secure rounds over a real small model equal plaintext aggregation
within the encoder's bounds; bad updates are rejected and count as dropouts; the server
never holds an individual update."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")

import numpy as np
import torch
from torch import nn

from secagg.errors import HeadroomError, ProtocolAbort, SecAggTypeError, SecAggValueError
from secagg.packing import pack
from secagg.torch.adapter import (
    FedAvgAggregation,
    LocalResult,
    SecureClient,
    SecureServer,
    run_round,
)
from secagg.torch.flatten import UpdateLayout

torch.set_num_threads(1)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _train(client: int, model: nn.Module) -> int:
    """Deterministic per client: a few SGD steps on client-specific data; returns examples."""
    gen = torch.Generator().manual_seed(100 + client)
    x = torch.randn(8 + client, 5, generator=gen)
    y = torch.randint(0, 3, (8 + client,), generator=gen)
    for _ in range(3):
        model.zero_grad()
        torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
        with torch.no_grad():
            for p in model.parameters():
                assert p.grad is not None
                p.add_(p.grad, alpha=-0.1)
    return 8 + client


def _plain_fedavg(global_model: nn.Module, clients: list[int]) -> dict[str, torch.Tensor]:
    """Plaintext weighted FedAvg of the deltas (float64)."""
    base = {k: v.double() for k, v in global_model.state_dict().items()}
    acc = {k: torch.zeros_like(v) for k, v in base.items()}
    total = 0
    for c in clients:
        local = copy.deepcopy(global_model)
        w = _train(c, local)
        total += w
        for k, v in local.state_dict().items():
            acc[k] += w * (v.double() - base[k])
    return {k: base[k] + acc[k] / total for k in base}


def _max_err(model: nn.Module, want: dict[str, torch.Tensor]) -> float:
    return max(float((v.double() - want[k]).abs().max()) for k, v in model.state_dict().items())


def test_fedavg_round_equals_plaintext_within_encoder_bound() -> None:
    g = _model()
    clients = list(range(1, 7))
    want = _plain_fedavg(g, clients)
    server = SecureServer(
        UpdateLayout.from_module(g),
        FedAvgAggregation(bound=1.0, max_weight=64),
        neighbors="all",
        dropout_fraction=0.3,
        rng=1,
    )
    rep = run_round(g, clients, _train, server=server, rng=2)
    assert rep.update.survivors == tuple(range(1, 7))
    assert rep.update.total_weight == sum(8 + c for c in clients)  # revealed by design
    assert all(o.status == "survived" for o in rep.clients)
    scale = rep.config.encoder.scale  # type: ignore[union-attr]
    # each weighted rounding error is below w_i / scale, so the weighted mean is within 1/scale;
    # plus float32 storage of the parameters.
    bound = 1.0 / scale + 1e-6
    assert _max_err(g, want) <= bound
    assert rep.bytes_up["masked_input"] > 0 and rep.secure_overhead_seconds >= 0


def test_dropouts_and_rejected_updates_count_as_dropouts() -> None:
    g = _model()
    clients = list(range(1, 11))

    def train(client: int, model: nn.Module) -> int:
        n = _train(client, model)
        with torch.no_grad():
            first, last = model.get_submodule("0"), model.get_submodule("2")
            assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
            if client == 3:
                first.bias[1] = float("nan")
            if client == 5:
                last.weight[0, 0] = float("inf")
        return n

    server = SecureServer(
        UpdateLayout.from_module(g),
        FedAvgAggregation(bound=1.0, max_weight=64),
        neighbors="all",
        dropout_fraction=0.4,
        rng=3,
    )
    rep = run_round(g, clients, train, server=server, dropouts={"share_keys": [2], "unmasking": [7]}, rng=4)
    assert set(rep.rejected) == {3, 5}
    assert "client 3" in rep.rejected[3] and "'0.bias'" in rep.rejected[3]
    assert "client 5" in rep.rejected[5] and "'2.weight'" in rep.rejected[5]
    status = {o.client: o.status for o in rep.clients}
    assert status == {
        1: "survived",
        2: "dropped",
        3: "rejected",
        4: "survived",
        5: "rejected",
        6: "survived",
        7: "survived",
        8: "survived",
        9: "survived",
        10: "survived",
    }  # 7 dropped only at unmasking: its input is in the sum
    survivors = [c for c in clients if c not in (2, 3, 5)]
    want = _plain_fedavg(_model(), survivors)
    assert rep.update.survivors == tuple(sorted(survivors))
    assert _max_err(g, want) <= 1.0 / rep.config.encoder.scale + 1e-6  # type: ignore[union-attr]


def test_wrong_architecture_is_rejected_naming_tensor() -> None:
    g = _model()

    def train(client: int, model: nn.Module) -> int | LocalResult:
        n = _train(client, model)
        if client == 2:
            other = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
            return LocalResult(n, model=other)
        return n

    server = SecureServer(
        UpdateLayout.from_module(g), FedAvgAggregation(max_weight=64), neighbors="all", dropout_fraction=0.3, rng=5
    )
    rep = run_round(g, [1, 2, 3, 4], train, server=server, rng=6)
    assert list(rep.rejected) == [2]
    assert "'0.bias'" in rep.rejected[2] and "shape" in rep.rejected[2]
    assert rep.update.survivors == (1, 3, 4)


def test_too_few_survivors_abort_leaves_model_unchanged() -> None:
    g = _model()
    before = copy.deepcopy(g.state_dict())
    server = SecureServer(
        UpdateLayout.from_module(g), FedAvgAggregation(max_weight=64), neighbors="all", dropout_fraction=0.3, rng=7
    )
    with pytest.raises(ProtocolAbort):
        run_round(g, [1, 2, 3], _train, server=server, dropouts={"masked_input": [1, 2]}, rng=8)
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())


def test_headroom_checked_before_anything_is_encoded() -> None:
    g = _model()
    server = SecureServer(
        UpdateLayout.from_module(g),
        FedAvgAggregation(max_weight=2**20, bits=16),
        neighbors="all",
        dropout_fraction=0.3,
        rng=9,
    )
    with pytest.raises(HeadroomError):
        server.new_round(5)
    assert server.config is None


def test_client_checks_layout_and_server_accepts_only_messages() -> None:
    g = _model()
    lay = UpdateLayout.from_module(g)
    server = SecureServer(lay, FedAvgAggregation(max_weight=64), neighbors="all", dropout_fraction=0.3, rng=10)
    cfg = server.new_round(3)
    other = UpdateLayout.from_module(g, trainable_only=False, include_buffers=True)
    assert other == lay  # same tensors for this model...
    half = UpdateLayout.from_module(copy.deepcopy(g).half())
    with pytest.raises(SecAggValueError):  # ...but a half-precision client does not match
        SecureClient(cfg, 1, half)
    with pytest.raises(SecAggTypeError):
        server.receive(np.zeros(cfg.protocol.d, dtype=np.uint32))  # type: ignore[arg-type]
    with pytest.raises(SecAggTypeError):
        server.receive(g.state_dict())  # type: ignore[arg-type]


def _reachable(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[Any]:
    """Every object reachable from ``obj`` through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, (str, int, float, bool, type(None), type)) or (callable(obj) and not hasattr(obj, "__dict__")):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _reachable(k, depth + 1, seen)
            yield from _reachable(v, depth + 1, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from _reachable(v, depth + 1, seen)
    if hasattr(obj, "__dict__") and not isinstance(obj, (np.ndarray, torch.Tensor, nn.Module)):
        yield from _reachable(vars(obj), depth + 1, seen)
    if hasattr(obj, "__slots__"):
        for s in obj.__slots__:
            if hasattr(obj, s):
                yield from _reachable(getattr(obj, s), depth + 1, seen)


def test_server_never_holds_an_individual_update(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _model()
    lay = UpdateLayout.from_module(g)
    server = SecureServer(
        lay, FedAvgAggregation(bound=1.0, max_weight=64), neighbors="all", dropout_fraction=0.3, rng=11
    )
    individual: list[np.ndarray] = []  # every client's float update and its unmasked encoding
    packed: list[bytes] = []
    inputs: list[type] = []

    real_encode = SecureClient.encode

    def spy_encode(self: SecureClient, update: Any, **kw: Any) -> Any:
        state = self._state(update)
        individual.append(lay.flatten_delta(state, kw["base"], dtype=np.float64).copy())
        ring = real_encode(self, update, **kw)
        individual.append(ring.copy())
        packed.append(pack(ring, self._config.protocol.bits))
        return ring

    real_receive = SecureServer.receive
    real_close = SecureServer.close_stage

    def check_server() -> None:
        for o in _reachable(server):
            if isinstance(o, torch.Tensor):
                o = o.detach().numpy()
            if isinstance(o, np.ndarray):
                for v in individual:
                    assert not (o.shape == v.shape and np.array_equal(o, v)), "server holds an individual update"
            if isinstance(o, (bytes, bytearray, memoryview)):
                assert bytes(o) not in packed, "server holds an unmasked encoding"

    def spy_receive(self: SecureServer, message: Any, **kw: Any) -> Any:
        inputs.append(type(message))
        out = real_receive(self, message, **kw)
        check_server()
        return out

    def spy_close(self: SecureServer) -> Any:
        out = real_close(self)
        check_server()
        return out

    monkeypatch.setattr(SecureClient, "encode", spy_encode)
    monkeypatch.setattr(SecureServer, "receive", spy_receive)
    monkeypatch.setattr(SecureServer, "close_stage", spy_close)
    rep = run_round(g, [1, 2, 3, 4, 5], _train, server=server, dropouts={"unmasking": [4]}, rng=12)
    check_server()
    assert len(individual) == 10 and rep.update.survivors == (1, 2, 3, 4, 5)
    assert set(inputs) == {bytes}  # only protocol messages (as wire bytes) reach the server
    # the check is not vacuous: the aggregate itself is reachable and is not an individual update
    assert any(isinstance(o, np.ndarray) and o.shape == individual[0].shape for o in _reachable(server))


def test_server_learning_rate_and_apply_false() -> None:
    g = _model()
    before = copy.deepcopy(g.state_dict())
    server = SecureServer(
        UpdateLayout.from_module(g), FedAvgAggregation(max_weight=64), neighbors="all", dropout_fraction=0.3, rng=13
    )
    rep = run_round(g, [1, 2, 3], _train, server=server, apply=False, rng=14)
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())
    server.apply(g, rep.update, server_lr=0.5)
    for k, v in g.state_dict().items():
        want = before[k].double() + 0.5 * rep.update.tensors[k].double()
        assert torch.allclose(v.double(), want, atol=1e-6)
    assert math.isclose(
        float(rep.update.mean.sum()),
        sum(float(t.double().sum()) for t in rep.update.tensors.values()),
        rel_tol=1e-5,
        abs_tol=1e-6,
    )


# ----------------------------------------------------------------------------- with distributed DP


def _tiny_dp_server(g: nn.Module, z: float, **kw: Any) -> SecureServer:
    from secagg.torch.adapter import DPAggregation

    return SecureServer(
        UpdateLayout.from_module(g),
        DPAggregation(clip_norm=1.0, noise_multiplier=z, min_clients=kw.pop("min_clients", 5)),
        neighbors="all",
        dropout_fraction=0.3,
        **kw,
    )


def _plain_clipped_mean(global_model: nn.Module, clients: list[int], clip: float) -> np.ndarray:
    lay = UpdateLayout.from_module(global_model)
    base = global_model.state_dict()
    acc = np.zeros(lay.size)
    for c in clients:
        local = copy.deepcopy(global_model)
        _train(c, local)
        v = lay.flatten_delta(local.state_dict(), base, dtype=np.float64)
        acc += v * min(1.0, clip / float(np.linalg.norm(v)))
    return acc / len(clients)


def test_dp_round_equals_plaintext_clipped_mean_within_noise_bounds() -> None:
    """The secure DP mean minus the plaintext mean of the clipped updates is the noise
    divided by the survivors plus rounding: its squared norm is at most
    pd * (3 sigma^2 + (1/scale)^2 * 2) with sigma the per-coordinate noise std of the mean
    (chi-square tail with pd >= 32 degrees of freedom: false alarm below 1e-9), and, since
    noise is really added, at least pd * sigma^2 / 10."""
    g = _model()
    clients = list(range(1, 8))
    want = _plain_clipped_mean(g, clients, 1.0)
    server = _tiny_dp_server(g, 0.5)
    rep = run_round(g, clients, _train, server=server, apply=False, rng=21)
    upd = rep.update
    plan = rep.config.plan
    assert plan is not None
    m = len(upd.survivors)
    sigma = upd.noise.sigma_present_model / m
    err2 = float(np.sum((upd.mean - want) ** 2))
    pd = plan.padded_dim
    assert err2 <= pd * (3 * sigma**2 + 2 * (1.0 / plan.scale) ** 2)
    assert err2 >= pd * sigma**2 / 10
    assert upd.total_weight == m == 7  # with DP each clipped update counts once
    assert rep.config.dp and rep.config.protocol.bits == plan.bits


def test_dp_round_feeds_tracker_and_ledger_and_next_config_carries_head(tmp_path: Any) -> None:
    from dp.ledger import Ledger, read_ledger, verify_ledger
    from dp.tracker import PrivacyTracker

    g = _model()
    tracker = PrivacyTracker(delta=1e-5)
    server = _tiny_dp_server(g, 1.0, tracker=tracker)
    ledger = Ledger.create(tmp_path / "run.jsonl", server.ledger_header(6, population=6))
    server.attach_ledger(ledger)
    start = ledger.head_for_clients()
    assert start.startswith("1:")  # the header only
    heads = []
    for r in range(2):
        rep = run_round(g, list(range(1, 7)), _train, server=server, dropouts={"masked_input": [2]} if r else None)
        heads.append((rep.config.ledger_head, rep.update.ledger_head))
        eps = rep.update.privacy
        assert eps is not None and eps.round == r + 1 and eps.server_epsilon >= eps.release_epsilon > 0
    # the head a round's config carried is the ledger before that round; the next round's config has the new head
    assert heads[0][0] == start
    assert heads[1][0] == heads[0][1] and heads[1][1] == str(ledger.head)
    anchor = heads[1][0]
    assert anchor is not None
    result = verify_ledger(tmp_path / "run.jsonl", anchors=[anchor], expect_head=ledger.head)
    assert result.ok, result.summary()
    _header, records = read_ledger(tmp_path / "run.jsonl")
    assert [r["survivors"] for r in records] == [6, 5]
    assert records[1]["dropouts"] == 1 and records[1]["ledger_head_sent"] == heads[1][0]
    assert records[1]["epsilon"]["server"] == pytest.approx(tracker.current().server_epsilon)
    assert records[1]["events"]["server"]["n_shares"] == 5 - 1  # survivors less the protected client


def test_dp_budget_is_checked_before_the_round() -> None:
    from dp.errors import BudgetExceededError
    from dp.tracker import PrivacyTracker

    g = _model()
    tracker = PrivacyTracker(delta=1e-5, budget_epsilon=0.01)
    server = _tiny_dp_server(g, 1.0, tracker=tracker)
    with pytest.raises(BudgetExceededError):
        run_round(g, [1, 2, 3, 4, 5, 6], _train, server=server)
    assert tracker.rounds == 0 and server.session is None


@pytest.mark.filterwarnings("ignore")
def test_opacus_trained_clients_in_a_dp_round(tmp_path: Any) -> None:
    pytest.importorskip("opacus")
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from dp.ledger import Ledger, read_ledger
    from dp.tracker import PrivacyTracker
    from secagg.torch.opacus_compat import prepare_global_model, self_reported_epsilon

    torch.manual_seed(0)
    g = prepare_global_model(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)))
    tracker = PrivacyTracker(delta=1e-5)
    server = _tiny_dp_server(g, 1.0, tracker=tracker)
    ledger = Ledger.create(tmp_path / "l.jsonl", server.ledger_header(5))
    server.attach_ledger(ledger)

    def train(client: int, model: nn.Module) -> LocalResult:
        gen = torch.Generator().manual_seed(client)
        data = TensorDataset(torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        engine = PrivacyEngine(accountant="rdp")
        private, opt, loader = engine.make_private(
            module=model,
            optimizer=opt,
            data_loader=DataLoader(data, batch_size=8),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )
        for xb, yb in loader:
            if len(yb):
                opt.zero_grad()
                torch.autograd.backward(nn.functional.cross_entropy(private(xb), yb))
                opt.step()
        return LocalResult(16, model=private, self_reported=self_reported_epsilon(engine, 1e-5, client=client))

    before = copy.deepcopy(g.state_dict())
    rep = run_round(g, [1, 2, 3, 4, 5], train, server=server)
    assert rep.rejected == {} and rep.update.survivors == (1, 2, 3, 4, 5)
    assert any(not torch.equal(v, before[k]) for k, v in g.state_dict().items())
    _h, records = read_ledger(tmp_path / "l.jsonl")
    sr = records[0]["self_reported"]
    assert set(sr) == {"1", "2", "3", "4", "5"} and all(v > 0 for v in sr.values())
    assert all(d["kind"] == "self-reported" and d["verified"] is False for d in records[0]["self_reported_detail"])
    # the server's own figure is computed from the distributed noise, not from the claims
    assert records[0]["epsilon"]["server"] == pytest.approx(tracker.current().server_epsilon)


# ----------------------------------------------------------------------------- config on the wire


def _drive(server: SecureServer, config_json: str, g: nn.Module) -> None:
    """A sans-I/O round whose clients only ever see the configuration's JSON and messages' bytes."""
    from secagg.torch.adapter import TorchRoundConfig

    layout = UpdateLayout.from_module(g)
    base = {k: v.detach().clone() for k, v in g.state_dict().items()}
    clients = {i: SecureClient(TorchRoundConfig.from_json(config_json), i, layout, rng=i) for i in range(1, 7)}
    for c in clients.values():
        server.receive(c.start().encode())
    outbox = server.close_stage()
    while outbox:
        for i, msg in outbox.items():
            reply = clients[i].receive(msg.encode())
            if reply is None and clients[i].awaiting_update:
                local = copy.deepcopy(g)
                reply = clients[i].submit(local, base=base, num_examples=_train(i, local))
            if reply is not None:
                server.receive(reply.encode())
        outbox = server.close_stage()


@pytest.mark.parametrize("dp", [False, True])
def test_round_config_travels_as_json(dp: bool) -> None:
    from secagg.torch.adapter import TorchRoundConfig

    g = _model()
    want = _plain_fedavg(g, list(range(1, 7)))
    if dp:
        server = _tiny_dp_server(g, 1.0, rng=3)
    else:
        server = SecureServer(UpdateLayout.from_module(g), FedAvgAggregation(max_weight=64), neighbors="all",
                              dropout_fraction=0.3, rng=3)
    cfg = server.new_round(6)
    text = cfg.to_json()
    again = TorchRoundConfig.from_json(text.encode())
    assert again == cfg and again.to_json() == text and again.to_dict() == cfg.to_dict()
    assert (again.plan is not None) == dp and (again.encoder is not None) == (not dp)
    _drive(server, text, g)
    update = server.finish()
    assert update.survivors == (1, 2, 3, 4, 5, 6)
    if not dp:  # the same aggregate as with the in-memory configuration
        server.apply(g, update)
        assert cfg.encoder is not None
        assert _max_err(g, want) <= 1.0 / cfg.encoder.scale + 1e-6


def test_tampered_round_config_is_refused() -> None:
    from secagg.errors import MessageError
    from secagg.torch.adapter import TorchRoundConfig

    g = _model()
    doc = _tiny_dp_server(g, 2.0, rng=4).new_round(6).to_dict()
    plan = doc["plan"]
    edits: list[dict[str, Any]] = [
        {"plan": {**plan, "noise_multiplier": 0.5}},  # less noise than the aggregation rule says
        {"aggregation": {**doc["aggregation"], "noise_multiplier": 0.5}},
        {"k": doc["k"] - 1},  # readable fields must agree with the protocol's bytes
        {"rotation_seed": "00" * 32},
        {"protocol_config": doc["protocol_config"][:-2]},
        {"format": 99},
        {"mode": "fedavg"},
        {"round": -1},
    ]
    for edit in edits:
        with pytest.raises(MessageError):
            TorchRoundConfig.from_json(json.dumps({**doc, **edit}))
    with pytest.raises(MessageError):
        TorchRoundConfig.from_json("{not json")
    with pytest.raises(MessageError):
        TorchRoundConfig.from_dict({k: v for k, v in doc.items() if k != "plan"})


def test_finish_with_clashing_extra_records_nothing_and_can_be_retried(tmp_path: Any) -> None:
    from dp.ledger import Ledger, read_ledger
    from dp.tracker import PrivacyTracker

    g = _model()
    tracker = PrivacyTracker(delta=1e-5)
    server = _tiny_dp_server(g, 1.0, tracker=tracker, rng=5)
    server.attach_ledger(Ledger.create(tmp_path / "l.jsonl", server.ledger_header(6)))
    _drive(server, server.new_round(6).to_json(), g)
    head = server.ledger_head
    with pytest.raises(SecAggValueError, match="survivors"):
        server.finish(extra={"survivors": 0})
    assert tracker.rounds == 0 and server.ledger_head == head and server.round_index == 0
    update = server.finish(extra={"note": "retried"})
    assert update.privacy is not None and tracker.rounds == 1 and server.round_index == 1
    _h, records = read_ledger(tmp_path / "l.jsonl")
    assert len(records) == 1 and records[0]["note"] == "retried"
    assert update.ledger_head == server.ledger_head != head
