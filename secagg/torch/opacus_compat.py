"""Clients that train locally with opacus (example-level DP-SGD) inside a secure round.

opacus changes a model in two ways that would make every client's update fail the
round's tensor checks:

* ``ModuleValidator.fix`` replaces modules DP-SGD cannot handle (BatchNorm becomes
  GroupNorm, so tensor names and buffers change).  :func:`prepare_global_model` applies the
  same fix to the **global** model before the round's layout is built; clients then start
  from a copy of that fixed model, and fixing again is a no-op.
* ``PrivacyEngine.make_private`` wraps the model in a ``GradSampleModule`` whose
  ``state_dict`` keys carry a ``_module.`` prefix.  :func:`client_state_dict` unwraps the
  model (or strips the prefix from a plain state dict) so the names are the global model's.

The example-level epsilon a client's ``PrivacyEngine`` reports cannot be checked by the
server (it never sees the client's data, sampling or noise): :func:`self_reported_epsilon`
records it as a :class:`SelfReportedEpsilon`, kept apart from the client-level guarantee the
server-side accounting gives.

opacus is imported only inside the functions that need it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.torch.flatten import UpdateLayout

__all__ = [
    "WRAPPER_PREFIXES",
    "SelfReportedEpsilon",
    "client_state_dict",
    "prepare_global_model",
    "self_reported_epsilon",
    "strip_prefixes",
    "unwrap",
]

#: Name prefixes added by opacus wrappers (GradSampleModule and friends).
WRAPPER_PREFIXES: tuple[str, ...] = ("_module.",)


def _opacus() -> Any:
    try:
        import opacus
    except ModuleNotFoundError as exc:  # pragma: no cover - opacus is in the torch extra
        raise SecAggValueError("this needs opacus: pip install 'secagg[torch]'") from exc
    return opacus


def prepare_global_model(model: nn.Module, **fix_kwargs: Any) -> nn.Module:
    """Return a copy of ``model`` made DP-SGD compatible by ``opacus``'s
    ``ModuleValidator.fix`` (BatchNorm to GroupNorm, ...), the same fix the clients' local
    training needs, so the round's layout and the clients' updates agree.

    Build the round's :class:`~secagg.torch.flatten.UpdateLayout` from the returned model
    and send clients copies of it.  ``model`` itself is not changed.

    Raises:
        SecAggValueError: opacus cannot make the model compatible (the message lists why).
    """
    if not isinstance(model, nn.Module):
        raise SecAggTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from opacus.validators import ModuleValidator

    _opacus()
    fixed: nn.Module = ModuleValidator.fix(model, **fix_kwargs)
    problems = ModuleValidator.validate(fixed, strict=False)
    if problems:
        listed = "; ".join(str(p) for p in problems[:5])
        raise SecAggValueError(f"opacus cannot train this model privately even after fixing it: {listed}")
    return fixed


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside opacus wrappers (``GradSampleModule``, ``DPDDP``), or
    ``model`` itself."""
    if not isinstance(model, nn.Module):
        raise SecAggTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if "opacus" not in sys.modules:  # never imported: nothing can be wrapped (and importing costs ~1 s)
        return model
    from opacus.grad_sample.gsm_base import AbstractGradSampleModule

    seen = 0
    while isinstance(model, AbstractGradSampleModule) or type(model).__name__ == "DPDDP":
        inner = model._module if isinstance(model, AbstractGradSampleModule) else model.module
        if not isinstance(inner, nn.Module) or seen > 8:
            break
        model = inner
        seen += 1
    return model


def strip_prefixes(
    state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...] = WRAPPER_PREFIXES
) -> dict[str, torch.Tensor]:
    """Copy of ``state`` (same tensors) with wrapper ``prefixes`` removed from the front of
    every key, repeatedly (nested wrappers).

    Raises:
        SecAggValueError: two keys map to the same name.
    """
    if not isinstance(state, Mapping):
        raise SecAggTypeError(f"state must be a mapping, got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key)
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if p and name.startswith(p):
                    name = name[len(p) :]
                    changed = True
        if name in out:
            raise SecAggValueError(f"keys {key!r} and another both map to {name!r}; the state mixes wrapped names")
        out[name] = value
    return out


def client_state_dict(
    private_model: nn.Module | Mapping[str, torch.Tensor],
    *,
    layout: UpdateLayout | None = None,
    client: object = None,
) -> dict[str, torch.Tensor]:
    """A client's state dict under the global model's names.

    Args:
        private_model: the model returned by ``PrivacyEngine.make_private`` (or its
            ``state_dict()``); plain modules pass through.
        layout: if given, the result is checked against it (names, shapes, dtypes).
        client: named in errors.

    Raises:
        UpdateError: the mapped state does not fit ``layout``.
    """
    if isinstance(private_model, nn.Module):
        state = strip_prefixes(unwrap(private_model).state_dict())
    else:
        state = strip_prefixes(private_model)
    if layout is not None:
        layout.check(state, client=client)
    return state


@dataclass(frozen=True)
class SelfReportedEpsilon:
    """Example-level (epsilon, delta) a client says its local DP-SGD spent.

    The server cannot verify it, so it is recorded as ``kind="self-reported"`` and never
    composed into the server's client-level accounting.  ``history`` is opacus's
    accountant history: ``(noise_multiplier, sample_rate, steps)`` triples.
    """

    client: str
    epsilon: float
    delta: float
    accountant: str
    history: tuple[tuple[float, float, int], ...] = ()
    kind: str = "self-reported"

    def __post_init__(self) -> None:
        if math.isnan(self.epsilon) or self.epsilon < 0:
            raise SecAggValueError(f"epsilon must be >= 0, got {self.epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise SecAggValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.kind != "self-reported":
            raise SecAggValueError("a SelfReportedEpsilon is always kind='self-reported'")

    @property
    def steps(self) -> int:
        """Total DP-SGD steps in the history."""
        return sum(h[2] for h in self.history)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (for a ledger entry)."""
        return {
            "kind": self.kind,
            "verified": False,
            "client": self.client,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "history": [list(h) for h in self.history],
        }


def self_reported_epsilon(privacy_engine: Any, delta: float, *, client: object) -> SelfReportedEpsilon:
    """Read the example-level epsilon from a client's opacus ``PrivacyEngine``.

    Args:
        privacy_engine: ``opacus.PrivacyEngine`` used for this client's local training.
        delta: target delta, in (0, 1).
        client: the client's id.
    """
    if not 0.0 < float(delta) < 1.0:
        raise SecAggValueError(f"delta must be in (0, 1), got {delta}")
    accountant = getattr(privacy_engine, "accountant", None)
    if accountant is None or not hasattr(accountant, "get_epsilon"):
        raise SecAggTypeError("privacy_engine must be an opacus PrivacyEngine (it has no accountant)")
    history = tuple((float(z), float(q), int(n)) for z, q, n in getattr(accountant, "history", []))
    epsilon = float(accountant.get_epsilon(float(delta))) if history else 0.0
    return SelfReportedEpsilon(
        client=str(client),
        epsilon=epsilon,
        delta=float(delta),
        accountant=str(accountant.mechanism()),
        history=history,
    )
