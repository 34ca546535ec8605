"""Verifiable contributions (issue 21): each round's ledger record carries the signed
advertisements and the signed survivor set, and ``secagg verify --alliance`` checks every
signature of every entry, prints who contributed to which round, and fails (exit 1, one
line naming the entry) on any entry that does not verify."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dp.ledger import Ledger, canonical_json, read_ledger, verify_ledger
from secagg.cli import main
from secagg.crypto.prg import Masker
from secagg.driver import drive_round
from secagg.errors import MessageError, SignatureError
from secagg.identity import Alliance, generate_alliance, parse_advertisement
from secagg.rounds import account_round, audit_trail, verify_contributions
from secagg.simulate import _SimClient
from secagg.spec import ArraySpec, IntegerSum, build_spec
from secagg.transport import MemoryTransport

N, D = 8, 16


def _ones(i: int) -> Any:
    return np.ones(D, dtype=np.uint32)


def _run_rounds(
    tmp_path: Path, *, rounds: int = 3, active: bool = True, drop: dict[int, list[int]] | None = None
) -> tuple[Path, Alliance]:
    """A multi-round run through the driver: one spec per round (bound to that round's
    model and ledger head), every result accounted with its audit trail."""
    identities, alliance = generate_alliance(range(1, N + 1), 7)
    ledger = Ledger.create(tmp_path / "ledger.jsonl", {"accountant": "none", "delta": 1e-6})
    model = {"w": np.zeros(D, dtype=np.float32)}
    for r in range(rounds):
        spec = build_spec(
            N, (ArraySpec("x", (D,), "uint64"),), IntegerSum(32), round_index=r, model=model,
            ledger_head=str(ledger.head_for_clients()), neighbors="all", rng=100 + r, active=active,
        )  # fmt: skip
        endpoints = {
            c: _SimClient(c, bytes([r, c]) * 16, _ones, Masker(D, 32), [0.0],
                          identities[c] if active else None, alliance if active else None)
            for c in range(1, N + 1)
        }  # fmt: skip
        silent = {}
        if drop and r in drop:
            from secagg.messages import Stage

            silent = {Stage.MASKED_INPUT: set(drop[r])}
        transport = MemoryTransport(endpoints, silent=silent)
        run = drive_round(
            spec.protocol, transport, setup=spec.to_bytes(), alliance=alliance if active else None,
            model_digest=spec.model_digest,
        )  # fmt: skip
        res = run.result
        assert np.array_equal(res.aggregate, np.full(D, len(res.survivors)))
        account_round(
            None, ledger, spec, survivors=len(res.survivors), dropped=res.dropped,
            total_weight=len(res.survivors), excluded=res.excluded, audit=res,
        )  # fmt: skip
        model = {"w": model["w"] + 1}
    (tmp_path / "alliance.json").write_text(alliance.to_json())
    return tmp_path / "ledger.jsonl", alliance


def test_records_state_the_mode_and_carry_the_signed_trail(tmp_path: Path) -> None:
    ledger, alliance = _run_rounds(tmp_path, drop={1: [3]})
    _, records = read_ledger(ledger)
    assert [r["security_mode"] for r in records] == ["active"] * 3
    for r in records:
        audit = r["audit"]
        assert audit["mode"] == "active" and audit["format"] == 1
        assert len(audit["advertisements"]) == N
        assert audit["survivor_set"] == ([1, 2, 4, 5, 6, 7, 8] if r["round"] == 1 else list(range(1, N + 1)))
        found = verify_contributions(r, alliance)
        assert [c.client for c in found] == audit["survivor_set"]
        assert {c.spec for c in found} == {r["spec"]} and {c.model_digest for c in found} == {r["model_digest"]}
    # each round names its own model: the trail of one round does not verify in another's record
    moved = dict(records[0], audit=records[1]["audit"], survivors=records[1]["survivors"])
    with pytest.raises((SignatureError, MessageError)):
        verify_contributions(moved, alliance)


def test_verify_alliance_passes_and_prints_who_contributed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger, _ = _run_rounds(tmp_path)
    assert main(["verify", str(ledger), "--alliance", str(tmp_path / "alliance.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("round ")]
    assert len(rows) == 3 * N
    assert rows[0].startswith("round 0: client 1 key ") and " spec " in rows[0] and " model " in rows[0]
    assert out[-1] == f"{3 * N} contributions verified against the alliance"
    assert main(["verify", str(ledger), "--alliance", str(tmp_path / "alliance.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["contributions"]) == 3 * N and doc["contributions"][0]["signed_survivor_set"] is True


def _flip_signature_byte(ledger: Path, line_no: int, where: str) -> None:
    """Change one byte of a signature in one record and re-chain the lines after it (the
    attacker controls the unsigned ledger file), so the hash chain still verifies and only
    the contribution check can catch it."""
    lines = ledger.read_bytes().splitlines()
    rec = json.loads(lines[line_no - 1])
    item = rec["audit"]["advertisements"][2] if where == "advertisement" else rec["audit"]["survivor_signatures"][0]
    sig = bytearray(bytes.fromhex(item["signature"]))
    sig[5] ^= 0x01
    item["signature"] = sig.hex()
    lines[line_no - 1] = canonical_json(rec)
    for i in range(line_no, len(lines)):  # re-chain what follows
        later = json.loads(lines[i])
        later["prev"] = hashlib.sha256(lines[i - 1]).hexdigest()
        lines[i] = canonical_json(later)
    ledger.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("where", ["advertisement", "survivor signature"])
def test_verify_alliance_fails_on_one_changed_signature_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    ledger, _ = _run_rounds(tmp_path)
    _flip_signature_byte(ledger, 3, where)
    assert verify_ledger(ledger).ok  # the chain alone does not notice
    code = main(["verify", str(ledger), "--alliance", str(tmp_path / "alliance.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "line 3 (round 1) does not verify" in err[0] and "signature" in err[0]


def test_verify_alliance_fails_on_a_semi_honest_round_and_on_another_alliance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    ledger, _ = _run_rounds(tmp_path / "a", rounds=1, active=False)
    _, records = read_ledger(ledger)
    assert records[0]["security_mode"] == "semi-honest" and records[0]["audit"]["mode"] == "semi-honest"
    assert records[0]["audit"]["advertisements"] == [] and records[0]["audit"]["survivor_set"] == list(range(1, N + 1))
    assert main(["verify", str(ledger), "--alliance", str(tmp_path / "a" / "alliance.json")]) == 1
    assert "semi-honest" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    ledger_b, _ = _run_rounds(tmp_path / "b", rounds=1)
    _, other = generate_alliance(range(1, N + 1), 8)
    (tmp_path / "other.json").write_text(other.to_json())
    assert main(["verify", str(ledger_b), "--alliance", str(tmp_path / "other.json")]) == 1
    assert main(["verify", str(ledger_b), "--alliance", str(tmp_path / "missing.json")]) == 2


def test_audit_trail_refuses_another_rounds_result(tmp_path: Path) -> None:
    identities, alliance = generate_alliance(range(1, N + 1), 7)
    specs = [
        build_spec(N, (ArraySpec("x", (D,), "uint64"),), IntegerSum(32), neighbors="all", rng=s, active=True)
        for s in (1, 2)
    ]
    ones = np.ones(D, dtype=np.uint32)
    endpoints = {
        c: _SimClient(c, bytes([c]) * 32, lambda i: ones, Masker(D, 32), [0.0], identities[c], alliance)
        for c in range(1, N + 1)
    }
    run = drive_round(specs[0].protocol, MemoryTransport(endpoints), setup=specs[0].to_bytes(), alliance=alliance)
    trail = audit_trail(run.result, specs[0])
    assert parse_advertisement(run.result.advertisements[0].statement).client_id == 1
    assert trail["survivor_signatures"] and trail["evidence"] == []
    from secagg.errors import SecAggValueError

    with pytest.raises(SecAggValueError):
        audit_trail(run.result, specs[1])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: a.pop("advertisements"),
        lambda a: a.update(format=2),
        lambda a: a.update(survivor_set=[2, 1]),
        lambda a: a.update(survivor_set="1,2"),
        lambda a: a["advertisements"][0].update(digest="00" * 32),
        lambda a: a["advertisements"][0].update(signature="zz" * 64),
        lambda a: a["advertisements"][0].update(client=True),
        lambda a: a["survivor_signatures"].clear(),
        lambda a: a["evidence"].append({"statements": [{"signer": 1, "statement": "00", "signature": "00" * 64}]}),
        lambda a: a["evidence"].append({"statements": "x"}),
    ],
)
def test_malformed_trails_raise_only_typed_errors(tmp_path: Path, mutate: Any) -> None:
    ledger, alliance = _run_rounds(tmp_path, rounds=1)
    _, records = read_ledger(ledger)
    rec = records[0]
    mutate(rec["audit"])
    with pytest.raises((MessageError, SignatureError)):  # only typed errors escape, and it fails
        verify_contributions(rec, alliance)


def test_torch_round_records_its_mode_and_trail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The torch adapter passes the round's audit trail to the record; its rounds run the
    semi-honest protocol today, which the record states (and ``--alliance`` refuses)."""
    pytest.importorskip("torch")
    import torch
    from torch import nn

    from secagg.torch import FedAvgAggregation, SecureServer, UpdateLayout, run_round

    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(3, 2))

    def train(client: int, model: nn.Module) -> int:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * client)
        return 4

    server = SecureServer(UpdateLayout.from_module(g), FedAvgAggregation(bound=1.0, max_weight=8), neighbors="all")
    ledger = Ledger.create(tmp_path / "t.jsonl", server.ledger_header(5, delta=1e-6))
    server.attach_ledger(ledger)
    run_round(g, [1, 2, 3, 4, 5], train, server=server, dropouts={"masked_input": [4]}, rng=1)
    _, records = read_ledger(tmp_path / "t.jsonl")
    assert records[0]["security_mode"] == "semi-honest"
    assert records[0]["audit"]["mode"] == "semi-honest" and records[0]["audit"]["survivor_set"] == [1, 2, 3, 5]


def test_the_auditor_report_states_each_rounds_protocol_mode(tmp_path: Path) -> None:
    from dp.report import build_report, save_report

    ledger, _ = _run_rounds(tmp_path, rounds=2)
    rep = build_report(ledger)
    assert rep["modes"] == {"active": [0, 1]}
    assert [r["security_mode"] for r in rep["rounds"]] == ["active", "active"]
    assert rep["rounds"][0]["signed_trail"] == f"{N} signed advertisements, {N} survivor-set signatures"
    text = save_report(rep, tmp_path / "out", "md").read_text()
    assert "## Protocol mode" in text and "active: rounds 0, 1" in text
    (tmp_path / "b").mkdir()
    semi, _ = _run_rounds(tmp_path / "b", rounds=1, active=False)
    rep = build_report(semi)
    assert rep["modes"] == {"semi-honest": [0]} and rep["rounds"][0]["signed_trail"] == "unsigned (semi-honest)"
    assert "semi-honest: rounds 0 (secure only against a server that follows the protocol" in "\n".join(
        save_report(rep, tmp_path / "out2", "html").read_text().splitlines()
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@pytest.fixture(scope="module")
def one_record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ledger, _ = _run_rounds(tmp_path_factory.mktemp("fuzz"), rounds=1, drop={0: [2]})
    return read_ledger(ledger)[1][0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_records_raise_only_typed_errors(one_record: dict[str, Any], data: st.DataObject) -> None:
    import copy

    rec = copy.deepcopy(one_record)
    paths = [p for p in _paths(rec) if p and p[0] in ("audit", "round", "round_id", "spec", "model_digest",
                                                       "survivors", "protocol", "security_mode")]  # fmt: skip
    path = data.draw(st.sampled_from(paths))
    value = data.draw(_JSON)
    target: Any = rec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        verify_contributions(rec, _ALLIANCE)
    except (MessageError, SignatureError):
        return


_ALLIANCE = generate_alliance(range(1, N + 1), 7)[1]
