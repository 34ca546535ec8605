"""The torch adapter: secure rounds over a real small model equal plaintext aggregation
within the encoder's bounds; bad updates and failing training count as dropouts; the server
never holds an individual update; the round is a RoundSpec driven by the one driver."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")

import numpy as np
import torch
from torch import nn

from secagg.driver import DriverResult, drive_round
from secagg.errors import HeadroomError, ProtocolAbort, SecAggTypeError, SecAggValueError
from secagg.messages import Stage
from secagg.packing import pack
from secagg.server import ServerSession
from secagg.spec import RoundSpec
from secagg.torch import (
    DPAggregation,
    FedAvgAggregation,
    LocalResult,
    SecureClient,
    SecureServer,
    UpdateLayout,
    run_round,
)
from secagg.transport import MemoryTransport

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
    scale = rep.spec.encoder.scale  # type: ignore[union-attr]
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
    assert _max_err(g, want) <= 1.0 / rep.spec.encoder.scale + 1e-6  # type: ignore[union-attr]


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
        server.new_round(5, g)
    assert server.spec is None and server.round_index == 0


def test_client_checks_the_spec_against_its_model() -> None:
    g = _model()
    lay = UpdateLayout.from_module(g)
    server = SecureServer(lay, FedAvgAggregation(max_weight=64), neighbors="all", dropout_fraction=0.3, rng=10)
    spec = server.new_round(3, g)
    assert spec.model_digest is not None and spec.layout_fingerprint
    assert RoundSpec.from_bytes(spec.to_bytes()) == spec
    SecureClient(spec, 1, g)  # the model the spec names
    SecureClient(spec, 2, g.state_dict())
    with pytest.raises(SecAggValueError, match="layout"):  # a half-precision client does not match the layout
        SecureClient(spec, 1, copy.deepcopy(g).half())
    other = _model(seed=1)  # same layout, another model: the digest differs
    with pytest.raises(SecAggValueError, match="digest"):
        SecureClient(spec, 1, other)
    with pytest.raises(SecAggTypeError):
        SecureClient(spec.to_bytes(), 1, g)  # type: ignore[arg-type]
    # the server half runs no protocol stage itself: only the driver does
    assert not hasattr(server, "receive") and not hasattr(server, "close_stage")


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
    sessions: list[ServerSession] = []

    def spy_encode(self: SecureClient, trained: Any, **kw: Any) -> Any:
        state = trained.state_dict() if isinstance(trained, nn.Module) else trained
        individual.append(lay.flatten_delta(state, self._snap.tensors, dtype=np.float64).copy())
        ring = real_encode(self, trained, **kw)
        individual.append(ring.copy())
        packed.append(pack(ring, self.spec.bits))
        return ring

    real_receive = ServerSession.receive
    real_close = ServerSession.close_stage

    def check_server() -> None:
        for o in (*_reachable(server), *(x for s in sessions for x in _reachable(s))):
            if isinstance(o, torch.Tensor):
                o = o.detach().numpy()
            if isinstance(o, np.ndarray):
                for v in individual:
                    assert not (o.shape == v.shape and np.array_equal(o, v)), "server holds an individual update"
            if isinstance(o, (bytes, bytearray, memoryview)):
                assert bytes(o) not in packed, "server holds an unmasked encoding"

    def spy_receive(self: ServerSession, message: Any, **kw: Any) -> Any:
        if self not in sessions:
            sessions.append(self)
        inputs.append(type(message))
        out = real_receive(self, message, **kw)
        check_server()
        return out

    def spy_close(self: ServerSession) -> Any:
        out = real_close(self)
        check_server()
        return out

    monkeypatch.setattr(SecureClient, "encode", spy_encode)
    monkeypatch.setattr(ServerSession, "receive", spy_receive)
    monkeypatch.setattr(ServerSession, "close_stage", spy_close)
    rep = run_round(g, [1, 2, 3, 4, 5], _train, server=server, dropouts={"unmasking": [4]}, rng=12)
    check_server()
    assert len(individual) == 10 and rep.update.survivors == (1, 2, 3, 4, 5)
    assert set(inputs) == {bytes}  # only protocol messages (as wire bytes) reach the server
    # the check is not vacuous: the aggregate itself is reachable and is not an individual update
    assert any(isinstance(o, np.ndarray) and o.shape == individual[0].shape for o in _reachable(server))
    assert len(sessions) == 1


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
    plan = rep.spec.plan
    assert plan is not None and upd.noise is not None
    m = len(upd.survivors)
    sigma = upd.noise.sigma_present_model / m
    err2 = float(np.sum((upd.mean - want) ** 2))
    pd = plan.padded_dim
    assert err2 <= pd * (3 * sigma**2 + 2 * (1.0 / plan.scale) ** 2)
    assert err2 >= pd * sigma**2 / 10
    assert upd.total_weight == m == 7  # with DP each clipped update counts once
    assert rep.spec.mode == "dp" and rep.spec.bits == plan.bits


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
    specs: list[RoundSpec] = []
    for r in range(2):
        rep = run_round(g, list(range(1, 7)), _train, server=server, dropouts={"masked_input": [2]} if r else None)
        heads.append((rep.spec.ledger_head, rep.update.ledger_head))
        specs.append(rep.spec)
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
    # every record names its round's spec (fingerprint) and the model the clients trained from
    assert [r["spec"] for r in records] == [sp.fingerprint for sp in specs]
    assert [r["model_digest"] for r in records] == [sp.model_digest for sp in specs]
    assert specs[0].model_digest != specs[1].model_digest  # the model moved between the rounds
    assert records[0]["layout"] == specs[0].layout_fingerprint == _header["layout"]["fingerprint"]


def test_dp_budget_is_checked_before_the_round() -> None:
    from dp.errors import BudgetExceededError
    from dp.tracker import PrivacyTracker

    g = _model()
    tracker = PrivacyTracker(delta=1e-5, budget_epsilon=0.01)
    server = _tiny_dp_server(g, 1.0, tracker=tracker)
    with pytest.raises(BudgetExceededError):
        run_round(g, [1, 2, 3, 4, 5, 6], _train, server=server)
    assert tracker.rounds == 0 and server.spec is None


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
    assert all(d["kind"] == "self-reported" and d["verified"] is False for d in records[0]["self_reported_round"])
    # the server's own figure is computed from the distributed noise, not from the claims
    assert records[0]["epsilon"]["server"] == pytest.approx(tracker.current().server_epsilon)



# ----------------------------------------------------------------------------- the two halves over a transport


def _transport(spec_holder: list[RoundSpec], g: nn.Module, n: int) -> MemoryTransport:
    """Clients that only ever see the spec's bytes and messages' bytes (any transport would do)."""
    clients: dict[int, SecureClient] = {}

    def endpoint(i: int) -> Any:
        def call(stage: Stage, data: bytes) -> bytes | None:
            if i not in clients:
                spec = RoundSpec.from_bytes(data)
                spec_holder.append(spec)
                clients[i] = SecureClient(spec, i, g, rng=i)
                return clients[i].start().encode()
            c = clients[i]
            reply = c.receive(data)
            if reply is None and c.awaiting_update:
                local = copy.deepcopy(g)
                reply = c.submit(local, num_examples=_train(i, local))
            return None if reply is None else reply.encode()

        return call

    return MemoryTransport({i: endpoint(i) for i in range(1, n + 1)})


@pytest.mark.parametrize("dp", [False, True])
def test_spec_travels_as_bytes_and_the_driver_runs_the_round(dp: bool) -> None:
    g = _model()
    want = _plain_fedavg(g, list(range(1, 7)))
    if dp:
        server = _tiny_dp_server(g, 1.0, rng=3)
    else:
        server = SecureServer(UpdateLayout.from_module(g), FedAvgAggregation(max_weight=64), neighbors="all",
                              dropout_fraction=0.3, rng=3)
    spec = server.new_round(6, g)
    seen: list[RoundSpec] = []
    run = drive_round(spec.protocol, _transport(seen, g, 6), setup=spec.to_bytes())
    assert len(seen) == 6 and all(s == spec and s.fingerprint == spec.fingerprint for s in seen)
    assert (spec.plan is not None) == dp and (spec.encoder is not None) == (not dp)
    update = server.finish(run)
    assert update.survivors == (1, 2, 3, 4, 5, 6) and update.spec is spec
    with pytest.raises(SecAggValueError, match="no round is open"):
        server.finish(run)  # recorded once
    if not dp:  # the same aggregate as plaintext FedAvg within the encoder's resolution
        server.apply(g, update)
        assert spec.encoder is not None
        assert _max_err(g, want) <= 1.0 / spec.encoder.scale + 1e-6


def test_finish_refuses_another_rounds_result() -> None:
    g = _model()
    server = SecureServer(UpdateLayout.from_module(g), FedAvgAggregation(max_weight=64), neighbors="all",
                          dropout_fraction=0.3, rng=8)
    first = server.new_round(4, g)
    run = drive_round(first.protocol, _transport([], g, 4), setup=first.to_bytes())
    server.new_round(4, g)  # abandons the first round
    with pytest.raises(SecAggValueError, match="another round"):
        server.finish(run)
    with pytest.raises(SecAggTypeError):
        server.finish(run.result)  # type: ignore[arg-type]
    assert server.round_index == 0


def test_finish_with_clashing_extra_records_nothing_and_can_be_retried(tmp_path: Any) -> None:
    from dp.ledger import Ledger, read_ledger
    from dp.tracker import PrivacyTracker

    g = _model()
    tracker = PrivacyTracker(delta=1e-5)
    server = _tiny_dp_server(g, 1.0, tracker=tracker, rng=5)
    server.attach_ledger(Ledger.create(tmp_path / "l.jsonl", server.ledger_header(6)))
    spec = server.new_round(6, g)
    run: DriverResult = drive_round(spec.protocol, _transport([], g, 6), setup=spec.to_bytes())
    head = server.ledger_head
    with pytest.raises(SecAggValueError, match="survivors"):
        server.finish(run, extra={"survivors": 0})
    assert tracker.rounds == 0 and server.ledger_head == head and server.round_index == 0
    update = server.finish(run, extra={"note": "retried"})
    assert update.privacy is not None and tracker.rounds == 1 and server.round_index == 1
    _h, records = read_ledger(tmp_path / "l.jsonl")
    assert len(records) == 1 and records[0]["note"] == "retried" and records[0]["spec"] == spec.fingerprint
    assert update.ledger_head == server.ledger_head != head


# ----------------------------------------------------------------------------- issue 22: clients as they really are


def test_a_client_whose_training_raises_is_a_dropout_with_its_reason() -> None:
    g = _model()
    clients = [1, 2, 3, 4, 5, 6]

    def train(client: int, model: nn.Module) -> int:
        if client in (2, 5):
            raise RuntimeError(f"CUDA out of memory on client {client}")
        return _train(client, model)

    server = SecureServer(UpdateLayout.from_module(g), FedAvgAggregation(max_weight=64), neighbors="all",
                          dropout_fraction=0.4, rng=30)
    rep = run_round(g, clients, train, server=server, rng=31)
    assert rep.update.survivors == (1, 3, 4, 6)
    assert rep.failed == {2: "RuntimeError: CUDA out of memory on client 2",
                          5: "RuntimeError: CUDA out of memory on client 5"}
    status = {o.client: (o.status, o.stage) for o in rep.clients}
    assert status[2] == status[5] == ("failed", "masked_input") and status[1] == ("survived", None)
    assert rep.rejected == {} and rep.excluded == {}
    assert _max_err(g, _plain_fedavg(_model(), [1, 3, 4, 6])) <= 1.0 / rep.spec.encoder.scale + 1e-6  # type: ignore[union-attr]


def test_too_many_failing_clients_abort_and_leave_the_model_unchanged() -> None:
    g = _model()
    before = copy.deepcopy(g.state_dict())

    def train(client: int, model: nn.Module) -> int:
        raise ValueError("no data")

    server = SecureServer(UpdateLayout.from_module(g), FedAvgAggregation(max_weight=64), neighbors="all",
                          dropout_fraction=0.3, rng=32)
    with pytest.raises(ProtocolAbort):
        run_round(g, [1, 2, 3, 4], train, server=server, rng=33)
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items()) and server.round_index == 0


def test_compiled_and_ddp_models_and_prefixed_state_dicts_are_accepted() -> None:
    g = _model()
    compiled = torch.compile(g)  # names gain "_orig_mod."; never run, so nothing is compiled
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    layout = UpdateLayout.from_module(compiled)
    assert layout == UpdateLayout.from_module(g)  # the plain model's names

    def train(client: int, model: nn.Module) -> int | LocalResult:
        n = _train(client, model)
        assert not any(k.startswith(("_orig_mod.", "module.")) for k in model.state_dict())
        if client == 1:
            return LocalResult(n, model=nn.DataParallel(model))  # "module." names
        if client == 2:
            return LocalResult(n, model=torch.compile(model))  # "_orig_mod." names
        return n

    server = SecureServer(layout, FedAvgAggregation(max_weight=64), neighbors="all", dropout_fraction=0.3, rng=34)
    want = _plain_fedavg(g, [1, 2, 3, 4])
    rep = run_round(compiled, [1, 2, 3, 4], train, server=server, rng=35)
    assert rep.rejected == {} and rep.failed == {} and rep.update.survivors == (1, 2, 3, 4)
    assert _max_err(g, want) <= 1.0 / rep.spec.encoder.scale + 1e-6  # type: ignore[union-attr]

    # the sans-I/O client maps prefixed state dicts too, but never a name the layout does not know
    spec = server.new_round(3, compiled)
    client = SecureClient(spec, 1, {f"module.{k}": v for k, v in g.state_dict().items()})
    moved = {f"_orig_mod.{k}": v + 0.01 for k, v in g.state_dict().items()}
    assert client.encode(moved, num_examples=3).shape == (spec.d,)
    from secagg.torch import UpdateError

    with pytest.raises(UpdateError, match="unexpected"):
        client.encode({**moved, "module.extra": torch.zeros(1)}, num_examples=3)


def test_a_model_whose_own_submodule_is_called_module_keeps_its_names() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(3, 2)
            self.head = nn.Linear(2, 2)

    torch.manual_seed(0)
    m = Outer()
    layout = UpdateLayout.from_module(m)
    assert "module.weight" in layout.names
    server = SecureServer(layout, FedAvgAggregation(max_weight=8), neighbors="all", dropout_fraction=0.3, rng=36)
    spec = server.new_round(3, m)
    client = SecureClient(spec, 1, nn.DataParallel(m))  # "module.module.weight" -> "module.weight"
    assert client.encode(m, num_examples=1).shape == (spec.d,)


@pytest.mark.filterwarnings("ignore")
def test_opacus_clients_train_from_a_global_model_left_in_eval_mode() -> None:
    """The copy a client trains must be in training mode: opacus refuses an eval-mode module."""
    pytest.importorskip("opacus")
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    g = _model()
    g.eval()  # e.g. after evaluating the global model between rounds

    def train(client: int, model: nn.Module) -> LocalResult:
        assert model.training and model is not g
        gen = torch.Generator().manual_seed(client)
        data = TensorDataset(torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        engine = PrivacyEngine(accountant="rdp")
        private, opt, loader = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(data, batch_size=8), noise_multiplier=1.0, max_grad_norm=1.0,
        )
        for xb, yb in loader:
            if len(yb):
                opt.zero_grad()
                torch.autograd.backward(nn.functional.cross_entropy(private(xb), yb))
                opt.step()
        return LocalResult(16, model=private)

    server = _tiny_dp_server(g, 1.0, min_clients=4, rng=37)
    rep = run_round(g, [1, 2, 3, 4, 5], train, server=server, rng=38)
    assert rep.failed == {} and rep.rejected == {} and rep.update.survivors == (1, 2, 3, 4, 5)
    assert not g.training  # the global model's own mode is left alone


@pytest.mark.filterwarnings("ignore")
def test_opacus_epsilon_is_composed_across_rounds_beside_the_server_guarantee(tmp_path: Any) -> None:
    pytest.importorskip("opacus")
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from dp.ledger import Ledger, read_ledger
    from dp.tracker import PrivacyTracker
    from secagg.torch import compose_self_reported, self_reported_epsilon

    g = _model()
    per_round: dict[int, list[Any]] = {}

    def train(client: int, model: nn.Module) -> LocalResult:
        gen = torch.Generator().manual_seed(client)
        data = TensorDataset(torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        engine = PrivacyEngine(accountant="rdp")  # a fresh engine each round: it knows this round only
        private, opt, loader = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(data, batch_size=8), noise_multiplier=1.0, max_grad_norm=1.0,
        )
        for xb, yb in loader:
            if len(yb):
                opt.zero_grad()
                torch.autograd.backward(nn.functional.cross_entropy(private(xb), yb))
                opt.step()
        claim = self_reported_epsilon(engine, 1e-5, client=client)
        per_round.setdefault(client, []).append(claim)
        return LocalResult(16, model=private, self_reported=claim)

    tracker = PrivacyTracker(delta=1e-5)
    server = _tiny_dp_server(g, 1.0, min_clients=4, tracker=tracker, rng=39)
    server.attach_ledger(Ledger.create(tmp_path / "l.jsonl", server.ledger_header(5)))
    reps = [run_round(g, [1, 2, 3, 4, 5], train, server=server, rng=40 + r) for r in range(2)]
    last = reps[-1].update
    for c in range(1, 6):
        composed = last.example_level[str(c)]
        first, second = per_round[c]
        assert composed.rounds == 2 and composed.history == first.history + second.history
        # the whole run spent more than either round's self-reported figure
        assert composed.epsilon > max(first.epsilon, second.epsilon) > 0
        assert composed == compose_self_reported(compose_self_reported({}, [first]), [second])[str(c)]
    assert server.example_level == last.example_level
    _h, records = read_ledger(tmp_path / "l.jsonl")
    assert records[1]["self_reported"] == {str(c): last.example_level[str(c)].epsilon for c in range(1, 6)}
    assert "composed" in records[1]["self_reported_scope"]
    assert [d["epsilon"] for d in records[1]["self_reported_round"]] == [per_round[c][1].epsilon for c in range(1, 6)]
    # beside the server-level guarantee, which comes from the distributed noise only
    assert last.privacy is not None and records[1]["epsilon"]["server"] == pytest.approx(last.privacy.server_epsilon)


def test_frozen_parameters_and_buffers_outside_the_layout_are_not_unexpected() -> None:
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    g[0].requires_grad_(False)  # e.g. a frozen base under LoRA adapters
    layout = UpdateLayout.from_module(g)
    assert "0.weight" in layout.ignored and "1.running_mean" in layout.ignored

    def train(client: int, model: nn.Module) -> int:
        model(torch.randn(8, 5))  # BatchNorm's running statistics and counter move too
        with torch.no_grad():
            model.get_submodule("3").bias.add_(0.01 * client)
        return 8 + client

    server = SecureServer(layout, FedAvgAggregation(max_weight=64), neighbors="all", dropout_fraction=0.3, rng=50)
    rep = run_round(g, [1, 2, 3], train, server=server, rng=51)
    assert rep.rejected == {} and rep.update.survivors == (1, 2, 3)
