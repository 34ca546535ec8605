"""ServerApp: federated training with :class:`secagg.flower.SecAggFedAvg`, whose every
training round is a secagg secure round (the same app runs under Flower's simulation
engine and on a deployment).

Run config (pyproject.toml, overridable with ``flwr run --run-config``) selects the task,
the aggregation mode, the cohort and the outputs; ``workflow = "flower-secaggplus"`` runs
Flower's own SecAgg+ instead (the benchmark baseline, see baseline.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from secagg.errors import SecAggError, SecAggValueError
from secagg.flower import CountingGrid, SecAggConfig, SecAggFedAvg, StageReport
from secagg.flower.strategy import MIN_SECURE_NODES, SIMULATION_HINT
from secagg_flower_app import task

app = ServerApp()
log = logging.getLogger("secagg_flower_app")


def select_nodes(grid: Grid, rc: Any) -> list[int]:
    """The cohort: explicit ``nodes``, else ``num-nodes`` (0 = all) of the connected nodes,
    after waiting up to ``wait-nodes`` seconds for ``min-nodes`` (or ``num-nodes``) of them.

    Raises:
        SecAggValueError: fewer than 3 nodes (a secure round's minimum) after the wait: a
            clear error at once rather than a hang (Flower's local simulation starts 2
            virtual nodes unless told otherwise).
    """
    explicit = [int(x) for x in str(rc["nodes"]).replace(",", " ").split()]
    want = len(explicit) or max(int(rc["num-nodes"]), int(rc["min-nodes"]), MIN_SECURE_NODES)
    end = time.monotonic() + float(rc["wait-nodes"])
    while True:
        connected = sorted(int(n) for n in grid.get_node_ids())
        ready = all(n in connected for n in explicit) if explicit else len(connected) >= want
        if ready or time.monotonic() > end:
            break
        time.sleep(0.5)
    k = int(rc["num-nodes"])
    nodes = explicit if explicit else (connected[:k] if k > 0 else connected)
    if len(nodes) < MIN_SECURE_NODES or (not explicit and len(nodes) < want):
        raise SecAggValueError(
            f"a secure round needs at least {max(want, MIN_SECURE_NODES)} nodes; {len(connected)} connected after "
            f"waiting {float(rc['wait-nodes']):g} s. {SIMULATION_HINT}"
        )
    return nodes


class CohortGrid(CountingGrid):
    """The grid restricted to the cohort's nodes (and counting bytes): the strategy samples
    from these only."""

    def __init__(self, grid: Grid, nodes: list[int], poll_interval: float) -> None:
        super().__init__(grid, poll_interval=poll_interval)
        self.cohort = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.cohort)


def initial_arrays(rc: Any) -> dict[str, Any]:
    if rc["task"] == "synthetic":
        return task.synthetic_initial(int(rc["dim"]), str(rc["mode"]))
    return task.digits_initial(int(rc["hidden"]))


def _stage_hook(rc: Any, done: list[int]) -> Any:
    """A per-stage progress file and, for the stages in ``pause-after``, a bounded wait for
    a ``.go`` file (the deployment tests kill SuperNodes at exact points this way)."""
    pdir = str(rc["progress-dir"])
    if not pdir:
        return None
    pause = {s.strip() for s in str(rc["pause-after"]).split(",") if s.strip()}

    def hook(rep: StageReport) -> None:
        base = Path(pdir) / f"{len(done)}-{rep.stage}"
        if rep.stage == "unmasking":
            done.append(1)
        doc = {"stage": rep.stage, "answered": rep.answered, "silent": rep.silent,
               "excluded": {str(k): v for k, v in rep.excluded.items()}, "errors": rep.errors}
        base.with_suffix(".json").write_text(json.dumps(doc))
        if rep.stage in pause:
            go = base.with_suffix(".go")
            end = time.monotonic() + 120.0
            while not go.exists() and time.monotonic() < end:
                time.sleep(0.1)

    return hook


def _neighbors(rc: Any) -> int | str | None:
    v = str(rc["neighbors"])
    return None if v == "auto" else ("all" if v == "all" else int(v))


def _optimizer(rc: Any) -> Any:
    name = str(rc["server-optimizer"])
    if name in ("", "none"):
        return None
    from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

    lr = float(rc["server-lr"])
    opts = {"fedadam": lambda: FedAdam(eta=lr), "fedyogi": lambda: FedYogi(eta=lr),
            "fedavgm": lambda: FedAvgM(server_learning_rate=lr, server_momentum=0.9)}
    if name not in opts:
        raise SecAggValueError(f"server-optimizer must be none, fedadam, fedyogi or fedavgm, got {name!r}")
    return opts[name]()


def _say(msg: str) -> None:
    """To the ServerApp's log (shown by ``flwr run --stream`` and in simulation)."""
    from flwr.common.logger import log as flwr_log

    flwr_log(logging.INFO, "%s", msg)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    if rc["workflow"] == "flower-secaggplus":
        from secagg_flower_app.baseline import run_baseline

        run_baseline(grid, context)
        return
    if rc["workflow"] in ("plain-fedavg", "latency"):
        from secagg_flower_app.timing import run_timing

        run_timing(grid, context)
        return
    t_run = time.perf_counter()
    mode = str(rc["mode"])
    out: dict[str, Any] = {"workflow": "secagg", "mode": mode, "task": rc["task"], "rounds": []}
    result_path = str(rc["result-path"])
    counting: CountingGrid = CountingGrid(grid)
    strategy: SecAggFedAvg | None = None
    try:
        nodes = select_nodes(grid, rc)
        out["nodes"] = nodes
        counting = CohortGrid(grid, nodes, float(rc["poll-interval"]))
        cfg = SecAggConfig(
            mode=mode,
            bits=int(rc["bits"]),
            bound=float(rc["bound"]),
            max_weight=int(rc["max-weight"]),
            clip_norm=float(rc["clip-norm"]),
            noise_multiplier=float(rc["noise-multiplier"]),
            neighbors=_neighbors(rc),
            threshold=int(rc["threshold"]) or None,
            min_clients=int(rc["dp-min-clients"]) or None,
            dropout_fraction=float(rc["dropout-fraction"]),
            stage_timeout=float(rc["stage-timeout"]),
            poll_interval=float(rc["poll-interval"]),
            # active mode: the alliance file (the same one every SuperNode's node config
            # names); "" = semi-honest rounds
            alliance=str(rc.get("alliance", "")) or None,
        )
        tracker = clipper = None
        if mode == "dp":
            from dp.tracker import PrivacyTracker

            tracker = PrivacyTracker(delta=float(rc["delta"]))
            if float(rc["target-quantile"]) > 0:
                from dp.clipping import AdaptiveClipper

                q = float(rc["target-quantile"])
                clipper = AdaptiveClipper(clip_norm=float(rc["clip-norm"]), target_quantile=q)
        done: list[int] = []
        strategy = SecAggFedAvg(
            cfg,
            tracker=tracker,
            ledger=str(rc["ledger-path"]) or None,
            clipper=clipper,
            optimizer=_optimizer(rc),
            evaluate=str(rc["evaluate"]) if mode != "integer" else "none",
            fraction_train=float(rc["fraction-train"]),
            fraction_evaluate=1.0,
            min_evaluate_nodes=MIN_SECURE_NODES,
            node_wait=float(rc["wait-nodes"]),
            on_stage=_stage_hook(rc, done),
        )
        arrays = initial_arrays(rc)
        initial = ArrayRecord({k: _arr(v) for k, v in arrays.items()})
        config = ConfigRecord({"hidden": int(rc["hidden"])})
        result = strategy.start(counting, initial, num_rounds=int(rc["num-rounds"]), train_config=config,
                                evaluate_config=ConfigRecord(), timeout=float(rc["stage-timeout"]))  # fmt: skip
        for res in strategy.results:
            entry = res.to_dict()
            if rc["task"] == "digits":
                entry["accuracy"] = task.digits_accuracy(
                    {k: v.numpy() for k, v in res.arrays.items()}, int(rc["hidden"]), len(nodes)
                )
            out["rounds"].append(entry)
        out["evaluation"] = {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()}
        out["report"] = strategy.report()
        if strategy.results:
            out["status"] = "completed"
            final = result.arrays if mode != "integer" else strategy.results[-1].arrays
            if result_path:
                np.savez(result_path + ".npz", **{k: v.numpy() for k, v in final.items()})
        elif strategy.aborts:
            exc = strategy.aborts[-1]
            out.update(status="aborted", error=type(exc).__name__, reason=str(exc), stage=exc.stage,
                       dropped={k: list(v) for k, v in exc.dropped.items()},
                       excluded={str(k): v for k, v in exc.excluded.items()},
                       refused={str(k): v for k, v in exc.refused.items()})  # fmt: skip
        else:
            out.update(status="failed", reason="no round ran (every round was skipped)")
        _say_summary(out, strategy)
    except SecAggError as exc:
        out.update(status="failed", error=type(exc).__name__, reason=str(exc))
        log.warning("secagg run failed: %s", exc)
        _say(f"secagg run failed: {exc}")
    out["seconds"] = time.perf_counter() - t_run
    out["wire_bytes"] = {"sent": counting.sent, "received": counting.received}
    if result_path:
        Path(result_path).write_text(json.dumps(out, default=_json_default, allow_nan=False))
    if out["status"] == "failed" and not result_path:
        raise SystemExit(f"secagg: {out['reason']}")


def _say_summary(out: dict[str, Any], strategy: SecAggFedAvg) -> None:
    for entry in out["rounds"]:
        dropped = sum(len(v) for v in entry["dropped"].values())
        line = (f"secagg round {entry['round_index'] + 1}: {len(entry['survivors'])}/{len(entry['nodes'])} nodes "
                f"in the sum, {dropped} dropped, {len(entry['excluded'])} excluded, {len(entry['refused'])} refused")
        if "accuracy" in entry:
            line += f", test accuracy {entry['accuracy']:.3f}"
        _say(line)
    for abort in strategy.aborts:
        _say(f"secagg round aborted: {abort}")
    rep = out["report"]
    _say(f"secagg: node sampling {rep['sampling']}; evaluation {rep['evaluation']}")
    eps = rep.get("epsilon")
    if eps is not None:
        for who in ("release", "server"):
            e = eps[who]["epsilon"]
            _say(f"secagg: epsilon against {who} = {e if e is None else round(e, 4)} at delta {eps['delta']:g} "
                 f"({eps[who]['against']})")


def _arr(v: Any) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    return str(o)
