"""X25519 key agreement and HKDF-SHA256 key derivation.

Keys are raw 32-byte strings (RFC 7748 encoding), never PEM/DER: a client's key pair is
``(generate_private_key(), public_key(private))`` and the pairwise secret of clients
``a`` and ``b`` is ``agree(private_a, public_b) == agree(private_b, public_a)``.

Every secret used by the protocol goes through :func:`derive`, an HKDF-SHA256 (RFC 5869)
whose ``info`` string binds, in a canonical length-prefixed encoding,

* the protocol version (:data:`PROTOCOL_VERSION`),
* a purpose label (:data:`LABEL_MASK` for the pairwise mask seed, :data:`LABEL_SHARE`
  for the share-encryption key),
* the round id, and
* the two client ids in sorted order ``(min(a, b), max(a, b))``,

so both ends of a pair derive the same secret (their pairwise masks cancel), a secret of
one round or purpose is useless for another, and no two distinct inputs share an
encoding.  Direction (sender, receiver) is bound by the AEAD's associated data instead
(:mod:`secagg.crypto.aead`).

Threat assumptions: the raw X25519 output is never used directly as a key; public keys
are authenticated by the protocol layer (the server relays them, so an active server
could substitute keys unless clients verify signatures or a PKI); a peer public key of
small order (which would force a predictable all-zero secret) is rejected with
:class:`~secagg.errors.CryptoError`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg._validate import check_bytes, check_int
from secagg.errors import CryptoError, SecAggTypeError, SecAggValueError
from secagg.rand import RngLike, as_random_source

__all__ = [
    "HKDF_SALT",
    "KEY_SIZE",
    "LABEL_MASK",
    "LABEL_SHARE",
    "MAX_CLIENT_ID",
    "PROTOCOL_VERSION",
    "agree",
    "agree_many",
    "check_public_key",
    "derive",
    "derive_info",
    "generate_keypair",
    "generate_private_key",
    "hkdf_expand",
    "hkdf_extract",
    "hkdf_sha256",
    "public_key",
]

PROTOCOL_VERSION = 1
"""Version of the secagg wire protocol; bound into every derived key and AEAD tag."""

LABEL_MASK = "pairwise-mask"
"""HKDF label of the 32-byte seed of the pairwise mask PRG."""

LABEL_SHARE = "share-encryption"
"""HKDF label of the AES-256-GCM key that encrypts Shamir shares between two clients."""

KEY_SIZE = 32
"""Size in bytes of X25519 private keys, public keys and shared secrets."""

MAX_CLIENT_ID = (1 << 64) - 1
"""Largest client id (ids are encoded as unsigned 64-bit integers)."""

HKDF_SALT = b"secagg/hkdf-salt/v1"
"""Fixed, public HKDF-Extract salt (domain separation from other uses of the secret)."""

_HASH_LEN = 32
_MAX_OKM = 255 * _HASH_LEN
_MAX_ROUND_ID = 1024
_MAX_LABEL = 255


def _key_bytes(value: object, name: str) -> bytes:
    raw = check_bytes(name, value)
    if len(raw) != KEY_SIZE:
        raise SecAggValueError(f"{name} must be {KEY_SIZE} raw bytes (X25519, no PEM), got {len(raw)} bytes")
    return raw


def _client_id(value: object, name: str) -> int:
    return check_int(name, value, 0, MAX_CLIENT_ID)


def _lp(data: bytes) -> bytes:
    """Length-prefixed field: 4-byte big-endian length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def _length(length: object) -> int:
    return check_int("HKDF-SHA256 length", length, 1, _MAX_OKM)


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt or bytes(_HASH_LEN), ikm, hashlib.sha256)


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand on checked arguments."""
    if length <= _HASH_LEN:  # one block: T(1) = HMAC(prk, info || 0x01)
        return hmac.digest(prk, info + b"\x01", hashlib.sha256)[:length]
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), hashlib.sha256)
        out += block
        counter += 1
    return bytes(out[:length])


def hkdf_extract(salt: bytes | None, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2) with SHA-256: ``PRK = HMAC-SHA256(salt, ikm)``.

    ``salt=None`` or ``b""`` means 32 zero bytes.  Returns the 32-byte pseudorandom key.
    """
    salt_b = b"" if salt is None else check_bytes("salt", salt)
    return _extract(salt_b, check_bytes("ikm", ikm))


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3) with SHA-256: ``length`` bytes (1..8160) from ``prk``."""
    prk = check_bytes("prk", prk)
    info = check_bytes("info", info)
    length = _length(length)
    if len(prk) < _HASH_LEN:
        raise SecAggValueError(f"prk must be at least {_HASH_LEN} bytes, got {len(prk)}")
    return _expand(prk, info, length)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 of RFC 5869: :func:`hkdf_expand` (:func:`hkdf_extract` (salt, ikm), info, length).

    Args:
        ikm: input keying material.
        salt: extract salt; ``None`` or ``b""`` means 32 zero bytes (RFC 5869 §2.2).
        info: context string of the expand step.
        length: output size in bytes, ``1 <= length <= 8160`` (255 hash blocks).

    Returns:
        ``length`` bytes of output keying material.
    """
    ikm = check_bytes("ikm", ikm)
    info = check_bytes("info", info)
    length = _length(length)
    return _expand(hkdf_extract(salt, ikm), info, length)


def derive_info(label: str, round_id: bytes, a: int, b: int) -> bytes:
    """The canonical HKDF ``info`` string used by :func:`derive`.

    Layout (all lengths 4-byte big-endian, ids 8-byte big-endian)::

        len || "secagg" || version (2 bytes) || len || label (UTF-8)
        || len || round_id || min(a, b) || max(a, b)

    Swapping ``a`` and ``b`` gives the same string; any other change gives a different one.
    """
    if not isinstance(label, str):
        raise SecAggTypeError(f"label must be a str, got {type(label).__name__}")
    label_b = label.encode("utf-8")
    if not 1 <= len(label_b) <= _MAX_LABEL:
        raise SecAggValueError(f"label must be 1..{_MAX_LABEL} UTF-8 bytes, got {len(label_b)}")
    rid = check_bytes("round_id", round_id)
    if not 1 <= len(rid) <= _MAX_ROUND_ID:
        raise SecAggValueError(f"round_id must be 1..{_MAX_ROUND_ID} bytes, got {len(rid)}")
    a = _client_id(a, "a")
    b = _client_id(b, "b")
    if a == b:
        raise SecAggValueError(f"derive needs two different client ids, got {a} twice")
    lo, hi = (a, b) if a < b else (b, a)
    return b"".join(
        (
            _lp(b"secagg"),
            struct.pack(">H", PROTOCOL_VERSION),
            _lp(label_b),
            _lp(rid),
            struct.pack(">QQ", lo, hi),
        )
    )


def generate_private_key(rng: RngLike = None) -> bytes:
    """A fresh X25519 private key: 32 raw bytes from ``rng`` (see :mod:`secagg.rand`).

    Use the default ``rng=None`` (``os.urandom``) outside tests: a seeded or numpy ``rng``
    makes the key reproducible by anyone who knows the seed.
    """
    return as_random_source(rng).bytes(KEY_SIZE)


def public_key(private: bytes) -> bytes:
    """The 32-byte raw X25519 public key ``X25519(private, 9)`` of a raw private key."""
    raw = _key_bytes(private, "private key")
    return X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()


def generate_keypair(rng: RngLike = None) -> tuple[bytes, bytes]:
    """``(private, public)`` raw X25519 key pair (see :func:`generate_private_key`)."""
    private = generate_private_key(rng)
    return private, public_key(private)


#: A fixed, public probe scalar: clamped X25519 scalars are multiples of the cofactor 8, so
#: ``X25519(probe, P)`` is all-zero exactly when ``P`` has small order (RFC 7748 §6.1).
_PROBE = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"secagg/x25519-small-order-probe/v1").digest())


def check_public_key(public: object, name: str = "public key") -> bytes:
    """Refuse a peer X25519 public key that is not 32 bytes or has small order (the
    all-zero key among them); return it as bytes.

    Checked where a key arrives (the server refuses the advertisement and excludes its
    sender), before any agreement uses it.

    Raises:
        SecAggValueError: not exactly 32 bytes.
        CryptoError: a small-order point (any agreement with it is predictable).
    """
    pub = _key_bytes(public, name)
    _exchange(_PROBE, pub, name)
    return pub


def _exchange(key: X25519PrivateKey, peer_public: object, name: str) -> bytes:
    pub = _key_bytes(peer_public, name)
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(pub))
    except ValueError as exc:  # OpenSSL refuses an all-zero output (small-order point)
        raise CryptoError(
            f"X25519 agreement gave the all-zero secret: the {name} is a small-order point; reject this peer"
        ) from exc
    if not any(shared):  # defence in depth if the backend ever stops checking
        raise CryptoError(f"X25519 agreement gave the all-zero secret with the {name}: reject this peer")
    return shared


def agree(private: bytes, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret (RFC 7748 §6.1) of ``private`` and a peer's public key.

    The result is not a key: pass it through :func:`derive`.

    Raises:
        SecAggValueError: a key is not exactly 32 bytes.
        CryptoError: ``peer_public`` is a small-order point (the secret would be all
            zero, known to an attacker); treat the peer as malicious.
    """
    return agree_many(private, (peer_public,))[0]


def agree_many(private: bytes, peers: Sequence[bytes]) -> list[bytes]:
    """``[agree(private, p) for p in peers]``, parsing the private key once (parsing costs
    about as much as one exchange).  Same checks and errors as :func:`agree`.

    Every peer key's length is checked before any exchange; a small-order peer key raises
    :class:`~secagg.errors.CryptoError` naming its position in ``peers``.

    Raises:
        SecAggTypeError: ``peers`` is not a sequence of bytes.
        SecAggValueError: a key is not exactly 32 bytes.
        CryptoError: a peer public key is a small-order point; reject that peer.
    """
    priv = _key_bytes(private, "private key")
    if isinstance(peers, (bytes, bytearray, memoryview, str)) or not isinstance(peers, Sequence):
        raise SecAggTypeError(f"peers must be a sequence of 32-byte public keys, got {type(peers).__name__}")
    names = ["peer public key" if len(peers) == 1 else f"peer public key #{i}" for i in range(len(peers))]
    pubs = [_key_bytes(p, name) for p, name in zip(peers, names, strict=True)]
    key = X25519PrivateKey.from_private_bytes(priv)
    return [_exchange(key, p, name) for p, name in zip(pubs, names, strict=True)]


def derive(shared: bytes, label: str, round_id: bytes, a: int, b: int, length: int = 32) -> bytes:  # noqa: PLR0917
    """Derive a ``length``-byte secret for clients ``a`` and ``b`` from their shared secret.

    HKDF-SHA256 with salt :data:`HKDF_SALT` and ``info = derive_info(label, round_id, a, b)``,
    which binds :data:`PROTOCOL_VERSION`, ``label``, ``round_id`` and the sorted pair of
    ids, so ``derive(s, L, r, a, b) == derive(s, L, r, b, a)``.

    Args:
        shared: the 32-byte output of :func:`agree`.
        label: purpose, e.g. :data:`LABEL_MASK` or :data:`LABEL_SHARE`.
        round_id: 1..1024 bytes naming the round.
        a: one client id, an int in [0, 2**64 - 1].
        b: the other client id (``b != a``).
        length: output bytes, 1..8160.
    """
    ikm = _key_bytes(shared, "shared secret")
    info = derive_info(label, round_id, a, b)
    return _expand(_extract(HKDF_SALT, ikm), info, _length(length))
