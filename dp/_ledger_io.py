"""Ledger file I/O: reading, one-``write`` appends with fsync and rollback, directory fsync and
the POSIX advisory lock (one job of :mod:`dp.ledger`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dp.errors import LedgerError

try:  # POSIX advisory lock; absent on Windows, where appends are not locked.
    import fcntl as _fcntl
except ImportError:  # pragma: no cover
    _fcntl = None  # type: ignore[assignment]


def _lock(fd: int) -> None:
    """Take the POSIX advisory exclusive lock on ``fd`` (released when ``fd`` is closed);
    a no-op where ``fcntl`` is missing."""
    if _fcntl is not None:
        _fcntl.flock(fd, _fcntl.LOCK_EX)


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {os.fspath(path)!r}: {exc}") from exc


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows); best effort
        fd = os.open(path.parent if str(path.parent) else Path("."), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all_or_rollback(fd: int, data: bytes, old_size: int) -> None:
    """Write ``data`` with one ``os.write`` call and fsync; on any failure truncate back to ``old_size``."""
    try:
        n = os.write(fd, data)
        if n != len(data):
            raise OSError(f"short write: {n} of {len(data)} bytes")
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, old_size)
            os.fsync(fd)
        except OSError as exc2:
            raise LedgerError(
                f"write failed ({exc}) and the rollback failed too ({exc2}): the ledger may end in a torn line"
            ) from exc
        raise LedgerError(f"write failed ({exc}); the ledger was left unchanged") from exc
