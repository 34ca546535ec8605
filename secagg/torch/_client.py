"""The client half: :class:`SecureClient`, one client's side of one secure round.

It takes the round's :class:`~secagg.spec.RoundSpec` and the global model it trains from,
checks that the spec's layout is the model's and that the spec names this very model
(:meth:`RoundSpec.check_model`), keeps a snapshot of the model's layout tensors, and after
training encodes ``trained - snapshot`` with :meth:`RoundSpec.encode` (DP: clip, rotate,
round, add this client's noise share; FedAvg: fixed point weighted by the capped example
count) before handing it to its protocol :class:`~secagg.client.ClientSession`.

An active spec (``spec.protocol.active``) needs the client's identity key and the
alliance: the session signs its advertisement over the spec's fingerprint and the model
digest and checks every neighbour against the alliance.  A client holding an identity
refuses a semi-honest spec (no downgrade).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from secagg.client import ClientSession, ClientState
from secagg.errors import SecAggTypeError, SecAggValueError, UnsafeParametersError
from secagg.identity import Alliance, IdentityKey
from secagg.messages import Message
from secagg.rand import RandomSource, RngLike, as_random_source
from secagg.spec import RoundSpec
from secagg.torch._bind import layout_of_spec, model_arrays
from secagg.torch._names import map_names, unwrap
from secagg.torch.flatten import UpdateError, UpdateLayout

__all__ = ["SecureClient"]

RingVector = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
#: A trained model or its state dict (a string alias: docs build with torch mocked).
StateLike: TypeAlias = "nn.Module | Mapping[str, torch.Tensor]"


def _state_of(model: StateLike, who: object) -> Mapping[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return unwrap(model).state_dict()
    if isinstance(model, Mapping):
        return model
    raise UpdateError(
        f"client {who}: expected an nn.Module or a state dict, got {type(model).__name__}", client=who, reason="type"
    )


class _Snapshot:
    """The global model's layout tensors, checked against a spec (layout and digest) and
    copied once; several clients of one simulation may share it (it is never written)."""

    def __init__(self, spec: RoundSpec, global_model: StateLike) -> None:
        if not isinstance(spec, RoundSpec):
            raise SecAggTypeError(f"spec must be a RoundSpec, got {type(spec).__name__}")
        if spec.mode not in ("fedavg", "dp"):
            raise SecAggValueError(f"a torch round aggregates model updates (fedavg or dp), not {spec.mode!r}")
        state = map_names(_state_of(global_model, "global"), {s.name for s in spec.layout})
        layout = layout_of_spec(spec, frozenset(state))
        try:
            arrays = model_arrays(layout, state)
        except UpdateError as exc:
            raise SecAggValueError(
                f"the round's layout is not this model's ({exc}); build the client from the global model the "
                "server sent"
            ) from exc
        spec.check_model(arrays)
        self.spec = spec
        self.layout = layout
        with torch.no_grad():
            self.tensors: dict[str, torch.Tensor] = {k: state[k].detach().to("cpu", copy=True) for k in layout.names}


def _check_mode(spec: RoundSpec, client_id: object, identity: object, alliance: object) -> None:
    """An active spec needs this client's identity and the alliance; an identity or an
    alliance refuses a semi-honest spec (no downgrade)."""
    if identity is not None and not isinstance(identity, IdentityKey):
        raise SecAggTypeError(f"identity must be a secagg.IdentityKey, got {type(identity).__name__}")
    if alliance is not None and not isinstance(alliance, Alliance):
        raise SecAggTypeError(f"alliance must be a secagg.Alliance, got {type(alliance).__name__}")
    if spec.protocol.active:
        if identity is None or alliance is None:
            raise SecAggValueError(
                f"client {client_id}: the round is active; pass this client's identity= and the alliance= "
                "(a client without an identity cannot take part)"
            )
        if isinstance(client_id, int) and alliance.get(client_id) != identity.public_bytes():
            raise SecAggValueError(f"client {client_id}: identity is not the alliance's key of client {client_id}")
    elif identity is not None or alliance is not None:
        raise UnsafeParametersError(
            f"client {client_id}: this client has an identity but the round is semi-honest; refusing the "
            "downgrade (the server must run the round in active mode)"
        )


class SecureClient:
    """One client's side of one secure round (sans-I/O: you carry the messages).

    Args:
        spec: the round's :class:`~secagg.spec.RoundSpec` (``RoundSpec.from_bytes`` of
            what the server sent).
        client_id: protocol id, ``1..spec.protocol.n``.
        global_model: the global model (or its state dict) this client trains from; it
            must have the spec's layout and be the model the spec names (its digest).
            Its layout tensors are copied: train the model or a copy, as you like.
        rng: randomness for the protocol secrets, rounding and the DP noise share
            (default: a fresh CSPRNG; never a guessable seed in production: the noise
            share must stay secret).
        identity: this client's long-term :class:`~secagg.IdentityKey` (active mode).
        alliance: the alliance's :class:`~secagg.Alliance` (active mode), loaded from the
            file distributed out of band, never from the server.

    Raises:
        SecAggValueError: the spec's layout is not the model's, or the spec names another
            model (or none); an active spec without ``identity`` and ``alliance``, or an
            identity that is not the alliance's key of ``client_id``.
        UnsafeParametersError: an identity or an alliance with a semi-honest spec (the
            client refuses the downgrade).
        SecAggTypeError: ``identity`` or ``alliance`` of the wrong type.

    Use: ``start()`` -> send; ``receive(msg)`` -> send the reply if not None; after the
    share delivery (``receive`` returns None, :attr:`awaiting_update`), call
    :meth:`submit` with the trained model or state, then keep answering with ``receive``.
    """

    def __init__(
        self,
        spec: RoundSpec,
        client_id: int,
        global_model: StateLike | _Snapshot,
        *,
        rng: RngLike = None,
        identity: IdentityKey | None = None,
        alliance: Alliance | None = None,
    ) -> None:
        if not isinstance(spec, RoundSpec):
            raise SecAggTypeError(f"spec must be a RoundSpec, got {type(spec).__name__}")
        _check_mode(spec, client_id, identity, alliance)
        snap = global_model if isinstance(global_model, _Snapshot) else _Snapshot(spec, global_model)
        if snap.spec is not spec and snap.spec != spec:
            raise SecAggValueError("the snapshot was checked against another round's spec")
        rng_src: RandomSource = as_random_source(rng)
        if spec.protocol.active:
            session = ClientSession(
                spec.protocol,
                client_id,
                rng_src,
                identity=identity,
                alliance=alliance,
                spec_fingerprint=spec.fingerprint,
                model_digest=spec.model_digest,
            )
        else:
            session = ClientSession(spec.protocol, client_id, rng_src)
        self._snap, self._rng, self._session = snap, rng_src, session

    @property
    def security_mode(self) -> str:
        """``"active"`` or ``"semi-honest"``: the protocol this client runs."""
        return "active" if self._snap.spec.protocol.active else "semi-honest"

    @property
    def spec(self) -> RoundSpec:
        """The round's spec (its ``ledger_head`` is the anchor to keep)."""
        return self._snap.spec

    @property
    def layout(self) -> UpdateLayout:
        """The round's layout, as a torch :class:`UpdateLayout`."""
        return self._snap.layout

    @property
    def client_id(self) -> int:
        """Protocol id."""
        return self._session.client_id

    @property
    def session(self) -> ClientSession:
        """The underlying protocol session."""
        return self._session

    @property
    def awaiting_update(self) -> bool:
        """True after the share delivery, until :meth:`submit`."""
        return self._session.state is ClientState.AWAIT_INPUT

    def start(self) -> Message:
        """Stage 1 message (advertise keys)."""
        return self._session.start()

    def receive(self, message: Message | bytes | bytearray | memoryview) -> Message | None:
        """Consume one server message; return the reply to send (or None)."""
        return self._session.receive(message)

    def encode(self, trained: StateLike, *, num_examples: int | None = None) -> RingVector:
        """``trained - global`` flattened and encoded into the round's ring (no protocol
        state changes).

        Args:
            trained: the trained local model (wrappers such as opacus, ``torch.compile``
                or DDP are unwrapped; ``_module.``/``_orig_mod.``/``module.`` names mapped)
                or its state dict.
            num_examples: local example count (FedAvg weight, capped at the spec's
                ``max_weight``; required without DP, ignored with DP).

        Raises:
            UpdateError: the update does not fit the layout (names the client and tensor),
                or a bad ``num_examples``.
            dp.errors.DPError: the DP pipeline refused the update.
        """
        cid = self.client_id
        lay = self._snap.layout
        state = map_names(_state_of(trained, cid), {*lay.names, *lay.ignored})
        vec = lay.flatten_delta(state, self._snap.tensors, client=cid, dtype=np.float64)
        spec = self._snap.spec
        if spec.mode == "fedavg" and (
            isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 0
        ):
            raise UpdateError(
                f"client {cid}: num_examples must be an int >= 0 for FedAvg weighting, got {num_examples!r}",
                client=cid,
                reason="type",
            )
        n_ex = None if num_examples is None else int(num_examples)
        return spec.encode(vec, num_examples=n_ex, rng=self._rng)

    def submit(self, trained: StateLike, *, num_examples: int | None = None) -> Message | None:
        """Encode ``trained`` (see :meth:`encode`) and hand it to the protocol session.

        Returns:
            the masked input to send (after the share delivery), or None (before it).

        Raises:
            UpdateError: the update is refused; the session is unchanged and this client
                simply stays silent (the server counts it as a dropout).
        """
        return self._session.provide_input(self.encode(trained, num_examples=num_examples))
