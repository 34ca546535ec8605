"""Prior cost model of a benchmark cell, which the sweep uses to fit its time budget."""

from __future__ import annotations

from secagg.benchmarks._config import BenchConfig
from secagg.errors import SecAggError
from secagg.simulate import make_config

__all__ = ["predict_seconds"]

_SPAWN_SECONDS = 2.0  # subprocess start-up and imports (predicted)


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
    :func:`~secagg.benchmarks.run_sweep` rescales them by what it measures.
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
