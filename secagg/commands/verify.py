"""``secagg verify LEDGER``: check a privacy ledger's hash chain, signatures and anchors.

Exit status: 0 and a one-line summary with the head (``COUNT:HASH``) when the ledger is
intact; 1 and the first bad line with the reason when it is not; 2 when the ledger or a key
file cannot be read.  Without an anchor (``--expect-head``, ``--anchor`` or a signed head
checked with ``--pubkey``) removal of trailing records cannot be detected, and the summary
says so: keep the printed head somewhere the ledger's writer cannot change it.
"""

from __future__ import annotations

import argparse
import json

from secagg.cli import UsageError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``verify`` options."""
    parser.add_argument("ledger", metavar="LEDGER", help="the ledger file (JSON Lines)")
    parser.add_argument(
        "--expect-head",
        metavar="HASH",
        help="head the ledger must end at: HASH of the last line, or COUNT:HASH (detects truncation)",
    )
    parser.add_argument(
        "--pubkey",
        metavar="FILE",
        help="signer's Ed25519 public key (raw, hex or PEM); every line must be signed by it, and the signed "
        "head LEDGER.head (or --signed-head) is checked when present",
    )
    parser.add_argument("--signed-head", metavar="FILE", help="signed head file to check with --pubkey")
    parser.add_argument(
        "--anchor",
        metavar="COUNT:HASH",
        action="append",
        default=[],
        help="a head the ledger must contain (e.g. one a client received in a round configuration); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Verify the ledger; return 0 if intact, 1 if not, 2 if it cannot be read."""
    from dp.errors import LedgerError
    from dp.ledger import verify_ledger

    try:
        res = verify_ledger(
            args.ledger,
            expect_head=args.expect_head,
            pubkey=args.pubkey,
            signed_head=args.signed_head,
            anchors=args.anchor,
        )
    except (LedgerError, OSError) as exc:  # the ledger or a key file cannot be read
        raise UsageError(str(exc)) from exc
    if args.json:
        print(json.dumps(res.to_dict(), sort_keys=True))
    else:
        print(f"{args.ledger}: {res.summary()}")
    return 0 if res.ok else 1
