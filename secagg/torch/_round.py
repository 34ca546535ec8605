"""One secure round of torch clients in memory: :func:`run_round`.

A thin transport over the one round driver (:func:`secagg.driver.drive_round`): each client
is an in-memory endpoint (:class:`secagg.transport.MemoryTransport`) that on the round's
spec bytes builds a :class:`~secagg.torch.SecureClient` from the global model and advertises
its keys, on its share delivery trains a copy of the global model with the user's
``train_fn``, encodes and masks the update, and otherwise answers its protocol session.
A client whose training raises, or whose update does not fit the round, drops out with
its reason; the round goes on while enough clients remain.  The
:class:`~secagg.torch.SecureServer` then decodes, accounts and records the round.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dp.errors import DPError
from secagg.driver import STAGES, drive_round
from secagg.errors import SecAggError, SecAggTypeError, SecAggValueError, UnsafeParametersError
from secagg.identity import Alliance, IdentityKey
from secagg.messages import Stage
from secagg.rand import RngLike, as_random_source
from secagg.spec import RoundSpec
from secagg.torch._client import SecureClient, _Snapshot
from secagg.torch._names import unwrap
from secagg.torch._results import ClientOutcome, LocalResult, RoundReport, TrainFn
from secagg.torch._server import SecureServer
from secagg.torch.opacus_compat import SelfReportedEpsilon
from secagg.transport import MemoryTransport

__all__ = ["run_round"]


class _Tally:
    """What the endpoints observed, for the report (seconds, outcomes, claims)."""

    def __init__(self) -> None:
        self.train = 0.0
        self.encode = 0.0
        self.rejected: dict[int, str] = {}
        self.failed: dict[int, tuple[str, str]] = {}  # pid -> (stage, error)
        self.reports: dict[int, SelfReportedEpsilon] = {}


class _TorchClient:
    """One client as an in-memory endpoint (see the module docstring)."""

    def __init__(  # noqa: PLR0917 - internal
        self,
        pid: int,
        client: Any,
        model: nn.Module,
        snapshot: _Snapshot,
        train_fn: TrainFn,
        seed: bytes,
        tally: _Tally,
        identity: IdentityKey | None = None,
        alliance: Alliance | None = None,
    ) -> None:
        self._pid, self._client, self._model, self._snap = pid, client, model, snapshot
        self._train_fn, self._seed, self._tally = train_fn, seed, tally
        self._identity, self._alliance = identity, alliance
        self._sc: SecureClient | None = None

    def __call__(self, stage: Stage, data: bytes) -> bytes | None:
        if self._sc is None:
            # the client reads the spec from the wire and checks it against the model it holds
            self._sc = SecureClient(
                RoundSpec.from_bytes(data),
                self._pid,
                self._snap,
                rng=self._seed,
                identity=self._identity,
                alliance=self._alliance,
            )
            return self._sc.start().encode()
        sc = self._sc
        reply = sc.receive(data)
        if reply is None and sc.awaiting_update:  # the share delivery came: train, encode, mask
            reply = sc.session.provide_input(self._train_and_encode(stage, sc))
        return None if reply is None else reply.encode()

    def _train_and_encode(self, stage: Stage, sc: SecureClient) -> Any:
        tally = self._tally
        t0 = time.perf_counter()
        try:
            local = copy.deepcopy(self._model)  # the plain model: never a wrapper's hooks or state
            local.train()  # the global model may be in eval mode after an evaluation; training wants train mode
            result = self._train_fn(self._client, local)
            if isinstance(result, LocalResult):
                n_ex, trained = result.num_examples, (result.model if result.model is not None else local)
                report = result.self_reported
            else:
                n_ex, trained, report = result, local, None
            if report is not None and not isinstance(report, SelfReportedEpsilon):
                raise SecAggTypeError("LocalResult.self_reported must be a SelfReportedEpsilon")
        except Exception as exc:
            tally.failed[self._pid] = (stage.value, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            tally.train += time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            ring = sc.encode(trained, num_examples=n_ex)
        except (SecAggError, DPError) as exc:  # a bad update, or the DP pipeline refused it
            tally.rejected[self._pid] = str(exc)
            raise
        finally:
            tally.encode += time.perf_counter() - t0
        if report is not None:
            tally.reports[self._pid] = report
        return ring


def _silent(dropouts: Mapping[str, Iterable[Any]] | None, pos: Mapping[Any, int]) -> dict[Stage, set[int]]:
    out: dict[Stage, set[int]] = {}
    if dropouts is None:
        return out
    if not isinstance(dropouts, Mapping):
        raise SecAggTypeError("dropouts must map a stage name to client identifiers")
    unknown = [s for s in dropouts if s not in STAGES]
    if unknown:
        raise SecAggValueError(f"unknown dropout stage(s) {unknown}; use {list(STAGES)}")
    for stage, who in dropouts.items():
        for c in who:
            if c not in pos:
                raise SecAggValueError(f"dropouts[{stage!r}] names {c!r}, which is not in this round's clients")
            out.setdefault(Stage(stage), set()).add(pos[c])
    return out


def _protocol_ids(
    ids: Sequence[Any], identities: Mapping[Any, IdentityKey] | None, alliance: Alliance | None
) -> tuple[dict[Any, int], dict[Any, IdentityKey]]:
    """Client -> protocol id (and, in active mode, -> its identity), all checked first."""
    if alliance is None:
        if identities is not None:
            raise UnsafeParametersError(
                "identities were given but the server has no alliance, so the round would be semi-honest; clients "
                "with an identity refuse the downgrade: create the SecureServer with alliance="
            )
        return {c: i + 1 for i, c in enumerate(ids)}, {}
    if identities is None or not isinstance(identities, Mapping):
        raise SecAggValueError(
            "the server has an alliance, so the round is active: pass identities={client: IdentityKey} for every client"
        )
    by_key = {key: cid for cid, key in alliance.items()}
    pos: dict[Any, int] = {}
    keys: dict[Any, IdentityKey] = {}
    for c in ids:
        key = identities.get(c)
        if key is None:
            raise SecAggValueError(f"client {c!r} has no identity; an active round refuses clients without one")
        if not isinstance(key, IdentityKey):
            raise SecAggTypeError(f"identities[{c!r}] must be a secagg.IdentityKey, got {type(key).__name__}")
        pid = by_key.get(key.public_bytes())
        if pid is None:
            raise SecAggValueError(f"client {c!r}: its identity is not a member of the server's alliance")
        pos[c], keys[c] = pid, key
    if sorted(pos.values()) != list(range(1, len(ids) + 1)):
        raise SecAggValueError(
            f"an active round of {len(ids)} clients addresses alliance ids 1..{len(ids)}; these clients' identities "
            f"are alliance ids {sorted(pos.values())}"
        )
    return pos, keys


def run_round(
    global_model: nn.Module,
    clients: Sequence[Any],
    train_fn: TrainFn,
    *,
    server: SecureServer,
    dropouts: Mapping[str, Iterable[Any]] | None = None,
    apply: bool = True,
    server_lr: float = 1.0,
    rng: RngLike = None,
    identities: Mapping[Any, IdentityKey] | None = None,
) -> RoundReport:
    """Run one secure round over the in-memory network (a simulation).

    Each client (its identifier is passed to ``train_fn``) gets protocol id ``i + 1`` in the
    order of ``clients``.  When its share delivery arrives it trains a copy of
    ``global_model`` (unwrapped, in training mode) with ``train_fn``; its
    :class:`~secagg.torch.SecureClient` encodes the delta and masks it.  A client whose
    ``train_fn`` raises (any ``Exception``) is a dropout (``failed``, with the error), and
    so is one whose update is refused (``rejected``: :class:`UpdateError` or the DP
    pipeline's refusal).  The round goes on while enough clients remain.

    Args:
        global_model: the model (wrappers such as opacus, ``torch.compile`` or DDP are
            unwrapped); updated in place (``+= server_lr * mean``) when ``apply``.
        clients: this round's cohort (at least 3), distinct hashable identifiers.
        train_fn: ``train_fn(client, model) -> examples | LocalResult``.
        server: the :class:`SecureServer` (keeps layout, accounting and ledger across rounds).
        dropouts: protocol stage name -> clients silent from that stage on (simulation).
        apply: add the mean update to ``global_model``.
        server_lr: server learning rate for ``apply``.
        rng: randomness of the clients (protocol secrets, rounding, DP noise).
        identities: client -> its :class:`~secagg.IdentityKey`, required when the server
            has an alliance (active mode): each client then takes the protocol id its key
            has in the alliance (the cohort must be alliance ids 1..n), signs its
            advertisement and checks its neighbours.  Refused without an alliance (a client
            with an identity never runs a semi-honest round).

    Raises:
        ProtocolAbort: too few clients survived (nothing was revealed; the model is
            unchanged; nothing is recorded).
        SecAggValueError, SecAggTypeError: bad arguments, or in active mode a client
            without an identity or outside the alliance (nothing ran).
        UnsafeParametersError: ``identities`` for a server without an alliance.
    """
    if not isinstance(server, SecureServer):
        raise SecAggTypeError(f"server must be a SecureServer, got {type(server).__name__}")
    if not isinstance(global_model, nn.Module):
        raise SecAggTypeError(f"global_model must be a torch.nn.Module, got {type(global_model).__name__}")
    if not callable(train_fn):
        raise SecAggTypeError("train_fn must be callable: train_fn(client, model) -> examples | LocalResult")
    if isinstance(server_lr, bool) or not isinstance(server_lr, (int, float)) or not math.isfinite(server_lr):
        raise SecAggValueError(f"server_lr must be a finite number, got {server_lr!r}")
    ids = list(clients)
    if len(set(ids)) != len(ids):
        raise SecAggValueError("client identifiers must be distinct")
    alliance = server.alliance
    pos, keys = _protocol_ids(ids, identities, alliance)
    who = {p: c for c, p in pos.items()}
    silent = _silent(dropouts, pos)
    src = as_random_source(rng)
    model = unwrap(global_model)
    with torch.no_grad():
        base = {k: v.detach().clone() for k, v in server.layout.extract(model, client="global").items()}
    spec = server.new_round(len(ids), base)
    snapshot = _Snapshot(spec, model)  # the full state: names outside the layout are known, not unexpected
    tally = _Tally()
    endpoints = {
        pid: _TorchClient(pid, who[pid], model, snapshot, train_fn, src.bytes(32), tally, keys.get(who[pid]), alliance)
        for pid in sorted(who)
    }
    transport = MemoryTransport(endpoints, silent=silent, drops_on=(Exception,), clock=time.perf_counter)
    run = drive_round(
        spec.protocol,
        transport,
        setup=spec.to_bytes(),
        timer=time.perf_counter,
        alliance=alliance,
        model_digest=spec.model_digest,
    )

    t0 = time.perf_counter()
    res = run.result
    survivors = set(res.survivors)
    update = server.finish(run, self_reported=[r for pid, r in sorted(tally.reports.items()) if pid in survivors])
    if apply:
        server.apply(global_model, update, server_lr=server_lr)
    decode_s = time.perf_counter() - t0

    outcomes = []
    silent_at = {pid: s.value for s in Stage for pid in silent.get(s, ())}
    for pid in sorted(who):
        c = who[pid]
        if pid in survivors:
            outcomes.append(ClientOutcome(c, pid, "survived"))
        elif pid in tally.failed:
            outcomes.append(ClientOutcome(c, pid, "failed", tally.failed[pid][0], tally.failed[pid][1]))
        elif pid in tally.rejected:
            outcomes.append(ClientOutcome(c, pid, "rejected", Stage.MASKED_INPUT.value, tally.rejected[pid]))
        elif pid in res.excluded:
            stage = next((s for s, v in res.dropped.items() if pid in v), None)
            outcomes.append(ClientOutcome(c, pid, "excluded", stage, res.excluded[pid]))
        else:
            stage = silent_at.get(pid) or next((s for s, v in res.dropped.items() if pid in v), None)
            error = transport.failures.get(pid)
            outcomes.append(ClientOutcome(c, pid, "dropped", stage, error))
    client_s = sum(transport.client_seconds.values()) - tally.train - tally.encode
    return RoundReport(
        update=update,
        spec=spec,
        clients=tuple(outcomes),
        rejected={who[p]: e for p, e in tally.rejected.items()},
        failed={who[p]: e for p, (_s, e) in tally.failed.items()},
        excluded={who[p]: e for p, e in res.excluded.items()},
        stages=run.stages,
        bytes_up=run.bytes_up,
        bytes_down=run.bytes_down,
        timings={
            "train": tally.train,
            "encode": tally.encode,
            "client": max(0.0, client_s),
            "server": sum(run.server_seconds.values()),
            "decode": decode_s,
        },
    )
