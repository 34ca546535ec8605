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

The implementation is split by job into private modules: :mod:`dp._ledger_format` (record
format, canonical JSON, field checks), :mod:`dp._ledger_sign` (keys, heads, line signing),
:mod:`dp._ledger_io` (file I/O, atomic appends, lock) and :mod:`dp._ledger_verify` (replay,
torn-line detection, anchors).  This module holds the writer, :class:`Ledger`, and
re-exports the public names.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dp._ledger_format import (
    _HEADER_RESERVED,
    _ROUND_RESERVED,
    GENESIS_HASH,
    LEDGER_FORMAT,
    _clean,
    _sha256_hex,
    _validate_header_fields,
    _validate_round_fields,
    canonical_json,
)
from dp._ledger_io import _fsync_dir, _lock, _read_bytes, _write_all_or_rollback
from dp._ledger_sign import (
    LedgerHead,
    PrivateKeyLike,
    PublicKeyLike,
    SignedHead,
    _encode,
    _head_message,
    _pub_hex,
    load_private_key,
    load_public_key,
)
from dp._ledger_verify import VerificationResult, _scan, read_ledger, verify_ledger
from dp.errors import LedgerError, LedgerVerificationError

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


def _library_version() -> str:
    """Version of the installed ``secagg`` distribution (which ships :mod:`dp`), read from its
    metadata so that :mod:`dp` never imports :mod:`secagg`; ``"unknown"`` when not installed."""
    try:
        return importlib.metadata.version("secagg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
            library_version=_library_version(),
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
            _lock(fd)
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
