"""How secure rounds run on Flower: :class:`SecAggConfig` (all public, no Flower import).

A config is the user-facing choice; :meth:`SecAggConfig.rule` turns it into the
aggregation rule of :mod:`secagg.spec` (:class:`~secagg.spec.IntegerSum`,
:class:`~secagg.spec.FedAvgAggregation`, :class:`~secagg.spec.DPAggregation`) that
:func:`secagg.spec.build_spec` makes a round of.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, cast

from secagg._validate import check_choice, check_fraction, check_int, check_number, check_optional_int
from secagg.errors import MessageError, SecAggTypeError, SecAggValueError
from secagg.identity import Alliance, IdentityKey
from secagg.spec import MODES, Aggregation, DPAggregation, FedAvgAggregation, IntegerSum

__all__ = ["SecAggConfig", "load_alliance", "load_identity"]

#: Largest alliance or key file read (bytes).
_MAX_FILE = 1 << 22


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise SecAggTypeError(f"{what} must be a path")
    with open(path, "rb") as fh:
        data = fh.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise SecAggValueError(f"{what} {os.fspath(path)!s} is larger than {_MAX_FILE} bytes")
    return data


def load_alliance(alliance: Alliance | str | os.PathLike[str]) -> Alliance:
    """An :class:`~secagg.identity.Alliance` as is, or read from its canonical JSON file.

    On Flower the alliance is keyed by **member id**, and a member's member id is its
    protocol id in every round (the ids must be exactly 1..N; see docs/flower.md).

    Raises:
        MessageError: the file is not an alliance's canonical JSON.
        SecAggValueError: member ids other than 1..N.
        OSError: the file cannot be read.
    """
    got = alliance if isinstance(alliance, Alliance) else Alliance.from_json(_read(alliance, "alliance"))
    if sorted(got) != list(range(1, len(got) + 1)):
        raise SecAggValueError(
            "on Flower an alliance's member ids are the protocol ids: they must be exactly 1..N, "
            f"got {sorted(got)[:8]}"
        )
    if len(got) < 3:
        raise SecAggValueError(f"an alliance needs at least 3 members for a secure round, got {len(got)}")
    return got


def load_identity(identity: IdentityKey | str | os.PathLike[str]) -> IdentityKey:
    """An :class:`~secagg.identity.IdentityKey` as is, or read from a key file: the
    32-byte raw Ed25519 seed, or those bytes as 64 hex characters (surrounding whitespace
    ignored).  Keep the file readable only by the node's owner.

    Raises:
        MessageError: the file holds neither form.
        OSError: the file cannot be read.
    """
    if isinstance(identity, IdentityKey):
        return identity
    data = _read(identity, "identity key file")
    if len(data) != 32:
        try:
            data = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError) as exc:
            raise MessageError("an identity key file holds 32 raw bytes or 64 hex characters") from exc
    if len(data) != 32:
        raise MessageError("an identity key file holds 32 raw bytes or 64 hex characters")
    return IdentityKey.from_private_bytes(data)


@dataclass(frozen=True)
class SecAggConfig:
    """How secure rounds are run on Flower (all public).

    Attributes:
        mode: ``"integer"`` (exact sum mod 2^bits of integer arrays), ``"fedavg"``
            (weighted mean of float updates, fixed point; reveals the survivors' total
            weight) or ``"dp"`` (distributed DP: each client adds a noise share).
        bits: ring width for ``integer`` and ``fedavg`` (2..64).
        bound: ``fedavg``: coordinate clip of each update (model units).
        max_weight: ``fedavg``: cap on a client's example count (its weight).
        clip_norm: ``dp``: L2 clip of each update (model units).
        noise_multiplier: ``dp``: guaranteed noise std / L2 sensitivity at the cohort floor.
        mechanism: ``dp``: ``"discrete_gaussian"`` or ``"skellam"``.
        dp_bits: ``dp``: ring width (None: the planner chooses).
        modular_clip_prob: ``dp``: allowed probability that the noised sum wraps.
        neighbors: None (SecAgg+ with k from the threat model), an int k, or ``"all"``.
        threshold: Shamir threshold t (None: the safe default for the graph).
        min_clients: cohort floor: no sum over fewer survivors (None: the protocol's
            default; in ``dp`` also where the noise is calibrated, default
            ``max(c + 2, floor(n (1 - 2 dropout_fraction)))``).
        dropout_fraction: dropouts the graph and threshold must tolerate.
        corrupt_fraction: clients assumed to collude with the server.
        stage_timeout: seconds each stage waits for replies; silent nodes are dropouts.
        poll_interval: seconds between polls of the SuperLink for replies.
        sampling_rate: fraction of the population sampled per round (accounting).
        alliance: the alliance's identity keys (an :class:`~secagg.identity.Alliance` or the
            path of its canonical JSON file, read once here): rounds run in **active mode**
            (signed advertisements, consistency round; Bonawitz et al. 2017 / Bell et al.
            2020), every node must prove it holds a member's key before a round, and the
            ledger records the signed trail (``secagg verify --alliance``).  None:
            **semi-honest** rounds (no identities), stated in every result and ledger record.
    """

    mode: str = "fedavg"
    bits: int = 32
    bound: float = 1.0
    max_weight: int = 1000
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    mechanism: str = "discrete_gaussian"
    dp_bits: int | None = None
    modular_clip_prob: float = 1e-6
    neighbors: int | str | None = None
    threshold: int | None = None
    min_clients: int | None = None
    dropout_fraction: float = 0.1
    corrupt_fraction: float = 0.0
    stage_timeout: float = 120.0
    poll_interval: float = 0.2
    sampling_rate: float | None = None
    alliance: Any = None

    def __post_init__(self) -> None:
        if self.alliance is not None:
            object.__setattr__(self, "alliance", load_alliance(self.alliance))
        check_choice("mode", self.mode, MODES)
        check_int("bits", self.bits, 2, 64)
        for name in ("bound", "clip_norm", "noise_multiplier", "stage_timeout", "poll_interval"):
            check_number(name, getattr(self, name), lo=0.0, lo_open=True)
        check_int("max_weight", self.max_weight, 1)
        check_choice("mechanism", self.mechanism, ("discrete_gaussian", "skellam"))
        check_optional_int("dp_bits", self.dp_bits, 2, 64)
        check_optional_int("min_clients", self.min_clients, 1)
        check_optional_int("threshold", self.threshold, 1)
        check_number("modular_clip_prob", self.modular_clip_prob, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        check_fraction("dropout_fraction", self.dropout_fraction)
        check_fraction("corrupt_fraction", self.corrupt_fraction)
        if self.sampling_rate is not None:
            check_number("sampling_rate", self.sampling_rate, lo=0.0, hi=1.0, lo_open=True)
        if isinstance(self.neighbors, str):
            if self.neighbors != "all":
                raise SecAggValueError(f"neighbors must be None, an int k or 'all', got {self.neighbors!r}")
        else:
            check_optional_int("neighbors", self.neighbors, 2)

    @property
    def active(self) -> bool:
        """True with an alliance: rounds run in active mode."""
        return self.alliance is not None

    @property
    def security_mode(self) -> str:
        """``"active"`` (with an alliance) or ``"semi-honest"``."""
        return "active" if self.active else "semi-honest"

    def rule(self) -> Aggregation:
        """The :mod:`secagg.spec` aggregation rule of this config's ``mode``."""
        if self.mode == "integer":
            return IntegerSum(self.bits)
        if self.mode == "fedavg":
            return FedAvgAggregation(self.bound, self.max_weight, self.bits)
        mechanism = cast(Literal["discrete_gaussian", "skellam"], self.mechanism)
        return DPAggregation(
            self.clip_norm,
            self.noise_multiplier,
            mechanism,
            self.dp_bits,
            self.min_clients,
            self.modular_clip_prob,
        )
