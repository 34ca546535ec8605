"""PNG plots of a benchmark run (matplotlib, Agg backend; none without matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secagg.benchmarks._privacy_utility import PrivacyUtilityRow
from secagg.benchmarks._row import BenchRow

__all__ = ["plot_all"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(out_dir: Path, rows: Sequence[BenchRow], privacy: Sequence[PrivacyUtilityRow], *,
             dpi: int = 72) -> list[Path]:
    """Write the PNG plots; returns their paths (empty without matplotlib)."""
    try:
        plt = _pyplot()
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if r.status == "ok" and r.total_s is not None]
    paths: list[Path] = []
    if ok:
        paths.append(_plot_time(plt, out_dir / "time_vs_d.png", ok, dpi))
        paths.append(_plot_ratios(plt, out_dir / "ratios.png", ok, dpi))
        paths.append(_plot_upload(plt, out_dir / "upload.png", ok, dpi))
    good = [p for p in privacy if p.status == "ok"]
    if good:
        paths.append(_plot_privacy(plt, out_dir / "privacy_utility.png", good, dpi))
    return paths


def _main_group(rows: Sequence[BenchRow]) -> list[BenchRow]:
    """Rows of the most populated (graph, dropout, stage, bits) group, preferring flower-k20 at 10%."""
    groups: dict[tuple[str, float, str, int], list[BenchRow]] = {}
    for r in rows:
        groups.setdefault((r.graph, r.dropout, r.stage, r.bits), []).append(r)
    key = max(groups, key=lambda g: (g == ("flower-k20", 0.1, "masked_input", 32), len(groups[g])))
    return groups[key]


def _plot_time(plt: Any, path: Path, rows: Sequence[BenchRow], dpi: int) -> Path:
    grp = _main_group(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(sorted({r.n for r in grp})):
        pts = sorted((r for r in grp if r.n == n), key=lambda r: r.d)
        c = colors[i % len(colors)]
        ax.plot([r.d for r in pts], [r.total_s for r in pts], "o-", color=c, label=f"secagg n={n}")
        fl = [r for r in pts if r.flower_total_s is not None and r.flower_status == "ok"]
        if fl:
            ax.plot([r.d for r in fl], [r.flower_total_s for r in fl], "s--", color=c, label=f"Flower n={n}")
        ax.plot([r.d for r in pts], [r.keystream_s for r in pts], ":", color=c, label=f"keystream bound n={n}")
    g = grp[0]
    ax.set(xscale="log", yscale="log", xlabel="dimension d", ylabel=f"round time, client + server ({g.clock} s)",
           title=f"{g.graph}, {g.dropout:g} dropout @ {g.stage}, {g.bits} bits")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _short(r: BenchRow) -> str:
    g = {"flower-k20": "k20", "auto": "auto", "complete": "all"}[r.graph]
    return f"{r.n}/{r.d:.0e}/{r.dropout:g}/{g}" + ("" if r.bits == 32 else f"/b{r.bits}")


def _plot_ratios(plt: Any, path: Path, rows: Sequence[BenchRow], dpi: int) -> Path:
    pts = sorted(rows, key=lambda r: (r.n, r.d, r.graph, r.dropout, r.bits))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.28 * len(pts) + 2), 4.0))
    xs = list(range(len(pts)))
    ax.bar([x - 0.2 for x in xs], [r.x_keystream or 0 for r in pts], width=0.4, label="ours / keystream bound")
    ax.bar([x + 0.2 for x in xs], [r.flower_speedup or 0 for r in pts], width=0.4, label="Flower / ours")
    ax.axhline(2.0, color="C0", ls=":", lw=1)
    ax.axhline(10.0, color="C1", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([_short(r) for r in pts], rotation=70, fontsize=6)
    ax.set(ylabel="ratio", title="ours vs keystream bound (target <= 2), Flower vs ours (target >= 10)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _plot_upload(plt: Any, path: Path, rows: Sequence[BenchRow], dpi: int) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    k20 = [r for r in rows if r.graph == "flower-k20" and r.dropout == 0.1]
    if not k20:
        k20 = list(rows)
    with_flower = [r for r in k20 if r.flower_up_per_client is not None]
    counts: dict[int, int] = {}
    for r in with_flower or k20:
        counts[r.n] = counts.get(r.n, 0) + 1
    n = max(counts, key=lambda m: (counts[m], m))
    for bits in sorted({r.bits for r in k20 if r.n == n}):
        pts = sorted((r for r in k20 if r.n == n and r.bits == bits), key=lambda r: r.d)
        ax.plot([r.d for r in pts], [(r.up_per_client or 0) / (4 * r.d) for r in pts], "o-",
                label=f"secagg, {bits} bits")
    fl = sorted((r for r in with_flower if r.n == n and r.bits == 32), key=lambda r: r.d)
    if fl:
        ax.plot([r.d for r in fl], [(r.flower_up_per_client or 0) / (4 * r.d) for r in fl], "s--",
                label="Flower (int64 values)")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    g = k20[0]
    ax.set(xscale="log", xlabel="dimension d", ylabel="upload per client / (4 d bytes)",
           title=f"bytes uploaded per client relative to the float32 update (n={n}, {g.graph})")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _plot_privacy(plt: Any, path: Path, rows: Sequence[PrivacyUtilityRow], dpi: int) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for mech in sorted({r.mechanism for r in rows}):
        for rounds in sorted({r.rounds for r in rows}):
            pts = sorted((r for r in rows if r.mechanism == mech and r.rounds == rounds), key=lambda r: r.bits)
            if not pts:
                continue
            ax.plot([r.bits for r in pts], [r.ratio_server for r in pts], "o-", label=f"{mech}, T={rounds}, server")
            ax.plot([r.bits for r in pts], [r.ratio_release for r in pts], "x--",
                    label=f"{mech}, T={rounds}, release")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set(xlabel="ring bits", ylabel="MSE / MSE of central Gaussian",
           title="distributed DP vs central Gaussian at the same epsilon")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
