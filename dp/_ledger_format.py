"""Ledger record format: constants, canonical JSON encoding, and the field checks of header
and round records (one job of :mod:`dp.ledger`; no I/O, no keys)."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

from dp.errors import LedgerError

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
