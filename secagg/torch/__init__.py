"""PyTorch adapter: secure, optionally differentially private aggregation of model updates.

Importing :mod:`secagg` never imports torch; ``import secagg.torch`` does (install the
``torch`` extra: ``pip install 'secagg[torch]'``).

* :mod:`secagg.torch.flatten` — :class:`UpdateLayout`: a model update as one vector and back.
* :mod:`secagg.torch.adapter` — :class:`SecureClient`, :class:`SecureServer` and the
  one-call simulation driver :func:`run_round`.
* :mod:`secagg.torch.opacus_compat` — clients training with opacus' DP-SGD.
* :mod:`secagg.torch.demo` — data, model and FedAvg baseline of ``secagg demo``
  (imported on demand; it needs scikit-learn).
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised only without torch
    raise ModuleNotFoundError(
        "secagg.torch needs PyTorch; install it with: pip install 'secagg[torch]'", name="torch"
    ) from _exc

from secagg.torch.adapter import (
    AggregateUpdate,
    Aggregation,
    ClientOutcome,
    DPAggregation,
    FedAvgAggregation,
    LocalResult,
    RoundReport,
    SecureClient,
    SecureServer,
    TorchRoundConfig,
    run_round,
)
from secagg.torch.flatten import SUPPORTED_DTYPES, TensorSpec, UpdateError, UpdateLayout, delta
from secagg.torch.opacus_compat import (
    WRAPPER_PREFIXES,
    SelfReportedEpsilon,
    client_state_dict,
    prepare_global_model,
    self_reported_epsilon,
    strip_prefixes,
    unwrap,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "WRAPPER_PREFIXES",
    "AggregateUpdate",
    "Aggregation",
    "ClientOutcome",
    "DPAggregation",
    "FedAvgAggregation",
    "LocalResult",
    "RoundReport",
    "SecureClient",
    "SecureServer",
    "SelfReportedEpsilon",
    "TensorSpec",
    "TorchRoundConfig",
    "UpdateError",
    "UpdateLayout",
    "client_state_dict",
    "delta",
    "prepare_global_model",
    "run_round",
    "self_reported_epsilon",
    "strip_prefixes",
    "unwrap",
]
