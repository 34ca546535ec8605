"""Neighbour graphs and the threat-model parameter chooser."""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import SecAggError, SecAggTypeError, SecAggValueError, UnsafeParametersError
from secagg.graph import (
    COMPLETE_GRAPH_MAX_CLIENTS,
    GraphParameters,
    ThreatModel,
    check_threshold,
    choose_parameters,
    components,
    disconnection_bound,
    hypergeometric_tail,
    neighbour_graph,
    neighbours,
    parameters_for_k,
    parameters_table,
    permutation,
)

# --------------------------------------------------------------------------- graph structure


def _degrees(graph: dict[int, frozenset[int]]) -> Counter[int]:
    return Counter(len(v) for v in graph.values())


@pytest.mark.parametrize("n", [*range(1, 26), 40, 41])
def test_harary_graph_is_regular_symmetric_and_connected(n: int) -> None:
    ids = list(range(10, 10 + n))
    for k in range(2, n + 2):
        g = neighbour_graph(ids, k, b"seed")
        assert set(g) == set(ids)
        for u, nb in g.items():
            assert u not in nb
            assert nb <= set(ids)
            assert all(u in g[v] for v in nb)
        if k >= n - 1:
            assert all(nb == set(ids) - {u} for u, nb in g.items())
        elif k % 2 == 0 or n % 2 == 0:
            assert _degrees(g) == Counter({k: n})
        else:  # odd k, odd n: no k-regular graph exists; one client gets k + 1
            assert _degrees(g) == Counter({k: n - 1, k + 1: 1})
        assert len(components(g, ids)) == (1 if n else 0)


def test_harary_graph_survives_any_k_minus_1_removals() -> None:
    # Harary graphs are k-connected: removing any k - 1 clients leaves them connected.
    ids = list(range(1, 15))
    for k in (2, 3, 4, 5):
        g = neighbour_graph(ids, k, b"s")
        for removed in itertools.combinations(ids, k - 1):
            alive = set(ids) - set(removed)
            assert len(components(g, alive)) == 1


def test_graph_is_determined_by_ids_k_and_seed() -> None:
    ids = random.Random(0).sample(range(1, 10**6), 200)
    g1 = neighbour_graph(ids, 20, b"round-1")
    g2 = neighbour_graph(sorted(ids, reverse=True), 20, b"round-1")
    g3 = neighbour_graph(tuple(ids), 20, bytearray(b"round-1"))  # type: ignore[arg-type]
    assert g1 == g2 == g3
    assert neighbour_graph(ids, 20, b"round-2") != g1
    # Every client recomputes its own neighbourhood alone.
    for cid in ids[:40]:
        assert neighbours(ids, 20, b"round-1", cid) == g1[cid]
    assert neighbours(ids, None, b"x", ids[0]) == frozenset(ids) - {ids[0]}


def test_different_seeds_give_different_graphs() -> None:
    ids = list(range(1, 51))
    graphs = {
        tuple(sorted((u, tuple(sorted(v))) for u, v in neighbour_graph(ids, 6, bytes([s])).items())) for s in range(20)
    }
    assert len(graphs) == 20


def test_permutation_matches_the_documented_hash_order() -> None:
    seed = b"public seed"
    ids = [5, 3, 99, 1, 2**40]

    def key(i: int) -> bytes:
        data = b"secagg/graph/v1" + len(seed).to_bytes(4, "big") + seed + i.to_bytes(8, "big")
        return hashlib.sha256(data).digest()

    assert permutation(ids, seed) == sorted(ids, key=key)
    order = permutation(ids, seed)
    g = neighbour_graph(ids, 2, seed)
    for pos, cid in enumerate(order):  # k = 2: the ring itself
        assert g[cid] == {order[pos - 1], order[(pos + 1) % len(order)]}


def test_neighbourhoods_are_uniform_over_seeds() -> None:
    # The chooser assumes a client's neighbourhood is a uniform k-subset of the others.
    # 3000 seeds, n = 20, k = 4: chi-square over the 19 possible neighbours of client 0;
    # false-alarm rate 1e-6.
    from scipy.stats import chisquare

    ids = list(range(20))
    counts = Counter[int]()
    for s in range(3000):
        counts.update(neighbours(ids, 4, s.to_bytes(4, "big"), 0))
    observed = [counts[i] for i in ids[1:]]
    assert sum(observed) == 3000 * 4
    assert float(chisquare(observed).pvalue) > 1e-6


def test_components_of_survivors() -> None:
    g = {
        1: frozenset({2}),
        2: frozenset({1, 3}),
        3: frozenset({2}),
        4: frozenset({5}),
        5: frozenset({4}),
        6: frozenset(),
    }
    assert components(g, [1, 2, 3, 4, 5, 6]) == [frozenset({1, 2, 3}), frozenset({4, 5}), frozenset({6})]
    assert components(g, [1, 3, 5]) == [frozenset({1}), frozenset({3}), frozenset({5})]
    assert components(g, []) == []
    with pytest.raises(SecAggValueError, match="not in the graph"):
        components(g, [1, 7])
    with pytest.raises(SecAggTypeError):
        components([1, 2], [1])  # type: ignore[arg-type]


def _gaps(order: list[int], alive: set[int], w: int) -> int:
    """Number of maximal cyclic runs of at least w removed clients."""
    n = len(order)
    start = next(i for i in range(n) if order[i] in alive)
    runs, run = 0, 0
    for j in range(1, n + 1):
        if order[(start + j) % n] in alive:
            runs += run >= w
            run = 0
        else:
            run += 1
    return runs


@settings(max_examples=50, deadline=None)
@given(n=st.integers(6, 40), half=st.integers(1, 6), seed=st.integers(0, 2**32), data=st.data())
def test_disconnection_criterion_behind_the_bound(n: int, half: int, seed: int, data: st.DataObject) -> None:
    # The even-k graph minus a set is connected iff fewer than two runs of >= k/2 removed clients.
    k = 2 * half
    if k >= n - 1:
        return
    ids = list(range(n))
    g = neighbour_graph(ids, k, seed.to_bytes(8, "big"))
    order = permutation(ids, seed.to_bytes(8, "big"))
    alive = set(data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True)))
    assert (len(components(g, alive)) == 1) == (_gaps(order, alive, half) < 2)


def test_disconnection_bound_dominates_exact_probability() -> None:
    # Exact probability by enumerating every removed set of ring places.
    for n, k, removed in [(12, 4, 4), (12, 4, 6), (14, 6, 7), (16, 4, 5), (13, 5, 6)]:
        order = list(range(n))
        g = neighbour_graph(order, k, b"")
        ring = permutation(order, b"")
        bad = sum(len(components(g, set(ring) - set(gone))) > 1 for gone in itertools.combinations(ring, removed))
        exact = bad / math.comb(n, removed)
        assert exact <= disconnection_bound(n, removed, k) + 1e-12
    assert disconnection_bound(10, 3, 9) == 0.0  # complete graph
    assert disconnection_bound(100, 0, 4) == 0.0


def test_hypergeometric_tail_matches_scipy() -> None:
    from scipy.stats import hypergeom

    for pop, succ, draws in [(99, 10, 20), (999, 100, 36), (50, 0, 10), (50, 50, 10), (30, 12, 30), (4999, 1500, 450)]:
        for exceed in range(-1, draws + 1, max(1, draws // 15)):
            want = float(hypergeom.sf(exceed, pop, succ, draws))
            got = hypergeometric_tail(pop, succ, draws, exceed)
            assert got == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_graph_argument_errors() -> None:
    with pytest.raises(SecAggValueError, match="duplicate"):
        neighbour_graph([1, 2, 2], 2, b"s")
    with pytest.raises(SecAggValueError):
        neighbour_graph([1, -2, 3], 2, b"s")
    with pytest.raises(SecAggValueError):
        neighbour_graph([1, 2**64], 2, b"s")
    with pytest.raises(SecAggTypeError):
        neighbour_graph([1, True], 2, b"s")
    with pytest.raises(SecAggTypeError):
        neighbour_graph([1, 2, 3], 2, "seed")  # type: ignore[arg-type]
    with pytest.raises(SecAggTypeError):
        neighbour_graph("123", 2, b"s")  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError, match=">= 2"):
        neighbour_graph(range(10), 1, b"s")
    with pytest.raises(SecAggTypeError):
        neighbour_graph(range(10), 2.0, b"s")  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError):
        neighbours(range(10), 4, b"s", 11)
    assert neighbour_graph([], 3, b"s") == {}
    assert neighbour_graph([7], 3, b"s") == {7: frozenset()}
    assert neighbour_graph([7, 8], 1, b"s") == {7: frozenset({8}), 8: frozenset({7})}


# --------------------------------------------------------------------------- thresholds


def test_check_threshold_refuses_unsafe_and_unreachable_thresholds() -> None:
    check_threshold(20, 11, 0, 20)
    check_threshold(20, 13, 5, 13)
    with pytest.raises(UnsafeParametersError, match=r"t > \(k \+ c\) / 2"):
        check_threshold(20, 10, 0, 20)  # 2t = k: two disjoint halves of honest neighbours
    with pytest.raises(UnsafeParametersError):
        check_threshold(20, 12, 4, 20)  # 24 <= 24
    with pytest.raises(UnsafeParametersError, match="expected to survive"):
        check_threshold(20, 15, 0, 14)
    with pytest.raises(SecAggValueError):
        check_threshold(20, 11, 21, 20)
    with pytest.raises(SecAggValueError):
        check_threshold(20, 11, 0, 21)
    with pytest.raises(SecAggTypeError):
        check_threshold(20, 11.0, 0, 20)  # type: ignore[arg-type]
    with pytest.raises(SecAggValueError):
        check_threshold(20, 0, 0, 20)


# --------------------------------------------------------------------------- chooser


def _sf(pop: int, succ: int, draws: int, exceed: int) -> float:
    from scipy.stats import hypergeom

    return float(hypergeom.sf(exceed, pop, succ, draws))


def _independent_figures(n: int, k: int, t: int, c: int, d: int) -> tuple[float, float]:
    """Security and correctness failure bounds recomputed with scipy (even k, sparse)."""

    def disc(removed: int) -> float:
        w = k // 2
        one = n * math.comb(removed, w) / math.comb(n, w)
        two = n * (n - 1) / 2 * math.comb(removed, 2 * w) / math.comb(n, 2 * w)
        return min(1.0, one, two)

    # Corrupt neighbours among the n - 1 - d clients left after the dropouts.
    sec = (n - c) * _sf(n - 1 - d, c, min(k, n - 1 - d), 2 * t - k - 1) + disc(d + c)
    cor = n * _sf(n - 1, d, k, k - t) + disc(d)
    return sec, cor


threat_strategy = st.builds(
    ThreatModel,
    n=st.integers(3, 400),
    dropout_fraction=st.floats(0.0, 0.3),
    corrupt_fraction=st.floats(0.0, 0.3),
    security_bits=st.integers(10, 60),
    correctness_bits=st.integers(5, 30),
)


@settings(max_examples=50, deadline=None)
@given(threat=threat_strategy)
def test_chosen_parameters_meet_the_threat_model(threat: ThreatModel) -> None:
    try:
        p = choose_parameters(threat)
    except UnsafeParametersError:
        # Only when even the complete graph cannot work: 2 (n - 1 - D) <= n - 1 + C.
        assert 2 * (threat.n - 1 - threat.dropouts) <= threat.n - 1 + threat.colluders
        return
    assert isinstance(p, GraphParameters) and p.threat == threat
    assert p.colluders == threat.colluders and p.dropouts == threat.dropouts
    assert p.min_clients == threat.colluders + 2
    assert p.dropouts_tolerated >= threat.dropouts and p.colluders_tolerated >= threat.colluders
    check_threshold(p.k, p.t, p.corrupt_neighbours, p.surviving_neighbours)
    check_threshold(p.k, p.t, p.corrupt_neighbours, p.expected_survivors)
    assert p.security_failure <= 2.0**-threat.security_bits
    assert p.correctness_failure <= 2.0**-threat.correctness_bits
    if p.complete:
        # The smallest safe threshold: the most dropouts the declared colluders allow.
        assert p.k == threat.n - 1 and p.t == (threat.n - 1 + threat.colluders) // 2 + 1
        assert p.dropouts_tolerated == threat.n - 1 - p.t
        return
    assert threat.n > COMPLETE_GRAPH_MAX_CLIENTS
    assert p.k % 2 == 0 and 2 <= p.k <= threat.n - 2
    sec, cor = _independent_figures(threat.n, p.k, p.t, threat.colluders, threat.dropouts)
    assert sec <= 2.0**-threat.security_bits * (1 + 1e-9)
    assert cor <= 2.0**-threat.correctness_bits * (1 + 1e-9)
    assert p.security_failure == pytest.approx(sec, rel=1e-6, abs=1e-300)


@pytest.mark.parametrize(
    ("n", "dropout", "corrupt"),
    [(100, 0.1, 0.0), (100, 0.1, 0.1), (1000, 0.1, 0.1), (1000, 0.05, 0.05), (300, 0.2, 0.1)],
)
def test_chosen_k_is_minimal(n: int, dropout: float, corrupt: float) -> None:
    # The next smaller even k fails for every threshold (independent scipy computation).
    threat = ThreatModel(n, dropout, corrupt)
    p = choose_parameters(threat)
    assert not p.complete
    k = p.k - 2
    if k < 2:
        return
    c, d = threat.colluders, threat.dropouts
    for t in range(1, k + 1):
        sec, cor = _independent_figures(n, k, t, c, d)
        assert sec > 2.0**-40 * 0.999 or cor > 2.0**-20 * 0.999


def test_chooser_is_monotone_in_the_threat() -> None:
    def k_of(n: int, d: float, c: float, sec: int = 40, cor: int = 20) -> int:
        return choose_parameters(ThreatModel(n, d, c, sec, cor)).k

    for n in (60, 300, 1000):
        ks = [k_of(n, 0.1, c) for c in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)]
        assert ks == sorted(ks)
        ks = [k_of(n, d, 0.05) for d in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)]
        assert ks == sorted(ks)
        ks = [k_of(n, 0.1, 0.05, sec=s) for s in (10, 20, 40, 60, 80)]
        assert ks == sorted(ks)
        ks = [k_of(n, 0.1, 0.05, cor=s) for s in (5, 10, 20, 30)]
        assert ks == sorted(ks)
    # Known figures (n = 1000, 10% dropout): k grows with the colluders tolerated.
    assert k_of(1000, 0.1, 0.0) < k_of(1000, 0.1, 0.1) < 1000 // 4


def test_chooser_falls_back_to_the_complete_graph_and_refuses_impossible_models() -> None:
    p = choose_parameters(ThreatModel(8, 0.25, 0.25))
    assert p.complete and p.k == 7 and p.t == 5 and p.colluders == 2 and p.min_clients == 4
    assert p.dropouts_tolerated == 2 and p.colluders_tolerated == 2
    assert p.security_failure == 0.0 and p.correctness_failure == 0.0
    with pytest.raises(UnsafeParametersError, match="complete graph"):
        choose_parameters(ThreatModel(1000, 0.4, 0.3))  # 2 (999 - 400) <= 999 + 300
    with pytest.raises(UnsafeParametersError, match="cohort floor"):
        choose_parameters(ThreatModel(3, 0.0, 0.67))
    with pytest.raises(SecAggTypeError):
        choose_parameters((100, 0.1, 0.1))  # type: ignore[arg-type]


def test_threat_model_validation() -> None:
    assert ThreatModel(100, 0.29, 0.07).dropouts == 29  # 0.29 * 100 = 28.999... in binary
    assert ThreatModel(100, 0.29, 0.07).colluders == 7
    for bad in [
        dict(n=1, dropout_fraction=0.1, corrupt_fraction=0.1),
        dict(n=10, dropout_fraction=1.0, corrupt_fraction=0.0),
        dict(n=10, dropout_fraction=-0.1, corrupt_fraction=0.0),
        dict(n=10, dropout_fraction=0.6, corrupt_fraction=0.4),
        dict(n=10, dropout_fraction=0.1, corrupt_fraction=0.1, security_bits=0),
        dict(n=10, dropout_fraction=0.1, corrupt_fraction=0.1, correctness_bits=300),
    ]:
        with pytest.raises(SecAggValueError):
            ThreatModel(**bad)  # type: ignore[arg-type]
    with pytest.raises(SecAggTypeError):
        ThreatModel(10.0, 0.1, 0.1)  # type: ignore[arg-type]
    with pytest.raises(SecAggTypeError):
        ThreatModel(10, "0.1", 0.1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- explicit k


def test_parameters_for_flower_style_k20() -> None:
    p = parameters_for_k(100, 20)  # 10% dropout, honest-but-curious server
    assert (p.k, p.t, p.complete, p.colluders, p.min_clients) == (20, 11, False, 0, 2)
    assert p.expected_survivors == 17
    assert p.correctness_failure == pytest.approx(100 * _sf(99, 10, 20, 9), rel=1e-9)
    check_threshold(p.k, p.t, p.corrupt_neighbours, p.expected_survivors)
    # With colluders the default threshold rises to stay safe.
    q = parameters_for_k(100, 20, colluders=5)
    assert q.t == (20 + q.corrupt_neighbours) // 2 + 1 and q.corrupt_neighbours == 5
    assert parameters_for_k(100, 20, t=13).t == 13
    # Few dropouts: the default threshold is the largest one that meets correctness.
    r = parameters_for_k(100, 20, dropout_fraction=0.02)
    assert r.t == r.surviving_neighbours > 11 and r.correctness_failure <= 2.0**-20


def test_parameters_for_k_refuses_unsafe_choices() -> None:
    with pytest.raises(UnsafeParametersError, match=r"t > \(k \+ c\) / 2"):
        parameters_for_k(100, 20, t=10)
    with pytest.raises(UnsafeParametersError, match="expected to survive"):
        parameters_for_k(100, 20, t=18)  # 17 neighbours expected to survive
    with pytest.raises(UnsafeParametersError):
        parameters_for_k(100, 20, t=21)
    with pytest.raises(UnsafeParametersError):
        parameters_for_k(100, 20, colluders=30)  # t would have to exceed the survivors
    with pytest.raises(UnsafeParametersError, match="disconnects"):
        parameters_for_k(1000, 4, dropout_fraction=0.2, t=3)  # honest survivors' graph falls apart
    with pytest.raises(UnsafeParametersError, match="cohort floor"):
        parameters_for_k(5, None, colluders=4)
    with pytest.raises(SecAggValueError):
        parameters_for_k(100, 1)
    with pytest.raises(SecAggValueError):
        parameters_for_k(100, 20, colluders=100)


def test_parameters_for_k_complete_and_odd_degrees() -> None:
    p = parameters_for_k(50, None, colluders=5)
    # Complete graph: the smallest safe threshold, so the most dropouts are tolerated.
    assert p.complete and p.k == 49 and p.t == (49 + 5) // 2 + 1 and p.min_clients == 7
    assert p.dropouts_tolerated == 49 - p.t and p.colluders_tolerated == 5
    assert parameters_for_k(50, None, t=44, colluders=5).dropouts_tolerated == 5
    assert parameters_for_k(50, 60, colluders=5) == p
    # Odd k: one client may have k + 1 neighbours, so safety is checked against k + 1.
    odd = parameters_for_k(101, 21, colluders=0)
    assert odd.k == 21 and 2 * odd.t > 22
    with pytest.raises(UnsafeParametersError):
        parameters_for_k(101, 21, t=11)  # safe for degree 21, not for the degree-22 client


def test_typed_errors_derive_from_secagg_error() -> None:
    for call in (
        lambda: parameters_for_k(100, 20, t=10),
        lambda: neighbour_graph([1, 1], 2, b""),
        lambda: ThreatModel(1, 0.0, 0.0),
        lambda: check_threshold(4, 2, 0, 4),
    ):
        with pytest.raises(SecAggError):
            call()


# --------------------------------------------------------------------------- alliance defaults


def test_small_cohorts_use_the_complete_graph_with_the_smallest_safe_threshold() -> None:
    for n in range(3, COMPLETE_GRAPH_MAX_CLIENTS + 1):
        p = choose_parameters(ThreatModel(n, 0.1, 0.0))
        assert p.complete and p.k == n - 1 and p.t == (n - 1) // 2 + 1
        assert p.dropouts_tolerated == n - 1 - p.t and p.colluders_tolerated == 0
        check_threshold(p.k, p.t, 0, p.expected_survivors)
        q = choose_parameters(ThreatModel(n, 0.1, 1 / n))  # one member colludes with the server
        assert q.t == n // 2 + 1 and q.colluders_tolerated == 1 and q.min_clients == 3
        assert q.dropouts_tolerated == n - 1 - q.t
    # The declared dropouts are still a requirement: 3 of 6 cannot be met.
    with pytest.raises(UnsafeParametersError, match="complete graph"):
        choose_parameters(ThreatModel(6, 0.5, 0.0))


def test_sparse_tolerance_is_the_largest_dropout_count_that_meets_both_targets() -> None:
    for threat in (ThreatModel(100, 0.1, 0.0), ThreatModel(300, 0.1, 0.05), ThreatModel(64, 0.1, 0.0)):
        p = choose_parameters(threat)
        assert not p.complete and p.dropouts_tolerated >= threat.dropouts
        assert p.colluders_tolerated == threat.colluders

        def holds(dropped: int, p: GraphParameters = p, threat: ThreatModel = threat) -> bool:
            sec, cor = _independent_figures(threat.n, p.k, p.t, threat.colluders, dropped)
            return sec <= 2.0**-40 * (1 + 1e-9) and cor <= 2.0**-20 * (1 + 1e-9)

        assert holds(p.dropouts_tolerated) and not holds(p.dropouts_tolerated + 1)


def test_corrupt_neighbours_are_bounded_among_the_clients_left_after_dropouts() -> None:
    # 300 clients, 30 dropouts, 15 colluders: the bound uses 269 candidates, not 299.
    p = parameters_for_k(300, 40, colluders=15, dropout_fraction=0.1)
    exposed = _sf(269, 15, 40, p.corrupt_neighbours)
    assert 300 * exposed <= 2.0**-40
    assert 300 * _sf(269, 15, 40, p.corrupt_neighbours - 1) > 2.0**-40 * 0.5


def _check_round(n: int, dropouts: dict[str, list[int]]) -> None:
    from secagg.simulate import simulate_round

    rng = np.random.default_rng(n)
    x = rng.integers(0, 1 << 16, size=(n, 3), dtype=np.uint64)
    res = simulate_round(x, bits=32, dropouts=dropouts, seed=n)
    gone = {i for s, v in dropouts.items() if s not in ("consistency", "unmasking") for i in v}  # later: summed
    assert res.survivors == [i for i in range(n) if i not in gone]
    want = x[res.survivors].sum(axis=0) % (1 << 32)
    assert np.array_equal(res.aggregate, want)


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10, 11, 12, 16, 20, 30])
def test_make_config_defaults_survive_their_tolerated_dropouts_at_every_stage(n: int) -> None:
    from secagg.errors import ProtocolAbort
    from secagg.simulate import STAGES, make_config

    _, p = make_config(n, 3)
    assert p.dropouts_tolerated >= (2 if n >= 10 else 1)
    assert p.dropouts_tolerated == n - 1 - p.t  # complete graph: exact
    big_d = p.dropouts_tolerated
    for stage in STAGES:  # all of them at one stage
        _check_round(n, {stage: list(range(big_d))})
    spread: dict[str, list[int]] = {s: [] for s in STAGES}  # spread over the stages
    for i in range(big_d):
        spread[STAGES[i % 4]].append(n - 1 - i)
    _check_round(n, spread)
    # One more than reported is refused at unmasking: the figure is not flattering.
    with pytest.raises(ProtocolAbort):
        _check_round(n, {"masked_input": list(range(big_d + 1))})


def test_defaults_table_in_the_docs_is_what_the_code_computes() -> None:
    """docs/alliance-defaults.md holds parameters_table() output between markers.

    Regenerate with ``SECAGG_WRITE_DOCS=1 pytest tests/test_graph.py -k docs``.
    """
    import os
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "alliance-defaults.md"
    text = page.read_text()
    tables = {
        "defaults": parameters_table(range(3, 31)),
        "one-colluder": parameters_table(range(3, 31), colluders=1),
    }
    new = text
    for name, table in tables.items():
        begin, end = f"<!-- table:{name}:begin -->\n", f"<!-- table:{name}:end -->"
        head, rest = new.split(begin, 1)
        _, tail = rest.split(end, 1)
        new = head + begin + table + end + tail
    if os.environ.get("SECAGG_WRITE_DOCS") == "1":
        page.write_text(new)
    assert new == text, "docs/alliance-defaults.md is stale: rerun with SECAGG_WRITE_DOCS=1"
