"""The ``secagg`` console command.

Each subcommand lives in its own module under :mod:`secagg.commands` exposing
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported lazily so ``secagg --help`` works without optional extras installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from secagg import __version__

# (subcommand, module, one-line help).  Help text is kept here so listing the
# commands never imports torch, matplotlib or flwr.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("round", "secagg.commands.round", "run one simulated secure-aggregation round and print what happened"),
    ("demo", "secagg.commands.demo", "private federated training demo (SecAgg+ and distributed DP)"),
    ("privacy", "secagg.commands.privacy", "epsilon for T rounds of the subsampled Gaussian, or the calibrated noise"),
    ("verify", "secagg.commands.verify", "verify a privacy ledger's hash chain and signatures"),
    ("report", "secagg.commands.report", "write an auditor's privacy report from a ledger"),
    ("bench", "secagg.commands.bench", "benchmark aggregation overhead against baselines"),
)


def _build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="secagg", description="Secure aggregation with distributed DP.")
    parser.add_argument("--version", action="version", version=f"secagg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, Any] = {}
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, modname, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            try:
                mod = importlib.import_module(modname)
            except ModuleNotFoundError as exc:
                parser.exit(2, f"secagg {name}: not available ({exc}); install the matching extra\n")
            mod.add_arguments(p)
            modules[name] = mod
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secagg`` command; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, modules = _build_parser(args_list)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    rc = modules[args.command].run(args)
    return int(rc)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
