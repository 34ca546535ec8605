"""How secure rounds run on Flower: :class:`SecAggConfig` (all public, no Flower import).

A config is the user-facing choice; :meth:`SecAggConfig.rule` turns it into the
aggregation rule of :mod:`secagg.spec` (:class:`~secagg.spec.IntegerSum`,
:class:`~secagg.spec.FedAvgAggregation`, :class:`~secagg.spec.DPAggregation`) that
:func:`secagg.spec.build_spec` makes a round of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from secagg._validate import check_choice, check_fraction, check_int, check_number, check_optional_int
from secagg.errors import SecAggValueError
from secagg.spec import MODES, Aggregation, DPAggregation, FedAvgAggregation, IntegerSum

__all__ = ["SecAggConfig"]


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
        check_choice("mode", self.mode, MODES)
        check_int("bits", self.bits, 2, 64)
        for name in ("bound", "clip_norm", "noise_multiplier", "stage_timeout", "poll_interval"):
            check_number(name, getattr(self, name), lo=0.0, lo_open=True)
        check_int("max_weight", self.max_weight, 1)
        check_choice("mechanism", self.mechanism, ("discrete_gaussian", "skellam"))
        check_optional_int("dp_bits", self.dp_bits, 2, 64)
        check_optional_int("min_clients", self.min_clients, 1)
        check_optional_int("threshold", self.threshold, 1)
        check_number("modular_clip_prob", self.modular_clip_prob, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        check_fraction("dropout_fraction", self.dropout_fraction)
        check_fraction("corrupt_fraction", self.corrupt_fraction)
        if self.sampling_rate is not None:
            check_number("sampling_rate", self.sampling_rate, lo=0.0, hi=1.0, lo_open=True)
        if isinstance(self.neighbors, str):
            if self.neighbors != "all":
                raise SecAggValueError(f"neighbors must be None, an int k or 'all', got {self.neighbors!r}")
        else:
            check_optional_int("neighbors", self.neighbors, 2)

    def rule(self) -> Aggregation:
        """The :mod:`secagg.spec` aggregation rule of this config's ``mode``."""
        if self.mode == "integer":
            return IntegerSum(self.bits)
        if self.mode == "fedavg":
            return FedAvgAggregation(self.bound, self.max_weight, self.bits)
        mechanism = cast(Literal["discrete_gaussian", "skellam"], self.mechanism)
        return DPAggregation(
            self.clip_norm,
            self.noise_multiplier,
            mechanism,
            self.dp_bits,
            self.min_clients,
            self.modular_clip_prob,
        )
