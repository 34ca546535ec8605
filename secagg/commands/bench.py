"""``secagg bench``: benchmark aggregation overhead against plaintext, the AES-CTR
keystream bound and Flower's SecAgg+, within a time budget.

Writes results.csv, results.json, results.md, privacy_utility.csv and PNG plots into
``--out`` and prints the Markdown tables.  Configurations run cheapest first, each in a
fresh process; any whose predicted time exceeds what is left of ``--budget`` is skipped
(or runs without its Flower baseline) and is listed as such.  Exit code 0 when every
measured round gave the correct sum, 1 otherwise, 2 on bad options.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

NAME = "bench"
HELP = "benchmark aggregation overhead against baselines"

_QUICK = {
    "clients": [5, 10],
    "dims": [1000, 10000],
    "dropouts": [0.0, 0.1],
    "graphs": ["flower-k20", "auto"],
    "budget": 120.0,
    "privacy_dim": 2048,
    "privacy_clients": 20,
    "privacy_bits": [12, 16, 20],
}


def _int_like(text: str) -> int:
    """Parse ``10000``, ``1e4`` or ``10**4`` as an int."""
    try:
        if "**" in text:
            base, exp = text.split("**", 1)
            return int(pow(int(base), int(exp)))
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    return int(value)


def _extra(text: str) -> tuple[int, int, float, str, int]:
    """Parse ``N,D,F,GRAPH[,BITS]`` (``--also``)."""
    parts = text.split(",")
    if len(parts) not in (4, 5):
        raise argparse.ArgumentTypeError(f"expected N,D,F,GRAPH[,BITS], got {text!r}")
    try:
        bits = int(parts[4]) if len(parts) == 5 else 32
        return _int_like(parts[0]), _int_like(parts[1]), float(parts[2]), parts[3], bits
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,D,F,GRAPH[,BITS], got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``secagg bench``."""
    from secagg.benchmarks import GRAPHS
    from secagg.simulate import STAGES

    g = parser.add_argument_group("grid")
    g.add_argument("--clients", "-n", type=_int_like, nargs="+", default=[10, 100, 1000], metavar="N",
                   help="numbers of clients (default 10 100 1000)")
    g.add_argument("--dims", "-d", type=_int_like, nargs="+", default=[10**4, 10**5, 10**6, 10**7], metavar="D",
                   help="vector lengths, e.g. 1e6 (default 1e4 1e5 1e6 1e7)")
    g.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1, 0.3], metavar="F",
                   help="dropout fractions (default 0 0.1 0.3)")
    g.add_argument("--stage", choices=STAGES, default="masked_input",
                   help="stage the clients drop before (default masked_input, i.e. after sharing keys)")
    g.add_argument("--graphs", choices=GRAPHS, nargs="+", default=list(GRAPHS),
                   help="flower-k20: SecAgg+ with k=20; auto: k from the threat model; complete: classic SecAgg")
    g.add_argument("--bits", type=int, nargs="+", default=[32], metavar="B", help="ring bit widths (default 32)")
    g.add_argument("--also", type=_extra, action="append", default=[], metavar="N,D,F,GRAPH[,BITS]",
                   help="one more configuration outside the grid, e.g. 100,1e6,0.1,flower-k20,20 (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="seed of inputs, dropouts and protocol randomness")
    r = parser.add_argument_group("run")
    r.add_argument("--budget", type=float, default=900.0, metavar="SECONDS",
                   help="time budget of the whole run (default 900); configurations predicted to overrun "
                   "it are skipped")
    r.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR", help="output directory")
    r.add_argument("--no-flower", action="store_true", help="do not run Flower's SecAgg+ baseline")
    r.add_argument("--quick", action="store_true", help="tiny grid for a smoke run (about a minute)")
    r.add_argument("--in-process", action="store_true",
                   help="run configurations in this process (memory by tracemalloc) instead of one process each")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="run each round (ours and Flower's, alternately) R times and keep the fastest (default 1)")
    r.add_argument("--limits", action="store_true",
                   help="also measure the round at the limit: where the time goes against the keystream bound "
                   "(n=100, d=1e6, k=20, 10%% dropout), speedup per core count (worker processes) and streamed "
                   "rounds at d=1e7 and 1e8 (peak memory in updates)")
    r.add_argument("--scale", action="store_true",
                   help="also fit a cost model on measured rounds up to n=2000 and print and plot measured vs "
                   "predicted per-client and server time up to n=1e6")
    r.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="W",
                   help="worker counts of the per-core speedup (--limits; default 1 2)")
    r.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="cpu: CPU time of the benchmark process (default; robust on a shared machine); "
                   "wall: wall clock")
    p = parser.add_argument_group("privacy-utility rows")
    p.add_argument("--no-privacy", action="store_true", help="skip the privacy-utility rows")
    p.add_argument("--privacy-bits", type=int, nargs="+", default=[12, 14, 16, 18, 20], metavar="B")
    p.add_argument("--privacy-dim", type=_int_like, default=16384, metavar="D")
    p.add_argument("--privacy-clients", type=int, default=100, metavar="N")
    p.add_argument("--rounds", type=int, nargs="+", default=[1, 100], metavar="T",
                   help="rounds composed for the epsilons (default 1 100)")
    p.add_argument("--sampling-rate", type=float, default=0.01, metavar="Q", help="client sampling rate (release)")


def _command(args: argparse.Namespace) -> str:
    def nums(xs: list[Any]) -> str:
        return " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in xs)

    if args.quick:
        parts = ["secagg bench --quick"]
    else:
        parts = [f"secagg bench --clients {nums(args.clients)} --dims {nums(args.dims)} "
                 f"--dropouts {nums(args.dropouts)} --stage {args.stage} --graphs {' '.join(args.graphs)} "
                 f"--bits {nums(args.bits)} --budget {args.budget:g}"]
        if args.repeat != 1:
            parts.append(f"--repeat {args.repeat}")
        if args.clock != "cpu":
            parts.append(f"--clock {args.clock}")
        for n, d, f, g, b in args.also:
            parts.append(f"--also {n},{d},{f:g},{g}" + ("" if b == 32 else f",{b}"))
    parts.append(f"--out {args.out}")
    if args.limits and args.workers != [1, 2]:
        parts.append(f"--workers {nums(args.workers)}")
    for flag in ("limits", "scale", "no_flower", "in_process", "no_plots", "no_privacy"):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-"))
    if not args.no_privacy and not args.quick:
        parts.append(f"--privacy-bits {nums(args.privacy_bits)} --privacy-dim {args.privacy_dim} "
                     f"--privacy-clients {args.privacy_clients} --rounds {nums(args.rounds)} "
                     f"--sampling-rate {args.sampling_rate:g}")
    if args.seed:
        parts.append(f"--seed {args.seed}")
    return " ".join(parts)


class _Bar:
    """tqdm progress bar, or plain lines on stderr when tqdm is not installed."""

    def __init__(self, total: int, desc: str) -> None:
        self._i, self._total = 0, total
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar: Any = None
            print(f"{desc}: {total} configurations", file=sys.stderr)
        else:
            self._bar = tqdm(total=total, desc=desc, unit="cfg", file=sys.stderr, dynamic_ncols=True)

    def step(self, label: str, status: str) -> None:
        self._i += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"{label}: {status}"[:70])
            self._bar.update(1)
        else:
            print(f"[{self._i}/{self._total}] {label}: {status}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run(args: argparse.Namespace) -> int:
    """Run the sweep and the privacy-utility rows; write and print the results."""
    from secagg.benchmarks import (
        BenchConfig,
        BenchRow,
        check_targets,
        fit_scaling,
        flower_available,
        grid,
        machine_info,
        markdown_report,
        privacy_utility_rows,
        run_sweep,
        sweep_steps,
        write_outputs,
    )
    from secagg.errors import SecAggError

    if args.quick:
        for k, v in _QUICK.items():
            setattr(args, k, v)
    if args.budget <= 0:
        print("secagg bench: --budget must be > 0", file=sys.stderr)
        return 2
    flower = not args.no_flower
    if flower and not flower_available():
        print("secagg bench: Flower baseline skipped: flwr is not installed (pip install 'secagg[flower]')",
              file=sys.stderr)
        flower = False
    try:
        configs = grid(args.clients, args.dims, args.dropouts, args.graphs, bits=args.bits, stage=args.stage,
                       flower=flower, seed=args.seed, repeats=args.repeat)
        for n, d, f, g, b in args.also:
            cfg = BenchConfig(n, d, f, args.stage, g, b, flower, args.seed, args.repeat)
            if cfg not in configs:
                configs.append(cfg)
    except SecAggError as exc:
        print(f"secagg bench: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    machine = machine_info()
    privacy_reserve = 0.0 if args.no_privacy else min(0.15 * args.budget, 120.0)
    bar = _Bar(sweep_steps(configs), "secagg bench")

    def progress(cfg: BenchConfig, row: BenchRow) -> None:
        flower_note = "" if row.flower_status in ("ok", "not run") else f", Flower {row.flower_status}"
        bar.step(cfg.label, row.status + (f", Flower {row.flower_speedup:.1f}x" if row.flower_speedup else flower_note))

    try:
        rows = run_sweep(configs, budget=args.budget - privacy_reserve, isolate=not args.in_process,
                         memory="tracemalloc" if args.in_process else "rss", progress=progress, clock=args.clock)
    finally:
        bar.close()
    privacy = []
    if not args.no_privacy:
        left = args.budget - (time.perf_counter() - start)
        if left > 0:
            try:
                privacy = privacy_utility_rows(bits=args.privacy_bits, rounds=args.rounds, clients=args.privacy_clients,
                                               dim=args.privacy_dim, sampling_rate=args.sampling_rate, seed=args.seed)
            except SecAggError as exc:
                print(f"secagg bench: privacy-utility rows skipped: {exc}", file=sys.stderr)
        else:
            print("secagg bench: privacy-utility rows skipped: the time budget is spent", file=sys.stderr)
    limits: dict[str, Any] = {}
    scale: dict[str, Any] = {}
    if args.limits:
        from secagg.benchmarks._limits_report import run_limits

        print("secagg bench: measuring the round at the limit (breakdown, cores, streamed rounds)", file=sys.stderr)
        limits = run_limits(workers=args.workers, seed=args.seed,
                            stream_dims=(10**5, 10**6) if args.quick else (10**7, 10**8),
                            **({"n": 20, "d": 10**5, "k": 6} if args.quick else {}))
    if args.scale:
        from secagg.benchmarks._limits_report import run_scale

        print("secagg bench: measuring rounds for the cost model (up to n=2000)", file=sys.stderr)
        scale = run_scale(seed=args.seed, ns=(10, 20, 50), ds=(100, 1000)) if args.quick else run_scale(seed=args.seed)
    fits = fit_scaling(rows)
    targets = check_targets(rows, limits=limits)
    machine["loadavg_end"] = machine_info().get("loadavg")
    meta = {"command": _command(args), "machine": machine, "elapsed_s": time.perf_counter() - start,
            "budget_s": args.budget, "limits": limits, "scale": scale}
    paths = write_outputs(args.out, rows, privacy=privacy, fits=fits, targets=targets, meta=meta,
                          plots=not args.no_plots)
    if scale and not args.no_plots:
        from secagg.benchmarks._limits_report import plot_scale

        png = plot_scale(args.out, scale)
        if png is not None:
            paths["scale"] = png
    print(markdown_report(rows, privacy, fits, targets, meta))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    skipped = [r for r in rows if r.status in ("skipped", "timeout")]
    if skipped:
        print(f"{len(skipped)} configuration(s) not run within the budget of {args.budget:g} s "
              "(status 'skipped'/'timeout' in the table)")
    wrong = [r for r in rows if r.correct is False or r.flower_correct is False]
    return 1 if wrong else 0
