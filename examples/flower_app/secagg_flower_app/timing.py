"""Round-time baselines on the same deployment (``workflow = "plain-fedavg"`` or
``"latency"``), for comparing a secure round with what Flower itself costs:

* ``plain-fedavg``: Flower's own Message-API ``FedAvg`` on the same model and nodes (one
  ``train.plain`` message per node and round, no secure aggregation), pulling replies every
  ``poll-interval`` seconds (Flower's grid pulls every 3 s; both are reported);
* ``latency``: Flower's per-message round trip: one empty ``query`` message to every node
  and back, repeated ``num-rounds`` times, pulled every ``poll-interval`` seconds.

Both write ``result-path`` (JSON): per round / exchange wall seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from secagg.flower import CountingGrid


class _TimedFedAvg(FedAvg):
    """Flower's FedAvg recording each training round's wall time (configure to aggregate)."""

    def __init__(self, nodes: list[int], **kw: Any) -> None:
        super().__init__(**kw)
        self.nodes = nodes
        self.round_seconds: list[float] = []
        self._t0 = 0.0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
        self._t0 = time.perf_counter()
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.nodes, "train.plain")

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        out = super().aggregate_train(server_round, replies)
        self.round_seconds.append(time.perf_counter() - self._t0)
        return out


def run_timing(grid: Grid, context: Context) -> None:
    from secagg_flower_app.server_app import _arr, initial_arrays, select_nodes

    rc = context.run_config
    nodes = select_nodes(grid, rc)
    poll = float(rc["poll-interval"])
    counting = CountingGrid(grid, poll_interval=poll)
    out: dict[str, Any] = {"workflow": str(rc["workflow"]), "nodes": nodes, "poll_interval": poll}
    if rc["workflow"] == "latency":
        seconds = []
        for _ in range(int(rc["num-rounds"])):
            msgs = [Message(RecordDict(), n, "query") for n in nodes]
            t0 = time.perf_counter()
            replies = list(counting.send_and_receive(msgs, timeout=float(rc["stage-timeout"])))
            seconds.append(time.perf_counter() - t0)
            if len(replies) != len(nodes):
                out["missing"] = len(nodes) - len(replies)
        out["exchange_seconds"] = seconds
    else:
        strategy = _TimedFedAvg(nodes, fraction_evaluate=0.0, min_train_nodes=len(nodes),
                                min_available_nodes=len(nodes))  # fmt: skip
        arrays = ArrayRecord({k: _arr(v) for k, v in initial_arrays({**dict(rc), "mode": "fedavg"}).items()})
        strategy.start(counting, arrays, num_rounds=int(rc["num-rounds"]), timeout=float(rc["stage-timeout"]))
        out["round_seconds"] = strategy.round_seconds
    out["status"] = "completed"
    if str(rc["result-path"]):
        Path(str(rc["result-path"])).write_text(json.dumps(out))
