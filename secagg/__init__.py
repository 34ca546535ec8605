"""secagg: secure aggregation (SecAgg / SecAgg+) for federated learning.

The public API is re-exported here.  Layers, bottom to top:

* primitives — :mod:`secagg.crypto` (X25519, HKDF, AES-GCM, AES-CTR mask PRG),
  :mod:`secagg.shamir`, :mod:`secagg.graph`, :mod:`secagg.encoding`,
  :mod:`secagg.packing`, :mod:`secagg.ring`, :mod:`secagg.rand`;
* protocol — sans-I/O state machines :class:`ClientSession` / :class:`ServerSession`
  exchanging the frozen messages of :mod:`secagg.messages`;
* drivers at the edges — :func:`simulate_round` (in-memory network),
  :mod:`secagg.torch` (PyTorch adapter, needs the ``torch`` extra) and
  :mod:`secagg.flower` (Flower integration, needs the ``flower`` extra).

Importing :mod:`secagg` never imports torch or flwr.
"""

__version__ = "0.1.0"

from secagg.client import ClientSession, ClientState
from secagg.crypto import (
    Masker,
    agree,
    agree_many,
    decrypt,
    derive,
    encrypt,
    expand,
    generate_private_key,
    keystream,
    public_key,
)
from secagg.driver import STAGES
from secagg.encoding import FixedPointEncoder, Headroom, centered_lift, check_headroom
from secagg.errors import (
    CryptoError,
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
    UnsafeParametersError,
)
from secagg.graph import (
    GraphParameters,
    ThreatModel,
    check_threshold,
    choose_parameters,
    components,
    neighbour_graph,
    parameters_for_k,
)
from secagg.messages import RoundConfig, Stage, decode_message, encode_message
from secagg.packing import pack, packed_size, unpack
from secagg.rand import RandomSource
from secagg.server import AggregateResult, ServerSession, ServerState
from secagg.shamir import Share, combine, split
from secagg.simulate import RoundResult, simulate_round

__all__ = [
    "STAGES",
    "AggregateResult",
    "ClientSession",
    "ClientState",
    "CryptoError",
    "FixedPointEncoder",
    "GraphParameters",
    "Headroom",
    "HeadroomError",
    "InconsistentSharesError",
    "LocalProtocolError",
    "Masker",
    "MessageError",
    "ProtocolAbort",
    "ProtocolError",
    "RandomSource",
    "RemoteProtocolError",
    "RoundConfig",
    "RoundResult",
    "SecAggError",
    "SecAggTypeError",
    "SecAggValueError",
    "SecurityViolation",
    "ServerSession",
    "ServerState",
    "Share",
    "ShareError",
    "Stage",
    "ThreatModel",
    "UnsafeParametersError",
    "__version__",
    "agree",
    "agree_many",
    "centered_lift",
    "check_headroom",
    "check_threshold",
    "choose_parameters",
    "combine",
    "components",
    "decode_message",
    "decrypt",
    "derive",
    "encode_message",
    "encrypt",
    "expand",
    "generate_private_key",
    "keystream",
    "neighbour_graph",
    "pack",
    "packed_size",
    "parameters_for_k",
    "public_key",
    "simulate_round",
    "split",
    "unpack",
]
