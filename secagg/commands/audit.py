"""``secagg audit``: empirical privacy audit of a distributed-DP run (canaries, one run).

Runs :func:`secagg.audit.run_canary_audit` and prints the empirical **lower** bound on
epsilon beside the accountant's **upper** bound for the same rounds, both against the
aggregation server (with its colluders).  Exit status 0 when the lower bound stays at or
below the stated epsilon; 1, with ``AUDIT FAILED`` on stderr, when it exceeds it (the
mechanism leaks more than the accounting says, except with probability ``1 -
confidence``).  ``--no-noise`` runs a **deliberately broken** mechanism (noise off, same
stated epsilon) to check that the auditor catches it: that run must exit 1.

Figures are printed rounded on the safe side: the upper bound up, the lower bound down.
``--ledger LEDGER --report-dir DIR`` also writes the auditor's report of a ledger
(:mod:`dp.report`) with the audit as a section.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from secagg.cli import CheckFailed, UsageError, fraction, int_at_least

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "audit"
HELP = "empirical epsilon lower bound from canaries beside the stated upper bound"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return value


def _open_unit(text: str) -> float:
    value = _positive(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``audit`` options on ``parser``."""
    parser.add_argument("--canaries", type=int_at_least(2), default=500, metavar="M",
                        help="canary clients, each inserted with probability 1/2 (default 500)")
    parser.add_argument("--clients", type=int_at_least(3), default=None, metavar="N",
                        help="clients per round, canary clients included (default canaries + 8)")
    parser.add_argument("--rounds", type=int_at_least(1), default=1, metavar="T",
                        help="rounds; every client takes part in each (default 1)")
    parser.add_argument("--dim", type=int_at_least(1), default=None, metavar="D",
                        help="model dimension, >= canaries (default: next power of two)")
    parser.add_argument("--clip-norm", type=_positive, default=1.0, metavar="C",
                        help="L2 clip of each update; canaries have this norm (default 1)")
    parser.add_argument("--noise-multiplier", type=_positive, default=2.0, metavar="Z",
                        help="noise guaranteed against the server / L2 sensitivity, per round (default 2)")
    parser.add_argument("--mechanism", choices=("discrete_gaussian", "skellam"), default="discrete_gaussian",
                        help="noise of each client's share (default discrete_gaussian)")
    parser.add_argument("--corrupt-fraction", type=fraction, default=0.0, metavar="F",
                        help="fraction of clients colluding with the server; their shares are removed (default 0)")
    parser.add_argument("--delta", type=_open_unit, default=1e-5, metavar="D", help="delta (default 1e-5)")
    parser.add_argument("--confidence", type=_open_unit, default=0.95, metavar="P",
                        help="confidence of the lower bound (default 0.95)")
    parser.add_argument("--accountant", default="rdp", help="accountant of the upper bound (default rdp)")
    parser.add_argument("--seed", type=int_at_least(0), default=None, metavar="S",
                        help="seed for a reproducible audit (default: fresh randomness)")
    parser.add_argument("--direct-sum", action="store_true",
                        help="sum the encoded vectors mod 2^bits directly instead of running the SecAgg+ "
                             "protocol each round (same sum, faster)")
    parser.add_argument("--no-noise", action="store_true",
                        help="DELIBERATELY BROKEN MECHANISM, for testing the auditor: clients add no noise "
                             "while the accountant still states the epsilon of --noise-multiplier (must exit 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--ledger", metavar="LEDGER",
                        help="with --report-dir: write this ledger's auditor report with the audit as a section")
    parser.add_argument("--report-dir", metavar="DIR", help="directory for the report (needs --ledger)")
    parser.add_argument("--format", choices=("html", "md", "json"), default="html",
                        help="report format with --report-dir (default html)")


def _round(x: float, up: bool) -> str:
    """``x`` to 4 significant digits, rounded up (``up``) or down: never on the unsafe side."""
    if x == 0.0 or not math.isfinite(x):
        return "inf" if math.isinf(x) else f"{x:g}"
    exp = math.floor(math.log10(abs(x))) - 3
    scaled = x / 10.0**exp
    r = math.ceil(scaled - 1e-9) if up else math.floor(scaled + 1e-9)
    value = r * 10.0**exp
    # the rounding must not cross x on the unsafe side
    while (up and value < x) or (not up and value > x):
        r = r + 1 if up else r - 1
        value = r * 10.0**exp
    return f"{value:.4g}" if value != 0 else "0"


def run(args: argparse.Namespace) -> int:
    """Run the audit; 0 if the lower bound stays at or below the stated epsilon, else CheckFailed (1)."""
    from secagg.audit import run_canary_audit

    if (args.ledger is None) != (args.report_dir is None):
        raise UsageError("--ledger and --report-dir go together")
    if args.clients is not None and args.clients < args.canaries:
        raise UsageError(f"--clients ({args.clients}) must include the {args.canaries} canary clients")
    if args.dim is not None and args.dim < args.canaries:
        raise UsageError(f"--dim ({args.dim}) must be >= --canaries ({args.canaries})")
    result = run_canary_audit(
        args.canaries,
        clients=args.clients,
        rounds=args.rounds,
        dim=args.dim,
        clip_norm=args.clip_norm,
        noise_multiplier=args.noise_multiplier,
        mechanism=args.mechanism,
        delta=args.delta,
        confidence=args.confidence,
        corrupt_fraction=args.corrupt_fraction,
        accountant=args.accountant,
        noise=not args.no_noise,
        aggregation="direct" if args.direct_sum else "protocol",
        seed=args.seed,
    )
    doc = result.to_dict()
    if args.json:
        print(json.dumps({k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in doc.items()}))
    else:
        lo, hi = _round(result.epsilon_lower, up=False), _round(result.epsilon_upper, up=True)
        if not result.noise:
            print("*** DELIBERATELY BROKEN MECHANISM (--no-noise): clients add no noise; the stated epsilon is "
                  "that of the configured noise. The audit must fail. ***")
        print(f"empirical lower bound: epsilon >= {lo}  (confidence {result.confidence:g}; one run, "
              f"{result.canaries} canaries, {result.included} inserted, {result.correct} of {result.guesses} "
              f"guesses right, k+ = {result.k_plus}, k- = {result.k_minus}, best of {result.one_run.choices} "
              "guess counts, Bonferroni)")
        print(f"accountant's upper bound: epsilon <= {hi}  (stated; {result.accountant}; release figure "
              f"{_round(result.epsilon_release, up=True)})")
        print(f"against: {result.adversary}")
        print(f"(delta = {result.delta:g}, {result.rounds} round(s) of {result.clients} clients, "
              f"{result.colluders} colluding, dim {result.dim}, clip {result.clip_norm:g}, noise multiplier "
              f"{result.noise_multiplier:g}, {result.mechanism}, {result.bits}-bit ring, sum by "
              f"{'the SecAgg+ protocol' if result.aggregation == 'protocol' else 'direct modular addition'})")
    if args.report_dir is not None:
        from dp.report import build_report, save_report

        report = build_report(args.ledger, audit=doc)
        path = save_report(report, args.report_dir, args.format)
        print(f"report written to {path}", file=sys.stderr)
    if not result.passed:
        raise CheckFailed(
            f"AUDIT FAILED: the empirical lower bound epsilon >= {_round(result.epsilon_lower, up=False)} exceeds "
            f"the stated epsilon {_round(result.epsilon_upper, up=True)} against the server (confidence "
            f"{result.confidence:g}): the mechanism leaks more than its accounting says"
            + (" (expected: --no-noise turned the noise off)" if not result.noise else "")
        )
    return 0
