"""Server side of secagg on Flower: one secure round over a Flower :class:`~flwr.serverapp.Grid`.

:class:`SecAggServer` drives secagg's sans-I/O :class:`~secagg.server.ServerSession`
through Flower Messages: every stage is one message to each node (type
``"train.secagg"``) whose payload is the protocol message's canonical bytes, and one
reply per node, collected until everyone answered or the stage deadline passed; nodes
silent at the deadline (or answering with an error) are dropouts and the stage is
closed.  The masked-input stage also carries the global arrays (and the train config):
the client trains there.  The decoded aggregate comes back as a Flower
:class:`~flwr.app.ArrayRecord`, the round is written to the privacy ledger and fed to
the accountant.  :class:`SecAggFedAvg` plugs this into the Message-API
:class:`~flwr.serverapp.strategy.FedAvg` (sampling, evaluation, ``start``).

This module is the transport edge: it reads a clock and sleeps between polls of the
SuperLink (``poll_interval``); the protocol objects it drives do neither.

Threat model on Flower: the SuperLink and the ServerApp are the server.  They see the
protocol messages (public keys, encrypted shares, masked vectors, revealed shares of
the round's secrets as the protocol allows) and, as the only decoded output, the sum
(``integer``), the weighted mean and the survivors' total weight (``fedavg``), or the
noised mean (``dp``); never an individual update.  An honest-but-curious server learns
nothing more; an actively malicious one can still mount the attacks documented in
docs/flower.md (model inconsistency, Sybil nodes beyond the ``colluders`` bound).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.app import Message as FlowerMessage
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from dp.distributed import DistributedPlan, Mechanism, plan_distributed
from secagg.encoding import FixedPointEncoder
from secagg.errors import MessageError, ProtocolAbort, ProtocolError, SecAggError, SecAggTypeError, SecAggValueError
from secagg.flower._codec import (
    ARRAYS_KEY,
    CONTROL_KEY,
    MESSAGE_TYPE,
    MODES,
    PAYLOAD_KEY,
    TRAIN_CONFIG_KEY,
    RoundSpec,
    layout_of,
    pack_payload,
    unpack_payload,
)
from secagg.messages import (
    Abort,
    AdvertiseKeys,
    MaskedInput,
    Message,
    RoundConfig,
    ShareDelivery,
    ShareKeys,
    Stage,
    UnmaskShares,
    decode_message,
)
from secagg.rand import RngLike, as_random_source
from secagg.rounds import (
    PlainRound,
    RoundAccount,
    account_round,
    check_budget,
    cohort_floor,
    fedavg_encoder,
    ledger_header,
    protocol_summary,
)
from secagg.server import ServerSession
from secagg.simulate import STAGES, make_config

__all__ = [
    "CountingGrid",
    "SecAggConfig",
    "SecAggFedAvg",
    "SecAggServer",
    "SecureRoundAbort",
    "SecureRoundResult",
    "StageReport",
    "run_secure_round",
]

log = logging.getLogger("secagg.flower")

_REPLY_TYPE: dict[str, type[Message]] = {
    Stage.ADVERTISE_KEYS.value: AdvertiseKeys,
    Stage.SHARE_KEYS.value: ShareKeys,
    Stage.MASKED_INPUT.value: MaskedInput,
    Stage.UNMASKING.value: UnmaskShares,
}


# ----------------------------------------------------------------------------- configuration


def _pos(name: str, v: object, *, integer: bool = False, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise SecAggTypeError(f"{name} must be {'an int' if integer else 'a number'}, got {v!r}")
    if not math.isfinite(v) or v <= 0:
        raise SecAggValueError(f"{name} must be finite and > 0, got {v!r}")


@dataclass(frozen=True)
class SecAggConfig:
    """How secure rounds are run on Flower (all public).

    Attributes:
        mode: ``"integer"`` (exact sum mod 2^bits of integer arrays), ``"fedavg"``
            (weighted mean of float updates, fixed point; reveals the survivors' total
            weight) or ``"dp"`` (distributed DP: each client adds a noise share).
        bits: ring width for ``integer`` and ``fedavg`` (2..64).
        bound: ``fedavg``: coordinate clip of each update (model units).
        max_weight: ``fedavg``: cap on a client's example count (its weight).
        clip_norm: ``dp``: L2 clip of each update (model units).
        noise_multiplier: ``dp``: guaranteed noise std / L2 sensitivity at the cohort floor.
        mechanism: ``dp``: ``"discrete_gaussian"`` or ``"skellam"``.
        dp_bits: ``dp``: ring width (None: the planner chooses).
        modular_clip_prob: ``dp``: allowed probability that the noised sum wraps.
        neighbors: None (SecAgg+ with k from the threat model), an int k, or ``"all"``.
        threshold: Shamir threshold t (None: the safe default for the graph).
        min_clients: cohort floor: no sum over fewer survivors (None: the protocol's
            default; in ``dp`` also where the noise is calibrated, default
            ``max(c + 2, floor(n (1 - 2 dropout_fraction)))``).
        dropout_fraction: dropouts the graph and threshold must tolerate.
        corrupt_fraction: clients assumed to collude with the server.
        stage_timeout: seconds each stage waits for replies; silent nodes are dropouts.
        poll_interval: seconds between polls of the SuperLink for replies.
        sampling_rate: fraction of the population sampled per round (accounting).
    """

    mode: str = "fedavg"
    bits: int = 32
    bound: float = 1.0
    max_weight: int = 1000
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    mechanism: str = "discrete_gaussian"
    dp_bits: int | None = None
    modular_clip_prob: float = 1e-6
    neighbors: int | str | None = None
    threshold: int | None = None
    min_clients: int | None = None
    dropout_fraction: float = 0.1
    corrupt_fraction: float = 0.0
    stage_timeout: float = 120.0
    poll_interval: float = 0.2
    sampling_rate: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SecAggValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 64:
            raise SecAggValueError(f"bits must be an int in [2, 64], got {self.bits!r}")
        for name in ("bound", "clip_norm", "noise_multiplier", "stage_timeout", "poll_interval"):
            _pos(name, getattr(self, name))
        _pos("max_weight", self.max_weight, integer=True)
        if self.mechanism not in ("discrete_gaussian", "skellam"):
            raise SecAggValueError(f"mechanism must be 'discrete_gaussian' or 'skellam', got {self.mechanism!r}")
        _pos("dp_bits", self.dp_bits, integer=True, allow_none=True)
        _pos("min_clients", self.min_clients, integer=True, allow_none=True)
        _pos("threshold", self.threshold, integer=True, allow_none=True)
        if not 0.0 < self.modular_clip_prob < 1.0:
            raise SecAggValueError("modular_clip_prob must be in (0, 1)")
        for name in ("dropout_fraction", "corrupt_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise SecAggValueError(f"{name} must be in [0, 1), got {v!r}")
        if self.sampling_rate is not None and not 0.0 < self.sampling_rate <= 1.0:
            raise SecAggValueError("sampling_rate must be in (0, 1]")
        if self.neighbors is not None and self.neighbors != "all":
            _pos("neighbors", self.neighbors, integer=True)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StageReport:
    """One closed stage, as passed to ``on_stage`` hooks.

    Attributes:
        stage: the stage name (``"advertise_keys"``, ``"share_keys"``, ``"masked_input"``,
            ``"unmasking"``).
        answered: node ids whose reply was accepted.
        silent: node ids awaited that did not answer in time, answered with an error or
            sent an unacceptable reply (dropouts of this stage).
        errors: node id -> reason, for error replies and rejected replies.
        seconds: wall time of the stage (send, wait, server work).
    """

    stage: str
    answered: tuple[int, ...]
    silent: tuple[int, ...]
    errors: dict[int, str]
    seconds: float


@dataclass(frozen=True, eq=False)
class SecureRoundResult:
    """Outcome of one secure round (public: a function of the aggregate only).

    Attributes:
        round_index: 0, 1, ... within the :class:`SecAggServer`.
        round_id: the protocol round id (hex).
        mode: the aggregation mode.
        arrays: ``fedavg``/``dp``: the new global arrays (global + mean update; arrays
            outside the layout unchanged); ``integer``: the exact sum (uint64 arrays).
        update: ``fedavg``/``dp``: the mean update (float64 arrays); None in ``integer``.
        nodes: node ids sampled (protocol id i + 1 is ``nodes[i]``).
        survivors: node ids whose input is in the sum.
        dropped: per stage, node ids that went silent (or were excluded) in that stage.
        recovered: node ids whose mask key was reconstructed (dropped after sharing keys).
        total_weight: ``fedavg``: the survivors' total (capped) weight; else the survivors.
        noise: ``dp``: the :class:`dp.distributed.NoiseReport` of the round.
        privacy: ``dp`` with a tracker: the cumulative :class:`dp.tracker.RoundEpsilon`.
        ledger_head: the ledger head after this round's record (None without a ledger).
        protocol: public protocol parameters (n, d, bits, k, t, colluders, min_clients).
        bytes_up / bytes_down: per stage, protocol payload bytes (replies / requests,
            plus the global arrays sent with the masked-input request).
        timings: per stage wall seconds, ``"total"`` and ``"server"`` (server compute).
        errors: node id -> why its reply was missing or dropped (its last such stage).
    """

    round_index: int
    round_id: str
    mode: str
    arrays: Any
    update: Any
    nodes: tuple[int, ...]
    survivors: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    recovered: tuple[int, ...]
    total_weight: int
    noise: Any = None
    privacy: Any = None
    ledger_head: str | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, int | float]:
        """Scalar summary, ready for a :class:`flwr.app.MetricRecord`."""
        out: dict[str, int | float] = {
            "secagg-sampled": len(self.nodes),
            "secagg-survivors": len(self.survivors),
            "secagg-dropouts": len(self.nodes) - len(self.survivors),
            "secagg-recovered": len(self.recovered),
            "secagg-total-weight": self.total_weight,
            "secagg-seconds": self.timings.get("total", 0.0),
            "secagg-bytes-up": sum(self.bytes_up.values()),
            "secagg-bytes-down": sum(self.bytes_down.values()),
        }
        if self.privacy is not None:
            for k in ("release_epsilon", "server_epsilon"):
                v = getattr(self.privacy, k, None)
                if isinstance(v, float) and math.isfinite(v):
                    out[f"secagg-{k.replace('_', '-')}"] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        out: dict[str, Any] = {
            "round_index": self.round_index,
            "round_id": self.round_id,
            "mode": self.mode,
            "nodes": list(self.nodes),
            "survivors": list(self.survivors),
            "dropped": {k: list(v) for k, v in self.dropped.items()},
            "recovered": list(self.recovered),
            "total_weight": self.total_weight,
            "ledger_head": self.ledger_head,
            "protocol": dict(self.protocol),
            "bytes_up": dict(self.bytes_up),
            "bytes_down": dict(self.bytes_down),
            "timings": dict(self.timings),
            "errors": {str(k): v for k, v in self.errors.items()},
        }
        if self.noise is not None:
            out["noise"] = self.noise.to_dict()
        if self.privacy is not None:
            out["privacy"] = {
                "release_epsilon": _finite(self.privacy.release_epsilon),
                "server_epsilon": _finite(self.privacy.server_epsilon),
                "delta": self.privacy.delta,
            }
        return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class SecureRoundAbort(ProtocolAbort):
    """A secure round on Flower stopped safely (nothing individual was revealed).

    Attributes:
        stage: the stage whose closing aborted the round.
        dropped: per closed stage, node ids that were silent.
        nodes: node ids sampled.
    """

    def __init__(
        self, reason: str, *, stage: str, dropped: Mapping[str, Sequence[int]], nodes: Sequence[int]
    ) -> None:
        super().__init__(reason)
        self.stage = stage
        self.dropped = {k: tuple(v) for k, v in dropped.items()}
        self.nodes = tuple(nodes)


# ----------------------------------------------------------------------------- traffic counting


def _wire_size(msg: Any) -> int:
    """Bytes of a Flower message as stored and shipped by Flower (its deflated objects)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


class CountingGrid(Grid):
    """A :class:`flwr.serverapp.Grid` wrapper counting the bytes of the Flower messages
    pushed and pulled per destination/source node (deflated objects, as Flower ships
    them; HTTP framing excluded).  Use it to compare workflows on equal terms.

    Attributes:
        sent: node id -> bytes of messages pushed to it.
        received: node id -> bytes of replies pulled from it.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}

    @property
    def run(self) -> Any:
        """The wrapped grid's run."""
        return self._grid.run

    def set_run(self, run: Any) -> None:
        """Forward to the wrapped grid."""
        self._grid.set_run(run)

    def create_message(
        self, content: Any, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> FlowerMessage:
        """A new message (Flower's ``Message`` constructor)."""
        return FlowerMessage(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Forward to the wrapped grid."""
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[FlowerMessage]) -> Iterable[str]:
        """Count, then forward."""
        msgs = list(messages)
        for m in msgs:
            nid = int(m.metadata.dst_node_id)
            self.sent[nid] = self.sent.get(nid, 0) + _wire_size(m)
        return self._grid.push_messages(msgs)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[FlowerMessage]:
        """Forward, then count."""
        got = list(self._grid.pull_messages(message_ids))
        for m in got:
            nid = int(m.metadata.src_node_id)
            self.received[nid] = self.received.get(nid, 0) + _wire_size(m)
        return got

    def send_and_receive(
        self, messages: Iterable[FlowerMessage], *, timeout: float | None = None
    ) -> Iterable[FlowerMessage]:
        """Flower's loop (push, then pull every 3 s until all replied or ``timeout``), counted."""
        ids = {i for i in self.push_messages(messages) if i}
        end = None if timeout is None else time.monotonic() + timeout
        out: list[FlowerMessage] = []
        while ids and (end is None or time.monotonic() < end):
            got = list(self.pull_messages(ids))
            out.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if ids:
                time.sleep(3)
        return out


# ----------------------------------------------------------------------------- the server


def _check_nodes(node_ids: Iterable[int]) -> list[int]:
    try:
        nodes = [int(n) for n in node_ids]
    except (TypeError, ValueError) as exc:
        raise SecAggTypeError("node_ids must be integers (Flower node ids)") from exc
    if len(set(nodes)) != len(nodes):
        raise SecAggValueError("node_ids must be distinct")
    if len(nodes) < 3:
        raise SecAggValueError(f"a secure round needs at least 3 nodes, got {len(nodes)}; wait for more nodes")
    return sorted(nodes)


def _arrays_of(arrays: Any) -> dict[str, npt.NDArray[Any]]:
    if isinstance(arrays, ArrayRecord):
        return {k: np.asarray(v.numpy()) for k, v in arrays.items()}
    if isinstance(arrays, Mapping):
        return {str(k): np.asarray(v) for k, v in arrays.items()}
    raise SecAggTypeError(
        f"arrays must be a flwr ArrayRecord or a mapping name -> ndarray, got {type(arrays).__name__}"
    )


class SecAggServer:
    """Runs secure rounds over a Flower grid and keeps what spans rounds: the round
    counter, the accountant and the ledger.

    Args:
        config: the :class:`SecAggConfig`.
        tracker: a :class:`dp.tracker.PrivacyTracker` fed every ``dp`` round (its budget,
            if any, is checked at the cohort floor before a round starts).
        ledger: a :class:`dp.ledger.Ledger` receiving one record per completed round (a
            ``dp`` ledger needs a tracker).
        rng: randomness for round ids (default: a fresh CSPRNG).
    """

    def __init__(
        self, config: SecAggConfig | None = None, *, tracker: Any = None, ledger: Any = None, rng: RngLike = None
    ) -> None:
        cfg = SecAggConfig() if config is None else config
        if not isinstance(cfg, SecAggConfig):
            raise SecAggTypeError(f"config must be a SecAggConfig, got {type(cfg).__name__}")
        if tracker is not None and not hasattr(tracker, "record_round"):
            raise SecAggTypeError("tracker must be a dp.tracker.PrivacyTracker")
        if ledger is not None and not (hasattr(ledger, "append") and hasattr(ledger, "head_for_clients")):
            raise SecAggTypeError("ledger must be a dp.ledger.Ledger")
        if cfg.mode == "dp" and ledger is not None and tracker is None:
            raise SecAggValueError("a dp ledger records epsilons: pass tracker=PrivacyTracker(...) too")
        self._cfg = cfg
        self._tracker = tracker
        self._ledger = ledger
        self._rng = as_random_source(rng)
        self._round = 0
        self.last: SecureRoundResult | None = None

    @property
    def config(self) -> SecAggConfig:
        """The configuration."""
        return self._cfg

    @property
    def round_index(self) -> int:
        """Index the next round gets."""
        return self._round

    @property
    def ledger_head(self) -> str | None:
        """The ledger head ``"COUNT:HASH"`` (None without a ledger)."""
        return None if self._ledger is None else str(self._ledger.head_for_clients())

    # -- round set-up -----------------------------------------------------------------------

    def _dp_plan(self, n: int, size: int) -> DistributedPlan:
        """The distributed-DP plan for ``n`` clients and ``size`` values, calibrated at the cohort floor."""
        cfg = self._cfg
        floor, c = cohort_floor(
            n, dropout_fraction=cfg.dropout_fraction, corrupt_fraction=cfg.corrupt_fraction, min_clients=cfg.min_clients
        )
        return plan_distributed(
            clients_expected=n,
            min_clients=floor,
            colluders=c,
            dim=size,
            clip_norm=cfg.clip_norm,
            noise_multiplier=cfg.noise_multiplier,
            mechanism=cast(Mechanism, cfg.mechanism),
            bits=cfg.dp_bits,
            modular_clip_prob=cfg.modular_clip_prob,
        )

    def plan_round(self, n: int, arrays: Any) -> tuple[RoundSpec, RoundConfig]:
        """The public spec and protocol config of the next round for ``n`` clients (no
        state changes).

        Raises:
            HeadroomError: ``fedavg`` weights and bound do not fit the ring for ``n``.
            dp.errors.DPError: no DP plan fits.
            UnsafeParametersError: the cohort is too small for the threat model.
        """
        cfg = self._cfg
        arrs = _arrays_of(arrays)
        full = layout_of(arrs)
        layout = full if cfg.mode == "integer" else tuple(s for s in full if s.is_float)
        rid = self._rng.bytes(16)
        encoder: FixedPointEncoder | None = None
        plan: DistributedPlan | None = None
        floor = cfg.min_clients
        size = sum(s.size for s in layout)
        if cfg.mode == "integer":
            bits = cfg.bits
        elif cfg.mode == "fedavg":
            bits = cfg.bits
            encoder = fedavg_encoder(n, bits, cfg.bound, cfg.max_weight)
        else:
            plan = self._dp_plan(n, size)
            floor, bits = plan.min_clients, plan.bits
        spec = RoundSpec(
            mode=cfg.mode,
            round_index=self._round,
            round_id=rid,
            layout=layout,
            bits=bits,
            encoder=encoder,
            max_weight=cfg.max_weight if cfg.mode == "fedavg" else 0,
            plan=plan,
            ledger_head=self.ledger_head,
        )
        protocol, _ = make_config(
            n,
            spec.d,
            bits,
            neighbors=cfg.neighbors,
            threshold=cfg.threshold,
            min_clients=floor,
            dropout_fraction=cfg.dropout_fraction,
            corrupt_fraction=cfg.corrupt_fraction,
            round_id=rid,
        )
        if plan is not None:  # refuse now if even the worst accepted outcome (the floor) could not be recorded
            check_budget(
                self._tracker, plan.noise_report(plan.min_clients), round_index=self._round,
                sampling_rate=cfg.sampling_rate,
            )
        return spec, protocol

    # -- the round --------------------------------------------------------------------------

    def run_round(
        self,
        grid: Any,
        node_ids: Iterable[int],
        arrays: Any,
        *,
        train_config: Any = None,
        on_stage: Callable[[StageReport], None] | None = None,
    ) -> SecureRoundResult:
        """Run one secure round over ``node_ids``.

        Args:
            grid: the ServerApp's :class:`flwr.serverapp.Grid`.
            node_ids: the nodes taking part (at least 3); protocol ids follow their order
                when sorted.
            arrays: the global model (:class:`flwr.app.ArrayRecord` or name -> ndarray);
                its float arrays are aggregated in ``fedavg``/``dp`` (sent to the clients
                with the masked-input request, to train from); in ``integer`` mode a
                template of the integer arrays to sum.
            train_config: a :class:`flwr.app.ConfigRecord` passed to the clients' training.
            on_stage: called with a :class:`StageReport` after each stage closes.

        Returns:
            The :class:`SecureRoundResult`.

        Raises:
            SecureRoundAbort: too few nodes survived a stage, or a secret could not be
                recovered; nothing individual was revealed, nothing was recorded.
            ProtocolError: a node sent a message the protocol session refused.
        """
        t_start = time.perf_counter()
        nodes = _check_nodes(node_ids)
        arrs = _arrays_of(arrays)
        if train_config is not None and not isinstance(train_config, ConfigRecord):
            raise SecAggTypeError("train_config must be a flwr ConfigRecord")
        spec, protocol = self.plan_round(len(nodes), arrs)
        node_of = {i + 1: nid for i, nid in enumerate(nodes)}
        session = ServerSession(protocol, auto_close=False)
        if isinstance(arrays, ArrayRecord):
            global_rec = arrays
        else:
            global_rec = ArrayRecord({k: _np_array(v) for k, v in arrs.items()})
        extra_down = sum(len(a.data) for a in global_rec.values())
        up = dict.fromkeys(STAGES, 0)
        down = dict.fromkeys(STAGES, 0)
        timings: dict[str, float] = {}
        server_s = 0.0
        errors: dict[int, str] = {}
        rid_hex = protocol.round_id.hex()
        group = f"secagg-{self._round}"
        log.info("secagg round %d (%s): %d nodes, mode %s, d=%d, bits=%d, k=%d, t=%d",
                 self._round, rid_hex[:8], len(nodes), spec.mode, protocol.d, protocol.bits, protocol.degree,
                 protocol.t)

        spec_json = spec.to_json()

        def control(stage: str, cid: int) -> Any:
            rec: dict[str, Any] = {"stage": stage, "round": rid_hex, "index": self._round}
            if stage == Stage.ADVERTISE_KEYS.value:
                rec.update(cid=cid, spec=spec_json)
            return ConfigRecord(rec)

        outbox: dict[int, Message] = {cid: protocol for cid in node_of}
        stage = Stage.ADVERTISE_KEYS.value
        for stage in STAGES:
            t0 = time.perf_counter()
            cache: dict[int, tuple[bytes, Any]] = {}
            out: list[tuple[int, Any]] = []
            aborts: list[Any] = []
            for cid, msg in outbox.items():
                key = id(msg)
                if key not in cache:
                    data = msg.encode()
                    cache[key] = (data, pack_payload(data))
                data, rec = cache[key]
                st = "abort" if isinstance(msg, Abort) else stage
                content = {CONTROL_KEY: control(st, cid), PAYLOAD_KEY: rec}
                if isinstance(msg, ShareDelivery):
                    content[ARRAYS_KEY] = global_rec
                    content[TRAIN_CONFIG_KEY] = train_config if train_config is not None else ConfigRecord()
                    down[stage] += extra_down
                down[stage] += len(data)
                fl = _flower_message(content, node_of[cid], group, self._cfg.stage_timeout)
                if isinstance(msg, Abort):
                    aborts.append(fl)  # excluded clients: a notice, no reply awaited
                else:
                    out.append((cid, fl))
            if aborts:
                _push_quietly(grid, aborts)
            replies, errs = self._exchange(grid, out, node_of, stage, rid_hex)
            answered: list[int] = []
            t1 = time.perf_counter()
            for cid in sorted(replies):
                data = replies[cid]
                checked = _precheck(data, stage, cid, protocol)
                if isinstance(checked, str):
                    errs[cid] = checked
                    continue
                up[stage] += len(data)
                try:
                    session.receive(checked, sender=cid)
                except ProtocolError as exc:  # the session refused it and failed (sticky): stop everyone
                    notice = Abort(protocol.round_id, "the server's session failed; round abandoned")
                    _push_quietly(grid, [
                        _flower_message(
                            {CONTROL_KEY: control("abort", c), PAYLOAD_KEY: pack_payload(notice.encode())},
                            node_of[c], group, self._cfg.stage_timeout,
                        )
                        for c in node_of
                    ])
                    where = f"secure round {self._round}, stage {stage}, node {node_of[cid]}"
                    raise ProtocolError(f"{where}: {exc}") from exc
                answered.append(cid)
            try:
                outbox = session.close_stage()
            except ProtocolAbort as exc:
                server_s += time.perf_counter() - t1
                notices = session.abort_messages()
                if notices:
                    _push_quietly(grid, [
                        _flower_message(
                            {CONTROL_KEY: control("abort", c), PAYLOAD_KEY: pack_payload(m.encode())},
                            node_of[c], group, self._cfg.stage_timeout,
                        )
                        for c, m in notices.items()
                    ])
                dropped = {k: [node_of[c] for c in v] for k, v in session.dropped.items()}
                self._report(on_stage, stage, answered, errs, node_of, session, time.perf_counter() - t0)
                raise SecureRoundAbort(
                    f"secure round {self._round} aborted at stage {stage}: {exc}", stage=stage, dropped=dropped,
                    nodes=nodes,
                ) from exc
            server_s += time.perf_counter() - t1
            errors.update({node_of[c]: r for c, r in errs.items()})
            timings[stage] = time.perf_counter() - t0
            self._report(on_stage, stage, answered, errs, node_of, session, timings[stage])

        res = session.result
        assert res is not None
        t1 = time.perf_counter()
        m = len(res.survivors)
        vec, weight = spec.decode(res.aggregate, m)
        if spec.mode == "integer":
            summed = spec.unflatten(vec, dtype="uint64")
            new_arrays = ArrayRecord({k: _np_array(v) for k, v in summed.items()})
            update = None
        else:
            mean = spec.unflatten(vec, dtype="float64")
            update = ArrayRecord({k: _np_array(v) for k, v in mean.items()})
            new = {k: (v + mean[k]).astype(v.dtype) if k in mean else v for k, v in arrs.items()}
            new_arrays = ArrayRecord({k: _np_array(v) for k, v in new.items()})
        survivors = tuple(node_of[c] for c in res.survivors)
        dropped_nodes = {k: tuple(node_of[c] for c in v) for k, v in res.dropped.items()}
        recovered = tuple(node_of[c] for c in res.recovered_keys)
        acct = self._account(spec, protocol, survivors, dropped_nodes, weight)
        server_s += time.perf_counter() - t1
        timings["server"] = server_s
        timings["total"] = time.perf_counter() - t_start
        result = SecureRoundResult(
            round_index=self._round,
            round_id=rid_hex,
            mode=spec.mode,
            arrays=new_arrays,
            update=update,
            nodes=tuple(nodes),
            survivors=survivors,
            dropped=dropped_nodes,
            recovered=recovered,
            total_weight=weight,
            noise=acct.noise,
            privacy=acct.privacy,
            ledger_head=self.ledger_head,
            protocol=protocol_summary(protocol),
            bytes_up=up,
            bytes_down=down,
            timings=timings,
            errors=errors,
        )
        log.info("secagg round %d done: %d/%d survivors in %.2f s", self._round, m, len(nodes), timings["total"])
        self.last = result
        self._round += 1
        return result

    # -- transport --------------------------------------------------------------------------

    def _exchange(
        self, grid: Any, out: list[tuple[int, Any]], node_of: Mapping[int, int], stage: str, rid_hex: str
    ) -> tuple[dict[int, bytes], dict[int, str]]:
        """Push one message per client; pull replies until all arrived or the deadline."""
        replies: dict[int, bytes] = {}
        errors: dict[int, str] = {}
        if not out:
            return replies, errors
        ids = list(grid.push_messages([m for _, m in out]))
        pending: dict[str, int] = {}
        for (cid, _), mid in zip(out, ids, strict=True):
            if mid:
                pending[mid] = cid
            else:
                errors[cid] = "the SuperLink refused the message"
        deadline = time.monotonic() + self._cfg.stage_timeout
        while pending:
            for reply in grid.pull_messages(list(pending)):
                cid_or_none = pending.pop(reply.metadata.reply_to_message_id, None)
                if cid_or_none is None:
                    continue
                cid = cid_or_none
                if reply.has_error():
                    errors[cid] = f"error reply: {reply.error.reason}"
                    continue
                if int(reply.metadata.src_node_id) != node_of[cid]:
                    errors[cid] = "reply from another node"
                    continue
                try:
                    ctl = reply.content.config_records[CONTROL_KEY]
                    if ctl.get("stage") != stage or ctl.get("round") != rid_hex:
                        raise MessageError("reply for another stage or round")
                    replies[cid] = unpack_payload(reply.content.array_records[PAYLOAD_KEY])
                except (KeyError, MessageError) as exc:
                    errors[cid] = f"malformed reply: {exc}"
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(self._cfg.poll_interval)
        for cid in pending.values():
            errors.setdefault(cid, f"no reply within {self._cfg.stage_timeout:g} s")
        return replies, errors

    @staticmethod
    def _report(  # noqa: PLR0917 - internal helper
        hook: Callable[[StageReport], None] | None,
        stage: str,
        answered: Sequence[int],
        errs: Mapping[int, str],
        node_of: Mapping[int, int],
        session: ServerSession,
        seconds: float,
    ) -> None:
        silent = session.dropped.get(stage, ())
        if errs:
            log.info("secagg stage %s: %d silent: %s", stage, len(silent), {node_of[c]: r for c, r in errs.items()})
        if hook is None:
            return
        hook(
            StageReport(
                stage=stage,
                answered=tuple(node_of[c] for c in answered),
                silent=tuple(node_of[c] for c in silent),
                errors={node_of[c]: r for c, r in errs.items()},
                seconds=seconds,
            )
        )

    # -- accounting and ledger ----------------------------------------------------------------

    def _account(
        self,
        spec: RoundSpec,
        protocol: RoundConfig,
        survivors: Sequence[int],
        dropped: Mapping[str, Sequence[int]],
        weight: int,
    ) -> RoundAccount:
        """Feed the tracker (dp), then append the ledger record (:func:`secagg.rounds.account_round`)."""
        cfg = self._cfg
        plain = None
        if spec.mode == "fedavg":
            plain = PlainRound("fedavg", cfg.bound, weight, spec.max_weight)
        elif spec.mode == "integer":
            plain = PlainRound("integer", float(2**spec.bits - 1), weight)
        return account_round(
            self._tracker,
            self._ledger,
            round_index=spec.round_index,
            protocol=protocol,
            survivors=len(survivors),
            dropped=dropped,
            layout=spec.fingerprint,
            ledger_head_sent=spec.ledger_head,
            plan=spec.plan,
            sampling_rate=cfg.sampling_rate,
            plain=plain,
            extra={
                "dropped_nodes": {k: [int(x) for x in v] for k, v in dropped.items()},
                "survivor_nodes": [int(x) for x in survivors],
                "transport": "flower",
            },
        )

    def ledger_header(
        self, n: int, arrays: Any, *, delta: float | None = None, population: int | None = None
    ) -> dict[str, Any]:
        """A ledger header for rounds of ``n`` clients over ``arrays`` (pass it to
        :meth:`dp.ledger.Ledger.create`; see :func:`secagg.rounds.ledger_header`); ``delta``
        defaults to the tracker's."""
        cfg = self._cfg
        layout = [s for s in layout_of(_arrays_of(arrays)) if cfg.mode == "integer" or s.is_float]
        size = sum(s.size for s in layout)
        aggregation: dict[str, Any] | None = None
        if cfg.mode != "dp":
            aggregation = {"mode": cfg.mode, "bits": cfg.bits}
            if cfg.mode == "fedavg":
                aggregation.update(bound=cfg.bound, max_weight=cfg.max_weight, total_weight_revealed=True)
        return ledger_header(
            self._tracker,
            planned_clients=n,
            dropout_fraction=cfg.dropout_fraction,
            corrupt_fraction=cfg.corrupt_fraction,
            layout={"size": size, "arrays": len(layout)},
            plan=self._dp_plan(n, size) if aggregation is None else None,
            aggregation=aggregation,
            delta=delta,
            population=population,
            extra={"transport": "flower"},
        )


def _np_array(v: npt.NDArray[Any]) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))


def _flower_message(content: Mapping[str, Any], node: int, group: str, ttl: float) -> Any:
    from flwr.app import RecordDict

    return FlowerMessage(RecordDict(dict(content)), node, MESSAGE_TYPE, ttl=max(ttl * 2.0, 60.0), group_id=group)


def _push_quietly(grid: Any, messages: list[Any]) -> None:
    """Send notices nobody waits for (aborts); a failure to push is only logged."""
    try:
        grid.push_messages(messages)
    except Exception as exc:  # best effort: the round is over either way
        log.warning("could not push %d secagg notice(s): %s", len(messages), exc)


def _precheck(data: bytes, stage: str, cid: int, protocol: RoundConfig) -> Message | str:
    """The decoded reply, or the reason to drop it before the session sees it (the
    session would fail on it, for every client)."""
    try:
        msg = decode_message(data)
    except MessageError as exc:
        return f"undecodable reply: {exc}"
    if type(msg) is not _REPLY_TYPE[stage]:
        return f"expected {_REPLY_TYPE[stage].__name__}, got {type(msg).__name__}"
    if msg.round_id != protocol.round_id or getattr(msg, "sender", None) != cid:
        return "reply names another round or sender"
    return msg


def run_secure_round(
    grid: Any,
    node_ids: Iterable[int],
    arrays: Any,
    config: SecAggConfig | None = None,
    *,
    train_config: Any = None,
    tracker: Any = None,
    ledger: Any = None,
    on_stage: Callable[[StageReport], None] | None = None,
    rng: RngLike = None,
) -> SecureRoundResult:
    """One secure round with a one-off :class:`SecAggServer` (see :meth:`SecAggServer.run_round`).

    For several rounds keep a :class:`SecAggServer` (round counter, accountant, ledger).
    """
    server = SecAggServer(config, tracker=tracker, ledger=ledger, rng=rng)
    return server.run_round(grid, node_ids, arrays, train_config=train_config, on_stage=on_stage)


# ----------------------------------------------------------------------------- FedAvg strategy


class SecAggFedAvg(FedAvg):
    """Flower's Message-API :class:`~flwr.serverapp.strategy.FedAvg` whose training step is
    a secure round: ``configure_train`` samples nodes as FedAvg does and runs the round
    (so it sends no plain ``train`` message), ``aggregate_train`` returns the new global
    arrays and the round's metrics.  Evaluation, sampling and ``start`` are FedAvg's.

    A round that aborts (:class:`SecureRoundAbort`) leaves the model unchanged; the
    exception is kept in :attr:`aborts`.

    Args:
        server: a :class:`SecAggServer` (or a :class:`SecAggConfig` to build one).
        min_train_nodes: at least 3 (a secure round needs 3 clients).
        **kwargs: FedAvg's other arguments (``fraction_train``, ``min_available_nodes``,
            ``fraction_evaluate``, ...).
    """

    def __init__(self, server: SecAggServer | SecAggConfig | None = None, *, min_train_nodes: int = 3, **kwargs: Any):
        kwargs.setdefault("min_available_nodes", min_train_nodes)
        super().__init__(min_train_nodes=min_train_nodes, **kwargs)
        if min_train_nodes < 3:
            raise SecAggValueError("min_train_nodes must be >= 3 for secure aggregation")
        self.secagg = server if isinstance(server, SecAggServer) else SecAggServer(server)
        self.results: list[SecureRoundResult] = []
        self.aborts: list[SecAggError] = []
        self._pending: dict[int, SecureRoundResult] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[FlowerMessage]:
        """Sample nodes like FedAvg, run the secure round, send nothing else."""
        from flwr.serverapp.strategy.strategy_utils import sample_nodes

        if self.fraction_train == 0.0:
            return []
        num_nodes = int(len(list(grid.get_node_ids())) * self.fraction_train)
        sample_size = max(num_nodes, self.min_train_nodes)
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, sample_size)
        config["server-round"] = server_round
        try:
            res = self.secagg.run_round(grid, node_ids, arrays, train_config=config)
        except SecureRoundAbort as exc:
            log.warning("%s", exc)
            self.aborts.append(exc)
            return []
        self._pending[server_round] = res
        self.results.append(res)
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[FlowerMessage]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The secure round's new arrays and metrics (None, None after an abort)."""
        del replies  # the secure round sent no plain train message
        res = self._pending.pop(server_round, None)
        if res is None:
            return None, None
        metrics: dict[str, Any] = dict(res.metrics())
        return res.arrays, MetricRecord(metrics)

