"""CSV import: parse a spooled upload row by row, validate every row, write through ``batch``.

Default mode: good rows are inserted in chunks of ``CHUNK_ROWS`` (one store ``batch`` each, so
the store's loop is never held by more than one chunk); a row the store refuses (duplicate id,
unknown ``user_id``, ...) is taken out of its chunk and the rest of the chunk is retried, so
only bad rows are lost. A chunk also ends before its rows pass a quarter of the store's frame
(``BatchLimits``): wide rows go in smaller batches instead of a request the store drops, and a
row too big to be one record is a row error, never sent. ``atomic``: every row is read and
validated first; any invalid row means nothing is written (422 with the row errors); then all
rows go in ONE store ``batch``, which the store applies entirely or not at all, so an atomic
import holds at most ``ATOMIC_MAX_ROWS`` rows (the store's batch limit) and half a frame. The
batches have ``refs: false``: a map like ``{"$ref": "0.id"}`` in a cell is data (an export of
such a record), not a reference.

The worker's loop is given back (``between_chunks``) after every ``CHUNK_ROWS`` rows read,
valid or not: a file of bad rows writes nothing, yet must not hold the loop either. A
malformed line (bad quoting, a byte that is not UTF-8) ends the reading: it counts as a failed
row, and the report's ``stopped_at_row`` names it. A store error that ends a default import
after rows were written (or may have been) keeps its status, and its message and details say
what was written and where to resume: rows without an id would be imported twice by a retry.
So does an atomic batch whose outcome is unknown (the connection lost, no answer in time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from api.errors import CONFLICT_CODES, STORE_STATUS, ApiError, schema_error_details
from api.services.csv_rows import Record, RowError, RowReader, read_rows, reader_for
from api.store import Store
from storeserver.errors import (
    MemoryLimit,
    NotFound,
    PersistenceError,
    ProtocolError,
    StoreBusy,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    ValidationFailed,
)
from storeserver.protocol import MAX_FRAME_SIZE, pack_value

IMPORT_PATH = "/api/v1/batch/import"
CHUNK_ROWS = 500
ATOMIC_MAX_ROWS = 1000  # the store's maximum batch size
MAX_ERRORS = 100
Pause = Callable[[], Awaitable[None]]
"""Awaited after every ``CHUNK_ROWS`` rows read: lets the loop run (a job reports progress
and stops there when cancelled)."""


@dataclass
class ImportReport:
    table: str
    atomic: bool
    rows: int = 0
    imported: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_omitted: int = 0
    stopped_at_row: int | None = None  # a malformed line ended the reading there
    # Not in the answer: what an interrupted import tells (``interrupted``). Rows are written
    # in file order, so every row up to ``last_row_written`` was written or failed.
    last_row_written: int = 0
    unconfirmed: tuple[int, int] | None = None  # first and last row of a batch in doubt

    def add(self, errors: list[RowError]) -> None:
        for error in errors:
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(error.as_dict())
            else:
                self.errors_omitted += 1

    def stop(self, error: RowError) -> None:
        """The reading ended at a malformed line: a failed row, and the end of the file read."""
        self.rows += 1
        self.failed += 1
        self.stopped_at_row = error.row
        self.add([error])

    def as_dict(self) -> dict[str, Any]:
        answer = {
            "table": self.table,
            "atomic": self.atomic,
            "rows": self.rows,
            "imported": self.imported,
            "failed": self.failed,
            "errors": self.errors,
            "errors_omitted": self.errors_omitted,
        }
        if self.stopped_at_row is not None:  # only then: a job's stored result has no nulls
            answer["stopped_at_row"] = self.stopped_at_row
        return answer


async def _let_others_run() -> None:
    await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Byte bounds for the import's batches, from the frame both ends of the connection take.

    A batch's reply holds every record again with the store's fields, so a chunk is kept to a
    quarter of the frame; a row alone may take half (the store's record limit), and an atomic
    import, one batch, as much."""

    chunk_bytes: int
    atomic_bytes: int
    row_bytes: int
    op_bytes: int  # what wrapping a record in an insert op adds

    @classmethod
    def of(cls, store: Store, table: str) -> BatchLimits:
        # The store announces its STORE_MAX_FRAME_BYTES in the handshake (a fake store has no
        # handshake); the client refuses frames past its own MAX_FRAME_SIZE.
        info = getattr(store, "server_info", None)
        info = info if isinstance(info, dict) else {}
        frame = MAX_FRAME_SIZE
        if type(announced := info.get("max_frame_bytes")) is int and announced > 0:
            frame = min(frame, announced)
        row = frame // 2
        if type(record_limit := info.get("max_record_bytes")) is int and record_limit > 0:
            row = min(row, record_limit)
        op = len(pack_value({"op": "insert", "table": table, "record": {}}))
        return cls(frame // 4, frame // 2, row, op)

    def read(
        self, reader: RowReader, row: list[str], number: int
    ) -> tuple[Record | None, int, list[RowError]]:
        """``reader.read``, plus the bytes the record adds to a batch; a record no batch can
        take is a row error."""
        record, errors = reader.read(row, number)
        if record is None:
            return None, 0, errors
        try:
            size = len(pack_value(record))
        except ProtocolError as exc:
            message = f"the row cannot be sent to the store: {exc.message}"
            return None, 0, [RowError(number, None, message)]
        if size > self.row_bytes:
            message = (
                f"the row is {size} bytes once encoded, more than one record may hold"
                f" ({self.row_bytes} bytes with this store's STORE_MAX_FRAME_BYTES)"
            )
            return None, 0, [RowError(number, None, message)]
        return record, size + self.op_bytes, []


async def import_csv(
    store: Store,
    table: str,
    binary: IO[bytes],
    atomic: bool,
    *,
    report: ImportReport | None = None,
    between_chunks: Pause = _let_others_run,
) -> dict[str, Any]:
    """Import the CSV in ``binary`` into ``table``; the report (``ImportReport.as_dict``).

    ``report``: filled as the import goes (a job reads it when the import stops early)."""
    header, rows = read_rows(binary)
    reader = reader_for(table, header)
    report = report if report is not None else ImportReport(table, atomic)
    if atomic:
        await _import_atomic(store, reader, rows, report, between_chunks)
        return report.as_dict()
    try:
        await _import_chunked(store, reader, rows, report, between_chunks)
    except StoreError as exc:
        if report.imported or report.unconfirmed:
            raise interrupted(exc, report) from None
        raise  # nothing was written: the store's own error (a retry is safe)
    return report.as_dict()


async def _import_chunked(
    store: Store,
    reader: RowReader,
    rows: Iterator[tuple[int, list[str] | RowError]],
    report: ImportReport,
    between_chunks: Pause,
) -> None:
    """The next chunk is parsed while the store writes the previous one (one write at a time,
    so rows are written in file order and duplicate ids are reported deterministically)."""
    writer = _ChunkWriter(store, reader.table, report)
    limits = BatchLimits.of(store, reader.table)
    chunk: list[tuple[int, Record]] = []
    chunk_bytes = 0
    try:
        for number, row in rows:
            if isinstance(row, RowError):
                report.stop(row)
                break
            report.rows += 1
            record, size, errors = limits.read(reader, row, number)
            if record is None:
                report.failed += 1
                report.add(errors)
            else:
                if chunk and chunk_bytes + size > limits.chunk_bytes:
                    await writer.start(chunk)
                    chunk, chunk_bytes = [], 0
                chunk.append((number, record))
                chunk_bytes += size
                if len(chunk) >= CHUNK_ROWS:
                    await writer.start(chunk)
                    chunk, chunk_bytes = [], 0
            if report.rows % CHUNK_ROWS == 0:
                await between_chunks()
        await writer.start(chunk)
        await writer.wait()
    except BaseException:
        await writer.settle()
        raise


class _ChunkWriter:
    """Writes one chunk at a time, as a task, while the import reads the next one."""

    def __init__(self, store: Store, table: str, report: ImportReport) -> None:
        self.store, self.table, self.report = store, table, report
        self.task: asyncio.Future[None] | None = None

    async def start(self, chunk: list[tuple[int, Record]]) -> None:
        """Wait for the chunk in flight, then start writing ``chunk`` (if any)."""
        await self.wait()
        if chunk:
            self.task = asyncio.ensure_future(
                write_chunk(self.store, self.table, chunk, self.report)
            )
            self.task.add_done_callback(_retrieve)

    async def wait(self) -> None:
        if self.task is not None:
            # Shielded: a cancel of the import does not cut a batch off mid-call (``settle``).
            await asyncio.shield(self.task)

    async def settle(self) -> None:
        """The import stopped (an error, a cancel): let the batch in flight end, so the report
        counts exactly the rows written (one batch: at most a store call's timeout)."""
        if self.task is not None and not self.task.done():
            await asyncio.wait({self.task})


def _retrieve(task: asyncio.Future[None]) -> None:
    """A write's error is raised by ``wait``, or replaced by the error that stopped the import."""
    if not task.cancelled():
        task.exception()


async def write_chunk(
    store: Store, table: str, chunk: list[tuple[int, Record]], report: ImportReport
) -> None:
    """Insert one chunk. Ids that already exist are reported without a write (one
    ``get_many``); when the store refuses row i of a batch (a unique value, a foreign key),
    rows before i are written as one batch, row i is reported and the rest follows, so each
    row is sent at most twice whatever fails."""
    chunk = await _drop_existing_ids(store, table, chunk, report)
    parts = [chunk]
    while parts:
        part = parts.pop()
        if not part:
            continue
        ops = [{"op": "insert", "table": table, "record": record} for _, record in part]
        report.unconfirmed = (part[0][0], part[-1][0])
        try:
            await store.call("batch", {"ops": ops, "refs": False})
        except StoreError as exc:
            if not _may_have_landed(exc):
                report.unconfirmed = None
            index = _failed_index(exc, len(part))
            report.failed += 1
            report.add(_store_row_errors(exc, part[index][0]))
            parts += [part[index + 1 :], part[:index]]  # the rows before it go first
            continue
        report.unconfirmed = None
        report.imported += len(part)
        report.last_row_written = part[-1][0]


async def _drop_existing_ids(
    store: Store, table: str, chunk: list[tuple[int, Record]], report: ImportReport
) -> list[tuple[int, Record]]:
    ids = [record["id"] for _, record in chunk if "id" in record]
    if not ids:
        return chunk
    try:
        found = await store.call("get_many", {"table": table, "ids": ids})
    except NotFound:  # the import creates the table
        return chunk
    taken = {record["id"] for record in found if record is not None}
    if not taken:
        return chunk
    kept = []
    for number, record in chunk:
        if record.get("id") in taken:
            report.failed += 1
            message = f"id {record['id']!r} exists in {table}"  # the store's words
            report.add([RowError(number, "id", message)])
        else:
            kept.append((number, record))
    return kept


async def _import_atomic(
    store: Store,
    reader: RowReader,
    rows: Iterator[tuple[int, list[str] | RowError]],
    report: ImportReport,
    between_chunks: Pause,
) -> None:
    limits = BatchLimits.of(store, reader.table)
    numbers: list[int] = []
    ops: list[dict[str, Any]] = []
    batch_bytes = 0
    for number, row in rows:
        if isinstance(row, RowError):
            report.stop(row)
            break
        report.rows += 1
        if report.rows > ATOMIC_MAX_ROWS:
            raise atomic_too_big(
                f"at most {ATOMIC_MAX_ROWS} rows", f"more than {ATOMIC_MAX_ROWS} rows"
            )
        record, size, errors = limits.read(reader, row, number)
        if record is None:
            report.failed += 1
            report.add(errors)
        else:
            batch_bytes += size
            if batch_bytes > limits.atomic_bytes:
                raise atomic_too_big(
                    f"at most {limits.atomic_bytes} bytes of rows once encoded (one store batch"
                    " with this store's STORE_MAX_FRAME_BYTES)",
                    f"rows 1 to {number} are already {batch_bytes} bytes",
                )
            numbers.append(number)
            ops.append({"op": "insert", "table": reader.table, "record": record})
        if report.rows % CHUNK_ROWS == 0:
            await between_chunks()
    if report.failed:
        details = report.errors
        if report.errors_omitted:
            details = [*details, {"field": None, "message": f"{report.errors_omitted} more"}]
        stopped = ""
        if report.stopped_at_row is not None:
            stopped = f" (the file was not read past row {report.stopped_at_row})"
        raise ApiError(
            422,
            "VALIDATION_ERROR",
            f"{report.failed} of {report.rows} rows are invalid{stopped}; nothing was imported",
            details,
        )
    if not ops:
        return
    try:
        await store.call("batch", {"ops": ops, "refs": False})
    except StoreError as exc:
        status, code = _status_of(exc)
        if _may_have_landed(exc):
            message = (
                f"{_stopped_because(exc)}: whether the {len(ops)} rows were imported is not"
                " known (the store writes all of them or none); check before importing again"
            )
            raise ApiError(status, code, message, [{"field": None, "message": message}]) from None
        index = _failed_index(exc, len(ops))
        code = CONFLICT_CODES.get(str(exc.details.get("reason")), code)
        errors = _store_row_errors(exc, numbers[index])
        message = f"row {numbers[index]}: {exc.message}; nothing was imported"
        raise ApiError(status, code, message, [error.as_dict() for error in errors]) from None
    report.imported = len(ops)


def atomic_too_big(limit: str, found: str) -> ApiError:
    return ApiError(
        400,
        "LIMIT_EXCEEDED",
        f"an atomic import takes {limit}; import without atomic=true, or split the file",
        [{"field": "atomic", "message": found}],
    )


def interrupted(exc: StoreError, report: ImportReport) -> ApiError:
    """A store error that stopped a default import after rows were written (or may have been):
    its status and code, with what was written and where to resume (a retry of the whole file
    would import the written rows again: new ids for rows without one)."""
    status, code = _status_of(exc)
    last = report.last_row_written
    parts = [f"the import stopped: {_stopped_because(exc)}"]
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


def _status_of(exc: StoreError) -> tuple[int, str]:
    """The status and code the API answers for ``exc`` (``api.errors.STORE_STATUS``)."""
    return next(
        (found for cls, found in STORE_STATUS.items() if isinstance(exc, cls)),
        (500, "INTERNAL_ERROR"),
    )


def _stopped_because(exc: StoreError) -> str:
    # Not the store client's own message for these: it may name the socket path.
    if isinstance(exc, StoreUnavailable):
        return "the store became unavailable"
    if isinstance(exc, StoreTimeout):
        return "the store did not answer in time"
    if isinstance(exc, StoreBusy):
        return "the store was busy"
    if isinstance(exc, MemoryLimit):
        return "the store reached its memory limit"
    return exc.message if _status_of(exc)[0] != 500 else "the store failed"


def _may_have_landed(exc: StoreError) -> bool:
    """A batch whose call failed this way may have been applied: the connection was lost
    after it was sent, or no answer came in time. (A persistence error is the store's answer.)"""
    return isinstance(exc, StoreTimeout | StoreUnavailable) and not isinstance(
        exc, PersistenceError
    )


def _failed_index(exc: StoreError, size: int) -> int:
    """Which op of the batch the store refused; errors about no op in particular propagate."""
    if isinstance(exc, StoreUnavailable | StoreTimeout | MemoryLimit):
        raise exc
    index = exc.details.get("index")
    if type(index) is not int or not 0 <= index < size:
        raise exc
    return index


def _store_row_errors(exc: StoreError, number: int) -> list[RowError]:
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
