"""Simulate one SecAgg+ round: real client and server sessions over an in-memory network.

:func:`simulate_round` is the edge of the protocol layer: it builds the
:class:`~secagg.messages.RoundConfig`, runs one :class:`~secagg.client.ClientSession`
per client and one :class:`~secagg.server.ServerSession`, and carries every message as
bytes (encode, count, decode) so ``bytes_up``/``bytes_down`` are the real wire sizes.
It is also the only place that reads a clock (``time.perf_counter``, for ``timings``).

By default the round runs in **active mode** (signed identities generated for the
simulation, the consistency round, verified shares); ``active=False`` runs the
semi-honest protocol (an explicit opt-in, recorded in :attr:`RoundResult.active`).

Memory: masked inputs are streamed into the server one at a time and inputs given as a
callable are produced one at a time, so a round at n = 1000, d = 10^6 holds O(d) values
(plus one client's vector), never n * d.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from secagg import graph as _graph
from secagg.client import ClientSession, check_config, check_input
from secagg.crypto.prg import Masker
from secagg.driver import STAGES, drive_round
from secagg.errors import SecAggTypeError, SecAggValueError
from secagg.identity import Alliance, Evidence, IdentityKey, generate_alliance
from secagg.messages import RoundConfig, ShareDelivery, Stage, decode_message
from secagg.rand import RandomSource, RngLike, as_random_source
from secagg.ring import check_bits
from secagg.spec import ArraySpec, RoundSpec, make_config
from secagg.transport import MemoryTransport

__all__ = ["STAGES", "RoundResult", "make_config", "run_simulation", "simulate_round"]


InputsLike = npt.ArrayLike | Sequence[npt.ArrayLike] | Callable[[int], npt.ArrayLike]


@dataclass(frozen=True, eq=False)
class RoundResult:
    """What a simulated round produced.  Client *indices* are 0-based (client id - 1).

    Attributes:
        aggregate: uint64 array (d,): the sum of the inputs of ``survivors`` mod 2^bits.
        survivors: sorted indices whose masked input arrived (and is in the sum).
        dropped: per stage, indices the server saw go silent (or excluded) in that stage.
        recovered: indices whose mask key was reconstructed (dropped after sharing keys).
        bytes_up: per stage, bytes sent by clients (real encodings).
        bytes_down: per stage, bytes sent by the server to request that stage's message
            (the config for ``advertise_keys``, the roster, the deliveries, the requests).
        timings: per stage, ``{"client": s, "server": s}`` seconds (client time summed
            over clients), plus ``"total"``.
        k: neighbours per client (n - 1 for the complete graph).
        t: Shamir threshold.
        colluders: c, clients assumed to collude with the server.
        min_clients: cohort floor.
        complete: whether the complete graph (classic SecAgg) was used.
        graph: index -> neighbour indices, over the clients whose keys arrived.
        config: the :class:`~secagg.messages.RoundConfig` of the round.
        params: the :class:`~secagg.graph.GraphParameters` the parameters came from.
        excluded: index -> one-line reason, for clients the server excluded for
            misbehaviour (their input is not in the sum; dropouts are in ``dropped``).
        active: whether the round ran in active mode (False: semi-honest, opted in).
        evidence: index -> :class:`~secagg.identity.Evidence` of each exclusion.
    """

    aggregate: npt.NDArray[np.uint64]
    survivors: list[int]
    dropped: dict[str, list[int]]
    recovered: list[int]
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    timings: dict[str, dict[str, float]]
    k: int
    t: int
    colluders: int
    min_clients: int
    complete: bool
    graph: dict[int, frozenset[int]] = field(repr=False)
    config: RoundConfig = field(repr=False)
    params: _graph.GraphParameters | None = field(repr=False, default=None)
    excluded: dict[int, str] = field(default_factory=dict)
    active: bool = False
    evidence: dict[int, Evidence] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        """Number of clients."""
        return self.config.n

    @property
    def d(self) -> int:
        """Vector length."""
        return self.config.d

    @property
    def bits(self) -> int:
        """Ring bit width."""
        return self.config.bits


# ----------------------------------------------------------------------------- argument checks


def _int(name: str, v: object, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise SecAggTypeError(f"{name} must be an int, got {type(v).__name__}")
    iv = int(v)
    if iv < lo or (hi is not None and iv > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise SecAggValueError(f"{name} must be {rng}, got {iv}")
    return iv


def _inputs(inputs: object, n: int | None, d: int | None) -> tuple[int, int, Callable[[int], object]]:
    """Normalise ``inputs`` to (n, d, i -> vector)."""
    if callable(inputs) and not isinstance(inputs, np.ndarray):
        if n is None or d is None:
            raise SecAggValueError("a callable inputs needs the n= and d= keywords (number of clients, vector length)")
        fn: Callable[[int], object] = inputs
        return n, d, fn
    if isinstance(inputs, np.ndarray):
        if inputs.ndim != 2:
            raise SecAggValueError(f"an inputs array must have shape (n, d), got {inputs.shape}")
        if inputs.dtype == np.bool_ or not np.issubdtype(inputs.dtype, np.integer):
            raise SecAggTypeError(f"inputs must be integers, got dtype {inputs.dtype}; encode floats first")
        rn, rd = inputs.shape
        get: Callable[[int], object] = inputs.__getitem__
    elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        shapes = {np.shape(r) for r in inputs}
        if len(shapes) > 1 or any(len(s) != 1 for s in shapes):
            raise SecAggValueError(f"a sequence of inputs must hold 1-D arrays of one length, got shapes {shapes}")
        rn, rd = len(inputs), (next(iter(shapes))[0] if shapes else 0)
        get = inputs.__getitem__
    else:
        raise SecAggTypeError(
            "inputs must be an (n, d) integer array, a sequence of 1-D arrays or a callable; "
            f"got {type(inputs).__name__}"
        )
    if n is not None and n != rn:
        raise SecAggValueError(f"n={n} does not match the {rn} inputs given")
    if d is not None and d != rd:
        raise SecAggValueError(f"d={d} does not match the input length {rd}")
    return rn, rd, get


def _dropouts(dropouts: object, n: int) -> dict[str, frozenset[int]]:
    """Per stage, the *ids* (index + 1) silent at that stage (earliest stage wins)."""
    out: dict[str, frozenset[int]] = {s: frozenset() for s in STAGES}
    if dropouts is None:
        return out
    if not isinstance(dropouts, Mapping):
        raise SecAggTypeError(f"dropouts must be a mapping stage -> client indices, got {type(dropouts).__name__}")
    seen: set[int] = set()
    for stage in STAGES:
        raw = dropouts.get(stage, ())
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
            raise SecAggTypeError(f"dropouts[{stage!r}] must be an iterable of client indices")
        ids = {_int(f"dropouts[{stage!r}] entry", i, 0, n - 1) + 1 for i in raw}
        out[stage] = frozenset(ids - seen)
        seen |= ids
    unknown = sorted(str(k) for k in dropouts if k not in STAGES)
    if unknown:
        raise SecAggValueError(f"unknown dropout stage(s) {unknown}; use {list(STAGES)}")
    return out


def simulate_round(  # noqa: PLR0917 - the contract's positional names
    inputs: InputsLike,
    bits: int = 32,
    threshold: int | None = None,
    neighbors: int | str | None = None,
    dropouts: Mapping[str, Iterable[int]] | None = None,
    seed: int | bytes | None = None,
    *,
    n: int | None = None,
    d: int | None = None,
    colluders: int | None = None,
    min_clients: int | None = None,
    dropout_fraction: float = 0.1,
    corrupt_fraction: float = 0.0,
    require_connected: bool = True,
    rng: RngLike = None,
    workers: int = 1,
    active: bool = True,
) -> RoundResult:
    """Run one secure-aggregation round through real sessions and an in-memory network.

    Args:
        inputs: an integer array (n, d) with values in [0, 2^bits), a sequence of n 1-D
            arrays, or a callable ``i -> array`` (with ``n=`` and ``d=``) called once per
            client at the masked-input stage (so n * d values never coexist).
        bits: ring bit width b in [2, 64]; the sum is mod 2^b.
        threshold: Shamir threshold t; None = the safe default for the graph.
        neighbors: None = SecAgg+ with k from the threat model; an int k; ``"all"`` =
            complete graph (classic SecAgg).
        dropouts: stage name (``"advertise_keys"``, ``"share_keys"``, ``"masked_input"``,
            ``"unmasking"``) -> client indices (0-based) silent before sending that
            stage's message.
        seed: None = fresh OS randomness; an int or bytes replays the exact transcript.
        n: number of clients (required with a callable ``inputs``).
        d: vector length (required with a callable ``inputs``).
        colluders: c, clients colluding with the server (default from the threat model).
        min_clients: cohort floor (default c + 2).
        dropout_fraction: tolerated dropout fraction for the automatic k (``neighbors=None``).
        corrupt_fraction: tolerated corrupt fraction for the automatic k.
        require_connected: abort when the survivors' graph is disconnected (default).
        rng: alternative to ``seed``: any :data:`secagg.rand.RngLike`.
        active: True (default): active mode, with an Ed25519 identity generated for each
            simulated client and their alliance; False: the semi-honest protocol.
        workers: 1 (default) runs everything in this process; ``w > 1`` forks ``w``
            worker processes (POSIX) that run the clients of each stage in parallel and
            expand the server's unmasking masks over coordinate ranges
            (:mod:`secagg._parallel`); client ``timings`` are then the workers' CPU seconds.

    Returns:
        A :class:`RoundResult`.

    Raises:
        ProtocolAbort: the round cannot complete safely (too few survivors, a piece of
            the survivors' graph below ``min_clients``, unrecoverable secrets).
        SecAggValueError, SecAggTypeError: bad arguments.
        UnsafeParametersError: unsafe threshold or cohort floor.
    """
    workers = _int("workers", workers, 1)
    if n is not None:
        n = _int("n", n, 1)
    if d is not None:
        d = _int("d", d, 1)
    bits = check_bits(bits)
    if bits < 2:
        raise SecAggValueError(f"bits must be in [2, 64], got {bits}")
    n_, d_, get = _inputs(inputs, n, d)
    if n_ < 3:
        raise SecAggValueError(f"a round needs at least 3 clients, got {n_}")
    if d_ < 1:
        raise SecAggValueError("inputs must have at least one coordinate")
    if isinstance(inputs, np.ndarray) and inputs.size:
        lo, hi = int(inputs.min()), int(inputs.max())
        if lo < 0 or hi >= 1 << bits:
            raise SecAggValueError(f"inputs must lie in [0, 2**{bits}); found values in [{lo}, {hi}]")
    elif not callable(inputs):  # a sequence: validate every row before anything runs
        for i in range(n_):
            check_input(get(i), d_, bits, copy=False)
    if seed is not None and rng is not None:
        raise SecAggValueError("pass seed= or rng=, not both")
    master: RandomSource = as_random_source(seed if seed is not None else rng)
    drop = _dropouts(dropouts, n_)
    cfg, params = make_config(
        n_,
        d_,
        bits,
        threshold=threshold,
        neighbors=neighbors,
        colluders=colluders,
        min_clients=min_clients,
        dropout_fraction=dropout_fraction,
        corrupt_fraction=corrupt_fraction,
        require_connected=require_connected,
        rng=master,
        active=active,
    )
    return _drive(cfg, params, get, drop, master, workers=workers)


def run_simulation(
    config: RoundConfig,
    inputs: InputsLike,
    dropouts: Mapping[str, Iterable[int]] | None = None,
    rng: RngLike = None,
) -> RoundResult:
    """Drive one round with a ready-made :class:`~secagg.messages.RoundConfig` (for
    example one received from a server, or hand-made for tests); an active config gets
    generated identities.

    ``inputs`` and ``dropouts`` are as in :func:`simulate_round` (a callable is called
    as ``inputs(i)`` for the 0-based index i); ``rng`` seeds every client.

    Raises:
        UnsafeParametersError: the config is unsafe for an honest client.
        ProtocolAbort: as in :func:`simulate_round`.
    """
    check_config(config)
    _, d_, get = _inputs(inputs, config.n, config.d)
    if d_ != config.d:
        raise SecAggValueError(f"inputs have length {d_}, the config says d={config.d}")
    return _drive(config, None, get, _dropouts(dropouts, config.n), as_random_source(rng))


class _SimClient:
    """One simulated client as an in-memory :data:`~secagg.transport.Endpoint`: a real
    :class:`~secagg.client.ClientSession` fed the bytes that reach it.  The first message
    is the round's :class:`~secagg.spec.RoundSpec` (or a bare RoundConfig)."""

    def __init__(  # noqa: PLR0917 - internal
        self,
        cid: int,
        seed: bytes,
        get: Callable[[int], object],
        masker: Masker,
        spent: list[float],
        identity: IdentityKey | None = None,
        alliance: Alliance | None = None,
    ) -> None:
        self._cid, self._seed, self._get, self._masker = cid, seed, get, masker
        self._identity, self._alliance = identity, alliance
        self._session: ClientSession | None = None
        self._spent = spent  # seconds spent producing inputs (not protocol time)

    def __call__(self, stage: Stage, data: bytes) -> bytes | None:
        if self._session is None:
            if data[:1] == b"{":
                spec = RoundSpec.from_bytes(data)
                cfg: object = spec.protocol
                fingerprint, digest = spec.fingerprint, spec.model_digest
            else:
                cfg = decode_message(data, RoundConfig)
                fingerprint, digest = hashlib.sha256(data).hexdigest(), None
            assert isinstance(cfg, RoundConfig)
            if cfg.active:
                self._session = ClientSession(
                    cfg,
                    self._cid,
                    self._seed,
                    masker=self._masker,
                    identity=self._identity,
                    alliance=self._alliance,
                    spec_fingerprint=fingerprint,
                    model_digest=digest,
                )
            else:
                self._session = ClientSession(cfg, self._cid, self._seed, masker=self._masker)
            return self._session.start().encode()
        msg = decode_message(data)
        vec = None
        if isinstance(msg, ShareDelivery):
            t0 = time.perf_counter()
            vec = self._get(self._cid - 1)
            self._spent[0] += time.perf_counter() - t0
        reply = self._session.receive(msg, input=vec)
        return None if reply is None else reply.encode()


def _drive(
    cfg: RoundConfig,
    params: _graph.GraphParameters | None,
    get: Callable[[int], object],
    drop: dict[str, frozenset[int]],
    master: RandomSource,
    *,
    workers: int = 1,
) -> RoundResult:
    n_, d_, bits = cfg.n, cfg.d, cfg.bits
    client_seeds = [master.bytes(32) for _ in range(n_)]
    identities: dict[int, IdentityKey] = {}
    alliance: Alliance | None = None
    if cfg.active:
        identities, alliance = generate_alliance(range(1, n_ + 1), master)
    masker = Masker(d_, bits)
    spent = [0.0]
    silent = {Stage(s): ids for s, ids in drop.items()}
    if not cfg.active:  # no consistency stage: who goes silent there is silent at unmasking
        silent[Stage.UNMASKING] = silent.get(Stage.UNMASKING, frozenset()) | silent.pop(Stage.CONSISTENCY, frozenset())
    spec = RoundSpec(cfg, "integer", (ArraySpec("input", (d_,), "uint64"),))
    if workers > 1:
        from secagg._parallel import WorkerPool

        def factory(cid: int) -> _SimClient:  # runs in the worker that owns client cid
            return _SimClient(
                cid, client_seeds[cid - 1], get, Masker(d_, bits), spent, identities.get(cid), alliance
            )

        with WorkerPool(factory, range(1, n_ + 1), workers=workers, d=d_, bits=bits, silent=silent) as pool:
            run = drive_round(
                cfg,
                pool.transport,
                setup=spec.to_bytes(),
                masker=pool.masker,
                timer=time.perf_counter,
                alliance=alliance,
            )
            client_s = dict(pool.transport.client_seconds)
    else:
        endpoints = {
            cid: _SimClient(cid, client_seeds[cid - 1], get, masker, spent, identities.get(cid), alliance)
            for cid in range(1, n_ + 1)
        }
        # time.perf_counter is looked up here, at call time, so a benchmark can swap the clock
        transport = MemoryTransport(endpoints, silent=silent, clock=time.perf_counter)
        run = drive_round(
            cfg, transport, setup=spec.to_bytes(), masker=masker, timer=time.perf_counter, alliance=alliance
        )
        client_s = dict(transport.client_seconds)
    res = run.result
    client_s[Stage.MASKED_INPUT.value] -= spent[0]  # producing an input is not protocol time
    timings = {s: {"client": client_s[s], "server": run.server_seconds[s]} for s in STAGES}
    timings["total"] = {r: sum(timings[s][r] for s in STAGES) for r in ("client", "server")}
    graph = {u - 1: frozenset(v - 1 for v in nb) for u, nb in run.graph.items()}
    return RoundResult(
        aggregate=res.aggregate.astype(np.uint64),
        survivors=[u - 1 for u in res.survivors],
        dropped={s: [u - 1 for u in res.dropped.get(s, ())] for s in STAGES},
        recovered=[u - 1 for u in res.recovered_keys],
        bytes_up=run.bytes_up,
        bytes_down=run.bytes_down,
        timings=timings,
        k=cfg.degree,
        t=cfg.t,
        colluders=cfg.colluders,
        min_clients=cfg.min_clients,
        complete=cfg.complete,
        graph=graph,
        config=cfg,
        params=params,
        excluded={u - 1: why for u, why in res.excluded.items()},
        active=res.active,
        evidence={u - 1: ev for u, ev in res.evidence.items()},
    )
