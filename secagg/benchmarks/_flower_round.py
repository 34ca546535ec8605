"""Baseline (c): Flower's SecAgg+ (``flwr`` 1.41, the ``flower`` extra) on the same workload.

:func:`run_flower_round` drives one round in one process through Flower's *own*
functions: P-384 key pairs and PEM serialisation (``flwr.supercore.primitives.asymmetric``),
``create_shares``/``combine_shares`` (``flwr.common.secure_aggregation.crypto.shamir``),
``generate_shared_key``/``encrypt``/``decrypt`` (Fernet), ``quantize``/``dequantize``,
``pseudo_rand_gen`` and the ``parameters_*`` arithmetic, ``ndarray_to_bytes``.  The
driver calls them in the order of ``flwr.client.mod.secure_aggregation.secaggplus_mod``
(client) and ``flwr.server.workflow.secure_aggregation.secaggplus_workflow`` (server),
stage by stage, including Flower's checks and its halting rules; only the transport
(gRPC, records, SuperLink) is left out, so the figure is a lower bound on a Flower
deployment's cost.  No Flower code is copied here: every step is a call.

Threat assumptions: none; these are measurements.  Flower's masks come from numpy's
MT19937 seeded with a 32-bit fold of the key (not a cryptographic PRG); it is measured
as it is.  Importing this module does not import ``flwr``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.benchmarks._validate import check_int, check_stage_ids
from secagg.messages import Stage
from secagg.rand import RngLike, as_random_source
from secagg.simulate import STAGES

__all__ = [
    "FLOWER_CLIP",
    "FLOWER_GRID",
    "FLOWER_MAX_WEIGHT",
    "FLOWER_MOD_RANGE",
    "FLOWER_QUANT_RANGE",
    "FlowerRound",
    "flower_available",
    "flower_grid_vector",
    "flower_version",
    "run_flower_round",
]

#: Flower's SecAggPlusWorkflow defaults (clipping_range, quantization_range, modulus_range, max_weight).
FLOWER_CLIP = 8.0
FLOWER_QUANT_RANGE = 1 << 22
FLOWER_MOD_RANGE = 1 << 32
FLOWER_MAX_WEIGHT = 1000.0
#: Inputs on this grid (multiples of 2^-18 in [-1, 1]) quantize exactly, so the driver can
#: check Flower's unmasked integer sum (stochastic rounding has nothing to round).
FLOWER_GRID = 1 << 18


def flower_available() -> bool:
    """Whether ``flwr`` (the ``flower`` extra) can be imported."""
    return importlib.util.find_spec("flwr") is not None


def flower_version() -> str | None:
    """Installed ``flwr`` version, or None."""
    if not flower_available():
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flwr")
    except PackageNotFoundError:  # pragma: no cover - importable but not installed as a distribution
        return None


def flower_grid_vector(d: int, rng: RngLike = None) -> npt.NDArray[np.float32]:
    """A float32 vector of ``d`` multiples of 2^-18 in [-1, 1].

    With weight ``FLOWER_MAX_WEIGHT`` Flower's stochastic quantization of such a vector is
    exact: its quantized value is ``(x + 8) * 2^18``, so a sum can be checked exactly.
    """
    m = as_random_source(rng).integers(2 * FLOWER_GRID + 1, d)
    return ((m - FLOWER_GRID).astype(np.float64) / FLOWER_GRID).astype(np.float32)


@dataclass(frozen=True)
class FlowerRound:
    """What the Flower SecAgg+ driver measured.

    Attributes:
        ok: the round produced an aggregate (False: Flower halted; see ``reason``).
        reason: why it halted ("" when ok).
        n, d: clients and vector length.
        num_shares: Flower's ``num_shares`` (neighbours plus the client itself).
        k: neighbours per client (``num_shares - 1``, or ``n - 1`` for the complete graph).
        t: reconstruction threshold.
        survivors: indices (0-based) whose masked vectors were summed.
        aggregate: Flower's unmasked integer sum (mod 2^32) of the survivors' quantized
            vectors, shape (d,), int64; None when it halted.
        mean: Flower's output, the weighted average in model units, shape (d,); or None.
        correct: whether ``aggregate`` equals the independently computed sum of the
            survivors' quantized inputs (None when not checked or halted).
        timings: per stage ``{"client": s, "server": s}`` plus ``"total"``; client time is
            summed over clients.
        quantize_seconds: part of the client time spent in Flower's ``quantize`` (and its
            weighting), which our protocol's integer workload does not include.
        bytes_up, bytes_down: per stage, payload bytes (bytes values at their length, 8
            bytes per int or float, strings by length; record keys and the gRPC/protobuf
            framing are not counted, nor the model sent down with the fit instruction).
        senders, receivers: per stage, clients that answered / were sent a request.
        failures: per stage, clients whose Flower code raised (Flower counts them as
            failures and carries on without them).
    """

    ok: bool
    reason: str
    n: int
    d: int
    num_shares: int
    k: int
    t: int
    survivors: list[int]
    aggregate: npt.NDArray[np.int64] | None = field(repr=False)
    mean: npt.NDArray[np.float64] | None = field(repr=False)
    correct: bool | None
    timings: dict[str, dict[str, float]]
    quantize_seconds: float
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    senders: dict[str, int] = field(default_factory=dict)
    receivers: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def client_seconds(self) -> float:
        """Client time summed over clients and stages."""
        return self.timings["total"]["client"]

    @property
    def server_seconds(self) -> float:
        """Server time summed over stages."""
        return self.timings["total"]["server"]

    @property
    def total_seconds(self) -> float:
        """Client plus server time (the single-process round)."""
        return self.client_seconds + self.server_seconds


def _payload(value: object) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (list, tuple)):
        return sum(_payload(v) for v in value)
    if isinstance(value, dict):
        return sum(_payload(v) for v in value.values())
    return 8  # int, float, bool


class _FlowerClient:
    """One client's SecAgg+ state and stages, as ``secaggplus_mod`` runs them."""

    def __init__(self, nid: int, sample_num: int, share_num: int, threshold: int) -> None:
        self.nid = nid
        self.sample_num = sample_num
        self.share_num = share_num
        self.threshold = threshold
        self.sk1 = self.pk1 = self.sk2 = self.pk2 = self.rd_seed = b""
        self.rd_seed_share_dict: dict[int, bytes] = {}
        self.sk1_share_dict: dict[int, bytes] = {}
        self.ss2_dict: dict[int, bytes] = {}
        self.public_keys_dict: dict[int, tuple[bytes, bytes]] = {}

    # stage 0 ("setup"): two P-384 key pairs, serialised as PEM
    def setup(self) -> dict[str, Any]:
        from flwr.supercore.primitives.asymmetric import (
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )

        self.rd_seed_share_dict, self.sk1_share_dict, self.ss2_dict = {}, {}, {}
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        self.sk1, self.pk1 = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
        self.sk2, self.pk2 = private_key_to_bytes(sk2), public_key_to_bytes(pk2)
        return {"pk1": self.pk1, "pk2": self.pk2}

    # stage 1 ("share_keys"): Shamir-share the mask seed and sk1, encrypt one bundle per neighbour
    def share_keys(self, key_dict: dict[int, tuple[bytes, bytes]]) -> dict[str, Any]:
        from flwr.common.secure_aggregation.crypto.shamir import create_shares
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt, generate_shared_key
        from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
        from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

        self.public_keys_dict = key_dict
        if len(key_dict) < self.threshold:
            raise ValueError("Available neighbours number smaller than threshold")
        pk_list = [pk for pair in key_dict.values() for pk in pair]
        if len(set(pk_list)) != len(pk_list):
            raise ValueError("Some public keys are identical")
        if key_dict[self.nid] != (self.pk1, self.pk2):
            raise ValueError("Own public keys are displayed in dict incorrectly")
        self.rd_seed = os.urandom(32)
        b_shares = create_shares(self.rd_seed, self.threshold, self.share_num)
        sk1_shares = create_shares(self.sk1, self.threshold, self.share_num)
        dsts: list[int] = []
        ciphertexts: list[bytes] = []
        for idx, (nid, (_, pk2)) in enumerate(key_dict.items()):
            if nid == self.nid:
                self.rd_seed_share_dict[nid] = b_shares[idx]
                self.sk1_share_dict[nid] = sk1_shares[idx]
            else:
                shared_key = generate_shared_key(bytes_to_private_key(self.sk2), bytes_to_public_key(pk2))
                self.ss2_dict[nid] = shared_key
                plaintext = share_keys_plaintext_concat(self.nid, nid, b_shares[idx], sk1_shares[idx])
                dsts.append(nid)
                ciphertexts.append(encrypt(shared_key, plaintext))
        return {"dsts": dsts, "ciphertexts": ciphertexts}

    # stage 2 ("collect_masked_vectors"): decrypt shares, quantize, add masks, serialise int64
    def collect(
        self, ciphertexts: list[bytes], srcs: list[int], parameters: Any, num_examples: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> tuple[dict[str, Any], float, npt.NDArray[Any] | None]:
        from flwr.common import ndarray_to_bytes, parameters_to_ndarrays
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, generate_shared_key
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_combine,
            parameters_addition,
            parameters_mod,
            parameters_multiply,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import quantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen, share_keys_plaintext_separate
        from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

        available: list[int] = []
        if len(ciphertexts) + 1 < self.threshold:
            raise ValueError("Not enough available neighbour clients.")
        for src, ct in zip(srcs, ciphertexts, strict=True):
            plaintext = decrypt(self.ss2_dict[src], ct)
            actual_src, dst, rd_seed_share, sk1_share = share_keys_plaintext_separate(plaintext)
            available.append(src)
            if src != actual_src or dst != self.nid:
                raise ValueError(f"Node {self.nid}: ciphertext from the wrong source or for another node")
            self.rd_seed_share_dict[src] = rd_seed_share
            self.sk1_share_dict[src] = sk1_share
        tq = clock()
        ratio = num_examples / FLOWER_MAX_WEIGHT
        q_ratio = round(ratio * FLOWER_QUANT_RANGE)
        dq_ratio = q_ratio / FLOWER_QUANT_RANGE
        params = parameters_to_ndarrays(parameters)
        params = parameters_multiply(params, dq_ratio)
        quantized = quantize(params, FLOWER_CLIP, FLOWER_QUANT_RANGE)
        quantize_s = clock() - tq
        plain = quantized[0] if len(quantized) == 1 else None
        quantized = factor_combine(q_ratio, quantized)
        dims: list[tuple[int, ...]] = [a.shape for a in quantized]
        private_mask = pseudo_rand_gen(self.rd_seed, FLOWER_MOD_RANGE, dims)
        quantized = parameters_addition(quantized, list(private_mask))
        for node_id in available:
            shared_key = generate_shared_key(
                bytes_to_private_key(self.sk1), bytes_to_public_key(self.public_keys_dict[node_id][0])
            )
            pairwise = pseudo_rand_gen(shared_key, FLOWER_MOD_RANGE, dims)
            if self.nid > node_id:
                quantized = parameters_addition(quantized, list(pairwise))
            else:
                quantized = parameters_subtraction(quantized, list(pairwise))
        quantized = parameters_mod(quantized, FLOWER_MOD_RANGE)
        return {"masked": [ndarray_to_bytes(a) for a in quantized]}, quantize_s, plain

    # stage 3 ("unmask"): reveal seed shares of survivors, sk1 shares of the dropped
    def unmask(self, active: list[int], dead: list[int]) -> dict[str, Any]:
        if len(active) < self.threshold:
            raise ValueError("Available neighbours number smaller than threshold")
        shares = [self.rd_seed_share_dict[nid] for nid in active]
        shares += [self.sk1_share_dict[nid] for nid in dead]  # KeyError for a node that never shared
        return {"nids": active + dead, "shares": shares}


class _Timer:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.t = {s: {"client": 0.0, "server": 0.0} for s in STAGES}

    def add(self, stage: str, role: str, t0: float) -> float:
        now = self.clock()
        self.t[stage][role] += now - t0
        return now


def run_flower_round(
    n: int,
    d: int,
    *,
    neighbors: int | None,
    threshold: int,
    dropouts: Mapping[str, Iterable[int]] | None = None,
    inputs: Callable[[int], npt.NDArray[np.float32]] | None = None,
    check: bool = True,
    rng: RngLike = None,
    clock: Callable[[], float] = time.perf_counter,
) -> FlowerRound:
    """One SecAgg+ round through Flower's own functions, all clients and the server in one process.

    Args:
        n: clients (>= 3).
        d: vector length (the model is one float32 array of ``d`` values).
        neighbors: neighbours per client, as our ``k`` (Flower gets ``num_shares = k + 1``;
            it makes an even ``num_shares`` odd, so an odd ``k`` gets one more); None or
            ``>= n - 1``: every client is a neighbour (``num_shares = n``).
        threshold: Flower's ``reconstruction_threshold`` (shares needed, counting the
            client's own).
        dropouts: our stage name -> client indices (0-based) that do not answer that
            stage: ``"advertise_keys"`` = Flower's setup, ``"share_keys"``,
            ``"masked_input"`` = collect-masked-vectors, ``"unmasking"`` = unmask.
            Flower halts the round when a client drops before its shares were
            distributed (no one holds shares of its key).
        inputs: ``i -> float32 vector (d,)`` in [-8, 8] (Flower's clipping range); default
            :func:`flower_grid_vector` per client.  Called once per client that reaches
            the masked-vector stage, outside the timed code.
        check: compare the unmasked sum with the sum of the quantized vectors the surviving
            clients masked (accumulated outside the timed code): the masks must cancel.
        rng: seeds node ids, the neighbour ring's shuffle and the default inputs (Flower's
            own keys and mask seeds come from ``os.urandom`` as in Flower).
        clock: clock of ``timings`` (``time.perf_counter``: wall clock;
            ``time.process_time``: CPU time of this process, all threads).

    Raises:
        SecAggTypeError, SecAggValueError: bad arguments.
        ModuleNotFoundError: ``flwr`` is not installed (``pip install secagg[flower]``).
    """
    if not flower_available():
        raise ModuleNotFoundError("flwr is not installed; pip install 'secagg[flower]' (flwr==1.41.0)")
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    n = check_int(n, "n", 3)
    d = check_int(d, "d", 1)
    if neighbors is not None:
        neighbors = check_int(neighbors, "neighbors", 2)
    drop = check_stage_ids(dropouts, n, STAGES)
    src = as_random_source(rng)
    get = inputs if inputs is not None else (lambda i: flower_grid_vector(d, src))
    num_shares = n if neighbors is None or neighbors + 1 >= n else neighbors + 1
    threshold = check_int(threshold, "threshold", 2, num_shares - 1)

    # Node ids: random 63-bit, like SuperLink's; sample order = index order.
    ids: list[int] = []
    while len(set(ids)) != n:
        ids = [int(x >> np.uint64(1)) or 1 for x in src.uint64(n)]
    index = {nid: i for i, nid in enumerate(ids)}
    dropped_at = {s: {ids[i] for i in drop[s]} for s in STAGES}
    timer = _Timer(clock)
    up = dict.fromkeys(STAGES, 0)
    down = dict.fromkeys(STAGES, 0)
    quantize_s = 0.0
    senders = dict.fromkeys(STAGES, 0)
    receivers = dict.fromkeys(STAGES, 0)
    failures = dict.fromkeys(STAGES, 0)

    def result(ok: bool, reason: str, survivors: list[int], *, agg: Any = None, mean: Any = None,
               correct: bool | None = None) -> FlowerRound:
        timings = {s: dict(v) for s, v in timer.t.items()}
        timings["total"] = {r: sum(timer.t[s][r] for s in STAGES) for r in ("client", "server")}
        return FlowerRound(ok, reason, n, d, num_shares, min(num_shares - 1, n - 1), threshold, survivors,
                           agg, mean, correct, timings, quantize_s, up, down, senders, receivers, failures)

    # ---------------------------------------------------------------- stage 0: setup
    st = Stage.ADVERTISE_KEYS.value
    t0 = clock()
    sampled = list(ids)
    order = [sampled[int(j)] for j in np.argsort(src.uint64(n), kind="stable")]  # random.shuffle
    half = num_shares >> 1
    neighbours = {
        nid: {order[(i + off) % n] for off in range(-half, half + 1)} for i, nid in enumerate(order)
    }
    sampled_set = set(sampled)
    config = {"stage": "setup", "sample_num": n, "share_num": num_shares, "threshold": threshold,
              "clipping_range": FLOWER_CLIP, "target_range": FLOWER_QUANT_RANGE, "mod_range": FLOWER_MOD_RANGE,
              "max_weight": FLOWER_MAX_WEIGHT}
    t0 = timer.add(st, "server", t0)
    clients: dict[int, _FlowerClient] = {}
    pks: dict[int, list[bytes]] = {}
    for nid in sampled:
        down[st] += _payload(config)
        receivers[st] += 1
        if nid in dropped_at[st]:
            continue
        t0 = clock()
        c = _FlowerClient(nid, n, num_shares, threshold)
        reply = c.setup()
        t0 = timer.add(st, "client", t0)
        up[st] += _payload(reply)
        senders[st] += 1
        clients[nid] = c
        pks[nid] = [reply["pk1"], reply["pk2"]]
        timer.add(st, "server", t0)
    active = set(clients)

    def threshold_ok() -> bool:
        return all(len(neighbours[v] & active) >= threshold for v in sampled_set)

    if not threshold_ok():
        return result(False, "setup: a client has fewer than threshold active neighbours", [])

    # ---------------------------------------------------------------- stage 1: share keys
    st = Stage.SHARE_KEYS.value
    replies: dict[int, dict[str, Any]] = {}
    for nid in sorted(active):
        t0 = clock()
        key_dict = {v: (pks[v][0], pks[v][1]) for v in neighbours[nid] & active}
        t0 = timer.add(st, "server", t0)
        down[st] += _payload(list(key_dict.values())) + 8 * len(key_dict)
        receivers[st] += 1
        if nid in dropped_at[st]:
            continue
        try:
            replies[nid] = clients[nid].share_keys(key_dict)
        except (ValueError, KeyError):
            timer.add(st, "client", t0)
            failures[st] += 1
            continue
        timer.add(st, "client", t0)
        up[st] += _payload(replies[nid])
        senders[st] += 1
    t0 = clock()
    active = set(replies)
    fwd_ct: dict[int, list[bytes]] = {v: [] for v in active}
    fwd_src: dict[int, list[int]] = {v: [] for v in active}
    for nid, rep in replies.items():
        for dst, ct in zip(rep["dsts"], rep["ciphertexts"], strict=True):
            if dst in fwd_ct:
                fwd_ct[dst].append(ct)
                fwd_src[dst].append(nid)
    ok = threshold_ok()
    timer.add(st, "server", t0)
    if not ok:
        return result(False, "share_keys: a client has fewer than threshold active neighbours", [])

    # ---------------------------------------------------------------- stage 2: masked vectors
    st = Stage.MASKED_INPUT.value
    masked_vector: list[npt.NDArray[Any]] | None = None
    arrived: set[int] = set()
    expected: npt.NDArray[np.int64] | None = np.zeros(d, dtype=np.int64) if check else None
    for nid in sorted(active):
        down[st] += _payload(fwd_ct[nid]) + 8 * len(fwd_src[nid])
        receivers[st] += 1
        if nid in dropped_at[st]:
            continue
        # The ClientApp's output (not SecAgg+ work, so not timed): the serialised float32 model.
        params = ndarrays_to_parameters([np.asarray(get(index[nid]), dtype=np.float32)])
        t0 = clock()
        try:
            reply, qs, plain = clients[nid].collect(fwd_ct[nid], fwd_src[nid], params, int(FLOWER_MAX_WEIGHT),
                                                    clock)
        except (ValueError, KeyError):
            timer.add(st, "client", t0)
            failures[st] += 1
            continue
        quantize_s += qs
        t0 = timer.add(st, "client", t0)
        up[st] += _payload(reply)
        senders[st] += 1
        client_vec = [bytes_to_ndarray(b) for b in reply["masked"]]
        masked_vector = client_vec if masked_vector is None else parameters_addition(masked_vector, client_vec)
        arrived.add(nid)
        t0 = timer.add(st, "server", t0)
        if expected is not None and plain is not None:
            expected += np.asarray(plain, dtype=np.int64)
    t0 = clock()
    active = arrived
    if masked_vector is not None:
        masked_vector = parameters_mod(masked_vector, FLOWER_MOD_RANGE)
    ok = threshold_ok()
    timer.add(st, "server", t0)
    survivors = sorted(index[v] for v in active)
    if not ok or masked_vector is None:
        return result(False, "collect_masked_vectors: a client has fewer than threshold active neighbours", survivors)

    # ---------------------------------------------------------------- stage 3: unmask
    st = Stage.UNMASKING.value
    active_nids = set(active)
    dead_nids = sampled_set - active_nids
    collected: dict[int, list[bytes]] = {v: [] for v in sampled}
    for nid in sorted(active_nids):
        t0 = clock()
        act = list(neighbours[nid] & active_nids)
        dead = list(neighbours[nid] & dead_nids)
        t0 = timer.add(st, "server", t0)
        down[st] += 8 * (len(act) + len(dead))
        receivers[st] += 1
        if nid in dropped_at[st]:
            continue
        try:
            rep = clients[nid].unmask(act, dead)
        except (ValueError, KeyError):
            timer.add(st, "client", t0)
            failures[st] += 1
            continue
        t0 = timer.add(st, "client", t0)
        up[st] += _payload(rep)
        senders[st] += 1
        for owner, share in zip(rep["nids"], rep["shares"], strict=True):
            collected[owner].append(share)
        timer.add(st, "server", t0)
    t0 = clock()
    for nid, share_list in collected.items():
        if len(share_list) < threshold:
            timer.add(st, "server", t0)
            failed = f"; {failures[st]} clients' unmask replies raised" if failures[st] else ""
            return result(False, f"unmask: {len(share_list)} < threshold={threshold} shares of client "
                                 f"{index[nid]}'s secret{failed}; Flower halts the round", survivors)
        secret = combine_shares(share_list)
        if nid in active_nids:
            private_mask = pseudo_rand_gen(secret, FLOWER_MOD_RANGE, get_parameters_shape(masked_vector))
            masked_vector = parameters_subtraction(masked_vector, list(private_mask))
        else:
            nbrs = set(neighbours[nid])
            nbrs.discard(nid)
            for w in nbrs:
                shared_key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(pks[w][0]))
                pairwise = pseudo_rand_gen(shared_key, FLOWER_MOD_RANGE, get_parameters_shape(masked_vector))
                if nid > w:
                    masked_vector = parameters_addition(masked_vector, list(pairwise))
                else:
                    masked_vector = parameters_subtraction(masked_vector, list(pairwise))
    recon = parameters_mod(masked_vector, FLOWER_MOD_RANGE)
    q_total_ratio, recon_params = factor_extract(recon)
    inv_dq_total_ratio = FLOWER_QUANT_RANGE / q_total_ratio
    aggregated = dequantize(recon_params, FLOWER_CLIP, FLOWER_QUANT_RANGE)
    offset = -(len(active_nids) - 1) * FLOWER_CLIP
    for vec in aggregated:
        vec += offset
        vec *= inv_dq_total_ratio
    timer.add(st, "server", t0)
    agg = np.asarray(recon_params[0], dtype=np.int64)
    correct = None
    if expected is not None:
        correct = bool(np.array_equal(agg, expected & np.int64(FLOWER_MOD_RANGE - 1)))
    return result(True, "", survivors, agg=agg, mean=np.asarray(aggregated[0], dtype=np.float64), correct=correct)
