"""``secagg report LEDGER --out DIR``: write an auditor's privacy report from a ledger.

Writes ``DIR/report.<format>`` and ``DIR/epsilon.png`` (see :mod:`dp.report`) and prints
the report's path and its warnings.  Exit status: 0 when the report was written and the
ledger verified; 1 when the report was written but the ledger failed verification (the
report then leads with the failure); 2 when no report could be written (unreadable ledger
or key, an unknown or uninstalled ``--accountant``, ``--out`` naming a file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from secagg.cli import UsageError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``report`` options."""
    parser.add_argument("ledger", metavar="LEDGER", help="the ledger file (JSON Lines)")
    parser.add_argument("--out", metavar="DIR", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--format", choices=("html", "md", "json"), default="html", help="report format (default: html)"
    )
    parser.add_argument("--expect-head", metavar="HASH", help="head the ledger must end at: HASH or COUNT:HASH")
    parser.add_argument("--pubkey", metavar="FILE", help="signer's Ed25519 public key (raw, hex or PEM)")
    parser.add_argument("--signed-head", metavar="FILE", help="signed head file to check with --pubkey")
    parser.add_argument(
        "--anchor", metavar="COUNT:HASH", action="append", default=[], help="a head the ledger must contain"
    )
    from dp.accountants import ACCOUNTANT_NAMES

    parser.add_argument(
        "--accountant",
        action="append",
        default=None,
        choices=ACCOUNTANT_NAMES,
        help="replay only with this accountant (repeatable; default: every available one)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the report; return 0 (verified), 1 (written, verification failed) or 2 (not written)."""
    from dp.accountants import available_accountants
    from dp.errors import DPError
    from dp.report import build_report, save_report

    missing = sorted(set(args.accountant or ()) - set(available_accountants()))
    if missing:
        raise UsageError(
            f"--accountant {', '.join(missing)}: its package is not installed (available: "
            f"{', '.join(available_accountants())})"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} is an existing file; give a folder (created if missing)")
    try:
        report = build_report(
            args.ledger,
            args.expect_head,
            args.pubkey,
            signed_head=args.signed_head,
            anchors=args.anchor,
            accountants=args.accountant,
        )
        path = save_report(report, args.out, args.format)
    except (DPError, OSError) as exc:  # no report written: the ledger or a key cannot be used
        raise UsageError(str(exc)) from exc
    print(f"report written to {path}")
    print(f"verification: {report['verification']['summary']}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    return 0 if report["verification"]["ok"] else 1
