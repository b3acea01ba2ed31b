"""CSV import: parse a spooled upload row by row, validate every row, write through ``batch``.

Default mode: good rows are inserted in chunks of ``CHUNK_ROWS`` (one store ``batch`` each, so
the store's loop is never held by more than one chunk); a row the store refuses (duplicate id,
unknown ``user_id``, ...) is taken out of its chunk and the rest of the chunk is retried, so
only bad rows are lost. ``atomic``: every row is read and validated first; any invalid row
means nothing is written (422 with the row errors); then all rows go in ONE store ``batch``,
which the store applies entirely or not at all, so an atomic import holds at most
``ATOMIC_MAX_ROWS`` rows (the store's batch limit). The batches have ``refs: false``: a map
like ``{"$ref": "0.id"}`` in a cell is data (an export of such a record), not a reference.
"""

from __future__ import annotations

import asyncio
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from api.errors import CONFLICT_CODES, STORE_STATUS, ApiError
from api.services.csv_rows import Record, RowError, RowReader, invalid_csv, reader_for
from api.services.csvio import decode_name
from api.store import Store
from storeserver.errors import (
    MemoryLimit,
    NotFound,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)

IMPORT_PATH = "/api/v1/batch/import"
CHUNK_ROWS = 500
ATOMIC_MAX_ROWS = 1000  # the store's maximum batch size
MAX_ERRORS = 100
CELL_MAX_CHARS = 1 << 20


@dataclass
class ImportReport:
    table: str
    atomic: bool
    rows: int = 0
    imported: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_omitted: int = 0

    def add(self, errors: list[RowError]) -> None:
        for error in errors:
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(error.as_dict())
            else:
                self.errors_omitted += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "atomic": self.atomic,
            "rows": self.rows,
            "imported": self.imported,
            "failed": self.failed,
            "errors": self.errors,
            "errors_omitted": self.errors_omitted,
        }


class NotUtf8(ValueError):
    """The body is not UTF-8 at byte ``offset`` (counted from 0 at the start of the body)."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"not valid UTF-8 at byte {offset}")
        self.offset = offset


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def text_lines(binary: IO[bytes]) -> Iterator[str]:
    """The body's lines as text, ends kept (split at CRLF, LF or CR like ``newline=""``), a
    UTF-8 BOM dropped; a bad byte raises ``NotUtf8`` when the reader reaches its line.

    Not ``io.TextIOWrapper``: it decodes 8 KiB at a time, so one bad byte fails the read of
    every line in its block, the header line included, and the error names the wrong row.
    A line is split at b"\\n", a byte that is never inside a multi-byte UTF-8 sequence.
    """
    offset = 0
    for raw in iter(binary.readline, b""):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotUtf8(offset + exc.start) from None
        if offset == 0 and text.startswith("\ufeff"):
            text = text[1:]
        offset += len(raw)
        cr = text.find("\r")
        if cr == -1 or (cr == len(text) - 2 and text[-1] == "\n"):
            yield text  # the usual line: no CR, or CRLF at its end
        else:  # lone CRs end lines too (and the csv reader wants one line per string)
            yield from _LINE.findall(text)


def _rows(binary: IO[bytes]) -> tuple[list[str], Iterator[tuple[int, list[str] | RowError]]]:
    """The header and an iterator of (row number, cells); a malformed spot ends it with an
    error (row 1 is the first line after the header; blank lines are skipped)."""
    reader = csv.reader(text_lines(binary), strict=True)
    try:
        header = next(reader, None)
    except (csv.Error, NotUtf8) as exc:
        raise invalid_csv(f"cannot read the header line: {exc}") from None
    if header is None:
        raise invalid_csv("the file is empty: the first line must name the columns")

    def rows() -> Iterator[tuple[int, list[str] | RowError]]:
        number = 0
        while True:
            try:
                row = next(reader, None)
            except NotUtf8 as exc:
                message = f"row {number + 1} is not UTF-8 (byte {exc.offset} of the file); stopped"
                yield number + 1, RowError(number + 1, None, message)
                return
            except csv.Error as exc:  # line_num already counts the line it failed on
                message = f"malformed CSV near line {reader.line_num} ({exc}); stopped"
                yield number + 1, RowError(number + 1, None, message)
                return
            if row is None:
                return
            if row:
                number += 1
                yield number, row

    # Names are written escaped against formula injection, as cells are (csvio.encode_name).
    return [decode_name(name) for name in header], rows()


async def import_csv(store: Store, table: str, binary: IO[bytes], atomic: bool) -> dict[str, Any]:
    """Import the CSV in ``binary`` into ``table``; the report (``ImportReport.as_dict``)."""
    csv.field_size_limit(CELL_MAX_CHARS)
    header, rows = _rows(binary)
    reader = reader_for(table, header)
    report = ImportReport(table, atomic)
    if atomic:
        await _import_atomic(store, reader, rows, report)
    else:
        await _import_chunked(store, reader, rows, report)
    return report.as_dict()


async def _import_chunked(
    store: Store,
    reader: RowReader,
    rows: Iterator[tuple[int, list[str] | RowError]],
    report: ImportReport,
) -> None:
    """The next chunk is parsed while the store writes the previous one (one write at a time,
    so rows are written in file order and duplicate ids are reported deterministically)."""
    chunk: list[tuple[int, Record]] = []
    writing: asyncio.Task[None] | None = None
    try:
        for number, row in rows:
            if isinstance(row, RowError):
                report.add([row])
                break
            report.rows += 1
            record, errors = reader.read(row, number)
            if record is None:
                report.failed += 1
                report.add(errors)
                continue
            chunk.append((number, record))
            if len(chunk) >= CHUNK_ROWS:
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(write_chunk(store, reader.table, chunk, report))
                chunk = []
        if writing is not None:
            await writing
        if chunk:
            await write_chunk(store, reader.table, chunk, report)
    finally:
        if writing is not None and not writing.done():
            writing.cancel()


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
        try:
            await store.call("batch", {"ops": ops, "refs": False})
        except StoreError as exc:
            index = _failed_index(exc, len(part))
            report.failed += 1
            report.add([_store_row_error(exc, part[index][0])])
            parts += [part[index + 1 :], part[:index]]  # the rows before it go first
            continue
        report.imported += len(part)


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
) -> None:
    numbers: list[int] = []
    ops: list[dict[str, Any]] = []
    for number, row in rows:
        if isinstance(row, RowError):
            report.add([row])
            report.failed += 1
            break
        report.rows += 1
        if report.rows > ATOMIC_MAX_ROWS:
            raise ApiError(
                400,
                "LIMIT_EXCEEDED",
                f"an atomic import takes at most {ATOMIC_MAX_ROWS} rows; import without"
                " atomic=true, or split the file",
                [{"field": "atomic", "message": f"more than {ATOMIC_MAX_ROWS} rows"}],
            )
        record, errors = reader.read(row, number)
        if record is None:
            report.failed += 1
            report.add(errors)
        else:
            numbers.append(number)
            ops.append({"op": "insert", "table": reader.table, "record": record})
    if report.failed:
        details = report.errors
        if report.errors_omitted:
            details = [*details, {"field": None, "message": f"{report.errors_omitted} more"}]
        raise ApiError(
            422,
            "VALIDATION_ERROR",
            f"{report.failed} of {report.rows} rows are invalid; nothing was imported",
            details,
        )
    if not ops:
        return
    try:
        await store.call("batch", {"ops": ops, "refs": False})
    except StoreError as exc:
        index = _failed_index(exc, len(ops))
        status, code = next(
            (found for cls, found in STORE_STATUS.items() if isinstance(exc, cls)), (400, "")
        )
        code = CONFLICT_CODES.get(str(exc.details.get("reason")), code)
        error = _store_row_error(exc, numbers[index])
        raise ApiError(
            status, code, f"row {error.row}: {exc.message}; nothing was imported", [error.as_dict()]
        ) from None
    report.imported = len(ops)


def _failed_index(exc: StoreError, size: int) -> int:
    """Which op of the batch the store refused; errors about no op in particular propagate."""
    if isinstance(exc, StoreUnavailable | StoreTimeout | MemoryLimit):
        raise exc
    index = exc.details.get("index")
    if type(index) is not int or not 0 <= index < size:
        raise exc
    return index


def _store_row_error(exc: StoreError, number: int) -> RowError:
    details = exc.details
    field = details.get("field")
    if field is None and details.get("reason") == "duplicate_id":
        field = "id"
    return RowError(number, str(field) if field is not None else None, exc.message)
