"""The benchmark sweep: configurations, one measurement per configuration, time budget,
peak memory, bytes per client, scaling fits and the issue's targets.

One configuration is (clients ``n``, dimension ``d``, dropout fraction at a stage, graph,
ring bits).  :func:`measure` runs, in this order and in one process:

1. our round, :func:`secagg.simulate.simulate_round` (real client and server sessions,
   every message encoded and decoded; client time summed over clients), with the peak
   memory of the round above the process baseline;
2. baseline (a), plaintext summation of the survivors' vectors;
3. baseline (b), the keystream time of the mask cipher (AES-128-CTR) for the mask bytes
   the round generated;
4. baseline (c), Flower's SecAgg+ through Flower's own functions, same ``n``, ``d``,
   neighbours ``k``, threshold ``t`` and dropouts.

:func:`run_sweep` runs each configuration in a fresh subprocess by default (so peak
memory is that configuration's alone and a run over budget can be killed), in two passes:
first our round and baselines (a) and (b) for every configuration, cheapest first, then
Flower's baseline (c) with what is left of the budget.  Whatever is predicted not to fit
is skipped and says so.  Predictions come from a cost model (masking bytes plus
per-neighbour key work) rescaled by the ratio measured/predicted of the largest
configuration run so far.  Times are CPU seconds of the measuring process by default
(see :func:`measure`).

Graphs: ``"flower-k20"`` = SecAgg+ with ``k = min(20, n - 1)`` neighbours (Flower's
examples), ``"auto"`` = SecAgg+ with ``k`` and ``t`` from the threat model
(:func:`secagg.graph.choose_parameters` with the dropout fraction), ``"complete"`` =
every client a neighbour (classic SecAgg).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from secagg.benchmarks.baselines import (
    flower_available,
    flower_grid_vector,
    keystream_bound,
    mask_bytes,
    plaintext_sum,
    run_flower_round,
)
from secagg.crypto.prg import Masker
from secagg.errors import ProtocolAbort, SecAggError, SecAggValueError, UnsafeParametersError
from secagg.rand import RandomSource
from secagg.ring import ring_dtype, ring_mask
from secagg.simulate import STAGES, RoundResult, make_config, simulate_round

__all__ = [
    "GRAPHS",
    "BenchConfig",
    "BenchRow",
    "MemoryMethod",
    "ScalingFit",
    "TargetCheck",
    "check_targets",
    "fit_scaling",
    "grid",
    "machine_info",
    "measure",
    "measure_flower",
    "predict_seconds",
    "run_sweep",
    "sweep_steps",
]

GRAPHS: tuple[str, ...] = ("flower-k20", "auto", "complete")
MemoryMethod = Literal["rss", "tracemalloc", "none"]
_FLOWER_K = 20
_POOL_BYTES = 64 << 20  # input vectors kept in memory (a few distinct ones, reused round-robin)
_SPAWN_SECONDS = 2.0  # subprocess start-up and imports (predicted)


# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration.

    Attributes:
        n: clients.
        d: vector length.
        dropout: fraction of the clients that go silent, all at ``stage``.
        stage: the stage they drop before (``"advertise_keys"``, ``"share_keys"``,
            ``"masked_input"`` = after sharing keys, ``"unmasking"``).
        graph: ``"flower-k20"``, ``"auto"`` or ``"complete"``.
        bits: ring bit width of our round (Flower always works mod 2^32 on int64 values).
        flower: also run Flower's SecAgg+ on the same workload.
        seed: seeds the inputs, the dropouts and our protocol's randomness.
        repeats: run both rounds this many times (alternately) and keep the fastest.
    """

    n: int
    d: int
    dropout: float = 0.1
    stage: str = "masked_input"
    graph: str = "flower-k20"
    bits: int = 32
    flower: bool = True
    seed: int = 0
    repeats: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 3:
            raise SecAggValueError(f"n must be an int >= 3, got {self.n!r}")
        if isinstance(self.d, bool) or not isinstance(self.d, int) or self.d < 1:
            raise SecAggValueError(f"d must be an int >= 1, got {self.d!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise SecAggValueError(f"dropout must be a fraction in [0, 1), got {self.dropout!r}")
        if self.stage not in STAGES:
            raise SecAggValueError(f"stage must be one of {list(STAGES)}, got {self.stage!r}")
        if self.graph not in GRAPHS:
            raise SecAggValueError(f"graph must be one of {list(GRAPHS)}, got {self.graph!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 64:
            raise SecAggValueError(f"bits must be an int in [2, 64], got {self.bits!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise SecAggValueError(f"repeats must be an int >= 1, got {self.repeats!r}")
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def neighbors(self) -> int | str | None:
        """The ``neighbors`` argument of :func:`secagg.simulate.simulate_round`."""
        if self.graph == "flower-k20":
            return min(_FLOWER_K, self.n - 1)
        return None if self.graph == "auto" else "all"

    @property
    def dropped(self) -> int:
        """Number of clients that drop, ``round(dropout * n)``."""
        return round(self.dropout * self.n)

    @property
    def label(self) -> str:
        """Short human-readable name."""
        return f"n={self.n} d={self.d} drop={self.dropout:g}@{self.stage} {self.graph} b={self.bits}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def grid(
    clients: Iterable[int],
    dims: Iterable[int],
    dropouts: Iterable[float],
    graphs: Iterable[str],
    *,
    bits: Iterable[int] = (32,),
    stage: str = "masked_input",
    flower: bool = True,
    seed: int = 0,
    repeats: int = 1,
) -> list[BenchConfig]:
    """Every combination, as :class:`BenchConfig` objects (validated)."""
    return [
        BenchConfig(n, d, f, stage, g, b, flower, seed, repeats)
        for n in clients
        for d in dims
        for f in dropouts
        for g in graphs
        for b in bits
    ]


# ------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class BenchRow:
    """Everything measured for one configuration (seconds, bytes; None = not measured).

    Seconds are in ``clock`` time: ``"cpu"`` = CPU time of the measuring process
    (``time.process_time``; robust when other work shares the machine) or ``"wall"``.
    Whatever the clock, ``wall_round_s``, ``keystream_wall_s`` and ``flower_wall_s`` are
    wall-clock, and ``x_keystream_wall``/``flower_speedup_wall`` the wall-clock ratios.
    With ``repeats > 1`` the fastest of that many rounds is reported.

    Our round: ``client_s`` is the client work summed over all clients, ``server_s`` the
    server's, ``total_s`` their sum (one process, in sequence, as Flower's figure).
    ``client_per_client_s = client_s / n``; ``mask_stage_per_client_s`` is one surviving
    client's masked-input stage (key agreement with each neighbour, share decryption,
    masking, packing).  ``client_keystream_s`` is the keystream bound for that client's
    masks, and ``masking_efficiency = client_keystream_s / mask_stage_per_client_s``.

    Ratios: ``x_plaintext = total_s / plaintext_s``, ``x_keystream = total_s /
    keystream_s``, ``flower_speedup = flower_total_s / total_s`` (> 1: we are faster);
    ``flower_speedup_protocol`` leaves Flower's quantization out of its time.

    Bytes per client are for a client that completes every stage: the sum over stages of
    that stage's bytes divided by the clients that sent (up) or were sent (down) a message
    in it.  ``float32_bytes = 4 d``, the size of the update as float32.

    ``peak_mem_bytes``: peak memory of our round above the process baseline, measured as
    ``mem_method`` says (``"rss"``: peak resident set size from ``getrusage`` minus the
    resident size before the round, in a fresh process; ``"tracemalloc"``: peak traced
    allocations).  It covers the server's state plus the one client active at a time plus
    the simulator's copy of the result, so it is an upper bound on the server's own peak;
    ``peak_mem_vectors`` divides it by one vector, ``d * itemsize`` bytes.
    """

    n: int
    d: int
    dropout: float
    stage: str
    graph: str
    bits: int
    status: str = "ok"
    note: str = ""
    k: int | None = None
    t: int | None = None
    survivors: int | None = None
    recovered: int | None = None
    correct: bool | None = None
    clock: str = "cpu"
    repeats: int = 1
    client_s: float | None = None
    server_s: float | None = None
    total_s: float | None = None
    wall_round_s: float | None = None
    client_per_client_s: float | None = None
    mask_stage_per_client_s: float | None = None
    plaintext_s: float | None = None
    mask_bytes: int | None = None
    keystream_s: float | None = None
    keystream_wall_s: float | None = None
    keystream_gbps: float | None = None
    client_keystream_s: float | None = None
    masking_efficiency: float | None = None
    masker_s: float | None = None
    masker_efficiency: float | None = None
    x_plaintext: float | None = None
    x_keystream: float | None = None
    x_keystream_wall: float | None = None
    up_per_client: float | None = None
    down_per_client: float | None = None
    masked_up_per_client: float | None = None
    float32_bytes: int | None = None
    peak_mem_bytes: int | None = None
    peak_mem_vectors: float | None = None
    mem_method: str = "none"
    flower_status: str = "not run"
    flower_note: str = ""
    flower_k: int | None = None
    flower_t: int | None = None
    flower_client_s: float | None = None
    flower_server_s: float | None = None
    flower_total_s: float | None = None
    flower_wall_s: float | None = None
    flower_quantize_s: float | None = None
    flower_correct: bool | None = None
    flower_up_per_client: float | None = None
    flower_down_per_client: float | None = None
    flower_speedup: float | None = None
    flower_speedup_protocol: float | None = None
    flower_speedup_wall: float | None = None
    predicted_s: float | None = None
    predicted_flower_s: float | None = None
    wall_s: float | None = None

    @property
    def config(self) -> BenchConfig:
        """The configuration of this row."""
        return BenchConfig(self.n, self.d, self.dropout, self.stage, self.graph, self.bits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRow:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


#: Column order of the CSV output.
ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(BenchRow))


def _row_for(cfg: BenchConfig, **values: Any) -> BenchRow:
    return BenchRow(cfg.n, cfg.d, cfg.dropout, cfg.stage, cfg.graph, cfg.bits, **values)


# ---------------------------------------------------------------------------------- memory


def _rss_now() -> int | None:
    """Current resident set size in bytes (Linux /proc), or None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _rss_peak() -> int | None:
    """Peak resident set size of this process in bytes (``getrusage``), or None."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


class _Memory:
    """Peak memory of a block above the memory at its start."""

    def __init__(self, method: MemoryMethod) -> None:
        if method == "rss" and (_rss_now() is None or _rss_peak() is None):
            method = "tracemalloc"
        self.method: MemoryMethod = method
        self.peak = 0
        self._base = 0
        self._started_trace = False

    def __enter__(self) -> _Memory:
        if self.method == "rss":
            self._base = _rss_now() or 0
        elif self.method == "tracemalloc":
            self._started_trace = not tracemalloc.is_tracing()
            if self._started_trace:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "rss":
            self.peak = max(0, (_rss_peak() or 0) - self._base)
        elif self.method == "tracemalloc":
            self.peak = max(0, tracemalloc.get_traced_memory()[1] - self._base)
            if self._started_trace:
                tracemalloc.stop()


# ------------------------------------------------------------------------------- measuring


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
    clock: Literal["cpu", "wall"] = "cpu",
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
    tick: Callable[[], float] = time.process_time if clock == "cpu" else time.perf_counter
    n, d, bits = cfg.n, cfg.d, cfg.bits
    drop = _dropout_indices(cfg)
    dropouts = {cfg.stage: drop} if drop else None
    try:
        make_config(n, d, bits, neighbors=cfg.neighbors, dropout_fraction=cfg.dropout, rng=cfg.seed)
    except UnsafeParametersError as exc:
        return _row_for(cfg, status="refused", note=str(exc), wall_s=time.perf_counter() - wall0)

    dtype = ring_dtype(bits)
    item = np.dtype(dtype).itemsize
    pool_size = int(max(2, min(4, _POOL_BYTES // max(1, d * item))))
    src = RandomSource(cfg.seed)
    pool = [_random_vector(d, dtype, bits, src) for _ in range(pool_size)]

    def inputs(i: int) -> npt.NDArray[Any]:
        return pool[i % pool_size]

    mem = _Memory(memory)
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
            return _row_for(cfg, status="aborted", note=str(exc), mem_method=mem.method,
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
    before = set(res.dropped["advertise_keys"]) | set(res.dropped["share_keys"])
    sharing = {u for u in res.graph if u not in before}
    client_masks = sum(1 + len(res.graph.get(u, frozenset()) & sharing) for u in survivors)
    client_ks = client_masks * d * item / max(1, len(survivors)) / ks_rate
    per_client_masks = max(1, round(client_masks / max(1, len(survivors))))
    masker = Masker(d, bits)
    acc = pool[0].copy()
    seeds = [(src.bytes(32), 1) for _ in range(per_client_masks)]
    t0 = tick()
    masker.add_many(acc, seeds)
    masker_s = (tick() - t0) * client_masks / max(1, len(survivors)) / per_client_masks
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
    row = _row_for(cfg, **values)
    if cfg.flower:
        row = _with_flower(row, measure_flower(cfg, k=k_used, t=t_used, clock=clock))
        row = replace(row, wall_s=time.perf_counter() - wall0)
    return row


def measure_flower(cfg: BenchConfig, *, k: int, t: int, clock: Literal["cpu", "wall"] = "cpu") -> dict[str, Any]:
    """Flower's SecAgg+ on ``cfg``'s workload with neighbours ``k`` and threshold ``t``
    (those of our round), fastest of ``cfg.repeats`` runs; returns the ``flower_*`` fields
    of a :class:`BenchRow`."""
    tick: Callable[[], float] = time.process_time if clock == "cpu" else time.perf_counter
    drop = _dropout_indices(cfg)
    dropouts = {cfg.stage: drop} if drop else None
    best: dict[str, Any] = {}
    for _ in range(cfg.repeats):
        fl = _flower(cfg, k, t, dropouts, tick)
        if not best or (fl.get("flower_total_s") is not None
                        and fl["flower_total_s"] < (best.get("flower_total_s") or math.inf)):
            best = fl
    return best


def _with_flower(row: BenchRow, fl: dict[str, Any]) -> BenchRow:
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


# ------------------------------------------------------------------------------ prediction


def _params(cfg: BenchConfig) -> tuple[int, int] | None:
    try:
        rc, _ = make_config(cfg.n, 1, cfg.bits, neighbors=cfg.neighbors, dropout_fraction=cfg.dropout, rng=0)
    except SecAggError:
        return None
    return (cfg.n - 1 if rc.complete else rc.degree), rc.t


def predict_seconds(cfg: BenchConfig) -> tuple[float, float]:
    """Prior estimate (seconds) of ``(our round plus baselines, Flower's round)``.

    Our round: 0.6 ns per mask byte plus ``0.4 ms + 3 us * t`` per (client, neighbour)
    (key agreement, Shamir, AEAD).  Flower: 1.1 ns per mask byte (int64 values, 4-byte
    equivalent) plus ``2.8 ms + 0.16 ms * t`` per (client, neighbour), fitted to the
    measured Flower figures in the project's notes.  Both are for ``cfg.repeats`` rounds;
    :func:`run_sweep` rescales them by what it measures.
    """
    p = _params(cfg)
    if p is None:
        return 0.5, 0.0
    k, t = p
    item = 4 if cfg.bits <= 32 else 8
    n, d = cfg.n, cfg.d
    work = n * (k + 2) * d
    ours = 0.6e-9 * work * item + n * k * (4e-4 + 3e-6 * t) + 3e-9 * n * d + _SPAWN_SECONDS
    flower = 1.1e-9 * work * 4 + n * k * (2.8e-3 + 1.6e-4 * t) if cfg.flower else 0.0
    return ours * cfg.repeats, flower * cfg.repeats


# ---------------------------------------------------------------------------------- sweep


Progress = Callable[[BenchConfig, BenchRow], None]


def _spawn(args: list[str], timeout: float | None) -> tuple[list[str] | None, str]:
    """Run ``python -m secagg.benchmarks.sweep ARGS``; JSON lines of its stdout, or None and why."""
    import secagg

    root = str(Path(secagg.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "secagg.benchmarks.sweep", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return None, f"killed after {timeout or 0:.0f} s (over the time budget)"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"exit {proc.returncode}: {tail[0]}"
    return lines, ""


def _run_isolated(cfg: BenchConfig, timeout: float | None, memory: MemoryMethod, clock: str) -> BenchRow:
    lines, err = _spawn(["--one", json.dumps(cfg.to_dict()), "--memory", memory, "--clock", clock], timeout)
    if lines is None:
        return _row_for(cfg, status="timeout" if err.startswith("killed") else "error", note=err)
    return BenchRow.from_dict(json.loads(lines[-1]))


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
    clock: Literal["cpu", "wall"] = "cpu",
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

    if not 0.0 <= flower_share < 1.0:
        raise SecAggValueError(f"flower_share must be in [0, 1), got {flower_share}")
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
            row = _row_for(cfg, status="skipped", predicted_s=pred,
                           flower_status="skipped" if cfg.flower else "not run",
                           note=f"predicted {pred:.0f} s > {max(0.0, rest):.0f} s left of the budget"
                           + (f" ({reserve:.0%} of it kept for Flower)" if reserve else ""))
        else:
            ours_cfg = replace(cfg, flower=False)
            if isolate:
                row = _run_isolated(ours_cfg, timeout(), memory, clock)
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
                fl = _run_isolated_flower(cfg, k, t, timeout(), clock)
            else:
                fl = measure_flower(cfg, k=k, t=t, clock=clock)
            row = replace(_with_flower(row, fl), predicted_flower_s=pred)
            if row.flower_wall_s is not None and p_flower > 0 and p_flower >= biggest["flower"]:
                scale["flower"] = max(0.25, (time.perf_counter() - w0) / p_flower)
                biggest["flower"] = p_flower
        rows[i] = row
        if progress is not None:
            progress(cfg, row)
    return [rows[i] for i in range(len(configs))]


def _run_isolated_flower(cfg: BenchConfig, k: int, t: int, timeout: float | None, clock: str) -> dict[str, Any]:
    lines, err = _spawn(["--one", json.dumps(cfg.to_dict()), "--flower-only", f"{k},{t}", "--clock", clock], timeout)
    if lines is None:
        return {"flower_status": "timeout" if err.startswith("killed") else "error", "flower_note": err}
    data: dict[str, Any] = json.loads(lines[-1])
    return data


# --------------------------------------------------------------------------------- scaling


@dataclass(frozen=True)
class ScalingFit:
    """Least-squares fit ``log y = c + a log n + b log d`` over one group of rows.

    Attributes:
        quantity: the row field fitted (seconds).
        group: ``graph``, ``dropout``, ``stage`` and ``bits`` shared by the rows.
        exponent_n: ``a`` (None when n did not vary); cost grows like n^a.
        exponent_d: ``b`` (None when d did not vary).
        coefficient: ``exp(c)``.
        r2: coefficient of determination on the log scale.
        points: rows used.
    """

    quantity: str
    group: dict[str, Any]
    exponent_n: float | None
    exponent_d: float | None
    coefficient: float
    r2: float
    points: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


_FIT_QUANTITIES = ("client_per_client_s", "server_s", "total_s", "flower_total_s")


def fit_scaling(rows: Iterable[BenchRow], quantities: Sequence[str] = _FIT_QUANTITIES) -> list[ScalingFit]:
    """Fit how each quantity grows with ``n`` and ``d``, per (graph, dropout, stage, bits)
    group with at least three measured rows.  With k fixed (``flower-k20``) the exponent of
    ``n`` is the per-client growth; with ``auto`` it includes k's growth with n."""
    groups: dict[tuple[str, float, str, int], list[BenchRow]] = {}
    for r in rows:
        groups.setdefault((r.graph, r.dropout, r.stage, r.bits), []).append(r)
    out: list[ScalingFit] = []
    for (graph, dropout, stage, bits), members in sorted(groups.items()):
        for q in quantities:
            pts = [(r.n, r.d, getattr(r, q)) for r in members if isinstance(getattr(r, q), (int, float))]
            pts = [(n, d, float(y)) for n, d, y in pts if y is not None and y > 0]
            if len(pts) < 3:
                continue
            ns = {p[0] for p in pts}
            ds = {p[1] for p in pts}
            cols: list[npt.NDArray[np.float64]] = [np.ones(len(pts))]
            if len(ns) > 1:
                cols.append(np.log([p[0] for p in pts]))
            if len(ds) > 1:
                cols.append(np.log([p[1] for p in pts]))
            if len(cols) == 1:
                continue
            a = np.column_stack(cols)
            y = np.log([p[2] for p in pts])
            coef, *_ = np.linalg.lstsq(a, y, rcond=None)
            resid = y - a @ coef
            ss_tot = float(np.sum((y - y.mean()) ** 2))
            r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
            j = 1
            e_n = e_d = None
            if len(ns) > 1:
                e_n, j = float(coef[j]), j + 1
            if len(ds) > 1:
                e_d = float(coef[j])
            group = {"graph": graph, "dropout": dropout, "stage": stage, "bits": bits}
            out.append(ScalingFit(q, group, e_n, e_d, float(math.exp(coef[0])), r2, len(pts)))
    return out


# --------------------------------------------------------------------------------- targets


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


def check_targets(rows: Sequence[BenchRow], *, memory_multiple: float = 10.0) -> list[TargetCheck]:
    """The issue's targets (never asserted in tests; reported in docs/benchmarks.md).

    ``memory_multiple`` is what "a small multiple of one vector" is taken to mean.
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
        out.append(TargetCheck("vs keystream bound", "round within 2x of the AES-CTR keystream bound", label,
                               main.x_keystream, main.x_keystream <= 2.0,
                               f"{main.clock} time: ours {main.total_s:.2f} s, AES-128-CTR keystream for "
                               f"{main.mask_bytes} mask bytes {main.keystream_s:.2f} s; wall clock "
                               f"{_num_or_dash(main.x_keystream_wall)}x"))
    else:
        out.append(TargetCheck("vs keystream bound", "round within 2x of the AES-CTR keystream bound", label,
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
    return out


# ------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU, core count, load, and library versions, for the report."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
        info["cpu"] = model
    except OSError:
        info["cpu"] = platform.processor() or None
    try:
        info["loadavg"] = list(os.getloadavg())
    except (OSError, AttributeError):
        info["loadavg"] = None
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend

        info["cryptography"] = cryptography.__version__
        info["openssl"] = backend.openssl_version_text()
    except Exception:  # informational only
        info["openssl"] = None
    from secagg.benchmarks.baselines import flower_version

    info["flwr"] = flower_version()
    return info


# ------------------------------------------------------------------------ subprocess entry


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m secagg.benchmarks.sweep", description="measure one configuration")
    ap.add_argument("--one", required=True, help="BenchConfig as JSON")
    ap.add_argument("--memory", default="rss", choices=["rss", "tracemalloc", "none"])
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    ap.add_argument("--flower-only", default=None, metavar="K,T", help="only Flower's round, with these k and t")
    args = ap.parse_args(argv)
    cfg = BenchConfig.from_dict(json.loads(args.one))
    if args.flower_only:
        k, t = (int(x) for x in args.flower_only.split(","))
        print(json.dumps(measure_flower(cfg, k=k, t=t, clock=args.clock)))
        return 0
    row = measure(cfg, memory=args.memory, clock=args.clock)
    print(json.dumps(row.to_dict()))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through run_sweep(isolate=True)
    raise SystemExit(_main())

