"""``secagg alliance OUT M=PUBHEX ...``: assemble an alliance file from members' public keys.

The coordinator collects each member's ``M=PUBLIC_KEY_HEX`` line (printed by
``secagg keygen``) and writes the alliance's canonical JSON (:class:`secagg.Alliance`),
then distributes it out of band to the server and every member; it prints the alliance's
fingerprint, which every member should compare before joining.  A repeated member id, a
key that is not a 32-byte Ed25519 public key, two members with one key, or an existing
``OUT`` is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import os

from secagg.cli import UsageError
from secagg.errors import SecAggError
from secagg.identity import Alliance

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``alliance`` options."""
    parser.add_argument("out", metavar="OUT", help="the alliance file to write (must not exist)")
    parser.add_argument("members", metavar="M=PUBHEX", nargs="+", help="member id = public key (hex), per member")


def _member(text: str) -> tuple[int, bytes]:
    mid, sep, key = text.partition("=")
    if not sep or not mid.strip().isdigit():
        raise UsageError(f"expected M=PUBLIC_KEY_HEX, got {text!r}")
    try:
        raw = bytes.fromhex(key.strip())
    except ValueError as exc:
        raise UsageError(f"member {mid}: the public key is not hex") from exc
    return int(mid), raw


def run(args: argparse.Namespace) -> int:
    """Check every member, write the canonical JSON, print the fingerprint."""
    pairs = [_member(m) for m in args.members]
    ids = [m for m, _ in pairs]
    if len(set(ids)) != len(ids):
        raise UsageError(f"member ids repeat: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    try:
        alliance = Alliance(dict(pairs))
    except SecAggError as exc:
        raise UsageError(str(exc)) from exc
    try:
        fd = os.open(str(args.out), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as exc:
        raise UsageError(f"{args.out} exists; refusing to overwrite an alliance file") from exc
    except OSError as exc:
        raise UsageError(f"cannot create {args.out}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(alliance.to_json())
    print(f"alliance of {len(alliance)} members written to {args.out}; fingerprint {alliance.fingerprint}")
    return 0
