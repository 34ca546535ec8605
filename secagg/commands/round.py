"""``secagg round``: run one simulated secure-aggregation round and print what happened.

Random inputs in [0, 2^bits) are drawn from the seed, a random dropout fraction of the
clients goes silent at each stage, and the aggregate is checked against the plaintext
sum of the survivors' inputs.  Exit code 0 when the sum is exact or the round aborted
safely (a :class:`~secagg.errors.ProtocolAbort` is a correct outcome), 1 on a wrong sum.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import numpy.typing as npt

from secagg.errors import ProtocolAbort, SecAggError
from secagg.simulate import STAGES, simulate_round

NAME = "round"
HELP = "run one simulated secure-aggregation round and print what happened"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``secagg round``."""
    parser.add_argument("--clients", type=int, default=100, metavar="N", help="number of clients (default 100)")
    parser.add_argument("--dim", type=int, default=10_000, metavar="D", help="vector length (default 10000)")
    parser.add_argument("--bits", type=int, default=32, metavar="B", help="ring bit width, 2..64 (default 32)")
    parser.add_argument(
        "--neighbors",
        default=None,
        metavar="K|all",
        help="neighbours per client; 'all' = complete graph; default: chosen from the threat model",
    )
    parser.add_argument("--threshold", type=int, default=None, metavar="T", help="Shamir threshold (default: safe)")
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.05,
        metavar="F",
        help="fraction of clients that go silent, spread over the four stages (default 0.05)",
    )
    parser.add_argument(
        "--colluders",
        type=int,
        default=None,
        metavar="C",
        help="clients colluding with the server to tolerate (default 0)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed for inputs, dropouts and protocol")


def _parse_neighbors(raw: str | None) -> int | str | None:
    if raw is None or raw == "all":
        return raw
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"secagg round: --neighbors must be an int or 'all', got {raw!r}") from None


def run(args: argparse.Namespace) -> int:
    """Run the round; print parameters, dropouts, traffic and timings; check the sum."""
    n, d, bits = args.clients, args.dim, args.bits
    if not 0.0 <= args.dropout < 1.0:
        print("secagg round: --dropout must be in [0, 1)", file=sys.stderr)
        return 2
    if n < 3 or d < 1:
        print("secagg round: need --clients >= 3 and --dim >= 1", file=sys.stderr)
        return 2
    if not 2 <= bits <= 64:
        print("secagg round: --bits must be in [2, 64]", file=sys.stderr)
        return 2
    gen = np.random.default_rng(args.seed)
    high = 1 << bits

    def inputs(i: int) -> npt.NDArray[np.uint64]:
        g = np.random.default_rng([args.seed, i])
        out: npt.NDArray[np.uint64] = g.integers(0, high, size=d, dtype=np.uint64, endpoint=False)
        return out

    # F * n clients drop in all, spread over the four stages (the remainder before masked_input).
    order = gen.permutation(n)
    total = round(args.dropout * n)
    counts = [total // 4] * 4
    counts[STAGES.index("masked_input")] += total - sum(counts)
    dropouts, start = {}, 0
    for stage, c in zip(STAGES, counts, strict=True):
        dropouts[stage] = sorted(int(i) for i in order[start : start + c])
        start += c
    print(f"secagg round: n={n} clients, d={d}, bits={bits}, seed={args.seed}")
    try:
        res = simulate_round(
            inputs,
            bits=bits,
            threshold=args.threshold,
            neighbors=_parse_neighbors(args.neighbors),
            dropouts=dropouts,
            seed=args.seed,
            n=n,
            d=d,
            colluders=args.colluders,
        )
    except ProtocolAbort as exc:
        print(f"round aborted safely (nothing about individual inputs was revealed): {exc}")
        return 0
    except SecAggError as exc:
        print(f"secagg round: {exc}", file=sys.stderr)
        return 2
    graph = "complete graph (classic SecAgg)" if res.complete else f"SecAgg+ graph, k={res.k} neighbours"
    print(f"  {graph}, threshold t={res.t}")
    print(
        f"  threat model tolerated: honest-but-curious server + up to c={res.colluders} colluding clients; "
        f"cohort floor min_clients={res.min_clients}; survivors' graph must be connected"
    )
    if res.params is not None:
        p = res.params
        print(
            f"  parameters from the threat model: up to {p.dropouts} dropouts; at most {p.corrupt_neighbours} "
            f"colluders in any honest neighbourhood; failure probabilities: security <= {p.security_failure:.2g}, "
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
    print("  ERROR: the aggregate differs from the plaintext sum of the survivors' inputs", file=sys.stderr)
    return 1
