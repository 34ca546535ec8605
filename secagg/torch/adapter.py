"""Secure (optionally differentially private) aggregation of PyTorch model updates.

Two halves, usable separately by frameworks that own their transport, and a one-call
driver for simulations:

* :class:`SecureClient` (client side): takes the client's update (new state dict or
  delta; the layout's tensors), flattens it (:class:`~secagg.torch.flatten.UpdateLayout`),
  encodes it — with DP: clip, rotate, round and add this client's noise share
  (:class:`dp.distributed.DistributedPlan`); without DP: fixed-point encoding weighted by
  the capped example count — and drives a protocol :class:`~secagg.client.ClientSession`.
* :class:`SecureServer` (server side): receives only protocol messages
  (:class:`~secagg.server.ServerSession`), decodes the aggregate into tensors of the
  original shapes and dtypes, applies it to the global model or returns it, feeds the
  accountant and writes the ledger record; the next round's configuration carries the
  ledger head.  It never holds an individual update: only masked vectors pass through it,
  summed on arrival.
* :func:`run_round`: a whole round over the in-memory network, clients' local training
  supplied as a function.

Weighting
    With DP (:class:`DPAggregation`) every survivor's clipped update counts once and the
    server divides the noised sum by the public number of survivors (as TensorFlow
    Federated does): example-count weights inside the sum would change the sensitivity
    and reveal the total weight.  Without DP (:class:`FedAvgAggregation`) each client's
    update is multiplied by its example count, capped at ``max_weight``, inside the secure
    sum, and the weight itself is summed in one extra coordinate: the **total weight of
    the survivors is revealed** to the server, individual weights are not.

Updates are deltas against the global model the round started from (model units).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dp.distributed import DistributedPlan, plan_distributed
from dp.errors import DPError
from secagg.client import ClientSession, ClientState
from secagg.encoding import FixedPointEncoder
from secagg.errors import MessageError, SecAggError, SecAggTypeError, SecAggValueError
from secagg.messages import Message, RoundConfig, ShareDelivery, decode_message
from secagg.rand import RandomSource, RngLike, as_random_source
from secagg.rounds import (
    PlainRound,
    account_round,
    check_budget,
    cohort_floor,
    decode_weighted,
    encode_weighted,
    fedavg_encoder,
    ledger_header,
    protocol_summary,
)
from secagg.server import ServerSession
from secagg.simulate import STAGES, make_config
from secagg.torch.flatten import UpdateError, UpdateLayout
from secagg.torch.opacus_compat import SelfReportedEpsilon, strip_prefixes, unwrap

__all__ = [
    "AggregateUpdate",
    "Aggregation",
    "ClientOutcome",
    "DPAggregation",
    "FedAvgAggregation",
    "LocalResult",
    "RoundReport",
    "SecureClient",
    "SecureServer",
    "TorchRoundConfig",
    "run_round",
]

RingVector = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
_ROTATION_DOMAIN = b"secagg/torch/rotation-seed/v1"
#: Version of :meth:`TorchRoundConfig.to_dict` documents.
CONFIG_FORMAT = 1


# ----------------------------------------------------------------------------- aggregation rules


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
        for name in ("clip_norm", "noise_multiplier"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise SecAggValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.mechanism not in ("discrete_gaussian", "skellam"):
            raise SecAggValueError(f"mechanism must be 'discrete_gaussian' or 'skellam', got {self.mechanism!r}")
        if not 0.0 < self.modular_clip_prob < 1.0:
            raise SecAggValueError("modular_clip_prob must be in (0, 1)")


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
    """

    bound: float = 1.0
    max_weight: int = 1000
    bits: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.bound, bool) or not isinstance(self.bound, (int, float)) or not self.bound > 0:
            raise SecAggValueError(f"bound must be a number > 0, got {self.bound!r}")
        if not math.isfinite(self.bound):
            raise SecAggValueError("bound must be finite")
        if isinstance(self.max_weight, bool) or not isinstance(self.max_weight, int) or self.max_weight < 1:
            raise SecAggValueError(f"max_weight must be an int >= 1, got {self.max_weight!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 64:
            raise SecAggValueError(f"bits must be an int in [2, 64], got {self.bits!r}")


Aggregation = DPAggregation | FedAvgAggregation


# ----------------------------------------------------------------------------- round config


@dataclass(frozen=True)
class TorchRoundConfig:
    """Everything a client needs for one round (all public).

    Attributes:
        round_index: 0, 1, ... within the server's run.
        protocol: the protocol's :class:`~secagg.messages.RoundConfig` (its ``d`` and ``bits``
            are the encoded vector's).
        layout_fingerprint: :meth:`UpdateLayout.fingerprint` of the round's layout.
        aggregation: the :class:`DPAggregation` or :class:`FedAvgAggregation` rule.
        plan: the distributed-DP plan (DP only).
        encoder: the fixed-point encoder (FedAvg only).
        rotation_seed: public seed of the DP rotation (derived from the round id).
        ledger_head: ``"COUNT:HASH"`` of the privacy ledger before this round (None
            without a ledger); clients keep it to detect a later truncation or rewrite.
    """

    round_index: int
    protocol: RoundConfig
    layout_fingerprint: str
    aggregation: Aggregation
    plan: DistributedPlan | None = None
    encoder: FixedPointEncoder | None = None
    rotation_seed: bytes = b""
    ledger_head: str | None = None

    def __post_init__(self) -> None:
        idx = self.round_index
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise SecAggValueError(f"round_index must be an int >= 0, got {idx!r}")
        if not isinstance(self.protocol, RoundConfig):
            raise SecAggTypeError(f"protocol must be a RoundConfig, got {type(self.protocol).__name__}")
        if not isinstance(self.layout_fingerprint, str) or not self.layout_fingerprint:
            raise SecAggValueError("layout_fingerprint must be a non-empty str")
        if self.ledger_head is not None and not isinstance(self.ledger_head, str):
            raise SecAggTypeError("ledger_head must be a str 'COUNT:HASH' or None")
        p, agg, plan = self.protocol, self.aggregation, self.plan
        if self.rotation_seed != _rotation_seed(p.round_id):
            raise SecAggValueError("rotation_seed must be the one derived from the protocol's round id")
        if isinstance(agg, DPAggregation):
            if not isinstance(plan, DistributedPlan) or self.encoder is not None:
                raise SecAggValueError("a DP round needs a DistributedPlan and no fixed-point encoder")
            if (plan.padded_dim, plan.bits) != (p.d, p.bits) or (
                plan.clip_norm, plan.noise_multiplier, plan.mechanism
            ) != (agg.clip_norm, agg.noise_multiplier, agg.mechanism):
                raise SecAggValueError("the DP plan does not match the protocol's d and bits or the aggregation rule")
        elif isinstance(agg, FedAvgAggregation):
            enc = self.encoder
            if plan is not None or not isinstance(enc, FixedPointEncoder):
                raise SecAggValueError("a FedAvg round needs a FixedPointEncoder and no DP plan")
            if not enc.bits == agg.bits == p.bits or enc.clip != agg.bound:
                raise SecAggValueError("the encoder does not match the protocol's bits or the aggregation rule")
        else:
            raise SecAggTypeError("aggregation must be a DPAggregation or a FedAvgAggregation")

    @property
    def dp(self) -> bool:
        """Whether this round adds distributed DP noise."""
        return isinstance(self.aggregation, DPAggregation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the public parameters, readable, plus what :meth:`from_dict` needs
        (the protocol configuration's canonical bytes in hex, the aggregation rule, the DP
        plan or the encoder, the rotation seed)."""
        agg = self.aggregation
        out: dict[str, Any] = {
            "format": CONFIG_FORMAT,
            "round": self.round_index,
            "round_id": self.protocol.round_id.hex(),
            **protocol_summary(self.protocol),
            "protocol_config": self.protocol.encode().hex(),
            "layout": self.layout_fingerprint,
            "ledger_head": self.ledger_head,
            "mode": "dp" if self.dp else "fedavg",
            "aggregation": dataclasses.asdict(agg),
            "rotation_seed": self.rotation_seed.hex(),
        }
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        if self.encoder is not None:
            out["encoder"] = {"bits": self.encoder.bits, "scale": self.encoder.scale, "clip": self.encoder.clip}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TorchRoundConfig:
        """Rebuild a configuration from :meth:`to_dict` output (e.g. received as JSON).

        Raises:
            MessageError: malformed, or any field disagrees with the others.
        """
        try:
            if not isinstance(d, Mapping) or d.get("format") != CONFIG_FORMAT:
                raise MessageError(f"not a TorchRoundConfig document of format {CONFIG_FORMAT}")
            protocol = decode_message(bytes.fromhex(d["protocol_config"]), RoundConfig)
            assert isinstance(protocol, RoundConfig)
            rule = DPAggregation if d["mode"] == "dp" else FedAvgAggregation
            enc = d.get("encoder")
            cfg = cls(
                round_index=d["round"],
                protocol=protocol,
                layout_fingerprint=d["layout"],
                aggregation=rule(**d["aggregation"]),
                plan=None if d.get("plan") is None else DistributedPlan.from_dict(d["plan"]),
                encoder=None if enc is None else FixedPointEncoder(enc["bits"], enc["scale"], enc["clip"]),
                rotation_seed=bytes.fromhex(d["rotation_seed"]),
                ledger_head=d["ledger_head"],
            )
        except MessageError:
            raise
        except (SecAggError, DPError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"malformed round configuration: {exc}") from exc
        if cfg.to_dict() != dict(d):
            raise MessageError("the round configuration's readable fields disagree with its parameters; refusing it")
        return cfg

    def to_json(self) -> str:
        """Canonical JSON of :meth:`to_dict` (sorted keys, no whitespace): what to send the clients."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> TorchRoundConfig:
        """Parse :meth:`to_json` output.

        Raises:
            MessageError: not JSON, or not a valid configuration (see :meth:`from_dict`).
        """
        try:
            doc = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"the round configuration is not JSON: {exc}") from exc
        return cls.from_dict(doc)


def _rotation_seed(round_id: bytes) -> bytes:
    return hashlib.sha256(_ROTATION_DOMAIN + round_id).digest()


# ----------------------------------------------------------------------------- client half


class SecureClient:
    """One client's side of one secure round (sans-I/O: you carry the messages).

    Args:
        config: the round's :class:`TorchRoundConfig`.
        client_id: protocol id, ``1..config.protocol.n``.
        layout: the round's layout (checked against ``config.layout_fingerprint``).
        rng: randomness for the protocol secrets, rounding and the DP noise share
            (default: a fresh CSPRNG; never a guessable seed in production: the noise
            share must stay secret).

    Use: ``start()`` -> send; ``receive(msg)`` -> send the reply if not None; after the
    share delivery (``receive`` returns None, :attr:`awaiting_update`), call
    :meth:`submit` with the trained model or state, then keep answering with ``receive``.
    """

    def __init__(self, config: TorchRoundConfig, client_id: int, layout: UpdateLayout, *, rng: RngLike = None) -> None:
        if not isinstance(config, TorchRoundConfig):
            raise SecAggTypeError(f"config must be a TorchRoundConfig, got {type(config).__name__}")
        if not isinstance(layout, UpdateLayout):
            raise SecAggTypeError(f"layout must be an UpdateLayout, got {type(layout).__name__}")
        if layout.fingerprint() != config.layout_fingerprint:
            raise SecAggValueError(
                "this client's layout differs from the round's (different model, dtype or tensor selection); "
                "build it from the global model the server sent"
            )
        self._config = config
        self._layout = layout
        self._rng: RandomSource = as_random_source(rng)
        self._session = ClientSession(config.protocol, client_id, self._rng)
        self.ledger_head = config.ledger_head
        self.self_reported: SelfReportedEpsilon | None = None

    @property
    def client_id(self) -> int:
        """Protocol id."""
        return self._session.client_id

    @property
    def session(self) -> ClientSession:
        """The underlying protocol session."""
        return self._session

    @property
    def awaiting_update(self) -> bool:
        """True after the share delivery, until :meth:`submit`."""
        return self._session.state is ClientState.AWAIT_INPUT

    def start(self) -> Message:
        """Stage 1 message (advertise keys)."""
        return self._session.start()

    def receive(self, message: Message | bytes | bytearray | memoryview) -> Message | None:
        """Consume one server message; return the reply to send (or None)."""
        return self._session.receive(message)

    def _state(self, update: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        lay = self._layout
        if isinstance(update, nn.Module):
            state: Mapping[str, torch.Tensor] = unwrap(update).state_dict()
        elif isinstance(update, Mapping):
            state = update
        else:
            raise UpdateError(
                f"client {self.client_id}: update must be an nn.Module or a state dict, got {type(update).__name__}",
                client=self.client_id,
                reason="type",
            )
        known = set(lay.names) | lay.ignored
        if any(k not in known for k in state):
            state = strip_prefixes(state)  # opacus' "_module." wrapper names
        return state

    def encode(
        self,
        update: nn.Module | Mapping[str, torch.Tensor],
        *,
        base: Mapping[str, torch.Tensor] | None = None,
        num_examples: int | None = None,
    ) -> RingVector:
        """Flatten and encode ``update`` into the round's ring (no protocol state changes).

        Args:
            update: the trained local model (opacus wrappers are unwrapped) or a state dict,
                or a delta (then ``base=None``).
            base: the global state the client started from; the update is then
                ``update - base``.  ``None``: ``update`` already is a delta.
            num_examples: local example count (FedAvg weight, capped at ``max_weight``;
                required without DP, ignored with DP).

        Raises:
            UpdateError: the update does not fit the layout (names the client and tensor).
            dp.errors.DPError: the DP pipeline failed (e.g. conditional rounding hit its
                retry cap); treat the client like a rejected one.
        """
        cid = self.client_id
        state = self._state(update)
        if base is None:
            vec = self._layout.flatten(state, client=cid, dtype=np.float64)
        else:
            vec = self._layout.flatten_delta(state, base, client=cid, dtype=np.float64)
        cfg = self._config
        if cfg.plan is not None:
            out: RingVector = cfg.plan.encode(vec, cfg.rotation_seed, rng=self._rng)
            return out
        agg = cfg.aggregation
        assert isinstance(agg, FedAvgAggregation) and cfg.encoder is not None
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
            raise UpdateError(
                f"client {cid}: num_examples must be an int >= 0 for FedAvg weighting, got {num_examples!r}",
                client=cid,
                reason="type",
            )
        return encode_weighted(cfg.encoder, vec, min(int(num_examples), agg.max_weight), self._rng)

    def submit(
        self,
        update: nn.Module | Mapping[str, torch.Tensor],
        *,
        base: Mapping[str, torch.Tensor] | None = None,
        num_examples: int | None = None,
    ) -> Message | None:
        """Encode ``update`` (see :meth:`encode`) and hand it to the protocol session.

        Returns:
            the masked input to send (after the share delivery), or None (before it).

        Raises:
            UpdateError: the update is rejected; the session is unchanged and this client
                simply stays silent (the server counts it as a dropout).
        """
        ring = self.encode(update, base=base, num_examples=num_examples)
        return self._session.provide_input(ring)


# ----------------------------------------------------------------------------- server half


@dataclass(frozen=True, eq=False)
class AggregateUpdate:
    """Decoded result of one round (public: a function of the aggregate only).

    Attributes:
        round_index: the round.
        mean: the averaged update as a flat float64 vector (model units, layout order):
            with DP the noised sum divided by the number of survivors; without DP the
            weighted sum divided by the total weight.
        tensors: ``mean`` as tensors of the layout's shapes and dtypes.
        survivors: protocol ids whose input is in the sum.
        dropped: per protocol stage, ids that went silent or were excluded.
        total_weight: survivors' summed (capped) weights (FedAvg; revealed) or the
            survivor count (DP).
        noise: the round's :class:`dp.distributed.NoiseReport` (DP only).
        privacy: the accountant's figures for this round (DP with a tracker), else None.
        ledger_head: the ledger head after this round's record (None without a ledger).
    """

    round_index: int
    mean: npt.NDArray[np.float64]
    tensors: dict[str, torch.Tensor]
    survivors: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    total_weight: int
    noise: Any = None
    privacy: Any = None
    ledger_head: str | None = None


class SecureServer:
    """The server's side of a run of secure rounds over one model layout.

    Args:
        layout: the update layout (build it from the global model).
        aggregation: :class:`DPAggregation` or :class:`FedAvgAggregation`.
        dropout_fraction: tolerated dropouts (threat model of the SecAgg+ graph).
        corrupt_fraction: tolerated clients colluding with the server.
        neighbors: None (SecAgg+ with k from the threat model), an int k, or ``"all"``.
        threshold: Shamir threshold t; None = the safe default for the graph.
        tracker: a privacy accountant fed every DP round (``dp.tracker.PrivacyTracker``).
        ledger: a :class:`dp.ledger.Ledger` receiving one record per completed round.
        sampling_rate: fraction of the population sampled per round (for the release
            figure's amplification), if known.
        rng: randomness for round ids (default: a fresh CSPRNG).

    What it holds: the layout, the public parameters, and during a round one
    :class:`~secagg.server.ServerSession` whose running sum mixes masked vectors; never
    an individual update.
    """

    def __init__(
        self,
        layout: UpdateLayout,
        aggregation: Aggregation,
        *,
        dropout_fraction: float = 0.1,
        corrupt_fraction: float = 0.0,
        neighbors: int | str | None = None,
        threshold: int | None = None,
        tracker: Any = None,
        ledger: Any = None,
        sampling_rate: float | None = None,
        rng: RngLike = None,
    ) -> None:
        if not isinstance(layout, UpdateLayout):
            raise SecAggTypeError(f"layout must be an UpdateLayout, got {type(layout).__name__}")
        if not isinstance(aggregation, (DPAggregation, FedAvgAggregation)):
            raise SecAggTypeError("aggregation must be a DPAggregation or a FedAvgAggregation")
        if not 0.0 <= dropout_fraction < 1.0 or not 0.0 <= corrupt_fraction < 1.0:
            raise SecAggValueError("dropout_fraction and corrupt_fraction must be in [0, 1)")
        if sampling_rate is not None and not 0.0 < sampling_rate <= 1.0:
            raise SecAggValueError("sampling_rate must be in (0, 1]")
        if tracker is not None and not hasattr(tracker, "record_round"):
            raise SecAggTypeError("tracker must be a dp.tracker.PrivacyTracker")
        if ledger is not None and not hasattr(ledger, "append"):
            raise SecAggTypeError("ledger must be a dp.ledger.Ledger")
        if isinstance(aggregation, DPAggregation) and ledger is not None and tracker is None:
            raise SecAggValueError("a DP run's ledger records epsilons: pass tracker=PrivacyTracker(...) too")
        self._layout = layout
        self._agg = aggregation
        self._dropout = float(dropout_fraction)
        self._corrupt = float(corrupt_fraction)
        self._neighbors = neighbors
        self._threshold = threshold
        self._tracker = tracker
        self._ledger = ledger
        self._sampling_rate = sampling_rate
        self._rng = as_random_source(rng)
        self._round = 0
        self._config: TorchRoundConfig | None = None
        self._session: ServerSession | None = None
        self._plans: dict[int, tuple[DistributedPlan, int, int]] = {}
        self.last: AggregateUpdate | None = None

    # -- properties -----------------------------------------------------------------------
    @property
    def layout(self) -> UpdateLayout:
        """The round's layout (public)."""
        return self._layout

    @property
    def aggregation(self) -> Aggregation:
        """The aggregation rule."""
        return self._agg

    @property
    def config(self) -> TorchRoundConfig | None:
        """The current round's configuration (None before :meth:`new_round`)."""
        return self._config

    @property
    def session(self) -> ServerSession | None:
        """The current protocol session."""
        return self._session

    @property
    def round_index(self) -> int:
        """Index the next (or current) round gets."""
        return self._round

    @property
    def ledger_head(self) -> str | None:
        """The ledger's current head ``"COUNT:HASH"`` (None without a ledger)."""
        return None if self._ledger is None else str(self._ledger.head_for_clients())

    def attach_ledger(self, ledger: Any) -> None:
        """Record every following round in ``ledger`` (a :class:`dp.ledger.Ledger`, e.g.
        created with :meth:`ledger_header`)."""
        if not hasattr(ledger, "append") or not hasattr(ledger, "head_for_clients"):
            raise SecAggTypeError("ledger must be a dp.ledger.Ledger")
        if isinstance(self._agg, DPAggregation) and self._tracker is None:
            raise SecAggValueError("a DP run's ledger records epsilons: create the server with a tracker")
        self._ledger = ledger

    # -- round set-up ---------------------------------------------------------------------
    def _dp_plan(self, n: int) -> tuple[DistributedPlan, int, int]:
        """(plan, cohort floor, colluders) for rounds of ``n`` clients (cached)."""
        if n in self._plans:
            return self._plans[n]
        agg = self._agg
        assert isinstance(agg, DPAggregation)
        m, c = cohort_floor(
            n, dropout_fraction=self._dropout, corrupt_fraction=self._corrupt, min_clients=agg.min_clients
        )
        plan = plan_distributed(
            clients_expected=n,
            min_clients=m,
            colluders=c,
            dim=self._layout.size,
            clip_norm=agg.clip_norm,
            noise_multiplier=agg.noise_multiplier,
            mechanism=agg.mechanism,
            bits=agg.bits,
            modular_clip_prob=agg.modular_clip_prob,
        )
        self._plans[n] = (plan, m, c)
        return self._plans[n]

    def new_round(self, n: int) -> TorchRoundConfig:
        """Start a round for ``n`` clients (protocol ids 1..n); return the configuration to
        send them.  A round still in progress is abandoned (its session is dropped).

        Raises:
            HeadroomError: FedAvg weights/bound cannot fit the ring for ``n`` clients.
            dp.errors.DPValueError: no DP plan fits (the message says what would).
            UnsafeParametersError: the cohort is too small for the threat model.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 3:
            raise SecAggValueError(f"a round needs an int n >= 3 clients, got {n!r}")
        rid = self._rng.bytes(16)
        plan: DistributedPlan | None = None
        encoder: FixedPointEncoder | None = None
        if isinstance(self._agg, DPAggregation):
            plan, m, _c = self._dp_plan(n)
            d, bits, floor = plan.padded_dim, plan.bits, m
            # refuse the round now if even its worst accepted outcome (the floor) could not be recorded
            worst = plan.noise_report(m)
            check_budget(self._tracker, worst, round_index=self._round, sampling_rate=self._sampling_rate)
        else:
            agg = self._agg
            encoder = fedavg_encoder(n, agg.bits, agg.bound, agg.max_weight)  # HeadroomError before encoding
            d, bits, floor = self._layout.size + 1, agg.bits, None
        protocol, _params = make_config(
            n,
            d,
            bits,
            neighbors=self._neighbors,
            threshold=self._threshold,
            min_clients=floor,
            dropout_fraction=self._dropout,
            corrupt_fraction=self._corrupt,
            round_id=rid,
        )
        cfg = TorchRoundConfig(
            round_index=self._round,
            protocol=protocol,
            layout_fingerprint=self._layout.fingerprint(),
            aggregation=self._agg,
            plan=plan,
            encoder=encoder,
            rotation_seed=_rotation_seed(rid),
            ledger_head=self.ledger_head,
        )
        self._config = cfg
        self._session = ServerSession(protocol, auto_close=False)
        return cfg

    # -- protocol passthrough --------------------------------------------------------------
    def _need_session(self) -> ServerSession:
        if self._session is None:
            raise SecAggValueError("no round in progress; call new_round(n) first")
        return self._session

    def receive(
        self, message: Message | bytes | bytearray | memoryview, *, sender: int | None = None
    ) -> dict[int, Message]:
        """Consume one client protocol message (see :meth:`ServerSession.receive`)."""
        if not isinstance(message, (Message, bytes, bytearray, memoryview)):
            raise SecAggTypeError("the server accepts protocol messages (or their bytes) only")
        return self._need_session().receive(message, sender=sender)

    def close_stage(self) -> dict[int, Message]:
        """Close the current protocol stage; return the outbox."""
        return self._need_session().close_stage()

    # -- result ---------------------------------------------------------------------------
    def finish(
        self,
        *,
        self_reported: Sequence[SelfReportedEpsilon] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> AggregateUpdate:
        """Decode the finished round's aggregate, account for it and record it.

        Args:
            self_reported: clients' example-level epsilons (recorded as self-reported in
                the ledger, never composed into the server's accounting).
            extra: further JSON fields for the ledger record (not the record's own keys).

        Raises:
            SecAggValueError: the round has not completed, or ``extra`` would replace a
                field of the record (nothing recorded; fix it and call again).
            dp.errors.BudgetExceededError: the round would exceed the tracker's budget
                (nothing recorded).
        """
        session = self._need_session()
        cfg = self._config
        res = session.result
        if res is None or cfg is None:
            raise SecAggValueError("the round has not completed; close its stages first")
        survivors = tuple(res.survivors)
        m = len(survivors)
        fields: dict[str, Any] = {}
        if self_reported:
            fields["self_reported"] = {
                r.client: r.epsilon if math.isfinite(r.epsilon) else None for r in self_reported
            }
            fields["self_reported_detail"] = [r.to_dict() for r in self_reported]
        if extra:
            clash = sorted(set(extra) & set(fields))
            if clash:
                raise SecAggValueError(f"extra fields {clash} are the self-reported epsilons' own; rename them")
            fields.update(extra)
        if cfg.plan is not None:
            total_sum = cfg.plan.decode(res.aggregate, cfg.rotation_seed)
            mean = np.asarray(total_sum, dtype=np.float64) / m
            weight = m
        else:
            assert cfg.encoder is not None
            mean, weight = decode_weighted(cfg.encoder, res.aggregate)
        tensors = self._layout.unflatten(mean)
        dropped = {k: tuple(v) for k, v in res.dropped.items()}
        plain = None
        if isinstance(cfg.aggregation, FedAvgAggregation):
            plain = PlainRound("fedavg", cfg.aggregation.bound, weight, cfg.aggregation.max_weight)
        acct = account_round(
            self._tracker,
            self._ledger,
            round_index=cfg.round_index,
            protocol=cfg.protocol,
            survivors=m,
            dropped=dropped,
            layout=cfg.layout_fingerprint,
            ledger_head_sent=cfg.ledger_head,
            plan=cfg.plan,
            sampling_rate=self._sampling_rate,
            plain=plain,
            extra=fields,
        )
        out = AggregateUpdate(
            round_index=cfg.round_index,
            mean=mean,
            tensors=tensors,
            survivors=survivors,
            dropped=dropped,
            total_weight=weight,
            noise=acct.noise,
            privacy=acct.privacy,
            ledger_head=acct.ledger_head,
        )
        self.last = out
        self._round += 1
        self._session = None
        return out

    def ledger_header(self, n: int, *, delta: float | None = None, population: int | None = None) -> dict[str, Any]:
        """A ledger header describing this run for cohorts of ``n`` clients (pass it to
        ``dp.ledger.Ledger.create``; see :func:`secagg.rounds.ledger_header`).  ``delta``
        defaults to the tracker's."""
        agg = self._agg
        aggregation = None
        if isinstance(agg, FedAvgAggregation):
            aggregation = {
                "mode": "fedavg",
                "bound": agg.bound,
                "max_weight": agg.max_weight,
                "bits": agg.bits,
                "total_weight_revealed": True,
            }
        return ledger_header(
            self._tracker,
            planned_clients=n,
            dropout_fraction=self._dropout,
            corrupt_fraction=self._corrupt,
            layout={"fingerprint": self._layout.fingerprint(), "size": self._layout.size,
                    "tensors": len(self._layout.specs)},
            plan=self._dp_plan(n)[0] if aggregation is None else None,
            aggregation=aggregation,
            delta=delta,
            population=population,
        )

    def apply(self, model: nn.Module, update: AggregateUpdate | None = None, *, server_lr: float = 1.0) -> None:
        """``model += server_lr * mean`` for the layout's tensors (in place; validated first)."""
        upd = update if update is not None else self.last
        if upd is None:
            raise SecAggValueError("no aggregate to apply; finish a round first")
        self._layout.add_to(model, upd.mean, alpha=server_lr)


# ----------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class LocalResult:
    """What a ``train_fn`` may return instead of an example count.

    Attributes:
        num_examples: local examples used (FedAvg weight).
        model: the trained model if it is not the one passed in (e.g. an opacus wrapper of
            a fixed copy); opacus' ``_module.`` names are mapped.
        self_reported: the client's example-level epsilon (opacus), recorded as such.
    """

    num_examples: int
    model: nn.Module | None = None
    self_reported: SelfReportedEpsilon | None = None


#: ``train_fn(client, model) -> examples | LocalResult``: train ``model`` (a copy of the
#: global model) in place.
TrainFn = Callable[[Any, nn.Module], "int | LocalResult"]


@dataclass(frozen=True)
class ClientOutcome:
    """What happened to one client in :func:`run_round`: ``status`` is ``"survived"``,
    ``"dropped"`` (silent at ``stage``) or ``"rejected"`` (bad update: ``error``)."""

    client: Any
    protocol_id: int
    status: str
    stage: str | None = None
    error: str | None = None


@dataclass(frozen=True, eq=False)
class RoundReport:
    """Result of :func:`run_round`.

    Attributes:
        update: the decoded :class:`AggregateUpdate` (already applied to the model if
            ``apply=True``).
        config: the round's configuration.
        clients: per client, what happened.
        rejected: client -> the :class:`UpdateError` message, for rejected updates.
        bytes_up / bytes_down: protocol bytes per stage (real encodings).
        timings: seconds: ``train`` (local training, all clients), ``encode`` (flatten +
            DP/fixed-point encoding), ``client`` (protocol client work), ``server``
            (protocol server work), ``decode``.
    """

    update: AggregateUpdate
    config: TorchRoundConfig
    clients: tuple[ClientOutcome, ...]
    rejected: dict[Any, str]
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    timings: dict[str, float]

    @property
    def plaintext_bytes(self) -> int:
        """Upload of one float32 update in the clear, for comparison."""
        return 4 * self.update.mean.size

    @property
    def secure_overhead_seconds(self) -> float:
        """Time spent on encoding, the protocol and decoding (everything but training)."""
        t = self.timings
        return t["encode"] + t["client"] + t["server"] + t["decode"]


def _check_dropouts(dropouts: Mapping[str, Iterable[Any]] | None, pos: Mapping[Any, int]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {s: set() for s in STAGES}
    if dropouts is None:
        return out
    if not isinstance(dropouts, Mapping):
        raise SecAggTypeError("dropouts must map a stage name to client identifiers")
    unknown = [s for s in dropouts if s not in STAGES]
    if unknown:
        raise SecAggValueError(f"unknown dropout stage(s) {unknown}; use {list(STAGES)}")
    for stage, who in dropouts.items():
        for c in who:
            if c not in pos:
                raise SecAggValueError(f"dropouts[{stage!r}] names {c!r}, which is not in this round's clients")
            out[stage].add(pos[c])
    return out


def run_round(
    global_model: nn.Module,
    clients: Sequence[Any],
    train_fn: TrainFn,
    *,
    server: SecureServer,
    dropouts: Mapping[str, Iterable[Any]] | None = None,
    apply: bool = True,
    server_lr: float = 1.0,
    rng: RngLike = None,
) -> RoundReport:
    """Run one secure round over the in-memory network (a simulation).

    Each client (its identifier is passed to ``train_fn``) gets protocol id ``i + 1`` in the
    order of ``clients``.  When its share delivery arrives it trains a copy of
    ``global_model`` with ``train_fn``, then :class:`SecureClient` encodes the delta and
    masks it.  A rejected update (:class:`UpdateError`) or an exception of type
    :class:`~secagg.errors.SecAggError` while encoding makes that client silent: a dropout.

    Args:
        global_model: the model; updated in place (``+= server_lr * mean``) when ``apply``.
        clients: this round's cohort (at least 3), any hashable identifiers.
        train_fn: ``train_fn(client, model) -> examples | LocalResult``.
        server: the :class:`SecureServer` (keeps layout, accounting and ledger across rounds).
        dropouts: protocol stage name -> clients silent from that stage on (simulation).
        apply: add the mean update to ``global_model``.
        server_lr: server learning rate for ``apply``.
        rng: randomness of the clients (protocol secrets, rounding, DP noise).

    Raises:
        ProtocolAbort: too few clients survived (nothing was revealed; the model is unchanged).
    """
    ids = list(clients)
    if len(set(ids)) != len(ids):
        raise SecAggValueError("client identifiers must be distinct")
    pos = {c: i + 1 for i, c in enumerate(ids)}
    who = {i + 1: c for i, c in enumerate(ids)}
    drop = _check_dropouts(dropouts, pos)
    src = as_random_source(rng)
    layout = server.layout
    with torch.no_grad():
        base = {k: v.detach().clone() for k, v in layout.extract(global_model, client="global").items()}
    config = server.new_round(len(ids))
    up = dict.fromkeys(STAGES, 0)
    down = dict.fromkeys(STAGES, 0)
    times = {"train": 0.0, "encode": 0.0, "client": 0.0, "server": 0.0, "decode": 0.0}
    silent_at: dict[int, str] = {}
    rejected: dict[Any, str] = {}
    reports: list[SelfReportedEpsilon] = []
    sessions: dict[int, SecureClient] = {}

    def to_server(stage: str, msg: Message) -> None:
        data = msg.encode()
        up[stage] += len(data)
        t0 = time.perf_counter()
        server.receive(data)
        times["server"] += time.perf_counter() - t0

    st = STAGES[0]
    for pid in range(1, len(ids) + 1):
        if pid in drop[st]:
            silent_at[pid] = st
            continue
        t0 = time.perf_counter()
        sc = SecureClient(config, pid, layout, rng=src.bytes(32))
        msg = sc.start()
        times["client"] += time.perf_counter() - t0
        sessions[pid] = sc
        to_server(st, msg)
    t0 = time.perf_counter()
    outbox = server.close_stage()
    times["server"] += time.perf_counter() - t0

    for st in STAGES[1:]:
        for pid, msg in outbox.items():
            data = msg.encode()
            down[st] += len(data)
            if pid not in sessions or pid in silent_at:
                continue
            if pid in drop[st]:
                silent_at[pid] = st
                continue
            sc = sessions[pid]
            t0 = time.perf_counter()
            reply = sc.receive(data)
            times["client"] += time.perf_counter() - t0
            if isinstance(msg, ShareDelivery) and reply is None and sc.awaiting_update:
                reply = _train_and_submit(
                    sc,
                    client=who[pid],
                    global_model=global_model,
                    base=base,
                    train_fn=train_fn,
                    times=times,
                    rejected=rejected,
                    reports=reports,
                )
                if reply is None:
                    silent_at[pid] = st
                    continue
            if reply is not None:
                to_server(st, reply)
        t0 = time.perf_counter()
        outbox = server.close_stage()
        times["server"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    update = server.finish(self_reported=reports)
    if apply:
        server.apply(global_model, update, server_lr=server_lr)
    times["decode"] += time.perf_counter() - t0
    survivors = set(update.survivors)
    outcomes = []
    for pid in range(1, len(ids) + 1):
        c = who[pid]
        if pid in survivors:
            outcomes.append(ClientOutcome(c, pid, "survived"))
        elif c in rejected:
            outcomes.append(ClientOutcome(c, pid, "rejected", STAGES[2], rejected[c]))
        else:
            stage = silent_at.get(pid) or next((s for s, v in update.dropped.items() if pid in v), None)
            outcomes.append(ClientOutcome(c, pid, "dropped", stage))
    return RoundReport(
        update=update,
        config=config,
        clients=tuple(outcomes),
        rejected=rejected,
        bytes_up=up,
        bytes_down=down,
        timings=times,
    )


def _train_and_submit(
    sc: SecureClient,
    *,
    client: Any,
    global_model: nn.Module,
    base: Mapping[str, torch.Tensor],
    train_fn: TrainFn,
    times: dict[str, float],
    rejected: dict[Any, str],
    reports: list[SelfReportedEpsilon],
) -> Message | None:
    """Client side of the masked-input stage in the simulation: train, encode, mask."""
    t0 = time.perf_counter()
    local = copy.deepcopy(global_model)
    result = train_fn(client, local)
    times["train"] += time.perf_counter() - t0
    if isinstance(result, LocalResult):
        n_ex, model = result.num_examples, (result.model if result.model is not None else local)
        if result.self_reported is not None:
            reports.append(result.self_reported)
    else:
        n_ex, model = result, local
    t0 = time.perf_counter()
    try:
        ring = sc.encode(model, base=base, num_examples=n_ex)
    except (SecAggError, DPError) as exc:  # a bad update, or the DP pipeline refused it
        rejected[client] = str(exc)
        times["encode"] += time.perf_counter() - t0
        return None
    t1 = time.perf_counter()
    times["encode"] += t1 - t0
    reply = sc.session.provide_input(ring)
    times["client"] += time.perf_counter() - t1
    return reply
