"""Benchmarks of a full simulated SecAgg+ round (pytest-benchmark).

CI runs these with ``--benchmark-disable`` as smoke tests at the small default sizes.
``test_round`` runs each configuration in active mode and in the semi-honest protocol.
The issue's workload (n = 100, d = 10^6, 10% dropout after share-keys, k = 20) runs
when ``SECAGG_BENCH_FULL=1`` is set::

    SECAGG_BENCH_FULL=1 .venv/bin/pytest bench/bench_protocol.py --benchmark-only

:func:`compare_modes` measures active against semi-honest CPU time (``time.process_time``,
per stage, rounds alternating between the modes, the least of three kept) with the load
average beside it; ``python bench/bench_protocol.py [N D K]`` prints it as JSON (default
n = 100, d = 10^6, k = 20).

``test_keystream_bound`` times the masks' own cipher (:func:`secagg.crypto.keystream`,
OpenSSL AES-128-CTR through ``cryptography``) writing, with ``update_into``, the same
number of mask bytes the round generates: the hardware bound the round is compared to.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from secagg.crypto import keystream
from secagg.simulate import RoundResult, simulate_round

FULL = os.environ.get("SECAGG_BENCH_FULL") == "1"
N, D = (100, 10**6) if FULL else (20, 10**4)
K = 20 if FULL else 6


def _inputs(n: int, d: int) -> Any:
    """Every client's input is the same vector of ones (made once: producing inputs is
    training's cost, not the protocol's); the sum is the number of survivors."""
    ones = np.ones(d, dtype=np.uint32)

    def make(i: int) -> npt.NDArray[np.uint32]:
        return ones

    return make


def _dropouts(n: int) -> dict[str, list[int]]:
    return {"masked_input": list(range(0, n, 10))}  # 10% after share-keys


def mask_bytes(res: RoundResult) -> int:
    """Bytes of PRG output a round generated: per masking client one self mask plus one
    pairwise mask per key-sharing neighbour; per survivor one self mask removed by the
    server; per recovered key one pairwise mask per surviving neighbour."""
    item = 4 if res.bits <= 32 else 8
    dropped_before = set(res.dropped["advertise_keys"]) | set(res.dropped["share_keys"])
    shared = [u for u in res.graph if u not in dropped_before]
    sharing = set(shared)
    survivors = set(res.survivors)
    masks = sum(1 + len(res.graph[u] & sharing) for u in survivors)  # clients
    masks += len(survivors)  # server: self masks
    masks += sum(len(res.graph[v] & survivors) for v in res.recovered)  # server: recovered pairs
    return int(masks * res.d * item)


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
@pytest.mark.parametrize("neighbors", [K, None], ids=["k", "auto"])
def test_round(benchmark: Any, neighbors: int | None, active: bool) -> None:
    """The round in both modes side by side: active mode (signed advertisements, share
    trees, the consistency round, signed reveals) against the semi-honest protocol; the
    cost of active mode is per client (signatures, hashing), not per coordinate."""
    res = benchmark.pedantic(
        simulate_round,
        args=(_inputs(N, D),),
        kwargs={"n": N, "d": D, "neighbors": neighbors, "dropouts": _dropouts(N), "seed": 1, "active": active},
        rounds=1,
        iterations=1,
    )
    assert np.array_equal(res.aggregate, np.full(D, len(res.survivors), dtype=np.uint64))
    assert res.active is active
    benchmark.extra_info.update(k=res.k, t=res.t, mask_bytes=mask_bytes(res), active=active)


def test_keystream_bound(benchmark: Any) -> None:
    res = simulate_round(_inputs(N, D), n=N, d=D, neighbors=K, dropouts=_dropouts(N), seed=1, active=False)
    total = mask_bytes(res)
    chunk = 1 << 18
    zeros = bytes(chunk)
    out = bytearray(chunk + 15)

    def generate() -> float:
        t0 = time.perf_counter()
        enc = keystream(bytes(32))  # the mask PRG's cipher: AES-128-CTR
        for _ in range(total // chunk):
            enc.update_into(zeros, out)
        return time.perf_counter() - t0

    seconds = benchmark.pedantic(generate, rounds=1, iterations=1)
    benchmark.extra_info.update(mask_bytes=total, seconds=seconds)


def compare_modes(n: int = N, d: int = D, k: int = K, repeats: int = 3) -> dict[str, Any]:
    """Active vs semi-honest CPU time of the same round, side by side in one process.

    Every stage's client and server time is read from ``time.process_time`` (the
    simulator's clock is swapped for the run), rounds alternate between the modes so a
    change of load hits both, and the least of ``repeats`` rounds is kept per mode.  The
    load average is reported with the figures: CPU time also grows on a loaded machine
    (shared caches, hyper-threads), if less than wall time.
    """
    import secagg.simulate as sim

    best: dict[bool, tuple[float, dict[str, dict[str, float]]]] = {}
    load0 = os.getloadavg()
    saved = sim.time.perf_counter
    sim.time.perf_counter = time.process_time  # type: ignore[assignment]
    try:
        for _ in range(repeats):
            for active in (False, True):
                t0 = time.process_time()
                res = simulate_round(_inputs(n, d), n=n, d=d, neighbors=k, dropouts=_dropouts(n), seed=1, active=active)
                cpu = time.process_time() - t0
                assert res.active is active
                if active not in best or cpu < best[active][0]:
                    best[active] = (cpu, res.timings)
    finally:
        sim.time.perf_counter = saved  # type: ignore[assignment]
    load1 = os.getloadavg()
    return {
        "n": n,
        "d": d,
        "k": k,
        "repeats": repeats,
        "semi_honest_cpu_s": best[False][0],
        "active_cpu_s": best[True][0],
        "ratio": best[True][0] / best[False][0],
        "stages": {"semi-honest": best[False][1], "active": best[True][1]},
        "load_average": (load0, load1),
        "cores": os.cpu_count(),
    }


def test_compare_modes() -> None:
    """Smoke test of :func:`compare_modes` (the full figure: ``python bench/bench_protocol.py``)."""
    out = compare_modes(repeats=1)
    assert out["active_cpu_s"] > 0 and out["semi_honest_cpu_s"] > 0
    assert set(out["stages"]["active"]) >= {"consistency", "unmasking", "total"}


if __name__ == "__main__":  # pragma: no cover - a measurement, run by hand
    import json
    import sys

    n_, d_, k_ = (int(a) for a in sys.argv[1:4]) if len(sys.argv) >= 4 else (100, 10**6, 20)
    print(json.dumps(compare_modes(n_, d_, k_), indent=1, default=lambda x: round(x, 3)))
