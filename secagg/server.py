"""The server side of SecAgg+ as a sans-I/O state machine.

A :class:`ServerSession` consumes client messages (:meth:`ServerSession.receive`) and,
when a stage closes, returns an outbox ``{client_id: message}`` to deliver.  It has no
clock: the caller decides when a stage's deadline has passed and calls
:meth:`ServerSession.close_stage`; with ``auto_close=True`` (the default) a stage also
closes as soon as every awaited client has answered.  One table
(:data:`SERVER_TRANSITIONS`) says which client message is legal in which state.  A
client whose message breaks a rule (undecodable, out of stage, spoofed, a conflicting
duplicate, semantically invalid) is **excluded** at that stage, exactly like a dropout
there, with the reason recorded (:attr:`ServerSession.excluded`,
:attr:`AggregateResult.excluded`); identical duplicates, late messages and messages of
another round are ignored.  The session has no failed state: only the caller's misuse
raises (:class:`~secagg.errors.LocalProtocolError`), and only the safety checks below
end a round.  Only the round driver (:mod:`secagg.driver`) calls it in the library.

Stages (Bonawitz et al. CCS 2017 with the SecAgg+ graph of Bell et al. CCS 2020):

1. collect :class:`~secagg.messages.AdvertiseKeys`; on close, the roster of the
   clients whose keys arrived is broadcast and the neighbour graph fixed;
2. collect :class:`~secagg.messages.ShareKeys`; on close, clients left with fewer than
   t key-sharing neighbours are excluded (repeatedly), the others receive their
   :class:`~secagg.messages.ShareDelivery`;
3. collect :class:`~secagg.messages.MaskedInput` into a running sum (memory O(d));
   on close the safety checks run **before any share is requested**: at least
   ``min_clients`` survivors, every connected piece of the survivors' graph at least
   ``min_clients`` large (and one piece when ``require_connected``), and enough
   surviving holders for every secret that must be reconstructed;
4. (active mode only) send every survivor the survivor set
   (:class:`~secagg.messages.ConsistencyRequest`) and collect their signatures of it
   (:class:`~secagg.messages.ConsistencyCheck`); on close, check that every secret to be
   reconstructed still has t holders among the signers, and send each signer its
   unmasking request with the signatures;
5. collect :class:`~secagg.messages.UnmaskShares`; on close, reconstruct the self-mask
   seeds of the survivors and the mask keys of neighbours that dropped after sharing
   keys (only those with a surviving neighbour), remove the masks of the affected pairs
   only, and publish :attr:`ServerSession.result`.

When a round cannot complete safely, :class:`~secagg.errors.ProtocolAbort` is raised
(state ABORTED) and :meth:`ServerSession.abort_messages` gives the notices to send.

Active mode (``config.active``, with the alliance): every advertisement's signature is
checked (a bad one excludes its sender), every consistency signature, every unmasking
reply's signature and every revealed share's Merkle path under the share root its dealer
signed.  A holder whose signed reply reveals a share its dealer did not sign is excluded
with provable evidence (:attr:`ServerSession.evidence`); each secret is rebuilt from t
dealer-signed shares and checked against the dealer's commitment (seed) or advertised
public key (mask key); a mismatch proves the dealer signed bad shares, and the round
aborts with that evidence (its masked input is already in the sum and cannot be taken
out).  So the outcome is the exact sum, an exclusion with evidence and the exact sum of
the rest, or a typed abort; never a wrong sum, never an honest client blamed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from secagg import graph as _graph
from secagg import packing as _packing
from secagg import shamir as _shamir
from secagg.client import SECRET_BYTES, check_config, mask_sign, roster_graph
from secagg.crypto import keys as _keys
from secagg.crypto.prg import Masker
from secagg.errors import (
    LocalProtocolError,
    MessageError,
    ProtocolAbort,
    RemoteProtocolError,
    SecAggError,
    SecAggTypeError,
    SecAggValueError,
    ShareError,
)
from secagg.identity import (
    KEY_SHARE,
    SEED_SHARE,
    Alliance,
    Evidence,
    SignedStatement,
    advertisement_statement,
    reveal_statement,
    seed_commitment,
    share_leaf,
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
    Roster,
    RosterEntry,
    RoundConfig,
    ShareDelivery,
    ShareKeys,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
)
from secagg.ring import reduce_inplace, ring_dtype

RingArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]

__all__ = ["SERVER_TRANSITIONS", "AggregateResult", "ServerSession", "ServerState"]


class ServerState(str, Enum):
    """States of a :class:`ServerSession` (the last two are terminal).  There is no failed
    state: a misbehaving client is excluded, the round goes on."""

    COLLECT_KEYS = "collect_keys"
    COLLECT_SHARES = "collect_shares"
    COLLECT_MASKED = "collect_masked"
    COLLECT_CONSISTENCY = "collect_consistency"
    COLLECT_UNMASK = "collect_unmask"
    DONE = "done"
    ABORTED = "aborted"


#: The only legal (state, message class) pairs of the server and the handler for each.
SERVER_TRANSITIONS: dict[tuple[ServerState, type[Message]], str] = {
    (ServerState.COLLECT_KEYS, AdvertiseKeys): "_on_keys",
    (ServerState.COLLECT_SHARES, ShareKeys): "_on_shares",
    (ServerState.COLLECT_MASKED, MaskedInput): "_on_masked",
    (ServerState.COLLECT_CONSISTENCY, ConsistencyCheck): "_on_consistency",
    (ServerState.COLLECT_UNMASK, UnmaskShares): "_on_unmask",
}

_STAGE_OF = {
    ServerState.COLLECT_KEYS: Stage.ADVERTISE_KEYS,
    ServerState.COLLECT_SHARES: Stage.SHARE_KEYS,
    ServerState.COLLECT_MASKED: Stage.MASKED_INPUT,
    ServerState.COLLECT_CONSISTENCY: Stage.CONSISTENCY,
    ServerState.COLLECT_UNMASK: Stage.UNMASKING,
}
#: The stage each client-to-server message belongs to.
_STAGE_OF_MESSAGE: dict[type[Message], Stage] = {
    AdvertiseKeys: Stage.ADVERTISE_KEYS,
    ShareKeys: Stage.SHARE_KEYS,
    MaskedInput: Stage.MASKED_INPUT,
    ConsistencyCheck: Stage.CONSISTENCY,
    UnmaskShares: Stage.UNMASKING,
}
_STAGE_INDEX = {s: i for i, s in enumerate(Stage)}
#: Stands for an accepted masked input, which is summed on arrival and never retained.
_SUMMED = Abort(b"\0" * 16, "masked input summed")


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """Output of a completed round.

    Attributes:
        aggregate: the sum mod 2^bits of the inputs of ``survivors``, shape (d,),
            ``ring_dtype(bits)``.
        survivors: ids of the clients whose masked input is in the sum, ascending.
        dropped: for each stage, ids that were awaited but did not answer (or were
            excluded) in that stage.
        recovered_keys: ids whose mask key was reconstructed (dropped after sharing keys
            with a surviving neighbour).
        excluded: ids excluded for misbehaviour -> one-line reason (stage and fault);
            dropouts are in ``dropped`` instead.  A client excluded at the unmasking
            stage (its revealed shares were refused) stays in ``survivors``: its masked
            input is in the sum and its self mask was removed with the others' shares.
        evidence: ids excluded -> :class:`~secagg.identity.Evidence` (``provable`` says
            whether the signed statements alone prove the fault).
        active: whether the round ran in active mode (False: the semi-honest protocol).
        survivor_signatures: active mode: the survivors' signatures of the survivor set
            (the consistency round), as :class:`~secagg.identity.SignedStatement`.
        advertisements: active mode: the signed advertisements of the roster.
        survivor_set: active mode: the survivor set the survivors signed (the clients whose
            masked input is in the sum, ``survivors``); empty in semi-honest mode.
    """

    aggregate: npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
    survivors: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    recovered_keys: tuple[int, ...]
    excluded: dict[int, str] = field(default_factory=dict)
    evidence: dict[int, Evidence] = field(default_factory=dict)
    active: bool = False
    survivor_signatures: tuple[SignedStatement, ...] = ()
    advertisements: tuple[SignedStatement, ...] = ()
    survivor_set: tuple[int, ...] = ()


class _Blame(MessageError):
    """A client fault with evidence (raised by a handler; the client is excluded)."""

    def __init__(self, message: str, evidence: Evidence) -> None:
        super().__init__(message)
        self.evidence = evidence


class ServerSession:
    """The server's side of one round (see docs/threat-model.md for the adversaries).

    A misbehaving client never ends the round: a message that is undecodable, out of
    stage, from a spoofed sender, a conflicting duplicate, or semantically invalid
    (copied, equal or small-order keys, a wrong bundle set, a wrong-length masked input,
    a malformed, missing or misplaced share) **excludes its sender at that stage**,
    exactly as if it had dropped out there, and the reason is kept in :attr:`excluded`.
    An identical duplicate, a late message of a stage already closed and a message of
    another round are ignored (:attr:`ignored`).  Only the stage-closing safety checks
    end a round, with :class:`~secagg.errors.ProtocolAbort`.

    Args:
        config: the round's public parameters (the same object the clients use; send
            it to them first if they do not have it).
        auto_close: close a stage as soon as every awaited client has answered.
        masker: optional :class:`~secagg.crypto.prg.Masker` of matching ``d``/``bits``
            to reuse its buffers.
        alliance: active mode (required when ``config.active``): the alliance's identity keys.
        spec_fingerprint: active mode: :attr:`secagg.spec.RoundSpec.fingerprint` (hex) of
            the round, which every client signs.
        model_digest: the digest (hex) of the global model the round names, or None.

    Raises:
        UnsafeParametersError: unsafe parameters (same check as the clients).
        SecAggValueError: an active config without alliance or fingerprint.
    """

    def __init__(
        self,
        config: RoundConfig,
        *,
        auto_close: bool = True,
        masker: Masker | None = None,
        alliance: Alliance | None = None,
        spec_fingerprint: str | None = None,
        model_digest: str | None = None,
    ) -> None:
        check_config(config)
        self._active = config.active
        self._alliance = alliance
        self._fp = b""
        self._md = b""
        if config.active:
            if not isinstance(alliance, Alliance):
                raise SecAggValueError("an active round needs the alliance (secagg.Alliance) at the server")
            self._fp = _hex_digest("spec_fingerprint", spec_fingerprint)
            self._md = b"" if model_digest is None else _hex_digest("model_digest", model_digest)
        self._config = config
        self._auto = bool(auto_close)
        self._masker = masker
        self._state = ServerState.COLLECT_KEYS
        self.abort_reason: str | None = None
        self.result: AggregateResult | None = None
        self._awaited: set[int] = set(range(1, config.n + 1))
        self._answered: dict[int, Message] = {}  # this stage's accepted message per client
        self._keys: dict[int, AdvertiseKeys] = {}
        self._key_owner: dict[bytes, int] = {}
        self._roster: Roster | None = None
        self._entries: dict[int, RosterEntry] = {}
        self._graph: dict[int, frozenset[int]] = {}
        self._bundles: dict[int, dict[int, bytes]] = {}  # sender -> receiver -> ciphertext
        self._u2: frozenset[int] = frozenset()
        self._acc: npt.NDArray[np.uint32] | npt.NDArray[np.uint64] | None = None
        self._u3: set[int] = set()
        self._requests: dict[int, UnmaskRequest] = {}
        self._self_shares: dict[int, dict[int, _shamir.Share]] = {}  # owner -> holder -> share
        self._key_shares: dict[int, dict[int, _shamir.Share]] = {}
        self._dropped: dict[str, tuple[int, ...]] = {}
        self._excluded: dict[int, RemoteProtocolError] = {}
        self._ignored: list[tuple[int | None, str]] = []
        self._participants: set[int] = set(self._awaited)  # who gets an Abort notice
        self._evidence: dict[int, Evidence] = {}
        self._u4: set[int] = set()
        self._survivor_set: tuple[int, ...] = ()
        self._survivor_parts: tuple[bytes, bytes] | None = None
        self._survivor_sigs: dict[int, bytes] = {}
        self._reveals: dict[int, SignedStatement] = {}
        self._share_proofs: dict[tuple[int, int, int], tuple[bytes, ...]] = {}  # (owner, holder, kind)

    # -- read-only views ---------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        """Current state."""
        return self._state

    @property
    def config(self) -> RoundConfig:
        """The round's parameters."""
        return self._config

    @property
    def stage(self) -> Stage | None:
        """The stage being collected (None when terminal)."""
        return _STAGE_OF.get(self._state)

    @property
    def awaited(self) -> frozenset[int]:
        """Clients whose message for the current stage has not arrived yet."""
        return frozenset(self._awaited) if self._state in _STAGE_OF else frozenset()

    @property
    def graph(self) -> dict[int, frozenset[int]]:
        """The neighbour graph (client id -> neighbour ids), fixed when stage 1 closes."""
        return dict(self._graph)

    @property
    def roster(self) -> Roster | None:
        """The roster broadcast after stage 1 (None before)."""
        return self._roster

    @property
    def dropped(self) -> dict[str, tuple[int, ...]]:
        """Per closed stage, the awaited clients that went silent (or were left with too
        few key-sharing neighbours); misbehaving clients are in :attr:`excluded` instead."""
        return dict(self._dropped)

    @property
    def excluded(self) -> dict[int, RemoteProtocolError]:
        """Clients excluded for misbehaviour: id -> the error (``.stage``, ``.client``, reason)."""
        return dict(self._excluded)

    @property
    def evidence(self) -> dict[int, Evidence]:
        """Excluded clients -> :class:`~secagg.identity.Evidence` of why (every exclusion
        has one; ``provable`` says whether its signed statements prove the fault)."""
        return dict(self._evidence)

    @property
    def active(self) -> bool:
        """Whether this round runs in active mode."""
        return self._active

    @property
    def ignored(self) -> tuple[tuple[int | None, str], ...]:
        """Messages ignored without excluding anyone (identical duplicates, late messages of
        a closed stage, messages of another round, senders not in the stage): (client, why)."""
        return tuple(self._ignored)

    # -- driving the session ----------------------------------------------------------

    def receive(
        self, message: Message | bytes | bytearray | memoryview, *, sender: int | None = None
    ) -> dict[int, Message]:
        """Consume one client message.

        A fault of the message excludes its sender from the round (see the class
        docstring); it is not raised.  Read :attr:`excluded` and :attr:`ignored`.

        Args:
            message: a decoded message or its bytes (a masked input is read straight
                from the buffer; it is added to the running sum and not retained).
            sender: the client id the transport authenticated, if any.  When given, the
                fault of a message is always attributed to it (a message claiming another
                sender is a spoof by ``sender``); when None, to the sender the message
                names, if it decodes.

        Returns:
            The outbox of the stage this message closed (auto_close), else ``{}``.

        Raises:
            LocalProtocolError: the session is not collecting (the round has ended).
            SecAggTypeError: ``message`` is not a message or bytes; ``sender`` not an int.
            ProtocolAbort: the message closed a stage and the round cannot complete safely.
        """
        if self._state not in _STAGE_OF:
            raise LocalProtocolError(f"the server session is {self._state.value}; no message is accepted")
        if sender is not None and (isinstance(sender, bool) or not isinstance(sender, int)):
            raise SecAggTypeError(f"sender must be an int client id or None, got {type(sender).__name__}")
        if not isinstance(message, (Message, bytes, bytearray, memoryview)):
            raise SecAggTypeError(f"receive() needs a Message or bytes, got {type(message).__name__}")
        stage = _STAGE_OF[self._state]
        if not isinstance(message, Message):
            try:
                message = decode_message(message)
            except MessageError as exc:
                self._exclude(sender, stage, f"undecodable message: {exc}")
                return self._maybe_close()
        if message.round_id != self._config.round_id:
            self._ignore(sender, f"{type(message).__name__} of another round")
            return {}
        claimed = getattr(message, "sender", None)
        who = sender if sender is not None else claimed
        if not isinstance(who, int) or isinstance(who, bool):
            self._ignore(None, f"{type(message).__name__} names no sender")
            return {}
        msg_stage = _STAGE_OF_MESSAGE.get(type(message))
        if msg_stage is None:  # a server-to-client message sent up
            self._exclude(who, stage, f"sent a {type(message).__name__}, which only the server sends")
            return self._maybe_close()
        if who in self._excluded:
            self._ignore(who, f"{type(message).__name__} from a client already excluded")
            return {}
        if _STAGE_INDEX[msg_stage] < _STAGE_INDEX[stage]:
            self._ignore(who, f"late {type(message).__name__}: its stage has closed")
            return {}
        if who in self._answered:
            first = self._answered[who]
            if msg_stage is stage and (first is _SUMMED or first == message):
                why = "second masked input (the first was summed)" if first is _SUMMED else "identical duplicate"
                self._ignore(who, f"{why} {type(message).__name__}")
                return {}
            self._exclude(who, stage, f"sent a second, different {type(message).__name__} in stage {stage.value}")
            return self._maybe_close()
        if who not in self._awaited:
            self._ignore(who, f"{type(message).__name__} from a client not taking part in stage {stage.value}")
            return {}
        if msg_stage is not stage:
            self._exclude(who, stage, f"sent {type(message).__name__} during stage {stage.value}")
            return self._maybe_close()
        if claimed != who:
            self._exclude(who, stage, f"message claims to come from client {claimed}")
            return self._maybe_close()
        handler: Callable[[Any], None] = getattr(self, SERVER_TRANSITIONS[(self._state, type(message))])
        try:
            handler(message)
        except SecAggError as exc:
            self._exclude(who, stage, str(exc), getattr(exc, "evidence", None))
            return self._maybe_close()
        self._answered[who] = _SUMMED if isinstance(message, MaskedInput) else message
        self._awaited.discard(who)
        return self._maybe_close()

    def close_stage(self) -> dict[int, Message]:
        """Close the current stage (its deadline passed, or everyone answered).

        Returns:
            ``{client_id: message}`` to deliver: the roster, the share deliveries (and
            :class:`~secagg.messages.Abort` notices to excluded clients), the unmasking
            requests; ``{}`` after the last stage (read :attr:`result`).

        Raises:
            ProtocolAbort: the round cannot complete safely; nothing individual was revealed.
            LocalProtocolError: the session is not collecting a stage.
        """
        closer = {
            ServerState.COLLECT_KEYS: self._close_keys,
            ServerState.COLLECT_SHARES: self._close_shares,
            ServerState.COLLECT_MASKED: self._close_masked,
            ServerState.COLLECT_CONSISTENCY: self._close_consistency,
            ServerState.COLLECT_UNMASK: self._close_unmask,
        }.get(self._state)
        if closer is None:
            raise LocalProtocolError(f"no stage to close in state {self._state.value}")
        stage = _STAGE_OF[self._state].value
        self._dropped[stage] = tuple(sorted(self._awaited))
        self._answered = {}
        return closer()

    def abort_messages(self) -> dict[int, Abort]:
        """After an abort: the :class:`~secagg.messages.Abort` notice for each client still
        taking part (empty otherwise)."""
        if self._state is not ServerState.ABORTED:
            return {}
        notice = Abort(self._config.round_id, self.abort_reason or "aborted")
        return {c: notice for c in sorted(self._participants)}

    # -- exclusion ----------------------------------------------------------------------

    def _maybe_close(self) -> dict[int, Message]:
        if self._auto and not self._awaited and self._state in _STAGE_OF:
            return self.close_stage()
        return {}

    def _ignore(self, who: int | None, why: str) -> None:
        self._ignored.append((who, why))

    def _exclude(self, who: int | None, stage: Stage, why: str, evidence: Evidence | None = None) -> None:
        """Treat ``who`` as dropped at ``stage`` and remember why; forget what it sent."""
        if who is None or who not in self._participants or who in self._excluded:
            self._ignore(who, f"unattributable: {why}")
            return
        err = RemoteProtocolError(f"client {who}, stage {stage.value}: {why}", client=who, stage=stage.value)
        self._excluded[who] = err
        self._evidence[who] = evidence if evidence is not None else Evidence(who, stage.value, why, provable=False)
        self._awaited.discard(who)
        self._answered.pop(who, None)
        self._participants.discard(who)
        if stage is Stage.ADVERTISE_KEYS and who in self._keys:
            old = self._keys.pop(who)
            for k in (old.mask_key, old.enc_key):
                if self._key_owner.get(k) == who:
                    del self._key_owner[k]
        elif stage is Stage.SHARE_KEYS:
            self._bundles.pop(who, None)
        elif stage is Stage.CONSISTENCY:
            self._survivor_sigs.pop(who, None)
        elif stage is Stage.UNMASKING:
            for pool in (self._self_shares, self._key_shares):
                for held in pool.values():
                    held.pop(who, None)
            self._reveals.pop(who, None)

    # -- stage 1 ------------------------------------------------------------------------

    def _advert_statement(self, msg: AdvertiseKeys | RosterEntry) -> bytes:
        cid = msg.sender if isinstance(msg, AdvertiseKeys) else msg.client_id
        cfg = self._config
        return advertisement_statement(
            cfg.round_id, self._fp, self._md, cid, msg.mask_key, msg.enc_key, msg.commitment, msg.share_root
        )

    def _on_keys(self, msg: AdvertiseKeys) -> None:
        if msg.signed != self._active:
            mode = "an active" if self._active else "a semi-honest"
            raise MessageError(f"advertisement is {'' if msg.signed else 'not '}signed in {mode} round")
        if self._active:
            assert self._alliance is not None
            self._alliance.verify(msg.sender, self._advert_statement(msg), msg.signature)
        if msg.mask_key == msg.enc_key:
            raise MessageError("advertised the same public key for masking and for share encryption")
        for key in (msg.mask_key, msg.enc_key):
            owner = self._key_owner.get(key)
            if owner is not None:
                raise MessageError(f"advertised a public key client {owner} advertised first in this round")
            _keys.check_public_key(key, "advertised public key")
        self._keys[msg.sender] = msg
        self._key_owner.update({msg.mask_key: msg.sender, msg.enc_key: msg.sender})

    def _close_keys(self) -> dict[int, Message]:
        cfg = self._config
        ids = sorted(self._keys)
        self._participants = set(ids)
        if len(ids) < cfg.min_clients:
            raise self._abort(f"only {len(ids)} clients advertised keys, below min_clients={cfg.min_clients}")
        if len(ids) < cfg.roster_floor:
            raise self._abort(
                f"only {len(ids)} clients advertised keys, below the roster floor n - D = {cfg.roster_floor} "
                "every client enforces"
            )
        keys = self._keys
        roster = Roster(
            cfg.round_id,
            tuple(
                RosterEntry(
                    c, keys[c].mask_key, keys[c].enc_key, keys[c].commitment, keys[c].share_root, keys[c].signature
                )
                for c in ids
            ),
        )
        graph = roster_graph(cfg, roster)
        low = min(len(nb) for nb in graph.values())
        if low < cfg.t:
            raise self._abort(f"{len(ids)} clients give a client only {low} neighbours, fewer than t={cfg.t}")
        self._roster, self._graph = roster, graph
        self._entries = {e.client_id: e for e in roster.clients}
        self._awaited = set(ids)
        self._state = ServerState.COLLECT_SHARES
        return {c: roster for c in ids}

    # -- stage 2 ------------------------------------------------------------------------

    def _on_shares(self, msg: ShareKeys) -> None:
        want = self._graph[msg.sender]
        got = {s.peer for s in msg.shares}
        if got != want:
            raise MessageError(f"share bundles must go to exactly the sender's {len(want)} neighbours")
        self._bundles[msg.sender] = {s.peer: s.ciphertext for s in msg.shares}

    def _close_shares(self) -> dict[int, Message]:
        cfg, graph = self._config, self._graph
        u2 = set(self._bundles)
        # A client with fewer than t key-sharing neighbours could never have its secrets
        # reconstructed: treat it as dropped before sharing keys, and repeat.
        excluded: set[int] = set()
        todo = sorted(u2)
        while todo:
            u = todo.pop()
            if u in u2 and len(graph[u] & u2) < cfg.t:
                u2.discard(u)
                excluded.add(u)
                todo.extend(graph[u] & u2)  # they just lost a key-sharing neighbour
        self._participants = set(u2)
        if excluded:
            self._dropped[Stage.SHARE_KEYS.value] = tuple(sorted(set(self._dropped[Stage.SHARE_KEYS.value]) | excluded))
        if len(u2) < cfg.min_clients:
            self._participants |= excluded
            raise self._abort(f"only {len(u2)} clients shared keys, below min_clients={cfg.min_clients}")
        self._u2 = frozenset(u2)
        out: dict[int, Message] = {}
        for v in sorted(u2):
            items = tuple(EncryptedShare(u, self._bundles[u][v]) for u in sorted(graph[v] & u2))
            out[v] = ShareDelivery(cfg.round_id, v, items)
        if excluded:
            notice = Abort(cfg.round_id, "excluded: too few neighbours shared keys")
            for u in sorted(excluded):
                out[u] = notice
        self._bundles = {}
        self._acc = cast(RingArray, np.zeros(cfg.d, dtype=ring_dtype(cfg.bits)))
        self._awaited = set(u2)
        self._state = ServerState.COLLECT_MASKED
        return out

    # -- stage 3 ------------------------------------------------------------------------

    def _on_masked(self, msg: MaskedInput) -> None:
        cfg = self._config
        want = _packing.packed_size(cfg.d, cfg.bits)
        if len(msg.payload) != want:
            raise MessageError(
                f"masked input must be {want} bytes ({cfg.d} values of {cfg.bits} bits), got {len(msg.payload)}"
            )
        vec = _packing.unpack(msg.payload, cfg.bits, cfg.d)  # a memoryview into the received bytes: zero-copy
        assert self._acc is not None
        np.add(self._acc, vec, out=self._acc)  # wraps mod 2^32 / 2^64; reduced once at the end
        self._u3.add(msg.sender)

    def _close_masked(self) -> dict[int, Message]:
        cfg, graph, u2 = self._config, self._graph, self._u2
        u3 = frozenset(self._u3)
        self._participants = set(u3)
        if len(u3) < cfg.min_clients:
            raise self._abort(f"only {len(u3)} masked inputs arrived, below min_clients={cfg.min_clients}")
        sub = {u: graph[u] & u3 for u in u3}
        pieces = _graph.components(graph, u3)
        if cfg.require_connected and len(pieces) > 1:
            raise self._abort(
                f"the survivors' graph fell into {len(pieces)} pieces; the server would learn each piece's sum"
            )
        small = min(len(p) for p in pieces)
        if small < cfg.min_clients:
            raise self._abort(
                f"a piece of the survivors' graph has {small} clients, below min_clients={cfg.min_clients}"
            )
        for u in sorted(u3):
            if len(sub[u]) < cfg.t:
                raise self._abort(f"client {u}'s self mask has {len(sub[u])} surviving holders, fewer than t={cfg.t}")
        for v in sorted(u2 - u3):
            alive = graph[v] & u3
            if alive and len(alive) < cfg.t:
                raise self._abort(
                    f"dropped client {v}'s mask key has {len(alive)} surviving holders, fewer than t={cfg.t}"
                )
        self._u3 = set(u3)
        self._awaited = set(u3)
        if self._active:
            self._survivor_set = tuple(sorted(u3))
            self._state = ServerState.COLLECT_CONSISTENCY
            return {u: ConsistencyRequest(cfg.round_id, u, self._survivor_set) for u in sorted(u3)}
        out: dict[int, Message] = {}
        for u in sorted(u3):
            req = UnmaskRequest(cfg.round_id, u, tuple(sorted(sub[u])), tuple(sorted((graph[u] & u2) - u3)))
            self._requests[u] = req
            out[u] = req
        self._state = ServerState.COLLECT_UNMASK
        return out

    # -- stage 4 (active mode): consistency ------------------------------------------------

    def _survivor_statement(self, signer: int) -> bytes:
        if self._survivor_parts is None:
            self._survivor_parts = survivor_statement_parts(
                self._config.round_id, self._fp, self._md, self._survivor_set
            )
        prefix, suffix = self._survivor_parts
        return prefix + signer.to_bytes(4, "big") + suffix

    def _on_consistency(self, msg: ConsistencyCheck) -> None:
        assert self._alliance is not None
        self._alliance.verify(msg.sender, self._survivor_statement(msg.sender), msg.signature)
        self._survivor_sigs[msg.sender] = msg.signature

    def _close_consistency(self) -> dict[int, Message]:
        cfg, graph, u2, u3 = self._config, self._graph, self._u2, frozenset(self._u3)
        u4 = frozenset(self._survivor_sigs)
        self._participants = set(u4)
        if len(u4) < cfg.min_clients:
            raise self._abort(f"only {len(u4)} survivors signed the survivor set, below min_clients={cfg.min_clients}")
        # Every client reveals only after t signatures from the neighbours of each peer it
        # reveals about: check that every secret still has t signing holders.
        for u in sorted(u3):
            if len(graph[u] & u4) < cfg.t:
                raise self._abort(
                    f"client {u}'s self mask has {len(graph[u] & u4)} holders that signed the survivor set, "
                    f"fewer than t={cfg.t}"
                )
        for v in sorted(u2 - u3):
            if graph[v] & u3 and len(graph[v] & u4) < cfg.t:
                raise self._abort(
                    f"dropped client {v}'s mask key has {len(graph[v] & u4)} holders that signed the survivor "
                    f"set, fewer than t={cfg.t}"
                )
        out: dict[int, Message] = {}
        for u in sorted(u4):
            alive = tuple(sorted(graph[u] & u3))
            dead = tuple(sorted((graph[u] & u2) - u3))
            wanted: set[int] = set()
            for v in (*alive, *dead):
                wanted |= graph[v] & u4
            sigs = tuple(SurvivorSignature(w, self._survivor_sigs[w]) for w in sorted(wanted))
            req = UnmaskRequest(cfg.round_id, u, alive, dead, self._survivor_set, sigs)
            self._requests[u] = req
            out[u] = req
        self._u4 = set(u4)
        self._awaited = set(u4)
        self._state = ServerState.COLLECT_UNMASK
        return out

    # -- last stage: unmasking ----------------------------------------------------------

    def _on_unmask(self, msg: UnmaskShares) -> None:
        req = self._requests[msg.sender]
        if tuple(s.owner for s in msg.self_shares) != req.survivors:
            raise MessageError("self-mask shares must be exactly those requested")
        if tuple(s.owner for s in msg.key_shares) != req.dropped:
            raise MessageError("mask-key shares must be exactly those requested")
        own = [_shamir.Share.from_bytes(s.share) for s in msg.self_shares]
        keys = [_shamir.Share.from_bytes(s.share) for s in msg.key_shares]
        if any(sh.x != msg.sender for sh in (*own, *keys)):
            raise MessageError("a revealed share is not at the sender's x-coordinate")
        want = SECRET_BYTES
        if any(sh.secret_length != want for sh in (*own, *keys)):
            raise MessageError(f"a revealed share is not a share of a {want}-byte secret")
        if self._active:
            self._check_reveal(msg)
        elif msg.signature or any(s.proof for s in (*msg.self_shares, *msg.key_shares)):
            raise MessageError("signed shares in a semi-honest round")
        for s, sh in zip(msg.self_shares, own, strict=True):
            self._self_shares.setdefault(s.owner, {})[msg.sender] = sh
        for s, sh in zip(msg.key_shares, keys, strict=True):
            self._key_shares.setdefault(s.owner, {})[msg.sender] = sh

    def _check_reveal(self, msg: UnmaskShares) -> None:
        """Active mode: the reply's signature, then every share's Merkle path under the
        share root its dealer signed.  A bad path in a validly signed reply proves that the
        holder revealed a share its dealer never dealt (an honest holder checked every path
        on receipt)."""
        cfg, alliance, roster = self._config, self._alliance, self._roster
        assert alliance is not None and roster is not None
        if not msg.signature:
            raise MessageError("unmasking reply is not signed in an active round")
        statement = reveal_statement(cfg.round_id, self._fp, self._md, msg.unsigned())
        alliance.verify(msg.sender, statement, msg.signature)
        signed = SignedStatement(msg.sender, statement, msg.signature)
        entries = self._entries
        for kind, items in ((SEED_SHARE, msg.self_shares), (KEY_SHARE, msg.key_shares)):
            for s in items:
                dealer = entries[s.owner]
                leaf = share_leaf(cfg.round_id, s.owner, msg.sender, kind, s.share)
                if not verify_share_proof(dealer.share_root, leaf, msg.sender, kind, s.proof, cfg.n):
                    what = "self-mask seed" if kind == SEED_SHARE else "mask key"
                    why = f"revealed a share of client {s.owner}'s {what} that client {s.owner} did not sign"
                    ad = SignedStatement(s.owner, self._advert_statement(dealer), dealer.signature)
                    ev = Evidence(msg.sender, Stage.UNMASKING.value, why, True, (signed, ad))
                    raise _Blame(why, ev)
        for kind, items in ((SEED_SHARE, msg.self_shares), (KEY_SHARE, msg.key_shares)):
            for s in items:
                self._share_proofs[(s.owner, msg.sender, kind)] = s.proof
        self._reveals[msg.sender] = signed

    def _reconstruct_signed(self, owner: int, pool: dict[int, _shamir.Share], kind: int) -> bytes:
        """Active mode: the secret from t dealer-signed shares (any t: they were all checked
        against the dealer's share root), checked against the dealer's commitment (seed)
        or advertised public key (mask key); a mismatch proves the dealer signed shares of
        another secret, and the round aborts with that evidence."""
        cfg, roster = self._config, self._roster
        assert roster is not None
        t = cfg.t
        what = "self-mask seed" if kind == SEED_SHARE else "mask key"
        holders = sorted(pool)
        if len(holders) < t:
            raise self._abort(f"only {len(holders)} shares of client {owner}'s {what}, fewer than t={t}")
        used = holders[:t]
        entry = self._entries[owner]
        try:
            secret = _shamir.combine([pool[h] for h in used], t)
            ok = (
                seed_commitment(cfg.round_id, owner, secret) == entry.commitment
                if kind == SEED_SHARE
                else _keys.public_key(secret) == entry.mask_key
            )
        except (ShareError, SecAggValueError):
            ok = False
        if ok:
            return secret
        why = f"the {t} shares of its {what} it signed do not rebuild the {what} it committed to"
        statements = [SignedStatement(owner, self._advert_statement(entry), entry.signature)]
        statements += [self._reveals[h] for h in used]
        detail = (("holders", ",".join(map(str, used))),)
        ev = Evidence(owner, Stage.UNMASKING.value, why, True, tuple(statements), detail)
        self._evidence[owner] = ev
        self._excluded[owner] = RemoteProtocolError(
            f"client {owner}, stage {Stage.UNMASKING.value}: {why}", client=owner, stage=Stage.UNMASKING.value
        )
        raise self._abort(f"client {owner} dealt bad shares: {why}", evidence={owner: ev})

    def _reconstruct(self, owner: int, pool: dict[int, _shamir.Share], what: str) -> bytes:
        """Secret of ``owner`` from its revealed shares (in holder order): t + 1 shares when
        available (one spare share detects a corrupted one), all of them with error
        correction if so.  A corrupted share is not blamed on its holder: without the
        dealer's signature nobody can prove who altered it (docs/threat-model.md)."""
        t = self._config.t
        shares = [pool[h] for h in sorted(pool)]
        if len(shares) < t:
            raise self._abort(f"only {len(shares)} shares of client {owner}'s {what}, fewer than t={t}")
        try:
            return _shamir.combine(shares[: t + 1], t)
        except ShareError:
            pass
        try:
            return _shamir.reconstruct(shares, t).secret
        except ShareError as exc:
            raise self._abort(f"shares of client {owner}'s {what} are inconsistent: {exc}") from exc

    def _close_unmask(self) -> dict[int, Message]:
        cfg, graph = self._config, self._graph
        u3 = sorted(self._u3)
        assert self._acc is not None and self._roster is not None
        masked_keys = {e.client_id: e.mask_key for e in self._roster.clients}
        needed = sorted(v for v in self._u2 - self._u3 if graph[v] & self._u3)
        # Reconstruct every secret first: abort before touching the running sum.
        if self._active:
            seeds = {u: self._reconstruct_signed(u, self._self_shares.get(u, {}), SEED_SHARE) for u in u3}
        else:
            seeds = {u: self._reconstruct(u, self._self_shares.get(u, {}), "self-mask seed") for u in u3}
        sks: dict[int, bytes] = {}
        for v in needed:
            if self._active:
                sks[v] = self._reconstruct_signed(v, self._key_shares.get(v, {}), KEY_SHARE)
                continue
            sk = self._reconstruct(v, self._key_shares.get(v, {}), "mask key")
            if _keys.public_key(sk) != masked_keys[v]:
                raise self._abort(f"client {v}'s reconstructed mask key does not match its advertised public key")
            sks[v] = sk
        # Remove every survivor's self mask and, for each recovered key, the pairwise masks
        # its surviving neighbours added (w added mask_sign(w, v) * PRG(s_vw)): one
        # chunk-outer pass over the running sum.
        masks = [(seeds[u], -1) for u in u3]
        for v in needed:
            alive = sorted(graph[v] & self._u3)
            shared = _keys.agree_many(sks[v], [masked_keys[w] for w in alive])
            masks += [
                (_keys.derive(z, _keys.LABEL_MASK, cfg.round_id, v, w), -mask_sign(w, v))
                for w, z in zip(alive, shared, strict=True)
            ]
        acc = self._acc
        masker = self._masker if self._masker is not None else Masker(cfg.d, cfg.bits)
        masker.add_many(acc, masks)
        reduce_inplace(acc, cfg.bits)
        self._acc = None
        excluded = {c: str(e) for c, e in sorted(self._excluded.items())}
        sigs: tuple[SignedStatement, ...] = ()
        ads: tuple[SignedStatement, ...] = ()
        if self._active:
            sigs = tuple(
                SignedStatement(w, self._survivor_statement(w), sig) for w, sig in sorted(self._survivor_sigs.items())
            )
            ads = tuple(
                SignedStatement(e.client_id, self._advert_statement(e), e.signature) for e in self._roster.clients
            )
        self.result = AggregateResult(
            acc, tuple(u3), dict(self._dropped), tuple(needed), excluded, dict(sorted(self._evidence.items())),
            self._active, sigs, ads, self._survivor_set if self._active else (),
        )  # fmt: skip
        self._self_shares, self._key_shares = {}, {}
        self._state = ServerState.DONE
        return {}

    # -- abort -------------------------------------------------------------------------

    def _abort(self, reason: str, *, evidence: dict[int, Evidence] | None = None) -> ProtocolAbort:
        self._state = ServerState.ABORTED
        self.abort_reason = reason
        self._acc = None
        self._bundles, self._self_shares, self._key_shares = {}, {}, {}
        exc = ProtocolAbort(reason, evidence=dict(evidence or {}))
        exc.excluded = {c: str(e) for c, e in self._excluded.items()}
        return exc


def _hex_digest(name: str, value: object) -> bytes:
    """A SHA-256 hex digest (64 lowercase hex characters) as 32 bytes."""
    if not isinstance(value, str) or len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value):
        raise SecAggValueError(f"{name} must be a SHA-256 hex digest (64 lowercase hex characters)")
    return bytes.fromhex(value)
