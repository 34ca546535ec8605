"""Exception hierarchy of :mod:`secagg`.

Every exception the package raises derives from :class:`SecAggError`.  Argument errors
also derive from the matching builtin (``ValueError``/``TypeError``) so that callers who
already catch those keep working.  Each message says what to do about it.
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "EquivocationError",
    "HeadroomError",
    "InconsistentSharesError",
    "LocalProtocolError",
    "MessageError",
    "ProtocolAbort",
    "ProtocolError",
    "RemoteProtocolError",
    "SecAggError",
    "SecAggTypeError",
    "SecAggValueError",
    "SecurityViolation",
    "ShareError",
    "SignatureError",
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


class SignatureError(CryptoError):
    """An Ed25519 signature did not verify against the alliance's key of the party it
    names (or that party is not in the alliance).  The signed statement is forged or
    corrupted; never act on it."""


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
    """A protocol rule was broken.  Catch the two subclasses to know whose fault it is
    (as in h11): :class:`LocalProtocolError` (this process misused a session) or
    :class:`RemoteProtocolError` (a peer sent something wrong)."""


class LocalProtocolError(ProtocolError):
    """The caller misused a session: a method called in the wrong state or order (for
    example ``start()`` twice, an input given twice, ``close_stage()`` after the round
    ended).  The session is left exactly as it was; fix the calling code."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something the protocol forbids (undecodable, out of stage, from
    another sender, semantically invalid).

    Attributes:
        client: the offending client id as the transport authenticated it; ``0`` means
            the server (raised by a client session); ``None`` when the transport cannot
            tell who sent it.
        stage: the protocol stage (a :class:`secagg.messages.Stage` value such as
            ``"share_keys"``) in which it happened, or ``None`` outside a stage.

    A :class:`~secagg.client.ClientSession` that raises it has failed (an honest client
    stops talking to a server that broke the protocol).  A
    :class:`~secagg.server.ServerSession` never fails on it: it excludes the offending
    client from the round and records the reason (see
    :attr:`secagg.server.AggregateResult.excluded`).
    """

    def __init__(self, message: str, *, client: int | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.client = client
        self.stage = stage


class SecurityViolation(RemoteProtocolError):
    """The peer asked for something an honest party must refuse (for example both
    shares of one client); the refusing session fails and reveals nothing."""


class EquivocationError(SecurityViolation):
    """The server told two clients two different survivor sets in one round (it
    equivocated).  Raised by a client that holds its own signed statement and another
    client's validly signed, conflicting statement; the round ends for it and nothing is
    revealed.

    Attributes:
        statements: the two conflicting :class:`secagg.identity.SignedStatement` (this
            client's and the other's); anyone with the alliance can check both signatures
            (:meth:`secagg.identity.SignedStatement.verify`) and see the sets differ.
    """

    def __init__(self, message: str, *, statements: tuple[object, ...] = (), stage: str | None = None) -> None:
        super().__init__(message, client=0, stage=stage)
        self.statements = tuple(statements)


class ProtocolAbort(SecAggError):
    """The round cannot complete safely (too few survivors, a survivor graph piece
    below the cohort floor, unrecoverable secrets).  Nothing about individual inputs
    was revealed; run a new round.

    The attributes are filled in by the round driver (``None``/empty when a session raises).

    Attributes:
        stage: the stage whose closing aborted the round.
        dropped: per stage, the client ids that went silent.
        excluded: client id -> why it was excluded for misbehaviour.
        evidence: client id -> :class:`secagg.identity.Evidence` of a provable fault
            (active mode), e.g. a dealer whose signed shares disagree with its commitment.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        dropped: dict[str, tuple[int, ...]] | None = None,
        excluded: dict[int, str] | None = None,
        evidence: dict[int, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = message
        self.stage = stage
        self.dropped: dict[str, tuple[int, ...]] = dict(dropped or {})
        self.excluded: dict[int, str] = dict(excluded or {})
        self.evidence: dict[int, object] = dict(evidence or {})
