"""secagg on Flower (flwr 1.41, Message API): secure aggregation and distributed DP for a
real Flower deployment.

Importing :mod:`secagg` never imports Flower; ``import secagg.flower`` does (install the
``flower`` extra: ``pip install 'secagg[flower]'``).

* :mod:`secagg.flower.server` -- :class:`SecAggServer` (one secure round over a
  ServerApp's ``Grid``), :class:`SecAggFedAvg` (Flower's FedAvg with secure training
  rounds), :func:`run_secure_round`, :class:`CountingGrid`.
* :mod:`secagg.flower.client` -- :class:`SecAggClient` / :func:`register` (the ClientApp
  handler for ``"train.secagg"`` messages), :class:`ClientPolicy`, :class:`LocalUpdate`.

See docs/flower.md for the deployment, the threat model and the measurements.
"""

from __future__ import annotations

try:
    import flwr as _flwr  # noqa: F401
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised only without flwr
    raise ModuleNotFoundError(
        "secagg.flower needs Flower; install it with: pip install 'secagg[flower]'", name="flwr"
    ) from _exc

from secagg.flower._codec import MESSAGE_TYPE, ArraySpec, RoundSpec, export_session, restore_session
from secagg.flower.client import SECAGG_ERROR_CODE, ClientPolicy, FlowerTrainFn, LocalUpdate, SecAggClient, register
from secagg.flower.server import (
    CountingGrid,
    SecAggConfig,
    SecAggFedAvg,
    SecAggServer,
    SecureRoundAbort,
    SecureRoundResult,
    StageReport,
    run_secure_round,
)

__all__ = [
    "MESSAGE_TYPE",
    "SECAGG_ERROR_CODE",
    "ArraySpec",
    "ClientPolicy",
    "CountingGrid",
    "FlowerTrainFn",
    "LocalUpdate",
    "RoundSpec",
    "SecAggClient",
    "SecAggConfig",
    "SecAggFedAvg",
    "SecAggServer",
    "SecureRoundAbort",
    "SecureRoundResult",
    "StageReport",
    "export_session",
    "register",
    "restore_session",
    "run_secure_round",
]
