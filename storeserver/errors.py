"""The store's one error hierarchy.

The engine raises these; the server sends ``code``, ``message`` and ``details`` over the wire;
the client raises the same class again from the code (``error_from_wire``). The API maps each
class to an HTTP status once, in ``api/errors.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class StoreError(Exception):
    """Base of every error the store or its client raises."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details: dict[str, Any] = details or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"


class BadRequest(StoreError):
    code = "BAD_REQUEST"


class NotFound(StoreError):
    code = "NOT_FOUND"


class Conflict(StoreError):
    code = "CONFLICT"


class VersionMismatch(StoreError):
    code = "VERSION_MISMATCH"


class LimitExceeded(StoreError):
    code = "LIMIT_EXCEEDED"


class RecordTooLarge(StoreError):
    """A write would leave a record larger than the store keeps (``details.max``): refused
    before anything changes, so every record fits in a reply."""

    code = "RECORD_TOO_LARGE"


class ValidationFailed(StoreError):
    """A record breaks its table's JSON Schema (``details.errors``: ``[{path, message}]``)."""

    code = "VALIDATION"


class CredentialRevoked(StoreError):
    """A write sent in the name of a credential (the API's caller) that has ended since the
    API checked it: the session was logged out or the user's sessions were ended (a password
    or role change, a deletion). See ``keys.KeyCommands.check_credential``."""

    code = "CREDENTIAL_REVOKED"


class MemoryLimit(StoreError):
    code = "MEMORY_LIMIT"


class UnknownCommand(StoreError):
    code = "UNKNOWN_COMMAND"


class ProtocolError(StoreError):
    """A frame that cannot be decoded; the connection that sent it is closed."""

    code = "PROTOCOL_ERROR"


class InternalError(StoreError):
    code = "INTERNAL"


class StoreUnavailable(StoreError):
    """Client side: the store cannot be reached, or the connection was lost mid-call."""

    code = "STORE_UNAVAILABLE"


class OutcomeUnknown(StoreUnavailable):
    """Client side: the connection was lost after a write was sent and before its reply came,
    so the store may have applied it or not. A kind of unavailability (callers that treat the
    store as away still do), but the API does not invite a blind retry of it."""

    code = "OUTCOME_UNKNOWN"


class SecretRefused(StoreUnavailable):
    """Client side: the store refused this client's handshake secret (``STORE_SECRET``
    missing, or not the store's). A ``StoreUnavailable`` to the requests that meet it (503
    until an operator mends the setting), but a start stops on it at once: no retry mends it
    (``api.store.connect_store``)."""


class SetupRefused(Exception):
    """Raised by a client's ``on_connect`` to end the connection attempt with its own verdict
    (a setting of the store no retry can mend): it reaches the caller as it is, where any
    other failure of the set-up is a ``StoreUnavailable`` retried after a backoff."""


class PersistenceError(StoreUnavailable):
    """The store cannot write its log (disk full, I/O error): writes are refused until it can.

    A kind of unavailability, so the API answers 503 with Retry-After as for a store outage.
    """

    code = "PERSISTENCE_ERROR"


class StoreBusy(StoreError):
    """Too many long commands are waiting for a turn in the store (``scheduler.WAITING_SCANS``).
    Not retried by the client: retrying adds to the queue it reports."""

    code = "STORE_BUSY"


class StoreTimeout(StoreError):
    """Client side: the store did not answer within the call's timeout."""

    code = "STORE_TIMEOUT"


_BY_CODE: dict[str, type[StoreError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        NotFound,
        Conflict,
        VersionMismatch,
        LimitExceeded,
        RecordTooLarge,
        ValidationFailed,
        CredentialRevoked,
        MemoryLimit,
        UnknownCommand,
        ProtocolError,
        InternalError,
        StoreUnavailable,
        PersistenceError,
        StoreBusy,
        StoreTimeout,
    )
}


def error_from_wire(code: str, message: str, details: dict[str, Any] | None) -> StoreError:
    """Rebuild the exception the server sent; unknown codes become ``InternalError``."""
    cls = _BY_CODE.get(code, InternalError)
    return cls(message, details if isinstance(details, dict) else {})
