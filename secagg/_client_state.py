"""Persistence of a :class:`~secagg.client.ClientSession` between messages: the versioned,
canonical bytes of :meth:`~secagg.client.ClientSession.export_state` and their strict
reading for :meth:`~secagg.client.ClientSession.restore` (layout in those docstrings).

Private: it reads and fills the session's private fields, and only those two methods call it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, cast

from secagg import packing as _packing
from secagg import shamir as _shamir
from secagg.client import _TERMINAL, SECRET_BYTES, ClientState, RingArray
from secagg.crypto import keys as _keys
from secagg.crypto.prg import Masker
from secagg.errors import (
    MessageError,
    RemoteProtocolError,
    SecAggError,
    SecAggValueError,
    UnsafeParametersError,
)
from secagg.identity import (
    KEY_SHARE,
    SEED_SHARE,
    Alliance,
    IdentityKey,
    ShareTree,
    advertisement_statement,
    seed_commitment,
    share_leaf,
    share_tree_depth,
    survivor_statement,
    verify_share_proof,
)
from secagg.messages import RoundConfig, _Reader, _Writer, decode_message
from secagg.rand import RngLike

if TYPE_CHECKING:
    from secagg.client import ClientSession

# ----------------------------------------------------------------------------- state encoding

_STATE_MAGIC = b"SAcs"
_STATE_VERSION = 1  # semi-honest sessions (unchanged since the first release)
_STATE_VERSION_ACTIVE = 2  # active sessions: version 1's layout with the active parts
_ACTIVE_GRAPH_STATES = frozenset({ClientState.SHARED, ClientState.AWAIT_INPUT, ClientState.MASKED, ClientState.CHECKED})
_ACTIVE_PROOF_STATES = frozenset({ClientState.AWAIT_INPUT, ClientState.MASKED, ClientState.CHECKED})
_STATES: tuple[ClientState, ...] = tuple(ClientState)  # codes are positions: append new states only
_STATE_CODES = {s: i for i, s in enumerate(_STATES)}
_HAS_INPUT = 0b1000
_SECRETS_IN: dict[ClientState, frozenset[str]] = {
    ClientState.READY: frozenset(),
    ClientState.ADVERTISED: frozenset({"mask_sk", "enc_sk", "seed"}),
    ClientState.SHARED: frozenset({"mask_sk", "seed"}),
    ClientState.AWAIT_INPUT: frozenset({"mask_sk", "seed"}),
    ClientState.MASKED: frozenset(),
    ClientState.DONE: frozenset(),
    ClientState.ABORTED: frozenset(),
    ClientState.FAILED: frozenset(),
    ClientState.CHECKED: frozenset(),
}


def _write_ids(w: _Writer, ids: Sequence[int]) -> None:
    w.u32(len(ids))
    for v in ids:
        w.u32(v)


def _check_peer(v: int, n: int, me: int, prev: int) -> int:
    """A peer id read from a state: in 1..n, not ``me``, above the previous id ``prev``
    (strictly ascending lists: one encoding per state)."""
    if not 1 <= v <= n or v == me:
        raise MessageError(f"session state: peer id {v} is outside 1..{n} or this client's own id")
    if v <= prev:
        raise MessageError("session state: peer ids must be strictly ascending")
    return v


def _read_ids(r: _Reader, what: str, n: int, me: int) -> tuple[int, ...]:
    out: list[int] = []
    for _ in range(r.count(what, 4)):
        out.append(_check_peer(r.u32(what), n, me, out[-1] if out else 0))
    return tuple(out)


def _read_hood(r: _Reader, n: int) -> tuple[int, ...]:
    """A strictly ascending list of ids in 1..n (a neighbourhood or a survivor set)."""
    out: list[int] = []
    for _ in range(r.count("ids", 4)):
        v = r.u32("id")
        if not 1 <= v <= n or (out and v <= out[-1]):
            raise MessageError(f"session state: ids must be strictly ascending in 1..{n}")
        out.append(v)
    return tuple(out)


def _read_flag(r: _Reader, what: str, items: Collection[int] | None = None) -> bool:
    """A 0/1 flag; when it announces one entry per id of ``items``, those must exist (else
    two encodings would give one state)."""
    flag = r.u8(what)
    if flag not in (0, 1) or (flag and items is not None and not items):
        raise MessageError(f"session state: {what} must be 0 or 1 (and 1 only with entries), got {flag}")
    return flag == 1


def _read_text(r: _Reader, what: str) -> str | None:
    if not _read_flag(r, f"{what} flag"):
        return None
    try:
        return r.var(what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"session state: {what} is not UTF-8") from exc


def write_state(s: ClientSession) -> bytes:
    """The body of :meth:`ClientSession.export_state <secagg.client.ClientSession.export_state>`."""
    w = _Writer()
    w.fixed(_STATE_MAGIC)
    w.u8(_STATE_VERSION_ACTIVE if s._active else _STATE_VERSION)
    w.var(s._config.encode())
    w.u32(s._id)
    if s._active:
        assert s._alliance is not None
        w.fixed(bytes.fromhex(s._alliance.fingerprint))
        w.fixed(s._fp)
        w.u8(1 if s._md else 0)
        w.fixed(s._md)
    w.u8(_STATE_CODES[s._state])
    for text in (None if s.failure is None else str(s.failure), s.abort_reason):
        w.u8(0 if text is None else 1)
        if text is not None:
            w.var(text.encode("utf-8"))
    secrets = (s._mask_sk, s._enc_sk, s._seed)
    flags = sum(1 << i for i, v in enumerate(secrets) if v is not None)
    flags |= 0 if s._input is None else _HAS_INPUT
    w.u8(flags)
    for secret in secrets:
        if secret is not None:
            w.fixed(secret)
    if s._input is not None:
        w.var(_packing.pack(s._input, s._config.bits))
    w.u8(1 if s._mask_pk else 0)
    if s._mask_pk:
        w.fixed(s._mask_pk)
        w.fixed(s._enc_pk)
    order = sorted(s._neighbours)
    w.u32(len(order))
    for v in order:
        w.u32(v)
        w.fixed(s._peer_mask_keys[v])
    w.u8(1 if s._share_keys_cache else 0)
    for v in order if s._share_keys_cache else ():
        w.fixed(s._share_keys_cache[v])
    _write_ids(w, s._partners)
    w.u8(1 if s._held else 0)
    for v in s._partners if s._held else ():
        key_share, seed_share = s._held[v]
        w.var(key_share)
        w.var(seed_share)
    _write_ids(w, sorted(s._revealed_self))
    _write_ids(w, sorted(s._revealed_key))
    if s._active:
        write_active(s, w)
    return w.getvalue()


def write_active(s: ClientSession, w: _Writer) -> None:
    """Active-mode tail of :meth:`export_state`; which parts are present follows from
    the state (one encoding per state)."""
    state, order = s._state, sorted(s._neighbours)
    if state is ClientState.ADVERTISED:  # the dealt shares and the signed advertisement
        assert s._dealt is not None
        for key_share, seed_share in zip(*s._dealt, strict=True):
            w.var(key_share)
            w.var(seed_share)
        w.fixed(s._commitment)
        w.fixed(s._advert_sig)
    if state is ClientState.SHARED:  # the share roots the neighbours signed
        for v in order:
            w.fixed(s._roots[v])
    if state in _ACTIVE_GRAPH_STATES:  # the neighbourhood of each neighbour
        for v in order:
            _write_ids(w, sorted(s._peer_graph[v]))
    if state in _ACTIVE_PROOF_STATES:  # each held share's Merkle path and the root its dealer signed
        for v in s._partners:
            w.fixed(s._roots[v])
            w.u8(len(s._proofs[v]))
            w.fixed(b"".join(s._proofs[v]))
    if state is ClientState.CHECKED:  # the survivor set this client signed
        assert s._signed_set is not None
        _write_ids(w, s._signed_set)
        w.fixed(s._survivor_sig)


def read_state(s: ClientSession, r: _Reader) -> None:
    """Fill a fresh session from the rest of an :meth:`export_state` encoding; every
    check raises MessageError (the session is then discarded by :meth:`restore`)."""
    cfg, me = s._config, s._id
    code = r.u8("state")
    if code >= len(_STATES):
        raise MessageError(f"unknown session state code {code}")
    state = _STATES[code]
    failure, abort_reason = (_read_text(r, what) for what in ("failure", "abort reason"))
    flags = r.u8("secret flags")
    if flags & ~(_HAS_INPUT | 0b111):
        raise MessageError(f"unknown secret flags {flags:#x}")
    fields = (("mask private key", _keys.KEY_SIZE), ("encryption private key", _keys.KEY_SIZE),
              ("self-mask seed", SECRET_BYTES))  # fmt: skip
    mask_sk, enc_sk, seed = (r.fixed(n, x) if flags & (1 << i) else None for i, (x, n) in enumerate(fields))
    vec = None
    if flags & _HAS_INPUT:
        vec = _packing.unpack(r.var_view("input"), cfg.bits, cfg.d, copy=True)
    has_keys = _read_flag(r, "public keys flag")
    mask_pk = r.fixed(_keys.KEY_SIZE, "mask public key") if has_keys else b""
    enc_pk = r.fixed(_keys.KEY_SIZE, "encryption public key") if has_keys else b""
    peers: dict[int, bytes] = {}
    prev = 0
    for _ in range(r.count("neighbours", 4 + _keys.KEY_SIZE)):
        prev = _check_peer(r.u32("neighbour id"), cfg.n, me, prev)
        peers[prev] = r.fixed(_keys.KEY_SIZE, "neighbour mask key")
    share_keys: dict[int, bytes] = {}
    if _read_flag(r, "share keys flag", peers):
        share_keys = {v: r.fixed(SECRET_BYTES, "share key") for v in peers}
    partners = _read_ids(r, "partners", cfg.n, me)
    if not set(partners) <= peers.keys():
        raise MessageError("session state: a partner is not a neighbour")
    held: dict[int, tuple[bytes, bytes]] = {}
    if _read_flag(r, "held shares flag", partners):
        for v in partners:
            pair = (r.var("key share"), r.var("seed share"))
            for raw in pair:
                try:
                    ok = _shamir.Share.from_bytes(raw).x == me
                except SecAggError as exc:
                    raise MessageError(f"session state: malformed share held for client {v}: {exc}") from exc
                if not ok:
                    raise MessageError(f"session state: share held for client {v} is not at x = {me}")
            held[v] = pair
    revealed_self = set(_read_ids(r, "revealed self-mask shares", cfg.n, me))
    revealed_key = set(_read_ids(r, "revealed mask-key shares", cfg.n, me))
    if not (revealed_self | revealed_key) <= set(partners) or revealed_self & revealed_key:
        raise MessageError("session state: revealed shares name non-partners or a peer twice")
    # What each state holds (see the handlers): anything else is a corrupted state.
    present = frozenset(n for n, v in (("mask_sk", mask_sk), ("enc_sk", enc_sk), ("seed", seed)) if v is not None)
    if present != _SECRETS_IN[state]:
        raise MessageError(f"session state {state.value} cannot hold secrets {sorted(present)}")
    if vec is not None and state not in (ClientState.READY, ClientState.ADVERTISED, ClientState.SHARED):
        raise MessageError(f"session state {state.value} cannot hold an unmasked input")
    live = state not in _TERMINAL
    if (has_keys != (state is not ClientState.READY) and live) or (has_keys and mask_pk == enc_pk):
        raise MessageError(f"session state {state.value}: public keys missing, unexpected or equal")
    for sk, pk in ((mask_sk, mask_pk), (enc_sk, enc_pk)):
        if sk is not None and _keys.public_key(sk) != pk:
            raise MessageError("session state: a private key does not match its public key")
    if state is ClientState.CHECKED and not s._active:
        raise MessageError("session state checked exists in active mode only")
    after_roster = state in (
        ClientState.SHARED, ClientState.AWAIT_INPUT, ClientState.MASKED, ClientState.CHECKED, ClientState.DONE
    )  # fmt: skip
    after_delivery = state in (ClientState.AWAIT_INPUT, ClientState.MASKED, ClientState.CHECKED, ClientState.DONE)
    if live and (bool(peers) != after_roster or bool(partners) != after_delivery):
        raise MessageError(f"session state {state.value}: neighbours or partners missing or unexpected")
    if share_keys and state not in (ClientState.SHARED,):
        raise MessageError(f"session state {state.value} cannot hold share-encryption keys")
    if state is ClientState.SHARED and not share_keys:
        raise MessageError("session state shared: share-encryption keys missing")
    if bool(held) != (state in (ClientState.AWAIT_INPUT, ClientState.MASKED, ClientState.CHECKED)):
        raise MessageError(f"session state {state.value}: held shares missing or unexpected")
    if (revealed_self or revealed_key) and state is not ClientState.DONE:
        raise MessageError(f"session state {state.value} cannot have revealed shares")
    if (failure is not None) != (state is ClientState.FAILED) or (
        abort_reason is not None and state is not ClientState.ABORTED
    ):
        raise MessageError(f"session state {state.value}: failure or abort reason mismatch")
    # All checked: fill the fresh session.
    s._state = state
    s.failure = None if failure is None else RemoteProtocolError(failure, client=0)
    s.abort_reason = abort_reason
    s._mask_sk, s._enc_sk, s._seed = mask_sk, enc_sk, seed
    s._input = cast("RingArray | None", vec)
    s._mask_pk, s._enc_pk = mask_pk, enc_pk
    s._neighbours = frozenset(peers)
    s._peer_mask_keys = peers
    s._share_keys_cache = share_keys
    s._partners = partners
    s._held = held
    s._revealed_self, s._revealed_key = revealed_self, revealed_key


def read_active(s: ClientSession, r: _Reader) -> None:
    """Read the active-mode tail of :meth:`export_state` into a session already filled
    by :meth:`_read_state`; every check raises MessageError."""
    cfg, me, state = s._config, s._id, s._state
    order = sorted(s._neighbours)
    if state is ClientState.ADVERTISED:
        assert s._mask_sk is not None and s._seed is not None
        keys: list[bytes] = []
        seeds: list[bytes] = []
        for x in range(1, cfg.n + 1):
            pair = (r.var("dealt key share"), r.var("dealt seed share"))
            for raw in pair:
                try:
                    share = _shamir.Share.from_bytes(raw)
                except SecAggError as exc:
                    raise MessageError(f"session state: malformed dealt share at x = {x}: {exc}") from exc
                if share.x != x or share.to_bytes() != raw:
                    raise MessageError(f"session state: dealt share at x = {x} is not at that x-coordinate")
            keys.append(pair[0])
            seeds.append(pair[1])
        for shares, secret, what in ((keys, s._mask_sk, "mask key"), (seeds, s._seed, "self-mask seed")):
            try:
                ok = _shamir.combine([_shamir.Share.from_bytes(b) for b in shares[: cfg.t]], cfg.t) == secret
            except SecAggError:
                ok = False
            if not ok:
                raise MessageError(f"session state: the dealt shares do not rebuild this client's {what}")
        commitment, signature = r.fixed(32, "seed commitment"), r.fixed(64, "advertisement signature")
        if commitment != seed_commitment(cfg.round_id, me, s._seed):
            raise MessageError("session state: the seed commitment is not of this client's seed")
        leaves: list[bytes] = []
        for x, kb, sb in zip(range(1, cfg.n + 1), keys, seeds, strict=True):
            leaves.append(share_leaf(cfg.round_id, me, x, KEY_SHARE, kb))
            leaves.append(share_leaf(cfg.round_id, me, x, SEED_SHARE, sb))
        tree = ShareTree(leaves, cfg.n)
        statement = advertisement_statement(
            cfg.round_id, s._fp, s._md, me, s._mask_pk, s._enc_pk, commitment, tree.root
        )
        assert s._identity is not None
        if s._identity.sign(statement) != signature:  # Ed25519 is deterministic
            raise MessageError("session state: the signed advertisement is not this identity's signature")
        s._dealt, s._tree, s._commitment, s._advert_sig = (keys, seeds), tree, commitment, signature
    if state is ClientState.SHARED:
        s._roots = {v: r.fixed(32, "share root") for v in order}
    if state in _ACTIVE_GRAPH_STATES:
        graph: dict[int, frozenset[int]] = {}
        for v in order:
            hood = _read_hood(r, cfg.n)
            if me not in hood or v in hood or len(hood) < cfg.t:
                raise MessageError(f"session state: neighbourhood of client {v} is not one of a neighbour")
            graph[v] = frozenset(hood)
        s._peer_graph = graph
    if state in _ACTIVE_PROOF_STATES:
        depth = share_tree_depth(cfg.n)
        proofs: dict[int, tuple[bytes, ...]] = {}
        roots: dict[int, bytes] = {}
        for v in s._partners:
            roots[v] = r.fixed(32, "share root")
            if r.u8("proof length") != depth:
                raise MessageError(f"session state: the share proof from client {v} is not {depth} hashes long")
            raw = r.fixed(32 * depth, "share proof")
            proofs[v] = proof = tuple(raw[i : i + 32] for i in range(0, len(raw), 32))
            # A held share is revealed with this path: a corrupted one would get this
            # honest client blamed (with its own signature), so check it here.
            key_share, seed_share = s._held[v]
            key_leaf = share_leaf(cfg.round_id, v, me, KEY_SHARE, key_share)
            if proof[0] != share_leaf(cfg.round_id, v, me, SEED_SHARE, seed_share) or not verify_share_proof(
                roots[v], key_leaf, me, KEY_SHARE, proof, cfg.n
            ):
                raise MessageError(f"session state: the shares held from client {v} are not the ones it signed")
        s._proofs, s._roots = proofs, roots
    if state is ClientState.CHECKED:
        signed = _read_hood(r, cfg.n)
        sig = r.fixed(64, "survivor-set signature")
        if me not in signed:
            raise MessageError("session state: the signed survivor set omits this client")
        assert s._identity is not None
        if s._identity.sign(survivor_statement(cfg.round_id, s._fp, s._md, me, signed)) != sig:
            raise MessageError("session state: the survivor-set signature is not this identity's")
        s._signed_set, s._survivor_sig = signed, sig


def restore(
    cls: type[ClientSession],
    data: bytes,
    rng: RngLike,
    *,
    masker: Masker | None,
    identity: IdentityKey | None,
    alliance: Alliance | None,
) -> ClientSession:
    """The body of :meth:`ClientSession.restore <secagg.client.ClientSession.restore>`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"session state must be bytes, got {type(data).__name__}")
    if isinstance(data, memoryview) and not data.c_contiguous:
        raise MessageError("session state memoryview is not contiguous; pass bytes(view)")
    buf = memoryview(data).cast("B")
    if bytes(buf[: len(_STATE_MAGIC)]) != _STATE_MAGIC:
        raise MessageError("not a secagg client session state (bad magic)")
    r = _Reader(buf, len(_STATE_MAGIC))
    version = r.u8("state version")
    if version not in (_STATE_VERSION, _STATE_VERSION_ACTIVE):
        raise MessageError(
            f"unsupported session state version {version} (this library reads {_STATE_VERSION} and "
            f"{_STATE_VERSION_ACTIVE})"
        )
    active = version == _STATE_VERSION_ACTIVE
    config = decode_message(r.var("config"), RoundConfig)
    assert isinstance(config, RoundConfig)
    if config.active != active:
        mode = "an active" if config.active else "a semi-honest"
        raise MessageError(f"session state version {version} cannot hold {mode} config")
    cid = r.u32("client id")
    extra: dict[str, Any] = {}
    if active:
        fingerprint = r.fixed(32, "alliance fingerprint").hex()
        spec_fp = r.fixed(32, "spec fingerprint").hex()
        model = r.fixed(32, "model digest").hex() if _read_flag(r, "model digest flag") else None
        if not isinstance(identity, IdentityKey) or not isinstance(alliance, Alliance):
            raise SecAggValueError(
                "an active session is restored with its identity= (from the client's own key file; the state "
                "never holds it) and the alliance="
            )
        if alliance.fingerprint != fingerprint:
            raise SecAggValueError("the session was created with another alliance; restore it with that one")
        if alliance.get(cid) != identity.public_bytes():
            raise SecAggValueError(f"identity is not the alliance's key of client {cid}")
        extra = {"identity": identity, "alliance": alliance, "spec_fingerprint": spec_fp, "model_digest": model}
    elif identity is not None or alliance is not None:
        raise UnsafeParametersError(
            "a semi-honest session state was given an identity; refusing the downgrade (run the round in "
            "active mode)"
        )
    try:
        session = cls(config, cid, rng, masker=masker, **extra)
    except SecAggError as exc:
        raise MessageError(f"session state holds an unusable config or client id: {exc}") from exc
    read_state(session, r)
    if active:
        read_active(session, r)
    r.end()
    return session
