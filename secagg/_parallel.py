"""The in-memory round on every core: client endpoints in worker processes, and the
server's mask expansion split over coordinate ranges.

:class:`WorkerPool` forks ``workers`` processes once per round.  Each owns the clients
whose id is congruent to its index modulo ``workers``: their endpoints (built in the
worker by ``factory(cid)``, so the client sessions, their secrets and their inputs live
there) answer the stage messages the driver sends.  Two faces:

* :attr:`WorkerPool.transport`, a :class:`ParallelTransport` (a
  :class:`secagg.transport.Transport`): one stage's messages go to every worker at once;
  replies are yielded to the driver as they arrive, so the server adds one masked input
  while the workers still mask the next ones.  The driver still sees only bytes.
* :attr:`WorkerPool.masker`, a :class:`ParallelMasker` (a
  :class:`secagg.crypto.prg.Masker`): ``add_many`` cuts the vector into ``workers``
  coordinate ranges; each worker expands every mask over its range only (AES-CTR is
  seekable, :func:`secagg.crypto.prg.keystream_at`) into a shared buffer, and the caller
  adds the buffer to its accumulator.  The server session calls it in its unmasking
  stage, when the clients' workers are idle.

Workers are forked (``multiprocessing`` "fork" context: POSIX only), so ``factory`` need
not be picklable.  Each worker pins BLAS and OpenMP pools to one thread
(:func:`pin_blas_threads`): with two busy processes on two cores, OpenBLAS threads made
``clip_l2``/``conditional_round`` five times slower.

The single-process path (:class:`secagg.transport.MemoryTransport`) stays the default;
this module is used only when a caller asks for ``workers > 1``.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from secagg.crypto.prg import Masker, RingArray
from secagg.errors import RemoteProtocolError, SecAggTypeError, SecAggValueError
from secagg.messages import Stage
from secagg.ring import ring_dtype
from secagg.transport import Endpoint, Incoming, Outgoing

__all__ = ["BLAS_THREAD_VARIABLES", "ParallelMasker", "ParallelTransport", "WorkerPool", "pin_blas_threads"]

#: Environment variables that size the thread pools of BLAS/OpenMP libraries.
BLAS_THREAD_VARIABLES: tuple[str, ...] = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_MIN_PARALLEL_BYTES = 1 << 22  # ParallelMasker: below 4 MiB of keystream, expand in the caller
_SLOTS = 2  # shared reply slots per worker (a worker masks the next input while the driver adds one)
_SLOT_MIN_BYTES = 1 << 20  # replies from 1 MiB up go through a slot, smaller ones through the pipe


def pin_blas_threads() -> None:
    """Limit BLAS/OpenMP thread pools of this process to one thread: set
    :data:`BLAS_THREAD_VARIABLES` (libraries loaded later, child processes) and, when
    ``threadpoolctl`` is installed, resize the pools of libraries already loaded (numpy's
    OpenBLAS is loaded before a fork)."""
    for var in BLAS_THREAD_VARIABLES:
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - threadpoolctl is optional
        return
    threadpool_limits(1)


def _check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise SecAggTypeError(f"workers must be an int, got {type(workers).__name__}")
    if workers < 1:
        raise SecAggValueError(f"workers must be >= 1, got {workers}")
    return workers


# ----------------------------------------------------------------------------- the worker side


def _worker_main(  # noqa: PLR0917 - a Process target takes positional arguments
    index: int,
    conn: Connection,
    factory: Callable[[int], Endpoint],
    shared: mmap.mmap,
    slots: mmap.mmap,
    slot_bytes: int,
    d: int,
    bits: int,
    drops_on: tuple[type[BaseException], ...],
) -> None:
    """A worker's loop: stage messages for its clients, mask ranges, stop."""
    pin_blas_threads()
    endpoints: dict[int, Endpoint] = {}
    gone: set[int] = set()
    masker: Masker | None = None
    words = np.frombuffer(shared, dtype=ring_dtype(bits), count=d) if d else None
    slot_mv = memoryview(slots)
    free = list(range(_SLOTS))

    def put(cid: int, reply: bytes | bytearray | memoryview) -> None:
        """Hand a reply to the driver: large ones through a free shared slot (one copy,
        read in place by the driver), small ones through the pipe."""
        size = memoryview(reply).nbytes
        if size < _SLOT_MIN_BYTES or size > slot_bytes:
            conn.send(("reply", cid))
            conn.send_bytes(reply)
            return
        while not free:  # wait until the driver is done with one
            msg = conn.recv()
            assert msg[0] == "free"
            free.append(int(msg[1]))
        slot = free.pop()
        slot_mv[slot * slot_bytes : slot * slot_bytes + size] = memoryview(reply).cast("B")
        conn.send(("slot", cid, slot, size))

    while True:
        cmd = conn.recv()
        op = cmd[0]
        if op == "free":
            free.append(int(cmd[1]))
            continue
        if op == "stop":
            slot_mv.release()
            conn.close()
            return
        c0 = time.process_time()
        if op == "mask":
            _, start, stop, masks = cmd
            assert words is not None
            if masker is None:
                masker = Masker(d, bits)
            part = words[start:stop]
            part.fill(0)
            masker.add_many(part, masks, start=start)
            conn.send(("done", time.process_time() - c0))
            continue
        _, stage, items, want_reply = cmd
        for cid, data in items:
            if cid in gone:
                continue
            endpoint = endpoints.get(cid)
            if endpoint is None:
                endpoint = endpoints[cid] = factory(cid)
            try:
                reply = endpoint(stage, data)
            except drops_on as exc:
                gone.add(cid)
                conn.send(("failed", cid, f"{stage.value}: {type(exc).__name__}: {exc}"))
                continue
            if want_reply and reply is not None:
                put(cid, reply)
        conn.send(("done", time.process_time() - c0))


# ----------------------------------------------------------------------------- the driver side


class WorkerPool:
    """``workers`` forked processes serving one round (see the module docstring).

    Use as a context manager (or call :meth:`close`): the workers are stopped and joined
    on exit.

    Args:
        factory: ``cid -> endpoint``, called in the worker that owns client ``cid`` the
            first time a message reaches it.
        ids: the client ids (worker ``i`` owns those with ``position % workers == i`` in
            sorted order).
        workers: number of worker processes (>= 1).
        d: vector length of :attr:`masker` (0: no parallel masker).
        bits: ring bit width of :attr:`masker`.
        silent: as for :class:`~secagg.transport.MemoryTransport`.
        drops_on: as for :class:`~secagg.transport.MemoryTransport`.

    Attributes:
        transport: the :class:`ParallelTransport`.
        masker: the :class:`ParallelMasker` (None when ``d == 0``).
        worker_cpu: per worker, CPU seconds spent on commands (stages and mask ranges).
    """

    def __init__(
        self,
        factory: Callable[[int], Endpoint],
        ids: Iterable[int],
        *,
        workers: int,
        d: int = 0,
        bits: int = 32,
        silent: Mapping[Stage, Iterable[int]] | None = None,
        drops_on: tuple[type[BaseException], ...] = (RemoteProtocolError,),
    ) -> None:
        if not callable(factory):
            raise SecAggTypeError("factory must be a callable cid -> endpoint")
        self.workers = _check_workers(workers)
        order = sorted(int(c) for c in ids)
        self._owner = {cid: i % self.workers for i, cid in enumerate(order)}
        item = np.dtype(ring_dtype(bits)).itemsize
        self._shared = mmap.mmap(-1, max(1, d * item))  # anonymous MAP_SHARED: inherited by fork
        # Reply slots: a masked input (d words and its header) is written once by the worker
        # and read in place by the driver, instead of crossing a pipe twice.
        self._slot_bytes = d * item + 4096 if d * item >= _SLOT_MIN_BYTES else 0
        self._slots = [mmap.mmap(-1, max(1, _SLOTS * self._slot_bytes)) for _ in range(self.workers)]
        ctx = multiprocessing.get_context("fork")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self.worker_cpu = [0.0] * self.workers
        try:
            for w in range(self.workers):
                here, there = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(w, there, factory, self._shared, self._slots[w], self._slot_bytes, d, bits, drops_on),
                    name=f"secagg-worker-{w}",
                    daemon=True,
                )
                proc.start()
                there.close()
                self._conns.append(here)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise
        self.transport = ParallelTransport(self, silent=silent)
        self.masker: ParallelMasker | None = ParallelMasker(self, d, bits) if d else None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop and join the workers (idempotent)."""
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():  # pragma: no cover - a worker stuck in user code
                proc.terminate()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
        for buf in (self._shared, *self._slots):
            with contextlib.suppress(BufferError):  # a caller still holds a view: left to the GC
                buf.close()

    # -- used by the transport and the masker

    def _release(self, worker: int, msg: tuple[Any, ...]) -> None:
        """Give a reply slot back to its worker (after the driver consumed the reply)."""
        if msg[0] == "slot":
            self._conns[worker].send(("free", int(msg[2])))

    def _owner_of(self, cid: int) -> int | None:
        return self._owner.get(cid)

    def _send(self, worker: int, cmd: tuple[Any, ...]) -> None:
        self._conns[worker].send(cmd)

    def _events(self, busy: set[int]) -> Iterator[tuple[int, tuple[Any, ...], bytes | memoryview | None]]:
        """Messages from the ``busy`` workers until each has sent ``done``:
        ``(worker, message, payload or None)``; ``done`` messages update
        :attr:`worker_cpu` and are yielded too.  A ``slot`` payload is a view of the
        worker's shared slot, valid until :meth:`_release` gives the slot back."""
        index = {id(self._conns[w]): w for w in busy}
        left = set(busy)
        while left:
            for conn in wait([self._conns[w] for w in left]):
                w = index[id(conn)]
                try:
                    msg = cast(Connection, conn).recv()
                except EOFError as exc:
                    raise RemoteProtocolError(f"worker {w} exited during a stage") from exc
                payload: bytes | memoryview | None = None
                if msg[0] == "reply":
                    payload = cast(Connection, conn).recv_bytes()
                elif msg[0] == "slot":
                    at = int(msg[2]) * self._slot_bytes
                    payload = memoryview(self._slots[w])[at : at + int(msg[3])]
                if msg[0] == "done":
                    self.worker_cpu[w] += float(msg[1])
                    left.discard(w)
                yield w, msg, payload


class ParallelTransport:
    """A :class:`secagg.transport.Transport` over a :class:`WorkerPool`'s clients.

    Replies arrive in the order the workers produce them (not by id).  A reply of 1 MiB
    or more (a masked input) is a read-only view of the worker's shared reply slot, valid
    until the driver asks for the next reply (the server session adds a masked input into
    its running sum and keeps no reference to it).  Client failures
    (``drops_on``) are recorded in :attr:`failures` and the client goes silent, as with
    :class:`~secagg.transport.MemoryTransport`.

    Attributes:
        client_seconds: per stage value, CPU seconds the workers spent in that stage.
        failures: client id -> ``"stage: error"``.
    """

    def __init__(self, pool: WorkerPool, *, silent: Mapping[Stage, Iterable[int]] | None = None) -> None:
        quiet: dict[Stage, frozenset[int]] = {}
        for stage, ids in (silent or {}).items():
            if not isinstance(stage, Stage):
                raise SecAggTypeError(f"silent must be keyed by Stage, got {stage!r}")
            quiet[stage] = frozenset(ids)
        self._pool = pool
        self._silent = quiet
        self._gone: set[int] = set()
        self.client_seconds: dict[str, float] = {s.value: 0.0 for s in Stage}
        self.failures: dict[int, str] = {}

    def _dispatch(self, stage: Stage, messages: Sequence[Outgoing], want_reply: bool) -> set[int]:
        self._gone |= self._silent.get(stage, frozenset())
        groups: dict[int, list[tuple[int, bytes]]] = {}
        for out in sorted(messages, key=lambda m: m.client):
            owner = self._pool._owner_of(out.client)
            if owner is None or out.client in self._gone:
                continue
            groups.setdefault(owner, []).append((out.client, out.data))
        for w, items in groups.items():
            self._pool._send(w, ("stage", stage, items, want_reply))
        return set(groups)

    def _collect(self, stage: Stage, busy: set[int]) -> Iterator[Incoming]:
        events = self._pool._events(busy)
        held: tuple[int, tuple[Any, ...]] | None = None
        try:
            for w, msg, payload in events:
                if msg[0] in ("reply", "slot"):
                    assert payload is not None
                    held = (w, msg)
                    yield Incoming(int(msg[1]), payload)
                    held = None
                    self._pool._release(w, msg)  # the driver has handed it to the server
                elif msg[0] == "failed":
                    self.failures[int(msg[1])] = str(msg[2])
                    self._gone.add(int(msg[1]))
                else:
                    self.client_seconds[stage.value] += float(msg[1])
        finally:
            if held is not None:
                self._pool._release(*held)
            for w, msg, _ in events:  # the caller stopped early: drain this stage's replies
                self._pool._release(w, msg)
                if msg[0] == "failed":
                    self.failures[int(msg[1])] = str(msg[2])
                    self._gone.add(int(msg[1]))

    def exchange(self, stage: Stage, messages: Sequence[Outgoing], deadline: float | None) -> Iterator[Incoming]:
        """Send the stage's messages to every worker at once and yield replies as they
        arrive (deadlines are moot in memory: a client answers or goes silent)."""
        busy = self._dispatch(stage, messages, True)
        yield from self._collect(stage, busy)

    def notify(self, stage: Stage, messages: Sequence[Outgoing]) -> None:
        """Deliver notices (replies discarded) and wait until the workers handled them."""
        busy = self._dispatch(stage, messages, False)
        for _ in self._collect(stage, busy):
            pass


class ParallelMasker(Masker):
    """A :class:`~secagg.crypto.prg.Masker` whose :meth:`add_many` expands the masks over
    the :class:`WorkerPool`'s processes, one coordinate range each (same result, bit for
    bit).  Small jobs (under 4 MiB of keystream) and pieces (``start=``) run in the caller.
    Must not be called while the pool's workers run a stage."""

    __slots__ = ("_pool", "_words")

    def __init__(self, pool: WorkerPool, d: int, bits: int) -> None:
        super().__init__(d, bits)
        self._pool = pool
        self._words: RingArray = cast(RingArray, np.frombuffer(pool._shared, dtype=self.dtype, count=self.d))

    def add_many(self, acc: npt.NDArray[Any], masks: Iterable[tuple[bytes, int]], *, start: int | None = None) -> None:
        """As :meth:`Masker.add_many`; whole-vector calls are split across the workers."""
        checked = self._check_masks(masks)
        workers = self._pool.workers
        if start is not None or workers == 1 or len(checked) * self.d * self._item < _MIN_PARALLEL_BYTES:
            super().add_many(acc, checked, start=start)
            return
        a = self._check_acc(acc)
        # Range edges on 16-byte boundaries: every worker starts on a fresh AES block.
        align = max(1, 16 // self._item)
        edges = [min(self.d, (self.d * w // workers) // align * align) for w in range(workers)] + [self.d]
        busy = set()
        for w in range(workers):
            if edges[w + 1] > edges[w]:
                self._pool._send(w, ("mask", edges[w], edges[w + 1], checked))
                busy.add(w)
        for _ in self._pool._events(busy):
            pass
        np.add(a, self._words, out=a)
        if self._mask is not None:
            np.bitwise_and(a, self._mask, out=a)
