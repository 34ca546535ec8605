"""Wire forms of the Flower integration: protocol bytes in Flower records, the record keys
of a secagg message, and a client session's state between messages.

Everything here is plain data: no pickle, no clock, no I/O.  The round itself is described
by :class:`secagg.spec.RoundSpec`, whose canonical bytes are the first stage's payload.

* **payload** -- a protocol message's canonical bytes (:mod:`secagg.messages`, or the
  round spec) carried as one raw ``uint8`` :class:`flwr.app.Array` (stype
  ``"secagg/bytes"``) in an :class:`flwr.app.ArrayRecord`; Flower chunks large arrays
  itself.
* **control record** -- a :class:`flwr.app.ConfigRecord` under :data:`CONTROL_KEY`:
  ``kind`` (``"request"``: answer it; ``"notice"``: no answer awaited), ``stage``,
  ``round`` (the round id, hex) and ``cid`` (the protocol id the server gave this node).
* **session state** (:func:`export_session` / :func:`restore_session`, thin wrappers of
  :meth:`secagg.client.ClientSession.export_state` and
  :meth:`~secagg.client.ClientSession.restore`) -- a
  :class:`~secagg.client.ClientSession` between two messages.  In a Flower deployment the
  SuperNode starts a fresh ``flwr-clientapp`` process for every message (isolation mode
  ``subprocess``, the default in flwr 1.41), so the session must survive in
  ``context.state``, which the SuperNode keeps in its own memory (it is never sent to the
  SuperLink).  The state holds the client's secrets (X25519 private keys, self-mask seed,
  the shares it holds for its neighbours): it lives where the client's data lives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.client import ClientSession
from secagg.errors import MessageError, SecAggTypeError
from secagg.rand import RngLike

__all__ = [
    "ARRAYS_KEY",
    "CLIP_INDICATOR",
    "CLIP_NORM_KEY",
    "CONTROL_KEY",
    "INDICATOR_SCALE_KEY",
    "MESSAGE_TYPE",
    "PAYLOAD_KEY",
    "PAYLOAD_STYPE",
    "SECAGG_ERROR_CODE",
    "TASK_KEY",
    "TRAIN_CONFIG_KEY",
    "arrays_of",
    "export_session",
    "identify_statement",
    "pack_payload",
    "restore_session",
    "unpack_payload",
]

#: Flower message type of every secagg stage (register the client handler with
#: ``@app.train("secagg")``).
MESSAGE_TYPE = "train.secagg"
#: Keys of the records in a secagg message.
CONTROL_KEY = "secagg"
PAYLOAD_KEY = "secagg.payload"
ARRAYS_KEY = "arrays"
TRAIN_CONFIG_KEY = "config"
STATE_KEY = "secagg.session"
#: Train-config keys the server adds: the task (``"evaluate"`` for a secure evaluation
#: round), and under adaptive clipping the update's clip ``C`` and ``alpha * C``.
TASK_KEY = "secagg.task"
CLIP_NORM_KEY = "secagg.clip-norm"
INDICATOR_SCALE_KEY = "secagg.indicator-scale"
#: Layout name of the adaptive-clipping indicator coordinate (one float).
CLIP_INDICATOR = "secagg.clip-indicator"
#: ``kind`` of a control record: a request (one reply awaited) or a notice (none); an
#: ``identify`` request (active mode, before a round) asks a node to prove which alliance
#: member it is: its payload is a fresh challenge, the reply the member id (4 bytes, big
#: endian) and the Ed25519 signature of :func:`identify_statement`.
REQUEST = "request"
NOTICE = "notice"
IDENTIFY = "identify"
IDENTIFY_CHALLENGE_BYTES = 32
_IDENTIFY_DOMAIN = b"secagg/flower/identify/v1\x00"
#: Code of the Flower ``Error`` a secagg client answers with when it refuses or fails a
#: stage (its reason says why: policy, budget, a bad spec, a replay, a model mismatch).
SECAGG_ERROR_CODE = 5091
#: ``stype`` of the raw byte array carrying protocol bytes.
PAYLOAD_STYPE = "secagg/bytes"


# ----------------------------------------------------------------------------- payload


def pack_payload(data: bytes) -> Any:
    """Protocol bytes -> an :class:`flwr.app.ArrayRecord` holding one raw ``uint8`` array."""
    from flwr.app import Array, ArrayRecord

    if not isinstance(data, bytes):
        raise SecAggTypeError(f"payload must be bytes, got {type(data).__name__}")
    arr = Array(dtype="uint8", shape=(len(data),), stype=PAYLOAD_STYPE, data=data)
    return ArrayRecord({"bytes": arr})


def unpack_payload(record: Any) -> bytes:
    """Inverse of :func:`pack_payload`.

    Raises:
        MessageError: the record is not a single raw byte array of the declared length.
    """
    from flwr.app import ArrayRecord

    if not isinstance(record, ArrayRecord) or list(record.keys()) != ["bytes"]:
        raise MessageError("a secagg payload is an ArrayRecord with exactly one array named 'bytes'")
    arr = record["bytes"]
    data = arr.data
    if arr.stype != PAYLOAD_STYPE or arr.dtype != "uint8" or tuple(arr.shape) != (len(data),):
        raise MessageError("the secagg payload array is not raw uint8 bytes of its declared length")
    return bytes(data)


def identify_statement(alliance_fingerprint: str, challenge: bytes, node_id: int, member: int) -> bytes:
    """What a node signs to prove it is alliance member ``member`` on Flower node
    ``node_id``, in answer to the server's fresh ``challenge``: its own domain label (no
    protocol statement starts with it), the alliance's fingerprint, the challenge, the node
    id (8 bytes) and the member id (4 bytes)."""
    if not isinstance(challenge, bytes) or len(challenge) != IDENTIFY_CHALLENGE_BYTES:
        raise MessageError(f"an identify challenge is {IDENTIFY_CHALLENGE_BYTES} bytes")
    if not (0 <= node_id < 1 << 64 and 0 < member < 1 << 32):
        raise MessageError("node id or member id out of range")
    return (_IDENTIFY_DOMAIN + bytes.fromhex(alliance_fingerprint) + challenge + node_id.to_bytes(8, "big")
            + member.to_bytes(4, "big"))  # fmt: skip


# ----------------------------------------------------------------------------- arrays


def arrays_of(arrays: Any) -> dict[str, npt.NDArray[Any]]:
    """An :class:`flwr.app.ArrayRecord` or a mapping name -> array as name -> ndarray, in
    its order (the order :func:`secagg.spec.model_digest` hashes).

    Raises:
        SecAggTypeError: anything else.
    """
    from flwr.app import ArrayRecord

    if isinstance(arrays, ArrayRecord):
        return {k: np.asarray(v.numpy()) for k, v in arrays.items()}
    if isinstance(arrays, Mapping):
        return {str(k): np.asarray(v) for k, v in arrays.items()}
    raise SecAggTypeError(
        f"arrays must be a flwr ArrayRecord or a mapping name -> ndarray, got {type(arrays).__name__}"
    )


# ----------------------------------------------------------------------------- session state


def export_session(session: ClientSession) -> bytes:
    """:meth:`ClientSession.export_state <secagg.client.ClientSession.export_state>`: the
    session's versioned canonical bytes (no pickle).  They hold the client's secrets: keep
    them on the client (``context.state``).

    Raises:
        SecAggTypeError: not a ClientSession.
    """
    if not isinstance(session, ClientSession):
        raise SecAggTypeError(f"expected a ClientSession, got {type(session).__name__}")
    return session.export_state()


def restore_session(data: bytes, rng: RngLike = None, *, identity: Any = None, alliance: Any = None) -> ClientSession:
    """:meth:`ClientSession.restore <secagg.client.ClientSession.restore>`: rebuild a
    session from :func:`export_session` bytes.

    ``rng`` feeds the randomness still to be drawn (Shamir polynomials and AEAD nonces of
    the key-sharing stage); None is a fresh CSPRNG.  An active session (state version 2)
    needs this node's ``identity`` (:class:`~secagg.identity.IdentityKey`, never in the
    state) and the same ``alliance``.

    Raises:
        MessageError: malformed state.
        SecAggValueError: an active state without its identity or with another alliance.
    """
    return ClientSession.restore(data, rng, identity=identity, alliance=alliance)
