"""Ledger keys and heads: Ed25519 key loading, :class:`LedgerHead`, :class:`SignedHead` and
the signing of one record line (one job of :mod:`dp.ledger`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dp._ledger_format import _HEAD_CONTEXT, _HEX, _RECORD_CONTEXT, _is_hash, canonical_json
from dp.errors import LedgerError

PrivateKeyLike = Ed25519PrivateKey | bytes | str | os.PathLike[str]
"""An Ed25519 private key, its 32 raw bytes, or the path of a raw (32-byte) or PEM (PKCS8) key file."""
PublicKeyLike = Ed25519PublicKey | bytes | str | os.PathLike[str]
"""An Ed25519 public key, its 32 raw bytes, or the path of a raw, 64-hex-digit or PEM key file."""


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


def _encode(record: dict[str, Any], key: Ed25519PrivateKey | None) -> bytes:
    """Canonical line (with newline) for ``record`` (which must not hold ``sig``), signed if ``key``."""
    body = canonical_json(record)
    if key is not None:
        signed = dict(record, sig=key.sign(_RECORD_CONTEXT + body).hex())
        body = canonical_json(signed)
    return body + b"\n"
