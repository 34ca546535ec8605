"""Tamper-evident privacy ledger: chain, signatures, anchors, torn lines, atomic appends, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.errors import LedgerError, LedgerVerificationError
from dp.ledger import (
    GENESIS_HASH,
    Ledger,
    LedgerHead,
    SignedHead,
    canonical_json,
    load_private_key,
    load_public_key,
    read_ledger,
    remove_torn_tail,
    verify_ledger,
)

HEADER: dict[str, Any] = {
    "accountant": "rdp",
    "delta": 1e-5,
    "budget": 8.0,
    "population": 10_000,
    "planned_clients": 10,
    "cohort_floor": 8,
    "protocol": {"bits": 32, "k": 6, "t": 4},
    "dp": {"mechanism": "skellam", "noise_multiplier": 1.1},
    "threat_model": {"dropout_fraction": 0.1, "corrupt_fraction": 0.05},
}


def make_record(i: int, survivors: int = 9, sampled: int = 10) -> dict[str, Any]:
    return {
        "round": i,
        "round_id": f"{i:08x}",
        "sampled": sampled,
        "survivors": survivors,
        "dropouts": sampled - survivors,
        "clip_norm": 1.0,
        "mechanism": {"name": "skellam", "mu": 50.0 + i},
        "noise_present": 1.1,
        "noise_guaranteed": 0.9,
        "epsilon": {"release": 0.25 * (i + 1), "server": 1.5 * (i + 1)},
        "events": {"release": {"kind": "test", "i": i}, "server": {"kind": "test", "i": i}},
    }


def build(tmp_path: Path, n: int = 5, key: Ed25519PrivateKey | None = None, name: str = "run.jsonl") -> Ledger:
    led = Ledger.create(tmp_path / name, HEADER, signing_key=key, now="2024-05-01T12:00:00Z")
    for i in range(n):
        led.append(make_record(i))
    return led


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def edit_line(path: Path, lineno: int, change: dict[str, Any]) -> None:
    """Re-encode line ``lineno`` canonically with ``change`` applied (keeping its old prev/sig)."""
    lines = lines_of(path)
    obj = json.loads(lines[lineno - 1])
    obj.update(change)
    lines[lineno - 1] = canonical_json(obj)
    write_lines(path, lines)


def rechain(lines: list[bytes], key: Ed25519PrivateKey | None) -> list[bytes]:
    """What a forger with write access does: recompute every prev (and signature with ``key``)."""
    out: list[bytes] = []
    prev = GENESIS_HASH
    for raw in lines:
        obj = json.loads(raw)
        obj.pop("sig", None)
        obj["prev"] = prev
        if obj.get("type") == "header":
            obj["signer"] = (
                None
                if key is None
                else key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
            )
        body = canonical_json(obj)
        if key is not None:
            body = canonical_json(dict(obj, sig=key.sign(b"secagg-ledger-record/1\x00" + body).hex()))
        out.append(body)
        prev = hashlib.sha256(body).hexdigest()
    return out


# ------------------------------------------------------------------------------------------
# format
# ------------------------------------------------------------------------------------------
def test_roundtrip_and_canonical_lines(tmp_path: Path) -> None:
    led = build(tmp_path, 4)
    path = led.path
    header, records = read_ledger(path)
    assert header["type"] == "header" and header["prev"] == GENESIS_HASH
    assert header["created"] == "2024-05-01T12:00:00Z"
    assert header["library_version"] and header["delta"] == 1e-5 and header["signer"] is None
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert records[2]["events"] == {"release": {"kind": "test", "i": 2}, "server": {"kind": "test", "i": 2}}
    lines = lines_of(path)
    prev = GENESIS_HASH
    for raw in lines:
        obj = json.loads(raw)
        assert raw == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        assert obj["prev"] == prev
        prev = hashlib.sha256(raw).hexdigest()
    assert led.head == LedgerHead(5, prev)
    assert led.head_for_clients() == f"5:{prev}"
    res = verify_ledger(path)
    assert res.ok and res.head == led.head and res.count == 5 and not res.anchored
    assert "5:" + prev in res.summary() and "NOT anchored" in res.summary()


def test_created_time_is_injected_not_read(tmp_path: Path) -> None:
    led = Ledger.create(tmp_path / "a.jsonl", HEADER)
    assert led.header["created"] is None
    with pytest.raises(LedgerError):
        Ledger.create(tmp_path / "b.jsonl", HEADER, now=12345)  # type: ignore[arg-type]


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text("precious\n")
    with pytest.raises(LedgerError, match="already exists"):
        Ledger.create(p, HEADER)
    assert p.read_text() == "precious\n"


@pytest.mark.parametrize(
    "header",
    [
        {"delta": 1e-5},
        {"accountant": "rdp"},
        {"accountant": "rdp", "delta": 1.5},
        {"accountant": "rdp", "delta": float("nan")},
        {"accountant": "rdp", "delta": 1e-5, "budget": float("inf")},
        {"accountant": "rdp", "delta": 1e-5, "budget": -1.0},
        {"accountant": "rdp", "delta": 1e-5, "population": 0},
        {"accountant": "rdp", "delta": 1e-5, "prev": "x"},
        {"accountant": "rdp", "delta": 1e-5, "protocol": [1, 2]},
        {"accountant": "rdp", "delta": 1e-5, 3: "non-str key"},
        {"accountant": "rdp", "delta": 1e-5, "obj": object()},
    ],
)
def test_bad_header_refused_and_no_file(tmp_path: Path, header: dict[Any, Any]) -> None:
    p = tmp_path / "h.jsonl"
    with pytest.raises(LedgerError):
        Ledger.create(p, header)
    assert not p.exists()


def test_numpy_scalars_are_stored_as_plain_numbers(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    led = Ledger.create(tmp_path / "n.jsonl", HEADER)
    rec = make_record(0)
    rec["sampled"], rec["survivors"], rec["dropouts"] = np.int64(10), np.int32(9), np.int64(1)
    rec["noise_present"] = np.float64(1.25)
    led.append(rec)
    _, records = read_ledger(led.path)
    assert records[0]["sampled"] == 10 and records[0]["noise_present"] == 1.25


# ------------------------------------------------------------------------------------------
# validation: a failed append leaves the ledger unchanged
# ------------------------------------------------------------------------------------------
def _bad_records() -> list[tuple[str, dict[str, Any]]]:
    base = make_record(9)
    out: list[tuple[str, dict[str, Any]]] = []
    for key in ("round", "round_id", "sampled", "survivors", "clip_norm", "mechanism", "epsilon", "events"):
        out.append((f"missing {key}", {k: v for k, v in base.items() if k != key}))
    out += [
        ("nan clip", dict(base, clip_norm=float("nan"))),
        ("inf noise", dict(base, noise_present=float("inf"))),
        ("nan epsilon", dict(base, epsilon={"release": float("nan"), "server": 1.0})),
        ("nan nested in event", dict(base, events={"release": {"sigma": float("nan")}, "server": {}})),
        ("survivors > sampled", dict(base, survivors=11, dropouts=-1)),
        ("dropouts inconsistent", dict(base, dropouts=3)),
        ("guaranteed > present", dict(base, noise_guaranteed=2.0)),
        ("negative clip", dict(base, clip_norm=-1.0)),
        ("round not increasing", dict(base, round=4)),
        ("caller sets prev", dict(base, prev="0" * 64)),
        ("caller sets sig", dict(base, sig="00")),
        ("second header", dict(base, type="header")),
        ("epsilon missing adversary", dict(base, epsilon={"release": 1.0})),
        ("bool count", dict(base, sampled=True)),
        ("bad self_reported", dict(base, self_reported="eps=1")),
        ("negative self_reported", dict(base, self_reported=[1.0, -2.0])),
    ]
    return out


@pytest.mark.parametrize(("why", "record"), _bad_records(), ids=[w for w, _ in _bad_records()])
def test_failed_append_leaves_ledger_unchanged(tmp_path: Path, why: str, record: dict[str, Any]) -> None:
    led = build(tmp_path, 5)
    before, head = led.path.read_bytes(), led.head
    with pytest.raises(LedgerError):
        led.append(record)
    assert led.path.read_bytes() == before and led.head == head
    led.append(make_record(9))  # still usable
    assert verify_ledger(led.path).ok


def test_nan_refused_everywhere(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="finite"):
        canonical_json({"x": float("nan")})
    led = build(tmp_path, 1)
    # a NaN smuggled into the file by hand is a bad line
    lines = lines_of(led.path)
    lines.append(lines[-1].replace(b'"clip_norm":1.0', b'"clip_norm":NaN'))
    write_lines(led.path, lines)
    res = verify_ledger(led.path)
    assert not res.ok and res.first_bad_line == 3


def test_infinite_epsilon_is_stored_as_null(tmp_path: Path) -> None:
    led = build(tmp_path, 0)
    led.append(dict(make_record(0), epsilon={"release": 0.5, "server": float("inf")}))
    _, recs = read_ledger(led.path)
    assert recs[0]["epsilon"] == {"release": 0.5, "server": None}
    with pytest.raises(LedgerError):
        led.append(dict(make_record(1), epsilon={"release": float("-inf"), "server": None}))


def test_self_reported_epsilons_are_kept_as_self_reported(tmp_path: Path) -> None:
    led = build(tmp_path, 0)
    led.append(dict(make_record(0), self_reported={"client-1": 2.0, "client-7": 3.5}))
    _, recs = read_ledger(led.path)
    assert recs[0]["self_reported"] == {"client-1": 2.0, "client-7": 3.5}


# ------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------
def test_crash_mid_write_leaves_a_valid_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    led = build(tmp_path, 3)
    before, head = led.path.read_bytes(), led.head
    real_write = os.write

    def crash(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])  # half the line reaches the disk, then the "crash"
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "write", crash)
    with pytest.raises(LedgerError, match="left unchanged"):
        led.append(make_record(3))
    monkeypatch.setattr(os, "write", real_write)
    assert led.path.read_bytes() == before and led.head == head
    assert verify_ledger(led.path, expect_head=head).ok
    led.append(make_record(3))
    assert verify_ledger(led.path).count == 5


def test_short_write_and_failed_fsync_roll_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    led = build(tmp_path, 2)
    before = led.path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(LedgerError, match="short write"):
        led.append(make_record(2))
    assert led.path.read_bytes() == before
    monkeypatch.setattr(os, "write", real_write)

    def bad_fsync(fd: int) -> None:
        raise OSError("disk full")

    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_once_bad(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            bad_fsync(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_once_bad)
    with pytest.raises(LedgerError, match="disk full"):
        led.append(make_record(2))
    assert led.path.read_bytes() == before


def test_torn_last_line_is_reported_not_repaired(tmp_path: Path) -> None:
    led = build(tmp_path, 3)
    good = led.path.read_bytes()
    line = canonical_json(dict(make_record(3), prev=led.head.hash)) + b"\n"
    torn = good + line[:37]  # what a crash mid-write can leave
    led.path.write_bytes(torn)

    res = verify_ledger(led.path)
    assert not res.ok and res.torn and res.first_bad_line == 5
    assert "torn" in res.reason and res.count == 4 and res.head == led.head
    with pytest.raises(LedgerVerificationError) as info:
        Ledger.open(led.path)
    assert info.value.line == 5 and "torn" in str(info.value)
    with pytest.raises(LedgerVerificationError, match="torn"):
        led.append(make_record(3))
    with pytest.raises(LedgerVerificationError):
        read_ledger(led.path)
    _header, prefix = read_ledger(led.path, strict=False)
    assert len(prefix) == 3
    assert led.path.read_bytes() == torn  # never silently repaired

    removed = remove_torn_tail(led.path)  # explicit operator action
    assert removed == line[:37] and led.path.read_bytes() == good
    assert verify_ledger(led.path).ok
    with pytest.raises(LedgerVerificationError, match="no torn"):
        remove_torn_tail(led.path)


def test_reopen_and_append(tmp_path: Path) -> None:
    led = build(tmp_path, 2)
    again = Ledger.open(led.path)
    assert again.head == led.head
    again.append(make_record(2))
    with pytest.raises(LedgerError, match="changed on disk"):
        led.append(make_record(3))  # the stale writer must not fork the chain
    with pytest.raises(LedgerError, match="exceed"):
        again.append(make_record(2))
    assert verify_ledger(led.path).count == 4


# ------------------------------------------------------------------------------------------
# tampering: every kind of edit
# ------------------------------------------------------------------------------------------
def test_changed_value_is_detected(tmp_path: Path) -> None:
    led = build(tmp_path, 5)
    edit_line(led.path, 3, {"survivors": 10, "dropouts": 0})
    res = verify_ledger(led.path)
    assert not res.ok and res.first_bad_line == 4 and "line 3" in res.reason


def test_changed_value_in_signed_ledger_names_the_edited_line(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    led = build(tmp_path, 5, key)
    edit_line(led.path, 3, {"epsilon": {"release": 0.0, "server": 0.0}})
    res = verify_ledger(led.path, pubkey=key.public_key())
    assert not res.ok and res.first_bad_line == 3 and "signature" in res.reason


def test_non_canonical_edit_is_detected(tmp_path: Path) -> None:
    led = build(tmp_path, 3)
    lines = lines_of(led.path)
    lines[1] = lines[1].replace(b'"clip_norm":1.0', b'"clip_norm": 1.0')
    write_lines(led.path, lines)
    res = verify_ledger(led.path)
    assert not res.ok and res.first_bad_line == 2 and "canonical" in res.reason


def test_deleted_record_is_detected(tmp_path: Path) -> None:
    led = build(tmp_path, 5)
    lines = lines_of(led.path)
    del lines[2]
    write_lines(led.path, lines)
    res = verify_ledger(led.path)
    assert not res.ok and res.first_bad_line == 3 and "prev" in res.reason


def test_inserted_record_is_detected(tmp_path: Path) -> None:
    led = build(tmp_path, 5)
    lines = lines_of(led.path)
    lines.insert(3, lines[2])  # a replayed copy
    write_lines(led.path, lines)
    assert verify_ledger(led.path).first_bad_line == 4
    # a forged record chained onto line 3: the next line no longer links
    lines = lines_of(led.path)
    del lines[3]
    forged = canonical_json(dict(make_record(2), round=2, prev=hashlib.sha256(lines[2]).hexdigest()))
    lines.insert(3, forged)
    write_lines(led.path, lines)
    res = verify_ledger(led.path)
    assert not res.ok and res.first_bad_line in (4, 5)


def test_reordered_records_are_detected(tmp_path: Path) -> None:
    led = build(tmp_path, 5)
    lines = lines_of(led.path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(led.path, lines)
    res = verify_ledger(led.path)
    assert not res.ok and res.first_bad_line == 3


def test_reordered_and_rechained_records_are_detected(tmp_path: Path) -> None:
    led = build(tmp_path, 5)
    lines = lines_of(led.path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(led.path, rechain(lines, None))
    res = verify_ledger(led.path)
    assert not res.ok and res.first_bad_line == 4 and "increase" in res.reason


def test_edited_header_is_detected(tmp_path: Path) -> None:
    led = build(tmp_path, 3)
    edit_line(led.path, 1, {"delta": 1e-3})
    res = verify_ledger(led.path)
    assert not res.ok and res.first_bad_line == 2
    key = Ed25519PrivateKey.generate()
    signed = build(tmp_path, 3, key, name="signed.jsonl")
    edit_line(signed.path, 1, {"budget": 100.0})
    res = verify_ledger(signed.path, pubkey=key.public_key())
    assert not res.ok and res.first_bad_line == 1


def test_resigned_with_another_key_is_detected(tmp_path: Path) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    led = build(tmp_path, 4, key)
    lines = lines_of(led.path)
    obj = json.loads(lines[2])
    obj["epsilon"] = {"release": 0.0, "server": 0.0}
    lines = rechain([*lines[:2], canonical_json(obj), *lines[3:]], other)  # forger's own key throughout
    write_lines(led.path, lines)
    res = verify_ledger(led.path, pubkey=key.public_key())
    assert not res.ok and res.first_bad_line == 1 and "re-signed" in res.reason
    # without the genuine key the forgery is self-consistent: only an anchor or the key can tell
    res = verify_ledger(led.path)
    assert res.ok and not res.signer_checked and "unauthenticated" in res.summary()
    assert not verify_ledger(led.path, expect_head=led.head).ok


def test_one_line_resigned_with_another_key_is_detected(tmp_path: Path) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    led = build(tmp_path, 4, key)
    lines = lines_of(led.path)
    obj = json.loads(lines[2])
    obj.pop("sig")
    lines[2] = canonical_json(dict(obj, sig=other.sign(b"secagg-ledger-record/1\x00" + canonical_json(obj)).hex()))
    write_lines(led.path, lines)
    res = verify_ledger(led.path)  # even the header's own key catches it
    assert not res.ok and res.first_bad_line == 3


def test_rewritten_unsigned_ledger_needs_an_anchor(tmp_path: Path) -> None:
    led = build(tmp_path, 4)
    lines = lines_of(led.path)
    obj = json.loads(lines[2])
    obj["epsilon"] = {"release": 0.0, "server": 0.0}
    write_lines(led.path, rechain([*lines[:2], canonical_json(obj), *lines[3:]], None))
    assert verify_ledger(led.path).ok  # a bare chain cannot tell
    res = verify_ledger(led.path, expect_head=led.head)
    assert not res.ok and res.first_bad_line == 5
    res = verify_ledger(led.path, anchors=[f"2:{hashlib.sha256(lines[1]).hexdigest()}"])
    assert res.ok  # lines 1-2 untouched
    res = verify_ledger(led.path, anchors=[f"3:{hashlib.sha256(lines[2]).hexdigest()}"])
    assert not res.ok and res.first_bad_line == 3


# ------------------------------------------------------------------------------------------
# truncation and anchors
# ------------------------------------------------------------------------------------------
def test_truncation_without_anchor_passes_but_shows_the_head(tmp_path: Path) -> None:
    led = build(tmp_path, 5)
    lines = lines_of(led.path)
    write_lines(led.path, lines[:4])
    res = verify_ledger(led.path)
    assert res.ok and res.count == 4 and res.head is not None and res.head.count == 4
    assert "4 lines" in res.summary() and "NOT anchored" in res.summary()


def test_truncation_with_expected_head_is_detected(tmp_path: Path) -> None:
    led = build(tmp_path, 5)
    head = led.head
    write_lines(led.path, lines_of(led.path)[:4])
    res = verify_ledger(led.path, expect_head=head)
    assert not res.ok and res.first_bad_line == 5 and "truncation" in res.reason
    res = verify_ledger(led.path, expect_head=head.hash)  # bare hash anchor
    assert not res.ok and "removed" in res.reason
    res = verify_ledger(led.path, expect_head=str(head))
    assert not res.ok


def test_expected_head_rejects_extra_records(tmp_path: Path) -> None:
    led = build(tmp_path, 3)
    head = led.head
    led.append(make_record(3))
    res = verify_ledger(led.path, expect_head=head)
    assert not res.ok and res.first_bad_line == 5
    assert not verify_ledger(led.path, expect_head=head.hash).ok
    assert verify_ledger(led.path, anchors=[head]).ok  # an anchor may be followed by more rounds


def test_client_anchor_proves_truncation(tmp_path: Path) -> None:
    led = build(tmp_path, 2)
    config_heads = []
    for i in range(2, 6):
        config_heads.append(led.head_for_clients())  # embedded in round i's configuration
        led.append(make_record(i))
    assert verify_ledger(led.path, anchors=config_heads).ok
    write_lines(led.path, lines_of(led.path)[:4])  # the operator cuts rounds 3-5
    res = verify_ledger(led.path, anchors=[config_heads[-1]])  # a client of round 5 holds this
    assert not res.ok and res.first_bad_line == 5 and res.anchored
    assert verify_ledger(led.path, anchors=config_heads[:2]).ok


def test_signed_head_detects_truncation(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    led = build(tmp_path, 5, key)
    elsewhere = tmp_path / "anchor" / "run.head"
    elsewhere.parent.mkdir()
    sh = led.write_signed_head(elsewhere)
    assert sh.verify(key.public_key()) and SignedHead.load(elsewhere) == sh
    assert sh.head == led.head
    res = verify_ledger(led.path, pubkey=key.public_key(), signed_head=elsewhere)
    assert res.ok and res.anchored and res.signer_checked
    write_lines(led.path, lines_of(led.path)[:3])
    res = verify_ledger(led.path, pubkey=key.public_key(), signed_head=elsewhere)
    assert not res.ok and res.first_bad_line == 4 and "truncation" in res.reason
    # a forged signed head does not verify
    forged = SignedHead(3, res.head.hash if res.head else "", sh.signer, sh.sig)
    assert not forged.verify(key.public_key())
    res = verify_ledger(led.path, pubkey=key.public_key(), signed_head=forged)
    assert not res.ok and "signature" in res.reason
    with pytest.raises(LedgerError, match="public key"):
        verify_ledger(led.path, signed_head=elsewhere)


def test_default_signed_head_next_to_ledger(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    led = build(tmp_path, 3, key)
    led.write_signed_head(str(led.path) + ".head")
    assert verify_ledger(led.path, pubkey=key.public_key()).anchored
    write_lines(led.path, lines_of(led.path)[:2])
    assert not verify_ledger(led.path, pubkey=key.public_key()).ok


def test_head_parsing() -> None:
    h = LedgerHead(3, "ab" * 32)
    assert LedgerHead.parse(str(h)) == h
    assert LedgerHead.parse(f"3:{'AB' * 32}") == h
    for bad in ("3", "x:" + "ab" * 32, "3:abc"):
        with pytest.raises(LedgerError):
            LedgerHead.parse(bad)
    with pytest.raises(LedgerError):
        LedgerHead(0, "ab" * 32)


# ------------------------------------------------------------------------------------------
# keys and signatures
# ------------------------------------------------------------------------------------------
def test_keys_from_raw_pem_and_hex_files(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    raw_priv = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem_priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw_pub = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem_pub = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    files = {"k.raw": raw_priv, "k.pem": pem_priv, "p.raw": raw_pub, "p.pem": pem_pub, "p.hex": raw_pub.hex().encode()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name in ("k.raw", "k.pem"):
        assert load_private_key(tmp_path / name).public_key() == pub
    for name in ("p.raw", "p.pem", "p.hex"):
        assert load_public_key(tmp_path / name) == pub
    assert load_private_key(raw_priv).public_key() == pub
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(LedgerError):
        load_public_key(tmp_path / "junk")
    with pytest.raises(LedgerError):
        load_private_key(tmp_path / "missing")

    led = build(tmp_path, 3, load_private_key(tmp_path / "k.pem"))
    for name in ("p.raw", "p.pem", "p.hex"):
        res = verify_ledger(led.path, pubkey=tmp_path / name)
        assert res.ok and res.signer_checked


def test_signed_ledger_open_needs_the_right_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    led = build(tmp_path, 2, key)
    with pytest.raises(LedgerError, match="signing_key"):
        Ledger.open(led.path)
    with pytest.raises(LedgerError, match="does not match"):
        Ledger.open(led.path, signing_key=Ed25519PrivateKey.generate())
    Ledger.open(led.path, signing_key=key).append(make_record(2))
    assert verify_ledger(led.path, pubkey=key.public_key()).ok
    unsigned = build(tmp_path, 1, name="u.jsonl")
    res = verify_ledger(unsigned.path, pubkey=key.public_key())
    assert not res.ok and res.first_bad_line == 1 and "unsigned" in res.reason
    with pytest.raises(LedgerError, match="signed ledger"):
        unsigned.signed_head()


# ------------------------------------------------------------------------------------------
# property: any single-byte edit anywhere is detected
# ------------------------------------------------------------------------------------------
_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, LedgerHead, bytes, LedgerHead]:
    d = tmp_path_factory.mktemp("pristine")
    plain = build(d, 3, name="plain.jsonl")
    signed = build(d, 3, _KEY, name="signed.jsonl")
    return plain.path.read_bytes(), plain.head, signed.path.read_bytes(), signed.head


@settings(max_examples=50, deadline=None)
@given(pos=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255), signed=st.booleans())
def test_any_single_byte_edit_is_detected(
    pristine: tuple[bytes, LedgerHead, bytes, LedgerHead],
    tmp_path_factory: pytest.TempPathFactory,
    pos: float,
    byte: int,
    signed: bool,
) -> None:
    plain, plain_head, signed_data, signed_head = pristine
    data = signed_data if signed else plain
    i = int(pos * len(data))
    if data[i] == byte:
        byte = (byte + 1) % 256
    edited = data[:i] + bytes([byte]) + data[i + 1 :]
    path = tmp_path_factory.mktemp("edit") / "l.jsonl"
    path.write_bytes(edited)
    if signed:
        # the genuine key alone catches it (no anchor needed)...
        assert not verify_ledger(path, pubkey=_KEY.public_key()).ok
    # ...and for any ledger, the head kept elsewhere does
    res = verify_ledger(path, expect_head=signed_head if signed else plain_head)
    assert not res.ok


# ------------------------------------------------------------------------------------------
# command line: secagg verify
# ------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secagg.cli", "verify", *args], capture_output=True, text=True, check=False
    )


def test_cli_verify_intact_and_truncated(tmp_path: Path) -> None:
    led = build(tmp_path, 4)
    head = led.head
    out = _cli(str(led.path))
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 1 and str(head) in out.stdout and "5 lines" in out.stdout
    assert _cli(str(led.path), "--expect-head", head.hash).returncode == 0

    write_lines(led.path, lines_of(led.path)[:3])
    out = _cli(str(led.path))  # truncation alone is invisible, but the head shows it
    assert out.returncode == 0 and "3 lines" in out.stdout and "NOT anchored" in out.stdout
    out = _cli(str(led.path), "--expect-head", head.hash)
    assert out.returncode == 1 and "FAILED" in out.stdout
    out = _cli(str(led.path), "--expect-head", str(head))
    assert out.returncode == 1 and "line 4" in out.stdout


def test_cli_verify_reports_first_bad_line(tmp_path: Path) -> None:
    led = build(tmp_path, 4)
    lines = lines_of(led.path)
    del lines[2]
    write_lines(led.path, lines)
    out = _cli(str(led.path))
    assert out.returncode == 1 and "line 3" in out.stdout
    out = _cli(str(led.path), "--json")
    d = json.loads(out.stdout)
    assert out.returncode == 1 and d["ok"] is False and d["first_bad_line"] == 3


def test_cli_verify_torn_and_signed(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    led = build(tmp_path, 3, key)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert _cli(str(led.path), "--pubkey", str(pub)).returncode == 0
    out = _cli(str(led.path), "--pubkey", str(other))
    assert out.returncode == 1 and "line 1" in out.stdout
    sh = tmp_path / "kept-elsewhere.head"
    led.write_signed_head(sh)
    out = _cli(str(led.path), "--pubkey", str(pub), "--signed-head", str(sh))
    assert out.returncode == 0 and "tail anchored" in out.stdout
    with led.path.open("ab") as f:
        f.write(b'{"round":3,"rou')
    out = _cli(str(led.path))
    assert out.returncode == 1 and "line 5" in out.stdout and "torn" in out.stdout
    assert _cli(str(tmp_path / "missing.jsonl")).returncode == 2
