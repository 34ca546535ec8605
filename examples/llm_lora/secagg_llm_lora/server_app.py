"""ServerApp: silos fine-tune the LoRA adapters of a small causal LM, every round a secagg
secure round with distributed DP (``workflow = "secagg"``), or plain FedAvg over the same
adapters for the round-time comparison (``workflow = "fedavg"``).

Per round it prints the validation loss, the survivors and dropouts, the cumulative
epsilon against each adversary, the round time and the bytes moved; at the end it writes
the loss curve (PNG), a JSON summary, the privacy ledger and the auditor's report
(``secagg report``), and prints their paths.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from secagg_llm_lora import task

app = ServerApp()


def say(text: str) -> None:
    """Print a line of the run's report (``flwr run --stream`` shows it)."""
    print(f"[llm-lora] {text}", flush=True)


def wait_for_nodes(grid: Grid, want: int, timeout: float) -> list[int]:
    """The first ``want`` connected nodes; a clear error after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= want:
            return nodes[:want]
        if time.monotonic() > end:
            raise RuntimeError(
                f"the example needs {want} silos (num-silos) but {len(nodes)} SuperNodes are connected; "
                f'run it with --federation-config "num-supernodes={want}"'
            )
        time.sleep(0.2)


def _record(arrays: dict[str, Any]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _numpy(rec: ArrayRecord) -> dict[str, Any]:
    return {k: v.numpy() for k, v in rec.items()}


def train_config(rc: Any, server_round: int) -> ConfigRecord:
    return ConfigRecord({"server-round": server_round, "local-steps": int(rc["local-steps"]),
                         "batch-size": int(rc["batch-size"]), "lr": float(rc["lr"])})  # fmt: skip


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    t_run = time.perf_counter()
    out_dir = Path(str(rc["out-dir"]) or "llm-lora-out").expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    workflow = str(rc["workflow"])
    n = int(rc["num-silos"])
    size = task.ModelSize.from_config(rc)
    model = task.build_model(size)
    full_bytes, adapter_bytes = task.model_bytes(model)
    arrays = task.adapter_arrays(model)
    n_params = sum(a.size for a in arrays.values())
    val = task.validation_tokens(n, int(rc["val-per-silo"]), int(rc["seq-len"]))
    summary: dict[str, Any] = {
        "workflow": workflow, "num_silos": n, "rounds": [], "model": size.__dict__ | {"targets": list(size.targets)},
        "full_model_bytes": full_bytes, "adapter_bytes": adapter_bytes, "adapter_params": n_params,
        "drop_silo": int(rc["drop-silo"]), "drop_from_round": int(rc["drop-from-round"]),
    }  # fmt: skip
    say(f"{workflow}: {n} silos, Qwen2 model {full_bytes / 4:,.0f} params (base frozen, random, seed {size.seed}), "
        f"LoRA r={size.lora_r} on {','.join(size.targets)}: {n_params:,} trainable params")  # fmt: skip
    say(f"update size: {adapter_bytes:,} bytes of adapters per silo per round, vs {full_bytes:,} bytes for the "
        f"full model ({100 * adapter_bytes / full_bytes:.2f}%)")  # fmt: skip
    loss0 = task.evaluate(model, val)
    summary["initial_loss"] = loss0
    say(f"round 0: validation loss {loss0:.4f}")
    nodes = wait_for_nodes(grid, n, float(rc["wait-nodes"]))
    summary["nodes"] = nodes
    try:
        if workflow == "secagg":
            _run_secagg(grid, rc, nodes, arrays=arrays, model=model, val=val, summary=summary, out_dir=out_dir)
        elif workflow == "fedavg":
            _run_fedavg(grid, rc, nodes, arrays=arrays, model=model, val=val, summary=summary)
        else:
            raise ValueError(f"workflow must be 'secagg' or 'fedavg', got {workflow!r}")
        summary["status"] = "completed"
    except Exception as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        say(f"run failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        summary["seconds"] = time.perf_counter() - t_run
        times = [r["seconds"] for r in summary["rounds"]]
        if times:
            summary["mean_round_seconds"] = float(np.mean(times))
        png = _plot(summary, out_dir / f"loss-{workflow}.png")
        if png is not None:
            summary["loss_png"] = str(png)
            say(f"loss curve: {png}")
        path = out_dir / f"result-{workflow}.json"
        path.write_text(json.dumps(summary, indent=1, default=_json_default, allow_nan=False))
        say(f"summary: {path}")
    say(f"done: {len(summary['rounds'])} rounds in {summary['seconds']:.1f} s, mean round "
        f"{summary.get('mean_round_seconds', math.nan):.2f} s")  # fmt: skip


# ------------------------------------------------------------------------------- secagg


def _run_secagg(grid: Grid, rc: Any, nodes: list[int], *, arrays: dict[str, Any], model: Any, val: Any,
                summary: dict[str, Any], out_dir: Path) -> None:  # fmt: skip
    from dp.ledger import Ledger, verify_ledger
    from dp.report import write_report
    from dp.tracker import PrivacyTracker
    from secagg.flower import CountingGrid, SecAggConfig, SecAggServer

    n = len(nodes)
    floor = int(rc["dp-min-clients"]) or n - 1
    cfg = SecAggConfig(
        mode="dp",
        clip_norm=float(rc["clip-norm"]),
        noise_multiplier=float(rc["noise-multiplier"]),
        min_clients=floor,
        neighbors="all",  # a complete graph: cheap at a few silos, tolerates the most dropouts
        dropout_fraction=float(rc["dropout-fraction"]),
        corrupt_fraction=float(rc["corrupt-fraction"]),
        stage_timeout=float(rc["stage-timeout"]),
        poll_interval=float(rc["poll-interval"]),
    )
    delta = float(rc["delta"])
    tracker = PrivacyTracker(delta=delta)
    ledger_path = out_dir / "ledger.jsonl"
    if ledger_path.exists():
        ledger_path.unlink()
    header = SecAggServer(cfg, tracker=PrivacyTracker(delta=delta)).ledger_header(n, arrays, delta=delta)
    ledger = Ledger.create(str(ledger_path), header)
    server = SecAggServer(cfg, tracker=tracker, ledger=ledger)
    counting = CountingGrid(grid)
    spec = server.plan_round(n, arrays)
    say(f"secagg dp: n={n}, complete graph k={spec.protocol.degree}, t={spec.protocol.t}, cohort floor {floor}, "
        f"colluders assumed {spec.protocol.colluders}, "
        f"clip {cfg.clip_norm:g}, noise multiplier {cfg.noise_multiplier:g} (guaranteed at the floor), "
        f"delta {delta:g}")  # fmt: skip
    record = _record(arrays)
    for r in range(1, int(rc["num-rounds"]) + 1):
        sent0, recv0 = _total(counting.sent), _total(counting.received)
        res = server.run_round(counting, nodes, record, train_config=train_config(rc, r))
        record = res.arrays
        task.set_adapters(model, _numpy(record))
        loss = task.evaluate(model, val)
        eps = res.privacy
        dropped = sorted({x for v in res.dropped.values() for x in v})
        entry = {
            "round": r, "loss": loss, "seconds": res.timings["total"], "survivors": list(res.survivors),
            "dropped": {k: list(v) for k, v in res.dropped.items() if v}, "recovered": list(res.recovered),
            "excluded": {str(k): v for k, v in res.excluded.items()},
            "epsilon_release": eps.release_epsilon, "epsilon_server": eps.server_epsilon,
            "wire_bytes_sent": _total(counting.sent) - sent0, "wire_bytes_received": _total(counting.received) - recv0,
            "stage_seconds": {k: v for k, v in res.timings.items() if k not in ("total",)},
        }  # fmt: skip
        summary["rounds"].append(entry)
        say(f"round {r}: validation loss {loss:.4f} | {len(res.survivors)}/{n} silos in the sum"
            + (f", dropped {dropped} (stages {sorted(k for k, v in res.dropped.items() if v)})" if dropped else "")
            + f" | epsilon {eps.release_epsilon:.4g} against the release, {eps.server_epsilon:.4g} against the "
            f"server (delta {delta:g}) | {res.timings['total']:.2f} s | wire {entry['wire_bytes_sent']:,} B down, "
            f"{entry['wire_bytes_received']:,} B up")  # fmt: skip
    last = summary["rounds"][-1]
    summary["epsilon"] = {"delta": delta, "release": last["epsilon_release"], "server": last["epsilon_server"],
                          "accountant": tracker.accountant}  # fmt: skip
    say(f"final epsilon after {len(summary['rounds'])} rounds (delta {delta:g}, accountant {tracker.accountant}):")
    say(f"  {last['epsilon_release']:.4g} against the release (anyone who sees only the adapters)")
    say(f"  {last['epsilon_server']:.4g} against the server (sees who took part; only the other honest "
        "silos' noise shares count)")  # fmt: skip
    check = verify_ledger(str(ledger_path), expect_head=ledger.head)
    summary["ledger"] = {"path": str(ledger_path), "head": str(ledger.head_for_clients()), "verified": bool(check.ok)}
    say(f"ledger: {ledger_path} ({len(summary['rounds'])} rounds, head {ledger.head_for_clients()}, verified: "
        f"{bool(check.ok)})")  # fmt: skip
    report = write_report(str(ledger_path), str(out_dir / "report"), "md")
    summary["report"] = str(report)
    say(f"auditor report: {report}  (again: secagg report {ledger_path} --out {out_dir / 'report'})")


# ------------------------------------------------------------------------------- plain FedAvg


def _run_fedavg(grid: Grid, rc: Any, nodes: list[int], *, arrays: dict[str, Any], model: Any, val: Any,
                summary: dict[str, Any]) -> None:  # fmt: skip
    """Plain FedAvg over the same adapters (no masking, no noise): the round-time baseline."""
    from secagg.flower import CountingGrid

    timeout = float(rc["stage-timeout"])
    # Flower's grid polls every 3 s in send_and_receive; poll as often as the secure rounds do
    counting = CountingGrid(grid, poll_interval=float(rc["poll-interval"]))
    current = arrays
    for r in range(1, int(rc["num-rounds"]) + 1):
        sent0, recv0 = _total(counting.sent), _total(counting.received)
        t0 = time.perf_counter()
        content = RecordDict({"arrays": _record(current), "config": train_config(rc, r)})
        msgs = [Message(content, dst_node_id=node, message_type="train") for node in nodes]
        replies = list(counting.send_and_receive(msgs, timeout=timeout))
        ok = [m for m in replies if not m.has_error()]
        answered = {int(m.metadata.src_node_id) for m in ok}
        weights = [int(m.content.metric_records["metrics"]["num-examples"]) for m in ok]
        total = float(sum(weights))
        if not ok:
            raise RuntimeError(f"round {r}: no silo answered")
        current = {
            k: sum(w * m.content.array_records["arrays"][k].numpy() for w, m in zip(weights, ok, strict=True)) / total
            for k in current
        }
        current = {k: v.astype(np.float32) for k, v in current.items()}
        seconds = time.perf_counter() - t0
        task.set_adapters(model, current)
        loss = task.evaluate(model, val)
        dropped = sorted(set(nodes) - answered)
        entry = {"round": r, "loss": loss, "seconds": seconds, "survivors": sorted(answered),
                 "dropped": {"train": dropped} if dropped else {},
                 "wire_bytes_sent": _total(counting.sent) - sent0,
                 "wire_bytes_received": _total(counting.received) - recv0}  # fmt: skip
        summary["rounds"].append(entry)
        say(f"round {r}: validation loss {loss:.4f} | {len(answered)}/{len(nodes)} silos"
            + (f", dropped {dropped}" if dropped else "") + f" | {seconds:.2f} s | wire {entry['wire_bytes_sent']:,} B "
            f"down, {entry['wire_bytes_received']:,} B up | no DP, no secure aggregation")


# ------------------------------------------------------------------------------- outputs


def _plot(summary: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rounds = [0] + [r["round"] for r in summary["rounds"]]
    losses = [summary["initial_loss"]] + [r["loss"] for r in summary["rounds"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    label = "secagg + distributed DP" if summary["workflow"] == "secagg" else "plain FedAvg (no DP)"
    ax.plot(rounds, losses, marker="o", label=f"{label} ({summary['num_silos']} silos)")
    other = path.parent / ("result-fedavg.json" if summary["workflow"] == "secagg" else "result-secagg.json")
    if other.exists():  # the other workflow's earlier run in the same out-dir, for comparison
        try:
            prev = json.loads(other.read_text())
            xs = [0] + [r["round"] for r in prev["rounds"]]
            ys = [prev["initial_loss"]] + [r["loss"] for r in prev["rounds"]]
            name = "plain FedAvg (no DP)" if prev["workflow"] == "fedavg" else "secagg + DP"
            ax.plot(xs, ys, marker=".", linestyle="--", label=f"{name}, earlier run")
        except (ValueError, KeyError, TypeError):
            pass
    drop = summary["drop_from_round"]
    if summary["drop_silo"] >= 0 and 0 < drop <= len(summary["rounds"]):
        ax.axvline(drop, color="grey", linestyle=":", label=f"silo {summary['drop_silo']} drops out")
    eps = summary.get("epsilon")
    title = "LoRA fine-tune, validation loss"
    if eps:
        title += f"\nepsilon {eps['release']:.3g} (release), {eps['server']:.3g} (server), delta {eps['delta']:g}"
    ax.set(xlabel="round", ylabel="next-token loss (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _total(counts: dict[int, int]) -> int:
    return int(sum(counts.values()))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    return str(o)


__all__ = ["app", "main"]
