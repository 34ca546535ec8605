"""The "performance at the limit" and "scale" parts of ``secagg bench``: run them, and
render their tables (keystream-bound ratio and where the time goes, speedup per core
count, streamed rounds' memory, cost model measured vs predicted)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["limits_markdown", "plot_scale", "run_limits", "run_scale", "scale_markdown"]

#: n up to which the cost model is extrapolated, and the (n, d) printed.
PREDICT_NS: tuple[int, ...] = (100, 1000, 10**4, 10**5, 10**6)
PREDICT_D = 10**6


def run_limits(*, n: int = 100, d: int = 10**6, k: int = 20, stream_dims: Sequence[int] = (10**7, 10**8),
               stream_clients: int = 10, workers: Sequence[int] = (1, 2), repeats: int = 2,
               seed: int = 0) -> dict[str, Any]:
    """Breakdown, speedup per core count and streamed rounds (see :mod:`._limits`)."""
    from secagg.benchmarks._limits import core_speedup, streamed_round, time_breakdown

    return {
        "breakdown": time_breakdown(n, d, k, 0.1, seed=seed, repeats=repeats),
        "cores": core_speedup(n, d, k, 0.1, workers=workers, repeats=repeats, seed=seed),
        "streamed": [streamed_round(sd, stream_clients, seed=seed) for sd in stream_dims],
    }


def run_scale(*, ns: Sequence[int] = (50, 100, 200, 500, 1000, 2000), ds: Sequence[int] = (10**3, 10**5),
              seed: int = 0, budget: float = 300.0) -> dict[str, Any]:
    """Measured rounds, the fitted model, its predictions at the measured points and
    up to n = 10^6 (d = 10^6)."""
    from secagg.benchmarks._costmodel import fit_cost_model, measure_scale, predict

    rows = measure_scale(ns, ds, seed=seed, budget=budget)
    model = fit_cost_model(rows)
    for r in rows:
        p = predict(model, r["n"], r["d"])
        r["predicted_client_per_client_s"] = p["client_per_client_s"]
        r["predicted_server_s"] = p["server_s"]
    return {"measured": rows, "model": model.to_dict(), "predicted": [predict(model, n, PREDICT_D) for n in PREDICT_NS]}


def _f(v: Any, fmt: str = ".3g") -> str:
    return "–" if v is None else format(v, fmt)


def limits_markdown(limits: Mapping[str, Any]) -> str:
    """Tables of :func:`run_limits`'s result."""
    b = limits["breakdown"]
    lines = [
        f"Round n={b['n']}, d={b['d']:.0e}, k={b['k']}, t={b['t']}, {b['dropout']:.0%} dropout after share-keys, "
        f"one process: **{b['x_keystream']:.2f}x** the AES-CTR keystream bound ({b['total_cpu_s']:.3f} CPU s vs "
        f"{b['keystream_cpu_s']:.3f} s for {b['mask_bytes'] / 1e9:.2f} GB of mask bytes at "
        f"{b['keystream_gbps']:.2f} GB/s); the Masker alone is {b['masker_x_keystream']:.2f}x.  "
        f"Load average {_f(b['load_start'])} at the start.",
        "",
        "| where the time goes | CPU s | x keystream bound |",
        "|---|---|---|",
    ]
    for part, s in b["parts_s"].items():
        lines.append(f"| {part} | {s:.3f} | {b['parts_x_keystream'][part]:.3f} |")
    lines += [
        f"| **total** | {b['total_cpu_s']:.3f} | {b['x_keystream']:.3f} |",
        "",
        "| workers | wall s | speedup (wall) | driver CPU s | workers CPU s | CPU critical path s | "
        "speedup (CPU path) | load | correct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in limits["cores"]:
        lines.append(f"| {r['workers']} | {r['wall_s']:.3f} | {r['speedup_wall']:.2f} | {r['driver_cpu_s']:.3f} | "
                     f"{r['workers_cpu_s']:.3f} | {r['cpu_path_s']:.3f} | {_f(r['speedup_cpu_path'], '.2f')} | "
                     f"{_f(r['load'])} | {r['correct']} |")
    lines += [
        "",
        "| streamed d | clients | chunk | CPU s | x keystream bound | client peak (updates) | "
        "server peak (updates) | correct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in limits["streamed"]:
        lines.append(f"| {r['d']:.0e} | {r['n']} | {r['chunk']} | {r['cpu_s']:.2f} | {r['x_keystream']:.3f} | "
                     f"{r['client_peak_updates']:.3f} | {r['server_peak_updates']:.3f} | {r['correct']} |")
    return "\n".join(lines)


def scale_markdown(scale: Mapping[str, Any]) -> str:
    """Tables of :func:`run_scale`'s result."""
    m = scale["model"]
    lines = [
        f"Model (CPU seconds): per client {m['client_per_neighbour']:.3g} k + {m['client_per_mask_word']:.3g} (k+1) d "
        f"+ {m['client_constant']:.3g}; server {m['server_per_client']:.3g} n + {m['server_per_client_share']:.3g} n t "
        f"+ {m['server_per_mask_word']:.3g} (n + m k) d (m = dropped clients); fitted on {m['points']} rounds, "
        f"R^2 (log) client {m['client_r2']:.3f}, server {m['server_r2']:.3f}.",
        "",
        "| n | d | k | t | per client s | predicted | server s | predicted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in scale["measured"]:
        lines.append(f"| {r['n']} | {r['d']:.0e} | {r['k']} | {r['t']} | {r['client_per_client_s']:.4f} | "
                     f"{r['predicted_client_per_client_s']:.4f} | {r['server_s']:.3f} | "
                     f"{r['predicted_server_s']:.3f} |")
    lines += ["", "| n (predicted) | d | k | t | per client s | server s |", "|---|---|---|---|---|---|"]
    for r in scale["predicted"]:
        lines.append(f"| {r['n']:.0e} | {r['d']:.0e} | {r['k']} | {r['t']} | {r['client_per_client_s']:.3f} | "
                     f"{r['server_s']:.1f} |")
    return "\n".join(lines)


def plot_scale(out_dir: Path, scale: Mapping[str, Any], *, dpi: int = 72) -> Path | None:
    """``scale.png``: measured vs predicted per-client and server time against n."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "client_per_client_s", "per client"), (axes[1], "server_s", "server")):
        for d in sorted({r["d"] for r in scale["measured"]}):
            pts = [r for r in scale["measured"] if r["d"] == d]
            line = ax.plot([r["n"] for r in pts], [r[key] for r in pts], "o", label=f"measured d={d:.0e}")[0]
            ax.plot([r["n"] for r in pts], [r["predicted_" + key] for r in pts], "-", color=line.get_color(),
                    label=f"model d={d:.0e}")
        pred = scale["predicted"]
        ax.plot([r["n"] for r in pred], [r[key] for r in pred], "k--", label=f"model d={PREDICT_D:.0e}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients n (k, t from the threat model)")
        ax.set_ylabel("CPU seconds")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out_dir) / "scale.png"
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
