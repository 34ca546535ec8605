"""How the round driver talks to clients: the :class:`Transport` interface and the
in-memory transport.

A transport is a thin edge.  It knows how to put bytes in front of clients and how to
collect what they send back before a deadline; it knows nothing of stages' meaning,
dropouts, thresholds or results.  The one stage loop lives in :mod:`secagg.driver`.

* :class:`Transport` -- the interface: :meth:`~Transport.exchange` (deliver one
  stage's messages, yield the replies as they arrive, stop at the deadline) and
  :meth:`~Transport.notify` (deliver notices nobody answers, such as aborts).
* :class:`MemoryTransport` -- clients are in-process callables (:class:`Endpoint`),
  called one after another; used by :func:`secagg.simulate_round` and the torch adapter.
  Replies are yielded one at a time, so the server consumes a masked input before the
  next client produces its own: memory stays O(d) at any n.

Everything crosses as bytes, so byte counts are the real wire sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from secagg.errors import RemoteProtocolError, SecAggTypeError, SecAggValueError
from secagg.messages import Stage

__all__ = ["Endpoint", "Incoming", "MemoryTransport", "Outgoing", "Tamper", "Transport"]


@dataclass(frozen=True)
class Outgoing:
    """One message for one client.

    Attributes:
        client: the protocol client id (1..n).
        data: the message's canonical bytes.
    """

    client: int
    data: bytes


@dataclass(frozen=True)
class Incoming:
    """One message a client sent.

    Attributes:
        client: the client id the transport authenticated it as (the node it came
            from), or ``None`` when the transport cannot tell.
        data: the bytes as received.
    """

    client: int | None
    data: bytes | bytearray | memoryview


class Transport(Protocol):
    """What the round driver needs from a network (see the module docstring)."""

    def exchange(self, stage: Stage, messages: Sequence[Outgoing], deadline: float | None) -> Iterable[Incoming]:
        """Deliver ``messages`` (one per client) for ``stage`` and yield the replies as they
        arrive, until every addressed client answered or ``deadline`` (a value of the
        driver's clock) passed.  A reply may be anything a client sent, including
        garbage, duplicates or a late answer to an earlier stage: the server session
        judges it."""
        ...

    def notify(self, stage: Stage, messages: Sequence[Outgoing]) -> None:
        """Deliver notices that expect no reply (abort notices, sent while ``stage`` is
        open or as it closes).  Best effort."""
        ...


#: A client as the in-memory transport sees it: ``endpoint(stage, data) -> reply or None``.
#: It is called with the stage's message and returns the bytes to send back (None: no reply).
Endpoint = Callable[[Stage, bytes], "bytes | bytearray | memoryview | None"]

#: A test hook over the wire: ``tamper(stage, client, reply) -> what actually arrives``.
#: Called for every client the stage addresses, with its honest reply (None when it sent
#: nothing); returns the messages to deliver, in order (an empty list: the reply is lost).
Tamper = Callable[[Stage, int, "bytes | bytearray | memoryview | None"], Sequence[Incoming]]


class MemoryTransport:
    """In-memory network of :data:`Endpoint` clients, called in ascending id order.

    Args:
        endpoints: client id -> endpoint.
        silent: stage -> client ids that go silent from that stage on (a simulated
            dropout: the client receives nothing more and sends nothing).
        tamper: optional :data:`Tamper` hook rewriting what arrives (adversarial tests).
        drops_on: exception types that, raised by an endpoint, make that client drop out
            (recorded in :attr:`failures`) instead of propagating.  Default: a
            :class:`~secagg.errors.RemoteProtocolError` (an honest client refusing what
            the server sent); a framework whose clients run user code (training) passes
            ``(Exception,)``.
        clock: the clock timing client work (``time.perf_counter``).

    Attributes:
        client_seconds: per stage value, seconds spent inside endpoints.
        failures: client id -> ``"stage: error"`` for endpoints that raised; such a
            client goes silent from then on (which exceptions: ``drops_on``).
    """

    def __init__(
        self,
        endpoints: Mapping[int, Endpoint],
        *,
        silent: Mapping[Stage, Iterable[int]] | None = None,
        tamper: Tamper | None = None,
        drops_on: tuple[type[BaseException], ...] = (RemoteProtocolError,),
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(endpoints, Mapping) or not all(callable(e) for e in endpoints.values()):
            raise SecAggTypeError("endpoints must map a client id to a callable endpoint(stage, data)")
        quiet: dict[Stage, frozenset[int]] = {}
        for stage, ids in (silent or {}).items():
            if not isinstance(stage, Stage):
                raise SecAggTypeError(f"silent must be keyed by Stage, got {stage!r}")
            quiet[stage] = frozenset(ids)
        unknown = sorted(set().union(*quiet.values()) - set(endpoints)) if quiet else []
        if unknown:
            raise SecAggValueError(f"silent names clients {unknown} that have no endpoint")
        self._endpoints = dict(endpoints)
        self._silent = quiet
        self._gone: set[int] = set()
        self._tamper = tamper
        self._drops_on = drops_on
        self._clock = clock
        self.client_seconds: dict[str, float] = {s.value: 0.0 for s in Stage}
        self.failures: dict[int, str] = {}

    def _call(self, stage: Stage, client: int, data: bytes) -> bytes | bytearray | memoryview | None:
        endpoint = self._endpoints.get(client)
        if endpoint is None or client in self._gone:
            return None
        t0 = self._clock()
        try:
            return endpoint(stage, data)
        except self._drops_on as exc:
            self.failures[client] = f"{stage.value}: {type(exc).__name__}: {exc}"
            self._gone.add(client)
            return None
        finally:
            self.client_seconds[stage.value] += self._clock() - t0

    def exchange(self, stage: Stage, messages: Sequence[Outgoing], deadline: float | None) -> Iterator[Incoming]:
        """Call each addressed endpoint in turn and yield its reply (deadlines are moot:
        an in-memory client answers at once or never)."""
        self._gone |= self._silent.get(stage, frozenset())
        for out in sorted(messages, key=lambda m: m.client):
            reply = self._call(stage, out.client, out.data)
            if self._tamper is not None:
                yield from self._tamper(stage, out.client, reply)
            elif reply is not None:
                yield Incoming(out.client, reply)

    def notify(self, stage: Stage, messages: Sequence[Outgoing]) -> None:
        """Hand each notice to its endpoint (replies are discarded)."""
        for out in messages:
            self._call(stage, out.client, out.data)
