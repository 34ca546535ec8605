"""``secagg demo``: private federated training (SecAgg+ and distributed DP) on the digits data.

About 20 simulated clients hold a non-IID split of scikit-learn's handwritten digits
(shipped inside scikit-learn, no download).  Each round they train a small MLP locally;
their updates are clipped, noised with distributed discrete Gaussian shares, masked and
summed with SecAgg+, while a few clients drop out at random protocol stages.  Per round
the command prints the private model's accuracy next to plaintext FedAvg without any
privacy, the epsilon spent so far against the server and against the release (both
always shown, labelled), and the cost of secure aggregation.  It writes the privacy
ledger, an HTML privacy report and plots into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from secagg.cli import CheckFailed, UsageError

NAME = "demo"
HELP = "private federated training demo (SecAgg+ and distributed DP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``secagg demo``."""
    parser.add_argument("--rounds", type=int, default=10, metavar="R", help="training rounds (default 10)")
    parser.add_argument("--clients", type=int, default=20, metavar="N", help="simulated clients (default 20)")
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        metavar="F",
        help="probability that a client drops out at a random protocol stage each round (default 0.1, at most 0.3)",
    )
    parser.add_argument(
        "--noise-multiplier",
        type=float,
        default=1.0,
        metavar="Z",
        help="guaranteed noise std / L2 clip against the server at the cohort floor (default 1.0)",
    )
    parser.add_argument("--clip", type=float, default=1.0, metavar="C", help="L2 clip of each update (default 1.0)")
    parser.add_argument(
        "--model", choices=("linear", "mlp", "cnn"), default="linear", help="model trained (default linear)"
    )
    parser.add_argument(
        "--mechanism",
        choices=("discrete_gaussian", "skellam"),
        default="discrete_gaussian",
        help="distributed noise (default discrete_gaussian)",
    )
    parser.add_argument("--delta", type=float, default=1e-5, metavar="D", help="delta of both epsilons (default 1e-5)")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed for data split, model, training and dropouts"
    )
    parser.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default demo-out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fmt_eps(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


_HEADER = (
    f"{'round':>7}  {'accuracy':>8}  {'no-privacy':>10}  {'epsilon':>7}  {'epsilon':>7}  {'survivors':>9}  "
    f"{'secagg':>7}  {'training':>8}  {'upload/client':>13}\n"
    f"{'':>7}  {'private':>8}  {'FedAvg':>10}  {'server':>7}  {'release':>7}  {'':>9}  "
    f"{'(s)':>7}  {'(s)':>8}  {'kB (plain)':>13}"
)


def _line(row: Any, rounds: int) -> str:
    if row.aborted:
        return (
            f"{row.round:>3}/{rounds:<3}  round aborted safely: too few clients survived "
            f"({sum(row.dropped.values())} dropped); nothing revealed, nothing spent"
        )
    return (
        f"{row.round:>3}/{rounds:<3}  {row.accuracy:>8.1%}  {row.baseline_accuracy:>10.1%}  "
        f"{_fmt_eps(row.epsilon_server):>7}  {_fmt_eps(row.epsilon_release):>7}  "
        f"{f'{row.survivors}/{row.sampled}':>9}  {row.secure_seconds:>7.2f}  {row.train_seconds:>8.2f}  "
        f"{f'{row.upload_bytes / 1e3:.1f} ({row.plaintext_bytes / 1e3:.1f})':>13}"
    )


def run(args: argparse.Namespace) -> int:
    """Train, print per-round figures, write ledger, report and plots."""
    for name, ok, want in (
        ("--rounds", 1 <= args.rounds <= 1000, "in [1, 1000]"),
        ("--clients", 3 <= args.clients <= 100, "in [3, 100]"),
        ("--dropout", 0.0 <= args.dropout <= 0.3, "in [0, 0.3]"),
        ("--noise-multiplier", args.noise_multiplier > 0 and math.isfinite(args.noise_multiplier), "> 0"),
        ("--clip", args.clip > 0 and math.isfinite(args.clip), "> 0"),
        ("--delta", 0.0 < args.delta < 1.0, "in (0, 1)"),
    ):
        if not ok:
            value = getattr(args, name[2:].replace("-", "_"))
            raise UsageError(f"{name} must be {want}, got {value}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} is an existing file; give a folder (created if missing)")
    try:
        import torch

        from secagg.torch.demo import DemoRound, run_demo
    except ModuleNotFoundError as exc:
        raise UsageError(f"needs the torch extra ({exc}); pip install 'secagg[torch]'") from None
    torch.set_num_threads(1)

    bar: Any = None
    # A progress bar only on a terminal: in logs (CI, pipes) it would interleave with the table.
    if not args.no_progress and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=args.rounds, desc="secure rounds", unit="round", file=sys.stderr, leave=False)
        except ModuleNotFoundError:  # pragma: no cover - tqdm is in the bench/test extras
            bar = None

    print(
        f"secagg demo: {args.clients} clients, non-IID digits, {args.rounds} rounds, SecAgg+ with distributed "
        f"{args.mechanism.replace('_', ' ')} noise (noise multiplier {args.noise_multiplier}, clip {args.clip}), "
        f"dropout {args.dropout:.0%} per round"
    )
    print(
        f"epsilon (delta {args.delta:g}, so far) is reported twice: against the aggregation server (no sampling "
        "amplification, guaranteed noise only) and against anyone who sees only the released model (release)."
    )
    print(_HEADER)

    def on_round(row: DemoRound) -> None:
        text = _line(row, args.rounds)
        if bar is not None:
            bar.write(text)
            bar.set_postfix(acc=f"{row.accuracy:.2f}", eps_server=_fmt_eps(row.epsilon_server))
            bar.update(1)
        else:
            print(text, flush=True)

    try:
        result = run_demo(
            rounds=args.rounds,
            clients=args.clients,
            dropout=args.dropout,
            noise_multiplier=args.noise_multiplier,
            clip_norm=args.clip,
            seed=args.seed,
            out=args.out,
            delta=args.delta,
            mechanism=args.mechanism,
            model=args.model,
            on_round=on_round,
        )
    finally:
        if bar is not None:
            bar.close()
    done = [r for r in result.rounds if not r.aborted] or list(result.rounds)
    last = done[-1]
    secure = sum(r.secure_seconds for r in result.rounds)
    train = sum(r.train_seconds for r in result.rounds)
    print(
        f"\nfinal accuracy {last.accuracy:.1%} with privacy vs {last.baseline_accuracy:.1%} without; "
        f"epsilon {_fmt_eps(last.epsilon_server)} against the server, {_fmt_eps(last.epsilon_release)} against "
        f"the release (delta {last.delta:g}, RDP accountant)"
    )
    print(
        f"secure aggregation overhead: {secure:.2f} s in total ({secure / max(1, len(done)):.2f} s/round; "
        f"local training {train:.2f} s); upload {last.upload_bytes / 1e3:.1f} kB per client per round "
        f"vs {last.plaintext_bytes / 1e3:.1f} kB for the plaintext float32 update"
    )
    for what, path in result.files.items():
        print(f"  {what:>13}: {path}")
    head = result.parameters["ledger_head"]
    print(f"verify the ledger with: secagg verify {result.files['ledger']} --expect-head {head}")
    aborted = sum(r.aborted for r in result.rounds)
    if aborted == len(result.rounds):
        raise CheckFailed(
            f"all {aborted} rounds aborted (too many dropouts for {args.clients} clients): nothing was trained"
        )
    if aborted:
        print(f"{aborted} of {len(result.rounds)} rounds aborted safely (too many dropouts); the model skipped them")
    return 0
