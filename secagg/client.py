"""The client side of SecAgg+ as a sans-I/O state machine.

A :class:`ClientSession` consumes server messages and returns the message to send; it
never touches a socket, a thread or a clock.  One table (:data:`CLIENT_TRANSITIONS`)
says which message is legal in which state; anything else raises
:class:`~secagg.errors.RemoteProtocolError` and moves the session to the sticky
:attr:`ClientState.FAILED` state, after which it wipes its secrets and answers nothing.

Typical use (the transport is yours)::

    client = ClientSession(config, client_id)
    send(client.start())                                  # AdvertiseKeys
    send(client.receive(roster))                          # ShareKeys
    reply = client.receive(delivery)                      # None: input not given yet
    send(client.provide_input(vector))                    # MaskedInput (train in between)
    send(client.receive(unmask_request))                  # UnmaskShares

``client.receive(delivery, input=vector)`` does the last two steps at once, and
:meth:`ClientSession.provide_input` may also be called early (before the delivery).

Honest-client checks made locally (defence in depth against a curious or lying server):
unsafe parameters are refused at construction (t > (k + c) / 2, t <= expected surviving
neighbours, cohort floor >= c + 2); the roster must contain this client's own keys, no
duplicated key, at least ``min_clients`` clients and at least t neighbours; a delivery
must come from neighbours only, at least t of them, each ciphertext must authenticate
(round id, sender, receiver and stage are in the associated data); an unmasking request
must not list a peer as both surviving and dropped, must name only neighbours that
shared keys, must leave at least t surviving neighbours, and the client never reveals
both the self-mask share and the mask-key share of one peer during the session.

Active mode (``config.active``; Bonawitz et al. 2017 active variant, Bell et al. 2020):
the constructor also takes this client's :class:`~secagg.identity.IdentityKey`, the
:class:`~secagg.identity.Alliance`, the round-spec fingerprint and the digest of the model
it trains on::

    client = ClientSession(spec.protocol, client_id, identity=key, alliance=alliance,
                           spec_fingerprint=spec.fingerprint, model_digest=digest)

It then deals Shamir shares of both secrets at every x-coordinate before advertising,
signs its advertisement (keys, a commitment to its self-mask seed and the Merkle root of
the dealt shares), verifies the signature of every neighbour's roster entry against the
alliance before using its keys, checks every received share's Merkle path, signs the
survivor set in the consistency round, and reveals shares only after verifying, for
every peer it reveals about, at least t signatures of the identical survivor set from
that peer's neighbours (raising :class:`~secagg.errors.EquivocationError`, with both
signed statements, when the server shows it a validly signed different set).  A client
with an identity refuses a semi-honest config (no downgrade).  Active sessions are exported
like semi-honest ones (:meth:`ClientSession.export_state`, state version 2); the identity
key is never part of the state: pass it to :meth:`ClientSession.restore` with the alliance.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from enum import Enum
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from secagg import graph as _graph
from secagg import packing as _packing
from secagg import shamir as _shamir
from secagg.crypto import aead as _aead
from secagg.crypto import keys as _keys
from secagg.crypto.prg import Masker
from secagg.errors import (
    EquivocationError,
    LocalProtocolError,
    MessageError,
    RemoteProtocolError,
    SecAggError,
    SecAggTypeError,
    SecAggValueError,
    SecurityViolation,
    SignatureError,
    UnsafeParametersError,
)
from secagg.identity import (
    KEY_SHARE,
    SEED_SHARE,
    Alliance,
    IdentityKey,
    ShareTree,
    SignedStatement,
    advertisement_statement,
    reveal_statement,
    seed_commitment,
    share_leaf,
    survivor_statement,
    survivor_statement_parts,
    verify_share_proof,
)
from secagg.messages import (
    Abort,
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencyRequest,
    EncryptedShare,
    MaskedInput,
    Message,
    RevealedShare,
    Roster,
    RoundConfig,
    ShareDelivery,
    ShareKeys,
    SharePayload,
    Stage,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
)
from secagg.rand import RandomSource, RngLike, as_random_source
from secagg.ring import ring_dtype

__all__ = [
    "CLIENT_TRANSITIONS",
    "ClientSession",
    "ClientState",
    "check_config",
    "check_input",
    "graph_seed",
    "mask_sign",
    "roster_graph",
]

RingArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
SECRET_BYTES = 32
_GRAPH_DOMAIN = b"secagg/neighbour-graph/v1"


class ClientState(str, Enum):
    """States of a :class:`ClientSession` (in order; the last three are terminal)."""

    READY = "ready"  # constructed, keys not advertised yet
    ADVERTISED = "advertised"  # sent AdvertiseKeys, waiting for the Roster
    SHARED = "shared"  # sent ShareKeys, waiting for the ShareDelivery
    AWAIT_INPUT = "await_input"  # delivery processed, waiting for provide_input()
    MASKED = "masked"  # sent MaskedInput, waiting for the UnmaskRequest (active: ConsistencyRequest)
    DONE = "done"  # sent UnmaskShares; the round is over for this client
    ABORTED = "aborted"  # the server announced an abort
    FAILED = "failed"  # an illegal or unsafe message was refused (sticky)
    CHECKED = "checked"  # active mode: signed the survivor set, waiting for the UnmaskRequest


#: The only legal (state, message class) pairs of a client and the handler for each.
#: :class:`~secagg.messages.Abort` is legal in every non-terminal state.
CLIENT_TRANSITIONS: dict[tuple[ClientState, type[Message]], str] = {
    (ClientState.ADVERTISED, Roster): "_on_roster",
    (ClientState.SHARED, ShareDelivery): "_on_delivery",
    (ClientState.MASKED, UnmaskRequest): "_on_unmask",
    (ClientState.MASKED, ConsistencyRequest): "_on_consistency",
    (ClientState.CHECKED, UnmaskRequest): "_on_unmask",
    **{
        (s, Abort): "_on_abort"
        for s in (
            ClientState.READY,
            ClientState.ADVERTISED,
            ClientState.SHARED,
            ClientState.AWAIT_INPUT,
            ClientState.MASKED,
            ClientState.CHECKED,
            ClientState.DONE,  # the server may still abort after this client revealed its shares
        )
    },
}

_TERMINAL = frozenset({ClientState.DONE, ClientState.ABORTED, ClientState.FAILED})


# ----------------------------------------------------------------------------- shared helpers


def check_config(config: RoundConfig) -> None:
    """Refuse unsafe round parameters (what an honest client checks before taking part).

    Raises:
        SecAggTypeError: ``config`` is not a :class:`~secagg.messages.RoundConfig`.
        UnsafeParametersError: t <= (k + c) / 2 (k the largest neighbourhood, c the
            bound on colluding neighbours), t above the expected surviving neighbours,
            a cohort floor below c + 2 (c the global number of colluders), or a bound on
            colluding neighbours below what pigeonhole forces: with C colluders and a
            roster of at least ``n - D`` clients, a neighbourhood of k holds at least
            ``min(C, k - (n - D - 1 - C))`` of them (all C in the complete graph).
    """
    if not isinstance(config, RoundConfig):
        raise SecAggTypeError(f"config must be a RoundConfig, got {type(config).__name__}")
    if config.n >= _shamir.PRIME:
        raise SecAggValueError(f"n must be below {_shamir.PRIME} (client ids are Shamir x-coordinates)")
    if config.k == 1 and config.n > 2:
        raise SecAggValueError("k must be >= 2 (or 0 for the complete graph)")
    deg = config.max_degree
    floor = config.roster_floor
    deg_at_floor = min(deg, floor - 1)
    forced = min(config.colluders, deg, max(0, deg_at_floor - (floor - 1 - config.colluders)))
    if config.complete:
        forced = min(config.colluders, deg)
    if config.corrupt_neighbours < forced:
        raise UnsafeParametersError(
            f"corrupt_neighbours={config.corrupt_neighbours} is below the {forced} colluders every neighbourhood of "
            f"{deg} must hold when {config.colluders} collude and the roster may shrink to {config.roster_floor}; "
            "the threshold would be checked against too few colluders"
        )
    _graph.check_threshold(deg, config.t, min(config.corrupt_neighbours, deg), min(config.expected_survivors, deg))
    if config.min_clients < config.colluders + 2:
        raise UnsafeParametersError(
            f"min_clients={config.min_clients} is below colluders + 2 = {config.colluders + 2}: a sum over that "
            "few inputs can isolate one honest input; raise min_clients"
        )


def graph_seed(roster: Roster) -> bytes:
    """Public seed of the neighbour graph: SHA-256 over a domain label and the canonical
    encoding of the roster (round id and the sorted advertised keys)."""
    return hashlib.sha256(_GRAPH_DOMAIN + roster.encode()).digest()


def roster_graph(config: RoundConfig, roster: Roster) -> dict[int, frozenset[int]]:
    """The neighbour graph over the clients in ``roster`` (client id -> neighbour ids),
    recomputable by every client from the roster alone."""
    k = None if config.complete else config.k
    return _graph.neighbour_graph(list(roster.ids()), k, graph_seed(roster))


def _local_graph(config: RoundConfig, roster: Roster, me: int) -> dict[int, frozenset[int]]:
    """Active mode: the neighbourhoods of ``me`` and of each of its neighbours in
    :func:`roster_graph` (the same sets), without building the whole graph: one ring order,
    then 1 + k ring neighbourhoods instead of n."""
    ids = list(roster.ids())
    if config.complete or config.k >= len(ids) - 1:
        graph = roster_graph(config, roster)
        return {v: graph[v] for v in (me, *graph[me])}
    order = _graph.permutation(ids, graph_seed(roster))
    pos = {cid: i for i, cid in enumerate(order)}
    mine = _graph._ring_neighbours(order, pos[me], config.k)
    out = {v: _graph._ring_neighbours(order, pos[v], config.k) for v in mine}
    out[me] = mine
    return out


def mask_sign(me: int, peer: int) -> int:
    """Sign of the pairwise mask PRG(s_{me,peer}) in ``me``'s masked input: +1 if
    me < peer else -1, so each pair's masks cancel in the sum."""
    return 1 if me < peer else -1


def check_input(vector: object, d: int, bits: int, *, copy: bool = True) -> RingArray:
    """Validate one client input and return a fresh copy in ``ring_dtype(bits)``.

    The input must be a 1-D integer array-like of length ``d`` with values in [0, 2^bits).
    With ``copy=False`` only validate (the input itself is returned, any integer dtype).

    Raises:
        SecAggTypeError: not an integer array.
        SecAggValueError: wrong shape or a value out of range.
    """
    arr = np.asarray(vector)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise SecAggTypeError(f"an input must be an integer array, got dtype {arr.dtype}; encode floats first")
    if arr.shape != (d,):
        raise SecAggValueError(f"an input must have shape ({d},), got {arr.shape}")
    dt = ring_dtype(bits)
    if d:
        signed = np.issubdtype(arr.dtype, np.signedinteger)
        if signed and int(arr.min()) < 0:
            raise SecAggValueError(f"input values must be in [0, 2**{bits}); found a negative value")
        if arr.dtype.itemsize * 8 - (1 if signed else 0) > bits and int(arr.max()) >= 1 << bits:
            raise SecAggValueError(f"input values must be in [0, 2**{bits}); found {int(arr.max())}")
    if not copy:
        return cast(RingArray, arr)
    return cast(RingArray, np.array(arr, dtype=dt, copy=True))


def _packed(y: RingArray, bits: int) -> bytes | memoryview:
    """Wire form of a masked vector (:func:`secagg.packing.pack`).  For 32 and 64 bits the
    packed form is the little-endian array itself (see :mod:`secagg.packing`), so on a
    little-endian machine it is a zero-copy view of ``y``."""
    widths, rest = _packing.plane_widths(bits)
    if sys.byteorder == "little" and rest == 0 and widths == (8 * y.dtype.itemsize,):
        return y.data.cast("B")
    return _packing.pack(y, bits)


def _hex_digest(name: str, value: object) -> bytes:
    """A SHA-256 hex digest (64 lowercase hex characters) as 32 bytes."""
    if not isinstance(value, str) or len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value):
        raise SecAggValueError(f"{name} must be a SHA-256 hex digest (64 lowercase hex characters)")
    return bytes.fromhex(value)


def _wrap(exc: SecAggError, what: str) -> RemoteProtocolError:
    """A fault found in a server message, as a :class:`RemoteProtocolError` blaming the server."""
    if isinstance(exc, RemoteProtocolError):
        return exc
    err = RemoteProtocolError(f"{what}: {exc}", client=0)
    err.__cause__ = exc
    return err


# ----------------------------------------------------------------------------- the session


class ClientSession:
    """One client's side of one round.

    Args:
        config: the round's public parameters (checked with :func:`check_config`).
        client_id: this client's id, 1 <= client_id <= config.n.
        rng: randomness for the two X25519 key pairs, the self-mask seed, the Shamir
            polynomials and the AEAD nonces (see :mod:`secagg.rand`); a seed replays
            the exact transcript.  ``None`` is cryptographically secure.
        masker: optional :class:`~secagg.crypto.prg.Masker` of matching ``d``/``bits``
            to reuse its buffers across sessions run in one thread.
        identity: active mode: this client's :class:`~secagg.identity.IdentityKey` (its
            public key must be the alliance's entry for ``client_id``).
        alliance: active mode: the :class:`~secagg.identity.Alliance`.
        spec_fingerprint: active mode: :attr:`secagg.spec.RoundSpec.fingerprint` (hex) of
            the spec this client received; it signs it, so neighbours given another spec
            refuse this client's keys.
        model_digest: active mode: the digest (hex, :func:`secagg.spec.model_digest`) of
            the global model this client trains on, or None when the round aggregates no
            model; signed the same way (a server cannot send one client a crafted model).

    Raises:
        UnsafeParametersError: the configuration is unsafe for an honest client, or is
            semi-honest while this client was given an identity (no downgrade).
        SecAggValueError: an active config without identity, alliance or fingerprint, or
            an identity that is not the alliance's key of ``client_id``.
    """

    def __init__(
        self,
        config: RoundConfig,
        client_id: int,
        rng: RngLike = None,
        *,
        masker: Masker | None = None,
        identity: IdentityKey | None = None,
        alliance: Alliance | None = None,
        spec_fingerprint: str | None = None,
        model_digest: str | None = None,
    ) -> None:
        check_config(config)
        if isinstance(client_id, bool) or not isinstance(client_id, int) or not 1 <= client_id <= config.n:
            raise SecAggValueError(f"client_id must be an int in [1, {config.n}], got {client_id!r}")
        self._active = config.active
        self._identity = identity
        self._alliance = alliance
        self._fp = b""
        self._md = b""
        if config.active:
            if not isinstance(identity, IdentityKey) or not isinstance(alliance, Alliance):
                raise SecAggValueError("an active round needs this client's identity= and the alliance=")
            if alliance.get(client_id) != identity.public_bytes():
                raise SecAggValueError(f"identity is not the alliance's key of client {client_id}")
            self._fp = _hex_digest("spec_fingerprint", spec_fingerprint)
            self._md = b"" if model_digest is None else _hex_digest("model_digest", model_digest)
        elif identity is not None or alliance is not None:
            raise UnsafeParametersError(
                "this client has an identity but the round is semi-honest (config.active is False); refusing the "
                "downgrade: run the round in active mode"
            )
        self._config = config
        self._id = client_id
        self._rng: RandomSource = as_random_source(rng)
        self._masker = masker
        self._state = ClientState.READY
        self.failure: SecAggError | None = None
        self.abort_reason: str | None = None
        # secrets
        self._mask_sk: bytes | None = None
        self._enc_sk: bytes | None = None
        self._seed: bytes | None = None
        self._input: npt.NDArray[np.uint32] | npt.NDArray[np.uint64] | None = None
        # public state
        self._mask_pk = b""
        self._enc_pk = b""
        self._neighbours: frozenset[int] = frozenset()
        self._peer_mask_keys: dict[int, bytes] = {}
        self._share_keys_cache: dict[int, bytes] = {}
        self._partners: tuple[int, ...] = ()
        self._held: dict[int, tuple[bytes, bytes]] = {}  # peer -> (key share, seed share)
        self._revealed_self: set[int] = set()
        self._revealed_key: set[int] = set()
        # active mode
        self._dealt: tuple[list[bytes], list[bytes]] | None = None  # key / seed shares at x = 1..n
        self._tree: ShareTree | None = None
        self._commitment = b""
        self._advert_sig = b""
        self._roots: dict[int, bytes] = {}
        self._peer_graph: dict[int, frozenset[int]] = {}
        self._proofs: dict[int, tuple[bytes, ...]] = {}  # peer -> key-share proof (held shares)
        self._signed_set: tuple[int, ...] | None = None
        self._survivor_sig = b""

    # -- read-only views ---------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """Current state."""
        return self._state

    @property
    def client_id(self) -> int:
        """This client's id."""
        return self._id

    @property
    def config(self) -> RoundConfig:
        """The round's parameters."""
        return self._config

    @property
    def neighbours(self) -> frozenset[int]:
        """Neighbour ids in the round's graph (empty before the roster)."""
        return self._neighbours

    @property
    def partners(self) -> tuple[int, ...]:
        """Neighbours that shared keys with this client (it masks against them), ascending."""
        return self._partners

    @property
    def revealed(self) -> tuple[frozenset[int], frozenset[int]]:
        """(peers whose self-mask share was revealed, peers whose mask-key share was revealed)."""
        return frozenset(self._revealed_self), frozenset(self._revealed_key)

    @property
    def stage(self) -> Stage | None:
        """The stage whose message this client sends next (None when terminal)."""
        return {
            ClientState.READY: Stage.ADVERTISE_KEYS,
            ClientState.ADVERTISED: Stage.SHARE_KEYS,
            ClientState.SHARED: Stage.MASKED_INPUT,
            ClientState.AWAIT_INPUT: Stage.MASKED_INPUT,
            ClientState.MASKED: Stage.CONSISTENCY if self._active else Stage.UNMASKING,
            ClientState.CHECKED: Stage.UNMASKING,
        }.get(self._state)

    @property
    def active(self) -> bool:
        """Whether this session runs the active-mode protocol."""
        return self._active

    # -- driving the session ----------------------------------------------------------

    def start(self) -> AdvertiseKeys:
        """Generate the two X25519 key pairs and the self-mask seed; return stage 1's message.

        Raises:
            LocalProtocolError: not in state READY (nothing changes).
        """
        if self._state is not ClientState.READY:
            raise LocalProtocolError(f"start() is only legal once, in state READY (not {self._state.value})")
        cfg, me = self._config, self._id
        mask_sk = _keys.generate_private_key(self._rng)
        enc_sk = _keys.generate_private_key(self._rng)
        seed = self._rng.bytes(SECRET_BYTES)
        mask_pk, enc_pk = _keys.public_key(mask_sk), _keys.public_key(enc_sk)
        if not self._active:
            self._seed, self._mask_sk, self._enc_sk = seed, mask_sk, enc_sk
            self._mask_pk, self._enc_pk = mask_pk, enc_pk
            self._state = ClientState.ADVERTISED
            return AdvertiseKeys(cfg.round_id, me, mask_pk, enc_pk)
        # Active: deal both secrets at every x-coordinate now (the neighbours are not known
        # yet) and sign the root of the share tree with the keys and the seed commitment.
        xs = [x for x in range(1, cfg.n + 1)]
        key_shares, seed_shares = _shamir.split_many([mask_sk, seed], cfg.t, xs, rng=self._rng)
        keys_b = [sh.to_bytes() for sh in key_shares]
        seeds_b = [sh.to_bytes() for sh in seed_shares]
        leaves: list[bytes] = []
        for x, kb, sb in zip(xs, keys_b, seeds_b, strict=True):
            leaves.append(share_leaf(cfg.round_id, me, x, KEY_SHARE, kb))
            leaves.append(share_leaf(cfg.round_id, me, x, SEED_SHARE, sb))
        tree = ShareTree(leaves, cfg.n)
        commitment = seed_commitment(cfg.round_id, me, seed)
        fp, md = self._fp, self._md
        statement = advertisement_statement(cfg.round_id, fp, md, me, mask_pk, enc_pk, commitment, tree.root)
        assert self._identity is not None
        signature = self._identity.sign(statement)
        self._seed, self._mask_sk, self._enc_sk = seed, mask_sk, enc_sk
        self._mask_pk, self._enc_pk = mask_pk, enc_pk
        self._dealt, self._tree, self._commitment, self._advert_sig = (keys_b, seeds_b), tree, commitment, signature
        self._state = ClientState.ADVERTISED
        return AdvertiseKeys(cfg.round_id, me, mask_pk, enc_pk, commitment, tree.root, signature)

    def receive(self, message: Message | bytes | bytearray | memoryview, *, input: object = None) -> Message | None:
        """Consume one server message; return the reply to send (or None).

        Args:
            message: a decoded message or its bytes.
            input: optionally, this client's input vector (1-D, length d, integers in
                [0, 2^bits)) to mask when ``message`` is the share delivery.

        Returns:
            :class:`~secagg.messages.ShareKeys` for a roster,
            :class:`~secagg.messages.MaskedInput` for a delivery (None if no input was
            provided yet: call :meth:`provide_input`),
            :class:`~secagg.messages.UnmaskShares` for an unmasking request, None for
            an abort.

        Raises:
            RemoteProtocolError: the message is malformed, from another round, addressed
                to another client, or illegal in the current state (``client == 0``: the
                server's fault); the session fails.
            SecurityViolation: an honest client must refuse the message; the session fails.
            LocalProtocolError: the session has already failed (nothing changes).
            SecAggValueError, SecAggTypeError: ``input`` is invalid (the session is unchanged).
        """
        if self._state is ClientState.FAILED:
            raise LocalProtocolError(f"client {self._id}: session has failed ({self.failure}); start a new round")
        if isinstance(message, (bytes, bytearray, memoryview)):
            try:
                message = decode_message(message)
            except MessageError as exc:
                raise self._fail(_wrap(exc, f"client {self._id}: undecodable message")) from exc
        if not isinstance(message, Message):
            raise SecAggTypeError(f"receive() needs a Message or bytes, got {type(message).__name__}")
        handler = CLIENT_TRANSITIONS.get((self._state, type(message)))
        if handler is None:
            raise self._fail(
                RemoteProtocolError(
                    f"client {self._id}: {type(message).__name__} is illegal in state {self._state.value}", client=0
                )
            )
        if message.round_id != self._config.round_id:
            raise self._fail(RemoteProtocolError(f"client {self._id}: message from another round; rejected", client=0))
        vec = None
        if input is not None:
            if not isinstance(message, ShareDelivery):
                raise SecAggValueError("input= is only accepted with the ShareDelivery message")
            if self._input is not None:
                raise SecAggValueError("an input was already provided to this session")
            vec = check_input(input, self._config.d, self._config.bits)
        try:
            fn: Callable[[Any], Message | None] = getattr(self, handler)
            if vec is not None:
                self._input = vec
            return fn(message)
        except SecAggError as exc:  # everything a handler raises comes from the message's content
            raise self._fail(_wrap(exc, f"client {self._id}")) from exc

    def provide_input(self, vector: object) -> MaskedInput | None:
        """Give this client's input (1-D, length d, integers in [0, 2^bits)).

        In state AWAIT_INPUT this masks it and returns the
        :class:`~secagg.messages.MaskedInput` to send; before the delivery it stores a
        copy and returns None (the delivery then answers with the masked input).

        Raises:
            SecAggValueError, SecAggTypeError: bad vector (the session is unchanged).
            LocalProtocolError: an input was already given, or the round is past this
                stage (nothing changes).
        """
        if self._state in (ClientState.MASKED, *_TERMINAL) or self._input is not None:
            if self._state is ClientState.FAILED:
                raise LocalProtocolError(f"client {self._id}: session has failed; start a new round")
            raise LocalProtocolError(f"client {self._id}: input given twice or too late (state {self._state.value})")
        vec = check_input(vector, self._config.d, self._config.bits)
        self._input = vec
        if self._state is ClientState.AWAIT_INPUT:
            return self._mask()
        return None

    # -- handlers -------------------------------------------------------------------------

    def _on_roster(self, roster: Roster) -> ShareKeys:
        cfg, me = self._config, self._id
        ids = roster.ids()
        mine = [e for e in roster.clients if e.client_id == me]
        if not mine or mine[0].mask_key != self._mask_pk or mine[0].enc_key != self._enc_pk:
            raise SecurityViolation(f"client {me}: roster does not carry this client's own keys")
        if roster.signed != self._active:
            raise SecurityViolation(f"client {me}: roster is {'' if roster.signed else 'not '}signed, the round is not")
        if self._active and (mine[0].commitment, mine[0].share_root, mine[0].signature) != (
            self._commitment,
            self._tree.root if self._tree is not None else b"",
            self._advert_sig,
        ):
            raise SecurityViolation(f"client {me}: roster does not carry this client's own signed advertisement")
        if len(ids) < cfg.roster_floor:
            raise SecurityViolation(
                f"client {me}: roster of {len(ids)} clients is below the floor n - D = {cfg.roster_floor}; a server "
                "that shrinks the roster can surround a client with colluders"
            )
        if ids[-1] > cfg.n:
            raise RemoteProtocolError(f"client {me}: roster names client {ids[-1]} outside 1..{cfg.n}")
        masks = {e.mask_key for e in roster.clients}
        encs = {e.enc_key for e in roster.clients}
        if len(masks) != len(ids) or len(encs) != len(ids):
            raise SecurityViolation(f"client {me}: roster repeats a public key")
        if len(ids) < cfg.min_clients:
            raise SecurityViolation(f"client {me}: roster of {len(ids)} clients is below min_clients={cfg.min_clients}")
        peer_graph: dict[int, frozenset[int]] = {}
        if self._active:
            peer_graph = _local_graph(cfg, roster, me)
            neighbours = peer_graph.pop(me)
        else:
            neighbours = _graph.neighbours(ids, None if cfg.complete else cfg.k, graph_seed(roster), me)
        if len(neighbours) < cfg.t:
            raise SecurityViolation(
                f"client {me}: {len(neighbours)} neighbours cannot hold a {cfg.t}-threshold sharing"
            )
        entries = {e.client_id: e for e in roster.clients}
        assert self._enc_sk is not None and self._mask_sk is not None and self._seed is not None
        order = sorted(neighbours)
        if self._active:
            # Verify every neighbour's signed advertisement before using any of its keys.
            assert self._alliance is not None
            for v in order:
                e = entries[v]
                st = advertisement_statement(
                    cfg.round_id, self._fp, self._md, v, e.mask_key, e.enc_key, e.commitment, e.share_root
                )
                try:
                    self._alliance.verify(v, st, e.signature)
                except SignatureError as exc:
                    raise SecurityViolation(
                        f"client {me}: roster entry of client {v} is not signed by its alliance key for this round, "
                        f"spec and model ({exc}); refusing its keys"
                    ) from exc
        shared = _keys.agree_many(self._enc_sk, [entries[v].enc_key for v in order])
        share_keys = {
            v: _keys.derive(z, _keys.LABEL_SHARE, cfg.round_id, me, v) for v, z in zip(order, shared, strict=True)
        }
        if self._active:
            assert self._dealt is not None and self._tree is not None
            plain = [
                SharePayload(
                    cfg.round_id, me, v, self._dealt[0][v - 1], self._dealt[1][v - 1], self._tree.proof(v, KEY_SHARE)
                )
                for v in order
            ]
        else:
            key_shares, seed_shares = _shamir.split_many([self._mask_sk, self._seed], cfg.t, order, rng=self._rng)
            plain = [
                SharePayload(cfg.round_id, me, v, ks.to_bytes(), ss.to_bytes())
                for v, ks, ss in zip(order, key_shares, seed_shares, strict=True)
            ]
        out = []
        for v, sp in zip(order, plain, strict=True):
            payload = sp.encode()
            ct = _aead.encrypt(
                share_keys[v],
                payload,
                sender=me,
                receiver=v,
                round_id=cfg.round_id,
                stage=Stage.SHARE_KEYS.value,
                rng=self._rng,
            )
            out.append(EncryptedShare(v, ct))
        self._neighbours = frozenset(neighbours)
        self._peer_mask_keys = {v: entries[v].mask_key for v in order}
        self._share_keys_cache = share_keys
        if self._active:
            self._roots = {v: entries[v].share_root for v in order}
            self._peer_graph = peer_graph
            self._dealt, self._tree = None, None  # the shares are out
        self._enc_sk = None  # no longer needed
        self._state = ClientState.SHARED
        return ShareKeys(cfg.round_id, me, tuple(out))

    def _on_delivery(self, delivery: ShareDelivery) -> MaskedInput | None:
        cfg, me = self._config, self._id
        if delivery.receiver != me:
            raise RemoteProtocolError(f"client {me}: delivery addressed to client {delivery.receiver}")
        senders = delivery.senders()
        strangers = [v for v in senders if v not in self._neighbours]
        if strangers:
            raise SecurityViolation(f"client {me}: delivery carries shares from non-neighbours {strangers}")
        if len(senders) < cfg.t:
            raise SecurityViolation(
                f"client {me}: only {len(senders)} neighbours shared keys, fewer than t={cfg.t}; "
                "an honest server excludes such a client"
            )
        held: dict[int, tuple[bytes, bytes]] = {}
        proofs: dict[int, tuple[bytes, ...]] = {}
        for item in delivery.shares:
            v = item.peer
            plain = _aead.decrypt(
                self._share_keys_cache[v],
                item.ciphertext,
                sender=v,
                receiver=me,
                round_id=cfg.round_id,
                stage=Stage.SHARE_KEYS.value,
            )
            payload = decode_message(plain, SharePayload)
            assert isinstance(payload, SharePayload)
            if payload.round_id != cfg.round_id or payload.sender != v or payload.receiver != me:
                raise RemoteProtocolError(
                    f"client {me}: share bundle from {v} names the wrong round, sender or receiver"
                )
            for raw in (payload.key_share, payload.seed_share):
                if _shamir.Share.from_bytes(raw).x != me:
                    raise RemoteProtocolError(f"client {me}: share from {v} is not at this client's x-coordinate")
            if self._active:
                key_leaf = share_leaf(cfg.round_id, v, me, KEY_SHARE, payload.key_share)
                seed_leaf = share_leaf(cfg.round_id, v, me, SEED_SHARE, payload.seed_share)
                root, proof = self._roots[v], payload.proof
                # The two leaves are siblings (x's key share at 2(x-1), its seed share next):
                # the key share's path starts with the seed share's leaf, so one path checks both.
                if not (
                    proof and proof[0] == seed_leaf and verify_share_proof(root, key_leaf, me, KEY_SHARE, proof, cfg.n)
                ):
                    raise SecurityViolation(f"client {me}: shares from {v} are not the ones {v} signed")
                proofs[v] = proof
            elif payload.proof:
                raise RemoteProtocolError(f"client {me}: share proof in a semi-honest round")
            held[v] = (payload.key_share, payload.seed_share)
        self._held = held
        self._proofs = proofs
        self._partners = senders
        self._share_keys_cache = {}
        if self._input is None:
            self._state = ClientState.AWAIT_INPUT
            return None
        return self._mask()

    def _mask(self) -> MaskedInput:
        cfg, me = self._config, self._id
        y = self._input
        assert y is not None and self._seed is not None and self._mask_sk is not None
        masker = self._masker if self._masker is not None else Masker(cfg.d, cfg.bits)
        shared = _keys.agree_many(self._mask_sk, [self._peer_mask_keys[v] for v in self._partners])
        # Self mask plus every pairwise mask, applied chunk-outer in one pass over y.
        masks = [(self._seed, 1)]
        masks += [
            (_keys.derive(z, _keys.LABEL_MASK, cfg.round_id, me, v), mask_sign(me, v))
            for v, z in zip(self._partners, shared, strict=True)
        ]
        masker.add_many(y, masks)
        payload = _packed(y, cfg.bits)
        # Forget everything that could unmask this input.
        self._input = None
        self._seed = None
        self._mask_sk = None
        self._state = ClientState.MASKED
        return MaskedInput(cfg.round_id, me, payload)

    def _on_consistency(self, req: ConsistencyRequest) -> ConsistencyCheck:
        cfg, me = self._config, self._id
        if not self._active:
            raise RemoteProtocolError(f"client {me}: a consistency request in a semi-honest round")
        if req.receiver != me:
            raise RemoteProtocolError(f"client {me}: consistency request addressed to client {req.receiver}")
        survivors = req.survivors
        if me not in survivors:
            raise SecurityViolation(f"client {me}: survivor set omits this client, whose masked input was sent")
        if survivors[-1] > cfg.n:
            raise RemoteProtocolError(f"client {me}: survivor set names client {survivors[-1]} outside 1..{cfg.n}")
        if len(survivors) < cfg.min_clients:
            raise SecurityViolation(
                f"client {me}: survivor set of {len(survivors)} is below min_clients={cfg.min_clients}; refusing"
            )
        alive = set(self._partners) & set(survivors)
        if len(alive) < cfg.t:
            raise SecurityViolation(
                f"client {me}: survivor set leaves {len(alive)} surviving neighbours, fewer than t={cfg.t}; refusing"
            )
        assert self._identity is not None
        sig = self._identity.sign(survivor_statement(cfg.round_id, self._fp, self._md, me, survivors))
        self._signed_set, self._survivor_sig = survivors, sig
        self._state = ClientState.CHECKED
        return ConsistencyCheck(cfg.round_id, me, sig)

    def _check_consistency(self, req: UnmaskRequest) -> None:
        """Active mode: the request's survivor set is the one this client signed, its
        lists follow from that set, and every peer it reveals about has at least t
        neighbours whose signatures of the identical set verify (so no two survivor sets
        can each gather t signatures within one neighbourhood: an honest neighbour signs
        one set, and t > (k + corrupt neighbours) / 2)."""
        cfg, me = self._config, self._id
        alliance, mine = self._alliance, self._signed_set
        assert alliance is not None and mine is not None
        told = req.survivor_set
        sigs = {s.signer: s.signature for s in req.signatures}
        if told != mine:
            mine_st = survivor_statement(cfg.round_id, self._fp, self._md, me, mine)
            own = SignedStatement(me, mine_st, self._survivor_sig)
            for w, sig in sorted(sigs.items()):
                if w == me or w not in told:
                    continue
                other = SignedStatement(w, survivor_statement(cfg.round_id, self._fp, self._md, w, told), sig)
                try:
                    other.verify(alliance)
                except SignatureError:
                    continue
                raise EquivocationError(
                    f"client {me}: the server told client {w} another survivor set than this client "
                    "(both statements are signed); refusing to unmask",
                    statements=(own, other),
                    stage=Stage.UNMASKING.value,
                )
            raise SecurityViolation(f"client {me}: unmasking request carries another survivor set than the one signed")
        survivors = set(told)
        partners = set(self._partners)
        if set(req.survivors) != partners & survivors or set(req.dropped) != partners - survivors:
            raise SecurityViolation(f"client {me}: request lists disagree with the survivor set this client signed")
        # Each signer's statement of this one set is verified at most once in the session
        # (``good``), whichever peers it counts for; this client's own signature counts
        # without a verification (it signed ``mine``, equal to ``told``).  Signers near this
        # client (in the neighbourhoods of many partners) are tried first, so few suffice.
        prefix, suffix = survivor_statement_parts(cfg.round_id, self._fp, self._md, told)
        good: set[int] = {me}
        reach: dict[int, int] = {}
        for v in partners:
            for w in self._peer_graph[v] & survivors:
                reach[w] = reach.get(w, 0) + 1
        for v in sorted(partners):
            holders = self._peer_graph[v] & survivors
            count = len(holders & good)
            for w in sorted(holders - good, key=lambda u: (-reach[u], u)):
                if count >= cfg.t:
                    break
                theirs = sigs.get(w)
                if theirs is None:
                    continue
                try:
                    alliance.verify(w, prefix + w.to_bytes(4, "big") + suffix, theirs)
                except SignatureError as exc:
                    raise SecurityViolation(f"client {me}: a survivor-set signature does not verify: {exc}") from exc
                good.add(w)
                count += 1
            if count < cfg.t:
                raise SecurityViolation(
                    f"client {me}: only {count} neighbours of client {v} signed the survivor set, fewer than "
                    f"t={cfg.t}; refusing to reveal"
                )

    def _on_unmask(self, req: UnmaskRequest) -> UnmaskShares:
        cfg, me = self._config, self._id
        if req.receiver != me:
            raise RemoteProtocolError(f"client {me}: unmasking request addressed to client {req.receiver}")
        if self._active:
            if self._state is not ClientState.CHECKED:
                raise SecurityViolation(f"client {me}: unmasking requested before the consistency round; refusing")
            self._check_consistency(req)
        elif req.survivor_set or req.signatures:
            raise RemoteProtocolError(f"client {me}: survivor signatures in a semi-honest round")
        alive, dead = set(req.survivors), set(req.dropped)
        both = sorted(alive & dead)
        if both:
            raise SecurityViolation(f"client {me}: request lists {both} as both surviving and dropped; refusing")
        strangers = sorted((alive | dead) - self._neighbours)
        if strangers:
            raise SecurityViolation(f"client {me}: request names non-neighbours {strangers}; refusing")
        unknown = sorted((alive | dead) - set(self._partners))
        if unknown:
            raise SecurityViolation(f"client {me}: request names neighbours {unknown} that never shared keys")
        if len(alive) < cfg.t:
            raise SecurityViolation(
                f"client {me}: request leaves {len(alive)} surviving neighbours, fewer than t={cfg.t}; refusing"
            )
        if alive & self._revealed_key or dead & self._revealed_self:
            raise SecurityViolation(f"client {me}: would reveal both shares of a peer; refusing")
        if self._active:
            self_shares = tuple(RevealedShare(v, self._held[v][1], self._seed_proof(v)) for v in sorted(alive))
            key_shares = tuple(RevealedShare(v, self._held[v][0], self._proofs[v]) for v in sorted(dead))
            unsigned = UnmaskShares(cfg.round_id, me, self_shares, key_shares)
            assert self._identity is not None
            sig = self._identity.sign(reveal_statement(cfg.round_id, self._fp, self._md, unsigned.encode()))
            reply = UnmaskShares(cfg.round_id, me, self_shares, key_shares, sig)
        else:
            self_shares = tuple(RevealedShare(v, self._held[v][1]) for v in sorted(alive))
            key_shares = tuple(RevealedShare(v, self._held[v][0]) for v in sorted(dead))
            reply = UnmaskShares(cfg.round_id, me, self_shares, key_shares)
        self._revealed_self |= alive
        self._revealed_key |= dead
        self._held = {}
        self._proofs = {}
        self._state = ClientState.DONE
        return reply

    def _seed_proof(self, v: int) -> tuple[bytes, ...]:
        """The Merkle path of the seed share held from ``v``: the key share's path with the
        key share's leaf as the sibling."""
        key_leaf = share_leaf(self._config.round_id, v, self._id, KEY_SHARE, self._held[v][0])
        return (key_leaf, *self._proofs[v][1:])

    def _on_abort(self, msg: Abort) -> None:
        self.abort_reason = msg.reason
        self._wipe()
        self._state = ClientState.ABORTED

    # -- failure ------------------------------------------------------------------------

    def _wipe(self) -> None:
        self._mask_sk = self._enc_sk = self._seed = None
        self._input = None
        self._held = {}
        self._proofs = {}
        self._dealt = self._tree = None
        self._share_keys_cache = {}

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        """The server broke the protocol: wipe the secrets and stop (sticky FAILED).  The
        error blames the server (``client=0``) at the stage this client was in."""
        exc.client = 0
        if exc.stage is None:
            stage = self.stage
            exc.stage = None if stage is None else stage.value
        self._wipe()
        self._state = ClientState.FAILED
        self.failure = exc
        return exc

    # -- persistence --------------------------------------------------------------------

    def export_state(self) -> bytes:
        """This session between two messages, as versioned canonical bytes (no pickle).

        For deployments that cannot keep the object in memory between messages (a Flower
        SuperNode starts a fresh process per message): store the bytes, then
        :meth:`restore` them to continue.  Layout (integers big-endian, byte strings
        ``u32``-length-prefixed, id lists ``u32``-counted and strictly ascending)::

            b"SAcs" | version u8 | RoundConfig bytes | client id u32 | state u8
            | failure text? | abort reason? | secret flags u8 | mask key | enc key | seed
            | packed input | public keys? | neighbours (id, mask public key) ...
            | share keys? | partners | held shares? | revealed self ids | revealed key ids

        Active sessions (version 2) add, after the client id, the alliance's fingerprint,
        the spec fingerprint and the model digest (flag u8, 32 bytes), and at the end the
        parts their state holds (which are present follows from the state)::

            ADVERTISED: (key share, seed share) for x = 1..n | seed commitment | advertisement signature
            SHARED: share root of each neighbour
            SHARED .. CHECKED: each neighbour's neighbourhood (id list)
            AWAIT_INPUT .. CHECKED: for each partner: share root | Merkle path of its held shares
            CHECKED: the survivor set it signed | its signature

        Restoring re-checks all of it: the dealt shares rebuild the secrets, the commitment
        and the signed advertisement are this identity's, every held share's path reaches
        its dealer's signed root (a corrupted one would get this client blamed), the signed
        survivor set is this identity's.  The identity key itself is **not** exported:
        restore with ``identity=`` loaded from the client's own key file.

        Warning:
            The bytes contain this client's **secrets**: its X25519 private keys, its
            self-mask seed, the pairwise share-encryption keys, the Shamir shares it
            holds for its neighbours and, if given before the share delivery, its
            unmasked input.  Anyone who reads them can unmask this client's input or
            help unmask its neighbours' (active mode: also every share it dealt before
            the roster).  Keep them on the client device (in Flower:
            ``context.state``, which the SuperNode keeps locally and never sends to the
            SuperLink), never log or upload them, and delete them when the round ends.

        The random source given at construction is not part of the state (pass one to
        :meth:`restore`); a failed session's :attr:`failure` is restored as a
        :class:`~secagg.errors.ProtocolError` with the same message.
        """
        from secagg import _client_state

        return _client_state.write_state(self)

    @classmethod
    def restore(
        cls,
        data: bytes,
        rng: RngLike = None,
        *,
        masker: Masker | None = None,
        identity: IdentityKey | None = None,
        alliance: Alliance | None = None,
    ) -> ClientSession:
        """Rebuild a session from :meth:`export_state` bytes, validating everything first.

        Args:
            data: the bytes :meth:`export_state` returned.
            rng: randomness still to be drawn (Shamir polynomials and AEAD nonces of the
                key-sharing stage, if not done yet); None is a fresh CSPRNG.
            masker: optional :class:`~secagg.crypto.prg.Masker`, as for the constructor.
            identity: active mode: this client's :class:`~secagg.identity.IdentityKey`.
                The state never holds it: reload it from the client's own key file.
            alliance: active mode: the :class:`~secagg.identity.Alliance` (the state names
                it by fingerprint; it must be the same one).

        Raises:
            MessageError: malformed, truncated, non-canonical or internally inconsistent
                state (wrong magic or version, unsafe config, a private key that does not
                match its public key, secrets or shares that the state cannot hold, dealt
                shares that do not rebuild the secrets, a signed advertisement this
                identity did not make, ...).
            SecAggValueError: an active state restored without ``identity``/``alliance``,
                with another alliance, or with an identity that is not the alliance's key
                of this client.
            UnsafeParametersError: a semi-honest state restored with an identity (no downgrade).
        """
        from secagg import _client_state

        return _client_state.restore(cls, data, rng, masker=masker, identity=identity, alliance=alliance)
