"""The torch adapter in active mode: with the alliance's identity keys the server builds
active specs, every client signs and checks, the ledger records the signed audit trail that
``secagg verify --alliance`` checks; a client without an identity is refused; a client with
an identity refuses a semi-honest round; semi-honest rounds say so in every record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch
from torch import nn

from dp.ledger import Ledger, canonical_json, read_ledger, verify_ledger
from dp.tracker import PrivacyTracker
from secagg.cli import main
from secagg.driver import drive_round
from secagg.errors import SecAggTypeError, SecAggValueError, UnsafeParametersError
from secagg.identity import Alliance, IdentityKey, generate_alliance
from secagg.torch import DPAggregation, FedAvgAggregation, SecureClient, SecureServer, UpdateLayout, run_round
from secagg.transport import MemoryTransport

torch.set_num_threads(1)
N = 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _train(client: str, model: nn.Module) -> int:
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.01 * (len(client) + i))
    return 4


def _names() -> list[str]:
    return [f"org-{c}" for c in "abcdef"]


def _alliance() -> tuple[dict[str, IdentityKey], Alliance]:
    keys, alliance = generate_alliance(range(1, N + 1), 7)
    return {name: keys[i + 1] for i, name in enumerate(_names())}, alliance


def _dp_server(g: nn.Module, **kw: Any) -> SecureServer:
    return SecureServer(
        UpdateLayout.from_module(g),
        DPAggregation(clip_norm=1.0, noise_multiplier=1.0, min_clients=4),
        neighbors="all",
        dropout_fraction=0.3,
        rng=3,
        **kw,
    )


def _fedavg_server(g: nn.Module, **kw: Any) -> SecureServer:
    return SecureServer(
        UpdateLayout.from_module(g), FedAvgAggregation(bound=1.0, max_weight=8), neighbors="all", rng=3, **kw
    )


def test_two_active_dp_rounds_record_a_trail_that_verify_alliance_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = _model()
    identities, alliance = _alliance()
    server = _dp_server(g, tracker=PrivacyTracker(delta=1e-5), alliance=alliance)
    assert server.security_mode == "active" and server.active
    path = tmp_path / "run.jsonl"
    header = server.ledger_header(N, population=N)
    assert header["security_mode"] == "active" and header["alliance"]["fingerprint"] == alliance.fingerprint
    server.attach_ledger(Ledger.create(path, header))
    names = _names()
    reports = [
        run_round(g, names, _train, server=server, identities=identities, rng=11),
        # clients listed in another order keep the protocol id their key has in the alliance
        run_round(
            g, names[::-1], _train, server=server, identities=identities, dropouts={"masked_input": ["org-c"]}, rng=12
        ),
    ]
    assert [r.spec.protocol.active for r in reports] == [True, True]
    assert [len(r.update.survivors) for r in reports] == [6, 5]
    assert {o.client: o.protocol_id for o in reports[1].clients} == {n: i + 1 for i, n in enumerate(names)}
    assert next(o for o in reports[1].clients if o.client == "org-c").status == "dropped"
    assert verify_ledger(path).ok
    _h, records = read_ledger(path)
    assert [r["security_mode"] for r in records] == ["active", "active"]
    assert [r["audit"]["mode"] for r in records] == ["active", "active"]
    assert records[1]["audit"]["survivor_set"] == [1, 2, 4, 5, 6]
    (tmp_path / "alliance.json").write_text(alliance.to_json())
    assert main(["verify", str(path), "--alliance", str(tmp_path / "alliance.json")]) == 0
    assert "11 contributions verified against the alliance" in capsys.readouterr().out

    # one signature byte changed in the last record: the hash chain still verifies, the alliance check does not
    lines = path.read_bytes().splitlines()
    rec = json.loads(lines[-1])
    sig = bytearray(bytes.fromhex(rec["audit"]["advertisements"][1]["signature"]))
    sig[7] ^= 0x01
    rec["audit"]["advertisements"][1]["signature"] = sig.hex()
    lines[-1] = canonical_json(rec)
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert verify_ledger(path).ok
    assert main(["verify", str(path), "--alliance", str(tmp_path / "alliance.json")]) == 1
    assert "signature" in capsys.readouterr().err


def test_an_active_round_refuses_a_client_without_an_identity() -> None:
    g = _model()
    identities, alliance = _alliance()
    server = _fedavg_server(g, alliance=alliance)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    missing = {k: v for k, v in identities.items() if k != "org-d"}
    with pytest.raises(SecAggValueError, match="'org-d' has no identity"):
        run_round(g, _names(), _train, server=server, identities=missing)
    with pytest.raises(SecAggValueError, match="pass identities"):
        run_round(g, _names(), _train, server=server)
    stranger = {**identities, "org-d": IdentityKey.generate(99)}
    with pytest.raises(SecAggValueError, match="not a member"):
        run_round(g, _names(), _train, server=server, identities=stranger)
    with pytest.raises(SecAggValueError, match=r"alliance ids 1\.\.5"):  # ids 1, 2, 3, 4, 6: not 1..5
        run_round(g, [n for n in _names() if n != "org-e"], _train, server=server, identities=identities)
    with pytest.raises(SecAggTypeError):
        run_round(g, _names(), _train, server=server, identities={**identities, "org-a": b"key"})  # type: ignore[dict-item]
    assert server.round_index == 0 and server.spec is None
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())


def test_secure_client_needs_identity_for_active_and_refuses_a_downgrade() -> None:
    g = _model()
    keys, alliance = generate_alliance(range(1, N + 1), 7)
    active = _fedavg_server(g, alliance=alliance).new_round(N, g)
    semi = _fedavg_server(g).new_round(N, g)
    assert active.protocol.active and not semi.protocol.active
    with pytest.raises(SecAggValueError, match="the round is active"):
        SecureClient(active, 1, g)
    with pytest.raises(SecAggValueError, match="the round is active"):
        SecureClient(active, 1, g, identity=keys[1])
    with pytest.raises(SecAggValueError, match="not the alliance's key"):
        SecureClient(active, 1, g, identity=keys[2], alliance=alliance)
    with pytest.raises(SecAggTypeError):
        SecureClient(active, 1, g, identity=keys[1].private_bytes(), alliance=alliance)  # type: ignore[arg-type]
    with pytest.raises(UnsafeParametersError, match="downgrade"):
        SecureClient(semi, 1, g, identity=keys[1], alliance=alliance)
    with pytest.raises(UnsafeParametersError, match="downgrade"):
        SecureClient(semi, 1, g, alliance=alliance)
    sc = SecureClient(active, 1, g, identity=keys[1], alliance=alliance, rng=1)
    assert sc.security_mode == "active" and sc.start() is not None
    assert SecureClient(semi, 1, g, rng=1).security_mode == "semi-honest"


def test_identities_with_a_server_without_alliance_are_refused() -> None:
    g = _model()
    identities, _ = _alliance()
    with pytest.raises(UnsafeParametersError, match="downgrade"):
        run_round(g, _names(), _train, server=_fedavg_server(g), identities=identities)


def test_an_alliance_missing_a_protocol_id_is_refused_before_the_round() -> None:
    g = _model()
    _keys, alliance = generate_alliance(range(1, 5), 7)
    server = _fedavg_server(g, alliance=alliance)
    with pytest.raises(SecAggValueError, match=r"no key for \[5, 6\]"):
        server.new_round(N, g)
    with pytest.raises(SecAggTypeError):
        _fedavg_server(g, alliance=alliance.to_json())


def test_the_two_halves_in_active_mode_over_the_driver() -> None:
    """SecureServer + SecureClient + drive_round(alliance=, model_digest=): the shape a
    framework owning its transport uses."""
    g = _model()
    keys, alliance = generate_alliance(range(1, N + 1), 7)
    server = _fedavg_server(g, alliance=alliance)
    spec = server.new_round(N, g)
    clients = {c: SecureClient(spec, c, g, identity=keys[c], alliance=alliance, rng=c) for c in range(1, N + 1)}

    def endpoint(c: int) -> Any:
        def answer(_stage: Any, data: bytes) -> bytes | None:
            sc = clients[c]
            if data == spec.to_bytes():
                return sc.start().encode()
            reply = sc.receive(data)
            if reply is None and sc.awaiting_update:
                local = _model()
                _train("x" * c, local)
                reply = sc.submit(local, num_examples=4)
            return None if reply is None else reply.encode()

        return answer

    run = drive_round(
        spec.protocol,
        MemoryTransport({c: endpoint(c) for c in clients}),
        setup=spec.to_bytes(),
        alliance=server.alliance,
        model_digest=spec.model_digest,
    )
    update = server.finish(run)
    assert run.result.active and update.survivors == tuple(range(1, N + 1))


def test_a_semi_honest_run_states_it_in_every_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = _model()
    server = _dp_server(g, tracker=PrivacyTracker(delta=1e-5))
    assert server.security_mode == "semi-honest" and not server.active
    path = tmp_path / "semi.jsonl"
    header = server.ledger_header(N)
    assert header["security_mode"] == "semi-honest" and "alliance" not in header
    server.attach_ledger(Ledger.create(path, header))
    for r in range(2):
        rep = run_round(g, _names(), _train, server=server, rng=r)
        assert not rep.spec.protocol.active
    _h, records = read_ledger(path)
    assert [r["security_mode"] for r in records] == ["semi-honest", "semi-honest"]
    assert [r["audit"]["mode"] for r in records] == ["semi-honest", "semi-honest"]
    _keys, alliance = generate_alliance(range(1, N + 1), 7)
    (tmp_path / "alliance.json").write_text(alliance.to_json())
    assert main(["verify", str(path), "--alliance", str(tmp_path / "alliance.json")]) == 1
    assert "semi-honest" in capsys.readouterr().err
