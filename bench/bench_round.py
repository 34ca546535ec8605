"""Full-round benchmarks side by side: secagg, Flower's SecAgg+ and the baselines (pytest-benchmark).

Small sizes (n = 20 clients, d = 10^4, 10% of the clients dropping after sharing keys) so
that CI can smoke-run them with ``--benchmark-disable``.  The published figures come from
``secagg bench`` (docs/benchmarks.md); set ``SECAGG_BENCH_N``/``SECAGG_BENCH_D`` to run
these at other sizes::

    SECAGG_BENCH_N=100 SECAGG_BENCH_D=1000000 .venv/bin/pytest bench/bench_round.py --benchmark-only
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from secagg.benchmarks import (
    BenchConfig,
    flower_available,
    flower_grid_vector,
    keystream_bound,
    mask_bytes,
    measure,
    plaintext_sum,
    run_flower_round,
)
from secagg.simulate import simulate_round

N = int(os.environ.get("SECAGG_BENCH_N", "20"))
D = int(os.environ.get("SECAGG_BENCH_D", "10000"))
K = min(20, N - 1)
DROPPED = list(range(0, N, 10))  # 10% of the clients, after the share-keys stage
POOL = [np.random.default_rng(i).integers(0, 2**32, size=D, dtype=np.uint64).astype(np.uint32) for i in range(3)]


def _inputs(i: int) -> np.ndarray:
    return POOL[i % len(POOL)]


def _round(neighbors: int | str | None) -> Any:
    return simulate_round(_inputs, n=N, d=D, neighbors=neighbors, dropouts={"masked_input": DROPPED}, seed=1)


@pytest.mark.parametrize("neighbors", [K, None, "all"], ids=["k20", "auto", "complete"])
def test_round_secagg(benchmark: Any, neighbors: int | str | None) -> None:
    res = benchmark.pedantic(_round, args=(neighbors,), rounds=1, iterations=1)
    survivors = [i for i in range(N) if i not in DROPPED]
    expect = sum(_inputs(i).astype(np.uint64) for i in survivors) % np.uint64(2**32)
    assert np.array_equal(res.aggregate, expect)
    benchmark.extra_info.update(k=res.k, t=res.t, mask_bytes=mask_bytes(res), timings=res.timings["total"])


@pytest.mark.skipif(not flower_available(), reason="flwr (the flower extra) is not installed")
def test_round_flower(benchmark: Any) -> None:
    res = _round(K)
    xs = [flower_grid_vector(D, i) for i in range(3)]
    fr = benchmark.pedantic(
        run_flower_round,
        args=(N, D),
        kwargs={"neighbors": res.k, "threshold": res.t, "dropouts": {"masked_input": DROPPED},
                "inputs": lambda i: xs[i % 3], "rng": 1},
        rounds=1,
        iterations=1,
    )
    assert fr.ok and fr.correct
    benchmark.extra_info.update(k=fr.k, t=fr.t, timings=fr.timings["total"], quantize_s=fr.quantize_seconds)


def test_plaintext_sum(benchmark: Any) -> None:
    survivors = [i for i in range(N) if i not in DROPPED]
    res = benchmark(lambda: plaintext_sum(_inputs(i) for i in survivors))
    assert res.count == len(survivors)


def test_keystream_bound(benchmark: Any) -> None:
    nbytes = mask_bytes(_round(K))
    res = benchmark.pedantic(keystream_bound, args=(nbytes,), kwargs={"repeats": 1}, rounds=1, iterations=1)
    benchmark.extra_info.update(mask_bytes=nbytes, seconds=res.seconds, gbps=res.bytes_per_second / 1e9)


def test_measure_configuration(benchmark: Any) -> None:
    cfg = BenchConfig(N, D, 0.1, graph="flower-k20", flower=flower_available())
    row = benchmark.pedantic(measure, args=(cfg,), kwargs={"memory": "none", "keystream_sample": 1 << 22},
                             rounds=1, iterations=1)
    assert row.status == "ok" and row.correct
    benchmark.extra_info.update(x_keystream=row.x_keystream, x_plaintext=row.x_plaintext,
                                flower_speedup=row.flower_speedup)
