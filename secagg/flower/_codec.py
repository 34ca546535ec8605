"""Wire forms of the Flower integration: protocol bytes in Flower records, the public round
specification, model arrays as one flat vector, and a client session's state between
messages.

Everything here is plain data: no pickle, no clock, no I/O.  Three forms:

* **payload** -- a protocol message's canonical bytes (:mod:`secagg.messages`) carried as
  one raw ``uint8`` :class:`flwr.app.Array` (stype ``"secagg/bytes"``) in an
  :class:`flwr.app.ArrayRecord`; Flower chunks large arrays itself.
* **round spec** (:class:`RoundSpec`) -- the public parameters a client needs besides the
  protocol's :class:`~secagg.messages.RoundConfig`: the aggregation mode, the array layout,
  the fixed-point encoder or the distributed-DP plan, the rotation seed and the ledger head;
  carried as canonical JSON.
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

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from secagg.client import ClientSession, check_input
from secagg.encoding import FixedPointEncoder
from secagg.errors import MessageError, ProtocolError, SecAggError, SecAggTypeError, SecAggValueError
from secagg.messages import RoundConfig
from secagg.rand import RngLike, as_random_source
from secagg.rounds import decode_weighted, encode_weighted

__all__ = [
    "MESSAGE_TYPE",
    "PAYLOAD_STYPE",
    "ArraySpec",
    "Mode",
    "RoundSpec",
    "export_session",
    "layout_of",
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
#: ``stype`` of the raw byte array carrying protocol bytes.
PAYLOAD_STYPE = "secagg/bytes"
SPEC_FORMAT = 1

Mode = Literal["integer", "fedavg", "dp"]
MODES: tuple[str, ...] = ("integer", "fedavg", "dp")

_ROTATION_DOMAIN = b"secagg/flower/rotation-seed/v1"


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


# ----------------------------------------------------------------------------- array layout


@dataclass(frozen=True)
class ArraySpec:
    """One array of a model: name, shape and numpy dtype name (e.g. ``"float32"``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SecAggValueError("an array name must be a non-empty str")
        if not isinstance(self.shape, tuple) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.shape
        ):
            raise SecAggValueError(f"array {self.name!r}: shape must be a tuple of ints >= 0, got {self.shape!r}")
        try:
            dt = np.dtype(self.dtype)
        except TypeError as exc:
            raise SecAggValueError(f"array {self.name!r}: unknown dtype {self.dtype!r}") from exc
        if dt.kind not in "fiu" or dt.name != self.dtype:
            raise SecAggValueError(
                f"array {self.name!r}: dtype must be a numpy int/uint/float name, got {self.dtype!r}"
            )

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        """Whether the array holds floating-point values."""
        return np.dtype(self.dtype).kind == "f"


def layout_of(arrays: Any) -> tuple[ArraySpec, ...]:
    """The :class:`ArraySpec` of every array in ``arrays`` (an ArrayRecord or a mapping
    name -> ndarray), in its order."""
    return tuple(ArraySpec(name, tuple(int(s) for s in a.shape), np.dtype(a.dtype).name) for name, a in _items(arrays))


def _items(arrays: Any) -> list[tuple[str, npt.NDArray[Any]]]:
    """(name, ndarray) pairs of an ArrayRecord, a mapping or a sequence of pairs."""
    from flwr.app import ArrayRecord

    if isinstance(arrays, ArrayRecord):
        return [(k, np.asarray(v.numpy())) for k, v in arrays.items()]
    if isinstance(arrays, Mapping):
        return [(str(k), np.asarray(v)) for k, v in arrays.items()]
    raise SecAggTypeError(f"arrays must be a flwr ArrayRecord or a mapping name -> array, got {type(arrays).__name__}")


def _fingerprint(layout: Sequence[ArraySpec]) -> str:
    doc = [[s.name, list(s.shape), s.dtype] for s in layout]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()[:32]


def rotation_seed(round_id: bytes) -> bytes:
    """Public seed of the DP rotation of a round (SHA-256 of a domain label and the round id)."""
    return hashlib.sha256(_ROTATION_DOMAIN + round_id).digest()


# ----------------------------------------------------------------------------- round spec


def _plan_from_json(doc: Any) -> Any:
    from dp.distributed import DistributedPlan
    from dp.errors import DPError

    try:
        return DistributedPlan.from_dict(doc)
    except DPError as exc:
        raise MessageError(f"invalid distributed-DP plan in the round spec: {exc}") from exc


@dataclass(frozen=True)
class RoundSpec:
    """Public parameters of one secure round besides the protocol's RoundConfig.

    Attributes:
        mode: ``"integer"`` (exact sum of integer arrays in Z_2^bits), ``"fedavg"``
            (fixed-point weighted mean of model updates; the survivors' total weight is
            revealed) or ``"dp"`` (distributed DP: clip, rotate, round, add a noise share).
        round_index: 0, 1, ... within the server's run.
        round_id: the protocol round id (16..64 bytes).
        layout: the arrays aggregated (float arrays of the model in ``fedavg``/``dp``,
            integer arrays in ``integer``); other arrays are left as they are.
        bits: ring width of the protocol vectors.
        encoder: fixed-point encoder (``fedavg`` only).
        max_weight: cap on a client's example count (``fedavg`` only).
        plan: the :class:`dp.distributed.DistributedPlan` (``dp`` only).
        ledger_head: ``"COUNT:HASH"`` of the privacy ledger before the round, if any.
    """

    mode: str
    round_index: int
    round_id: bytes
    layout: tuple[ArraySpec, ...]
    bits: int
    encoder: FixedPointEncoder | None = None
    max_weight: int = 0
    plan: Any = None
    ledger_head: str | None = None
    _fp: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SecAggValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.round_index, bool) or not isinstance(self.round_index, int) or self.round_index < 0:
            raise SecAggValueError("round_index must be an int >= 0")
        if not self.layout:
            raise SecAggValueError("the round's layout holds no array to aggregate")
        names = [s.name for s in self.layout]
        if len(set(names)) != len(names):
            raise SecAggValueError("array names in the layout must be distinct")
        if self.mode == "integer":
            if any(s.is_float for s in self.layout):
                raise SecAggValueError("integer mode aggregates integer arrays only")
        elif not all(s.is_float for s in self.layout):
            raise SecAggValueError(f"{self.mode} mode aggregates float arrays only")
        if self.mode == "fedavg":
            if not isinstance(self.encoder, FixedPointEncoder) or self.encoder.bits != self.bits:
                raise SecAggValueError("fedavg mode needs a FixedPointEncoder of the round's bits")
            if isinstance(self.max_weight, bool) or not isinstance(self.max_weight, int) or self.max_weight < 1:
                raise SecAggValueError("fedavg mode needs max_weight >= 1")
        if self.mode == "dp" and (self.plan is None or self.plan.bits != self.bits or self.plan.dim != self.size):
            raise SecAggValueError("dp mode needs a DistributedPlan of the round's bits and layout size")
        object.__setattr__(self, "_fp", _fingerprint(self.layout))

    # -- derived -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of values in the layout (the model dimension)."""
        return sum(s.size for s in self.layout)

    @property
    def d(self) -> int:
        """Length of the protocol vector: ``size`` (+1 weight coordinate in fedavg; the
        rotation's padded length in dp)."""
        if self.mode == "fedavg":
            return self.size + 1
        if self.mode == "dp":
            return int(self.plan.padded_dim)
        return self.size

    @property
    def fingerprint(self) -> str:
        """Short hash of the layout (names, shapes, dtypes)."""
        return self._fp

    def check_config(self, config: RoundConfig) -> None:
        """Refuse a protocol config that does not match this spec (d, bits, round id).

        Raises:
            ProtocolError: mismatch (a client must not take part).
        """
        if config.round_id != self.round_id or config.d != self.d or config.bits != self.bits:
            raise ProtocolError(
                f"the round spec (d={self.d}, bits={self.bits}) does not match the protocol config "
                f"(d={config.d}, bits={config.bits}) or its round id; refusing the round"
            )

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace)."""
        doc: dict[str, Any] = {
            "format": SPEC_FORMAT,
            "mode": self.mode,
            "round_index": self.round_index,
            "round_id": self.round_id.hex(),
            "layout": [[s.name, list(s.shape), s.dtype] for s in self.layout],
            "bits": self.bits,
            "ledger_head": self.ledger_head,
        }
        if self.encoder is not None:
            doc["encoder"] = {"bits": self.encoder.bits, "scale": self.encoder.scale, "clip": self.encoder.clip}
            doc["max_weight"] = self.max_weight
        if self.plan is not None:
            doc["plan"] = self.plan.to_dict()
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RoundSpec:
        """Parse and validate :meth:`to_json` output.

        Raises:
            MessageError: malformed or inconsistent spec.
        """
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != SPEC_FORMAT:
                raise MessageError(f"unsupported round spec format (want {SPEC_FORMAT})")
            layout = tuple(ArraySpec(str(n), tuple(int(x) for x in s), str(t)) for n, s, t in doc["layout"])
            enc = doc.get("encoder")
            encoder = None
            if enc is not None:
                encoder = FixedPointEncoder(int(enc["bits"]), float(enc["scale"]), float(enc["clip"]))
            plan = None if doc.get("plan") is None else _plan_from_json(doc["plan"])
            return cls(
                mode=str(doc["mode"]),
                round_index=int(doc["round_index"]),
                round_id=bytes.fromhex(doc["round_id"]),
                layout=layout,
                bits=int(doc["bits"]),
                encoder=encoder,
                max_weight=int(doc.get("max_weight", 0)),
                plan=plan,
                ledger_head=doc.get("ledger_head"),
            )
        except MessageError:
            raise
        except (SecAggError, KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"malformed round spec: {exc}") from exc

    # -- arrays <-> vectors --------------------------------------------------------------

    def flatten(self, arrays: Any, *, what: str = "update") -> npt.NDArray[Any]:
        """Concatenate the layout's arrays of ``arrays`` (an ArrayRecord or a mapping) into
        one vector (float64 for float layouts, the arrays' integers otherwise).

        Raises:
            SecAggValueError: a missing array, or a shape that differs from the layout.
        """
        got = dict(_items(arrays))
        parts = []
        for s in self.layout:
            if s.name not in got:
                raise SecAggValueError(f"{what}: array {s.name!r} of the round's layout is missing")
            a = got[s.name]
            if tuple(a.shape) != s.shape:
                raise SecAggValueError(f"{what}: array {s.name!r} has shape {tuple(a.shape)}, the round's is {s.shape}")
            parts.append(a.reshape(-1))
        if self.mode == "integer":
            for s, p in zip(self.layout, parts, strict=True):
                if p.dtype.kind not in "iu":
                    raise SecAggTypeError(f"{what}: array {s.name!r} must hold integers in integer mode")
            return np.concatenate([p.astype(np.uint64) if p.dtype.kind == "u" else p for p in parts])
        return np.concatenate([p.astype(np.float64) for p in parts])

    def unflatten(self, vec: npt.NDArray[Any], *, dtype: str | None = None) -> dict[str, npt.NDArray[Any]]:
        """Split a vector of ``size`` values into the layout's arrays (each cast to its own
        dtype, or to ``dtype``)."""
        if vec.shape != (self.size,):
            raise SecAggValueError(f"vector must have shape ({self.size},), got {vec.shape}")
        out: dict[str, npt.NDArray[Any]] = {}
        pos = 0
        for s in self.layout:
            out[s.name] = vec[pos : pos + s.size].reshape(s.shape).astype(dtype or s.dtype)
            pos += s.size
        return out

    # -- client side: encoding -------------------------------------------------------------

    def encode(
        self, update: npt.NDArray[Any], *, num_examples: int | None = None, rng: RngLike = None
    ) -> npt.NDArray[np.uint32] | npt.NDArray[np.uint64]:
        """One client's flat update -> its protocol vector in Z_2^bits (not yet masked).

        ``integer``: the integers themselves (checked to lie in [0, 2^bits)); ``fedavg``:
        ``encoder.encode(update, weight=w)`` followed by the weight ``w = min(num_examples,
        max_weight)``; ``dp``: :meth:`dp.distributed.DistributedPlan.encode` (clip, rotate,
        round, add this client's noise share; the noise must stay secret, so ``rng`` must
        not be guessable in production).

        Raises:
            SecAggValueError, SecAggTypeError: the update does not fit (size, type, range, NaN).
            dp.errors.DPError: the DP pipeline refused the update.
        """
        if update.shape != (self.size,):
            raise SecAggValueError(f"update must have {self.size} values, got shape {update.shape}")
        if self.mode == "integer":
            return check_input(update, self.size, self.bits)
        src = as_random_source(rng)
        if self.mode == "dp":
            seed = rotation_seed(self.round_id)
            return cast("npt.NDArray[np.uint32] | npt.NDArray[np.uint64]", self.plan.encode(update, seed, rng=src))
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
            raise SecAggValueError(f"fedavg mode needs num_examples as an int >= 0, got {num_examples!r}")
        assert self.encoder is not None
        return encode_weighted(self.encoder, update, min(int(num_examples), self.max_weight), src)

    # -- server side: decoding -------------------------------------------------------------

    def decode(self, aggregate: npt.NDArray[Any], survivors: int) -> tuple[npt.NDArray[Any], int]:
        """The unmasked sum -> (vector, weight).

        ``integer``: (the exact sum mod 2^bits as uint64, survivors); ``fedavg``: (the
        weighted mean update, the survivors' total weight); ``dp``: (the noised sum of the
        clipped updates divided by the number of survivors, survivors).

        Raises:
            SecAggValueError: fedavg with a total weight of 0.
        """
        if self.mode == "integer":
            return np.asarray(aggregate, dtype=np.uint64), survivors
        if self.mode == "dp":
            total = np.asarray(self.plan.decode(aggregate, rotation_seed(self.round_id)), dtype=np.float64)
            return total / survivors, survivors
        assert self.encoder is not None
        return decode_weighted(self.encoder, aggregate)


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


def restore_session(data: bytes, rng: RngLike = None) -> ClientSession:
    """:meth:`ClientSession.restore <secagg.client.ClientSession.restore>`: rebuild a
    session from :func:`export_session` bytes.

    ``rng`` feeds the randomness still to be drawn (Shamir polynomials and AEAD nonces of
    the key-sharing stage); None is a fresh CSPRNG.

    Raises:
        MessageError: malformed state.
    """
    return ClientSession.restore(data, rng)
