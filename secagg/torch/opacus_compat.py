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

A ``PrivacyEngine`` made for one round knows that round only: its epsilon is a per-round
figure, and a client's data is used again every round.  :func:`compose_self_reported`
composes each client's DP-SGD steps over every round it reported (the events
``(noise_multiplier, sample_rate, steps)`` from opacus' history, through :mod:`dp`'s RDP
accountant) into a :class:`ClientDPSGD`: the example-level figure of the whole run so far.

opacus is imported only inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dp.accountants import make_accountant
from dp.errors import DPError
from dp.events import GaussianEvent, PoissonSampledEvent
from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.torch._names import map_names, strip_prefixes, unwrap
from secagg.torch.flatten import UpdateLayout

__all__ = [
    "ClientDPSGD",
    "SelfReportedEpsilon",
    "client_state_dict",
    "compose_self_reported",
    "prepare_global_model",
    "self_reported_epsilon",
]

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
        private_model = unwrap(private_model).state_dict()
    if layout is None:
        state = strip_prefixes(private_model)
    else:
        state = map_names(private_model, {*layout.names, *layout.ignored})
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


@dataclass(frozen=True)
class ClientDPSGD:
    """One client's example-level DP-SGD over the run so far, composed from its self-reports.

    Attributes:
        client: the client, as its reports name it.
        rounds: how many rounds' reports are composed.
        history: every ``(noise_multiplier, sample_rate, steps)`` triple reported, in order.
        delta: the smallest delta the client reported (the figure is at this delta).
        epsilon: example-level epsilon of all the reported steps, composed with
            :mod:`dp`'s RDP accountant (``inf`` if a step had no noise).  Still
            self-reported: the server cannot check the history.

    A client that keeps one ``PrivacyEngine`` across rounds reports a cumulative history;
    composing it again each round overstates its epsilon (the safe side).  Make a fresh
    engine each round (``make_private`` on the copy of the global model the round gives).
    """

    client: str
    rounds: int
    history: tuple[tuple[float, float, int], ...]
    delta: float
    epsilon: float
    kind: str = "self-reported"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``epsilon`` None when infinite)."""
        return {
            "kind": self.kind,
            "verified": False,
            "scope": f"composed over {self.rounds} round(s)",
            "client": self.client,
            "rounds": self.rounds,
            "epsilon": self.epsilon if math.isfinite(self.epsilon) else None,
            "delta": self.delta,
            "accountant": "rdp",
            "history": [list(h) for h in self.history],
        }


def _dpsgd_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    acct = make_accountant("rdp")
    for z, q, steps in history:
        if steps > 0:
            acct.compose(PoissonSampledEvent(q, GaussianEvent(z)), steps)
    return float(acct.get_epsilon(delta))


def compose_self_reported(
    previous: Mapping[str, ClientDPSGD], reports: Iterable[SelfReportedEpsilon]
) -> dict[str, ClientDPSGD]:
    """Add one round's reports to each client's composition (``previous`` is not changed).

    Args:
        previous: client -> :class:`ClientDPSGD` before this round (``{}`` at the start).
        reports: this round's :class:`SelfReportedEpsilon`, at most one per client.

    Returns:
        client -> :class:`ClientDPSGD` after this round (clients without a report keep
        their figure).

    Raises:
        SecAggTypeError: not SelfReportedEpsilon reports.
        SecAggValueError: two reports of one client, or a history the accountant refuses.
    """
    out = dict(previous)
    seen: set[str] = set()
    for r in reports:
        if not isinstance(r, SelfReportedEpsilon):
            raise SecAggTypeError(f"reports must be SelfReportedEpsilon, got {type(r).__name__}")
        if r.client in seen:
            raise SecAggValueError(f"client {r.client} reported twice in one round")
        seen.add(r.client)
        before = out.get(r.client)
        history = (before.history if before else ()) + r.history
        delta = min(r.delta, before.delta) if before else r.delta
        try:
            epsilon = _dpsgd_epsilon(history, delta)
        except DPError as exc:
            raise SecAggValueError(f"client {r.client}: its DP-SGD history cannot be accounted: {exc}") from exc
        out[r.client] = ClientDPSGD(r.client, (before.rounds if before else 0) + 1, history, delta, epsilon)
    return out
