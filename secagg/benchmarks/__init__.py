"""Benchmarks of secure aggregation against its baselines (the ``secagg bench`` command).

* :mod:`secagg.benchmarks.baselines`: plaintext summation, the AES-CTR keystream bound,
  and a single-process driver of Flower's own SecAgg+ functions.
* :mod:`secagg.benchmarks.sweep`: the configuration sweep (time budget, peak memory,
  bytes per client, scaling fits, targets).
* :mod:`secagg.benchmarks.output`: CSV, JSON, Markdown and PNG output.
* :mod:`secagg.benchmarks.privacy_utility`: distributed discrete Gaussian and Skellam
  against a central Gaussian at the same epsilon.

Importing this package does not import ``flwr``, ``matplotlib`` or ``tqdm``.
"""

from __future__ import annotations

from secagg.benchmarks.baselines import (
    FlowerRound,
    KeystreamBound,
    PlaintextSum,
    flower_available,
    keystream_bound,
    mask_bytes,
    plaintext_sum,
    run_flower_round,
)

__all__ = [
    "FlowerRound",
    "KeystreamBound",
    "PlaintextSum",
    "flower_available",
    "keystream_bound",
    "mask_bytes",
    "plaintext_sum",
    "run_flower_round",
]
