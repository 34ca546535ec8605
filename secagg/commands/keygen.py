"""``secagg keygen KEYFILE``: a member's long-term Ed25519 identity key for active mode.

Each member of an alliance runs it on its own machine: the private key (64 hex
characters, the 32-byte seed) is written to ``KEYFILE``, readable by its owner only, and
the public key is printed as ``MEMBER_ID=HEX`` for the coordinator, who assembles the
alliance file with ``secagg alliance`` and distributes it out of band.  The private key
never leaves the member's machine.  An existing file is never overwritten (exit 2).
"""

from __future__ import annotations

import argparse
import os

from secagg.cli import UsageError, int_at_least
from secagg.identity import IdentityKey

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``keygen`` options."""
    parser.add_argument("keyfile", metavar="KEYFILE", help="where to write the private key (must not exist)")
    parser.add_argument(
        "--member-id", type=int_at_least(1), required=True, metavar="M", help="this member's id in the alliance"
    )


def run(args: argparse.Namespace) -> int:
    """Generate the key, write it with mode 0600, print ``M=PUBLIC_KEY_HEX``."""
    path = str(args.keyfile)
    key = IdentityKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise UsageError(f"{path} exists; refusing to overwrite an identity key") from exc
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.private_bytes().hex() + "\n")
    print(f"{args.member_id}={key.public_bytes().hex()}")
    return 0
