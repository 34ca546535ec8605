"""Ledger replay and verification: walk the hash chain line by line (format, ``prev`` links,
signatures, increasing rounds), detect a torn last line, and check anchors (one job of
:mod:`dp.ledger`)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dp._ledger_format import (
    _HEX,
    _RECORD_CONTEXT,
    GENESIS_HASH,
    LEDGER_FORMAT,
    _is_hash,
    _reject_constant,
    _sha256_hex,
    _validate_header_fields,
    _validate_round_fields,
    canonical_json,
)
from dp._ledger_io import _read_bytes
from dp._ledger_sign import LedgerHead, PublicKeyLike, SignedHead, _pub_hex, load_public_key
from dp.errors import LedgerError, LedgerVerificationError


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of :func:`verify_ledger`.

    Attributes:
        ok: True if every check passed.
        head: head of the longest verified prefix (the whole ledger when ``ok``); None if
            not even the header verified.
        count: number of lines verified (header included).
        first_bad_line: 1-based number of the first bad line; for a detected truncation, the
            first missing line; None when ``ok`` or when the failure cannot be pinned to a line.
        reason: human-readable explanation (empty when ``ok``).
        signer: hex Ed25519 public key named in the header, or None for an unsigned ledger.
        signer_checked: True if signatures were checked against a key supplied by the caller
            (rather than only against the header's own, self-asserted, key).
        anchored: True if the tail was checked against an anchor (expected head, client
            anchors or signed head); otherwise truncation of trailing records is undetectable.
        torn: True if the failure is a torn (partially written) last line.
    """

    ok: bool
    head: LedgerHead | None
    count: int
    first_bad_line: int | None
    reason: str
    signer: str | None = None
    signer_checked: bool = False
    anchored: bool = False
    torn: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the head as ``"COUNT:HASH"``)."""
        return {
            "ok": self.ok,
            "count": self.count,
            "head": None if self.head is None else str(self.head),
            "first_bad_line": self.first_bad_line,
            "reason": self.reason,
            "signer": self.signer,
            "signer_checked": self.signer_checked,
            "anchored": self.anchored,
            "torn": self.torn,
        }

    def summary(self) -> str:
        """One line for humans: the head when intact, the first bad line and reason otherwise."""
        if self.ok:
            assert self.head is not None
            rounds = self.count - 1
            sig = "unsigned"
            if self.signer is not None:
                sig = f"signed by {self.signer[:16]}..."
                if not self.signer_checked:
                    sig += " (key from header, unauthenticated)"
            tail = (
                "tail anchored"
                if self.anchored
                else ("tail NOT anchored: removal of trailing records is undetectable; keep this head elsewhere")
            )
            return f"OK: {self.count} lines (header + {rounds} rounds), head {self.head}; {sig}; {tail}"
        line = "unknown line" if self.first_bad_line is None else f"line {self.first_bad_line}"
        return f"FAILED at {line}: {self.reason}"


@dataclass
class _Scan:
    records: list[dict[str, Any]]  # verified prefix (header first)
    hashes: list[str]  # hash of each verified line
    sizes: list[int]  # byte length of each verified line including its newline
    bad_line: int | None
    reason: str
    torn: bool
    signer: str | None
    signer_checked: bool


def _check_line(
    line: bytes, lineno: int, prev_hash: str, pub: Ed25519PublicKey | None, last_round: int | None
) -> dict[str, Any]:
    """Parse and check one complete line; raise LedgerError with the reason if it is bad."""
    try:
        text = line.decode("ascii")
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise LedgerError(f"not valid canonical JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise LedgerError("not a JSON object")
    if canonical_json(obj) != line:
        raise LedgerError("not in canonical form (sorted keys, no spaces): the line was edited")
    if obj.get("prev") != prev_hash:
        what = "the genesis hash" if lineno == 1 else f"the hash of line {lineno - 1}"
        raise LedgerError(f"'prev' does not match {what}: a record was edited, deleted, inserted or reordered")
    if lineno == 1:
        if obj.get("type") != "header":
            raise LedgerError("line 1 is not a header record")
        if obj.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"unsupported ledger format {obj.get('format')!r} (this library reads {LEDGER_FORMAT})")
        _validate_header_fields(obj)
    else:
        if obj.get("type") == "header":
            raise LedgerError("a second header record")
        _validate_round_fields(obj)
        if last_round is not None and obj["round"] <= last_round:
            raise LedgerError(f"round index {obj['round']} does not increase (previous round {last_round})")
    sig = obj.get("sig")
    if pub is None:
        if sig is not None:
            raise LedgerError("carries a signature but the header names no signer")
    else:
        if not isinstance(sig, str):
            raise LedgerError("unsigned record in a signed ledger")
        unsigned = {k: v for k, v in obj.items() if k != "sig"}
        try:
            pub.verify(bytes.fromhex(sig), _RECORD_CONTEXT + canonical_json(unsigned))
        except (InvalidSignature, ValueError) as exc:
            raise LedgerError("bad Ed25519 signature") from exc
    return obj


def _scan(data: bytes, pubkey: Ed25519PublicKey | None = None) -> _Scan:
    """Walk the lines of ``data``, stopping at the first bad one."""
    scan = _Scan([], [], [], None, "", False, None, False)
    if not data:
        scan.bad_line, scan.reason = 1, "empty ledger: no header line"
        return scan
    parts = data.split(b"\n")
    complete, tail = parts[:-1], parts[-1]
    prev = GENESIS_HASH
    pub: Ed25519PublicKey | None = None
    last_round: int | None = None
    for i, line in enumerate(complete, start=1):
        try:
            if not line:
                raise LedgerError("empty line")
            if i == 1:
                pub = _header_signer(line, pubkey, scan)
            obj = _check_line(line, i, prev, pub, last_round)
        except LedgerError as exc:
            scan.bad_line, scan.reason = i, str(exc)
            return scan
        scan.records.append(obj)
        prev = _sha256_hex(line)
        scan.hashes.append(prev)
        scan.sizes.append(len(line) + 1)
        if i > 1:
            last_round = obj["round"]
    if tail:
        n = len(complete) + 1
        scan.bad_line, scan.torn = n, True
        scan.reason = (
            f"torn last line ({len(tail)} bytes without a final newline): a write was interrupted; "
            "it is not repaired automatically (see remove_torn_tail)"
        )
    return scan


def _header_signer(line: bytes, pubkey: Ed25519PublicKey | None, scan: _Scan) -> Ed25519PublicKey | None:
    """Decide which key checks the signatures: the caller's, or the header's own."""
    try:
        obj = json.loads(line.decode("ascii"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise LedgerError(f"not valid canonical JSON ({exc})") from exc
    signer = obj.get("signer") if isinstance(obj, dict) else None
    if signer is not None and (not isinstance(signer, str) or len(signer) != 64 or not set(signer) <= _HEX):
        raise LedgerError("header 'signer' must be a 64-hex-digit Ed25519 public key or null")
    scan.signer = signer
    if pubkey is not None:
        if signer is None:
            raise LedgerError("the ledger is unsigned but a public key was given to check it against")
        if signer != _pub_hex(pubkey):
            raise LedgerError(
                "the header's signer is not the given public key: the ledger was re-signed by another key"
            )
        scan.signer_checked = True
        return pubkey
    if signer is None:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer))
    except ValueError as exc:
        raise LedgerError(f"header 'signer' is not a valid Ed25519 public key: {exc}") from exc


def _check_anchor(
    hashes: Sequence[str], count: int | None, hash_hex: str, exact: bool, label: str
) -> tuple[int | None, str]:
    """Check an anchor against the verified line hashes; return (bad_line, reason) or (None, "")."""
    n = len(hashes)
    if count is not None:
        if count > n:
            return n + 1, (
                f"{label} says the ledger had {count} lines but it has {n}: trailing records were removed (truncation)"
            )
        if hashes[count - 1] != hash_hex:
            return count, f"line {count} does not hash to the {label}: that line or an earlier one was rewritten"
        if exact and count < n:
            return count + 1, f"the ledger continues after the {label} (line {count}): unexpected extra records"
        return None, ""
    if hash_hex in hashes:
        k = hashes.index(hash_hex) + 1
        if exact and k < n:
            return k + 1, f"the {label} is line {k}, but the ledger continues: unexpected extra records"
        return None, ""
    return None, (
        f"no line hashes to the {label} {hash_hex[:16]}...: trailing records were removed or the ledger was rewritten"
    )


def _parse_anchor(value: LedgerHead | SignedHead | str) -> tuple[int | None, str]:
    if isinstance(value, SignedHead):
        return value.count, value.hash
    if isinstance(value, LedgerHead):
        return value.count, value.hash
    if not isinstance(value, str):
        raise LedgerError(f"an anchor is a LedgerHead or 'HASH' / 'COUNT:HASH' text, got {type(value).__name__}")
    text = value.strip().lower()
    if ":" in text:
        h = LedgerHead.parse(text)
        return h.count, h.hash
    if not _is_hash(text):
        raise LedgerError(f"an anchor hash must be 64 hex digits, got {value!r}")
    return None, text


def verify_ledger(
    path: str | os.PathLike[str],
    expect_head: LedgerHead | str | None = None,
    pubkey: PublicKeyLike | None = None,
    *,
    signed_head: SignedHead | str | os.PathLike[str] | None = None,
    anchors: Iterable[LedgerHead | str] = (),
) -> VerificationResult:
    """Verify a ledger's hash chain, format, signatures and, if given, its anchors.

    Args:
        path: the ledger file.
        expect_head: the head the ledger must end at exactly, as ``LedgerHead``,
            ``"COUNT:HASH"`` or ``"HASH"``; detects truncation and extra records.
        pubkey: the signer's Ed25519 public key; every line must then be signed by it.
            Without it, signatures are checked only against the key the header names,
            which an attacker rewriting the whole file could replace.
        signed_head: a :class:`SignedHead` (or its file) checked with ``pubkey``; the ledger
            must contain that head (it may have grown since). When ``pubkey`` is given and
            this is None, the file ``<ledger>.head`` is used if it exists.
        anchors: heads the ledger must contain (e.g. heads handed to clients in round
            configurations); each may be followed by later records.

    Returns:
        A :class:`VerificationResult`; this function does not raise for a bad ledger.

    Raises:
        LedgerError: the file or a key cannot be read, or an argument is malformed.
    """
    exp = None if expect_head is None else _parse_anchor(expect_head)
    anchor_list = [_parse_anchor(a) for a in anchors]
    pub = None if pubkey is None else load_public_key(pubkey)
    sh: SignedHead | None = None
    if signed_head is None and pub is not None and Path(os.fspath(path) + ".head").exists():
        signed_head = Path(os.fspath(path) + ".head")
    if signed_head is not None:
        if pub is None:
            raise LedgerError("checking a signed head needs the signer's public key (pubkey)")
        sh = signed_head if isinstance(signed_head, SignedHead) else SignedHead.load(signed_head)
    data = _read_bytes(path)
    scan = _scan(data, pub)
    head = LedgerHead(len(scan.hashes), scan.hashes[-1]) if scan.hashes else None

    anchored = sh is not None or bool(anchor_list) or exp is not None

    def result(ok: bool, bad: int | None, reason: str) -> VerificationResult:
        return VerificationResult(
            ok, head, len(scan.hashes), bad, reason, scan.signer, scan.signer_checked, anchored, scan.torn and not ok
        )

    if scan.reason:
        return result(False, scan.bad_line, scan.reason)
    if sh is not None:
        assert pub is not None
        if not sh.verify(pub):
            return result(False, None, "the signed head's signature does not verify with the given public key")
        bad, why = _check_anchor(scan.hashes, sh.count, sh.hash, False, "signed head")
        if why:
            return result(False, bad, why)
    for count, h in anchor_list:
        bad, why = _check_anchor(scan.hashes, count, h, False, "anchor")
        if why:
            return result(False, bad, why)
    if exp is not None:
        bad, why = _check_anchor(scan.hashes, exp[0], exp[1], True, "expected head")
        if why:
            return result(False, bad, why)
    return result(True, None, "")


def read_ledger(path: str | os.PathLike[str], *, strict: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return ``(header, round_records)`` of a ledger.

    With ``strict=True`` (default) the whole ledger must verify (anchors are not checked;
    use :func:`verify_ledger` for those).  With ``strict=False`` the verified prefix is
    returned and records after the first bad line are dropped -- for reports on damaged
    ledgers, which must still show the failure.

    Raises:
        LedgerVerificationError: the ledger is bad (strict) or its header is bad (either mode).
        LedgerError: the file cannot be read.
    """
    scan = _scan(_read_bytes(path))
    if scan.reason and (strict or not scan.records):
        raise LedgerVerificationError(f"{os.fspath(path)}: line {scan.bad_line}: {scan.reason}", line=scan.bad_line)
    return copy.deepcopy(scan.records[0]), copy.deepcopy(scan.records[1:])
