"""``secagg round``: run one simulated secure-aggregation round and print what happened.

Random inputs in [0, 2^bits) are drawn from the seed, ``round(F n)`` of the clients go
silent, spread over the stages, and the aggregate is checked against the plaintext
sum of the survivors' inputs.  The threat model is sized for what is simulated: it
declares those dropouts and the ``--colluders``, so the chosen graph and threshold
tolerate them (:func:`secagg.graph.choose_parameters`).

Exit status (mapped in :mod:`secagg.cli`): 0 when the sum is exact; 1 when no safe
configuration of N clients tolerates the dropouts asked for, when the round aborts (with
the reason) or when the sum is wrong; 2 on bad options, including an explicit
``--neighbors``/``--threshold`` that is unsafe for the simulated dropouts.
"""

from __future__ import annotations

import argparse

import numpy as np
import numpy.typing as npt

from secagg import graph as _graph
from secagg.cli import CheckFailed, UsageError, fraction, int_at_least
from secagg.errors import ProtocolAbort, SecAggValueError, UnsafeParametersError
from secagg.simulate import STAGES, simulate_round

NAME = "round"
HELP = "run one simulated secure-aggregation round and print what happened"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``secagg round``."""
    parser.add_argument(
        "--clients", type=int_at_least(3), default=100, metavar="N", help="number of clients (default 100)"
    )
    parser.add_argument(
        "--dim", type=int_at_least(1), default=10_000, metavar="D", help="vector length (default 10000)"
    )
    parser.add_argument("--bits", type=int, default=32, metavar="B", help="ring bit width, 2..64 (default 32)")
    parser.add_argument(
        "--neighbors",
        type=_parse_neighbors,
        default=None,
        metavar="K|all",
        help="neighbours per client; 'all' = complete graph; default: chosen from the threat model",
    )
    parser.add_argument(
        "--threshold", type=int_at_least(1), default=None, metavar="T", help="Shamir threshold (default: safe)"
    )
    parser.add_argument(
        "--dropout",
        type=fraction,
        default=0.05,
        metavar="F",
        help="fraction of clients that go silent, spread over the stages; the threat model is sized "
        "to tolerate them (default 0.05)",
    )
    parser.add_argument(
        "--colluders",
        type=int_at_least(0),
        default=0,
        metavar="C",
        help="clients colluding with the server to tolerate (default 0)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed for inputs, dropouts and protocol")


def _parse_neighbors(raw: str) -> int | str:
    if raw == "all":
        return raw
    try:
        k = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int k >= 2 or 'all', got {raw!r}") from None
    if k < 2:
        raise argparse.ArgumentTypeError(f"must be an int k >= 2 or 'all', got {k}")
    return k


def _size_threat_model(n: int, dropped: int, colluders: int) -> _graph.GraphParameters:
    """The parameters the chooser picks for ``dropped`` dropouts and ``colluders``.

    Raises:
        UsageError: more colluders than a round of n clients can hold.
        CheckFailed: no safe configuration of n clients tolerates that many dropouts.
    """
    if colluders > n - 2:
        raise UsageError(f"--colluders must be <= clients - 2 = {n - 2} (the cohort floor is c + 2), got {colluders}")
    why = (
        f"{dropped} dropouts of {n} clients ({dropped / n:.0%}) with {colluders} colluders is more than any safe "
        "configuration tolerates"
    )
    if dropped + colluders >= n:
        raise CheckFailed(f"{why}: no honest client would survive")
    try:
        return _graph.choose_parameters(_graph.ThreatModel(n, dropped / n, colluders / n))
    except UnsafeParametersError as exc:
        raise CheckFailed(f"{why}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Run the round; print parameters, dropouts, traffic and timings; check the sum."""
    n, d, bits = args.clients, args.dim, args.bits
    if not 2 <= bits <= 64:
        raise UsageError(f"--bits must be in [2, 64], got {bits}")
    if args.threshold is not None and args.threshold > n - 1:
        raise UsageError(f"--threshold must be <= clients - 1 = {n - 1}, got {args.threshold}")
    gen = np.random.default_rng(args.seed)
    high = 1 << bits

    def inputs(i: int) -> npt.NDArray[np.uint64]:
        g = np.random.default_rng([args.seed, i])
        out: npt.NDArray[np.uint64] = g.integers(0, high, size=d, dtype=np.uint64, endpoint=False)
        return out

    # F * n clients drop in all, spread over the stages (the remainder before masked_input).
    order = gen.permutation(n)
    total = round(args.dropout * n)
    counts = [total // len(STAGES)] * len(STAGES)
    counts[STAGES.index("masked_input")] += total - sum(counts)
    dropouts, start = {}, 0
    for stage, c in zip(STAGES, counts, strict=True):
        dropouts[stage] = sorted(int(i) for i in order[start : start + c])
        start += c
    # The threat model declares exactly the dropouts simulated (and the colluders asked for).
    sized = _size_threat_model(n, total, args.colluders)
    print(f"secagg round: n={n} clients, d={d}, bits={bits}, seed={args.seed}")
    print(f"  threat model sized for the simulation: {total} dropouts, {args.colluders} colluders")
    try:
        res = simulate_round(
            inputs,
            bits=bits,
            threshold=args.threshold,
            neighbors=args.neighbors,
            dropouts=dropouts,
            seed=args.seed,
            n=n,
            d=d,
            colluders=args.colluders,
            dropout_fraction=total / n,
        )
    except ProtocolAbort as exc:
        raise CheckFailed(f"round aborted safely (nothing about individual inputs was revealed): {exc}") from None
    except UnsafeParametersError as exc:
        if args.neighbors is None and args.threshold is None:  # pragma: no cover - sized above
            raise CheckFailed(str(exc)) from None
        raise UsageError(f"{exc}; without --neighbors/--threshold the defaults are k={sized.k}, t={sized.t}") from None
    except SecAggValueError as exc:
        raise UsageError(str(exc)) from None
    graph = "complete graph (classic SecAgg)" if res.complete else "SecAgg+ graph"
    print(f"  {graph}, k={res.k} neighbours, threshold t={res.t}")
    print(
        f"  threat model tolerated: honest-but-curious server + up to c={res.colluders} colluding clients; "
        f"cohort floor min_clients={res.min_clients}; survivors' graph must be connected"
    )
    if res.params is not None:
        p = res.params
        exact = "exactly" if p.complete else f"except w.p. {p.correctness_failure:.2g} (correctness)"
        print(
            f"  parameters tolerate {p.dropouts_tolerated} dropouts at any stages ({exact}) and "
            f"{p.colluders_tolerated} colluders; at most {p.corrupt_neighbours} colluders in any honest "
            f"neighbourhood; failure probabilities: security <= {p.security_failure:.2g}, "
            f"correctness <= {p.correctness_failure:.2g}"
        )
    print("  dropouts (client indices silent before sending):")
    for stage in STAGES:
        who = res.dropped.get(stage, [])
        shown = ", ".join(map(str, who[:12])) + (" ..." if len(who) > 12 else "")
        print(f"    {stage:<15} {len(who):>5}  {shown}")
    print(f"  survivors: {len(res.survivors)} of {n}; mask keys reconstructed for {len(res.recovered)} dropped clients")
    print(f"  {'stage':<15} {'bytes up':>14} {'bytes down':>14} {'client s':>10} {'server s':>10}")
    for stage in STAGES:
        tm = res.timings[stage]
        print(
            f"  {stage:<15} {res.bytes_up[stage]:>14,} {res.bytes_down[stage]:>14,} "
            f"{tm['client']:>10.4f} {tm['server']:>10.4f}"
        )
    tot = res.timings["total"]
    print(
        f"  {'total':<15} {sum(res.bytes_up.values()):>14,} {sum(res.bytes_down.values()):>14,} "
        f"{tot['client']:>10.4f} {tot['server']:>10.4f}"
    )
    expected = np.zeros(d, dtype=np.uint64)
    for i in res.survivors:
        expected += inputs(i)
    if bits < 64:
        expected &= np.uint64(high - 1)
    if np.array_equal(res.aggregate, expected):
        m = len(res.survivors)
        print(f"  aggregate checked: equals the plaintext sum of the {m} survivors' inputs (mod 2^{bits})")
        return 0
    raise CheckFailed("the aggregate differs from the plaintext sum of the survivors' inputs")
