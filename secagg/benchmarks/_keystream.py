"""Baseline (b): the keystream bound, and the mask bytes a round generated.

:func:`keystream_bound` times OpenSSL's AES-128-CTR, the mask PRG's cipher
(:func:`secagg.crypto.prg.keystream`, through ``cryptography``, ``update_into`` a
preallocated buffer, the fastest path), producing the mask bytes a round generates
(:func:`mask_bytes`).  No masking protocol built on that PRG can be faster than that on
the same core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from secagg.benchmarks._validate import check_int
from secagg.crypto.prg import keystream
from secagg.simulate import RoundResult

__all__ = ["KeystreamBound", "client_masks", "keystream_bound", "mask_bytes"]

_CHUNK = 1 << 18  # 256 KiB of keystream per update_into (as secagg.crypto.prg.Masker)
_PAD = 15


@dataclass(frozen=True)
class KeystreamBound:
    """Result of :func:`keystream_bound`.

    Attributes:
        nbytes: mask bytes the bound is for.
        seconds: ``nbytes / bytes_per_second``: the wall-clock time of the mask PRG's
            cipher (AES-128-CTR) for them.
        bytes_per_second: best measured wall-clock throughput (one core).
        measured_bytes: keystream bytes actually produced per repetition (the throughput
            is measured on ``min(nbytes, sample_bytes)`` and scaled linearly).
        cpu_seconds: the same in CPU time of this process (``time.process_time``), which
            other processes on a shared machine disturb much less.
        cpu_bytes_per_second: best throughput per CPU second.
    """

    nbytes: int
    seconds: float
    bytes_per_second: float
    measured_bytes: int
    cpu_seconds: float = 0.0
    cpu_bytes_per_second: float = 0.0


def keystream_bound(nbytes: int, *, sample_bytes: int = 1 << 27, repeats: int = 3) -> KeystreamBound:
    """Time the mask PRG's cipher (OpenSSL AES-128-CTR) producing ``nbytes`` of keystream.

    The keystream is written with ``update_into`` into one preallocated 256 KiB buffer
    (no allocation), the best case for any AES-CTR PRG in Python.  Throughput is the best
    of ``repeats`` runs over ``min(nbytes, sample_bytes)`` bytes; for larger ``nbytes``
    the time is scaled linearly (AES-CTR cost is linear in the bytes).

    Raises:
        SecAggTypeError: an argument is not an int.
        SecAggValueError: negative ``nbytes`` or non-positive ``sample_bytes``/``repeats``.
    """
    nbytes = check_int(nbytes, "nbytes", 0)
    sample = max(_CHUNK, min(nbytes, check_int(sample_bytes, "sample_bytes", 1)))
    repeats = check_int(repeats, "repeats", 1)
    zeros = memoryview(bytes(_CHUNK))
    out = memoryview(bytearray(_CHUNK + _PAD))
    best = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        enc = keystream(bytes(32))  # the exact cipher the masks use (AES-128-CTR)
        left = sample
        while left > 0:
            m = min(_CHUNK, left)
            enc.update_into(zeros[:m], out[: m + _PAD])
            left -= m
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    rate = sample / max(best, 1e-9)
    cpu_rate = sample / max(best_cpu, 1e-6)
    return KeystreamBound(nbytes, nbytes / rate, rate, sample, nbytes / cpu_rate, cpu_rate)


def client_masks(result: RoundResult) -> int:
    """Masks the clients of a finished round expanded: every client whose masked input
    arrived expanded one self mask and one pairwise mask per neighbour that shared keys."""
    before = set(result.dropped.get("advertise_keys", ())) | set(result.dropped.get("share_keys", ()))
    sharing = {u for u in result.graph if u not in before}
    return sum(1 + len(result.graph.get(u, frozenset()) & sharing) for u in result.survivors)


def mask_bytes(result: RoundResult) -> int:
    """PRG output bytes a finished round generated (clients plus server).

    Clients: :func:`client_masks`.  Server: one self mask per survivor, and one pairwise
    mask per (recovered dropped client, surviving neighbour).  Each mask is ``d`` words of
    4 bytes (``bits <= 32``) or 8 bytes.
    """
    item = 4 if result.bits <= 32 else 8
    survivors = set(result.survivors)
    masks = client_masks(result) + len(survivors)
    masks += sum(len(result.graph.get(v, frozenset()) & survivors) for v in result.recovered)
    return masks * result.d * item
