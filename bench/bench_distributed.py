"""Distributed DP pipeline: speed of plan / encode / decode, and the quality bar.

Run with ``pytest bench/bench_distributed.py`` (``--benchmark-disable`` for a smoke run:
sizes are moderate). The quality-bar measurement is :func:`secagg.benchmarks.quality_ratio`;
print its table by hand::

    python bench/bench_distributed.py                  # n=100, d=65536, bits 12 14 16 18 20
    python bench/bench_distributed.py --bits 16 --clients 100 --dim 65536

It compares the mean squared error of the decoded distributed-DP aggregate with a central
continuous Gaussian mechanism (a) with the same total noise variance (the issue's quality
bar: only rounding and modular clipping add error) and (b) with the same noise multiplier
against the server at the cohort floor (so the rounding's inflation of the sensitivity and
the extra survivor share count too).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from typing import Any

import numpy as np

from dp.distributed import DistributedPlan, plan_distributed
from dp.rotation import HadamardRotation, choose_layout
from secagg.benchmarks import quality_ratio

# ------------------------------------------------------------------ pytest-benchmark


def _plan(dim: int, clients: int = 100) -> DistributedPlan:
    return plan_distributed(
        clients_expected=clients, min_clients=clients - 10, colluders=5, dim=dim, clip_norm=1.0, noise_multiplier=1.0
    )


def test_bench_plan(benchmark: Any) -> None:
    plan = benchmark(_plan, 100_000)
    assert plan.modular_clip_prob <= 1e-6


def test_bench_rotation_2e16(benchmark: Any) -> None:
    rot = HadamardRotation(choose_layout(2**16), b"bench")
    x = np.random.default_rng(0).normal(size=2**16)
    y = benchmark(rot.rotate, x)
    assert math.isclose(float(np.linalg.norm(y)), float(np.linalg.norm(x)), rel_tol=1e-9)


def test_bench_encode_2e14(benchmark: Any) -> None:
    plan = _plan(2**14)
    x = np.random.default_rng(0).normal(size=2**14)
    out = benchmark(plan.encode, x, b"bench", 7)
    assert out.shape == (plan.padded_dim,)


def test_bench_decode_2e14(benchmark: Any) -> None:
    plan = _plan(2**14)
    total = plan.encode(np.zeros(2**14), b"bench", rng=1)
    out = benchmark(plan.decode, total, b"bench")
    assert out.shape == (2**14,)


def test_quality_ratio_smoke() -> None:
    # Small version of the quality bar; the MSE estimate over 4096 coordinates has relative
    # std sqrt(2/4096) = 2.2%, so 1.15 is a > 6-sigma margin above the expected ~1.0.
    res = quality_ratio(16, clients=10, dim=4096)
    assert 0.85 < res.ratio_same_variance < 1.15
    assert res.modular_clip_prob <= 1e-6


def main(argv: list[str] | None = None) -> int:
    """Print the quality-bar table (markdown)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, nargs="+", default=[12, 14, 16, 18, 20])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--dim", type=int, default=65536)
    ap.add_argument("--noise-multiplier", type=float, default=1.0)
    ap.add_argument("--mechanism", choices=["discrete_gaussian", "skellam"], default="discrete_gaussian")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print every field")
    args = ap.parse_args(argv)
    print(
        "| bits | scale | rounding inflation | modular-clip bound | MSE distributed | MSE ratio (same variance) "
        "| MSE ratio (vs sampled central) | MSE ratio (same multiplier) | encode s/client |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for b in args.bits:
        r = quality_ratio(
            b,
            clients=args.clients,
            dim=args.dim,
            noise_multiplier=args.noise_multiplier,
            mechanism=args.mechanism,
            seed=args.seed,
        )
        print(
            f"| {r.bits} | {r.scale:.4g} | {r.rounding_inflation:.4%} | {r.modular_clip_prob:.2g} | "
            f"{r.mse_distributed:.6g} | {r.ratio_same_variance:.4f} | {r.ratio_same_variance_sampled:.4f} | "
            f"{r.ratio_same_multiplier:.4f} | {r.encode_seconds_per_client:.4f} |"
        )
        if args.verbose or b == args.bits[-1]:
            print(f"(standard error of each MSE ratio: {r.ratio_std_error:.2%})", file=sys.stderr)
        if args.verbose:
            print(asdict(r), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
