"""Client side of secagg on Flower: a ClientApp handler that takes part in secure rounds.

:class:`SecAggClient` answers the ``"train.secagg"`` messages of a
:class:`~secagg.flower.server.SecAggServer`.  Each message carries one protocol stage; the
handler drives a :class:`~secagg.client.ClientSession` and keeps it between messages in
Flower's ``context.state`` (the SuperNode starts a new ``flwr-clientapp`` process for every
message, so nothing else survives).  At the masked-input stage it calls the user's
training function on the global arrays the server sent, turns the result into an update
(trained minus global), encodes it -- fixed point with the example-count weight
(``fedavg``), or clip, rotation, rounding and this client's share of the DP noise
(``dp``) -- and answers with the masked vector.

Register it on a :class:`flwr.clientapp.ClientApp`::

    app = ClientApp()
    register(app, train_fn)          # handles "train.secagg"

``train_fn(arrays, config, context)`` receives the global :class:`~flwr.app.ArrayRecord`,
the round's :class:`~flwr.app.ConfigRecord` and the Flower context and returns a
:class:`LocalUpdate` (or a ``(arrays, num_examples)`` pair) whose arrays may be an
ArrayRecord, a mapping name -> ndarray, a torch state dict or a torch ``nn.Module``
(opacus wrappers are unwrapped with :mod:`secagg.torch`).

The first message of a round carries the round's :class:`~secagg.spec.RoundSpec` (its
canonical bytes, read with the strict :meth:`~secagg.spec.RoundSpec.from_bytes`); the
client keeps it with its session and encodes its update with :meth:`RoundSpec.encode
<secagg.spec.RoundSpec.encode>`.

What the client checks before it helps (it refuses with an error reply, which the server
counts as a dropout): the protocol's own checks (:class:`~secagg.client.ClientSession`:
safe threshold and cohort floor, roster, deliveries, unmasking requests), its
:class:`ClientPolicy` (modes, dimension, least noise accepted), that it never joined the
round id before (a replayed first message is refused: no second session, training or
upload), and that the global arrays it trains on are the ones the spec names
(:meth:`RoundSpec.check_model <secagg.spec.RoundSpec.check_model>`, against a server
that sends one node a crafted model) and fit the round's layout.

Active mode: with an identity key and the alliance (``identity=`` / ``alliance=``, or
the node config's ``identity-key`` / ``alliance`` paths) the handler answers the
server's identify challenge with its member id and a signature, runs active sessions
(signed advertisement over the spec fingerprint and model digest, every peer's signature
checked, the consistency round) and refuses semi-honest rounds as a downgrade.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.client import ClientSession, ClientState
from secagg.errors import MessageError, RemoteProtocolError, SecAggError, SecAggTypeError, SecAggValueError
from secagg.flower._codec import (
    ARRAYS_KEY,
    CLIP_INDICATOR,
    CLIP_NORM_KEY,
    CONTROL_KEY,
    IDENTIFY,
    INDICATOR_SCALE_KEY,
    NOTICE,
    PAYLOAD_KEY,
    REQUEST,
    SECAGG_ERROR_CODE,
    STATE_KEY,
    TASK_KEY,
    TRAIN_CONFIG_KEY,
    arrays_of,
    export_session,
    identify_statement,
    pack_payload,
    restore_session,
    unpack_payload,
)
from secagg.flower.config import load_alliance, load_identity
from secagg.identity import Alliance, IdentityKey
from secagg.messages import Stage
from secagg.rand import RngLike
from secagg.spec import MODES, RoundSpec

__all__ = [
    "ALLIANCE_CONFIG_KEY",
    "HEADS_KEY",
    "IDENTITY_CONFIG_KEY",
    "JOINED_KEY",
    "KEPT_HEADS",
    "KEPT_ROUNDS",
    "SECAGG_ERROR_CODE",
    "ClientPolicy",
    "FlowerEvaluateFn",
    "FlowerTrainFn",
    "LocalUpdate",
    "ReplayedRound",
    "SecAggClient",
    "register",
]

log = logging.getLogger("secagg.flower")

#: ``context.state`` key of the ledger heads a node has seen, and how many it keeps.
HEADS_KEY = "secagg.ledger-heads"
KEPT_HEADS = 1000
#: ``context.state`` key of the round ids this node joined (a replay is refused), and how
#: many it keeps.
JOINED_KEY = "secagg.joined-rounds"
KEPT_ROUNDS = 10000
_STAGES = frozenset(s.value for s in Stage)
#: Node-config keys (``flower-supernode --node-config``) of this node's identity key file
#: and of the alliance file, read when the handler was given neither.
IDENTITY_CONFIG_KEY = "identity-key"
ALLIANCE_CONFIG_KEY = "alliance"


@dataclass(frozen=True)
class LocalUpdate:
    """What a training function returns.

    Attributes:
        arrays: the trained arrays (ArrayRecord, mapping name -> ndarray/tensor, torch
            state dict or ``nn.Module``); in ``integer`` mode the integers to sum.
        num_examples: local examples used (the FedAvg weight, capped by the server's
            ``max_weight``); ignored in ``integer`` and ``dp`` modes.
    """

    arrays: Any
    num_examples: int = 1


#: ``train_fn(arrays, config, context) -> LocalUpdate | (arrays, num_examples)``.
FlowerTrainFn = Callable[[Any, Any, Any], "LocalUpdate | tuple[Any, int]"]
#: ``evaluate_fn(arrays, config, context) -> (metrics, num_examples)``: ``metrics`` maps a
#: metric name to a finite number (a secure evaluation round asks for named metrics).
FlowerEvaluateFn = Callable[[Any, Any, Any], "tuple[Mapping[str, float], int]"]


@dataclass(frozen=True)
class ClientPolicy:
    """What this client agrees to take part in (decided by the client's owner).

    Attributes:
        modes: aggregation modes accepted.
        max_dim: largest protocol vector accepted (bounds memory and upload).
        min_noise_multiplier: in ``dp`` mode, the least guaranteed noise multiplier
            accepted (None: any); a server asking for less is refused.
        require_dp: refuse every round that is not ``dp``.
    """

    modes: tuple[str, ...] = MODES
    max_dim: int = 10**8
    min_noise_multiplier: float | None = None
    require_dp: bool = False

    def __post_init__(self) -> None:
        if not self.modes or any(m not in MODES for m in self.modes):
            raise SecAggValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes!r}")
        if isinstance(self.max_dim, bool) or not isinstance(self.max_dim, int) or self.max_dim < 1:
            raise SecAggValueError("max_dim must be an int >= 1")
        m = self.min_noise_multiplier
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0):
            raise SecAggValueError("min_noise_multiplier must be None or a number > 0")

    def check(self, spec: RoundSpec) -> None:
        """Raise :class:`~secagg.errors.RemoteProtocolError` (``client=0``: the server asked)
        if this client must not take part."""
        if self.require_dp and spec.mode != "dp":
            raise _refuse(f"this client only takes part in dp rounds, not {spec.mode!r}")
        if spec.mode not in self.modes:
            raise _refuse(f"this client does not take part in {spec.mode!r} rounds")
        if spec.d > self.max_dim:
            raise _refuse(f"round vector of {spec.d} values exceeds this client's max_dim={self.max_dim}")
        if spec.mode == "dp" and self.min_noise_multiplier is not None and spec.plan is not None:
            z = float(spec.plan.noise_multiplier)
            if not z >= self.min_noise_multiplier:
                raise _refuse(
                    f"the round's noise multiplier {z:g} is below this client's minimum {self.min_noise_multiplier:g}"
                )


def _refuse(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, client=0, stage=Stage.ADVERTISE_KEYS.value)


def _to_numpy(obj: Any) -> dict[str, npt.NDArray[Any]]:
    """Trained arrays in any accepted form -> name -> ndarray."""
    from flwr.app import ArrayRecord

    if isinstance(obj, ArrayRecord):
        return {k: np.asarray(v.numpy()) for k, v in obj.items()}
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        from secagg.torch import unwrap

        obj = unwrap(obj).state_dict()
    if isinstance(obj, Mapping):
        out: dict[str, npt.NDArray[Any]] = {}
        if torch is not None and any(isinstance(v, torch.Tensor) for v in obj.values()):
            from secagg.torch import strip_prefixes

            obj = strip_prefixes(obj)
        for k, v in obj.items():
            if torch is not None and isinstance(v, torch.Tensor):
                out[str(k)] = v.detach().cpu().numpy()
            else:
                out[str(k)] = np.asarray(v)
        return out
    raise SecAggTypeError(
        "train_fn must return arrays as an ArrayRecord, a mapping name -> array, a torch state dict or an nn.Module; "
        f"got {type(obj).__name__}"
    )


class ReplayedRound(RemoteProtocolError):
    """The server asked this node to join a round id it already joined (or finished).
    Refused without touching the node's state: a client never joins a round twice."""


class SecAggClient:
    """The ``"train.secagg"`` handler: ``handler(message, context) -> reply``.

    Args:
        train_fn: the local training function (see the module docstring).
        policy: the :class:`ClientPolicy` (default: every mode, no noise floor).
        rng: randomness for keys, shares, nonces, rounding and DP noise (default: a
            fresh CSPRNG per message; never a guessable seed in production).
        journal: optional path of a file where this node appends every round id it joins
            (one hex id a line).  ``context.state`` already refuses a replay within a
            Flower run; Flower keeps one context per run, so give a journal to refuse a
            round replayed in another run too.
        evaluate_fn: optional local evaluation for secure evaluation rounds
            (:meth:`SecAggServer.run_evaluation <secagg.flower.SecAggServer.run_evaluation>`,
            ``SecAggFedAvg(evaluate="secure")``); without it such rounds are refused.
        identity: this node's :class:`~secagg.identity.IdentityKey` or the path of its key
            file (:func:`~secagg.flower.config.load_identity`); None: the node config's
            ``identity-key`` path, if any.
        alliance: the :class:`~secagg.identity.Alliance` or the path of its JSON file;
            None: the node config's ``alliance`` path, if any.  With an identity and an
            alliance the node runs **active** rounds only (a semi-honest round is refused
            as a downgrade) and proves its membership when the server asks (a signed
            answer to the server's fresh challenge); without them it takes part in
            semi-honest rounds only.  One without the other is a configuration error.
    """

    def __init__(
        self,
        train_fn: FlowerTrainFn,
        *,
        policy: ClientPolicy | None = None,
        rng: RngLike = None,
        journal: str | os.PathLike[str] | None = None,
        evaluate_fn: FlowerEvaluateFn | None = None,
        identity: IdentityKey | str | os.PathLike[str] | None = None,
        alliance: Alliance | str | os.PathLike[str] | None = None,
    ) -> None:
        if not callable(train_fn):
            raise SecAggTypeError("train_fn must be callable")
        if evaluate_fn is not None and not callable(evaluate_fn):
            raise SecAggTypeError("evaluate_fn must be callable")
        self._train = train_fn
        self._evaluate = evaluate_fn
        self._policy = ClientPolicy() if policy is None else policy
        if not isinstance(self._policy, ClientPolicy):
            raise SecAggTypeError("policy must be a ClientPolicy")
        self._rng = rng
        if journal is not None and not isinstance(journal, (str, os.PathLike)):
            raise SecAggTypeError("journal must be a path or None")
        self._journal = None if journal is None else os.fspath(journal)
        self._identity = None if identity is None else load_identity(identity)
        self._alliance = None if alliance is None else load_alliance(alliance)
        if (identity is None) != (alliance is None):
            raise SecAggValueError("give both identity= and alliance= (active mode) or neither")

    def _identities(self, context: Any) -> tuple[IdentityKey | None, Alliance | None]:
        """This node's identity and alliance: the handler's, else the node config's paths."""
        if self._identity is not None:
            return self._identity, self._alliance
        cfg = getattr(context, "node_config", None) or {}
        key_path, alliance_path = cfg.get(IDENTITY_CONFIG_KEY), cfg.get(ALLIANCE_CONFIG_KEY)
        if not key_path and not alliance_path:
            return None, None
        if not key_path or not alliance_path:
            raise _refuse(f"this node's config names only one of {IDENTITY_CONFIG_KEY!r} and {ALLIANCE_CONFIG_KEY!r}")
        try:
            return load_identity(str(key_path)), load_alliance(str(alliance_path))
        except OSError as exc:
            raise _refuse(f"this node cannot read its identity or alliance: {exc}") from exc

    def _identify(self, challenge: bytes, message: Any, context: Any) -> bytes:
        """Prove this node's alliance membership: member id + signature of the challenge."""
        identity, alliance = self._identities(context)
        if identity is None or alliance is None:
            raise _refuse("this node has no alliance identity (no identity-key and alliance configured)")
        mine = identity.public_bytes()
        member = next((m for m, k in alliance.items() if k == mine), None)
        if member is None:
            raise _refuse("this node's identity key is not in the alliance")
        node = int(message.metadata.dst_node_id)
        statement = identify_statement(alliance.fingerprint, challenge, node, member)
        return member.to_bytes(4, "big") + identity.sign(statement)

    def __call__(self, message: Any, context: Any) -> Any:
        """Answer one secagg message (an error reply when this client refuses or fails)."""
        from flwr.app import Error
        from flwr.app import Message as FlowerMessage

        try:
            ctl = message.content.config_records[CONTROL_KEY]
            kind, stage, rid = str(ctl["kind"]), str(ctl["stage"]), str(ctl["round"])
            cid = ctl["cid"]
            payload = unpack_payload(message.content.array_records[PAYLOAD_KEY])
            if kind == IDENTIFY:
                return self._reply(message, stage, rid, self._identify(payload, message, context))
            if kind not in (REQUEST, NOTICE) or stage not in _STAGES:
                raise MessageError(f"unknown kind {kind!r} or stage {stage!r}")
            if isinstance(cid, bool) or not isinstance(cid, int):
                raise MessageError("the control record carries no client id")
        except (KeyError, MessageError) as exc:
            return FlowerMessage(Error(SECAGG_ERROR_CODE, f"secagg: malformed request: {exc}"), reply_to=message)
        except SecAggError as exc:  # identify refused
            log.warning("secagg client refused to identify: %s", exc)
            return FlowerMessage(Error(SECAGG_ERROR_CODE, f"secagg: {exc}"), reply_to=message)
        try:
            reply = self._handle(kind, Stage(stage), rid, cid, payload, message, context)
        except ReplayedRound as exc:
            log.warning("secagg client refused a replayed round %s: %s", rid[:8], exc)
            return FlowerMessage(Error(SECAGG_ERROR_CODE, f"secagg: {type(exc).__name__}: {exc}"), reply_to=message)
        except Exception as exc:
            self._forget(context, rid)
            if not isinstance(exc, SecAggError) and not _is_dp_error(exc):
                raise
            log.warning("secagg client refused stage %s of round %s: %s", stage, rid[:8], exc)
            return FlowerMessage(Error(SECAGG_ERROR_CODE, f"secagg: {type(exc).__name__}: {exc}"), reply_to=message)
        return self._reply(message, stage, rid, reply)

    @staticmethod
    def _reply(message: Any, stage: str, rid: str, reply: bytes | None) -> Any:
        from flwr.app import ConfigRecord, RecordDict
        from flwr.app import Message as FlowerMessage

        content: dict[str, Any] = {CONTROL_KEY: ConfigRecord({"stage": stage, "round": rid})}
        if reply is not None:
            content[PAYLOAD_KEY] = pack_payload(reply)
        return FlowerMessage(RecordDict(content), reply_to=message)

    # -- state -----------------------------------------------------------------------------

    @staticmethod
    def _forget(context: Any, rid: str) -> None:
        """Drop the session of round ``rid`` (a session of another round stays)."""
        rec = context.state.config_records.get(STATE_KEY) if STATE_KEY in context.state else None
        if rec is not None and rec.get("round") == rid:
            del context.state[STATE_KEY]

    @staticmethod
    def _save(context: Any, session: ClientSession, spec: bytes, rid: str) -> None:
        from flwr.app import ConfigRecord

        if session.state in (ClientState.DONE, ClientState.ABORTED, ClientState.FAILED):
            SecAggClient._forget(context, rid)
            return
        context.state[STATE_KEY] = ConfigRecord({"round": rid, "spec": spec, "session": export_session(session)})

    @staticmethod
    def _remember(context: Any, key: str, value: str, kept: int) -> None:
        """Append ``value`` to the bounded list under ``key`` in ``context.state``."""
        from flwr.app import ConfigRecord

        got = _kept(context, key)
        if not got or got[-1] != value:
            got = [*got, value][-kept:]
        context.state[key] = ConfigRecord({"values": got})

    def _journaled(self, rid: str) -> bool:
        if self._journal is None:
            return False
        try:
            with open(self._journal, encoding="ascii") as fh:
                return any(line.strip() == rid for line in fh)
        except FileNotFoundError:
            return False

    def _journal_append(self, rid: str) -> None:
        if self._journal is None:
            return
        fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (rid + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _load(self, context: Any, rid: str) -> tuple[ClientSession, RoundSpec, bytes]:
        rec = context.state.config_records.get(STATE_KEY) if STATE_KEY in context.state else None
        if rec is None or rec.get("round") != rid:
            raise RemoteProtocolError(
                "no secagg session for this round on this node (it never started or was forgotten)", client=0
            )
        spec_bytes = bytes(rec["spec"])
        spec = RoundSpec.from_bytes(spec_bytes)
        identity, alliance = self._identities(context) if spec.protocol.active else (None, None)
        session = restore_session(bytes(rec["session"]), self._rng, identity=identity, alliance=alliance)
        return session, spec, spec_bytes

    # -- stages ----------------------------------------------------------------------------

    def _join(self, rid: str, cid: int, payload: bytes, context: Any) -> bytes:
        """The first stage: read the spec, refuse a replay, start a session."""
        if rid in _kept(context, JOINED_KEY) or self._journaled(rid):
            raise ReplayedRound(f"this node already joined round {rid[:16]}; refusing to join it again", client=0,
                                stage=Stage.ADVERTISE_KEYS.value)  # fmt: skip
        spec = RoundSpec.from_bytes(payload)
        if spec.round_id.hex() != rid:
            raise RemoteProtocolError("the request's round id differs from the round spec's", client=0,
                                      stage=Stage.ADVERTISE_KEYS.value)  # fmt: skip
        self._policy.check(spec)
        identity, alliance = self._identities(context)
        if spec.protocol.active:
            if identity is None:
                raise _refuse("an active round needs an alliance identity; this node has none")
            session = ClientSession(spec.protocol, cid, self._rng, identity=identity, alliance=alliance,
                                    spec_fingerprint=hashlib.sha256(payload).hexdigest(),
                                    model_digest=spec.model_digest)  # fmt: skip
        else:  # with an identity this refuses the downgrade (UnsafeParametersError)
            session = ClientSession(spec.protocol, cid, self._rng, identity=identity, alliance=alliance)
        out = session.start().encode()
        self._remember(context, JOINED_KEY, rid, KEPT_ROUNDS)  # joined: never again, whatever happens next
        self._journal_append(rid)
        self._save(context, session, spec.to_bytes(), rid)
        if spec.ledger_head is not None:
            self._remember(context, HEADS_KEY, spec.ledger_head, KEPT_HEADS)
        return out

    def _handle(  # noqa: PLR0917 - internal helper
        self, kind: str, stage: Stage, rid: str, cid: int, payload: bytes, message: Any, context: Any
    ) -> bytes | None:
        if kind == REQUEST and stage is Stage.ADVERTISE_KEYS:
            return self._join(rid, cid, payload, context)
        session, spec, spec_bytes = self._load(context, rid)
        if session.client_id != cid:
            raise RemoteProtocolError("the request names another client id than this node's", client=0,
                                      stage=stage.value)  # fmt: skip
        reply = session.receive(payload)
        awaiting = reply is None and session.state is ClientState.AWAIT_INPUT
        if kind == REQUEST and stage is Stage.MASKED_INPUT and awaiting:
            ring = self._train_and_encode(spec, message, context)
            reply = session.provide_input(ring)
        self._save(context, session, spec_bytes, rid)
        return None if reply is None or kind == NOTICE else reply.encode()

    def _train_and_encode(self, spec: RoundSpec, message: Any, context: Any) -> Any:
        from flwr.app import ConfigRecord

        content = message.content
        if ARRAYS_KEY not in content.array_records:
            raise RemoteProtocolError("the masked-input request carries no global arrays to train from", client=0,
                                      stage=Stage.MASKED_INPUT.value)  # fmt: skip
        arrays = content.array_records[ARRAYS_KEY]
        config = content.config_records.get(TRAIN_CONFIG_KEY, ConfigRecord())
        current = arrays_of(arrays)
        spec.check_model(current)  # the arrays the round names, or no training at all
        if config.get(TASK_KEY) == "evaluate":
            return self._evaluate_and_encode(spec, arrays, config, context)
        clip = _clip_settings(spec, config)
        if clip is not None:
            current[CLIP_INDICATOR] = np.zeros(1)
        base = spec.flatten(current, what="global arrays")
        out = self._train(arrays, config, context)
        if isinstance(out, LocalUpdate):
            trained, n_ex = out.arrays, out.num_examples
        elif isinstance(out, tuple) and len(out) == 2:
            trained, n_ex = out
        else:
            raise SecAggTypeError("train_fn must return a LocalUpdate or an (arrays, num_examples) pair")
        got = _to_numpy(trained)
        if clip is not None:
            got[CLIP_INDICATOR] = np.zeros(1)
        vec = spec.flatten(got, what="trained arrays")
        if spec.mode != "integer":
            vec = vec - base
            if not math.isfinite(float(np.sum(vec))):
                raise SecAggValueError("the update holds NaN or infinite values; this client stays silent")
        if clip is not None:
            vec = _with_indicator(vec, *clip)
        return spec.encode(vec, num_examples=n_ex, rng=self._rng)

    def _evaluate_and_encode(self, spec: RoundSpec, arrays: Any, config: Any, context: Any) -> Any:
        """A secure evaluation round: the node's metrics, named by the spec's layout."""
        if self._evaluate is None:
            raise _refuse("this node has no evaluate_fn and takes part in no secure evaluation")
        if spec.mode != "fedavg" or any(s.shape != (1,) for s in spec.layout):
            raise _refuse("a secure evaluation round aggregates one number per metric (fedavg mode)")
        out = self._evaluate(arrays, config, context)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping)):
            raise SecAggTypeError("evaluate_fn must return a (metrics mapping, num_examples) pair")
        metrics, n_ex = out
        vals: dict[str, npt.NDArray[Any]] = {}
        for s in spec.layout:
            if s.name not in metrics:
                raise _refuse(f"this node's evaluate_fn gives no metric {s.name!r}")
            v = metrics[s.name]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)):
                raise SecAggValueError(f"metric {s.name!r} must be a finite number, got {v!r}")
            vals[s.name] = np.array([float(v)])
        return spec.encode(spec.flatten(vals, what="metrics"), num_examples=n_ex, rng=self._rng)


def _clip_settings(spec: RoundSpec, config: Any) -> tuple[float, float] | None:
    """(C, alpha * C) of an adaptive-clipping round (its layout ends with the indicator), else None."""
    if not spec.layout or spec.layout[-1].name != CLIP_INDICATOR:
        return None
    if spec.mode != "dp" or spec.plan is None:
        raise _refuse("only a dp round carries an adaptive-clipping indicator")
    try:
        c, scaled = float(config[CLIP_NORM_KEY]), float(config[INDICATOR_SCALE_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise _refuse("an adaptive-clipping round must name the clip norm and indicator scale") from exc
    if not (math.isfinite(c) and math.isfinite(scaled) and c > 0 and scaled > 0):
        raise _refuse("the adaptive clip norm and indicator scale must be finite and > 0")
    # whatever the server claims, the spec's own L2 clip (the DP sensitivity) bounds the
    # joint vector: the guarantee never depends on these two numbers
    return c, scaled


def _with_indicator(vec: npt.NDArray[Any], c: float, scaled: float) -> npt.NDArray[Any]:
    """Clip the update (all but the last coordinate) to ``c`` and set the last coordinate to
    ``(b - 1/2) * scaled`` with ``b = 1[||update|| <= c]`` (Andrew et al. 2021)."""
    from dp.clipping import clip_l2

    clipped, norm = clip_l2(vec[:-1], c)
    bit = 1.0 if norm <= c else 0.0
    return np.concatenate([clipped, [(bit - 0.5) * scaled]])


def _kept(context: Any, key: str) -> list[str]:
    rec = context.state.config_records.get(key) if key in context.state else None
    return [str(v) for v in rec["values"]] if rec is not None else []


def _is_dp_error(exc: BaseException) -> bool:
    mod = sys.modules.get("dp.errors")
    return mod is not None and isinstance(exc, mod.DPError)


def register(
    app: Any,
    train_fn: FlowerTrainFn,
    *,
    policy: ClientPolicy | None = None,
    rng: RngLike = None,
    journal: str | os.PathLike[str] | None = None,
    evaluate_fn: FlowerEvaluateFn | None = None,
    identity: IdentityKey | str | os.PathLike[str] | None = None,
    alliance: Alliance | str | os.PathLike[str] | None = None,
) -> SecAggClient:
    """Register a :class:`SecAggClient` on ``app`` (a :class:`flwr.clientapp.ClientApp`)
    for ``"train.secagg"`` messages (secure training rounds and, with ``evaluate_fn``,
    secure evaluation rounds); return the handler.  ``identity``/``alliance``: see
    :class:`SecAggClient` (default: the node config's ``identity-key`` and ``alliance``)."""
    handler = SecAggClient(train_fn, policy=policy, rng=rng, journal=journal, evaluate_fn=evaluate_fn,
                           identity=identity, alliance=alliance)  # fmt: skip
    app.train("secagg")(handler)
    return handler
