"""Authenticated encryption of Shamir shares: AES-256-GCM with bound associated data.

:func:`encrypt` returns ``nonce (12 bytes) || ciphertext || tag (16 bytes)``, so a
ciphertext is :data:`OVERHEAD` = 28 bytes longer than its plaintext.  The associated data
(authenticated, not encrypted) binds, in a canonical length-prefixed encoding, the
protocol version, the sender id, the receiver id, the round id and the protocol stage: a
ciphertext replayed into another round, reflected back to its sender, redirected to
another client or moved to another stage fails :func:`decrypt` with
:class:`~secagg.errors.CryptoError`.

Keys are 32-byte outputs of :func:`secagg.crypto.keys.derive` with
:data:`~secagg.crypto.keys.LABEL_SHARE` (one key per pair of clients and round, used in
both directions; direction lives in the associated data).  Nonces are 96 random bits
from ``rng``; with the few messages sent under one key the collision probability is
negligible.  Never pass a fixed seed as ``rng`` outside tests: a repeated nonce under one
key breaks GCM.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg._validate import check_bytes, check_int
from secagg.crypto.keys import MAX_CLIENT_ID, PROTOCOL_VERSION
from secagg.errors import CryptoError, SecAggTypeError, SecAggValueError
from secagg.rand import RngLike, as_random_source

__all__ = ["KEY_SIZE", "NONCE_SIZE", "OVERHEAD", "TAG_SIZE", "associated_data", "decrypt", "encrypt"]

KEY_SIZE = 32
"""AES-256-GCM key size in bytes."""
NONCE_SIZE = 12
"""GCM nonce size in bytes (prepended to the ciphertext)."""
TAG_SIZE = 16
"""GCM tag size in bytes (appended by GCM)."""
OVERHEAD = NONCE_SIZE + TAG_SIZE
"""Bytes a ciphertext adds to its plaintext."""

_MAX_FIELD = 1024


def _key(value: object) -> bytes:
    key = check_bytes("key", value)
    if len(key) != KEY_SIZE:
        raise SecAggValueError(f"key must be {KEY_SIZE} bytes (AES-256-GCM), got {len(key)}")
    return key


def _id(value: object, name: str) -> int:
    return check_int(name, value, 0, MAX_CLIENT_ID)


def associated_data(*, sender: int, receiver: int, round_id: bytes, stage: str | int) -> bytes:
    """The canonical associated data of :func:`encrypt` / :func:`decrypt`.

    Layout (lengths 4-byte big-endian, ids 8-byte big-endian)::

        len || "secagg-aead" || version (2 bytes) || sender || receiver
        || len || round_id || len || stage tag ("s" + UTF-8 or "i" + 8-byte signed int)
    """
    s = _id(sender, "sender")
    r = _id(receiver, "receiver")
    rid = check_bytes("round_id", round_id)
    if not 1 <= len(rid) <= _MAX_FIELD:
        raise SecAggValueError(f"round_id must be 1..{_MAX_FIELD} bytes, got {len(rid)}")
    if isinstance(stage, bool) or not isinstance(stage, (str, int)):
        raise SecAggTypeError(f"stage must be a str or an int, got {type(stage).__name__}")
    if isinstance(stage, str):
        stage_b = b"s" + stage.encode("utf-8")
        if len(stage_b) > _MAX_FIELD:
            raise SecAggValueError(f"stage must be at most {_MAX_FIELD - 1} UTF-8 bytes")
    else:
        if not -(1 << 63) <= stage < 1 << 63:
            raise SecAggValueError("an int stage must fit in a signed 64-bit integer")
        stage_b = b"i" + struct.pack(">q", stage)
    tag = b"secagg-aead"
    return b"".join(
        (
            struct.pack(">I", len(tag)),
            tag,
            struct.pack(">HQQ", PROTOCOL_VERSION, s, r),
            struct.pack(">I", len(rid)),
            rid,
            struct.pack(">I", len(stage_b)),
            stage_b,
        )
    )


def encrypt(
    key: bytes,
    plaintext: bytes,
    *,
    sender: int,
    receiver: int,
    round_id: bytes,
    stage: str | int,
    rng: RngLike = None,
) -> bytes:
    """Encrypt ``plaintext`` from ``sender`` to ``receiver`` with AES-256-GCM.

    Returns:
        ``nonce || ciphertext || tag`` (``len(plaintext) + OVERHEAD`` bytes).

    Raises:
        SecAggValueError / SecAggTypeError: bad key length, ids, round id or stage.
    """
    k = _key(key)
    pt = check_bytes("plaintext", plaintext)
    ad = associated_data(sender=sender, receiver=receiver, round_id=round_id, stage=stage)
    nonce = as_random_source(rng).bytes(NONCE_SIZE)
    return nonce + AESGCM(k).encrypt(nonce, pt, ad)


def decrypt(
    key: bytes,
    ciphertext: bytes,
    *,
    sender: int,
    receiver: int,
    round_id: bytes,
    stage: str | int,
) -> bytes:
    """Authenticate and decrypt a ciphertext produced by :func:`encrypt`.

    Raises:
        CryptoError: the ciphertext is truncated, was tampered with, or was made under
            another key, sender, receiver, round or stage.  Drop the message; never retry.
        SecAggValueError / SecAggTypeError: bad key length, ids, round id or stage.
    """
    k = _key(key)
    ct = check_bytes("ciphertext", ciphertext)
    ad = associated_data(sender=sender, receiver=receiver, round_id=round_id, stage=stage)
    if len(ct) < OVERHEAD:
        raise CryptoError(f"ciphertext is {len(ct)} bytes, shorter than the {OVERHEAD}-byte nonce and tag")
    try:
        return AESGCM(k).decrypt(ct[:NONCE_SIZE], ct[NONCE_SIZE:], ad)
    except InvalidTag as exc:
        raise CryptoError(
            "AES-GCM authentication failed: wrong key, tampered ciphertext, or a different "
            "sender/receiver/round/stage than it was encrypted for"
        ) from exc
