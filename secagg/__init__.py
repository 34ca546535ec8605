"""secagg: secure aggregation (SecAgg / SecAgg+) for federated learning.

The public API is re-exported here, one way to do each thing:

* describe a round: :class:`RoundSpec` (built with :func:`build_spec` from an
  aggregation rule: :class:`IntegerSum`, :class:`FedAvgAggregation`,
  :class:`DPAggregation`), whose protocol part is a :class:`RoundConfig`
  (:func:`make_config`, parameters from :func:`choose_parameters`);
* run rounds: :func:`simulate_round` in memory; :func:`secagg.torch.run_round` for
  PyTorch models (``torch`` extra); :class:`secagg.flower.SecAggFedAvg` on Flower
  (``flower`` extra).  All three are transports over the one round driver,
  :func:`secagg.driver.drive_round` (bring your own transport:
  :class:`secagg.transport.Transport`);
* the sans-I/O protocol: :class:`ClientSession`, :class:`ServerSession`; active mode
  (a malicious server with colluding clients) needs identities: :class:`IdentityKey`,
  :class:`Alliance` (:mod:`secagg.identity`);
* errors: :class:`SecAggError` and its subclasses; whose fault a protocol error is:
  :class:`LocalProtocolError` or :class:`RemoteProtocolError`.

Primitives stay in their modules (:mod:`secagg.crypto`, :mod:`secagg.shamir`,
:mod:`secagg.graph`, :mod:`secagg.encoding`, :mod:`secagg.packing`, :mod:`secagg.rand`).
See docs/architecture.md for the layers.  Importing :mod:`secagg` never imports torch
or flwr.
"""

__version__ = "0.1.0"

from secagg.client import ClientSession
from secagg.driver import STAGES
from secagg.encoding import FixedPointEncoder
from secagg.errors import (
    CryptoError,
    EquivocationError,
    HeadroomError,
    InconsistentSharesError,
    LocalProtocolError,
    MessageError,
    ProtocolAbort,
    ProtocolError,
    RemoteProtocolError,
    SecAggError,
    SecAggTypeError,
    SecAggValueError,
    SecurityViolation,
    ShareError,
    SignatureError,
    UnsafeParametersError,
)
from secagg.graph import GraphParameters, ThreatModel, choose_parameters
from secagg.identity import Alliance, Evidence, IdentityKey
from secagg.messages import RoundConfig, Stage
from secagg.rand import RandomSource
from secagg.server import AggregateResult, ServerSession
from secagg.simulate import RoundResult, simulate_round
from secagg.spec import (
    ArraySpec,
    DPAggregation,
    FedAvgAggregation,
    IntegerSum,
    RoundSpec,
    build_spec,
    make_config,
)

__all__ = [
    "STAGES",
    "AggregateResult",
    "Alliance",
    "ArraySpec",
    "ClientSession",
    "CryptoError",
    "DPAggregation",
    "EquivocationError",
    "Evidence",
    "FedAvgAggregation",
    "FixedPointEncoder",
    "GraphParameters",
    "HeadroomError",
    "IdentityKey",
    "InconsistentSharesError",
    "IntegerSum",
    "LocalProtocolError",
    "MessageError",
    "ProtocolAbort",
    "ProtocolError",
    "RandomSource",
    "RemoteProtocolError",
    "RoundConfig",
    "RoundResult",
    "RoundSpec",
    "SecAggError",
    "SecAggTypeError",
    "SecAggValueError",
    "SecurityViolation",
    "ServerSession",
    "ShareError",
    "SignatureError",
    "Stage",
    "ThreatModel",
    "UnsafeParametersError",
    "__version__",
    "build_spec",
    "choose_parameters",
    "make_config",
    "simulate_round",
]
