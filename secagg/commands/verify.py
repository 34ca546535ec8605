"""``secagg verify LEDGER``: check a privacy ledger's hash chain, signatures and anchors.

Exit status: 0 and a one-line summary with the head (``COUNT:HASH``) when the ledger is
intact; 1 and the first bad line with the reason when it is not; 2 when the ledger or a key
file cannot be read.  Without an anchor (``--expect-head``, ``--anchor`` or a signed head
checked with ``--pubkey``) removal of trailing records cannot be detected, and the summary
says so: keep the printed head somewhere the ledger's writer cannot change it.

With ``--alliance FILE`` (the alliance's canonical JSON, :class:`secagg.Alliance`) the
command also checks every round's audit trail (:func:`secagg.rounds.verify_contributions`):
every signed advertisement and every signature of the survivor set against the alliance,
and prints who contributed to which round (round, client id, identity-key fingerprint,
spec fingerprint, model digest).  Any round that does not verify -- a bad or missing
signature, no trail, or a semi-honest round, in which nothing is signed -- ends the
command with status 1 and one line naming the entry.
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
    parser.add_argument(
        "--alliance",
        metavar="FILE",
        help="the alliance's identity keys (secagg.Alliance JSON): check every signed contribution of every round "
        "and print who contributed to which round",
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
    contributions: list[dict[str, object]] | None = None
    if res.ok and args.alliance is not None:
        contributions = _contributions(args.ledger, args.alliance)
    if args.json:
        out = res.to_dict()
        if contributions is not None:
            out["contributions"] = contributions
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"{args.ledger}: {res.summary()}")
        for c in contributions or ():
            md = c["model_digest"] or "-"
            print(
                f"round {c['round']}: client {c['client']} key {str(c['key_fingerprint'])[:16]} "
                f"spec {str(c['spec'])[:16]} model {str(md)[:16]}"
                + ("" if c["signed_survivor_set"] else " (input in the sum; did not sign the survivor set)")
            )
        if contributions is not None:
            print(f"{len(contributions)} contributions verified against the alliance")
    return 0 if res.ok else 1


def _contributions(ledger: str, alliance_file: str) -> list[dict[str, object]]:
    """Every round's verified contributions; CheckFailed naming the first entry that fails."""
    from dp.errors import LedgerError
    from dp.ledger import read_ledger
    from secagg.cli import CheckFailed
    from secagg.errors import MessageError, SecAggError
    from secagg.identity import Alliance
    from secagg.rounds import verify_contributions

    try:
        with open(alliance_file, "rb") as fh:
            alliance = Alliance.from_json(fh.read())
    except (OSError, MessageError) as exc:
        raise UsageError(f"alliance file {alliance_file}: {exc}") from exc
    try:
        _header, records = read_ledger(ledger)
    except (LedgerError, OSError) as exc:  # pragma: no cover - verify_ledger passed just before
        raise UsageError(str(exc)) from exc
    out: list[dict[str, object]] = []
    for i, record in enumerate(records):
        line = i + 2  # the header is line 1
        try:
            found = verify_contributions(record, alliance)
        except SecAggError as exc:
            raise CheckFailed(f"{ledger}: line {line} (round {record.get('round')!r}) does not verify: {exc}") from exc
        out.extend(c.to_dict() for c in found)
    return out
