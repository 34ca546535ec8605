"""The issue's targets (speed against Flower and the keystream bound, masking efficiency,
upload size, server memory, a round at n=1000), checked against a run's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from secagg.benchmarks._row import BenchRow

__all__ = ["TargetCheck", "check_targets"]

_KS_GOAL = "round within 1.3x of the AES-CTR keystream bound (one core)"


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's targets, checked against a run.

    Attributes:
        name: short name.
        goal: the target in words.
        config: the configuration it was checked on ("" when none was measured).
        value: the measured figure (None when not measured).
        met: True / False, or None when the run did not measure it.
        detail: how the value was obtained, and caveats.
    """

    name: str
    goal: str
    config: str
    value: float | None
    met: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _num_or_dash(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _find(rows: Sequence[BenchRow], **want: Any) -> BenchRow | None:
    for r in rows:
        if r.status in ("ok", "wrong sum") and all(getattr(r, k) == v for k, v in want.items()):
            return r
    return None


def check_targets(rows: Sequence[BenchRow], *, memory_multiple: float = 10.0,
                  limits: Mapping[str, Any] | None = None) -> list[TargetCheck]:
    """The issue's targets (never asserted in tests; reported in docs/benchmarks.md).

    ``memory_multiple`` is what "a small multiple of one vector" is taken to mean;
    ``limits`` is the ``--limits`` measurement (keystream breakdown, cores, streaming).
    """
    out: list[TargetCheck] = []
    main = _find(rows, n=100, d=10**6, dropout=0.1, stage="masked_input", graph="flower-k20", bits=32)
    label = main.config.label if main else ""
    if main is not None and main.flower_speedup is not None:
        out.append(TargetCheck("vs Flower", ">= 10x faster than Flower's SecAgg+", label, main.flower_speedup,
                               main.flower_speedup >= 10.0,
                               f"{main.clock} time: Flower {main.flower_total_s:.2f} s / ours {main.total_s:.2f} s; "
                               f"excluding Flower's quantization {_num_or_dash(main.flower_speedup_protocol)}x; "
                               f"wall clock {_num_or_dash(main.flower_speedup_wall)}x"))
    else:
        note = main.flower_note if main is not None else "configuration not measured"
        out.append(TargetCheck("vs Flower", ">= 10x faster than Flower's SecAgg+", label, None, None,
                               note or "Flower not measured"))
    if main is not None and main.x_keystream is not None:
        out.append(TargetCheck("vs keystream bound", _KS_GOAL, label,
                               main.x_keystream, main.x_keystream <= 1.3,
                               f"{main.clock} time: ours {main.total_s:.2f} s, AES-128-CTR keystream for "
                               f"{main.mask_bytes} mask bytes {main.keystream_s:.2f} s; wall clock "
                               f"{_num_or_dash(main.x_keystream_wall)}x"))
    else:
        out.append(TargetCheck("vs keystream bound", _KS_GOAL, label,
                               None, None, "configuration not measured"))
    eff = [r for r in rows if r.d == 10**6 and r.masking_efficiency is not None]
    if eff:
        best = main if main is not None and main.masking_efficiency is not None else eff[0]
        worst = min(r.masking_efficiency or 0.0 for r in eff)
        out.append(TargetCheck("per-client masking", "per-client masking at d=10^6 >= 50% of the keystream bound",
                               best.config.label, best.masking_efficiency, (best.masking_efficiency or 0) >= 0.5,
                               f"keystream time of one client's masks / its whole masked-input stage (key "
                               f"agreement, share decryption, masking, packing); Masker alone: "
                               f"{_num_or_dash(best.masker_efficiency)}; lowest over {len(eff)} d=10^6 rows: "
                               f"{worst:.2f}"))
    else:
        out.append(TargetCheck("per-client masking", "per-client masking at d=10^6 >= 50% of the keystream bound",
                               "", None, None, "no d=10^6 row measured"))
    goal = "upload per client at b <= 32 <= float32 update (4d bytes), d >= 10^6"
    ups = [r for r in rows if r.bits <= 32 and r.d >= 10**6 and r.up_per_client is not None and r.float32_bytes]
    if ups:
        def rel(r: BenchRow) -> float:
            return (r.up_per_client or 0.0) / (r.float32_bytes or 1)

        worst_row = max(ups, key=rel)
        per_bits = ", ".join(
            f"b={b}: {max(rel(r) for r in ups if r.bits == b):.5f}" for b in sorted({r.bits for r in ups})
        )
        vec = max((r.masked_up_per_client or 0) / (r.float32_bytes or 1) for r in ups)
        out.append(TargetCheck("upload size", goal, worst_row.config.label, rel(worst_row), rel(worst_row) <= 1.0,
                               f"total upload (keys, shares, headers included) / 4d, worst per ring width: "
                               f"{per_bits}; masked-vector message alone at most {vec:.5f} x 4d"))
    else:
        out.append(TargetCheck("upload size", goal, "", None, None, "no row with d >= 10^6 measured"))
    big = [r for r in rows if r.n == 1000 and r.d == 10**6 and r.status in ("ok", "wrong sum")]
    mem_rows = [r for r in big if r.peak_mem_vectors is not None and r.peak_mem_bytes is not None]
    goal = f"server peak memory at n=1000, d=10^6: a small multiple (<= {memory_multiple:g}) of one vector"
    if mem_rows:
        m = min(mem_rows, key=lambda r: r.peak_mem_vectors or 0.0)
        vec = m.d * (4 if m.bits <= 32 else 8)
        raw = (m.peak_mem_bytes or 0) / vec
        small = [r for r in rows if (r.n, r.graph, r.dropout, r.stage, r.bits) == (m.n, m.graph, m.dropout, m.stage,
                 m.bits) and r.d < m.d and r.peak_mem_bytes is not None and r.mem_method == m.mem_method]
        detail = (f"peak of the whole simulated round {(m.peak_mem_bytes or 0) / 2**20:.1f} MiB ({m.mem_method}) = "
                  f"{raw:.1f} vectors of {vec / 2**20:.1f} MiB: an upper bound, as the simulator also holds all "
                  f"{m.n} client sessions, the active client's input and a uint64 copy of the result")
        value = raw
        if small:
            base = min(small, key=lambda r: r.d)
            value = ((m.peak_mem_bytes or 0) - (base.peak_mem_bytes or 0)) / vec
            detail += (f"; the part growing with d (minus the same round at d={base.d}: "
                       f"{(base.peak_mem_bytes or 0) / 2**20:.1f} MiB) is {value:.1f} vectors")
        out.append(TargetCheck("server memory", goal, m.config.label, value, value <= memory_multiple, detail))
    else:
        out.append(TargetCheck("server memory", goal, "", None, None, "n=1000, d=10^6 not measured"))
    done = [r for r in rows if r.n == 1000 and r.d == 10**6]
    ok = [r for r in done if r.status == "ok" and r.correct]
    if ok:
        r = ok[0]
        out.append(TargetCheck("n=1000 round", "a round at n=1000, d=10^6 completes on this machine", r.config.label,
                               r.total_s, True, f"correct sum in {r.total_s:.1f} s (client {r.client_s:.1f} s, "
                               f"server {r.server_s:.1f} s)"))
    else:
        why = "; ".join(f"{r.config.label}: {r.status} {r.note}" for r in done) or "not measured"
        out.append(TargetCheck("n=1000 round", "a round at n=1000, d=10^6 completes on this machine", "", None,
                               False if done else None, why))
    out += _limit_targets(limits or {})
    return out


def _limit_targets(limits: Mapping[str, Any]) -> list[TargetCheck]:
    out: list[TargetCheck] = []
    cores = [r for r in limits.get("cores", ()) if r["workers"] > 1]
    goal = "with 2 cores the round >= 1.8x faster than with 1 (worker processes)"
    if cores:
        r = max(cores, key=lambda c: c["workers"])
        b = limits["breakdown"]
        cfg = f"n={b['n']} d={b['d']:.0e} k={b['k']} workers={r['workers']}"
        val = r["speedup_cpu_path"]
        out.append(TargetCheck("per-core speedup", goal, cfg, val, val is not None and val >= 1.8,
                               f"CPU time of the one-process round / CPU critical path of the {r['workers']}-worker "
                               f"round (driver CPU + workers' CPU / {r['workers']}: a lower estimate); wall clock "
                               f"{r['speedup_wall']:.2f}x at load average {r['load']}"))
    else:
        out.append(TargetCheck("per-core speedup", goal, "", None, None, "not measured (secagg bench --limits)"))
    streamed = limits.get("streamed", ())
    goal = "streamed round at d=1e7 and 1e8: peak memory < 3 updates, within 1.5x of the keystream bound"
    if streamed:
        worst_mem = max(max(r["client_peak_updates"], r["server_peak_updates"]) for r in streamed)
        worst_x = max(r["x_keystream"] for r in streamed)
        dims = ", ".join(f"{r['d']:.0e}" for r in streamed)
        out.append(TargetCheck("streamed round", goal, f"d={dims}", worst_x, worst_mem < 3 and worst_x <= 1.5,
                               f"worst peak {worst_mem:.2f} updates (client or server), worst {worst_x:.2f}x the "
                               f"keystream bound; masking data path only (the protocol's MaskedInput is one message)"))
    else:
        out.append(TargetCheck("streamed round", goal, "", None, None, "not measured (secagg bench --limits)"))
    return out
