"""The ``secagg`` console command.

Each subcommand lives in its own module under :mod:`secagg.commands` exposing
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported lazily so ``secagg --help`` works without optional extras installed.

Exit status, for every subcommand, decided here and only here (:func:`exit_code`):

* 0: success.
* 1: the work ran and failed: a round aborted (:class:`~secagg.errors.ProtocolAbort`),
  a check failed (:class:`CheckFailed`: a wrong sum, a ledger that does not verify, a
  threat model no safe configuration meets), or an unexpected error.
* 2: a usage error: a bad option (argparse, :class:`UsageError`), an invalid argument
  value or type (:class:`~secagg.errors.SecAggValueError`,
  :class:`~secagg.errors.SecAggTypeError`, :class:`dp.errors.DPValueError`,
  :class:`dp.errors.DPTypeError`), or a file that cannot be read or written.
* 130: interrupted (Ctrl-C).

Errors are one line on stderr, ``secagg COMMAND: reason``; ``--debug`` (before or after
the subcommand) shows the traceback instead.  A closed stdout (``secagg ... | head -1``)
ends the command quietly, as the Python documentation recommends.

Options shared by several subcommands are checked here too (:func:`check_common`), so a
subcommand cannot forget them: every ``--clients`` value must be at least 3 (a secure
round needs 3 clients).  Subcommands can use the argparse types :func:`int_at_least` and
:func:`fraction` for their own options, and raise :class:`UsageError` or
:class:`CheckFailed` from ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from secagg import __version__
from secagg.errors import ProtocolAbort, SecAggTypeError, SecAggValueError

__all__ = ["COMMANDS", "CheckFailed", "UsageError", "check_common", "exit_code", "fraction", "int_at_least", "main"]

# (subcommand, module, one-line help).  Help text is kept here so listing the
# commands never imports torch, matplotlib or flwr.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("round", "secagg.commands.round", "run one simulated secure-aggregation round and print what happened"),
    ("demo", "secagg.commands.demo", "private federated training demo (SecAgg+ and distributed DP)"),
    ("privacy", "secagg.commands.privacy", "epsilon for T rounds of the subsampled Gaussian, or the calibrated noise"),
    ("verify", "secagg.commands.verify", "verify a privacy ledger's hash chain and signatures"),
    ("report", "secagg.commands.report", "write an auditor's privacy report from a ledger"),
    ("bench", "secagg.commands.bench", "benchmark aggregation overhead against baselines"),
    ("audit", "secagg.commands.audit", "empirical epsilon lower bound from canaries beside the stated upper bound"),
    ("keygen", "secagg.commands.keygen", "a member's Ed25519 identity key for active mode (prints its public key)"),
    ("alliance", "secagg.commands.alliance", "assemble an alliance file from members' public keys"),
)

MIN_CLIENTS = 3
"""Smallest ``--clients`` any subcommand accepts (a secure round needs three clients)."""


class UsageError(SecAggValueError):
    """A bad option or option combination: exit status 2, one line."""


class CheckFailed(Exception):
    """The work ran and its result is wrong or unusable (a failed round or check): exit status 1."""


# --------------------------------------------------------------------------- argparse types


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``low`` (also ``1e4`` and ``10**4``), else a usage error."""

    def parse(text: str) -> int:
        try:
            if "**" in text:
                base, exp = (int(part) for part in text.split("**", 1))
                if exp < 0:
                    raise ValueError(text)
                value = int(base**exp)
            else:
                f = float(text)
                if not f.is_integer():
                    raise ValueError(text)
                value = int(f)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def fraction(text: str) -> float:
    """An argparse ``type``: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def check_common(command: str, args: argparse.Namespace) -> None:
    """Checks of options that mean the same in every subcommand.

    Raises:
        UsageError: a ``--clients`` value below :data:`MIN_CLIENTS`.
    """
    clients = getattr(args, "clients", None)
    values = clients if isinstance(clients, (list, tuple)) else [clients]
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and v < MIN_CLIENTS:
            raise UsageError(f"--clients must be >= {MIN_CLIENTS} (a secure round needs {MIN_CLIENTS}), got {v}")


# --------------------------------------------------------------------------- exit codes


def _dp_usage_error(exc: BaseException) -> bool:
    try:
        from dp.errors import AccountingError, DPTypeError, DPValueError, LedgerError, LedgerVerificationError
    except ImportError:  # pragma: no cover - dp ships with secagg
        return False
    if isinstance(exc, (AccountingError, LedgerVerificationError)):
        return False  # a computation or check that failed
    return isinstance(exc, (DPValueError, DPTypeError, LedgerError))


def exit_code(exc: BaseException) -> int:
    """The exit status of a subcommand that raised ``exc`` (see the module docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, (CheckFailed, ProtocolAbort)):
        return 1
    if isinstance(exc, (UsageError, SecAggValueError, SecAggTypeError, FileNotFoundError, IsADirectoryError)):
        return 2
    if isinstance(exc, (NotADirectoryError, FileExistsError, PermissionError)):
        return 2
    if _dp_usage_error(exc):
        return 2
    return 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    text = " ".join(str(exc).split())  # one line
    known = (UsageError, CheckFailed, ProtocolAbort, SecAggValueError, SecAggTypeError)
    if isinstance(exc, known) or _dp_usage_error(exc) or exit_code(exc) == 2:
        return text or type(exc).__name__
    if type(exc).__module__.startswith("dp."):
        return text or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {text} (rerun with --debug for the traceback)"


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``secagg round: error: ... (see secagg round --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    parser = _Parser(prog="secagg", description="Secure aggregation with distributed DP.")
    parser.add_argument("--version", action="version", version=f"secagg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules: dict[str, Any] = {}
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, modname, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == wanted:
            try:
                mod = importlib.import_module(modname)
            except ModuleNotFoundError as exc:
                parser.exit(2, f"secagg {name}: not available ({exc}); install the matching extra\n")
            mod.add_arguments(p)
            modules[name] = mod
    return parser, modules


def _quiet_broken_pipe() -> int:
    # https://docs.python.org/3/library/signal.html#note-on-sigpipe: point stdout at devnull
    # so the interpreter's final flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secagg`` command; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        parser, modules = _build_parser(args_list)
        args = parser.parse_args(args_list)
        debug = bool(getattr(args, "debug", False))
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        check_common(args.command, args)
        rc = int(modules[args.command].run(args))
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return rc
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _quiet_broken_pipe()
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException as exc:
        if debug and not isinstance(exc, KeyboardInterrupt):
            traceback.print_exc()
            return exit_code(exc)
        name = next((a for a in args_list if not a.startswith("-")), None)
        prefix = f"secagg {name}" if name in {c[0] for c in COMMANDS} else "secagg"
        with contextlib.suppress(BrokenPipeError):  # stderr closed too
            print(f"{prefix}: {_reason(exc)}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    # Under ``python -m secagg.cli`` this module runs as ``__main__`` while the commands
    # import ``secagg.cli``: call that copy so its exception classes are the ones raised.
    from secagg.cli import main as _main

    raise SystemExit(_main())
