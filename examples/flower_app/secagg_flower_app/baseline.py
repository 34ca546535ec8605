"""Benchmark baseline: the same training round with Flower's own SecAgg+
(``SecAggPlusWorkflow`` on the legacy strategy path via ``LegacyContext``, clients behind
``secaggplus_mod``).  Same task, same nodes, same outputs as the secagg ServerApp."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid

from secagg.flower import CountingGrid
from secagg_flower_app import task


def run_baseline(grid: Grid, context: Context) -> None:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from secagg_flower_app.server_app import initial_arrays, select_nodes

    rc = context.run_config
    t_run = time.perf_counter()
    nodes = select_nodes(grid, rc)
    n = len(nodes)
    arrays = initial_arrays({**dict(rc), "mode": "fedavg"})
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(list(arrays.values())),
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(rc["num-rounds"])), strategy=strategy)
    timings: list[float] = []
    fit = SecAggPlusWorkflow(
        num_shares=n,  # complete graph, like secagg with neighbors="all"
        reconstruction_threshold=int(rc["threshold"]) or (n // 2 + 1),
        max_weight=float(rc["max-weight"]),
        clipping_range=8.0,
        timeout=float(rc["stage-timeout"]),
    )

    def timed_fit(g: Any, ctx: Any) -> None:
        t0 = time.perf_counter()
        fit(g, ctx)
        timings.append(time.perf_counter() - t0)

    counting = CountingGrid(grid)
    DefaultWorkflow(fit_workflow=timed_fit)(counting, legacy)
    out: dict[str, Any] = {
        "workflow": "flower-secaggplus",
        "task": rc["task"],
        "nodes": nodes,
        "status": "completed",
        "round_seconds": timings,
        "seconds": time.perf_counter() - t_run,
        "wire_bytes": {"sent": counting.sent, "received": counting.received},
    }
    if rc["task"] == "digits":
        params = legacy.state.array_records.get("parameters")
        if params is not None:
            final = dict(zip(arrays, params.to_numpy_ndarrays(), strict=True))
            out["accuracy"] = task.digits_accuracy(final, int(rc["hidden"]), n)
    if str(rc["result-path"]):
        Path(str(rc["result-path"])).write_text(json.dumps(out))
