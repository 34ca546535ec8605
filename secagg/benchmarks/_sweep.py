"""The benchmark sweep: every cell of a grid within a time budget, cheapest first.

:func:`run_sweep` runs each configuration in a fresh subprocess by default (so peak
memory is that configuration's alone and a run over budget can be killed), in two passes:
first our round and baselines (a) and (b) for every configuration, cheapest first, then
Flower's baseline (c) with what is left of the budget.  Whatever is predicted not to fit
is skipped and says so.  Predictions come from a cost model (masking bytes plus
per-neighbour key work) rescaled by the ratio measured/predicted of the largest
configuration run so far.  Times are CPU seconds of the measuring process by default
(see :func:`~secagg.benchmarks.measure`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from secagg.benchmarks._config import BenchConfig
from secagg.benchmarks._isolated import measure_flower_isolated, measure_isolated
from secagg.benchmarks._measure import Clock, measure, measure_flower, with_flower
from secagg.benchmarks._memory import MemoryMethod
from secagg.benchmarks._predict import predict_seconds
from secagg.benchmarks._row import BenchRow, row_for
from secagg.benchmarks._validate import check_fraction

__all__ = ["Progress", "run_sweep", "sweep_steps"]

#: Called after each configuration and after each Flower baseline.
Progress = Callable[[BenchConfig, BenchRow], None]


def sweep_steps(configs: Sequence[BenchConfig]) -> int:
    """Number of :func:`run_sweep` progress calls: one per configuration, one more per
    Flower baseline."""
    return len(configs) + sum(1 for c in configs if c.flower)


def run_sweep(
    configs: Sequence[BenchConfig],
    *,
    budget: float | None = None,
    isolate: bool = True,
    memory: MemoryMethod = "rss",
    progress: Progress | None = None,
    keystream_sample: int = 1 << 27,
    clock: Clock = "cpu",
    flower_share: float = 0.4,
) -> list[BenchRow]:
    """Measure ``configs`` within ``budget`` seconds (None: no limit), in two passes.

    Pass 1 measures our round and baselines (a) and (b) for every configuration, cheapest
    first; pass 2 adds Flower's baseline (c), cheapest first, with what is left of the
    budget (Flower is 10 to 100 times slower, so it must not crowd out our own rows); pass
    1 leaves at least ``flower_share`` of the budget to pass 2 when any configuration asks
    for Flower.  A configuration or a Flower run whose predicted time exceeds what its
    pass may still spend is not run and is marked ``"skipped"`` with the prediction in
    ``note``/``flower_note``.  With
    ``isolate`` every run is a fresh Python process (killed if it overruns the remaining
    budget by 25% plus 30 s); otherwise everything runs in this process (``memory`` then
    should be ``"tracemalloc"`` or ``"none"``).  ``clock`` as in :func:`measure`.

    Returns:
        One :class:`BenchRow` per configuration, in the order of ``configs``.
    """
    start = time.perf_counter()
    prior = {cfg: predict_seconds(cfg) for cfg in configs}
    scale = {"ours": 1.0, "flower": 1.0}
    biggest = {"ours": 0.0, "flower": 0.0}
    rows: dict[int, BenchRow] = {}

    def left(reserve: float = 0.0) -> float:
        return math.inf if budget is None else budget * (1.0 - reserve) - (time.perf_counter() - start)

    flower_share = check_fraction(flower_share, "flower_share")
    reserve = flower_share if any(c.flower for c in configs) else 0.0

    def timeout() -> float | None:
        rest = left()
        return rest * 1.25 + 30.0 if math.isfinite(rest) else None

    for i in sorted(range(len(configs)), key=lambda j: prior[configs[j]][0]):
        cfg = configs[i]
        p_ours = prior[cfg][0]
        pred = p_ours * scale["ours"]
        rest = left(reserve)
        if pred > rest:
            row = row_for(cfg, status="skipped", predicted_s=pred,
                          flower_status="skipped" if cfg.flower else "not run",
                          note=f"predicted {pred:.0f} s > {max(0.0, rest):.0f} s left of the budget"
                          + (f" ({reserve:.0%} of it kept for Flower)" if reserve else ""))
        else:
            ours_cfg = replace(cfg, flower=False)
            if isolate:
                row = measure_isolated(ours_cfg, timeout(), memory=memory, keystream_sample=keystream_sample,
                                       clock=clock)
            else:
                row = measure(ours_cfg, memory=memory, keystream_sample=keystream_sample, clock=clock)
            row = replace(row, predicted_s=pred)
            if row.wall_s is not None and row.status in ("ok", "wrong sum") and p_ours >= biggest["ours"]:
                scale["ours"], biggest["ours"] = max(0.25, row.wall_s / p_ours), p_ours
        rows[i] = row
        if progress is not None:
            progress(cfg, row)

    for i in sorted(range(len(configs)), key=lambda j: prior[configs[j]][1]):
        cfg = configs[i]
        if not cfg.flower:
            continue
        row = rows[i]
        p_flower = prior[cfg][1]
        pred = p_flower * scale["flower"]
        rest = left()
        k, t = row.k, row.t
        if row.status not in ("ok", "wrong sum") or k is None or t is None:
            if row.status != "skipped":
                row = replace(row, flower_status="not run", flower_note=f"our round did not run ({row.status})")
        elif pred > rest:
            row = replace(row, flower_status="skipped", predicted_flower_s=pred,
                          flower_note=f"predicted {pred:.0f} s > {max(0.0, rest):.0f} s left of the budget")
        else:
            w0 = time.perf_counter()
            if isolate:
                fl = measure_flower_isolated(cfg, k, t, timeout(), clock=clock)
            else:
                fl = measure_flower(cfg, k=k, t=t, clock=clock)
            row = replace(with_flower(row, fl), predicted_flower_s=pred)
            if row.flower_wall_s is not None and p_flower > 0 and p_flower >= biggest["flower"]:
                scale["flower"] = max(0.25, (time.perf_counter() - w0) / p_flower)
                biggest["flower"] = p_flower
        rows[i] = row
        if progress is not None:
            progress(cfg, row)
    return [rows[i] for i in range(len(configs))]
