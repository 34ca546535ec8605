"""Exact samplers: time for 10^6 samples (issue 12: "well under a second" for the discrete Gaussian).

Run with ``pytest bench/bench_samplers.py`` (``--benchmark-disable`` runs each case once as a
smoke test). For a quick table without pytest::

    python bench/bench_samplers.py            # best of 3 runs, 10^6 samples each

Randomness comes from :class:`secagg.rand.RandomSource` (AES-256-CTR), as in production.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from dp.mechanisms import Gaussian
from dp.samplers import sample_discrete_gaussian, sample_discrete_laplace, sample_poisson, sample_skellam
from secagg.rand import RandomSource

N = 10**6

CASES: dict[str, Callable[[RandomSource], npt.NDArray[np.generic]]] = {
    "discrete_gaussian[sigma=1]": lambda rs: sample_discrete_gaussian(1.0, N, rs),
    "discrete_gaussian[sigma=10]": lambda rs: sample_discrete_gaussian(10.0, N, rs),
    "discrete_gaussian[sigma=1000]": lambda rs: sample_discrete_gaussian(1000.0, N, rs),
    "discrete_laplace[scale=10]": lambda rs: sample_discrete_laplace(10.0, N, rs),
    "skellam[mu=50]": lambda rs: sample_skellam(50.0, N, rs),
    "skellam[mu=1e6]": lambda rs: sample_skellam(1e6, N, rs),
    "poisson[mu=50]": lambda rs: sample_poisson(50.0, N, rs),
    "gaussian_secure[sigma=1]": lambda rs: Gaussian(1.0, secure=True).sample(N, rs),
    "gaussian_float[sigma=1] (insecure reference)": lambda rs: Gaussian(1.0).sample(N, rs),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bench_sampler(benchmark: Any, name: str) -> None:
    rs = RandomSource(12)
    out = benchmark(CASES[name], rs)
    assert out.shape == (N,)


def main() -> int:
    rs = RandomSource(12)
    print(f"{'sampler':48s} {'best of 3 (s) for 10^6':>24s}")
    for name, fn in CASES.items():
        best = min(_timed(fn, rs) for _ in range(3))
        print(f"{name:48s} {best:24.3f}")
    return 0


def _timed(fn: Callable[[RandomSource], object], rs: RandomSource) -> float:
    t0 = time.perf_counter()
    fn(rs)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
