"""Tamper-evident privacy ledger: an append-only, hash-chained JSON Lines file per training run.

Layout (one canonical JSON object per line, UTF-8/ASCII, ``\\n``-terminated):

* line 1 is the **header** (``"type": "header"``): ledger format, library version, creation
  time (passed in by the caller; the core never reads a clock), the optional Ed25519 signer,
  and the caller's run description -- at least ``accountant`` and ``delta``, usually also the
  protocol and DP parameters, the epsilon ``budget``, the ``threat_model`` and ``population``;
* every further line is one **round** record (``"type": "round"``): round index and id,
  sampled / surviving client counts, dropouts, clip norm, mechanism and its parameters, the
  noise present and the noise guaranteed against the server, both cumulative epsilon figures
  (``release`` and ``server`` adversaries), the round's two privacy events (for replay by an
  auditor) and, optionally, example-level epsilons *self-reported* by clients.

Canonical JSON means sorted keys, no whitespace, ASCII escapes and no NaN or infinity; a
line that does not re-encode to exactly its own bytes fails verification.  Each record
carries ``prev``, the SHA-256 (hex) of the previous line's bytes (without the newline); the
header's ``prev`` is :data:`GENESIS_HASH`.  If the ledger is signed, each line also carries
``sig``: an Ed25519 signature over ``b"secagg-ledger-record/1\\x00"`` followed by the
canonical bytes of the record without ``sig``.

The **head** of a ledger is ``(count, hash)``: the number of lines (header included) and the
SHA-256 of the last line.  A hash chain detects any edited, deleted, inserted or reordered
line, but *not* the removal of trailing lines: a truncated chain is still a valid chain.
Truncation is detected only against an anchor kept elsewhere: an expected head
(``expect_head``), heads handed to clients in round configurations (``anchors``; see
:meth:`Ledger.head_for_clients`), or a signed head (:meth:`Ledger.signed_head`) checked with
the signer's public key.

Writes are atomic at the level of the ledger: each line is written with a single ``write``
call followed by ``fsync``; if the write fails the file is truncated back to its previous
length.  A line left torn by a crash is reported by :func:`verify_ledger` and refused by
:meth:`Ledger.open`; it is never silently repaired or ignored (:func:`remove_torn_tail`
removes it only when called explicitly).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dp.errors import LedgerError, LedgerVerificationError

try:  # POSIX advisory lock; absent on Windows, where appends are not locked.
    import fcntl as _fcntl
except ImportError:  # pragma: no cover
    _fcntl = None  # type: ignore[assignment]

__all__ = [
    "GENESIS_HASH",
    "LEDGER_FORMAT",
    "Ledger",
    "LedgerHead",
    "PrivateKeyLike",
    "PublicKeyLike",
    "SignedHead",
    "VerificationResult",
    "canonical_json",
    "load_private_key",
    "load_public_key",
    "read_ledger",
    "remove_torn_tail",
    "verify_ledger",
]

#: Version of the ledger file format written into every header.
LEDGER_FORMAT = 1
#: ``prev`` of the header line: 64 hex zeros.
GENESIS_HASH = "0" * 64

_RECORD_CONTEXT = b"secagg-ledger-record/1\x00"
_HEAD_CONTEXT = b"secagg-ledger-head/1\x00"
_HEADER_RESERVED = frozenset({"type", "format", "library_version", "created", "prev", "sig", "signer"})
_ROUND_RESERVED = frozenset({"prev", "sig"})
_ADVERSARIES = ("release", "server")
_HEX = frozenset("0123456789abcdef")

PrivateKeyLike = Ed25519PrivateKey | bytes | str | os.PathLike[str]
"""An Ed25519 private key, its 32 raw bytes, or the path of a raw (32-byte) or PEM (PKCS8) key file."""
PublicKeyLike = Ed25519PublicKey | bytes | str | os.PathLike[str]
"""An Ed25519 public key, its 32 raw bytes, or the path of a raw, 64-hex-digit or PEM key file."""


# --------------------------------------------------------------------------------------------
# canonical JSON
# --------------------------------------------------------------------------------------------
def _clean(value: Any, where: str) -> Any:
    """Deep-copy ``value`` into plain JSON types, refusing anything canonical JSON cannot hold."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LedgerError(f"{where} is {value!r}; the ledger stores only finite numbers (use null for 'unbounded')")
        return float(value)
    if isinstance(value, numbers.Integral):  # numpy integers
        return int(value)
    if isinstance(value, numbers.Real):  # numpy floats that are not float subclasses
        return _clean(float(value), where)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise LedgerError(f"{where} has a non-string key {k!r}; JSON object keys must be str")
            out[k] = _clean(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise LedgerError(
        f"{where} has type {type(value).__name__}, which is not JSON; convert it to a number, str, list or dict"
    )


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Canonical encoding of a JSON object: sorted keys, no spaces, ASCII, no NaN/infinity.

    Raises:
        LedgerError: if ``obj`` holds NaN, infinity, non-string keys or non-JSON values.
    """
    clean = _clean(obj, "record")
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite constant {name}")


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------
def load_private_key(key: PrivateKeyLike) -> Ed25519PrivateKey:
    """Return an Ed25519 private key from a key object, 32 raw bytes, or a raw/PEM key file.

    Raises:
        LedgerError: the file cannot be read or does not hold an unencrypted Ed25519 key.
    """
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, bytes):
        if len(key) != 32:
            raise LedgerError(f"a raw Ed25519 private key has 32 bytes, got {len(key)}")
        return Ed25519PrivateKey.from_private_bytes(key)
    try:
        data = Path(key).read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read signing key file {os.fspath(key)!r}: {exc}") from exc
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise LedgerError(
            f"{os.fspath(key)!r} is neither 32 raw bytes nor an unencrypted PEM private key: {exc}"
        ) from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise LedgerError(f"{os.fspath(key)!r} holds a {type(loaded).__name__}; the ledger needs an Ed25519 key")
    return loaded


def load_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """Return an Ed25519 public key from a key object, 32 raw bytes, or a raw/hex/PEM key file.

    Raises:
        LedgerError: the file cannot be read or does not hold an Ed25519 public key.
    """
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes):
        if len(key) != 32:
            raise LedgerError(f"a raw Ed25519 public key has 32 bytes, got {len(key)}")
        return Ed25519PublicKey.from_public_bytes(key)
    try:
        data = Path(key).read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read public key file {os.fspath(key)!r}: {exc}") from exc
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    text = data.strip()
    if len(text) == 64 and set(text.decode("ascii", "replace").lower()) <= _HEX:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode("ascii")))
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise LedgerError(f"{os.fspath(key)!r} is not a raw, hex or PEM Ed25519 public key: {exc}") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise LedgerError(f"{os.fspath(key)!r} holds a {type(loaded).__name__}; the ledger needs an Ed25519 key")
    return loaded


def _pub_hex(pub: Ed25519PublicKey) -> str:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _head_message(count: int, hash_hex: str) -> bytes:
    return _HEAD_CONTEXT + count.to_bytes(8, "big") + bytes.fromhex(hash_hex)


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerHead:
    """Head of a ledger: ``count`` lines (header included) and the SHA-256 hex of the last line.

    ``str(head)`` is ``"COUNT:HASH"``, the form accepted by ``--expect-head`` and anchors.
    """

    count: int
    hash: str

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise LedgerError(f"head count must be an int >= 1 (the header is line 1), got {self.count!r}")
        if not _is_hash(self.hash):
            raise LedgerError(f"head hash must be 64 lowercase hex digits, got {self.hash!r}")

    def __str__(self) -> str:
        return f"{self.count}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> LedgerHead:
        """Parse ``"COUNT:HASH"``.

        Raises:
            LedgerError: malformed text.
        """
        count, sep, hash_hex = text.strip().partition(":")
        if not sep or not count.isdigit():
            raise LedgerError(f"expected a head as COUNT:HASH, got {text!r}")
        return cls(int(count), hash_hex.lower())


@dataclass(frozen=True)
class SignedHead:
    """A head signed with Ed25519 over ``b"secagg-ledger-head/1\\x00" || count (8 bytes, big-endian) || hash``.

    Store it somewhere the ledger's writer cannot rewrite (another machine, a transparency
    log, the clients); a later ledger shorter than ``count`` lines, or whose line ``count``
    hashes differently, is then provably truncated or rewritten.
    """

    count: int
    hash: str
    signer: str
    sig: str

    @property
    def head(self) -> LedgerHead:
        """The unsigned head."""
        return LedgerHead(self.count, self.hash)

    def verify(self, pubkey: PublicKeyLike) -> bool:
        """True if ``sig`` is a valid signature of this head by ``pubkey``."""
        pub = load_public_key(pubkey)
        try:
            pub.verify(bytes.fromhex(self.sig), _head_message(self.count, self.hash))
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self) -> str:
        """Canonical JSON text (one line, no newline)."""
        d = {"type": "signed-head", "count": self.count, "hash": self.hash, "signer": self.signer, "sig": self.sig}
        return canonical_json(d).decode("ascii")

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedHead:
        """Parse :meth:`to_json` output.

        Raises:
            LedgerError: malformed text.
        """
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise LedgerError(f"signed head is not JSON: {exc}") from exc
        if not isinstance(d, dict) or d.get("type") != "signed-head":
            raise LedgerError("not a signed ledger head (expected a JSON object with type 'signed-head')")
        count, hash_hex, signer, sig = d.get("count"), d.get("hash"), d.get("signer"), d.get("sig")
        if not (isinstance(count, int) and _is_hash(hash_hex) and isinstance(signer, str) and isinstance(sig, str)):
            raise LedgerError("signed head needs int count and hex hash, signer and sig")
        LedgerHead(count, str(hash_hex))
        return cls(count, str(hash_hex), signer, sig)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SignedHead:
        """Read a signed head file written by :meth:`Ledger.write_signed_head`."""
        try:
            return cls.from_json(Path(path).read_bytes())
        except OSError as exc:
            raise LedgerError(f"cannot read signed head {os.fspath(path)!r}: {exc}") from exc


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


# --------------------------------------------------------------------------------------------
# record validation
# --------------------------------------------------------------------------------------------
def _need_int(rec: Mapping[str, Any], key: str, lo: int = 0) -> int:
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise LedgerError(f"'{key}' must be an int >= {lo}, got {v!r}")
    return v


def _need_num(rec: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        what = "> 0" if positive else ">= 0"
        raise LedgerError(f"'{key}' must be a finite number {what}, got {v!r}")
    return float(v)


def _validate_header_fields(h: Mapping[str, Any]) -> None:
    """Check the caller's part of the header (the run description)."""
    acc = h.get("accountant")
    if not isinstance(acc, str) or not acc:
        raise LedgerError(f"header needs 'accountant' (the accountant's name, e.g. 'rdp'), got {acc!r}")
    delta = h.get("delta")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise LedgerError(f"header needs 'delta' in (0, 1), got {delta!r}")
    budget = h.get("budget")
    if budget is not None:
        _need_num(h, "budget", positive=True)
    for key in ("population", "planned_clients", "cohort_floor"):
        if h.get(key) is not None:
            _need_int(h, key, 1)
    for key in ("protocol", "dp", "threat_model"):
        if h.get(key) is not None and not isinstance(h.get(key), dict):
            raise LedgerError(f"header '{key}' must be a JSON object (dict), got {type(h.get(key)).__name__}")


def _validate_round_fields(r: Mapping[str, Any]) -> None:
    """Check a round record's fields (everything but ``prev``/``sig``)."""
    if r.get("type") != "round":
        raise LedgerError(f"a round record needs type 'round', got {r.get('type')!r}")
    _need_int(r, "round", 0)
    rid = r.get("round_id")
    if not isinstance(rid, str) or not rid:
        raise LedgerError(f"'round_id' must be a non-empty str (e.g. the round id in hex), got {rid!r}")
    sampled = _need_int(r, "sampled", 0)
    survivors = _need_int(r, "survivors", 0)
    dropouts = _need_int(r, "dropouts", 0)
    if survivors > sampled:
        raise LedgerError(f"survivors ({survivors}) cannot exceed sampled clients ({sampled})")
    if survivors + dropouts != sampled:
        raise LedgerError(f"survivors + dropouts must equal sampled: {survivors} + {dropouts} != {sampled}")
    if r.get("planned") is not None:
        _need_int(r, "planned", 1)
    _need_num(r, "clip_norm", positive=True)
    mech = r.get("mechanism")
    if not isinstance(mech, dict) or not isinstance(mech.get("name"), str) or not mech["name"]:
        raise LedgerError("'mechanism' must be a dict with a non-empty 'name' and its parameters")
    present = _need_num(r, "noise_present")
    guaranteed = _need_num(r, "noise_guaranteed")
    if guaranteed > present * (1 + 1e-12):
        raise LedgerError(f"noise_guaranteed ({guaranteed}) cannot exceed noise_present ({present})")
    eps = r.get("epsilon")
    if not isinstance(eps, dict) or set(eps) != set(_ADVERSARIES):
        raise LedgerError("'epsilon' must be {'release': eps, 'server': eps} (cumulative; null = unbounded)")
    for adv in _ADVERSARIES:
        if eps[adv] is not None:
            _need_num(eps, adv)
    events = r.get("events")
    if not isinstance(events, dict) or set(events) != set(_ADVERSARIES):
        raise LedgerError("'events' must be {'release': event dict, 'server': event dict} (this round's events)")
    for adv in _ADVERSARIES:
        if events[adv] is not None and not isinstance(events[adv], dict):
            raise LedgerError(f"events['{adv}'] must be an event dict (event.to_dict()) or null")
    sr = r.get("self_reported")
    if sr is not None:
        values = list(sr.values()) if isinstance(sr, dict) else sr
        if not isinstance(values, list):
            raise LedgerError("'self_reported' must be a list of epsilons or a dict client -> epsilon")
        for i, v in enumerate(values):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise LedgerError(f"self_reported epsilon #{i} must be a number >= 0 or null, got {v!r}")


# --------------------------------------------------------------------------------------------
# scanning / verification
# --------------------------------------------------------------------------------------------
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


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {os.fspath(path)!r}: {exc}") from exc


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


def remove_torn_tail(path: str | os.PathLike[str]) -> bytes:
    """Explicitly cut a torn (newline-less) last line left by a crash; return the removed bytes.

    Only a torn *last* line is removed, and only when everything before it verifies; keep
    the returned bytes for the audit trail.  Raises LedgerVerificationError otherwise.
    """
    data = _read_bytes(path)
    scan = _scan(data)
    if not scan.torn:
        raise LedgerVerificationError(
            "no torn last line to remove" if not scan.reason else f"line {scan.bad_line}: {scan.reason}",
            line=scan.bad_line,
        )
    keep = sum(scan.sizes)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data[keep:]


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows); best effort
        fd = os.open(path.parent if str(path.parent) else Path("."), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Ledger:
    """Writer of an append-only privacy ledger (see the module docstring for the format).

    Create with :meth:`create` or reopen with :meth:`open`; never construct directly.
    Not safe for concurrent writers in different processes beyond the POSIX advisory lock
    taken around each append.
    """

    def __init__(
        self,
        *,
        path: Path,
        header: dict[str, Any],
        head: LedgerHead,
        size: int,
        last_line: bytes,
        last_round: int | None,
        key: Ed25519PrivateKey | None,
    ) -> None:
        self._path = path
        self._header = header
        self._head = head
        self._size = size
        self._last_line = last_line
        self._last_round = last_round
        self._key = key

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        header: Mapping[str, Any],
        signing_key: PrivateKeyLike | None = None,
        now: str | None = None,
    ) -> Ledger:
        """Create a new ledger whose first line is the header; refuse to overwrite a file.

        Args:
            path: the new file.
            header: the run description: ``accountant`` (name) and ``delta`` in (0, 1) are
                required; ``budget`` (epsilon, > 0), ``population``, ``planned_clients``
                (survivors per round the noise was planned for), ``cohort_floor`` (fewest
                survivors the server-side noise was calibrated for) (ints), ``protocol``,
                ``dp`` and ``threat_model`` (dicts) are checked when present; other JSON
                keys are kept as given.
            signing_key: Ed25519 key signing every line (its public key goes in the header).
            now: creation time (e.g. ISO 8601) supplied by the caller; stored as null if None.

        Raises:
            LedgerError: invalid header, reserved key, NaN, or the file already exists.
        """
        from secagg import __version__

        if not isinstance(header, Mapping):
            raise LedgerError(f"header must be a dict, got {type(header).__name__}")
        clash = _HEADER_RESERVED & set(header)
        if clash:
            raise LedgerError(f"header keys {sorted(clash)} are set by the ledger itself; remove them")
        if now is not None and not isinstance(now, str):
            raise LedgerError(f"now must be a str timestamp or None, got {type(now).__name__}")
        key = None if signing_key is None else load_private_key(signing_key)
        record = _clean(header, "header")
        _validate_header_fields(record)
        record.update(
            type="header",
            format=LEDGER_FORMAT,
            library_version=__version__,
            created=now,
            prev=GENESIS_HASH,
            signer=None if key is None else _pub_hex(key.public_key()),
        )
        line = _encode(record, key)
        p = Path(path)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError as exc:
            raise LedgerError(
                f"{os.fspath(p)!r} already exists; a ledger is never overwritten (open it to append)"
            ) from exc
        except OSError as exc:
            raise LedgerError(f"cannot create ledger {os.fspath(p)!r}: {exc}") from exc
        try:
            _write_all_or_rollback(fd, line, 0)
        except LedgerError:
            os.close(fd)
            with contextlib.suppress(OSError):
                p.unlink()
            raise
        os.close(fd)
        _fsync_dir(p)
        body = line[:-1]
        return cls(
            path=p,
            header=json.loads(body),
            head=LedgerHead(1, _sha256_hex(body)),
            size=len(line),
            last_line=body,
            last_round=None,
            key=key,
        )

    @classmethod
    def open(cls, path: str | os.PathLike[str], signing_key: PrivateKeyLike | None = None) -> Ledger:
        """Open an existing ledger for appending after verifying it completely.

        Raises:
            LedgerVerificationError: the ledger (e.g. a torn last line) fails verification;
                ``line`` names the first bad line.
            LedgerError: the key does not match the header's signer, or is missing for a
                signed ledger.
        """
        p = Path(path)
        data = _read_bytes(p)
        scan = _scan(data)
        if scan.reason:
            raise LedgerVerificationError(f"{os.fspath(p)}: line {scan.bad_line}: {scan.reason}", line=scan.bad_line)
        key = None if signing_key is None else load_private_key(signing_key)
        signer = scan.records[0].get("signer")
        if signer is not None and key is None:
            raise LedgerError("this ledger is signed; pass its signing_key to append to it")
        if key is not None and signer != _pub_hex(key.public_key()):
            raise LedgerError("signing_key does not match the signer named in the ledger header")
        last = data[: len(data) - 1].rsplit(b"\n", 1)[-1]
        last_round = scan.records[-1]["round"] if len(scan.records) > 1 else None
        head = LedgerHead(len(scan.hashes), scan.hashes[-1])
        return cls(
            path=p, header=scan.records[0], head=head, size=len(data), last_line=last, last_round=last_round, key=key
        )

    # -- properties ------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    @property
    def header(self) -> dict[str, Any]:
        """A copy of the header record."""
        return copy.deepcopy(self._header)

    @property
    def head(self) -> LedgerHead:
        """Current head: line count (header included) and hash of the last line."""
        return self._head

    def head_for_clients(self) -> str:
        """The current head as ``"COUNT:HASH"``, to embed in the next round's configuration.

        Each client keeps the value it received; any one of them can later prove a
        truncation or rewrite with ``verify_ledger(path, anchors=[value])``.
        """
        return str(self._head)

    def signed_head(self) -> SignedHead:
        """The current head signed with the ledger's key (for anchoring elsewhere).

        Raises:
            LedgerError: the ledger has no signing key.
        """
        if self._key is None:
            raise LedgerError("signed_head needs a signed ledger (create/open it with signing_key)")
        sig = self._key.sign(_head_message(self._head.count, self._head.hash)).hex()
        return SignedHead(self._head.count, self._head.hash, _pub_hex(self._key.public_key()), sig)

    def write_signed_head(self, path: str | os.PathLike[str]) -> SignedHead:
        """Atomically (temp file + rename) write :meth:`signed_head` to ``path`` and return it.

        Keep the file where the ledger's writer cannot roll it back; a copy next to the
        ledger (``<ledger>.head``) only helps against accidental truncation.
        """
        sh = self.signed_head()
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all_or_rollback(fd, sh.to_json().encode("ascii") + b"\n", 0)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            raise LedgerError(f"cannot write signed head {os.fspath(target)!r}: {exc}") from exc
        _fsync_dir(target)
        return sh

    # -- appending -------------------------------------------------------------------------
    def append(self, record: Mapping[str, Any]) -> str:
        """Validate a round record, then append it atomically; return the new head hash.

        ``record`` holds the round fields (``round``, ``round_id``, ``sampled``, ``survivors``,
        ``dropouts``, ``clip_norm``, ``mechanism``, ``noise_present``, ``noise_guaranteed``,
        ``epsilon`` (cumulative; ``None`` or ``math.inf`` for unbounded, stored as null),
        ``events`` and optionally ``planned``, ``self_reported`` and further JSON
        keys); ``type`` defaults to ``"round"``; ``prev`` and ``sig`` are added here.

        Raises:
            LedgerError: invalid record (nothing is written), or the file changed on disk
                since it was opened, or the write failed (the file is rolled back).
            LedgerVerificationError: the file now ends in a torn or otherwise bad line.
        """
        if not isinstance(record, Mapping):
            raise LedgerError(f"a record must be a dict, got {type(record).__name__}")
        clash = _ROUND_RESERVED & set(record)
        if clash:
            raise LedgerError(f"record keys {sorted(clash)} are set by the ledger itself; remove them")
        eps = record.get("epsilon")
        if isinstance(eps, Mapping):  # an accountant's +inf (no guarantee) is stored as null
            fixed = {k: None if isinstance(v, float) and v == math.inf else v for k, v in eps.items()}
            record = {**record, "epsilon": fixed}
        rec = _clean(record, "record")
        rec.setdefault("type", "round")
        _validate_round_fields(rec)
        if self._last_round is not None and rec["round"] <= self._last_round:
            raise LedgerError(f"round index {rec['round']} must exceed the previous round's ({self._last_round})")
        rec["prev"] = self._head.hash
        line = _encode(rec, self._key)
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {os.fspath(self._path)!r} for appending: {exc}") from exc
        try:
            if _fcntl is not None:
                _fcntl.flock(fd, _fcntl.LOCK_EX)
            self._check_unchanged(fd)
            _write_all_or_rollback(fd, line, self._size)
        finally:
            os.close(fd)  # also releases the lock
        body = line[:-1]
        self._head = LedgerHead(self._head.count + 1, _sha256_hex(body))
        self._size += len(line)
        self._last_line = body
        self._last_round = rec["round"]
        return self._head.hash

    def _check_unchanged(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        n = len(self._last_line) + 1
        tail = os.pread(fd, n, self._size - n) if size >= self._size else b""
        if size == self._size and tail == self._last_line + b"\n":
            return
        scan = _scan(_read_bytes(self._path))
        if scan.reason:
            raise LedgerVerificationError(
                f"{os.fspath(self._path)}: line {scan.bad_line}: {scan.reason}; refusing to append", line=scan.bad_line
            )
        raise LedgerError(
            f"{os.fspath(self._path)!r} changed on disk since it was opened (now {len(scan.hashes)} lines, "
            f"expected {self._head.count}); reopen it with Ledger.open"
        )


def _encode(record: dict[str, Any], key: Ed25519PrivateKey | None) -> bytes:
    """Canonical line (with newline) for ``record`` (which must not hold ``sig``), signed if ``key``."""
    body = canonical_json(record)
    if key is not None:
        signed = dict(record, sig=key.sign(_RECORD_CONTEXT + body).hex())
        body = canonical_json(signed)
    return body + b"\n"


def _write_all_or_rollback(fd: int, data: bytes, old_size: int) -> None:
    """Write ``data`` with one ``os.write`` call and fsync; on any failure truncate back to ``old_size``."""
    try:
        n = os.write(fd, data)
        if n != len(data):
            raise OSError(f"short write: {n} of {len(data)} bytes")
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, old_size)
            os.fsync(fd)
        except OSError as exc2:
            raise LedgerError(
                f"write failed ({exc}) and the rollback failed too ({exc2}): the ledger may end in a torn line"
            ) from exc
        raise LedgerError(f"write failed ({exc}); the ledger was left unchanged") from exc
