"""Performance at the limit: where a round's time goes against the keystream bound, the
speedup per core count, a streamed round's memory and speed at large ``d``.

Every figure is CPU time (``time.process_time``, plus ``RUSAGE_CHILDREN`` for worker
processes) or a ratio measured side by side in one process, except the wall-clock
speedup, which is reported with the load average beside it.

* :func:`time_breakdown` -- one single-process round, its CPU time split by component
  (keystream, numpy adds and the masking loop, X25519, AEAD, Shamir, key derivation, the
  rest: Python per-message work, packing and copies) against the AES-CTR keystream
  bound for the mask bytes it generated.
* :func:`core_speedup` -- the same round with ``workers = 1, 2, ...``
  (:mod:`secagg._parallel`), run alternately: wall-clock speedup and the CPU-time
  critical path (the serial process's CPU plus one worker's share).
* :func:`streamed_round` -- the masking data path of a round processed in chunks
  (clients mask ``[s, s + c)`` with :meth:`secagg.crypto.prg.Masker.add_many`
  ``start=s``, the server adds each chunk and removes the self masks and the recovered
  pairwise masks chunk by chunk): peak memory of a client and of the server against one
  update, CPU time against the keystream bound.  The protocol's key agreement is real
  (X25519, HKDF); Shamir and AEAD are not in it (their cost does not grow with ``d``).
"""

from __future__ import annotations

import os
import resource
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from secagg.benchmarks._keystream import keystream_bound, mask_bytes
from secagg.crypto import keys as _keys
from secagg.crypto.prg import Masker
from secagg.rand import RandomSource
from secagg.simulate import simulate_round

__all__ = ["core_speedup", "streamed_round", "time_breakdown"]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(ru.ru_utime + ru.ru_stime)


def _load() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # pragma: no cover
        return None


def _dropouts(n: int, fraction: float) -> dict[str, list[int]]:
    step = max(1, round(1 / fraction)) if fraction > 0 else 0
    return {"masked_input": list(range(0, n, step))} if step else {}


@contextmanager
def _counting(targets: Sequence[tuple[Any, str, str]]) -> Iterator[defaultdict[str, float]]:
    """Wrap ``(owner, attribute, label)`` callables to sum their CPU seconds by label
    (nested calls are counted once, by the outermost wrapper)."""
    spent: defaultdict[str, float] = defaultdict(float)
    depth = [0]
    saved = []
    for owner, name, label in targets:
        fn = getattr(owner, name)
        saved.append((owner, name, fn))

        def wrapper(*a: Any, _fn: Callable[..., Any] = fn, _label: str = label, **k: Any) -> Any:
            if depth[0]:
                return _fn(*a, **k)
            depth[0] += 1
            c0 = time.process_time()
            try:
                return _fn(*a, **k)
            finally:
                spent[_label] += time.process_time() - c0
                depth[0] -= 1

        setattr(owner, name, wrapper)
    try:
        yield spent
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def _ones(d: int) -> Callable[[int], Any]:
    vec = np.ones(d, dtype=np.uint32)
    return lambda i: vec


def time_breakdown(n: int = 100, d: int = 10**6, k: int = 20, dropout: float = 0.1, *, seed: int = 0,
                   repeats: int = 2) -> dict[str, Any]:
    """Where a single-process round's CPU time goes (see the module docstring).  The
    fastest of ``repeats`` rounds (after one warm-up at the same size) is kept."""
    from secagg import shamir as _shamir
    from secagg.crypto import aead as _aead

    drop = _dropouts(n, dropout)
    inputs = _ones(d)
    targets = [
        (Masker, "add_many", "masking"),
        (_keys, "agree_many", "x25519"),
        (_keys, "derive", "hkdf"),
        (_aead, "encrypt", "aead"),
        (_aead, "decrypt", "aead"),
        (_shamir, "split_many", "shamir"),
        (_shamir, "reconstruct", "shamir"),
        (_shamir, "combine", "shamir"),
    ]
    simulate_round(inputs, 32, None, k, drop, seed, n=n, d=d)
    best: tuple[float, defaultdict[str, float], Any] | None = None
    for rep in range(repeats):
        with _counting(targets) as spent:
            c0 = time.process_time()
            res = simulate_round(inputs, 32, None, k, drop, seed + rep, n=n, d=d)
            total = time.process_time() - c0
        if best is None or total < best[0]:
            best = (total, defaultdict(float, spent), res)
    assert best is not None
    total, spent, res = best
    mb = mask_bytes(res)
    ks = keystream_bound(mb)
    parts = {
        "keystream (AES-CTR bound)": ks.cpu_seconds,
        "numpy adds + masking loop": spent["masking"] - ks.cpu_seconds,
        "X25519 key agreement": spent["x25519"],
        "AEAD (share encryption)": spent["aead"],
        "Shamir split/reconstruct": spent["shamir"],
        "HKDF key derivation": spent["hkdf"],
    }
    parts["Python per-message work, packing, copies"] = total - sum(parts.values())
    return {
        "n": n, "d": d, "k": res.k, "t": res.t, "dropout": dropout, "survivors": len(res.survivors),
        "mask_bytes": mb, "total_cpu_s": total, "keystream_cpu_s": ks.cpu_seconds,
        "keystream_gbps": ks.cpu_bytes_per_second / 1e9, "x_keystream": total / ks.cpu_seconds,
        "masker_x_keystream": spent["masking"] / ks.cpu_seconds,
        "parts_s": parts, "parts_x_keystream": {p: s / ks.cpu_seconds for p, s in parts.items()},
        "load_start": _load(),
    }


def core_speedup(n: int = 100, d: int = 10**6, k: int = 20, dropout: float = 0.1, *,
                 workers: Sequence[int] = (1, 2), repeats: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """The round with each worker count, alternately, ``repeats`` times (fastest kept).

    ``speedup_wall`` is the wall-clock ratio to ``workers=1`` (disturbed by anything else
    running; the load average is recorded).  ``speedup_cpu_path`` divides the one-core
    round's CPU time by the CPU critical path of the parallel round: the driver
    process's CPU plus the workers' CPU divided by their number (clients are dealt
    round-robin, mask ranges evenly) -- the wall time on idle cores, counting the
    driver's work as never overlapping the workers' (so a lower estimate).
    """
    drop = _dropouts(n, dropout)
    inputs = _ones(d)
    simulate_round(inputs, 32, None, k, drop, seed, n=n, d=d)
    best: dict[int, dict[str, Any]] = {}
    for rep in range(repeats):
        for w in workers:
            load = _load()
            ch0, c0, w0 = _children_cpu(), time.process_time(), time.perf_counter()
            res = simulate_round(inputs, 32, None, k, drop, seed + rep, n=n, d=d, workers=w)
            wall, main = time.perf_counter() - w0, time.process_time() - c0
            kids = _children_cpu() - ch0
            path = main + (kids / w if w > 1 else 0.0)
            row = {"workers": w, "wall_s": wall, "driver_cpu_s": main, "workers_cpu_s": kids,
                   "cpu_total_s": main + kids, "cpu_path_s": path, "load": load,
                   "correct": int(res.aggregate[0]) == len(res.survivors)}
            if w not in best or path < best[w]["cpu_path_s"]:
                best[w] = {**row, "wall_s": min(wall, best.get(w, row)["wall_s"])}
            elif wall < best[w]["wall_s"]:
                best[w]["wall_s"] = wall
    one = best[min(workers)]
    out = []
    for w in workers:
        r = best[w]
        r["speedup_wall"] = one["wall_s"] / r["wall_s"]
        r["speedup_cpu_path"] = one["cpu_path_s"] / r["cpu_path_s"] if r["cpu_path_s"] > 0 else None
        r["cores"] = os.cpu_count()
        out.append(r)
    return out


def streamed_round(d: int, n: int = 10, *, dropped: int = 1, chunk: int = 1 << 18, seed: int = 0) -> dict[str, Any]:
    """A streamed round's masking data path at vector length ``d`` (module docstring).

    ``n`` clients on the complete graph, ``dropped`` of them silent after sharing keys
    (their pairwise masks are removed by the server).  All clients send the same update
    (one ``uint32`` vector of ``d`` values, which exists before the round: the
    training's output); the client's and the server's peak memory are measured with
    tracemalloc above that, in units of one update (``4 d`` bytes).
    """
    src = RandomSource(seed)
    update = np.empty(d, dtype=np.uint32)
    step = 1 << 20
    for i in range(0, d, step):
        src.fill(update[i : i + step])
    cpu0 = time.process_time()
    sks = [_keys.generate_private_key(src) for _ in range(n)]
    pks = [_keys.public_key(sk) for sk in sks]
    self_seeds = [src.bytes(32) for _ in range(n)]
    alive = list(range(dropped, n))
    round_id = src.bytes(16)

    def pair_masks(u: int, peers: list[int]) -> list[tuple[bytes, int]]:
        shared = _keys.agree_many(sks[u], [pks[v] for v in peers])
        return [(_keys.derive(z, _keys.LABEL_MASK, round_id, u + 1, v + 1), 1 if u < v else -1)
                for v, z in zip(peers, shared, strict=True)]

    masker = Masker(d, 32)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    acc = np.zeros(d, dtype=np.uint32)  # the server's running sum: one update
    buf = np.empty(min(chunk, d), dtype=np.uint32)  # one chunk in flight
    client_peak = server_peak = 0
    for u in alive:
        masks = [(self_seeds[u], 1), *pair_masks(u, [v for v in range(n) if v != u])]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        for s in range(0, d, chunk):
            e = min(d, s + chunk)
            piece = buf[: e - s]
            np.copyto(piece, update[s:e])
            masker.add_many(piece, masks, start=s)  # client: mask one chunk
            np.add(acc[s:e], piece, out=acc[s:e])  # server: receive it
        client_peak = max(client_peak, tracemalloc.get_traced_memory()[1] - before)
    # The server removes the survivors' self masks and the dropped clients' pairwise masks.
    tracemalloc.reset_peak()
    unmask = [(self_seeds[u], -1) for u in alive]
    for v in range(dropped):
        unmask += pair_masks(v, alive)  # v's sign for (v, u) is minus u's: it cancels what u added
    for s in range(0, d, chunk):
        e = min(d, s + chunk)
        masker.add_many(acc[s:e], unmask, start=s)
    server_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    cpu = time.process_time() - cpu0
    want = (update.astype(np.uint64)[: min(d, 1 << 20)] * len(alive)) % (1 << 32)
    correct = bool(np.array_equal(acc[: min(d, 1 << 20)], want.astype(np.uint32)))
    n_masks = len(alive) * n + len(unmask)
    mb = n_masks * d * 4
    ks = keystream_bound(mb)
    one = 4 * d
    return {"d": d, "n": n, "dropped": dropped, "chunk": chunk, "mask_bytes": mb, "cpu_s": cpu,
            "keystream_cpu_s": ks.cpu_seconds, "x_keystream": cpu / ks.cpu_seconds,
            "client_peak_updates": (one + client_peak) / one, "server_peak_updates": (server_peak) / one,
            "update_bytes": one, "correct": correct, "load": _load()}
