"""Privacy-utility rows: distributed DP through secure aggregation against central DP at
the same epsilon.

For each mechanism (distributed discrete Gaussian, Kairouz, Liu, Steinke 2021; Skellam,
Agarwal, Kairouz, Liu 2021) and ring width (12 to 20 bits):

1. the mean squared error per coordinate of the decoded SUM of ``clients`` clipped
   updates is measured by the quality-bar function
   :func:`~secagg.benchmarks.quality_ratio` (clip, rotate, scale, round, add each
   client's noise share, sum mod 2^bits, decode), with the plan
   ``plan_distributed(clients_expected=clients, min_clients=clients, colluders=0, ...)``;
2. the plan's :meth:`~dp.distributed.DistributedPlan.noise_report` for a round where all
   clients survive gives the noise present and guaranteed, and
   :func:`secagg.rounds.round_privacy` turns it into the two per-round events; an RDP
   accountant composes ``rounds`` of each: ``epsilon_release`` (client sampling
   amplification at ``sampling_rate``, all shares) and ``epsilon_server`` (no
   amplification, the ``clients - 1`` honest shares that protect one client);
3. the central continuous Gaussian mechanism at the *same* epsilon is calibrated with
   :func:`dp.calibration.calibrate_noise_multiplier` (sampling rate 1 for the server
   figure, ``sampling_rate`` for the release figure): its MSE per coordinate of the sum
   is ``(z * clip_norm)^2`` (sensitivity ``clip_norm``, add/remove adjacency).

``ratio_* = mse_distributed / mse_central_*``: 1.0 means distributed DP through SecAgg
costs nothing in accuracy at that privacy level; the excess comes from the rounding's
inflation of the sensitivity (large at 12 bits), modular clipping, and the accounting of
the discrete sum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

from dp.accountants import make_accountant
from dp.calibration import calibrate_noise_multiplier
from dp.distributed import Mechanism, plan_distributed
from dp.errors import DPError
from dp.tracker import PrivacyTracker
from secagg.benchmarks._quality import QualityResult, quality_ratio
from secagg.benchmarks._validate import check_choices, check_fraction, check_int
from secagg.rounds import round_privacy

__all__ = ["MECHANISMS", "PrivacyUtilityRow", "QualityFn", "privacy_utility_rows"]

#: Plan mechanism name -> tracker mechanism name.
MECHANISMS: dict[str, str] = {"discrete_gaussian": "distributed_discrete_gaussian", "skellam": "skellam"}

#: The MSE measurement, :func:`~secagg.benchmarks.quality_ratio` or a stand-in with its signature.
QualityFn = Callable[..., QualityResult]


@dataclass(frozen=True)
class PrivacyUtilityRow:
    """One privacy-utility measurement (MSE per coordinate of the sum, model units squared).

    Attributes:
        mechanism: ``"discrete_gaussian"`` or ``"skellam"``.
        bits: ring width.
        rounds: rounds composed for the epsilons.
        sampling_rate: client sampling rate of the release figure.
        delta: delta of both epsilons.
        clients: clients per round (all survive; cohort floor = clients, no colluders).
        dim: model dimension; padded_dim: after the rotation's padding.
        noise_multiplier: target noise / sensitivity of the plan.
        scale, rounding_inflation, modular_clip_prob: from the plan.
        mse_distributed: measured MSE of the decoded sum.
        epsilon_server, epsilon_release: epsilon after ``rounds`` rounds.
        z_central_server, z_central_release: central Gaussian noise multiplier with that epsilon.
        mse_central_server, mse_central_release: ``(z * clip_norm)^2``.
        ratio_server, ratio_release: ``mse_distributed / mse_central``.
        upload_bytes: one client's packed vector.
        status: ``"ok"`` or ``"infeasible"`` (no plan at these bits).
        note: reason for a non-ok status.
        seconds: measurement time.
    """

    mechanism: str
    bits: int
    rounds: int
    sampling_rate: float
    delta: float
    clients: int
    dim: int
    noise_multiplier: float
    clip_norm: float
    padded_dim: int | None = None
    scale: float | None = None
    rounding_inflation: float | None = None
    modular_clip_prob: float | None = None
    mse_distributed: float | None = None
    epsilon_server: float | None = None
    epsilon_release: float | None = None
    z_central_server: float | None = None
    z_central_release: float | None = None
    mse_central_server: float | None = None
    mse_central_release: float | None = None
    ratio_server: float | None = None
    ratio_release: float | None = None
    upload_bytes: int | None = None
    status: str = "ok"
    note: str = ""
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _epsilon(event: Any, rounds: int, delta: float) -> float:
    acc = make_accountant("rdp")
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


def privacy_utility_rows(
    *,
    bits: Iterable[int] = (12, 14, 16, 18, 20),
    mechanisms: Iterable[str] = ("discrete_gaussian", "skellam"),
    rounds: Iterable[int] = (1, 100),
    clients: int = 100,
    dim: int = 16384,
    clip_norm: float = 1.0,
    noise_multiplier: float = 1.0,
    sampling_rate: float = 0.01,
    delta: float = 1e-5,
    seed: int = 0,
    quality: QualityFn | None = None,
    progress: Callable[[PrivacyUtilityRow], None] | None = None,
) -> list[PrivacyUtilityRow]:
    """One row per (mechanism, bits, rounds); see the module docstring.

    Args:
        bits: ring widths.
        mechanisms: ``"discrete_gaussian"`` and/or ``"skellam"``.
        rounds: numbers of rounds to account for (the MSE is per round and shared).
        clients: clients per round.
        dim: model dimension.
        clip_norm: L2 clip (model units).
        noise_multiplier: the plan's target noise / sensitivity against the server.
        sampling_rate: client sampling rate for the release epsilon, in (0, 1].
        delta: delta.
        seed: seed of the synthetic updates and the noise.
        quality: the MSE measurement (default :func:`~secagg.benchmarks.quality_ratio`).
        progress: called with each row.

    Raises:
        SecAggTypeError, SecAggValueError: unknown mechanism or bad numbers.
    """
    mechs = [cast("Mechanism", m) for m in check_choices(mechanisms, "mechanism(s)", MECHANISMS)]
    rounds_list = [check_int(r, "rounds", 1) for r in rounds]
    clients = check_int(clients, "clients", 2)
    dim = check_int(dim, "dim", 1)
    sampling_rate = check_fraction(sampling_rate, "sampling_rate", closed=True)
    measure_quality = quality if quality is not None else quality_ratio
    rows: list[PrivacyUtilityRow] = []

    def emit(row: PrivacyUtilityRow) -> None:
        rows.append(row)
        if progress is not None:
            progress(row)

    for mech in mechs:
        for b in bits:
            common: dict[str, Any] = {
                "mechanism": mech,
                "bits": int(b),
                "sampling_rate": float(sampling_rate),
                "delta": float(delta),
                "clients": clients,
                "dim": dim,
                "noise_multiplier": float(noise_multiplier),
                "clip_norm": float(clip_norm),
            }
            t0 = time.perf_counter()
            try:
                plan = plan_distributed(clients_expected=clients, min_clients=clients, colluders=0, dim=dim,
                                        clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                                        mechanism=mech, bits=int(b))
                q = measure_quality(int(b), clients=clients, dim=dim, clip_norm=clip_norm,
                                    noise_multiplier=noise_multiplier, mechanism=mech, seed=seed)
            except DPError as exc:
                for r in rounds_list:
                    emit(PrivacyUtilityRow(rounds=r, status="infeasible", note=str(exc), **common))
                continue
            mse = float(q.mse_distributed)
            report = plan.noise_report(clients)
            events = PrivacyTracker.events_for(round_privacy(report, float(sampling_rate)))
            measured = time.perf_counter() - t0
            for r in rounds_list:
                eps_s = _epsilon(events.server, r, delta)
                eps_r = _epsilon(events.release, r, delta)
                z_s = calibrate_noise_multiplier(eps_s, delta, r, 1.0)
                z_r = calibrate_noise_multiplier(eps_r, delta, r, float(sampling_rate))
                mse_s, mse_r = (z_s * clip_norm) ** 2, (z_r * clip_norm) ** 2
                emit(PrivacyUtilityRow(
                    rounds=r,
                    padded_dim=plan.padded_dim,
                    scale=plan.scale,
                    rounding_inflation=plan.rounding_inflation,
                    modular_clip_prob=plan.modular_clip_prob,
                    mse_distributed=mse,
                    epsilon_server=eps_s,
                    epsilon_release=eps_r,
                    z_central_server=z_s,
                    z_central_release=z_r,
                    mse_central_server=mse_s,
                    mse_central_release=mse_r,
                    ratio_server=mse / mse_s if mse_s > 0 else math.inf,
                    ratio_release=mse / mse_r if mse_r > 0 else math.inf,
                    upload_bytes=plan.upload_bytes,
                    seconds=measured,
                    **common,
                ))
    return rows
