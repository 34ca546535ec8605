"""What a secure round on Flower reports, in Flower node ids: :class:`StageReport` (one
closed stage), :class:`SecureRoundResult` (a completed round) and
:class:`SecureRoundAbort` (a round stopped safely).

Dropouts (nodes that went silent: no reply in time, an error reply) and exclusions
(nodes whose reply the protocol refused: undecodable, truncated, invalid) are kept
apart everywhere; both are left out of the sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from secagg.errors import ProtocolAbort

#: Who each epsilon protects against (the wording of :mod:`dp.tracker`).
RELEASE_AGAINST = (
    "anyone who sees only the released model and does not know who took part "
    "(node-sampling amplification applies; the other survivors' noise shares count)"
)
SERVER_AGAINST = (
    "the aggregation server (SuperLink + ServerApp), which sees who took part "
    "(no sampling amplification; only the other honest survivors' noise shares count)"
)

__all__ = ["SecureRoundAbort", "SecureRoundResult", "StageReport"]


@dataclass(frozen=True)
class StageReport:
    """One closed stage, as passed to ``on_stage`` hooks (node ids).

    Attributes:
        stage: the stage name (``"advertise_keys"``, ``"share_keys"``, ``"masked_input"``,
            ``"unmasking"``).
        addressed: node ids sent this stage's request.
        answered: node ids whose reply was accepted.
        silent: node ids that sent nothing usable in time (dropouts of this stage).
        excluded: node id -> reason, for nodes excluded in this stage for misbehaviour.
        errors: node id -> what the transport saw instead of a reply (an error reply, no
            reply before the deadline, a malformed record).
        bytes_up: protocol bytes received.
        bytes_down: protocol bytes sent (plus the global arrays with the masked-input
            request).
        seconds: wall time of the stage (send, wait, server work).
    """

    stage: str
    addressed: tuple[int, ...]
    answered: tuple[int, ...]
    silent: tuple[int, ...]
    excluded: dict[int, str]
    errors: dict[int, str]
    bytes_up: int
    bytes_down: int
    seconds: float


@dataclass(frozen=True, eq=False)
class SecureRoundResult:
    """Outcome of one secure round (public: a function of the aggregate only).

    Attributes:
        round_index: 0, 1, ... within the :class:`~secagg.flower.SecAggServer`.
        round_id: the protocol round id (hex).
        mode: the aggregation mode.
        arrays: ``fedavg``/``dp``: the new global arrays (global + mean update; arrays
            outside the layout unchanged); ``integer``: the exact sum (uint64 arrays).
        update: ``fedavg``/``dp``: the mean update (float64 arrays); None in ``integer``.
        nodes: node ids sampled (protocol id i + 1 is ``nodes[i]``).
        survivors: node ids whose input is in the sum.
        dropped: per stage, node ids that went silent in that stage.
        excluded: node id -> one-line reason, for nodes excluded for misbehaviour (their
            input is not in the sum; dropouts are in ``dropped``).
        recovered: node ids whose mask key was reconstructed (dropped or excluded after
            sharing keys).
        total_weight: ``fedavg``: the survivors' total (capped) weight; else the survivors.
        noise: ``dp``: the :class:`dp.distributed.NoiseReport` of the round.
        privacy: ``dp`` with a tracker: the cumulative :class:`dp.tracker.RoundEpsilon`.
        ledger_head: the ledger head after this round's record (None without a ledger).
        fingerprint: the :attr:`secagg.spec.RoundSpec.fingerprint` of the round.
        protocol: public protocol parameters (n, d, bits, k, t, colluders, min_clients).
        bytes_up / bytes_down: per stage, protocol payload bytes (replies / requests,
            plus the global arrays sent with the masked-input request).
        timings: per stage wall seconds, ``"total"`` and ``"server"`` (server compute), and
            in active mode ``"identify"`` (proving the nodes' identities before the round).
        errors: node id -> what the transport saw instead of its reply (its last such stage).
        refused: node id -> the reason a node gave for refusing the round (its policy, its
            budget, a spec or model it does not accept); such nodes are also dropouts.
        clip_norm: ``dp`` with adaptive clipping: the L2 clip of the model update this
            round used (model units); None otherwise.
        unclipped_fraction: ``dp`` with adaptive clipping: the noised fraction of
            survivors whose update was not clipped (estimated under the round's DP noise,
            Andrew et al. 2021); None otherwise.
        evaluation: a secure evaluation round: metric name -> weighted mean over the
            survivors (weights: example counts, total in ``total_weight``); None for a
            training round.
        security_mode: ``"active"`` (an alliance: signed advertisements, consistency
            round, signed trail in the ledger) or ``"semi-honest"`` (no identities).
        members: active mode: member id (= protocol id) -> node id of the members that
            proved their identity for this round (empty in semi-honest mode).
    """

    round_index: int
    round_id: str
    mode: str
    arrays: Any
    update: Any
    nodes: tuple[int, ...]
    survivors: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    excluded: dict[int, str]
    recovered: tuple[int, ...]
    total_weight: int
    noise: Any = None
    privacy: Any = None
    ledger_head: str | None = None
    fingerprint: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    clip_norm: float | None = None
    unclipped_fraction: float | None = None
    evaluation: dict[str, float] | None = None
    security_mode: str = "semi-honest"
    members: dict[int, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, int | float]:
        """Scalar summary, ready for a :class:`flwr.app.MetricRecord`."""
        out: dict[str, int | float] = {
            "secagg-sampled": len(self.nodes),
            "secagg-survivors": len(self.survivors),
            "secagg-dropouts": sum(len(v) for v in self.dropped.values()),
            "secagg-excluded": len(self.excluded),
            "secagg-refused": len(self.refused),
            "secagg-recovered": len(self.recovered),
            "secagg-total-weight": self.total_weight,
            "secagg-seconds": self.timings.get("total", 0.0),
            "secagg-bytes-up": sum(self.bytes_up.values()),
            "secagg-bytes-down": sum(self.bytes_down.values()),
        }
        if self.clip_norm is not None:
            out["secagg-clip-norm"] = self.clip_norm
        if self.unclipped_fraction is not None:
            out["secagg-unclipped-fraction"] = self.unclipped_fraction
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
            "fingerprint": self.fingerprint,
            "nodes": list(self.nodes),
            "survivors": list(self.survivors),
            "dropped": {k: list(v) for k, v in self.dropped.items()},
            "excluded": {str(k): v for k, v in self.excluded.items()},
            "recovered": list(self.recovered),
            "total_weight": self.total_weight,
            "ledger_head": self.ledger_head,
            "protocol": dict(self.protocol),
            "bytes_up": dict(self.bytes_up),
            "bytes_down": dict(self.bytes_down),
            "timings": dict(self.timings),
            "errors": {str(k): v for k, v in self.errors.items()},
            "refused": {str(k): v for k, v in self.refused.items()},
            "security_mode": self.security_mode,
            "members": {str(k): v for k, v in self.members.items()},
        }
        if self.clip_norm is not None:
            out["clip_norm"] = self.clip_norm
            out["unclipped_fraction"] = self.unclipped_fraction
        if self.evaluation is not None:
            out["evaluation"] = dict(self.evaluation)
        if self.noise is not None:
            out["noise"] = self.noise.to_dict()
        if self.privacy is not None:
            out["privacy"] = {
                "release_epsilon": _finite(self.privacy.release_epsilon),
                "server_epsilon": _finite(self.privacy.server_epsilon),
                "delta": self.privacy.delta,
                "release_against": RELEASE_AGAINST,
                "server_against": SERVER_AGAINST,
            }
        return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class SecureRoundAbort(ProtocolAbort):
    """A secure round on Flower stopped safely (nothing individual was revealed): the
    driver's :class:`~secagg.errors.ProtocolAbort` in Flower node ids.

    Attributes:
        stage: the stage whose closing aborted the round.
        dropped: per closed stage, node ids that were silent.
        excluded: node id -> reason, for nodes excluded for misbehaviour.
        nodes: node ids sampled.
        errors: node id -> what the transport saw instead of its reply.
        refused: node id -> the reason a node gave for refusing the round (named in the
            message too: the cause is on the server, not only in the SuperNodes' logs).
    """

    def __init__(
        self,
        reason: str,
        *,
        stage: str | None,
        dropped: Mapping[str, Sequence[int]],
        excluded: Mapping[int, str],
        nodes: Sequence[int],
        errors: Mapping[int, str] | None = None,
        refused: Mapping[int, str] | None = None,
    ) -> None:
        self.refused = dict(refused or {})
        if self.refused:
            reason += "; nodes that refused the round: " + "; ".join(
                f"node {k}: {v}" for k, v in sorted(self.refused.items())
            )
        super().__init__(
            reason,
            stage=stage,
            dropped={k: tuple(v) for k, v in dropped.items()},
            excluded=dict(excluded),
        )
        self.nodes = tuple(nodes)
        self.errors = dict(errors or {})
