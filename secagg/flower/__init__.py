"""secagg on Flower (flwr 1.41, Message API): secure aggregation and distributed DP for a
real Flower deployment.

Importing :mod:`secagg` never imports Flower; ``import secagg.flower`` does (install the
``flower`` extra: ``pip install 'secagg[flower]'``).

One way to do each thing:

* keep Flower's strategy loop with :class:`SecAggFedAvg` (a complete strategy: secure
  training rounds, DP with a tracker and ledger, Poisson node sampling in ``dp`` mode,
  secure or clear federated evaluation, a server optimiser such as FedAdam, adaptive
  clipping); or run secure rounds yourself with :class:`SecAggServer` (``run_round`` /
  ``run_evaluation`` over a ``Grid``), configured by :class:`SecAggConfig`;
* answer them in a ClientApp: :func:`register` (a :class:`SecAggClient` handler for
  ``"train.secagg"`` messages), with a :class:`ClientPolicy` and a training function
  returning a :class:`LocalUpdate`;
* read the outcome: :class:`SecureRoundResult`, :class:`StageReport` (``on_stage``),
  :class:`SecureRoundAbort`;
* count a workflow's bytes: :class:`CountingGrid`;
* active mode: an alliance (``SecAggConfig(alliance=...)`` on the server, ``identity=`` /
  ``alliance=`` or the node config's ``identity-key`` / ``alliance`` on each ClientApp),
  read with :func:`load_alliance` / :func:`load_identity`.

The round is described by :class:`secagg.RoundSpec` and driven by
:func:`secagg.driver.drive_round` over :class:`secagg.flower.transport.FlowerTransport`.
Modules: :mod:`~secagg.flower.config`, :mod:`~secagg.flower.server`,
:mod:`~secagg.flower.strategy`, :mod:`~secagg.flower.transport`,
:mod:`~secagg.flower.results`, :mod:`~secagg.flower.client`.  See docs/flower.md.
"""

from __future__ import annotations

try:
    import flwr as _flwr  # noqa: F401
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised only without flwr
    raise ModuleNotFoundError(
        "secagg.flower needs Flower; install it with: pip install 'secagg[flower]'", name="flwr"
    ) from _exc

from secagg.flower._codec import MESSAGE_TYPE
from secagg.flower.client import (
    SECAGG_ERROR_CODE,
    ClientPolicy,
    FlowerEvaluateFn,
    FlowerTrainFn,
    LocalUpdate,
    SecAggClient,
    register,
)
from secagg.flower.config import SecAggConfig, load_alliance, load_identity
from secagg.flower.results import SecureRoundAbort, SecureRoundResult, StageReport
from secagg.flower.server import SecAggServer
from secagg.flower.strategy import SecAggFedAvg
from secagg.flower.transport import CountingGrid

__all__ = [
    "MESSAGE_TYPE",
    "SECAGG_ERROR_CODE",
    "ClientPolicy",
    "CountingGrid",
    "FlowerEvaluateFn",
    "FlowerTrainFn",
    "LocalUpdate",
    "SecAggClient",
    "SecAggConfig",
    "SecAggFedAvg",
    "SecAggServer",
    "SecureRoundAbort",
    "SecureRoundResult",
    "StageReport",
    "load_alliance",
    "load_identity",
    "register",
]
