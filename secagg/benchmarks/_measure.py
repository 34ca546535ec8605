"""Measuring one benchmark cell: our round, then baselines (a), (b) and (c) on its workload.

:func:`measure` runs, in this order and in one process:

1. our round, :func:`secagg.simulate.simulate_round` (real client and server sessions,
   every message encoded and decoded; client time summed over clients), with the peak
   memory of the round above the process baseline;
2. baseline (a), plaintext summation of the survivors' vectors;
3. baseline (b), the keystream time of the mask cipher (AES-128-CTR) for the mask bytes
   the round generated;
4. baseline (c), Flower's SecAgg+ through Flower's own functions, same ``n``, ``d``,
   neighbours ``k``, threshold ``t`` and dropouts (:func:`measure_flower`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from secagg.benchmarks._config import BenchConfig
from secagg.benchmarks._flower_round import flower_available, flower_grid_vector, run_flower_round
from secagg.benchmarks._keystream import client_masks, keystream_bound, mask_bytes
from secagg.benchmarks._memory import MemoryMethod, PeakMemory
from secagg.benchmarks._plaintext import plaintext_sum
from secagg.benchmarks._row import BenchRow, row_for
from secagg.crypto.prg import Masker
from secagg.errors import ProtocolAbort, UnsafeParametersError
from secagg.rand import RandomSource
from secagg.ring import ring_dtype, ring_mask
from secagg.simulate import STAGES, RoundResult, make_config, simulate_round

__all__ = ["Clock", "measure", "measure_flower", "with_flower"]

#: ``"cpu"``: CPU seconds of the measuring process (``time.process_time``); ``"wall"``.
Clock = Literal["cpu", "wall"]
_POOL_BYTES = 64 << 20  # input vectors kept in memory (a few distinct ones, reused round-robin)


def _tick(clock: Clock) -> Callable[[], float]:
    return time.process_time if clock == "cpu" else time.perf_counter


def _random_vector(d: int, dtype: type[np.uint32] | type[np.uint64], bits: int, src: RandomSource) -> npt.NDArray[Any]:
    """Uniform vector over Z_2^bits, filled in 1 MiB slices (no transient copy of the whole)."""
    out = np.empty(d, dtype=dtype)
    step = max(1, (1 << 20) // out.itemsize)
    for i in range(0, d, step):
        src.fill(out[i : i + step])
    if bits not in (32, 64):
        np.bitwise_and(out, dtype(ring_mask(bits)), out=out)
    return out


def _dropout_indices(cfg: BenchConfig) -> list[int]:
    order = np.argsort(RandomSource(cfg.seed + 1_000_003).uint64(cfg.n), kind="stable")
    return sorted(int(i) for i in order[: cfg.dropped])


def _per_client(bytes_by_stage: dict[str, int], count_by_stage: dict[str, int]) -> float:
    return float(sum(bytes_by_stage[s] / count_by_stage[s] for s in STAGES if count_by_stage.get(s)))


@contextmanager
def _simulator_clock(clock: Callable[[], float]) -> Iterator[str]:
    """Make :mod:`secagg.simulate` read ``clock`` for its ``timings`` (it reads
    ``time.perf_counter``); yields the name of the clock in effect."""
    import secagg.simulate as sim

    if clock is time.perf_counter or getattr(sim, "time", None) is not time:
        yield "wall"
        return
    setattr(sim, "time", SimpleNamespace(perf_counter=clock))  # noqa: B010 - module attribute swap
    try:
        yield "cpu"
    finally:
        setattr(sim, "time", time)  # noqa: B010


def measure(
    cfg: BenchConfig,
    *,
    memory: MemoryMethod = "rss",
    keystream_sample: int = 1 << 27,
    clock: Clock = "cpu",
) -> BenchRow:
    """Measure one configuration in this process (see the module docstring).

    ``clock="cpu"`` times everything in CPU seconds of this process
    (``time.process_time``: on a machine shared with other work, wall-clock time mostly
    measures the others), ``"wall"`` in wall-clock seconds; the wall-clock time of each
    round is recorded either way.  With ``cfg.repeats > 1`` our round (and then
    Flower's, when ``cfg.flower``) runs that many times and the fastest is kept.

    Never raises for a round that aborts or parameters the library refuses: the row's
    ``status`` says ``"aborted"`` or ``"refused"`` with the reason in ``note``.
    """
    wall0 = time.perf_counter()
    tick = _tick(clock)
    n, d, bits = cfg.n, cfg.d, cfg.bits
    drop = _dropout_indices(cfg)
    dropouts = {cfg.stage: drop} if drop else None
    try:
        make_config(n, d, bits, neighbors=cfg.neighbors, dropout_fraction=cfg.dropout, rng=cfg.seed)
    except UnsafeParametersError as exc:
        return row_for(cfg, status="refused", note=str(exc), wall_s=time.perf_counter() - wall0)

    dtype = ring_dtype(bits)
    item = np.dtype(dtype).itemsize
    pool_size = int(max(2, min(4, _POOL_BYTES // max(1, d * item))))
    src = RandomSource(cfg.seed)
    pool = [_random_vector(d, dtype, bits, src) for _ in range(pool_size)]

    def inputs(i: int) -> npt.NDArray[Any]:
        return pool[i % pool_size]

    mem = PeakMemory(memory)
    best: RoundResult | None = None
    best_wall = math.inf
    clock_used = "wall"
    for rep in range(cfg.repeats):
        try:
            with _simulator_clock(tick) as clock_used:
                w0 = time.perf_counter()
                if rep == 0:
                    with mem:
                        res = simulate_round(inputs, bits, None, cfg.neighbors, dropouts, cfg.seed, n=n, d=d,
                                             dropout_fraction=cfg.dropout)
                else:
                    res = simulate_round(inputs, bits, None, cfg.neighbors, dropouts, cfg.seed + rep, n=n, d=d,
                                         dropout_fraction=cfg.dropout)
                wall = time.perf_counter() - w0
        except ProtocolAbort as exc:
            return row_for(cfg, status="aborted", note=str(exc), mem_method=mem.method,
                            wall_s=time.perf_counter() - wall0)
        if best is None or _total(res) < _total(best):
            best = res
        best_wall = min(best_wall, wall)
        del res
    assert best is not None
    res = best
    # Correctness: the sum of the survivors' inputs mod 2^bits.
    counts = np.bincount([i % pool_size for i in res.survivors], minlength=pool_size)
    expected = np.zeros(d, dtype=np.uint64)
    for j, c in enumerate(counts):
        if c:
            expected += pool[j].astype(np.uint64) * np.uint64(c)
    expected &= np.uint64(ring_mask(bits))
    correct = bool(np.array_equal(res.aggregate, expected))
    del expected

    plain = plaintext_sum((inputs(i) for i in res.survivors), clock=tick)
    mb = mask_bytes(res)
    ks = keystream_bound(mb, sample_bytes=keystream_sample)
    ks_s, ks_rate = (ks.cpu_seconds, ks.cpu_bytes_per_second) if clock_used == "cpu" else (ks.seconds,
                                                                                            ks.bytes_per_second)
    survivors = set(res.survivors)
    masks = client_masks(res)
    client_ks = masks * d * item / max(1, len(survivors)) / ks_rate
    per_client_masks = max(1, round(masks / max(1, len(survivors))))
    masker = Masker(d, bits)
    acc = pool[0].copy()
    seeds = [(src.bytes(32), 1) for _ in range(per_client_masks)]
    t0 = tick()
    masker.add_many(acc, seeds)
    masker_s = (tick() - t0) * masks / max(1, len(survivors)) / per_client_masks
    del acc
    client_s, server_s = res.timings["total"]["client"], res.timings["total"]["server"]
    total = client_s + server_s
    mask_stage = res.timings["masked_input"]["client"] / max(1, len(survivors))

    senders: dict[str, int] = {}
    receivers: dict[str, int] = {}
    previous = n
    for s in STAGES:  # who was sent this stage's request, and who answered it
        receivers[s] = len(survivors) if s == "unmasking" else previous
        silent = len(set(res.dropped.get(s, ())))
        senders[s] = len(survivors) if s == "masked_input" else receivers[s] - silent
        previous = senders[s]

    values: dict[str, Any] = {
        "k": res.k,
        "t": res.t,
        "survivors": len(res.survivors),
        "recovered": len(res.recovered),
        "correct": correct,
        "clock": clock_used,
        "repeats": cfg.repeats,
        "client_s": client_s,
        "server_s": server_s,
        "total_s": total,
        "wall_round_s": best_wall,
        "client_per_client_s": client_s / n,
        "mask_stage_per_client_s": mask_stage,
        "plaintext_s": plain.seconds,
        "mask_bytes": mb,
        "keystream_s": ks_s,
        "keystream_wall_s": ks.seconds,
        "keystream_gbps": ks_rate / 1e9,
        "client_keystream_s": client_ks,
        "masking_efficiency": client_ks / mask_stage if mask_stage > 0 else None,
        "masker_s": masker_s,
        "masker_efficiency": client_ks / masker_s if masker_s > 0 else None,
        "x_plaintext": total / plain.seconds if plain.seconds > 0 else None,
        "x_keystream": total / ks_s if ks_s > 0 else None,
        "x_keystream_wall": best_wall / ks.seconds if ks.seconds > 0 else None,
        "up_per_client": _per_client(res.bytes_up, senders),
        "down_per_client": _per_client(res.bytes_down, receivers),
        "masked_up_per_client": res.bytes_up["masked_input"] / max(1, len(survivors)),
        "float32_bytes": 4 * d,
        "peak_mem_bytes": mem.peak if mem.method != "none" else None,
        "peak_mem_vectors": mem.peak / (d * item) if mem.method != "none" else None,
        "mem_method": mem.method,
        "status": "ok" if correct else "wrong sum",
    }
    k_used, t_used = res.k, res.t
    del res, plain
    values["wall_s"] = time.perf_counter() - wall0
    row = row_for(cfg, **values)
    if cfg.flower:
        row = with_flower(row, measure_flower(cfg, k=k_used, t=t_used, clock=clock))
        row = replace(row, wall_s=time.perf_counter() - wall0)
    return row


def measure_flower(cfg: BenchConfig, *, k: int, t: int, clock: Clock = "cpu") -> dict[str, Any]:
    """Flower's SecAgg+ on ``cfg``'s workload with neighbours ``k`` and threshold ``t``
    (those of our round), fastest of ``cfg.repeats`` runs; returns the ``flower_*`` fields
    of a :class:`BenchRow`."""
    tick = _tick(clock)
    drop = _dropout_indices(cfg)
    dropouts = {cfg.stage: drop} if drop else None
    best: dict[str, Any] = {}
    for _ in range(cfg.repeats):
        fl = _flower(cfg, k, t, dropouts, tick)
        if not best or (fl.get("flower_total_s") is not None
                        and fl["flower_total_s"] < (best.get("flower_total_s") or math.inf)):
            best = fl
    return best


def with_flower(row: BenchRow, fl: dict[str, Any]) -> BenchRow:
    """``row`` with Flower's fields and the ratios to it."""
    values = {k: v for k, v in fl.items() if k.startswith("flower_") or k == "predicted_flower_s"}
    ft, fw = fl.get("flower_total_s"), fl.get("flower_wall_s")
    if fl.get("flower_status") == "ok" and ft is not None and row.total_s:
        values["flower_speedup"] = ft / row.total_s
        values["flower_speedup_protocol"] = (ft - (fl.get("flower_quantize_s") or 0.0)) / row.total_s
        if fw is not None and row.wall_round_s:
            values["flower_speedup_wall"] = fw / row.wall_round_s
    return replace(row, **values)


def _total(res: RoundResult) -> float:
    return float(res.timings["total"]["client"] + res.timings["total"]["server"])


def _flower(
    cfg: BenchConfig, k: int, t: int, dropouts: dict[str, list[int]] | None, tick: Callable[[], float]
) -> dict[str, Any]:
    if not flower_available():
        return {"flower_status": "skipped", "flower_note": "flwr is not installed (pip install 'secagg[flower]')"}
    if t >= min(k + 1, cfg.n) or t < 2:
        return {"flower_status": "skipped", "flower_note": f"Flower needs 2 <= t < num_shares; t={t}, k={k}"}
    src = RandomSource(cfg.seed + 7)
    size = int(max(2, min(4, _POOL_BYTES // max(1, 4 * cfg.d))))
    pool = [flower_grid_vector(cfg.d, src) for _ in range(size)]
    w0 = time.perf_counter()
    try:
        fr = run_flower_round(
            cfg.n,
            cfg.d,
            neighbors=None if cfg.graph == "complete" else k,
            threshold=t,
            dropouts=dropouts,
            inputs=lambda i: pool[i % size],
            check=True,
            rng=cfg.seed,
            clock=tick,
        )
    except Exception as exc:  # report whatever Flower raised
        return {"flower_status": "error", "flower_note": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {
        "flower_k": fr.k,
        "flower_t": fr.t,
        "flower_client_s": fr.client_seconds,
        "flower_server_s": fr.server_seconds,
        "flower_total_s": fr.total_seconds,
        "flower_wall_s": time.perf_counter() - w0,
        "flower_quantize_s": fr.quantize_seconds,
        "flower_up_per_client": _per_client(fr.bytes_up, fr.senders),
        "flower_down_per_client": _per_client(fr.bytes_down, fr.receivers),
    }
    if not fr.ok:
        out.update(flower_status="halted", flower_note=fr.reason)
        return out
    out.update(flower_status="ok" if fr.correct else "wrong sum", flower_correct=fr.correct)
    return out
