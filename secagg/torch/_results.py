"""What a torch round produces: the decoded aggregate, per-client outcomes and the report
of :func:`secagg.torch.run_round`, and what a ``train_fn`` returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dp.distributed import NoiseReport
from dp.tracker import RoundEpsilon
from secagg.driver import StageReport
from secagg.spec import RoundSpec
from secagg.torch.opacus_compat import ClientDPSGD, SelfReportedEpsilon

__all__ = ["AggregateUpdate", "ClientOutcome", "LocalResult", "RoundReport", "TrainFn"]


@dataclass(frozen=True, eq=False)
class AggregateUpdate:
    """Decoded result of one round (public: a function of the aggregate only).

    Attributes:
        round_index: the round.
        spec: the round's :class:`~secagg.spec.RoundSpec` (its fingerprint is in the ledger).
        mean: the averaged update as a flat float64 vector (model units, layout order):
            with DP the noised sum divided by the number of survivors; without DP the
            weighted sum divided by the total weight.
        tensors: ``mean`` as tensors of the layout's shapes and dtypes.
        survivors: protocol ids whose input is in the sum.
        dropped: per protocol stage, ids that went silent or were excluded.
        excluded: protocol id -> why the server excluded it (misbehaviour, not a dropout).
        total_weight: survivors' summed (capped) weights (FedAvg; revealed) or the
            survivor count (DP).
        noise: the round's :class:`dp.distributed.NoiseReport` (DP only).
        privacy: the server-side accountant's cumulative figures after this round
            (client-level, against the server and the release; DP with a tracker), else None.
        example_level: client -> its local DP-SGD composed over every round it reported
            (self-reported, example-level; empty when no client reported one).
        ledger_head: the ledger head after this round's record (None without a ledger).
    """

    round_index: int
    spec: RoundSpec
    mean: npt.NDArray[np.float64]
    tensors: dict[str, torch.Tensor]
    survivors: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    excluded: dict[int, str]
    total_weight: int
    noise: NoiseReport | None = None
    privacy: RoundEpsilon | None = None
    example_level: dict[str, ClientDPSGD] = field(default_factory=dict)
    ledger_head: str | None = None


@dataclass(frozen=True)
class LocalResult:
    """What a ``train_fn`` may return instead of an example count.

    Attributes:
        num_examples: local examples used (FedAvg weight).
        model: the trained model if it is not the one passed in (e.g. an opacus wrapper of
            it, a ``torch.compile`` or DDP wrapper); wrapper name prefixes are mapped.
        self_reported: this round's example-level epsilon of the client's DP-SGD (opacus),
            composed across rounds by the server and recorded as self-reported.
    """

    num_examples: int
    model: nn.Module | None = None
    self_reported: SelfReportedEpsilon | None = None


#: ``train_fn(client, model) -> examples | LocalResult``: train ``model`` (a copy of the
#: global model, in training mode) in place.
TrainFn = Callable[[Any, nn.Module], "int | LocalResult"]


@dataclass(frozen=True)
class ClientOutcome:
    """What happened to one client in :func:`~secagg.torch.run_round`.

    ``status``: ``"survived"`` (its update is in the sum), ``"dropped"`` (silent from
    ``stage`` on), ``"failed"`` (its ``train_fn`` raised: ``error``), ``"rejected"`` (its
    update did not fit the round: ``error``) or ``"excluded"`` (the server excluded it
    for a bad message: ``error``).  The last three are dropouts to the protocol.
    """

    client: Any
    protocol_id: int
    status: str
    stage: str | None = None
    error: str | None = None


@dataclass(frozen=True, eq=False)
class RoundReport:
    """Result of :func:`~secagg.torch.run_round`.

    Attributes:
        update: the decoded :class:`AggregateUpdate` (already applied to the model if
            ``apply=True``).
        spec: the round's :class:`~secagg.spec.RoundSpec`.
        clients: per client, what happened.
        rejected: client -> why its update was refused (:class:`UpdateError`, the DP
            pipeline's refusal).
        failed: client -> the exception its ``train_fn`` raised.
        excluded: client -> why the server excluded it.
        stages: the driver's per-stage reports (protocol ids).
        bytes_up / bytes_down: protocol bytes per stage (real encodings; the driver's count).
        timings: seconds: ``train`` (local training, all clients), ``encode`` (flatten +
            DP/fixed-point encoding), ``client`` (protocol client work), ``server``
            (protocol server work, the driver's count), ``decode`` (decode, account, apply).
    """

    update: AggregateUpdate
    spec: RoundSpec
    clients: tuple[ClientOutcome, ...]
    rejected: dict[Any, str]
    failed: dict[Any, str]
    excluded: dict[Any, str]
    stages: tuple[StageReport, ...]
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
