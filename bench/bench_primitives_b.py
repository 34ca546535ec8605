"""Benchmarks of Shamir sharing and the neighbour graph at the scale of a 1,000-client round.

Run: ``.venv/bin/pytest bench/bench_primitives_b.py --benchmark-only`` (CI runs every
benchmark once with ``--benchmark-disable`` as a smoke test).

Reference point (docs/ and /work/shared/README.md): Flower's server spends 82-99% of its
time in pure-Python GF(2^128) Shamir reconstruction.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from secagg.graph import ThreatModel, choose_parameters, neighbour_graph, parameters_for_k
from secagg.rand import RandomSource
from secagg.shamir import Share, combine, split, split_many

N = 1000
K = 20


@pytest.fixture(scope="module")
def sparse_round() -> dict[str, Any]:
    """A SecAgg+ round at n = 1000, k = 20, t = 11: every client's neighbourhood and two
    32-byte secrets per client (mask key, self-mask seed)."""
    rng = RandomSource(1)
    ids = list(range(1, N + 1))
    graph = neighbour_graph(ids, K, b"bench-round")
    t = parameters_for_k(N, K).t
    secrets = {i: [rng.bytes(32), rng.bytes(32)] for i in ids}
    return {"ids": ids, "graph": graph, "t": t, "secrets": secrets, "rng": rng}


def test_split_two_secrets_for_1000_clients_k20(benchmark: Any, sparse_round: dict[str, Any]) -> None:
    ids, graph, t, secrets, rng = (sparse_round[key] for key in ("ids", "graph", "t", "secrets", "rng"))

    def run() -> list[list[list[Share]]]:
        return [split_many(secrets[i], t, sorted(graph[i]), rng=rng) for i in ids]

    out = benchmark(run)
    assert len(out) == N and len(out[0][0]) == K
    benchmark.extra_info["what"] = f"{N} clients x 2 secrets of 32 bytes, {K} holders each, t={t}"


def test_combine_1000_secrets_from_t_shares_k20(benchmark: Any, sparse_round: dict[str, Any]) -> None:
    ids, graph, t, secrets, rng = (sparse_round[key] for key in ("ids", "graph", "t", "secrets", "rng"))
    shares = {i: split(secrets[i][0], t, sorted(graph[i]), rng=rng) for i in ids}
    rnd = random.Random(0)
    # The server holds t shares from surviving neighbours (a different x-set per client).
    subsets = {i: rnd.sample(shares[i], t) for i in ids}

    def run() -> list[bytes]:
        return [combine(subsets[i], t) for i in ids]

    out = benchmark(run)
    assert out[0] == secrets[ids[0]][0]
    benchmark.extra_info["what"] = f"{N} secrets of 32 bytes, each from its own {t} shares"


def test_combine_1000_secrets_with_all_20_shares_verified(benchmark: Any, sparse_round: dict[str, Any]) -> None:
    ids, graph, t, secrets, rng = (sparse_round[key] for key in ("ids", "graph", "t", "secrets", "rng"))
    shares = {i: split(secrets[i][1], t, sorted(graph[i]), rng=rng) for i in ids}

    def run() -> list[bytes]:
        return [combine(shares[i], t) for i in ids]

    out = benchmark(run)
    assert out[-1] == secrets[ids[-1]][1]
    benchmark.extra_info["what"] = f"{N} secrets, all {K} shares each: consistency checked (error detection)"


@pytest.fixture(scope="module")
def complete_round() -> dict[str, Any]:
    """Complete graph at n = 1000 (classic SecAgg): t = 501 of 999 holders."""
    rng = RandomSource(2)
    xs = list(range(2, N + 1))
    t = 501
    sharings = [split(rng.bytes(32), t, xs, rng=rng) for _ in range(8)]
    return {"xs": xs, "t": t, "sharings": sharings, "rng": rng}


def test_complete_graph_split_one_client(benchmark: Any, complete_round: dict[str, Any]) -> None:
    t, rng = complete_round["t"], complete_round["rng"]
    secrets = [rng.bytes(32), rng.bytes(32)]
    ids = list(range(1, N + 1))
    me = iter(range(1, 10**6))

    def run() -> list[list[Share]]:
        client = next(me) % N + 1  # a different client each call: its holders are everyone else
        return split_many(secrets, t, [i for i in ids if i != client], rng)

    out = benchmark(run)
    assert len(out[0]) == N - 1
    benchmark.extra_info["what"] = f"one client: 2 secrets to {N - 1} holders, t={t} (times n for all clients)"


def test_complete_graph_combine_1000_secrets(benchmark: Any, complete_round: dict[str, Any]) -> None:
    t, sharings = complete_round["t"], complete_round["sharings"]
    # The server uses the first t surviving holders: the same x-set for every client.
    subsets = [s[:t] for s in sharings]

    def run() -> list[bytes]:
        return [combine(subsets[j % len(subsets)], t) for j in range(N)]

    out = benchmark(run)
    assert len(out) == N
    benchmark.extra_info["what"] = f"{N} secrets of 32 bytes from t={t} shares each (same x-set)"


def test_complete_graph_error_correction(benchmark: Any, complete_round: dict[str, Any]) -> None:
    t, sharings = complete_round["t"], complete_round["sharings"]
    shares = list(sharings[0])
    for i in range(0, 200, 2):  # 100 bad shares of 999
        shares[i] = Share(shares[i].x, shares[i].value[:2] + bytes(4) + shares[i].value[6:])
    from secagg.shamir import reconstruct

    rec = benchmark(reconstruct, shares, t)
    assert len(rec.bad) == 100
    benchmark.extra_info["what"] = f"one secret from {N - 1} shares with 100 bad ones named (Gao decoding)"


def test_graph_construction_n1000_k20(benchmark: Any) -> None:
    ids = list(range(1, N + 1))
    g = benchmark(neighbour_graph, ids, K, b"bench-seed")
    assert len(g) == N


def test_choose_parameters_n1000(benchmark: Any) -> None:
    p = benchmark(choose_parameters, ThreatModel(N, 0.1, 0.05))
    assert not p.complete
    benchmark.extra_info["what"] = f"n={N}, 10% dropout, 5% colluders -> k={p.k}, t={p.t}"
