"""Exception hierarchy of :mod:`dp`: everything derives from :class:`DPError`."""

from __future__ import annotations

__all__ = [
    "AccountingError",
    "BudgetExceededError",
    "DPError",
    "DPTypeError",
    "DPValueError",
    "LedgerError",
    "LedgerVerificationError",
]


class DPError(Exception):
    """Base class of every error raised by :mod:`dp`."""


class DPValueError(DPError, ValueError):
    """Invalid parameter value (sigma <= 0, NaN, delta outside (0, 1), ...)."""


class DPTypeError(DPError, TypeError):
    """Argument of the wrong type."""


class AccountingError(DPValueError):
    """An accountant cannot compute the requested figure; the accountant is unchanged."""


class BudgetExceededError(DPError):
    """Recording this event would spend more than the declared privacy budget."""


class LedgerError(DPError):
    """A ledger cannot be read or written (I/O, torn line, wrong format)."""


class LedgerVerificationError(LedgerError):
    """A ledger failed verification; ``line`` is the 1-based number of the first bad line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line
