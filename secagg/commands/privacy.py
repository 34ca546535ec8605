"""``secagg privacy``: epsilon of T rounds of the Poisson-subsampled Gaussian, or the calibrated noise.

Two figures are always printed, labelled: the release figure (with sampling
amplification; holds against anyone who does not know who took part) and the figure
without amplification (holds against the aggregation server, which sees who took part).
Sampling can only lower epsilon, so the release figure printed is never above the other
one (if an accountant's sampled bound is looser than its unsampled one, the unsampled
bound, valid for the sampled mechanism too, is printed for both).

Numbers are parsed here rather than by argparse so that every bad value (``--rounds
1e3``, a 5000-digit count, ``--delta 1e-400``) is one ``secagg privacy: error:`` line on
stderr and exit status 2, never a traceback.
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
    what.add_argument("--noise-multiplier", metavar="Z",
                      help="noise standard deviation / L2 sensitivity; prints epsilon")
    what.add_argument("--target-epsilon", metavar="E",
                      help="epsilon budget; prints the smallest noise multiplier meeting it")
    parser.add_argument("--sampling-rate", required=True, metavar="Q",
                        help="Poisson sampling probability of each client per round, in (0, 1]")
    parser.add_argument("--rounds", required=True, metavar="T", help="number of rounds (1 to 2**53)")
    parser.add_argument("--delta", required=True, metavar="D", help="target delta, in (0, 1)")
    parser.add_argument("--accountant", choices=_ACCOUNTANTS, default="rdp",
                        help="accountant (default rdp; prv and opacus-rdp need opacus, pld needs dp-accounting)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _epsilon_and_path(accountant: str, z: float, q: float, rounds: int, delta: float) -> tuple[float, str]:
    """(epsilon, how it was composed: "analytic"/"numeric" for pld, "rdp" curves otherwise)."""
    from dp.accountants import make_accountant
    from dp.events import GaussianEvent, PoissonSampledEvent, PrivacyEvent

    acc = make_accountant(accountant)
    event: PrivacyEvent = GaussianEvent(z) if q == 1.0 else PoissonSampledEvent(q, GaussianEvent(z))
    acc.compose(event, rounds)
    return acc.get_epsilon(delta), str(getattr(acc, "composition", "numeric" if accountant == "prv" else "rdp"))


def _epsilon(accountant: str, z: float, q: float, rounds: int, delta: float) -> float:
    return _epsilon_and_path(accountant, z, q, rounds, delta)[0]


def _server_epsilon(accountant: str, z: float, rounds: int, delta: float) -> tuple[float, str, str]:
    """(epsilon without amplification, accountant used, composition path); falls back to rdp if the backend fails."""
    from dp.errors import AccountingError

    try:
        eps, path = _epsilon_and_path(accountant, z, 1.0, rounds, delta)
        return eps, accountant, path
    except AccountingError:
        if accountant == "rdp":
            raise
        return _epsilon("rdp", z, 1.0, rounds, delta), "rdp", "rdp"


def _real(flag: str, text: str) -> float:
    from dp.errors import DPValueError

    try:
        return float(text)
    except ValueError:
        raise DPValueError(f"{flag} must be a number, got {text[:40]!r}") from None


def _count(flag: str, text: str) -> int:
    from dp._validate import check_int
    from dp.errors import DPValueError
    from dp.events import MAX_COUNT

    body = text.strip()
    digits = body[1:] if body[:1] in "+-" else body
    if not digits.isdecimal() or not digits.isascii():
        raise DPValueError(f"{flag} must be a whole number, got {text[:40]!r}")
    if len(digits.lstrip("0")) > len(str(MAX_COUNT)):
        raise DPValueError(f"{flag} must be <= {MAX_COUNT}, got a {len(digits)}-digit number")
    return check_int(flag, int(body), low=1, high=MAX_COUNT)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.6g}"


def run(args: argparse.Namespace) -> int:
    """Print the figures; return 0, or 2 (message on stderr) for bad input or a failed accountant."""
    from dp.calibration import calibrate_noise_multiplier
    from dp.errors import DPError, DPValueError

    try:
        q = _real("--sampling-rate", args.sampling_rate)
        rounds = _count("--rounds", args.rounds)
        delta = _real("--delta", args.delta)
        out: dict[str, Any] = {"sampling_rate": q, "rounds": rounds, "delta": delta, "accountant": args.accountant}
        if args.target_epsilon is not None:
            target = _real("--target-epsilon", args.target_epsilon)
            z = calibrate_noise_multiplier(target, delta, rounds, q, accountant=args.accountant)
            out["target_epsilon"] = target
        else:
            z = _real("--noise-multiplier", args.noise_multiplier)
            if not z > 0 or math.isinf(z):
                raise DPValueError(f"--noise-multiplier must be finite and > 0, got {z} (without noise epsilon "
                                   "is infinite)")
        eps = _epsilon(args.accountant, z, q, rounds, delta)
        eps_server, server_acc, server_path = _server_epsilon(args.accountant, z, rounds, delta)
    except DPError as exc:
        print(f"secagg privacy: error: {exc}", file=sys.stderr)
        return 2
    eps = min(eps, eps_server)  # sampling can only lower epsilon: the unsampled bound holds for both
    out.update({
        "noise_multiplier": z,
        "epsilon": eps,
        "against": _RELEASE,
        "epsilon_without_amplification": eps_server,
        "against_without_amplification": _SERVER,
        "accountant_without_amplification": server_acc,
        "composition_without_amplification": server_path,
    })
    if args.json:
        # strict JSON: a non-finite figure (only possible for absurdly small noise) is written as "inf"
        print(json.dumps({k: ("inf" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}))
        return 0
    if "target_epsilon" in out:
        print(f"noise multiplier = {z:.6g}  (smallest meeting epsilon {out['target_epsilon']:g} at delta {delta:g} "
              f"over {rounds} rounds, sampling rate {q:g}, accountant {args.accountant}; rounded up)")
    print(f"epsilon = {_fmt(eps)}  [{_RELEASE}]")
    print(f"epsilon without sampling amplification = {_fmt(eps_server)}  [{_SERVER}; accountant {server_acc}]")
    print(f"(delta = {delta:g}, rounds = {rounds}, noise multiplier = {z:.6g}, sampling rate = {q:g})")
    return 0
