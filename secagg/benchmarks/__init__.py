"""Benchmarks of secure aggregation against its baselines (the ``secagg bench`` command).

One benchmark cell is a :class:`BenchConfig` (clients ``n``, dimension ``d``, dropout
fraction at a stage, graph, ring bits); :func:`grid` builds them.  :func:`measure` runs
one cell in this process: our round (:func:`secagg.simulate.simulate_round`), then the
baselines on the same workload, and returns a :class:`BenchRow`:

(a) :func:`plaintext_sum`: numpy summation of the same vectors (no security at all);
(b) :func:`keystream_bound`: the time the mask PRG's cipher (AES-128-CTR) needs for the
    :func:`mask_bytes` the round generated, a floor for any masking protocol on that PRG;
(c) :func:`run_flower_round`: Flower's SecAgg+ driven through Flower's own functions.

:func:`run_sweep` measures a grid within a time budget (each cell in a fresh process by
default); :func:`fit_scaling` and :func:`check_targets` summarise its rows;
:func:`privacy_utility_rows` compares distributed DP through SecAgg with central DP at
the same epsilon (its MSE measurement is :func:`quality_ratio`); :func:`write_outputs`
writes CSV, JSON, Markdown and PNG files and :func:`markdown_report` the tables.

Importing this package does not import ``flwr``, ``matplotlib`` or ``tqdm``.
"""

from __future__ import annotations

from secagg.benchmarks._config import GRAPHS, BenchConfig, grid
from secagg.benchmarks._files import read_rows_csv, write_outputs
from secagg.benchmarks._flower_round import (
    FLOWER_CLIP,
    FLOWER_GRID,
    FlowerRound,
    flower_available,
    flower_grid_vector,
    run_flower_round,
)
from secagg.benchmarks._keystream import KeystreamBound, keystream_bound, mask_bytes
from secagg.benchmarks._machine import machine_info
from secagg.benchmarks._measure import Clock, measure
from secagg.benchmarks._memory import MemoryMethod
from secagg.benchmarks._plaintext import PlaintextSum, plaintext_sum
from secagg.benchmarks._privacy_utility import MECHANISMS, PrivacyUtilityRow, privacy_utility_rows
from secagg.benchmarks._quality import QualityResult, quality_ratio
from secagg.benchmarks._row import BenchRow
from secagg.benchmarks._scaling import ScalingFit, fit_scaling
from secagg.benchmarks._sweep import Progress, run_sweep, sweep_steps
from secagg.benchmarks._tables import markdown_report
from secagg.benchmarks._targets import TargetCheck, check_targets

__all__ = [
    "FLOWER_CLIP",
    "FLOWER_GRID",
    "GRAPHS",
    "MECHANISMS",
    "BenchConfig",
    "BenchRow",
    "Clock",
    "FlowerRound",
    "KeystreamBound",
    "MemoryMethod",
    "PlaintextSum",
    "PrivacyUtilityRow",
    "Progress",
    "QualityResult",
    "ScalingFit",
    "TargetCheck",
    "check_targets",
    "fit_scaling",
    "flower_available",
    "flower_grid_vector",
    "grid",
    "keystream_bound",
    "machine_info",
    "markdown_report",
    "mask_bytes",
    "measure",
    "plaintext_sum",
    "privacy_utility_rows",
    "quality_ratio",
    "read_rows_csv",
    "run_flower_round",
    "run_sweep",
    "sweep_steps",
    "write_outputs",
]
