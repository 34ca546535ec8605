"""Benchmark output: CSV, JSON, Markdown tables and PNG plots (matplotlib, Agg backend).

:func:`write_outputs` writes, into one directory::

    results.csv            one row per configuration (every BenchRow field)
    privacy_utility.csv    one row per (mechanism, bits, rounds)
    results.json           everything: machine, command, rows, privacy rows, fits, targets
    results.md             the Markdown tables (configurations, privacy-utility, scaling, targets)
    time_vs_d.png, ratios.png, upload.png, privacy_utility.png   (when matplotlib is installed)

Units in the tables: seconds, bytes (KiB/MiB where marked), and ratios.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secagg.benchmarks.privacy_utility import PrivacyUtilityRow
from secagg.benchmarks.sweep import ROW_FIELDS, BenchRow, ScalingFit, TargetCheck

__all__ = [
    "bench_table",
    "fits_table",
    "markdown_report",
    "plot_all",
    "privacy_table",
    "read_rows_csv",
    "targets_table",
    "write_csv",
    "write_json",
    "write_outputs",
]


# ------------------------------------------------------------------------------ CSV / JSON


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_csv(path: Path, records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``records`` (dicts) as CSV with ``columns`` (None -> empty cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for rec in records:
            w.writerow({k: _cell(rec.get(k)) for k in columns})
    return path


def read_rows_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` (values as strings)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    """Write ``report`` as indented JSON (non-finite floats become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(dict(report)), indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


# -------------------------------------------------------------------------------- Markdown


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "–" if v is None else format(v, fmt)


def _bytes(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 2**20:
        return f"{v / 2**20:.2f} MiB"
    if v >= 2**10:
        return f"{v / 2**10:.1f} KiB"
    return f"{v:.0f} B"


def _sec(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _flower_cell(r: BenchRow) -> str:
    if r.flower_total_s is not None and r.flower_status == "ok":
        return _sec(r.flower_total_s)
    return r.flower_status


def bench_table(rows: Sequence[BenchRow]) -> str:
    """Markdown table of the configurations (one line each)."""
    clocks = sorted({r.clock for r in rows if r.status in ("ok", "wrong sum")}) or ["cpu"]
    unit = "CPU s" if clocks == ["cpu"] else ("s" if clocks == ["wall"] else "s (see clock)")
    head = (f"| n | d | dropout | graph | k / t | client {unit} | server {unit} | total {unit} | total wall s "
            f"| x plaintext | x keystream | Flower {unit} | Flower / ours | up / client | down / client | up / 4d "
            "| peak mem (vectors) |")
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        if r.status not in ("ok", "wrong sum"):
            lines.append(f"| {r.n} | {r.d:.0e} | {r.dropout:g} @ {r.stage} | {r.graph} | "
                         f"{r.status}: {r.note[:90]} |" + " |" * 12)
            continue
        up4 = (r.up_per_client or 0) / (r.float32_bytes or 1)
        mark = "" if r.correct else " (WRONG SUM)"
        graph = r.graph + ("" if r.bits == 32 else f", {r.bits} bits")
        lines.append(
            f"| {r.n} | {r.d:.0e} | {r.dropout:g} @ {r.stage} | {graph}{mark} | {r.k} / {r.t} | "
            f"{_sec(r.client_s)} | {_sec(r.server_s)} | {_sec(r.total_s)} | {_sec(r.wall_round_s)} | "
            f"{_num(r.x_plaintext, '.0f')} | {_num(r.x_keystream, '.2f')} | {_flower_cell(r)} | "
            f"{_num(r.flower_speedup, '.1f')} | {_bytes(r.up_per_client)} | {_bytes(r.down_per_client)} | "
            f"{up4:.4f} | {_num(r.peak_mem_vectors, '.1f')} |"
        )
    return "\n".join(lines)


def privacy_table(rows: Sequence[PrivacyUtilityRow]) -> str:
    """Markdown table of the privacy-utility rows."""
    lines = [
        "| mechanism | bits | rounds | scale | rounding inflation | MSE distributed | eps server | MSE ratio "
        "vs central (server eps) | eps release | MSE ratio vs central (release eps) | upload |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.mechanism} | {r.bits} | {r.rounds} | {r.status}: {r.note[:80]} |" + " |" * 7)
            continue
        lines.append(
            f"| {r.mechanism} | {r.bits} | {r.rounds} | {_num(r.scale, '.4g')} | "
            f"{_num((r.rounding_inflation or 0) * 100, '.3f')}% | {_num(r.mse_distributed, '.4g')} | "
            f"{_num(r.epsilon_server, '.3g')} | {_num(r.ratio_server, '.3f')} | {_num(r.epsilon_release, '.3g')} | "
            f"{_num(r.ratio_release, '.3f')} | {_bytes(r.upload_bytes)} |"
        )
    return "\n".join(lines)


def fits_table(fits: Sequence[ScalingFit]) -> str:
    """Markdown table of the scaling fits (cost ~ n^a d^b)."""
    lines = ["| quantity | graph | dropout | bits | exponent of n | exponent of d | R^2 | points |", "|" + "---|" * 8]
    for f in fits:
        g = f.group
        lines.append(f"| {f.quantity} | {g['graph']} | {g['dropout']:g} | {g['bits']} | {_num(f.exponent_n, '.2f')} | "
                     f"{_num(f.exponent_d, '.2f')} | {f.r2:.3f} | {f.points} |")
    return "\n".join(lines)


def targets_table(targets: Sequence[TargetCheck]) -> str:
    """Markdown table of the issue's targets and whether this run met them."""
    lines = ["| target | configuration | measured | met? | how |", "|---|---|---|---|---|"]
    for t in targets:
        met = "not measured" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.goal} | {t.config or '–'} | {_num(t.value, '.3g')} | {met} | {t.detail} |")
    return "\n".join(lines)


def markdown_report(
    rows: Sequence[BenchRow],
    privacy: Sequence[PrivacyUtilityRow],
    fits: Sequence[ScalingFit],
    targets: Sequence[TargetCheck],
    meta: Mapping[str, Any],
) -> str:
    """All tables, with the machine and the command, as one Markdown document."""
    machine = meta.get("machine", {})
    load = machine.get("loadavg") or []
    load_end = machine.get("loadavg_end") or []
    start = f"{load[0]:.3g}" if load else "?"
    end = f"{load_end[0]:.3g}" if load_end else "?"
    elapsed = meta.get("elapsed_s")
    parts = [
        "# secagg bench results",
        "",
        "<!-- begin:command -->",
        f"Command: `{meta.get('command', '')}`",
        "",
        f"Machine: {machine.get('cpu')}, {machine.get('cpus')} cores, 1-minute load average "
        f"{start} at the start and {end} at the end"
        + (f", {elapsed / 60:.1f} minutes" if isinstance(elapsed, (int, float)) else "")
        + f"; Python {machine.get('python')}, numpy {machine.get('numpy')}, {machine.get('openssl')}, "
        f"flwr {machine.get('flwr')}.",
        "<!-- end:command -->",
    ]
    sections = [("configurations", "Configurations", bench_table(rows)), ("targets", "Targets", targets_table(targets))]
    if fits:
        sections.append(("scaling", "Scaling (least squares on log-log: cost ~ n^a d^b)", fits_table(fits)))
    if privacy:
        sections.append(("privacy", "Privacy-utility (MSE per coordinate of the sum; central Gaussian at the same "
                                    "epsilon)", privacy_table(privacy)))
    for key, title, table in sections:
        parts += ["", f"## {title}", "", f"<!-- begin:{key} -->", table, f"<!-- end:{key} -->"]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------- plots


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


# ----------------------------------------------------------------------------------- all


def write_outputs(
    out_dir: str | Path,
    rows: Sequence[BenchRow],
    *,
    privacy: Sequence[PrivacyUtilityRow] = (),
    fits: Sequence[ScalingFit] = (),
    targets: Sequence[TargetCheck] = (),
    meta: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write every output file into ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths: dict[str, Path] = {}
    paths["csv"] = write_csv(out / "results.csv", [r.to_dict() for r in rows], ROW_FIELDS)
    if privacy:
        cols = list(privacy[0].to_dict())
        paths["privacy_csv"] = write_csv(out / "privacy_utility.csv", [p.to_dict() for p in privacy], cols)
    report = {
        **meta,
        "rows": [r.to_dict() for r in rows],
        "privacy_utility": [p.to_dict() for p in privacy],
        "scaling": [f.to_dict() for f in fits],
        "targets": [t.to_dict() for t in targets],
    }
    paths["json"] = write_json(out / "results.json", report)
    md = out / "results.md"
    md.write_text(markdown_report(rows, privacy, fits, targets, meta), encoding="utf-8")
    paths["markdown"] = md
    if plots:
        for p in plot_all(out, rows, privacy):
            paths[p.stem] = p
    return paths
