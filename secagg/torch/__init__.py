"""PyTorch adapter: secure, optionally differentially private aggregation of model updates.

Importing :mod:`secagg` never imports torch; ``import secagg.torch`` does (install the
``torch`` extra: ``pip install 'secagg[torch]'``).  One way to do each thing:

* :class:`UpdateLayout` (:mod:`secagg.torch.flatten`): a model update as one vector and back.
* :class:`SecureServer`: what spans rounds (layout, rule, tracker, ledger); per round it
  builds the :class:`secagg.RoundSpec` (``new_round``) and, once the round driver
  (:func:`secagg.driver.drive_round`) has run it over any transport, decodes, accounts and
  records it (``finish``).
* :class:`SecureClient`: one client's side of one round, from the spec and the global model.
* Security mode: with the alliance's identity keys (``SecureServer(..., alliance=)``,
  ``SecureClient(..., identity=, alliance=)``, ``run_round(..., identities=)``) every round
  runs the **active** protocol and records a signed audit trail (``secagg verify
  --alliance``); without an alliance it runs the semi-honest one, which every ledger
  record states.
* :func:`run_round`: the torch round driver over the in-memory network (a simulation),
  clients' local training supplied as a function.
* :mod:`secagg.torch.opacus_compat`: clients training with opacus' DP-SGD, and the
  composition of their self-reported epsilons across rounds.
* :mod:`secagg.torch.demo`: data, model and FedAvg baseline of ``secagg demo``
  (imported on demand; it needs scikit-learn).

The aggregation rules :class:`DPAggregation` and :class:`FedAvgAggregation` are
:mod:`secagg.spec`'s, re-exported here.

Weighting
    With DP every survivor's clipped update counts once and the server divides the noised
    sum by the public number of survivors (as TensorFlow Federated does): example-count
    weights inside the sum would change the sensitivity and reveal the total weight.
    Without DP each client's update is multiplied by its example count, capped at
    ``max_weight``, inside the secure sum, and the weight itself is summed in one extra
    coordinate: the **total weight of the survivors is revealed** to the server,
    individual weights are not.  Updates are deltas against the global model the round
    started from (model units).
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised only without torch
    raise ModuleNotFoundError(
        "secagg.torch needs PyTorch; install it with: pip install 'secagg[torch]'", name="torch"
    ) from _exc

from secagg.spec import DPAggregation, FedAvgAggregation
from secagg.torch._client import SecureClient
from secagg.torch._names import WRAPPER_PREFIXES, strip_prefixes, unwrap
from secagg.torch._results import AggregateUpdate, ClientOutcome, LocalResult, RoundReport, TrainFn
from secagg.torch._round import run_round
from secagg.torch._server import SecureServer
from secagg.torch.flatten import SUPPORTED_DTYPES, TensorSpec, UpdateError, UpdateLayout, delta
from secagg.torch.opacus_compat import (
    ClientDPSGD,
    SelfReportedEpsilon,
    client_state_dict,
    compose_self_reported,
    prepare_global_model,
    self_reported_epsilon,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "WRAPPER_PREFIXES",
    "AggregateUpdate",
    "ClientDPSGD",
    "ClientOutcome",
    "DPAggregation",
    "FedAvgAggregation",
    "LocalResult",
    "RoundReport",
    "SecureClient",
    "SecureServer",
    "SelfReportedEpsilon",
    "TensorSpec",
    "TrainFn",
    "UpdateError",
    "UpdateLayout",
    "client_state_dict",
    "compose_self_reported",
    "delta",
    "prepare_global_model",
    "run_round",
    "self_reported_epsilon",
    "strip_prefixes",
    "unwrap",
]
