"""The distributed-DP quality bar: MSE of the decoded sum against a central Gaussian.

:func:`quality_ratio` encodes ``clients`` clipped updates with a distributed-DP plan
(clip, rotate, scale, round, add each client's noise share), sums them mod 2^bits,
decodes, and compares the mean squared error per coordinate of the sum with a central
continuous Gaussian mechanism (a) with the same total noise variance (only rounding and
modular clipping add error) and (b) with the same noise multiplier against the server at
the cohort floor (so the rounding's inflation of the sensitivity and the extra survivor
share count too).  ``bench/bench_distributed.py`` prints it as a table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dp.distributed import DistributedPlan, Mechanism, plan_distributed

__all__ = ["QualityResult", "quality_ratio"]


@dataclass(frozen=True)
class QualityResult:
    """One quality-bar measurement (model units; MSE is per coordinate of the SUM).

    Attributes:
        ratio_same_variance: ``mse_distributed / noise_variance``: the distributed aggregate
            against a central Gaussian with the same total noise variance (expected MSE of the
            central mechanism = its variance). The quality bar asks for <= 1.05 at 16 bits.
        ratio_same_variance_sampled: the same against one sampled central Gaussian run.
        ratio_same_multiplier: ``mse_distributed / (noise_multiplier * clip_norm)^2``: against
            the central Gaussian with the same noise multiplier (sensitivity ``clip_norm``).
        ratio_std_error: relative standard error of an MSE estimated from ``dim`` Gaussian
            errors, ``sqrt(2 / dim)`` (0.55% at d = 65536): ratios within a few of these of 1
            are indistinguishable from 1.
    """

    bits: int
    clients: int
    dim: int
    padded_dim: int
    mechanism: str
    scale: float
    rounding_inflation: float
    modular_clip_prob: float
    noise_variance: float
    mse_distributed: float
    mse_central_sampled: float
    ratio_same_variance: float
    ratio_same_variance_sampled: float
    ratio_same_multiplier: float
    ratio_std_error: float
    encode_seconds_per_client: float


def _clients(clients: int, dim: int, clip_norm: float, seed: int) -> npt.NDArray[np.float64]:
    g = np.random.default_rng(seed)
    xs = g.normal(size=(clients, dim))
    xs *= (g.uniform(0.5, 1.5, size=(clients, 1)) * clip_norm) / np.linalg.norm(xs, axis=1, keepdims=True)
    return xs  # norms in [0.5, 1.5] * clip_norm: about half get clipped


def quality_ratio(
    bits: int,
    *,
    clients: int = 100,
    dim: int = 65536,
    clip_norm: float = 1.0,
    noise_multiplier: float = 1.0,
    mechanism: Mechanism = "discrete_gaussian",
    seed: int = 0,
) -> QualityResult:
    """Encode ``clients`` updates at ``bits``, sum mod 2^bits, decode, and compare MSEs.

    The plan has cohort floor = expected = ``clients`` and no colluders; the error is the
    decoded sum minus the exact sum of the clipped updates.
    """
    plan: DistributedPlan = plan_distributed(
        clients_expected=clients,
        min_clients=clients,
        colluders=0,
        dim=dim,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        mechanism=mechanism,
        bits=bits,
    )
    xs = _clients(clients, dim, clip_norm, seed)
    norms = np.linalg.norm(xs, axis=1, keepdims=True)
    truth = (xs * np.minimum(1.0, clip_norm / norms)).sum(axis=0)
    round_seed = b"quality-%d" % seed
    total = np.zeros(plan.padded_dim, dtype=np.uint64)
    t0 = time.perf_counter()
    for i in range(clients):
        total += plan.encode(xs[i], round_seed, rng=seed * 1_000_003 + i).astype(np.uint64)
    enc = (time.perf_counter() - t0) / clients
    total &= np.uint64((1 << plan.bits) - 1)
    err = plan.decode(total, round_seed) - truth
    mse = float(np.mean(err**2))
    noise_var = clients * float(plan.noise.variance) / plan.scale**2
    g = np.random.default_rng(seed + 1)
    central = truth + g.normal(0.0, math.sqrt(noise_var), size=dim)
    mse_central = float(np.mean((central - truth) ** 2))
    return QualityResult(
        bits=plan.bits,
        clients=clients,
        dim=dim,
        padded_dim=plan.padded_dim,
        mechanism=plan.mechanism,
        scale=plan.scale,
        rounding_inflation=plan.rounding_inflation,
        modular_clip_prob=plan.modular_clip_prob,
        noise_variance=noise_var,
        mse_distributed=mse,
        mse_central_sampled=mse_central,
        ratio_same_variance=mse / noise_var,
        ratio_same_variance_sampled=mse / mse_central,
        ratio_same_multiplier=mse / (noise_multiplier * clip_norm) ** 2,
        ratio_std_error=math.sqrt(2.0 / dim),
        encode_seconds_per_client=enc,
    )
