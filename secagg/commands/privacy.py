"""``secagg privacy``: epsilon of T rounds of the Poisson-subsampled Gaussian, or the calibrated noise.

Two figures are always printed, labelled: the release figure (with sampling
amplification; holds against anyone who does not know who took part) and the figure
without amplification (holds against the aggregation server, which sees who took part).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

NAME = "privacy"
HELP = "epsilon for T rounds of the subsampled Gaussian, or the calibrated noise"

_ACCOUNTANTS = ("rdp", "opacus-rdp", "prv", "pld")
_RELEASE = ("release adversary: anyone who sees the released model but does not know who took part "
            "(Poisson client-sampling amplification applies)")
_SERVER = ("server adversary: the aggregation server, which sees who took part "
           "(no sampling amplification)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``privacy`` options on ``parser``."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--noise-multiplier", type=float, metavar="Z",
                      help="noise standard deviation / L2 sensitivity; prints epsilon")
    what.add_argument("--target-epsilon", type=float, metavar="E",
                      help="epsilon budget; prints the smallest noise multiplier meeting it")
    parser.add_argument("--sampling-rate", type=float, required=True, metavar="Q",
                        help="Poisson sampling probability of each client per round, in (0, 1]")
    parser.add_argument("--rounds", type=int, required=True, metavar="T", help="number of rounds (>= 1)")
    parser.add_argument("--delta", type=float, required=True, metavar="D", help="target delta, in (0, 1)")
    parser.add_argument("--accountant", choices=_ACCOUNTANTS, default="rdp",
                        help="accountant (default rdp; prv and opacus-rdp need opacus, pld needs dp-accounting)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _epsilon(accountant: str, z: float, q: float, rounds: int, delta: float) -> float:
    from dp.accountants import make_accountant
    from dp.events import GaussianEvent, PoissonSampledEvent, PrivacyEvent

    acc = make_accountant(accountant)
    event: PrivacyEvent = GaussianEvent(z) if q == 1.0 else PoissonSampledEvent(q, GaussianEvent(z))
    acc.compose(event, rounds)
    return acc.get_epsilon(delta)


def _server_epsilon(accountant: str, z: float, rounds: int, delta: float) -> tuple[float, str]:
    """Epsilon without amplification; falls back to the rdp accountant if the backend fails."""
    from dp.errors import AccountingError

    try:
        return _epsilon(accountant, z, 1.0, rounds, delta), accountant
    except AccountingError:
        if accountant == "rdp":
            raise
        return _epsilon("rdp", z, 1.0, rounds, delta), "rdp"


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.6g}"


def run(args: argparse.Namespace) -> int:
    """Print the figures; return 0, or 2 (message on stderr) for bad input or a failed accountant."""
    from dp.calibration import calibrate_noise_multiplier
    from dp.errors import DPError, DPValueError

    q, rounds, delta = args.sampling_rate, args.rounds, args.delta
    out: dict[str, Any] = {"sampling_rate": q, "rounds": rounds, "delta": delta, "accountant": args.accountant}
    try:
        if args.target_epsilon is not None:
            z = calibrate_noise_multiplier(args.target_epsilon, delta, rounds, q, accountant=args.accountant)
            out["target_epsilon"] = args.target_epsilon
        else:
            z = args.noise_multiplier
            if not z > 0 or math.isinf(z):
                raise DPValueError(f"--noise-multiplier must be finite and > 0, got {z} (without noise epsilon "
                                   "is infinite)")
        eps = _epsilon(args.accountant, z, q, rounds, delta)
        eps_server, server_acc = _server_epsilon(args.accountant, z, rounds, delta)
    except DPError as exc:
        print(f"secagg privacy: error: {exc}", file=sys.stderr)
        return 2
    out.update({
        "noise_multiplier": z,
        "epsilon": eps,
        "against": _RELEASE,
        "epsilon_without_amplification": eps_server,
        "against_without_amplification": _SERVER,
        "accountant_without_amplification": server_acc,
    })
    if args.json:
        # strict JSON: a non-finite figure (only possible for absurdly small noise) is written as "inf"
        print(json.dumps({k: ("inf" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}))
        return 0
    if args.target_epsilon is not None:
        print(f"noise multiplier = {z:.6g}  (smallest meeting epsilon {args.target_epsilon:g} at delta {delta:g} "
              f"over {rounds} rounds, sampling rate {q:g}, accountant {args.accountant}; rounded up)")
    print(f"epsilon = {_fmt(eps)}  [{_RELEASE}]")
    print(f"epsilon without sampling amplification = {_fmt(eps_server)}  [{_SERVER}; accountant {server_acc}]")
    print(f"(delta = {delta:g}, rounds = {rounds}, noise multiplier = {z:.6g}, sampling rate = {q:g})")
    return 0
