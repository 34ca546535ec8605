"""The one description of a round: :class:`RoundSpec`.

Every transport (in memory, torch, Flower) sends the same canonical bytes to every client
as the round's first message, and the ledger records their fingerprint.  A spec holds:

* the protocol's :class:`~secagg.messages.RoundConfig` (n, d, bits, graph, threshold,
  colluders, cohort floor, round id);
* what is aggregated: the aggregation ``mode`` (``"integer"``, ``"fedavg"``, ``"dp"``)
  and the ``layout`` of the arrays (names, shapes, dtypes);
* how it is encoded: the fixed-point encoder (``fedavg``) or the distributed-DP plan
  (``dp``), and the label the DP rotation seed is derived from;
* what it is about: the digest of the global model the clients train from (binding the
  model into the round, so a server cannot send one client a different model without the
  fingerprints differing) and the privacy ledger's head;
* :attr:`RoundSpec.fingerprint`: SHA-256 of the canonical bytes.

Build one with :func:`build_spec` (which chooses the protocol parameters from the threat
model and, for ``dp``, the distributed-DP plan), carry it with :meth:`RoundSpec.to_bytes`
and read it with :meth:`RoundSpec.from_bytes`, a strict decoder: only
:class:`~secagg.errors.MessageError` escapes it, and only canonical bytes are accepted.

The aggregation rules (:class:`IntegerSum`, :class:`FedAvgAggregation`,
:class:`DPAggregation`) are the user-facing choice; the spec is what they become for one
round of ``n`` clients.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from dp.distributed import DistributedPlan, plan_distributed
from dp.errors import DPError
from secagg import graph as _graph
from secagg._validate import check_choice, check_fraction, check_int, check_number, check_optional_int
from secagg.client import check_config, check_input
from secagg.encoding import FixedPointEncoder, centered_lift, check_headroom
from secagg.errors import MessageError, SecAggError, SecAggTypeError, SecAggValueError, UnsafeParametersError
from secagg.messages import RoundConfig, decode_message
from secagg.rand import RngLike, as_random_source
from secagg.ring import check_bits

__all__ = [
    "MODES",
    "ROTATION_LABEL",
    "SPEC_FORMAT",
    "Aggregation",
    "ArraySpec",
    "DPAggregation",
    "FedAvgAggregation",
    "IntegerSum",
    "RoundSpec",
    "build_spec",
    "layout_of",
    "make_config",
    "model_digest",
]

#: Version of the canonical encoding.
SPEC_FORMAT = 2
#: Default label of the DP rotation seed: ``SHA-256(label || 0x00 || round_id)``.
ROTATION_LABEL = "secagg/rotation-seed/v1"
MODES: tuple[str, ...] = ("integer", "fedavg", "dp")
Mode = Literal["integer", "fedavg", "dp"]
#: Largest spec accepted by :meth:`RoundSpec.from_bytes` (a layout of many arrays is a few MB).
MAX_SPEC_BYTES = 16 * 1024 * 1024
_MAX_ROUND_INDEX = 2**53
_FLOAT_NAMES = ("float16", "float32", "float64", "bfloat16")
_INT_NAMES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")

RingArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]


# ----------------------------------------------------------------------------- aggregation rules


@dataclass(frozen=True)
class IntegerSum:
    """The exact sum mod 2^bits of integer arrays (no encoding, no DP)."""

    bits: int = 32

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 2, 64)


@dataclass(frozen=True)
class FedAvgAggregation:
    """Secure FedAvg without DP: example-count weights inside the secure sum.

    Attributes:
        bound: coordinate-wise clip of each update (model units); larger coordinates are
            clipped, so choose it above the largest expected update coordinate.
        max_weight: cap on a client's weight (its example count); declared up front so the
            headroom check (:func:`secagg.encoding.check_headroom`) can prove the weighted
            sum cannot wrap.
        bits: ring width (2 to 64); the largest power-of-two scale that passes the
            headroom check for the cohort is used (resolution ``1 / scale``).

    The survivors' **total weight is revealed** to the server (one extra coordinate);
    individual weights are not.
    """

    bound: float = 1.0
    max_weight: int = 1000
    bits: int = 32

    def __post_init__(self) -> None:
        check_number("bound", self.bound, lo=0.0, lo_open=True)
        check_int("max_weight", self.max_weight, 1)
        check_int("bits", self.bits, 2, 64)


@dataclass(frozen=True)
class DPAggregation:
    """Distributed differential privacy (Kairouz, Liu, Steinke 2021; see :mod:`dp.distributed`).

    Attributes:
        clip_norm: L2 clip of each client's flattened update (model units).
        noise_multiplier: guaranteed noise std / L2 sensitivity against the server, with
            ``colluders`` colluding clients, at the cohort floor ``min_clients``.
        mechanism: ``"discrete_gaussian"`` or ``"skellam"``.
        bits: ring width; ``None`` lets the planner choose (8 to 32).
        min_clients: cohort floor (the fewest survivors the server will unmask, and where
            the noise is calibrated).  ``None``: ``max(c + 2, floor(n (1 - 2 dropout_fraction)))``.
            A low floor forces every client to add much more noise.
        modular_clip_prob: allowed probability that the noised sum wraps the ring.
    """

    clip_norm: float
    noise_multiplier: float
    mechanism: Literal["discrete_gaussian", "skellam"] = "discrete_gaussian"
    bits: int | None = None
    min_clients: int | None = None
    modular_clip_prob: float = 1e-6

    def __post_init__(self) -> None:
        check_number("clip_norm", self.clip_norm, lo=0.0, lo_open=True)
        check_number("noise_multiplier", self.noise_multiplier, lo=0.0, lo_open=True)
        check_choice("mechanism", self.mechanism, ("discrete_gaussian", "skellam"))
        check_optional_int("bits", self.bits, 2, 64)
        check_optional_int("min_clients", self.min_clients, 1)
        check_number("modular_clip_prob", self.modular_clip_prob, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


Aggregation = IntegerSum | FedAvgAggregation | DPAggregation


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ArraySpec:
    """One array of a model: name, shape and dtype name (numpy names, plus ``"bfloat16"``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 1024:
            raise SecAggValueError("an array name must be a non-empty str of at most 1024 characters")
        if not isinstance(self.shape, tuple) or len(self.shape) > 32:
            raise SecAggValueError(f"array {self.name!r}: shape must be a tuple of at most 32 ints")
        for s in self.shape:
            check_int(f"array {self.name!r} dimension", s, 0, 2**40)
        if self.dtype not in _FLOAT_NAMES + _INT_NAMES:
            raise SecAggValueError(f"array {self.name!r}: dtype must be one of {_FLOAT_NAMES + _INT_NAMES}")

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        """Whether the array holds floating-point values."""
        return self.dtype in _FLOAT_NAMES


def _arrays(arrays: Mapping[str, Any]) -> list[tuple[str, npt.NDArray[Any]]]:
    if not isinstance(arrays, Mapping):
        raise SecAggTypeError(f"arrays must be a mapping name -> array, got {type(arrays).__name__}")
    return [(str(k), np.asarray(v)) for k, v in arrays.items()]


def layout_of(arrays: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
    """The :class:`ArraySpec` of every array of a mapping name -> array, in its order."""
    return tuple(ArraySpec(name, tuple(int(s) for s in a.shape), np.dtype(a.dtype).name) for name, a in _arrays(arrays))


def model_digest(arrays: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a model's arrays: names, dtypes, shapes and little-endian values,
    in the mapping's order.  Clients compare it with the spec's before training."""
    h = hashlib.sha256(b"secagg/model-digest/v1\x00")
    for name, a in _arrays(arrays):
        arr = np.ascontiguousarray(a)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        head = json.dumps([name, arr.dtype.name, list(arr.shape)], separators=(",", ":")).encode()
        h.update(len(head).to_bytes(8, "big") + head)
        raw = arr.tobytes()
        h.update(len(raw).to_bytes(8, "big") + raw)
    return h.hexdigest()


def _layout_fingerprint(layout: Sequence[ArraySpec]) -> str:
    doc = [[s.name, list(s.shape), s.dtype] for s in layout]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class RoundSpec:
    """Everything public about one round; see the module docstring.

    Attributes:
        protocol: the protocol configuration (its ``d``/``bits`` are the encoded vector's).
        mode: ``"integer"``, ``"fedavg"`` or ``"dp"``.
        layout: the arrays aggregated (float arrays in ``fedavg``/``dp``, integer arrays
            in ``integer``).
        round_index: 0, 1, ... within the server's run.
        encoder: the fixed-point encoder (``fedavg`` only).
        max_weight: cap on a client's example count (``fedavg`` only, else 0).
        plan: the :class:`dp.distributed.DistributedPlan` (``dp`` only).
        model_digest: :func:`model_digest` of the global model the clients start from
            (None when the round aggregates no model, e.g. a plain integer sum).
        ledger_head: ``"COUNT:HASH"`` of the privacy ledger before the round, if any.
        rotation_label: label the DP rotation seed is derived from.

    Raises:
        SecAggValueError, SecAggTypeError: fields that disagree with each other.
    """

    protocol: RoundConfig
    mode: str
    layout: tuple[ArraySpec, ...]
    round_index: int = 0
    encoder: FixedPointEncoder | None = None
    max_weight: int = 0
    plan: DistributedPlan | None = None
    model_digest: str | None = None
    ledger_head: str | None = None
    rotation_label: str = ROTATION_LABEL
    _bytes: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        if not isinstance(self.protocol, RoundConfig):
            raise SecAggTypeError(f"protocol must be a RoundConfig, got {type(self.protocol).__name__}")
        check_choice("mode", self.mode, MODES)
        check_int("round_index", self.round_index, 0, _MAX_ROUND_INDEX)
        if not isinstance(self.layout, tuple) or not self.layout or not all(
            isinstance(s, ArraySpec) for s in self.layout
        ):
            raise SecAggValueError("layout must be a non-empty tuple of ArraySpec")
        names = [s.name for s in self.layout]
        if len(set(names)) != len(names):
            raise SecAggValueError("array names in the layout must be distinct")
        if self.mode == "integer" and any(s.is_float for s in self.layout):
            raise SecAggValueError("integer mode aggregates integer arrays only")
        if self.mode != "integer" and not all(s.is_float for s in self.layout):
            raise SecAggValueError(f"{self.mode} mode aggregates float arrays only")
        if self.mode == "fedavg":
            if not isinstance(self.encoder, FixedPointEncoder) or self.encoder.bits != self.bits:
                raise SecAggValueError("fedavg mode needs a FixedPointEncoder of the protocol's bits")
            check_int("max_weight", self.max_weight, 1)
        elif self.encoder is not None or self.max_weight != 0:
            raise SecAggValueError("only fedavg mode has an encoder and a max_weight")
        if self.mode == "dp":
            plan = self.plan
            if not isinstance(plan, DistributedPlan) or plan.bits != self.bits or plan.dim != self.size:
                raise SecAggValueError("dp mode needs a DistributedPlan of the protocol's bits and the layout's size")
        elif self.plan is not None:
            raise SecAggValueError("only dp mode has a distributed-DP plan")
        if self.protocol.d != self.d:
            raise SecAggValueError(
                f"the protocol's d={self.protocol.d} does not match the {self.mode} vector ({self.d})"
            )
        if self.model_digest is not None and (
            not isinstance(self.model_digest, str) or len(self.model_digest) != 64
            or any(ch not in "0123456789abcdef" for ch in self.model_digest)
        ):  # fmt: skip
            raise SecAggValueError("model_digest must be 64 lowercase hex characters (SHA-256) or None")
        if self.ledger_head is not None and (not isinstance(self.ledger_head, str) or len(self.ledger_head) > 256):
            raise SecAggValueError("ledger_head must be a 'COUNT:HASH' str or None")
        if not isinstance(self.rotation_label, str) or not 1 <= len(self.rotation_label) <= 256:
            raise SecAggValueError("rotation_label must be a str of 1..256 characters")
        object.__setattr__(self, "_bytes", self._encode())

    # -- derived ------------------------------------------------------------------------

    @property
    def round_id(self) -> bytes:
        """The protocol round id."""
        return self.protocol.round_id

    @property
    def bits(self) -> int:
        """Ring width of the protocol vectors."""
        return self.protocol.bits

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
            assert self.plan is not None
            return int(self.plan.padded_dim)
        return self.size

    @property
    def rotation_seed(self) -> bytes:
        """Public seed of the DP rotation: ``SHA-256(rotation_label || 0x00 || round_id)``."""
        return hashlib.sha256(self.rotation_label.encode() + b"\x00" + self.round_id).digest()

    @property
    def layout_fingerprint(self) -> str:
        """Short hash of the layout (names, shapes, dtypes)."""
        return _layout_fingerprint(self.layout)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of :meth:`to_bytes`: names this exact round."""
        return hashlib.sha256(self._bytes).hexdigest()

    # -- canonical bytes ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (what :meth:`to_bytes` encodes)."""
        doc: dict[str, Any] = {
            "format": SPEC_FORMAT,
            "type": "secagg.RoundSpec",
            "protocol": self.protocol.encode().hex(),
            "mode": self.mode,
            "round_index": self.round_index,
            "layout": [[s.name, list(s.shape), s.dtype] for s in self.layout],
            "model_digest": self.model_digest,
            "ledger_head": self.ledger_head,
            "rotation_label": self.rotation_label,
        }
        if self.encoder is not None:
            doc["encoder"] = {"bits": self.encoder.bits, "scale": self.encoder.scale, "clip": self.encoder.clip}
            doc["max_weight"] = self.max_weight
        if self.plan is not None:
            doc["plan"] = self.plan.to_dict()
        return doc

    def _encode(self) -> bytes:
        try:
            text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        except ValueError as exc:
            raise SecAggValueError(f"the round spec holds a non-finite number: {exc}") from exc
        return text.encode()

    def to_bytes(self) -> bytes:
        """Canonical, versioned bytes (UTF-8 JSON, sorted keys, no whitespace)."""
        return self._bytes

    def to_json(self) -> str:
        """:meth:`to_bytes` as text."""
        return self._bytes.decode()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | str) -> RoundSpec:
        """Parse and validate canonical spec bytes (or their text).

        Raises:
            MessageError: anything else: not UTF-8 JSON, too large or deep, another format,
                a missing, extra or ill-typed field, fields that disagree, or a
                non-canonical encoding.  No other exception escapes.
        """
        raw = _raw_bytes(data)
        try:
            doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except RecursionError as exc:
            raise MessageError("round spec JSON is nested too deeply") from exc
        except (UnicodeDecodeError, ValueError) as exc:
            raise MessageError(f"round spec is not JSON: {exc}") from exc
        try:
            spec = _from_doc(doc)
        except MessageError:
            raise
        except (SecAggError, DPError, KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise MessageError(f"malformed round spec: {exc}") from exc
        if spec.to_bytes() != raw:
            raise MessageError("round spec bytes are not canonical; refusing them")
        return spec

    from_json = from_bytes

    # -- arrays <-> vectors ---------------------------------------------------------------

    def check_model(self, arrays: Mapping[str, Any]) -> None:
        """Refuse a global model whose digest differs from the spec's (a client must not
        train on a model the round does not name).

        Raises:
            SecAggValueError: the digests differ, or the spec names no model.
        """
        if self.model_digest is None:
            raise SecAggValueError("this round names no model digest; it aggregates no model")
        if model_digest(arrays) != self.model_digest:
            raise SecAggValueError("the global model differs from the one this round names (model digest mismatch)")

    def flatten(self, arrays: Mapping[str, Any], *, what: str = "update") -> npt.NDArray[Any]:
        """Concatenate the layout's arrays of ``arrays`` into one vector (float64 for float
        layouts, the arrays' integers otherwise).

        Raises:
            SecAggValueError: a missing array, or a shape that differs from the layout.
        """
        got = dict(_arrays(arrays))
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
        dtype, or to ``dtype``; ``bfloat16`` arrays come back as float32)."""
        if vec.shape != (self.size,):
            raise SecAggValueError(f"vector must have shape ({self.size},), got {vec.shape}")
        out: dict[str, npt.NDArray[Any]] = {}
        pos = 0
        for s in self.layout:
            want = dtype or ("float32" if s.dtype == "bfloat16" else s.dtype)
            out[s.name] = vec[pos : pos + s.size].reshape(s.shape).astype(want)
            pos += s.size
        return out

    def encode(self, update: npt.NDArray[Any], *, num_examples: int | None = None, rng: RngLike = None) -> RingArray:
        """One client's flat update -> its protocol vector in Z_2^bits (not yet masked).

        ``integer``: the integers themselves (checked to lie in [0, 2^bits)); ``fedavg``:
        ``weight * encode(update)`` followed by the weight ``min(num_examples, max_weight)``;
        ``dp``: :meth:`dp.distributed.DistributedPlan.encode` (clip, rotate, round, add this
        client's noise share; the noise must stay secret, so ``rng`` must not be guessable).

        Raises:
            SecAggValueError, SecAggTypeError: the update does not fit (size, type, range, NaN).
            dp.errors.DPError: the DP pipeline refused the update.
        """
        if not isinstance(update, np.ndarray) or update.shape != (self.size,):
            got = getattr(update, "shape", type(update).__name__)
            raise SecAggValueError(f"update must be an array of {self.size} values, got {got!r}")
        if self.mode == "integer":
            return check_input(update, self.size, self.bits)
        src = as_random_source(rng)
        if self.mode == "dp":
            assert self.plan is not None
            return self.plan.encode(update, self.rotation_seed, rng=src)
        weight = check_int("num_examples", num_examples, 0)
        assert self.encoder is not None
        body = self.encoder.encode(update, src, weight=min(weight, self.max_weight))
        ring = np.empty(body.size + 1, dtype=body.dtype)
        ring[:-1] = body
        ring[-1] = min(weight, self.max_weight)
        return cast(RingArray, ring)

    def decode(self, aggregate: npt.NDArray[Any], survivors: int) -> tuple[npt.NDArray[Any], int]:
        """The unmasked sum -> (vector, weight).

        ``integer``: (the exact sum mod 2^bits as uint64, survivors); ``fedavg``: (the
        weighted mean update, the survivors' total weight, which is revealed); ``dp``: (the
        noised sum of the clipped updates divided by the number of survivors, survivors).

        Raises:
            SecAggValueError: fedavg with a total weight of 0.
        """
        check_int("survivors", survivors, 1)
        if self.mode == "integer":
            return np.asarray(aggregate, dtype=np.uint64), survivors
        if self.mode == "dp":
            assert self.plan is not None
            total = np.asarray(self.plan.decode(aggregate, self.rotation_seed), dtype=np.float64)
            return total / survivors, survivors
        assert self.encoder is not None
        agg = np.asarray(aggregate)
        weight = int(centered_lift(agg[-1:], self.encoder.bits)[0])
        if weight <= 0:
            raise SecAggValueError("the survivors' total weight is 0: no surviving client had examples")
        return self.encoder.decode(agg[:-1], count=weight), weight


def _raw_bytes(data: object) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8", errors="surrogatepass")
    if isinstance(data, memoryview):
        if not data.contiguous:
            raise MessageError("round spec memoryview is not contiguous")
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise MessageError(f"round spec must be bytes, got {type(data).__name__}")
    if len(data) > MAX_SPEC_BYTES:
        raise MessageError(f"round spec of {len(data)} bytes exceeds {MAX_SPEC_BYTES}")
    return bytes(data)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise MessageError(f"round spec repeats the key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise MessageError(f"round spec holds {name}, which is not a JSON number")


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if key not in doc:
        raise MessageError(f"round spec lacks {key!r}")
    v = doc[key]
    if v is None and optional:
        return None
    if (isinstance(v, bool) and kind is not bool) or not isinstance(v, kind):
        raise MessageError(f"round spec field {key!r} has the wrong type ({type(v).__name__})")
    return v


def _from_doc(doc: Any) -> RoundSpec:
    if not isinstance(doc, dict):
        raise MessageError("round spec is not a JSON object")
    if doc.get("format") != SPEC_FORMAT or doc.get("type") != "secagg.RoundSpec":
        raise MessageError(f"not a secagg round spec of format {SPEC_FORMAT}")
    known = {"format", "type", "protocol", "mode", "round_index", "layout", "model_digest", "ledger_head",
             "rotation_label", "encoder", "max_weight", "plan"}  # fmt: skip
    extra = sorted(set(doc) - known)
    if extra:
        raise MessageError(f"round spec has unknown fields {extra}")
    protocol = decode_message(bytes.fromhex(_get(doc, "protocol", str)), RoundConfig)
    assert isinstance(protocol, RoundConfig)
    layout = []
    for item in _get(doc, "layout", list):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], list) and isinstance(item[2], str)):  # fmt: skip
            raise MessageError("round spec layout entries must be [name, [dims...], dtype]")
        if any(isinstance(x, bool) or not isinstance(x, int) for x in item[1]):
            raise MessageError("round spec layout dimensions must be ints")
        layout.append(ArraySpec(item[0], tuple(item[1]), item[2]))
    encoder = None
    enc = doc.get("encoder")
    if enc is not None:
        if not isinstance(enc, dict) or set(enc) != {"bits", "scale", "clip"}:
            raise MessageError("round spec encoder must be {bits, scale, clip}")
        encoder = FixedPointEncoder(
            _get(enc, "bits", int), float(_get(enc, "scale", (int, float))), float(_get(enc, "clip", (int, float)))
        )
    plan = None
    if doc.get("plan") is not None:
        plan = DistributedPlan.from_dict(_get(doc, "plan", dict))
    return RoundSpec(
        protocol=protocol,
        mode=_get(doc, "mode", str),
        layout=tuple(layout),
        round_index=_get(doc, "round_index", int),
        encoder=encoder,
        max_weight=_get(doc, "max_weight", int) if "max_weight" in doc else 0,
        plan=plan,
        model_digest=_get(doc, "model_digest", str, optional=True),
        ledger_head=_get(doc, "ledger_head", str, optional=True),
        rotation_label=_get(doc, "rotation_label", str),
    )


# ----------------------------------------------------------------------------- building a round


def make_config(
    n: int,
    d: int,
    bits: int = 32,
    *,
    threshold: int | None = None,
    neighbors: int | str | None = None,
    colluders: int | None = None,
    min_clients: int | None = None,
    dropout_fraction: float = 0.1,
    corrupt_fraction: float = 0.0,
    require_connected: bool = True,
    round_id: bytes | None = None,
    rng: RngLike = None,
    max_dropouts: int | None = None,
    active: bool = False,
) -> tuple[RoundConfig, _graph.GraphParameters]:
    """Build a checked :class:`~secagg.messages.RoundConfig` (and the
    :class:`~secagg.graph.GraphParameters` behind it) for a round of ``n`` clients.

    ``neighbors``: None = SecAgg+ with k and t chosen from the threat model
    (:func:`secagg.graph.choose_parameters` with ``dropout_fraction`` and
    ``corrupt_fraction``); an int k; or ``"all"`` for the complete graph.
    ``threshold``: None = the safe default for that graph.  ``round_id``: None = 16
    random bytes from ``rng``.  ``max_dropouts``: D, the most clients that may be missing
    from the roster (every client refuses a smaller roster than ``n - D``); None = the
    dropouts the parameters tolerate (:attr:`GraphParameters.dropouts_tolerated`, capped
    at ``n - min_clients``).  ``active``: active mode (signed identities, the consistency
    round, verified shares; every party then needs the alliance); False is the
    semi-honest protocol.

    Raises:
        SecAggValueError, SecAggTypeError: bad arguments.
        UnsafeParametersError: the threshold or cohort floor is unsafe, ``max_dropouts``
            exceeds what the parameters tolerate (a server could shrink the roster until
            the colluders surround a client), or the declared colluders force more
            corrupt neighbours than the threshold allows.
    """
    n = check_int("n", n, 3)
    d = check_int("d", d, 1)
    bits = check_bits(bits)
    if bits < 2:
        raise SecAggValueError(f"bits must be in [2, 64], got {bits}")
    colluders = check_optional_int("colluders", colluders, 0, n - 2)
    threshold = check_optional_int("threshold", threshold, 1, n - 1)
    dropout_fraction = check_fraction("dropout_fraction", dropout_fraction)
    corrupt_fraction = check_fraction("corrupt_fraction", corrupt_fraction)
    if colluders is None:
        colluders = _graph.ThreatModel(n, dropout_fraction, corrupt_fraction).colluders
    if neighbors is None:
        params = _graph.choose_parameters(_graph.ThreatModel(n, dropout_fraction, colluders / n))
        if threshold is not None:
            k_auto = None if params.complete else params.k
            params = _graph.parameters_for_k(n, k_auto, threshold, colluders, dropout_fraction=dropout_fraction)
    elif isinstance(neighbors, str):
        if neighbors != "all":
            raise SecAggValueError(f"neighbors must be None, an int k or 'all', got {neighbors!r}")
        params = _graph.parameters_for_k(n, None, threshold, colluders, dropout_fraction=dropout_fraction)
    else:
        k = check_int("neighbors", neighbors, 2, n - 1)
        params = _graph.parameters_for_k(n, k, threshold, colluders, dropout_fraction=dropout_fraction)
    floor = params.min_clients if min_clients is None else check_int("min_clients", min_clients, 1, n)
    tolerated = min(params.dropouts_tolerated, n - floor)
    if max_dropouts is None:
        big_d = tolerated
    else:
        big_d = check_int("max_dropouts", max_dropouts, 0, n - 1)
        if big_d > tolerated:
            raise UnsafeParametersError(
                f"max_dropouts={big_d} exceeds the {tolerated} dropouts these parameters tolerate (k={params.k}, "
                f"t={params.t}, {params.colluders} colluders, cohort floor {floor}): a roster that small lets a "
                "server surround a client with colluders; lower max_dropouts or raise k and t"
            )
    if not isinstance(active, bool):
        raise SecAggTypeError(f"active must be a bool, got {type(active).__name__}")
    k_cfg = 0 if params.complete else params.k
    rid = round_id if round_id is not None else as_random_source(rng).bytes(16)
    cfg = RoundConfig(
        rid,
        n,
        d,
        bits,
        k_cfg,
        params.t,
        params.colluders,
        params.corrupt_neighbours,
        floor,
        params.expected_survivors,
        bool(require_connected),
        big_d,
        active,
    )
    check_config(cfg)
    return cfg, params


def cohort_floor(
    n: int, *, dropout_fraction: float, corrupt_fraction: float, min_clients: int | None = None
) -> tuple[int, int]:
    """``(floor, colluders)`` of a distributed-DP round of ``n`` clients.

    ``colluders`` comes from the SecAgg+ threat model (:class:`secagg.graph.ThreatModel`);
    the floor, the fewest survivors the server unmasks and where the noise is calibrated,
    is ``min_clients`` or by default ``max(colluders + 2, floor(n (1 - 2 dropout_fraction)))``,
    clamped to ``[colluders + 2, n]`` (at least one honest share protects each client).
    """
    c = _graph.ThreatModel(n, dropout_fraction, corrupt_fraction).colluders
    m = max(c + 2, math.floor(n * (1.0 - 2.0 * dropout_fraction))) if min_clients is None else min_clients
    return min(max(m, c + 2), n), c


@functools.lru_cache(maxsize=64)
def _dp_plan(
    rule: DPAggregation, n: int, size: int, dropout_fraction: float, corrupt_fraction: float
) -> DistributedPlan:
    floor, c = cohort_floor(
        n, dropout_fraction=dropout_fraction, corrupt_fraction=corrupt_fraction, min_clients=rule.min_clients
    )
    return plan_distributed(
        clients_expected=n,
        min_clients=floor,
        colluders=c,
        dim=size,
        clip_norm=rule.clip_norm,
        noise_multiplier=rule.noise_multiplier,
        mechanism=rule.mechanism,
        bits=rule.bits,
        modular_clip_prob=rule.modular_clip_prob,
    )


def fedavg_encoder(n: int, bits: int, bound: float, max_weight: int) -> FixedPointEncoder:
    """The fixed-point encoder of example-count-weighted FedAvg over ``n`` clients: the
    largest power-of-two scale for which ``n`` updates clipped to ``bound``, each weighted
    by up to ``max_weight``, and the weight coordinate itself cannot wrap the ring.

    Raises:
        HeadroomError: no scale fits (before anything is encoded).
    """
    weights = [max_weight] * n
    encoder = FixedPointEncoder.fit(n, bits, bound, weights=weights)
    encoder.headroom(n, weights=weights)
    check_headroom(n, bits, 1, weights=weights)  # the weight coordinate
    return encoder


def build_spec(
    n: int,
    layout: Sequence[ArraySpec],
    rule: Aggregation,
    *,
    round_index: int = 0,
    model: Mapping[str, Any] | None = None,
    ledger_head: str | None = None,
    neighbors: int | str | None = None,
    threshold: int | None = None,
    min_clients: int | None = None,
    dropout_fraction: float = 0.1,
    corrupt_fraction: float = 0.0,
    round_id: bytes | None = None,
    rng: RngLike = None,
    active: bool = False,
) -> RoundSpec:
    """The :class:`RoundSpec` of a round of ``n`` clients aggregating ``layout`` with ``rule``.

    Chooses the protocol parameters from the threat model (``dropout_fraction``,
    ``corrupt_fraction``; or explicit ``neighbors``/``threshold``/``min_clients``), the
    fixed-point encoder (fedavg) or the distributed-DP plan calibrated at the cohort floor
    (dp; cached per cohort), and binds the global ``model`` (its digest) if given.
    ``active``: the round runs in active mode (see :func:`make_config`).  No state
    anywhere changes.

    Raises:
        HeadroomError: fedavg weights and bound do not fit the ring for ``n`` clients.
        dp.errors.DPError: no DP plan fits (the message says what would).
        UnsafeParametersError: the cohort is too small for the threat model.
        SecAggValueError, SecAggTypeError: bad arguments.
    """
    n = check_int("n", n, 3)
    lay = tuple(layout)
    if not lay or not all(isinstance(s, ArraySpec) for s in lay):
        raise SecAggTypeError("layout must be a non-empty sequence of ArraySpec (see layout_of)")
    size = sum(s.size for s in lay)
    dropout_fraction = check_fraction("dropout_fraction", dropout_fraction)
    corrupt_fraction = check_fraction("corrupt_fraction", corrupt_fraction)
    encoder: FixedPointEncoder | None = None
    plan: DistributedPlan | None = None
    max_weight = 0
    floor = min_clients
    if isinstance(rule, IntegerSum):
        mode, bits, d = "integer", rule.bits, size
    elif isinstance(rule, FedAvgAggregation):
        mode, bits, d, max_weight = "fedavg", rule.bits, size + 1, rule.max_weight
        encoder = fedavg_encoder(n, rule.bits, rule.bound, rule.max_weight)
    elif isinstance(rule, DPAggregation):
        plan = _dp_plan(rule, n, size, dropout_fraction, corrupt_fraction)
        mode, bits, d, floor = "dp", plan.bits, plan.padded_dim, plan.min_clients
    else:
        raise SecAggTypeError("rule must be an IntegerSum, FedAvgAggregation or DPAggregation")
    protocol, _ = make_config(
        n,
        d,
        bits,
        neighbors=neighbors,
        threshold=threshold,
        min_clients=floor,
        dropout_fraction=dropout_fraction,
        corrupt_fraction=corrupt_fraction,
        round_id=round_id,
        rng=rng,
        active=active,
    )
    return RoundSpec(
        protocol=protocol,
        mode=mode,
        layout=lay,
        round_index=round_index,
        encoder=encoder,
        max_weight=max_weight,
        plan=plan,
        model_digest=None if model is None else model_digest(model),
        ledger_head=ledger_head,
    )
