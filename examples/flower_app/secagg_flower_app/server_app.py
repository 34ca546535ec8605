"""ServerApp: federated training whose every training round is a secagg secure round.

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

from secagg.errors import SecAggError
from secagg.flower import CountingGrid, SecAggConfig, SecAggServer, SecureRoundAbort, StageReport
from secagg_flower_app import task

app = ServerApp()
log = logging.getLogger("secagg_flower_app")


def select_nodes(grid: Grid, rc: Any) -> list[int]:
    """The cohort: explicit ``nodes``, else ``num-nodes`` (0 = all) of the connected nodes,
    after waiting up to ``wait-nodes`` seconds for ``min-nodes`` (or ``num-nodes``) of them."""
    explicit = [int(x) for x in str(rc["nodes"]).replace(",", " ").split()]
    want = len(explicit) or max(int(rc["num-nodes"]), int(rc["min-nodes"]))
    end = time.monotonic() + float(rc["wait-nodes"])
    while True:
        connected = sorted(int(n) for n in grid.get_node_ids())
        ready = all(n in connected for n in explicit) if explicit else len(connected) >= want
        if ready or time.monotonic() > end:
            break
        time.sleep(0.5)
    if explicit:
        return explicit
    k = int(rc["num-nodes"])
    return connected[:k] if k > 0 else connected


def initial_arrays(rc: Any) -> dict[str, Any]:
    if rc["task"] == "synthetic":
        return task.synthetic_initial(int(rc["dim"]), str(rc["mode"]))
    return task.digits_initial(int(rc["hidden"]))


def _stage_hook(rc: Any, round_index: list[int]) -> Any:
    """A per-stage progress file and, for the stages in ``pause-after``, a bounded wait for
    a ``.go`` file (the deployment tests kill SuperNodes at exact points this way)."""
    pdir = str(rc["progress-dir"])
    if not pdir:
        return None
    pause = {s.strip() for s in str(rc["pause-after"]).split(",") if s.strip()}

    def hook(rep: StageReport) -> None:
        base = Path(pdir) / f"{round_index[0]}-{rep.stage}"
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


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    if rc["workflow"] == "flower-secaggplus":
        from secagg_flower_app.baseline import run_baseline

        run_baseline(grid, context)
        return
    t_run = time.perf_counter()
    out: dict[str, Any] = {"workflow": "secagg", "mode": rc["mode"], "task": rc["task"], "rounds": []}
    result_path = str(rc["result-path"])
    counting = CountingGrid(grid)
    try:
        nodes = select_nodes(grid, rc)
        out["nodes"] = nodes
        mode = str(rc["mode"])
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
        )
        tracker = ledger = None
        if mode == "dp":
            from dp.tracker import PrivacyTracker

            tracker = PrivacyTracker(delta=float(rc["delta"]))
        arrays = initial_arrays(rc)
        server = SecAggServer(cfg, tracker=tracker)
        if str(rc["ledger-path"]):
            from dp.ledger import Ledger

            header = server.ledger_header(len(nodes), arrays, delta=float(rc["delta"]))
            ledger = Ledger.create(str(rc["ledger-path"]), header)
            server = SecAggServer(cfg, tracker=tracker, ledger=ledger)
        round_index = [0]
        hook = _stage_hook(rc, round_index)
        record = ArrayRecord({k: _arr(v) for k, v in arrays.items()})
        for r in range(int(rc["num-rounds"])):
            round_index[0] = r
            res = server.run_round(counting, nodes, record, train_config=ConfigRecord({"server-round": r + 1}),
                                   on_stage=hook)
            entry = res.to_dict()
            if rc["task"] == "digits":
                entry["accuracy"] = task.digits_accuracy(
                    {k: v.numpy() for k, v in res.arrays.items()}, int(rc["hidden"]), len(nodes)
                )
            out["rounds"].append(entry)
            if mode != "integer":
                record = res.arrays
            final = res.arrays
        if result_path:
            np.savez(result_path + ".npz", **{k: v.numpy() for k, v in final.items()})
        out["status"] = "completed"
    except SecureRoundAbort as exc:
        out.update(status="aborted", error=type(exc).__name__, reason=str(exc), stage=exc.stage,
                   dropped={k: list(v) for k, v in exc.dropped.items()},
                   excluded={str(k): v for k, v in exc.excluded.items()})
        log.warning("%s", exc)
    except SecAggError as exc:
        out.update(status="failed", error=type(exc).__name__, reason=str(exc))
        log.warning("secagg round failed: %s", exc)
    out["seconds"] = time.perf_counter() - t_run
    out["wire_bytes"] = {"sent": counting.sent, "received": counting.received}
    if result_path:
        Path(result_path).write_text(json.dumps(out, default=_json_default, allow_nan=False))


def _arr(v: Any) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    return str(o)
