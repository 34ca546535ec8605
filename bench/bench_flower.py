"""secagg on Flower against Flower's own SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``).

Two measurements:

* **in-process** (pytest-benchmark, CI smoke with ``--benchmark-disable``): one round of each
  protocol over ``tests/_flower_deploy.LocalGrid`` -- every message deflated and inflated as
  Flower ships it, each node's Context serialised between messages, all clients and the
  server in this process, no network and no process start-up: the protocols' own cost
  through Flower's message layer.
* **deployment** (by hand): a real SuperLink and N SuperNodes on 127.0.0.1, the example app
  (examples/flower_app) run with ``flwr run`` once with ``workflow="secagg"`` and once with
  ``workflow="flower-secaggplus"``, alternating, same task, same nodes::

      python bench/bench_flower.py deploy --nodes 5 --task digits --repeat 3
      python bench/bench_flower.py deploy --nodes 5 --task synthetic --dim 100000
      python bench/bench_flower.py inprocess --nodes 10 --dim 100000

  Reported: wall time of one training round as measured in the ServerApp (from sending the
  first stage's messages to the decoded aggregate), the whole run, and bytes per node (the
  Flower messages' deflated objects, counted by :class:`secagg.flower.CountingGrid` for both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _flower_deploy import EXAMPLE_APP, Deployment, LocalGrid
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from secagg.flower import SecAggConfig, SecAggServer, register

SMOKE_NODES = 5
SMOKE_DIM = 10_000


def _delta(p: int, size: int) -> np.ndarray:
    return 0.01 * (p + 1) * ((np.arange(size) % 5) - 2).astype(np.float64)


def _arrays(dim: int) -> dict[str, np.ndarray]:
    return {"w": np.zeros(dim - 10, np.float32), "b": np.zeros(10, np.float32)}


def _train(current: dict[str, np.ndarray], p: int) -> tuple[dict[str, np.ndarray], int]:
    size = sum(a.size for a in current.values())
    d = _delta(p, size)
    out, pos = {}, 0
    for k, a in current.items():
        out[k] = (a + d[pos : pos + a.size].reshape(a.shape)).astype(a.dtype)
        pos += a.size
    return out, 10 * (p + 1)


def secagg_app() -> ClientApp:
    app = ClientApp()
    register(app, lambda a, c, ctx: _train({k: v.numpy() for k, v in a.items()}, int(ctx.node_config["partition-id"])))
    return app


def flower_app(names: list[str]) -> ClientApp:
    from flwr.client import NumPyClient
    from flwr.client.message_handler.message_handler import handle_legacy_message_from_msgtype
    from flwr.client.mod import secaggplus_mod

    app = ClientApp()

    def client_fn(context: Context) -> Any:
        class _C(NumPyClient):
            def fit(self, parameters: list[Any], config: dict[str, Any]) -> Any:
                cur = dict(zip(names, parameters, strict=True))
                out, n = _train(cur, int(context.node_config["partition-id"]))
                return [out[k] for k in names], n, {}

        return _C().to_client()

    @app.train(mods=[secaggplus_mod])
    def fit(message: Message, context: Context) -> Message:
        return handle_legacy_message_from_msgtype(client_fn, message, context)

    return app


def run_secagg_inprocess(nodes: int, dim: int) -> tuple[float, LocalGrid]:
    grid = LocalGrid(secagg_app(), nodes)
    cfg = SecAggConfig(mode="fedavg", neighbors="all", threshold=nodes // 2 + 1, stage_timeout=10.0,
                       poll_interval=0.001)
    t0 = time.perf_counter()
    res = SecAggServer(cfg).run_round(grid, grid.get_node_ids(), _arrays(dim))
    dt = time.perf_counter() - t0
    assert len(res.survivors) == nodes
    return dt, grid


def run_flower_inprocess(nodes: int, dim: int) -> tuple[float, LocalGrid]:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    arrays = _arrays(dim)
    grid = LocalGrid(flower_app(list(arrays)), nodes)
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=nodes, min_available_clients=nodes,
                      initial_parameters=ndarrays_to_parameters(list(arrays.values())))
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    legacy = LegacyContext(context=ctx, config=ServerConfig(num_rounds=1), strategy=strategy)
    times: list[float] = []
    fit = SecAggPlusWorkflow(num_shares=nodes, reconstruction_threshold=nodes // 2 + 1, timeout=10.0)

    def timed(g: Any, c: Any) -> None:
        t0 = time.perf_counter()
        fit(g, c)
        times.append(time.perf_counter() - t0)

    DefaultWorkflow(fit_workflow=timed)(grid, legacy)
    return times[0], grid


# ----------------------------------------------------------------------------- pytest-benchmark


def test_bench_secagg_round_inprocess(benchmark: Any) -> None:
    dt, grid = benchmark.pedantic(run_secagg_inprocess, args=(SMOKE_NODES, SMOKE_DIM), rounds=1, iterations=1)
    assert dt > 0 and grid.handled == 4 * SMOKE_NODES


def test_bench_flower_secaggplus_round_inprocess(benchmark: Any) -> None:
    dt, grid = benchmark.pedantic(run_flower_inprocess, args=(SMOKE_NODES, SMOKE_DIM), rounds=1, iterations=1)
    assert dt > 0 and grid.handled >= 4 * SMOKE_NODES


# ----------------------------------------------------------------------------- by hand


def _per_node(wire: dict[str, dict[str, int]]) -> tuple[float, float]:
    up = list(wire["received"].values())
    down = list(wire["sent"].values())
    return (statistics.mean(up) if up else 0.0, statistics.mean(down) if down else 0.0)


def inprocess(args: argparse.Namespace) -> None:
    rows = []
    for name, fn in (("secagg", run_secagg_inprocess), ("flower-secaggplus", run_flower_inprocess)):
        for _ in range(args.repeat):
            dt, grid = fn(args.nodes, args.dim)
            up = statistics.mean(grid.received.values())
            down = statistics.mean(grid.sent.values())
            rows.append((name, dt, up, down))
            print(f"{name:18s} n={args.nodes} d={args.dim}: round {dt:.3f} s, per node up {up:,.0f} B, "
                  f"down {down:,.0f} B", flush=True)


def deploy(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="secagg-flower-bench-"))
    dep = Deployment(root, args.nodes, lifetime=3600.0)
    results: dict[str, list[dict[str, Any]]] = {"secagg": [], "flower-secaggplus": []}
    try:
        nodes = ",".join(str(dep.node_id(p)) for p in range(args.nodes))
        for i in range(args.repeat):
            for wf in ("secagg", "flower-secaggplus"):
                res = root / f"{wf}-{i}.json"
                cfg = {"workflow": wf, "task": args.task, "mode": "fedavg", "num-rounds": 1, "dim": args.dim,
                       "nodes": nodes, "neighbors": "all", "threshold": args.nodes // 2 + 1,
                       "stage-timeout": 600.0, "result-path": str(res)}
                t0 = time.perf_counter()
                run_id = dep.start_run(EXAMPLE_APP, cfg)
                st = dep.wait_run(run_id, 1800.0)
                wall = time.perf_counter() - t0
                out = json.loads(res.read_text())
                assert out["status"] == "completed", out
                rnd = out["rounds"][0]["timings"]["total"] if wf == "secagg" else out["round_seconds"][0]
                up, down = _per_node(out["wire_bytes"])
                entry = {"round_s": rnd, "run_s": wall, "up": up, "down": down,
                         "traffic": st.get("network-traffic", {}), "accuracy": _acc(out, wf)}
                if wf == "secagg":
                    entry["stages"] = out["rounds"][0]["timings"]
                results[wf].append(entry)
                print(wf, json.dumps(entry), flush=True)
    finally:
        dep.close()
    print(f"\nn={args.nodes}, task={args.task}, dim={args.dim if args.task == 'synthetic' else 'digits MLP'}")
    print("| workflow | round wall time (median) | flwr run to finish | upload / node | download / node |")
    print("|---|---|---|---|---|")
    for wf, rows in results.items():
        med = statistics.median(r["round_s"] for r in rows)
        run = statistics.median(r["run_s"] for r in rows)
        up = statistics.median(r["up"] for r in rows)
        down = statistics.median(r["down"] for r in rows)
        print(f"| {wf} | {med:.1f} s | {run:.1f} s | {up:,.0f} B | {down:,.0f} B |")


def _acc(out: dict[str, Any], wf: str) -> float | None:
    if wf == "secagg":
        return out["rounds"][0].get("accuracy")  # type: ignore[no-any-return]
    return out.get("accuracy")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("deploy", "inprocess"):
        p = sub.add_parser(name)
        p.add_argument("--nodes", type=int, default=5)
        p.add_argument("--dim", type=int, default=100_000)
        p.add_argument("--repeat", type=int, default=1)
        if name == "deploy":
            p.add_argument("--task", choices=("digits", "synthetic"), default="digits")
    args = ap.parse_args(argv)
    (deploy if args.cmd == "deploy" else inprocess)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

