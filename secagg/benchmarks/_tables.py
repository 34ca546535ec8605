"""Markdown tables of a benchmark run: configurations, privacy-utility, scaling, targets.

Units in the tables: seconds, bytes (KiB/MiB where marked), and ratios.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from secagg.benchmarks._privacy_utility import PrivacyUtilityRow
from secagg.benchmarks._row import BenchRow
from secagg.benchmarks._scaling import ScalingFit
from secagg.benchmarks._targets import TargetCheck

__all__ = ["bench_table", "fits_table", "markdown_report", "privacy_table", "targets_table"]


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
    if meta.get("limits"):
        from secagg.benchmarks._limits_report import limits_markdown

        sections.append(("limits", "At the limit: keystream bound, cores, streaming", limits_markdown(meta["limits"])))
    if meta.get("scale"):
        from secagg.benchmarks._limits_report import scale_markdown

        sections.append(("scale", "Scale: cost model measured vs predicted", scale_markdown(meta["scale"])))
    for key, title, table in sections:
        parts += ["", f"## {title}", "", f"<!-- begin:{key} -->", table, f"<!-- end:{key} -->"]
    return "\n".join(parts) + "\n"
