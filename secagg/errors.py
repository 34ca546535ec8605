"""Exception hierarchy of :mod:`secagg`.

Every exception the package raises derives from :class:`SecAggError`.  Argument errors
also derive from the matching builtin (``ValueError``/``TypeError``) so that callers who
already catch those keep working.  Each message says what to do about it.
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "HeadroomError",
    "InconsistentSharesError",
    "MessageError",
    "ProtocolAbort",
    "ProtocolError",
    "SecAggError",
    "SecAggTypeError",
    "SecAggValueError",
    "SecurityViolation",
    "ShareError",
    "UnsafeParametersError",
]


class SecAggError(Exception):
    """Base class of every error raised by :mod:`secagg`."""


class SecAggValueError(SecAggError, ValueError):
    """An argument has the right type but an invalid value."""


class SecAggTypeError(SecAggError, TypeError):
    """An argument has the wrong type."""


class CryptoError(SecAggError):
    """A cryptographic check failed (bad tag, wrong key, low-order public key).

    Treat the message as forged or corrupted; never retry with the same inputs.
    """


class ShareError(SecAggValueError):
    """Secret shares are too few, duplicated, out of range or of the wrong length."""


class InconsistentSharesError(ShareError):
    """The given shares do not lie on one polynomial of the expected degree.

    ``bad`` names the x-coordinates of the shares found to be wrong when error-correcting
    decoding succeeded (at most ``(m - t) // 2`` of ``m`` shares), and is ``None`` when
    there were too many errors to tell which ones.
    """

    def __init__(self, message: str, bad: tuple[int, ...] | None = None) -> None:
        super().__init__(message)
        self.bad = bad


class HeadroomError(SecAggValueError):
    """The sum could wrap the modulus: use more bits, fewer clients or a smaller clip."""


class UnsafeParametersError(SecAggValueError):
    """Protocol parameters below a safe bound (threshold, degree, cohort floor)."""


class MessageError(SecAggValueError):
    """A message failed to decode or validate (version, length, field range)."""


class ProtocolError(SecAggError):
    """A message is illegal in the session's current state (replayed, out of order,
    from another round, from an unknown sender).  The session moves to a sticky
    failed state; start a new round."""


class SecurityViolation(ProtocolError):
    """The peer asked for something an honest party must refuse (for example both
    shares of one client); the refusing session fails and reveals nothing."""


class ProtocolAbort(SecAggError):
    """The round cannot complete safely (too few survivors, a survivor graph piece
    below the cohort floor, unrecoverable secrets).  Nothing about individual inputs
    was revealed; run a new round."""
