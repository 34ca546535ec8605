"""Flower's strategy loop with secure training rounds: :class:`SecAggFedAvg`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.app import Message as FlowerMessage
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from secagg.errors import SecAggValueError
from secagg.flower.config import SecAggConfig
from secagg.flower.results import SecureRoundAbort, SecureRoundResult
from secagg.flower.server import SecAggServer

__all__ = ["SecAggFedAvg"]

log = logging.getLogger("secagg.flower")


class SecAggFedAvg(FedAvg):
    """Flower's Message-API :class:`~flwr.serverapp.strategy.FedAvg` whose training step is
    a secure round: ``configure_train`` samples nodes as FedAvg does and runs the round
    (so it sends no plain ``train`` message), ``aggregate_train`` returns the new global
    arrays and the round's metrics.  Evaluation, sampling and ``start`` are FedAvg's.

    A round that aborts (:class:`~secagg.flower.results.SecureRoundAbort`) leaves the
    model unchanged; the exception is kept in :attr:`aborts`.  Nodes excluded for
    misbehaviour do not abort a round; they are in each result's ``excluded``.

    Args:
        server: a :class:`~secagg.flower.server.SecAggServer` (or a
            :class:`~secagg.flower.config.SecAggConfig` to build one).
        min_train_nodes: at least 3 (a secure round needs 3 clients).
        **kwargs: FedAvg's other arguments (``fraction_train``, ``min_available_nodes``,
            ``fraction_evaluate``, ...).
    """

    def __init__(self, server: SecAggServer | SecAggConfig | None = None, *, min_train_nodes: int = 3, **kwargs: Any):
        if min_train_nodes < 3:
            raise SecAggValueError("min_train_nodes must be >= 3 for secure aggregation")
        kwargs.setdefault("min_available_nodes", min_train_nodes)
        super().__init__(min_train_nodes=min_train_nodes, **kwargs)
        self.secagg = server if isinstance(server, SecAggServer) else SecAggServer(server)
        self.results: list[SecureRoundResult] = []
        self.aborts: list[SecureRoundAbort] = []
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
