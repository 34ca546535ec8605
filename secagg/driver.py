"""The round driver: the one loop that moves a round through its stages.

:func:`drive_round` owns the stage sequence, the deadlines, the per-stage byte and time
counts, the abort notices and the result.  It is the only code in the library that
calls :meth:`ServerSession.receive <secagg.server.ServerSession.receive>` and
:meth:`~secagg.server.ServerSession.close_stage`.  Transports
(:class:`secagg.transport.Transport`: in memory, torch, Flower) only carry bytes.

One round::

    setup bytes ──► every client          (the RoundSpec or RoundConfig: stage 1 request)
    for stage in advertise_keys, share_keys, masked_input, consistency, unmasking:
        (a stage the session does not run -- consistency in a semi-honest round -- is
         skipped with an empty report)
        replies ◄── transport.exchange(stage, outbox, deadline)   one at a time
        session.receive(reply, sender=the transport's sender)     bad client => excluded
        outbox = session.close_stage()                            abort => notices, raise

Dropouts and exclusions are the session's bookkeeping; the driver reports them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from secagg.crypto.prg import Masker
from secagg.errors import ProtocolAbort, SecAggTypeError, SecAggValueError
from secagg.identity import Alliance
from secagg.messages import Abort, Message, RoundConfig, Stage
from secagg.server import AggregateResult, ServerSession
from secagg.transport import Outgoing, Transport

__all__ = ["STAGES", "DriverResult", "StageReport", "drive_round"]

#: Stage names, in order.
STAGES: tuple[str, ...] = tuple(s.value for s in Stage)


@dataclass(frozen=True)
class StageReport:
    """What happened in one stage.

    Attributes:
        stage: the stage name.
        addressed: client ids sent this stage's request.
        answered: client ids whose message the server accepted.
        silent: addressed client ids that sent nothing usable in time (dropouts).
        excluded: client id -> reason, for clients excluded in this stage.
        bytes_up: bytes received from clients (everything that arrived).
        bytes_down: bytes sent to clients (requests and notices).
        seconds: wall time of the stage (transport included).
        server_seconds: time spent in the server session and encoding its messages.
    """

    stage: str
    addressed: tuple[int, ...]
    answered: tuple[int, ...]
    silent: tuple[int, ...]
    excluded: dict[int, str]
    bytes_up: int
    bytes_down: int
    seconds: float
    server_seconds: float


@dataclass(frozen=True, eq=False)
class DriverResult:
    """A completed round as the driver saw it.

    Attributes:
        result: the session's :class:`~secagg.server.AggregateResult` (sum, survivors,
            dropped, recovered keys, excluded).
        config: the round's protocol configuration.
        stages: one :class:`StageReport` per stage, in order.
        graph: the neighbour graph (client id -> neighbour ids).
        ignored: messages ignored without excluding anyone: (client, why).
    """

    result: AggregateResult
    config: RoundConfig
    stages: tuple[StageReport, ...]
    graph: dict[int, frozenset[int]] = field(repr=False)
    ignored: tuple[tuple[int | None, str], ...] = ()

    @property
    def bytes_up(self) -> dict[str, int]:
        """Per stage, bytes received from clients."""
        return {r.stage: r.bytes_up for r in self.stages}

    @property
    def bytes_down(self) -> dict[str, int]:
        """Per stage, bytes sent to clients."""
        return {r.stage: r.bytes_down for r in self.stages}

    @property
    def server_seconds(self) -> dict[str, float]:
        """Per stage, server time."""
        return {r.stage: r.server_seconds for r in self.stages}

    @property
    def excluded(self) -> dict[int, str]:
        """Client id -> reason, every client excluded for misbehaviour."""
        return dict(self.result.excluded)


def drive_round(
    config: RoundConfig,
    transport: Transport,
    *,
    setup: bytes | None = None,
    stage_timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    timer: Callable[[], float] = time.perf_counter,
    masker: Masker | None = None,
    on_stage: Callable[[StageReport], None] | None = None,
    alliance: Alliance | None = None,
    model_digest: str | None = None,
) -> DriverResult:
    """Run one round of ``config`` over ``transport``.

    Args:
        config: the protocol configuration (clients 1..n are addressed).
        transport: the :class:`~secagg.transport.Transport`.
        setup: the bytes every client receives to start (its stage 1 request): the
            canonical :class:`~secagg.spec.RoundSpec` (or, for bare protocol use, the
            :class:`~secagg.messages.RoundConfig`, the default).
        stage_timeout: seconds each stage waits for replies (None: until the transport
            has delivered every reply it will deliver).
        clock: the deadline clock (``time.monotonic``; inject one in tests).
        timer: the clock of the time counts (``time.perf_counter``).
        masker: optional :class:`~secagg.crypto.prg.Masker` for the server's unmasking.
        on_stage: called with each :class:`StageReport` as its stage closes.
        alliance: the alliance's identity keys (required when ``config.active``): the
            server checks every signature against it.
        model_digest: the digest of the global model the round names (active mode: the
            clients sign it, the server checks it); the round-spec fingerprint the clients
            sign is SHA-256 of ``setup`` (:attr:`secagg.spec.RoundSpec.fingerprint`).

    Returns:
        The :class:`DriverResult`.

    Raises:
        ProtocolAbort: the survivors no longer satisfy the floor, the threshold or the
            graph checks, or (active mode) a dealer's signed shares disagree with its
            commitment; ``.stage``, ``.dropped``, ``.excluded`` and ``.evidence`` say
            where and who.
            The clients still taking part were sent the abort notice.
        SecAggTypeError, SecAggValueError: bad arguments.
    """
    if not isinstance(config, RoundConfig):
        raise SecAggTypeError(f"config must be a RoundConfig, got {type(config).__name__}")
    if stage_timeout is not None and (
        isinstance(stage_timeout, bool) or not isinstance(stage_timeout, (int, float)) or not stage_timeout > 0
    ):
        raise SecAggValueError(f"stage_timeout must be a number > 0 or None, got {stage_timeout!r}")
    first = config.encode() if setup is None else setup
    if not isinstance(first, bytes):
        raise SecAggTypeError(f"setup must be bytes, got {type(first).__name__}")
    fingerprint = hashlib.sha256(first).hexdigest()
    session = ServerSession(
        config,
        auto_close=False,
        masker=masker,
        alliance=alliance,
        spec_fingerprint=fingerprint if config.active else None,
        model_digest=model_digest,
    )
    reports: list[StageReport] = []
    outbox: Mapping[int, Message | bytes] = {c: first for c in range(1, config.n + 1)}
    for stage in Stage:
        if session.stage is not stage:  # a stage this round does not run (semi-honest: consistency)
            reports.append(StageReport(stage.value, (), (), (), {}, 0, 0, 0.0, 0.0))
            continue
        t_stage = timer()
        cache: dict[int, bytes] = {}  # a broadcast (one roster object) is encoded once
        requests: list[Outgoing] = []
        notices: list[Outgoing] = []
        for cid, msg in outbox.items():
            data = msg if isinstance(msg, bytes) else _encoded(msg, cache)
            (notices if isinstance(msg, Abort) else requests).append(Outgoing(cid, data))
        down = sum(len(o.data) for o in (*requests, *notices))
        if notices:
            transport.notify(stage, notices)
        server_s = timer() - t_stage
        up = 0
        deadline = None if stage_timeout is None else clock() + float(stage_timeout)
        for incoming in transport.exchange(stage, requests, deadline):
            up += len(incoming.data)
            t0 = timer()
            session.receive(incoming.data, sender=incoming.client)
            server_s += timer() - t0
        answered = tuple(sorted(set(o.client for o in requests) - session.awaited - set(session.excluded)))
        t0 = timer()
        try:
            outbox = session.close_stage()
        except ProtocolAbort as exc:
            server_s += timer() - t0
            report = _report(stage, requests, answered, session, up, down, timer() - t_stage, server_s)
            reports.append(report)
            if on_stage is not None:
                on_stage(report)
            out = [Outgoing(c, m.encode()) for c, m in session.abort_messages().items()]
            if out:
                transport.notify(stage, out)
            excluded = {c: str(e) for c, e in session.excluded.items()}
            raise ProtocolAbort(
                f"round aborted at stage {stage.value}: {exc}",
                stage=stage.value,
                dropped=session.dropped,
                excluded=excluded,
                evidence=dict(exc.evidence),
            ) from exc
        server_s += timer() - t0
        report = _report(stage, requests, answered, session, up, down, timer() - t_stage, server_s)
        reports.append(report)
        if on_stage is not None:
            on_stage(report)
    result = session.result
    assert result is not None
    return DriverResult(result, config, tuple(reports), session.graph, session.ignored)


def _encoded(msg: Message, cache: dict[int, bytes]) -> bytes:
    """``msg.encode()``, once per message object (a broadcast roster goes to every client)."""
    data = cache.get(id(msg))
    if data is None:
        data = cache[id(msg)] = msg.encode()
    return data


def _report(  # noqa: PLR0917 - internal helper
    stage: Stage,
    requests: list[Outgoing],
    answered: tuple[int, ...],
    session: ServerSession,
    up: int,
    down: int,
    seconds: float,
    server_s: float,
) -> StageReport:
    excluded = {c: str(e) for c, e in session.excluded.items() if e.stage == stage.value}
    return StageReport(
        stage=stage.value,
        addressed=tuple(sorted(o.client for o in requests)),
        answered=answered,
        silent=session.dropped.get(stage.value, ()),
        excluded=excluded,
        bytes_up=up,
        bytes_down=down,
        seconds=seconds,
        server_seconds=server_s,
    )
