"""The Flower edge of a secure round: :class:`FlowerTransport` and :class:`CountingGrid`.

:class:`FlowerTransport` is a :class:`secagg.transport.Transport` over a ServerApp's
:class:`~flwr.serverapp.Grid`: it pushes one Flower Message (type ``"train.secagg"``)
per client, polls the SuperLink for the replies until everyone answered or the
deadline passed, and yields each reply's payload as it arrives.  It maps protocol ids
(1..n) to Flower node ids and back, reports error replies as silence (recorded in
:attr:`FlowerTransport.errors`), and pushes notices (abort) without waiting for answers.
It knows nothing of what stages mean: the one stage loop is :func:`secagg.driver.drive_round`,
and whatever else a stage's message must carry (the global arrays the clients train from)
comes from the ``extra`` hook its caller passes.

This module reads a clock and sleeps between polls; nothing else in the integration does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.serverapp import Grid

from secagg._validate import check_int, check_number
from secagg.errors import MessageError, SecAggTypeError, SecAggValueError
from secagg.flower._codec import (
    CONTROL_KEY,
    MESSAGE_TYPE,
    NOTICE,
    PAYLOAD_KEY,
    REQUEST,
    SECAGG_ERROR_CODE,
    pack_payload,
    unpack_payload,
)
from secagg.messages import Stage
from secagg.transport import Incoming, Outgoing

__all__ = ["CountingGrid", "ExtraContent", "FlowerTransport"]

log = logging.getLogger("secagg.flower")

#: ``extra(stage, client) -> {record key: record}``: records to add to a client's request
#: of that stage (e.g. the global arrays with the masked-input request); ``{}`` for none.
ExtraContent = Callable[[Stage, int], Mapping[str, Any]]


class FlowerTransport:
    """One round's :class:`~secagg.transport.Transport` over a Flower grid.

    Args:
        grid: the ServerApp's :class:`flwr.serverapp.Grid`.
        nodes: the Flower node ids of the round; protocol id ``i + 1`` is ``nodes[i]``; or
            (active mode) a mapping protocol id (= alliance member id) -> node id, where a
            member without a node is never sent anything (it is silent from the start).
        round_id: the protocol round id (every control record names it, so a node finds
            its session).
        group: the Flower ``group_id`` of the round's messages.
        ttl: Flower time-to-live of each message, in seconds.
        poll_interval: seconds between polls of the SuperLink.
        extra: optional :data:`ExtraContent` hook.
        clock: the deadline clock (the driver's; ``time.monotonic``).
        sleep: how to wait between polls (``time.sleep``).

    Attributes:
        errors: node id -> why its last reply was missing or unusable (error reply,
            malformed record, no reply before the deadline); the node counts as silent.
        stage_errors: per stage value, node id -> reason, for the replies of that stage.
        refused: node id -> the reason a node gave for refusing the round (an error reply
            with :data:`~secagg.flower._codec.SECAGG_ERROR_CODE`: its policy, its budget, a
            spec or model it will not accept, a replay); such a node is silent too.
    """

    def __init__(
        self,
        grid: Any,
        nodes: Sequence[int] | Mapping[int, int],
        *,
        round_id: bytes,
        group: str,
        ttl: float,
        poll_interval: float,
        extra: ExtraContent | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not all(callable(getattr(grid, m, None)) for m in ("push_messages", "pull_messages")):
            raise SecAggTypeError("grid must be a flwr Grid (push_messages / pull_messages)")
        pairs = (
            [(check_int("protocol id", c, 1), n) for c, n in nodes.items()]
            if isinstance(nodes, Mapping) else [(i + 1, n) for i, n in enumerate(nodes)]
        )  # fmt: skip
        ids = [check_int("node id", n) for _, n in pairs]
        if len(set(ids)) != len(ids):
            raise SecAggValueError("node ids must be distinct")
        if not isinstance(round_id, bytes) or not round_id:
            raise SecAggTypeError("round_id must be non-empty bytes")
        if extra is not None and not callable(extra):
            raise SecAggTypeError("extra must be callable(stage, client) -> mapping of records")
        self._grid = grid
        self._node_of = {c: nid for (c, _), nid in sorted(zip(pairs, ids, strict=True))}
        self._rid = round_id.hex()
        self._group = str(group)
        self._ttl = check_number("ttl", ttl, lo=0.0, lo_open=True)
        self._poll = check_number("poll_interval", poll_interval, lo=0.0, lo_open=True)
        self._extra = extra
        self._clock = clock
        self._sleep = sleep
        self.errors: dict[int, str] = {}
        self.stage_errors: dict[str, dict[int, str]] = {s.value: {} for s in Stage}
        self.refused: dict[int, str] = {}

    # -- ids ---------------------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[int, ...]:
        """Node ids in protocol-id order."""
        return tuple(self._node_of.values())

    def node_of(self, client: int) -> int:
        """The Flower node id of protocol id ``client``."""
        return self._node_of[client]

    def nodes_of(self, clients: Iterable[int]) -> tuple[int, ...]:
        """Node ids of protocol ids, in the given order (a member without a node has none
        and is left out)."""
        return tuple(self._node_of[c] for c in clients if c in self._node_of)

    def has_node(self, client: int) -> bool:
        """Whether protocol id ``client`` has a node this round."""
        return client in self._node_of

    # -- Transport ---------------------------------------------------------------------------

    def _messages(self, stage: Stage, kind: str, messages: Sequence[Outgoing]) -> list[tuple[int, FlowerMessage]]:
        packed: dict[int, Any] = {}  # one payload record per distinct bytes object (a broadcast)
        out: list[tuple[int, FlowerMessage]] = []
        for o in messages:
            if o.client not in self._node_of:  # an absent member: silent from the start
                continue
            rec = packed.get(id(o.data))
            if rec is None:
                rec = packed[id(o.data)] = pack_payload(o.data)
            ctl = ConfigRecord({"kind": kind, "stage": stage.value, "round": self._rid, "cid": o.client})
            content: dict[str, Any] = {CONTROL_KEY: ctl, PAYLOAD_KEY: rec}
            if kind == REQUEST and self._extra is not None:
                more = dict(self._extra(stage, o.client))
                clash = sorted(set(more) & set(content))
                if clash:
                    raise SecAggValueError(f"extra records {clash} would replace the secagg records")
                content.update(more)
            msg = FlowerMessage(RecordDict(content), self._node_of[o.client], MESSAGE_TYPE, ttl=self._ttl,
                                group_id=self._group)  # fmt: skip
            out.append((o.client, msg))
        return out

    def exchange(self, stage: Stage, messages: Sequence[Outgoing], deadline: float | None) -> Iterator[Incoming]:
        """Push one request per client, then poll and yield each reply's payload as it
        arrives, until every client answered or ``deadline`` passed.  An error reply (the
        node refused or failed the stage) yields nothing: the node is silent.  A reply
        whose records are malformed yields empty bytes (the server session excludes its
        sender)."""
        errs = self.stage_errors[stage.value]
        out = self._messages(stage, REQUEST, messages)
        if not out:
            return
        ids = list(self._grid.push_messages([m for _, m in out]))
        pending: dict[str, int] = {}
        for (cid, _), mid in zip(out, ids, strict=True):
            if mid:
                pending[str(mid)] = cid
            else:
                self._error(errs, cid, "the SuperLink refused the message")
        while pending:
            for reply in self._grid.pull_messages(list(pending)):
                cid_or_none = pending.pop(str(reply.metadata.reply_to_message_id), None)
                if cid_or_none is None:
                    continue
                got = self._payload(reply, stage, cid_or_none, errs)
                if got is not None:
                    yield Incoming(cid_or_none, got)
            if not pending or (deadline is not None and self._clock() >= deadline):
                break
            self._sleep(self._poll)
        for cid in pending.values():
            self._error(errs, cid, "no reply before the stage deadline")

    def _payload(self, reply: FlowerMessage, stage: Stage, cid: int, errs: dict[int, str]) -> bytes | None:
        if reply.has_error():
            if int(reply.error.code) == SECAGG_ERROR_CODE:
                why = str(reply.error.reason)
                self.refused[self._node_of[cid]] = why[len("secagg: "):] if why.startswith("secagg: ") else why
                self._error(errs, cid, f"refused: {reply.error.reason}")
            else:
                self._error(errs, cid, f"error reply: {reply.error.reason}")
            return None
        if int(reply.metadata.src_node_id) != self._node_of[cid]:
            self._error(errs, cid, "a reply came from another node")
            return None
        try:
            ctl = reply.content.config_records[CONTROL_KEY]
            if ctl.get("stage") != stage.value or ctl.get("round") != self._rid:
                raise MessageError("the reply names another stage or round")
            return unpack_payload(reply.content.array_records[PAYLOAD_KEY])
        except (KeyError, MessageError) as exc:
            self._error(errs, cid, f"malformed reply: {exc}")
            return b""

    def _error(self, errs: dict[int, str], cid: int, reason: str) -> None:
        node = self._node_of[cid]
        errs[node] = self.errors[node] = reason

    def notify(self, stage: Stage, messages: Sequence[Outgoing]) -> None:
        """Push notices nobody waits for (abort notices); a failure to push is only logged."""
        out = self._messages(stage, NOTICE, messages)
        if not out:
            return
        try:
            self._grid.push_messages([m for _, m in out])
        except Exception as exc:  # best effort: the round is over for these nodes either way
            log.warning("could not push %d secagg notice(s): %s", len(out), exc)


# ----------------------------------------------------------------------------- traffic counting


def _wire_size(msg: Any) -> int:
    """Bytes of a Flower message as stored and shipped by Flower (its deflated objects)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


class CountingGrid(Grid):
    """A :class:`flwr.serverapp.Grid` wrapper counting the bytes of the Flower messages
    pushed and pulled per destination/source node (deflated objects, as Flower ships
    them; HTTP framing excluded).  Use it to compare workflows on equal terms.

    Args:
        grid: the ServerApp's grid.
        poll_interval: seconds between pulls in :meth:`send_and_receive` (Flower's own
            grid waits 3 s between pulls, which a plain message exchange pays in full; a
            strategy's clear evaluation messages go through it).

    Attributes:
        sent: node id -> bytes of messages pushed to it.
        received: node id -> bytes of replies pulled from it.
    """

    def __init__(self, grid: Grid, *, poll_interval: float = 3.0) -> None:
        self._grid = grid
        self.poll_interval = check_number("poll_interval", poll_interval, lo=0.0, lo_open=True)
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}

    @property
    def run(self) -> Any:
        """The wrapped grid's run."""
        return self._grid.run

    def set_run(self, run: Any) -> None:
        """Forward to the wrapped grid."""
        self._grid.set_run(run)

    def create_message(
        self, content: Any, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> FlowerMessage:
        """A new message (Flower's ``Message`` constructor)."""
        return FlowerMessage(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Forward to the wrapped grid."""
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[FlowerMessage]) -> Iterable[str]:
        """Count, then forward."""
        msgs = list(messages)
        for m in msgs:
            nid = int(m.metadata.dst_node_id)
            self.sent[nid] = self.sent.get(nid, 0) + _wire_size(m)
        return self._grid.push_messages(msgs)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[FlowerMessage]:
        """Forward, then count."""
        got = list(self._grid.pull_messages(message_ids))
        for m in got:
            nid = int(m.metadata.src_node_id)
            self.received[nid] = self.received.get(nid, 0) + _wire_size(m)
        return got

    def send_and_receive(
        self, messages: Iterable[FlowerMessage], *, timeout: float | None = None
    ) -> Iterable[FlowerMessage]:
        """Flower's loop (push, then pull every ``poll_interval`` s until all replied or
        ``timeout``), counted."""
        ids = {i for i in self.push_messages(messages) if i}
        end = None if timeout is None else time.monotonic() + timeout
        out: list[FlowerMessage] = []
        while ids and (end is None or time.monotonic() < end):
            got = list(self.pull_messages(ids))
            out.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if ids:
                time.sleep(self.poll_interval)
        return out
