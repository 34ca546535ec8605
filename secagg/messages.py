"""Wire messages of the SecAgg+ protocol: frozen dataclasses with a canonical byte encoding.

Every message is encoded as::

    MAGIC (4 bytes, b"SAgg") | wire version (u8) | type tag (u8) | round id (u8 length + bytes) | fields

Integers are big-endian (``u8``/``u32``); byte strings carry a ``u32`` length prefix;
public keys are fixed 32-byte fields; lists carry a ``u32`` count and must be sorted by
client id with no duplicates, so every message has exactly one encoding
(``encode(decode(b)) == b``).  No pickle, no field is interpreted before it is checked:
:func:`decode_message` rejects unknown versions and tags, short or trailing bytes,
unsorted or duplicated lists and out-of-range fields with :class:`~secagg.errors.MessageError`.
Constructing a message validates it the same way, so an in-memory message is always
encodable.

The round id sits in every message (and in the associated data of every AEAD ciphertext,
see :mod:`secagg.crypto.aead`), so a message of another round is rejected by the sessions.
Client ids are integers in [1, 2^32 - 1]; they are also the Shamir x-coordinates.

Large payloads (:class:`MaskedInput`) are decoded as a read-only :class:`memoryview` into
the received buffer, not copied.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, TypeVar

from secagg.errors import MessageError

__all__ = [
    "MAGIC",
    "MAX_CLIENTS",
    "ROUND_ID_MAX",
    "ROUND_ID_MIN",
    "WIRE_VERSION",
    "Abort",
    "AdvertiseKeys",
    "ConsistencyCheck",
    "ConsistencyRequest",
    "EncryptedShare",
    "MaskedInput",
    "Message",
    "RevealedShare",
    "Roster",
    "RosterEntry",
    "RoundConfig",
    "ShareDelivery",
    "ShareKeys",
    "SharePayload",
    "Stage",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskShares",
    "decode_message",
    "encode_message",
]

MAGIC = b"SAgg"
WIRE_VERSION = 2
ROUND_ID_MIN = 16
ROUND_ID_MAX = 64
MAX_CLIENTS = 2**32 - 1
KEY_BYTES = 32
MAX_REASON = 1024
SIG_BYTES = 64
HASH_BYTES = 32
MAX_PROOF = 34  # Merkle path length of a share tree over 2 * (2^32 - 1) leaves

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_ROSTER_ITEM = struct.Struct(">I32s32s")
_SIGNED_ROSTER_ITEM = struct.Struct(">I32s32s32s32s64s")
_SIGNATURE_ITEM = struct.Struct(">I64s")


class Stage(str, Enum):
    """The client-to-server stages of a round, in order (the names used for
    ``dropouts``, ``bytes_up``, ``bytes_down`` and ``timings``).  ``consistency`` (the
    survivors sign the survivor set they were told, Bonawitz et al. 2017) runs in active
    mode only; a semi-honest round skips it (its report is empty)."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASKING = "unmasking"


# ----------------------------------------------------------------------------- codec


class _Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []

    def u8(self, v: int) -> None:
        self.parts.append(_U8.pack(v))

    def u32(self, v: int) -> None:
        self.parts.append(_U32.pack(v))

    def f64(self, v: float) -> None:
        self.parts.append(_F64.pack(v))

    def fixed(self, b: bytes) -> None:
        self.parts.append(b)

    def var(self, b: bytes | memoryview) -> None:
        self.parts.append(_U32.pack(len(b)))
        self.parts.append(b)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def _take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            left = len(self.buf) - self.pos
            raise MessageError(f"message truncated while reading {what}: need {n} bytes, {left} left")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def u8(self, what: str) -> int:
        return int(self._take(1, what)[0])

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self._take(4, what))[0])

    def f64(self, what: str) -> float:
        return float(_F64.unpack(self._take(8, what))[0])

    def fixed(self, n: int, what: str) -> bytes:
        return bytes(self._take(n, what))

    def var(self, what: str) -> bytes:
        return bytes(self.var_view(what))

    def var_view(self, what: str) -> memoryview:
        return self._take(self.u32(f"length of {what}"), what)

    def count(self, what: str, min_item_size: int) -> int:
        n = self.u32(f"count of {what}")
        if n * min_item_size > len(self.buf) - self.pos:
            raise MessageError(f"{what}: count {n} exceeds the bytes left in the message")
        return n

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise MessageError(f"{len(self.buf) - self.pos} trailing bytes after the message; reject it")


# ----------------------------------------------------------------------------- validation helpers


def _check_round_id(round_id: object) -> None:
    if not isinstance(round_id, bytes):
        raise MessageError(f"round_id must be bytes, got {type(round_id).__name__}")
    if not ROUND_ID_MIN <= len(round_id) <= ROUND_ID_MAX:
        raise MessageError(f"round_id must be {ROUND_ID_MIN}..{ROUND_ID_MAX} bytes, got {len(round_id)}")


def _check_uint(name: str, v: object, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise MessageError(f"{name} must be an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise MessageError(f"{name} must be in [{lo}, {hi}], got {v}")


def _check_id(name: str, v: object) -> None:
    _check_uint(name, v, 1, MAX_CLIENTS)


def _check_key(name: str, v: object) -> None:
    if not isinstance(v, bytes) or len(v) != KEY_BYTES:
        raise MessageError(f"{name} must be {KEY_BYTES} raw bytes")


def _check_fixed(name: str, v: object, size: int) -> None:
    if not isinstance(v, bytes) or len(v) != size:
        raise MessageError(f"{name} must be {size} bytes")


def _check_signed(name: str, fields: tuple[object, ...], sizes: tuple[int, ...]) -> bool:
    """Optional signed fields: all empty (semi-honest) or all of their sizes (active)."""
    if all(isinstance(f, bytes) and f == b"" for f in fields):
        return False
    for f, size in zip(fields, sizes, strict=True):
        _check_fixed(name, f, size)
    return True


def _check_proof(name: str, proof: object) -> None:
    if not isinstance(proof, tuple) or len(proof) > MAX_PROOF:
        raise MessageError(f"{name} must be a tuple of at most {MAX_PROOF} hashes")
    if all(type(node) is bytes and len(node) == HASH_BYTES for node in proof):
        return
    for node in proof:
        _check_fixed(f"{name} node", node, HASH_BYTES)


def _write_proof(w: _Writer, proof: tuple[bytes, ...]) -> None:
    w.u8(len(proof))
    w.fixed(b"".join(proof))


def _read_proof(r: _Reader, what: str) -> tuple[bytes, ...]:
    count = r.u8(f"length of {what}")
    if count > MAX_PROOF:
        raise MessageError(f"{what}: {count} nodes exceeds {MAX_PROOF}")
    raw = r.fixed(count * HASH_BYTES, what)
    return tuple(raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES))


def _check_bytes(name: str, v: object, *, nonempty: bool = True) -> None:
    if not isinstance(v, bytes):
        raise MessageError(f"{name} must be bytes, got {type(v).__name__}")
    if nonempty and not v:
        raise MessageError(f"{name} must not be empty")
    if len(v) > MAX_CLIENTS:
        raise MessageError(f"{name} is too long")


def _check_sorted_ids(name: str, ids: Sequence[int]) -> None:
    for a, b in itertools.pairwise(ids):
        if not a < b:
            raise MessageError(f"{name} must be sorted by client id without duplicates (saw {a} then {b})")


_T = TypeVar("_T")


def _check_items(name: str, items: object, cls: type[_T], key: Callable[[_T], int]) -> None:
    if not isinstance(items, tuple):
        raise MessageError(f"{name} must be a tuple, got {type(items).__name__}")
    for it in items:
        if not isinstance(it, cls):
            raise MessageError(f"{name} items must be {cls.__name__}, got {type(it).__name__}")
    _check_sorted_ids(name, [key(it) for it in items])


def _check_id_tuple(name: str, ids: object) -> None:
    if not isinstance(ids, tuple):
        raise MessageError(f"{name} must be a tuple of client ids, got {type(ids).__name__}")
    fast = all(type(v) is int for v in ids) and (not ids or (ids[0] >= 1 and ids[-1] <= MAX_CLIENTS))
    if fast and all(a < b for a, b in itertools.pairwise(ids)):  # sorted: the ends bound every id
        return
    for v in ids:
        _check_id(f"{name} entry", v)
    _check_sorted_ids(name, ids)


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Base class of every wire message: carries the round id (16 to 64 bytes)."""

    TYPE: ClassVar[int] = 0
    round_id: bytes

    def __post_init__(self) -> None:
        _check_round_id(self.round_id)
        self._validate()

    def _validate(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _write(self, w: _Writer) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> Message:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode(self) -> bytes:
        """The canonical byte encoding of this message (cached: messages are immutable)."""
        cached: bytes | None = self.__dict__.get("_wire")
        if cached is not None:
            return cached
        w = _Writer()
        w.fixed(MAGIC)
        w.u8(WIRE_VERSION)
        w.u8(self.TYPE)
        w.u8(len(self.round_id))
        w.fixed(self.round_id)
        self._write(w)
        data = w.getvalue()
        if self.TYPE != MaskedInput.TYPE:  # never pin a large vector in memory
            object.__setattr__(self, "_wire", data)
        return data


@dataclass(frozen=True)
class RoundConfig(Message):
    """Public parameters of one round; both sides are constructed with it (the server may
    send it to the clients as the first message).

    Attributes:
        round_id: 16 to 64 bytes, unique per round (fresh random bytes).
        n: number of client ids; clients are numbered 1..n.
        d: vector length (coordinates per input).
        bits: inputs and the sum live in Z_{2^bits}, 1 <= bits <= 64.
        k: neighbours per client in the SecAgg+ graph; 0 (or n - 1) means the complete
            graph.  With odd k and an odd number of clients one client gets k + 1.
        t: Shamir threshold (shares needed out of a client's neighbours).
        colluders: c, clients assumed to collude with the server (threat model, global).
        corrupt_neighbours: bound on colluders among one client's neighbours (equal to
            ``colluders`` for the complete graph); the client checks
            t > (degree + corrupt_neighbours) / 2.
        min_clients: cohort floor; no sum over fewer inputs, no graph piece smaller.
        expected_survivors: neighbours of a client expected to survive to unmasking
            (from the threat model); a client refuses t above it.
        require_connected: the survivors' graph must be connected (default check).
        max_dropouts: D, the largest number of clients the threat model lets drop before
            the roster (stage 1); every client refuses a roster of fewer than
            ``n - max_dropouts`` clients (:attr:`roster_floor`), so a server cannot shrink
            the roster around a victim.  None (default): ``n - min_clients``.
        active: active mode (signed advertisements, the consistency round, verified
            shares); needs an :class:`~secagg.identity.Alliance`.  False: the semi-honest
            protocol (an explicit opt-in).
    """

    TYPE: ClassVar[int] = 1
    n: int
    d: int
    bits: int
    k: int
    t: int
    colluders: int
    corrupt_neighbours: int
    min_clients: int
    expected_survivors: int
    require_connected: bool = True
    max_dropouts: int | None = None
    active: bool = False

    def _validate(self) -> None:
        _check_uint("n", self.n, 2, MAX_CLIENTS)
        _check_uint("d", self.d, 1, MAX_CLIENTS)
        _check_uint("bits", self.bits, 1, 64)
        _check_uint("k", self.k, 0, self.n - 1)
        _check_uint("t", self.t, 1, self.n - 1)
        _check_uint("colluders", self.colluders, 0, self.n)
        _check_uint("corrupt_neighbours", self.corrupt_neighbours, 0, self.n - 1)
        _check_uint("min_clients", self.min_clients, 1, self.n)
        _check_uint("expected_survivors", self.expected_survivors, 0, self.n - 1)
        if not isinstance(self.require_connected, bool):
            raise MessageError("require_connected must be a bool")
        if self.max_dropouts is None:
            object.__setattr__(self, "max_dropouts", self.n - self.min_clients)
        _check_uint("max_dropouts", self.max_dropouts, 0, self.n - self.min_clients)
        if not isinstance(self.active, bool):
            raise MessageError("active must be a bool")

    @property
    def dropouts_allowed(self) -> int:
        """D: the most clients that may be missing from the roster (an int after construction)."""
        assert self.max_dropouts is not None
        return self.max_dropouts

    @property
    def roster_floor(self) -> int:
        """The smallest roster a client accepts: ``n - max_dropouts``."""
        return self.n - self.dropouts_allowed

    @property
    def complete(self) -> bool:
        """True for the complete graph (classic SecAgg)."""
        return self.k == 0 or self.k >= self.n - 1

    @property
    def degree(self) -> int:
        """Neighbours per client when every client advertises keys (k, or n - 1)."""
        return self.n - 1 if self.complete else self.k

    @property
    def max_degree(self) -> int:
        """Largest neighbourhood a client can get (k + 1 for odd k, see ``k``)."""
        return self.n - 1 if self.complete else min(self.k + self.k % 2, self.n - 1)

    def _write(self, w: _Writer) -> None:
        for v in (self.n, self.d):
            w.u32(v)
        w.u8(self.bits)
        for v in (self.k, self.t, self.colluders, self.corrupt_neighbours, self.min_clients, self.expected_survivors):
            w.u32(v)
        w.u8(1 if self.require_connected else 0)
        w.u32(self.dropouts_allowed)
        w.u8(1 if self.active else 0)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> RoundConfig:
        n = r.u32("n")
        d = r.u32("d")
        bits = r.u8("bits")
        k, t, c, cn, m, e = (
            r.u32(x) for x in ("k", "t", "colluders", "corrupt_neighbours", "min_clients", "expected_survivors")
        )
        flag = r.u8("require_connected")
        if flag not in (0, 1):
            raise MessageError("require_connected flag must be 0 or 1")
        dropouts = r.u32("max_dropouts")
        active = r.u8("active")
        if active not in (0, 1):
            raise MessageError("active flag must be 0 or 1")
        return cls(round_id, n, d, bits, k, t, c, cn, m, e, bool(flag), dropouts, bool(active))


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Stage 1, client to server: two raw X25519 public keys (32 bytes each).  In active
    mode also the commitment to the self-mask seed, the root of the dealt shares (32 bytes
    each) and the client's Ed25519 signature of
    :func:`secagg.identity.advertisement_statement` (64 bytes); empty in semi-honest mode."""

    TYPE: ClassVar[int] = 2
    sender: int
    mask_key: bytes
    enc_key: bytes
    commitment: bytes = b""
    share_root: bytes = b""
    signature: bytes = b""

    def _validate(self) -> None:
        _check_id("sender", self.sender)
        _check_key("mask_key", self.mask_key)
        _check_key("enc_key", self.enc_key)
        _check_signed("signed advertisement fields", (self.commitment, self.share_root, self.signature), _SIGNED_SIZES)

    @property
    def signed(self) -> bool:
        """Whether the active-mode fields are present."""
        return bool(self.signature)

    def _write(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.fixed(self.mask_key)
        w.fixed(self.enc_key)
        w.u8(1 if self.signed else 0)
        if self.signed:
            w.fixed(self.commitment)
            w.fixed(self.share_root)
            w.fixed(self.signature)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> AdvertiseKeys:
        sender, mask_key, enc_key = r.u32("sender"), r.fixed(KEY_BYTES, "mask_key"), r.fixed(KEY_BYTES, "enc_key")
        flag = r.u8("signed flag")
        if flag not in (0, 1):
            raise MessageError("signed flag must be 0 or 1")
        if not flag:
            return cls(round_id, sender, mask_key, enc_key)
        commitment, root = r.fixed(HASH_BYTES, "commitment"), r.fixed(HASH_BYTES, "share_root")
        return cls(round_id, sender, mask_key, enc_key, commitment, root, r.fixed(SIG_BYTES, "signature"))


_SIGNED_SIZES = (HASH_BYTES, HASH_BYTES, SIG_BYTES)


@dataclass(frozen=True)
class RosterEntry:
    """One client's advertised keys inside a :class:`Roster`."""

    client_id: int
    mask_key: bytes
    enc_key: bytes
    commitment: bytes = b""
    share_root: bytes = b""
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_id("roster client_id", self.client_id)
        _check_key("roster mask_key", self.mask_key)
        _check_key("roster enc_key", self.enc_key)
        _check_signed("signed roster fields", (self.commitment, self.share_root, self.signature), _SIGNED_SIZES)

    @property
    def signed(self) -> bool:
        """Whether the active-mode fields are present."""
        return bool(self.signature)


@dataclass(frozen=True)
class Roster(Message):
    """Server to clients after stage 1: the keys of every client whose keys arrived
    (sorted by id).  The neighbour graph is a function of this message alone."""

    TYPE: ClassVar[int] = 3
    clients: tuple[RosterEntry, ...]

    def _validate(self) -> None:
        _check_items("clients", self.clients, RosterEntry, lambda e: e.client_id)
        if len({e.signed for e in self.clients}) > 1:
            raise MessageError("roster entries must all be signed (active mode) or all unsigned")

    @property
    def signed(self) -> bool:
        """Whether the entries carry active-mode signatures."""
        return bool(self.clients) and self.clients[0].signed

    def ids(self) -> tuple[int, ...]:
        """Client ids in the roster, ascending."""
        return tuple(e.client_id for e in self.clients)

    def _write(self, w: _Writer) -> None:
        signed = self.signed
        w.u8(1 if signed else 0)
        w.u32(len(self.clients))
        for e in self.clients:
            w.u32(e.client_id)
            w.fixed(e.mask_key)
            w.fixed(e.enc_key)
            if signed:
                w.fixed(e.commitment)
                w.fixed(e.share_root)
                w.fixed(e.signature)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> Roster:
        flag = r.u8("signed flag")
        if flag not in (0, 1):
            raise MessageError("signed flag must be 0 or 1")
        item = _SIGNED_ROSTER_ITEM if flag else _ROSTER_ITEM
        n = r.count("clients", item.size)
        if flag and n == 0:
            raise MessageError("an empty roster is not signed")
        raw = bytes(r._take(n * item.size, "clients"))
        # Bulk parse (every client decodes the whole roster): the fixed layout makes the
        # field lengths right by construction; ids are range-checked here, order by the
        # Roster constructor.
        entries = []
        names = ("client_id", "mask_key", "enc_key", "commitment", "share_root", "signature")
        for fields in item.iter_unpack(raw):
            if fields[0] == 0:
                raise MessageError("roster client_id must be >= 1")
            e = object.__new__(RosterEntry)
            for name, value in zip(names, fields + (b"", b"", b"") * (not flag), strict=False):
                object.__setattr__(e, name, value)
            entries.append(e)
        return cls(round_id, tuple(entries))


@dataclass(frozen=True)
class EncryptedShare:
    """An AEAD ciphertext of a :class:`SharePayload`; ``peer`` is the receiver in
    :class:`ShareKeys` and the sender in :class:`ShareDelivery`."""

    peer: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        _check_id("share peer", self.peer)
        _check_bytes("ciphertext", self.ciphertext)


def _write_encrypted(w: _Writer, items: tuple[EncryptedShare, ...]) -> None:
    w.u32(len(items))
    for it in items:
        w.u32(it.peer)
        w.var(it.ciphertext)


def _read_encrypted(r: _Reader) -> tuple[EncryptedShare, ...]:
    n = r.count("shares", 8)
    return tuple(EncryptedShare(r.u32("peer"), r.var("ciphertext")) for _ in range(n))


@dataclass(frozen=True)
class ShareKeys(Message):
    """Stage 2, client to server: one encrypted share bundle per neighbour (sorted by receiver)."""

    TYPE: ClassVar[int] = 4
    sender: int
    shares: tuple[EncryptedShare, ...]

    def _validate(self) -> None:
        _check_id("sender", self.sender)
        _check_items("shares", self.shares, EncryptedShare, lambda s: s.peer)

    def _write(self, w: _Writer) -> None:
        w.u32(self.sender)
        _write_encrypted(w, self.shares)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> ShareKeys:
        return cls(round_id, r.u32("sender"), _read_encrypted(r))


@dataclass(frozen=True)
class ShareDelivery(Message):
    """Server to client after stage 2: the bundles addressed to ``receiver`` (sorted by
    sender).  Its senders are exactly the receiver's neighbours that shared keys; the
    receiver masks its input against those neighbours only."""

    TYPE: ClassVar[int] = 5
    receiver: int
    shares: tuple[EncryptedShare, ...]

    def _validate(self) -> None:
        _check_id("receiver", self.receiver)
        _check_items("shares", self.shares, EncryptedShare, lambda s: s.peer)

    def senders(self) -> tuple[int, ...]:
        """Ids of the neighbours whose bundles are included, ascending."""
        return tuple(s.peer for s in self.shares)

    def _write(self, w: _Writer) -> None:
        w.u32(self.receiver)
        _write_encrypted(w, self.shares)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> ShareDelivery:
        return cls(round_id, r.u32("receiver"), _read_encrypted(r))


@dataclass(frozen=True)
class SharePayload(Message):
    """Plaintext inside one AEAD ciphertext of stage 2: the sender's Shamir shares of its
    mask private key and of its self-mask seed, for ``receiver`` (whose id is the
    x-coordinate).  In active mode ``proof`` is the Merkle path of the key share's leaf
    under the share root the sender signed in its advertisement (the seed share's path
    is the same with the key share's leaf as first node); empty in semi-honest mode."""

    TYPE: ClassVar[int] = 6
    sender: int
    receiver: int
    key_share: bytes
    seed_share: bytes
    proof: tuple[bytes, ...] = ()

    def _validate(self) -> None:
        _check_id("sender", self.sender)
        _check_id("receiver", self.receiver)
        if self.sender == self.receiver:
            raise MessageError("a client does not send shares to itself")
        _check_bytes("key_share", self.key_share)
        _check_bytes("seed_share", self.seed_share)
        _check_proof("proof", self.proof)

    def _write(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.u32(self.receiver)
        w.var(self.key_share)
        w.var(self.seed_share)
        _write_proof(w, self.proof)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> SharePayload:
        sender, receiver = r.u32("sender"), r.u32("receiver")
        key_share, seed_share = r.var("key_share"), r.var("seed_share")
        return cls(round_id, sender, receiver, key_share, seed_share, _read_proof(r, "proof"))


@dataclass(frozen=True, eq=False)
class MaskedInput(Message):
    """Stage 3, client to server: the masked vector, bit-packed (``bits`` bits a value,
    see :mod:`secagg.packing`).  ``payload`` may be a read-only memoryview into the
    received buffer (no copy); compare messages with :meth:`same_as`."""

    TYPE: ClassVar[int] = 7
    sender: int
    payload: bytes | memoryview

    def _validate(self) -> None:
        _check_id("sender", self.sender)
        p = self.payload
        if isinstance(p, memoryview):
            if p.ndim != 1 or p.itemsize != 1 or not p.c_contiguous:
                raise MessageError("payload memoryview must be 1-D, contiguous bytes")
        elif not isinstance(p, bytes):
            raise MessageError(f"payload must be bytes or memoryview, got {type(p).__name__}")
        if len(p) == 0 or len(p) > MAX_CLIENTS:
            raise MessageError("payload must be 1 .. 2^32-1 bytes")

    def same_as(self, other: object) -> bool:
        """Value equality (round, sender and payload bytes)."""
        return (
            isinstance(other, MaskedInput)
            and other.round_id == self.round_id
            and other.sender == self.sender
            and bytes(other.payload) == bytes(self.payload)
        )

    def __eq__(self, other: object) -> bool:
        return self.same_as(other)

    def __hash__(self) -> int:
        return hash((self.round_id, self.sender, bytes(self.payload)))

    def _write(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.var(self.payload)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> MaskedInput:
        sender = r.u32("sender")
        return cls(round_id, sender, r.var_view("payload"))


@dataclass(frozen=True)
class ConsistencyRequest(Message):
    """Active mode, server to each client whose masked input arrived (after stage 3): the
    survivor set, i.e. every client whose masked input is in the sum (sorted).  The
    client signs it (:class:`ConsistencyCheck`)."""

    TYPE: ClassVar[int] = 11
    receiver: int
    survivors: tuple[int, ...]

    def _validate(self) -> None:
        _check_id("receiver", self.receiver)
        _check_id_tuple("survivors", self.survivors)

    def _write(self, w: _Writer) -> None:
        w.u32(self.receiver)
        _write_id_list(w, self.survivors)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> ConsistencyRequest:
        return cls(round_id, r.u32("receiver"), _read_id_list(r, "survivors"))


@dataclass(frozen=True)
class ConsistencyCheck(Message):
    """Active mode, client to server: the client's Ed25519 signature of
    :func:`secagg.identity.survivor_statement` over the survivor set it was sent."""

    TYPE: ClassVar[int] = 12
    sender: int
    signature: bytes

    def _validate(self) -> None:
        _check_id("sender", self.sender)
        _check_fixed("signature", self.signature, SIG_BYTES)

    def _write(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.fixed(self.signature)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> ConsistencyCheck:
        return cls(round_id, r.u32("sender"), r.fixed(SIG_BYTES, "signature"))


@dataclass(frozen=True)
class SurvivorSignature:
    """One client's signature of the survivor set (inside an :class:`UnmaskRequest`)."""

    signer: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_id("signer", self.signer)
        _check_fixed("survivor signature", self.signature, SIG_BYTES)


def _write_id_list(w: _Writer, ids: tuple[int, ...]) -> None:
    w.fixed(struct.pack(f">I{len(ids)}I", len(ids), *ids))


def _read_id_list(r: _Reader, name: str) -> tuple[int, ...]:
    n = r.count(name, 4)
    return struct.unpack(f">{n}I", r._take(4 * n, name))


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Server to a surviving client, last stage: which of its neighbours survived (their
    self-mask shares are wanted) and which dropped after sharing keys (their mask-key
    shares are wanted).  The two lists must partition the neighbours that shared keys.

    Active mode adds the survivor set the client signed in the consistency round and the
    survivors' signatures of it (sorted by signer); the client reveals only if enough of
    them verify (see :mod:`secagg.client`).  Both are empty in semi-honest mode."""

    TYPE: ClassVar[int] = 8
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    survivor_set: tuple[int, ...] = ()
    signatures: tuple[SurvivorSignature, ...] = ()

    def _validate(self) -> None:
        _check_id("receiver", self.receiver)
        _check_id_tuple("survivors", self.survivors)
        _check_id_tuple("dropped", self.dropped)
        _check_id_tuple("survivor_set", self.survivor_set)
        _check_items("signatures", self.signatures, SurvivorSignature, lambda s: s.signer)

    def _write(self, w: _Writer) -> None:
        w.u32(self.receiver)
        for ids in (self.survivors, self.dropped, self.survivor_set):
            _write_id_list(w, ids)
        w.u32(len(self.signatures))
        w.fixed(b"".join(_SIGNATURE_ITEM.pack(sig.signer, sig.signature) for sig in self.signatures))

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> UnmaskRequest:
        receiver = r.u32("receiver")
        lists = [_read_id_list(r, name) for name in ("survivors", "dropped", "survivor_set")]
        n = r.count("signatures", _SIGNATURE_ITEM.size)
        raw = r._take(n * _SIGNATURE_ITEM.size, "signatures")
        sigs = tuple(SurvivorSignature(signer, sig) for signer, sig in _SIGNATURE_ITEM.iter_unpack(raw))
        return cls(round_id, receiver, lists[0], lists[1], lists[2], sigs)


@dataclass(frozen=True)
class RevealedShare:
    """A share of ``owner``'s secret (self-mask seed or mask private key), as bytes of
    :meth:`secagg.shamir.Share.to_bytes`; in active mode with its Merkle path under the
    share root ``owner`` signed (empty in semi-honest mode)."""

    owner: int
    share: bytes
    proof: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        _check_id("share owner", self.owner)
        _check_bytes("share", self.share)
        _check_proof("share proof", self.proof)


def _write_revealed(w: _Writer, items: tuple[RevealedShare, ...]) -> None:
    w.u32(len(items))
    for it in items:
        w.u32(it.owner)
        w.var(it.share)
        _write_proof(w, it.proof)


def _read_revealed(r: _Reader) -> tuple[RevealedShare, ...]:
    n = r.count("revealed shares", 9)
    return tuple(RevealedShare(r.u32("owner"), r.var("share"), _read_proof(r, "share proof")) for _ in range(n))


@dataclass(frozen=True)
class UnmaskShares(Message):
    """Last stage, client to server: self-mask shares of surviving neighbours and mask-key
    shares of dropped neighbours (never both for one owner).  In active mode ``signature``
    is the sender's Ed25519 signature of :func:`secagg.identity.reveal_statement` over this
    message's encoding with an empty signature (so a revealed share the dealer did not
    sign proves the holder altered it); empty in semi-honest mode."""

    TYPE: ClassVar[int] = 9
    sender: int
    self_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]
    signature: bytes = b""

    def _validate(self) -> None:
        _check_id("sender", self.sender)
        _check_items("self_shares", self.self_shares, RevealedShare, lambda s: s.owner)
        _check_items("key_shares", self.key_shares, RevealedShare, lambda s: s.owner)
        if self.signature != b"":
            _check_fixed("signature", self.signature, SIG_BYTES)

    def unsigned(self) -> bytes:
        """The canonical encoding with an empty signature (what the sender signs)."""
        if not self.signature:
            return self.encode()
        return UnmaskShares(self.round_id, self.sender, self.self_shares, self.key_shares).encode()

    def _write(self, w: _Writer) -> None:
        w.u32(self.sender)
        _write_revealed(w, self.self_shares)
        _write_revealed(w, self.key_shares)
        w.u8(1 if self.signature else 0)
        if self.signature:
            w.fixed(self.signature)

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> UnmaskShares:
        sender = r.u32("sender")
        own, keys = _read_revealed(r), _read_revealed(r)
        flag = r.u8("signed flag")
        if flag not in (0, 1):
            raise MessageError("signed flag must be 0 or 1")
        return cls(round_id, sender, own, keys, r.fixed(SIG_BYTES, "signature") if flag else b"")


@dataclass(frozen=True)
class Abort(Message):
    """Server to clients: the round was abandoned (reason in UTF-8, at most 1024 bytes).
    A client receiving it forgets its secrets and reveals nothing more."""

    TYPE: ClassVar[int] = 10
    reason: str

    def _validate(self) -> None:
        if not isinstance(self.reason, str):
            raise MessageError("reason must be a str")
        if len(self.reason.encode("utf-8")) > MAX_REASON:
            raise MessageError(f"reason must be at most {MAX_REASON} UTF-8 bytes")

    def _write(self, w: _Writer) -> None:
        w.var(self.reason.encode("utf-8"))

    @classmethod
    def _read(cls, r: _Reader, round_id: bytes) -> Abort:
        raw = r.var("reason")
        try:
            reason = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError("abort reason is not valid UTF-8") from exc
        return cls(round_id, reason)


_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        RoundConfig,
        AdvertiseKeys,
        Roster,
        ShareKeys,
        ShareDelivery,
        SharePayload,
        MaskedInput,
        UnmaskRequest,
        UnmaskShares,
        Abort,
        ConsistencyRequest,
        ConsistencyCheck,
    )
}


def encode_message(msg: Message) -> bytes:
    """Canonical bytes of ``msg`` (same as ``msg.encode()``)."""
    if not isinstance(msg, Message):
        raise MessageError(f"not a secagg message: {type(msg).__name__}")
    return msg.encode()


def decode_message(data: bytes | bytearray | memoryview, expected: type[Message] | None = None) -> Message:
    """Decode and validate one message.

    Args:
        data: the bytes received.  A :class:`MaskedInput` payload is returned as a
            memoryview into ``data`` (zero-copy); keep ``data`` alive and unmodified.
        expected: if given, the decoded message must be of this class.

    Raises:
        MessageError: bad magic, unsupported version, unknown type, truncated or
            trailing bytes, non-canonical lists or any out-of-range field.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"decode_message needs bytes, got {type(data).__name__}")
    buf = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    if len(buf) < len(MAGIC) + 3:
        raise MessageError("message too short")
    if bytes(buf[:4]) != MAGIC:
        raise MessageError("bad magic: not a secagg message")
    r = _Reader(buf, 4)
    version = r.u8("version")
    if version != WIRE_VERSION:
        raise MessageError(f"unsupported wire version {version} (this library speaks {WIRE_VERSION})")
    tag = r.u8("type")
    cls = _TYPES.get(tag)
    if cls is None:
        raise MessageError(f"unknown message type {tag}")
    if expected is not None and cls is not expected:
        raise MessageError(f"expected {expected.__name__}, got {cls.__name__}")
    rid_len = r.u8("round id length")
    round_id = r.fixed(rid_len, "round id")
    msg = cls._read(r, round_id)
    r.end()
    if cls is not MaskedInput:
        object.__setattr__(msg, "_wire", bytes(buf))  # canonical: the bytes are its encoding
    return msg
