"""The errors a CSV import answers with: an atomic import over its bounds, a store error
that interrupted a default import (what was written, where to resume), and a store's refusal
of one row of a batch turned into row errors.

Kept apart from the import's driver (``csv_import``) and its chunk writer
(``csv_import_batches``), which both translate store errors the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from api.errors import STORE_STATUS, ApiError, schema_error_details
from api.services.csv_rows import RowError
from storeserver.errors import (
    CredentialRevoked,
    MemoryLimit,
    NotFound,
    PersistenceError,
    StoreBusy,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    ValidationFailed,
)

if TYPE_CHECKING:
    from api.services.csv_import_report import ImportReport


def atomic_too_big(limit: str, found: str) -> ApiError:
    return ApiError(
        400,
        "LIMIT_EXCEEDED",
        f"an atomic import takes {limit}; import without atomic=true, or split the file",
        [{"field": "atomic", "message": found}],
    )


def interrupted(exc: StoreError, report: ImportReport, note: str | None = None) -> ApiError:
    """A store error that stopped a default import after rows were written (or may have been):
    its status and code, with what was written and where to resume (a retry of the whole file
    would import the written rows again: new ids for rows without one). ``note``: said after
    why it stopped."""
    status, code = status_of(exc)
    last = report.last_row_written
    parts = [f"the import stopped: {stopped_because(exc)}"]
    if note:
        parts.append(note)
    if report.imported:
        parts.append(f"{report.imported} rows were imported, up to row {last}")
    else:
        parts.append("no row was confirmed imported")
    if report.unconfirmed is not None:
        first, end = report.unconfirmed
        parts.append(
            f"rows {first} to {end} were being written and may have been imported: check them"
            " before going on"
        )
    message = "; ".join(parts)
    if last:
        message += (
            f". Importing the whole file again would import rows 1 to {last} again (rows"
            f" without an id get new ids): resume from row {last + 1} instead"
        )
    summary = {
        "field": None,
        "message": f"{report.imported} rows imported, up to row {last}",
        "imported": report.imported,
        "failed": report.failed,
        "last_row_written": last,
        "resume_from_row": last + 1,
        "unconfirmed_rows": list(report.unconfirmed) if report.unconfirmed else None,
    }
    return ApiError(status, code, message, [summary, *report.errors])


def status_of(exc: StoreError) -> tuple[int, str]:
    """The status and code the API answers for ``exc`` (``api.errors.STORE_STATUS``)."""
    return next(
        (found for cls, found in STORE_STATUS.items() if isinstance(exc, cls)),
        (500, "INTERNAL_ERROR"),
    )


def stopped_because(exc: StoreError) -> str:
    # Not the store client's own message for these: it may name the socket path.
    if isinstance(exc, PersistenceError):
        return "the store could not write its data directory (disk full?)"
    if isinstance(exc, StoreUnavailable):
        return "the store became unavailable"
    if isinstance(exc, StoreTimeout):
        return "the store did not answer in time"
    if isinstance(exc, StoreBusy):
        return "the store was busy"
    if isinstance(exc, MemoryLimit):
        return "the store reached its memory limit"
    if isinstance(exc, CredentialRevoked):  # not which check, as for every token refused
        return "the access token is no longer valid"
    return exc.message if status_of(exc)[0] != 500 else "the store failed"


def may_have_landed(exc: StoreError) -> bool:
    """A batch whose call failed this way may have been applied: the connection was lost
    after it was sent, or no answer came in time. (A persistence error is the store's answer.)"""
    return isinstance(exc, StoreTimeout | StoreUnavailable) and not isinstance(
        exc, PersistenceError
    )


def failed_index(exc: StoreError, size: int) -> int | None:
    """Which op of the batch the store refused; ``None`` for errors about no op in particular,
    which the caller raises on (with a bare ``raise``: raised here, the error's traceback held
    this frame, which held the error, a cycle that kept a failed import's rows in the worker
    until a full collection; QA: ~500 MB a time for one huge JSON cell)."""
    if isinstance(exc, StoreUnavailable | StoreTimeout | MemoryLimit | NotFound):
        return None  # NotFound: the table, dropped during the import (``create: false``)
    index = exc.details.get("index")
    if type(index) is not int or not 0 <= index < size:
        return None
    return index


def store_row_errors(exc: StoreError, number: int) -> list[RowError]:
    """The store's refusal of row ``number``: a table schema's, one error per violation
    naming its field (as ``POST /data`` does); else one, with the field its details name."""
    if isinstance(exc, ValidationFailed):
        found = schema_error_details(exc, ())
        return [RowError(number, d["field"] or None, d["message"]) for d in found]
    details = exc.details
    field = details.get("field")
    if field is None and details.get("reason") == "duplicate_id":
        field = "id"
    return [RowError(number, str(field) if field is not None else None, exc.message)]
