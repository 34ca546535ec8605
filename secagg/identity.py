"""Long-term identities of an alliance and the signed statements of active mode.

Active mode (Bonawitz et al. CCS 2017, active variant; Bell et al. CCS 2020, malicious
SecAgg+) needs every client to know every other's long-term signing key, distributed out
of band:

* :class:`IdentityKey` -- one party's Ed25519 signing key (``generate``,
  ``from_private_bytes``, ``public_bytes``, ``sign``);
* :class:`Alliance` -- client id -> Ed25519 public key (32 raw bytes), a read-only
  mapping with canonical JSON (:meth:`Alliance.to_json` / :meth:`Alliance.from_json`, a
  strict decoder) and :meth:`Alliance.verify`, which raises
  :class:`~secagg.errors.SignatureError`;
* the byte strings a party signs (each starts with its own domain label, the wire
  version and the round id, so no signature is valid in another role or round):
  :func:`advertisement_statement` (stage 1: spec fingerprint, model digest, client id,
  both public keys, the commitment to the self-mask seed and the root of the dealt shares),
  :func:`survivor_statement` (the consistency round: the survivor set the signer was
  told), :func:`reveal_statement` (the unmasking reply);
* :func:`seed_commitment` and the share tree (:func:`share_leaf`, :class:`ShareTree`,
  :func:`verify_share_proof`): a client deals Shamir shares of its two secrets at every
  x-coordinate 1..n before it knows its neighbours, and signs the Merkle root of all of
  them in its advertisement; each share then travels with its Merkle path, so a holder,
  and later the server, checks that the dealer signed exactly this share with hashing
  only (no signature per share);
* :class:`SignedStatement` and :class:`Evidence`: what the server keeps when it blames a
  client, and what a client keeps when it catches the server equivocating.  Anyone with
  the alliance can re-check them.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.errors import MessageError, SecAggTypeError, SecAggValueError, SignatureError
from secagg.messages import MAX_CLIENTS, ROUND_ID_MAX, ROUND_ID_MIN, WIRE_VERSION, _Reader, _Writer
from secagg.rand import RngLike, as_random_source

__all__ = [
    "ALLIANCE_FORMAT",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Advertisement",
    "Alliance",
    "Evidence",
    "IdentityKey",
    "ShareTree",
    "SignedStatement",
    "advertisement_statement",
    "generate_alliance",
    "parse_advertisement",
    "reveal_statement",
    "seed_commitment",
    "share_leaf",
    "share_tree_depth",
    "survivor_statement",
    "survivor_statement_parts",
    "verify_share_proof",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
ALLIANCE_FORMAT = 1
MAX_ALLIANCE_BYTES = 64 * 1024 * 1024

_ADVERTISE = b"secagg/advertise/v1"
_SURVIVORS = b"secagg/survivors/v1"
_REVEAL = b"secagg/reveal/v1"
_SEED = b"secagg/seed-commitment/v1"
_LEAF = b"\x00secagg/share-leaf/v1"
_NODE = b"\x01"
_PAD = hashlib.sha256(b"\x02secagg/share-pad/v1").digest()
KEY_SHARE, SEED_SHARE = 0, 1


# ----------------------------------------------------------------------------- keys


class IdentityKey:
    """One party's long-term Ed25519 signing key.

    Keep the private bytes (:meth:`private_bytes`) secret and on the party's device; give
    :meth:`public_bytes` to the alliance (out of band).
    """

    __slots__ = ("_pub", "_sk")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        if not isinstance(private, Ed25519PrivateKey):
            raise SecAggTypeError("IdentityKey wraps an Ed25519PrivateKey; use generate() or from_private_bytes()")
        self._sk = private
        self._pub = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, rng: RngLike = None) -> IdentityKey:
        """A fresh key (``rng`` None: the OS CSPRNG; a seed gives a reproducible key, for tests)."""
        if rng is None:
            return cls(Ed25519PrivateKey.generate())
        return cls.from_private_bytes(as_random_source(rng).bytes(32))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> IdentityKey:
        """The key whose 32-byte raw Ed25519 seed is ``data``.

        Raises:
            SecAggValueError: not 32 bytes.
        """
        if not isinstance(data, (bytes, bytearray)) or len(data) != 32:
            raise SecAggValueError("an Ed25519 private key is 32 raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(data)))

    def private_bytes(self) -> bytes:
        """The 32-byte raw private seed (secret)."""
        from cryptography.hazmat.primitives import serialization

        return self._sk.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def public_bytes(self) -> bytes:
        """The 32-byte raw Ed25519 public key."""
        return self._pub

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (deterministic)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SecAggTypeError(f"sign() needs bytes, got {type(data).__name__}")
        return self._sk.sign(bytes(data))

    def __repr__(self) -> str:
        return f"IdentityKey(public={self._pub.hex()[:16]}...)"


def _load_public(key: bytes) -> Ed25519PublicKey:
    if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
        raise SecAggValueError("an Ed25519 public key is 32 raw bytes")
    try:
        return Ed25519PublicKey.from_public_bytes(key)
    except ValueError as exc:  # pragma: no cover - every 32-byte string loads today
        raise SecAggValueError(f"not an Ed25519 public key: {exc}") from exc


_ID_RE = re.compile(r"^[1-9][0-9]{0,9}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


class Alliance(Mapping[int, bytes]):
    """The alliance's public identity keys: client id -> 32-byte Ed25519 public key.

    A read-only mapping.  Every party (the server and every client) loads the same file,
    distributed out of band; a party whose key is not in it cannot take part in an active
    round.  Two clients may not share a key.

    Raises:
        SecAggValueError, SecAggTypeError: an id outside 1..2^32-1, a key that is not 32
            bytes, a key used twice, or an empty alliance.
    """

    __slots__ = ("_cache", "_keys")

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        if not isinstance(keys, Mapping):
            raise SecAggTypeError(f"an Alliance is built from a mapping id -> public key, got {type(keys).__name__}")
        out: dict[int, bytes] = {}
        for cid, key in keys.items():
            if isinstance(cid, bool) or not isinstance(cid, int) or not 1 <= cid <= MAX_CLIENTS:
                raise SecAggValueError(f"alliance client ids must be ints in [1, 2^32 - 1], got {cid!r}")
            if not isinstance(key, (bytes, bytearray)) or len(key) != PUBLIC_KEY_BYTES:
                raise SecAggValueError(f"client {cid}: an identity key is 32 raw Ed25519 public-key bytes")
            out[cid] = bytes(key)
        if not out:
            raise SecAggValueError("an alliance needs at least one member")
        if len(set(out.values())) != len(out):
            raise SecAggValueError("two alliance members share one identity key")
        self._keys = dict(sorted(out.items()))
        self._cache: dict[int, Ed25519PublicKey] = {}

    @classmethod
    def from_identities(cls, identities: Mapping[int, IdentityKey]) -> Alliance:
        """The alliance of the given parties' public keys."""
        return cls({cid: key.public_bytes() for cid, key in identities.items()})

    def __getitem__(self, cid: int) -> bytes:
        return self._keys[cid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Alliance) and other._keys == self._keys

    def __hash__(self) -> int:
        return hash(tuple(self._keys.items()))

    def __repr__(self) -> str:
        return f"Alliance({len(self._keys)} members, fingerprint={self.fingerprint[:16]})"

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of :meth:`to_json`: names this exact alliance."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def verify(self, cid: int, data: bytes, signature: bytes) -> None:
        """Check that ``signature`` is ``cid``'s signature of ``data``.

        Raises:
            SignatureError: ``cid`` is not a member, or the signature does not verify.
        """
        key = self._keys.get(cid) if isinstance(cid, int) and not isinstance(cid, bool) else None
        if key is None:
            raise SignatureError(f"client {cid!r} is not in the alliance")
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_BYTES:
            raise SignatureError(f"client {cid}: a signature is {SIGNATURE_BYTES} bytes")
        pub = self._cache.get(cid)
        if pub is None:
            pub = self._cache[cid] = _load_public(key)
        try:
            pub.verify(bytes(signature), bytes(data))
        except InvalidSignature:
            raise SignatureError(f"client {cid}'s signature does not verify") from None

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): ``{"format": 1, "members":
        {"<id>": "<64 hex>", ...}, "type": "secagg.Alliance"}``."""
        doc = {
            "format": ALLIANCE_FORMAT,
            "members": {str(cid): key.hex() for cid, key in self._keys.items()},
            "type": "secagg.Alliance",
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | bytearray) -> Alliance:
        """Parse and validate :meth:`to_json` output.  Strict: only
        :class:`~secagg.errors.MessageError` escapes (not JSON, too large or deep, another
        format, a bad id or key, a repeated member or key, or non-canonical text).
        """
        if isinstance(data, (bytes, bytearray)):
            if len(data) > MAX_ALLIANCE_BYTES:
                raise MessageError("alliance file too large")
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MessageError("alliance file is not UTF-8") from exc
        elif isinstance(data, str):
            text = data
        else:
            raise MessageError(f"an alliance is JSON text or bytes, got {type(data).__name__}")
        if len(text) > MAX_ALLIANCE_BYTES:
            raise MessageError("alliance file too large")

        def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
            out: dict[str, object] = {}
            for k, v in items:
                if k in out:
                    raise MessageError(f"alliance file repeats the key {k!r}")
                out[k] = v
            return out

        def constant(name: str) -> object:
            raise MessageError(f"alliance file holds {name}")

        try:
            doc = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
        except RecursionError as exc:
            raise MessageError("alliance JSON is nested too deeply") from exc
        except ValueError as exc:
            if isinstance(exc, MessageError):
                raise
            raise MessageError(f"alliance file is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or set(doc) != {"format", "members", "type"}:
            raise MessageError("an alliance file is an object with exactly format, members and type")
        if doc["type"] != "secagg.Alliance" or doc["format"] != ALLIANCE_FORMAT or isinstance(doc["format"], bool):
            raise MessageError(f"not a secagg alliance of format {ALLIANCE_FORMAT}")
        members = doc["members"]
        if not isinstance(members, dict):
            raise MessageError("alliance members must be an object id -> hex key")
        keys: dict[int, bytes] = {}
        for cid, key in members.items():
            if not _ID_RE.match(cid) or not isinstance(key, str) or not _HEX_RE.match(key):
                raise MessageError(f"alliance member {cid!r}: ids are decimal, keys 64 lowercase hex characters")
            keys[int(cid)] = bytes.fromhex(key)
        try:
            alliance = cls(keys)
        except SecAggValueError as exc:
            raise MessageError(f"invalid alliance: {exc}") from exc
        if alliance.to_json() != text:
            raise MessageError("alliance JSON is not canonical (sorted keys, no whitespace); refusing it")
        return alliance


def generate_alliance(ids: Sequence[int], rng: RngLike = None) -> tuple[dict[int, IdentityKey], Alliance]:
    """Fresh identity keys for ``ids`` and their alliance (simulations and tests; a real
    alliance generates each key on its owner's device)."""
    src = None if rng is None else as_random_source(rng)
    keys = {cid: IdentityKey.generate(src) for cid in ids}
    return keys, Alliance.from_identities(keys)


# ----------------------------------------------------------------------------- statements


def _head(w: _Writer, domain: bytes, round_id: bytes, fingerprint: bytes, model: bytes) -> None:
    w.fixed(domain)
    w.u8(WIRE_VERSION)
    w.u8(len(round_id))
    w.fixed(round_id)
    w.var(fingerprint)
    w.var(model)


def advertisement_statement(  # noqa: PLR0917 - the fields the issue names
    round_id: bytes,
    fingerprint: bytes,
    model: bytes,
    client_id: int,
    mask_key: bytes,
    enc_key: bytes,
    commitment: bytes,
    share_root: bytes,
) -> bytes:
    """What a client signs in stage 1: protocol version, round id, round-spec fingerprint,
    model digest, its id, both public keys, the commitment to its self-mask seed and the
    root of the shares it dealt."""
    w = _Writer()
    _head(w, _ADVERTISE, round_id, fingerprint, model)
    w.u32(client_id)
    for part in (mask_key, enc_key, commitment, share_root):
        w.fixed(part)
    return w.getvalue()


@dataclass(frozen=True)
class Advertisement:
    """The fields of a signed :func:`advertisement_statement` (parsed back by
    :func:`parse_advertisement`)."""

    round_id: bytes
    fingerprint: bytes
    model: bytes
    client_id: int
    mask_key: bytes
    enc_key: bytes
    commitment: bytes
    share_root: bytes

    def statement(self) -> bytes:
        """The canonical statement (what the client signed)."""
        return advertisement_statement(
            self.round_id, self.fingerprint, self.model, self.client_id,
            self.mask_key, self.enc_key, self.commitment, self.share_root,
        )  # fmt: skip


def parse_advertisement(statement: bytes) -> Advertisement:
    """The fields of an :func:`advertisement_statement`.  Strict: only
    :class:`~secagg.errors.MessageError` escapes (another domain or version, a truncated or
    trailing field, a field of the wrong size)."""
    if not isinstance(statement, bytes):
        raise MessageError(f"an advertisement statement is bytes, got {type(statement).__name__}")
    if not statement.startswith(_ADVERTISE):
        raise MessageError("not an advertisement statement (domain label)")
    r = _Reader(memoryview(statement), len(_ADVERTISE))
    if r.u8("version") != WIRE_VERSION:
        raise MessageError(f"advertisement statement of another wire version (this library signs {WIRE_VERSION})")
    rid_len = r.u8("round id length")
    if not ROUND_ID_MIN <= rid_len <= ROUND_ID_MAX:
        raise MessageError("advertisement statement: round id length out of range")
    round_id = r.fixed(rid_len, "round id")
    fingerprint, model = r.var("spec fingerprint"), r.var("model digest")
    if len(fingerprint) != 32 or len(model) not in (0, 32):
        raise MessageError("advertisement statement: spec fingerprint or model digest is not a SHA-256 digest")
    cid = r.u32("client id")
    parts = [r.fixed(32, name) for name in ("mask key", "encryption key", "commitment", "share root")]
    r.end()
    if cid == 0:
        raise MessageError("advertisement statement: client id 0")
    return Advertisement(round_id, fingerprint, model, cid, *parts)


def survivor_statement(
    round_id: bytes, fingerprint: bytes, model: bytes, signer: int, survivors: Sequence[int]
) -> bytes:
    """What a client signs in the consistency round: the survivor set it was told."""
    prefix, suffix = survivor_statement_parts(round_id, fingerprint, model, survivors)
    return prefix + signer.to_bytes(4, "big") + suffix


def survivor_statement_parts(
    round_id: bytes, fingerprint: bytes, model: bytes, survivors: Sequence[int]
) -> tuple[bytes, bytes]:
    """The bytes of :func:`survivor_statement` before and after the signer's id (u32): one
    survivor set is the same statement from every signer but for that field, so a party
    that checks many signers' statements encodes the set once."""
    w = _Writer()
    _head(w, _SURVIVORS, round_id, fingerprint, model)
    suffix = struct.pack(f">I{len(survivors)}I", len(survivors), *survivors)
    return w.getvalue(), suffix


def reveal_statement(round_id: bytes, fingerprint: bytes, model: bytes, unsigned_message: bytes) -> bytes:
    """What a client signs when it reveals shares: the canonical bytes of its unmasking
    reply with an empty signature field."""
    w = _Writer()
    _head(w, _REVEAL, round_id, fingerprint, model)
    w.var(unsigned_message)
    return w.getvalue()


def seed_commitment(round_id: bytes, client_id: int, seed: bytes) -> bytes:
    """SHA-256 of a domain label, the round id, the client id and the self-mask seed: the
    commitment a client signs in stage 1 and the server checks the reconstructed seed against."""
    return hashlib.sha256(_SEED + bytes([len(round_id)]) + round_id + client_id.to_bytes(4, "big") + seed).digest()


# ----------------------------------------------------------------------------- share tree


def share_tree_depth(n: int) -> int:
    """Depth of the share tree of a round of ``n`` clients (2n leaves, padded to a power of 2)."""
    return max(1, (2 * n - 1).bit_length())


def share_leaf(round_id: bytes, dealer: int, x: int, kind: int, share: bytes) -> bytes:
    """Leaf of the share tree: the dealer's share of one secret (``kind`` 0 = mask key,
    1 = self-mask seed) for the holder at x-coordinate ``x``."""
    return hashlib.sha256(
        b"".join((_LEAF, bytes((len(round_id),)), round_id, _LEAF_FIELDS.pack(dealer, x, kind, len(share)), share))
    ).digest()


_LEAF_FIELDS = struct.Struct(">IIBI")


def _index(x: int, kind: int) -> int:
    return 2 * (x - 1) + kind


class ShareTree:
    """Merkle tree over a dealer's shares for x = 1..n (leaf ``2 (x - 1) + kind``)."""

    __slots__ = ("_levels",)

    def __init__(self, leaves: Sequence[bytes], n: int) -> None:
        depth = share_tree_depth(n)
        level = list(leaves) + [_PAD] * ((1 << depth) - len(leaves))
        levels = [level]
        sha = hashlib.sha256
        while len(level) > 1:
            level = [sha(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
            levels.append(level)
        self._levels = levels

    @property
    def root(self) -> bytes:
        """The 32-byte root (signed in the advertisement)."""
        return self._levels[-1][0]

    def proof(self, x: int, kind: int) -> tuple[bytes, ...]:
        """Sibling hashes from the leaf of (x, kind) up to the root."""
        i = _index(x, kind)
        out = []
        for level in self._levels[:-1]:
            out.append(level[i ^ 1])
            i >>= 1
        return tuple(out)


def verify_share_proof(  # noqa: PLR0917 - one check, its fields
    root: bytes, leaf: bytes, x: int, kind: int, proof: Sequence[bytes], n: int
) -> bool:
    """Whether ``leaf`` sits at (x, kind) under ``root`` (a tree of :func:`share_tree_depth` (n))."""
    if len(proof) != share_tree_depth(n) or not 1 <= x <= n:
        return False
    i = _index(x, kind)
    node = leaf
    sha = hashlib.sha256
    for sib in proof:
        node = sha(_NODE + sib + node).digest() if i & 1 else sha(_NODE + node + sib).digest()
        i >>= 1
    return node == root


# ----------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class SignedStatement:
    """Bytes a party signed, with its signature (see the ``*_statement`` functions)."""

    signer: int
    statement: bytes
    signature: bytes

    def verify(self, alliance: Alliance) -> None:
        """Raises :class:`~secagg.errors.SignatureError` unless the signer signed it."""
        alliance.verify(self.signer, self.statement, self.signature)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (hex bytes)."""
        return {"signer": self.signer, "statement": self.statement.hex(), "signature": self.signature.hex()}


@dataclass(frozen=True)
class Evidence:
    """Why a client was blamed.

    Attributes:
        client: the client blamed.
        stage: the protocol stage.
        fault: one line: what it did.
        provable: True when ``statements`` alone prove the fault to anyone holding the
            alliance (the blamed client signed something it must not have signed); False
            when it rests on what the server observed (a message that failed to verify
            could have been forged by anyone on the path, so it only excludes the sender
            the transport authenticated from this round).
        statements: the signed statements (the blamed client's, and what they conflict with).
        detail: extra public data (e.g. the revealed shares, hex).
    """

    client: int
    stage: str
    fault: str
    provable: bool
    statements: tuple[SignedStatement, ...] = ()
    detail: tuple[tuple[str, str], ...] = ()

    def verify(self, alliance: Alliance) -> None:
        """Check every signature in the evidence.

        Raises:
            SignatureError: a statement does not verify.
        """
        for s in self.statements:
            s.verify(alliance)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "client": self.client,
            "stage": self.stage,
            "fault": self.fault,
            "provable": self.provable,
            "statements": [s.to_dict() for s in self.statements],
            "detail": dict(self.detail),
        }
