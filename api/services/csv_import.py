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

The worker's loop is given back (``between_chunks``) after every ``CHUNK_ROWS`` lines read,
rows valid or not and blank lines: a file of bad rows (or of blank lines) writes nothing, yet
must not hold the loop either. The lines are read in a thread, ``CHUNK_ROWS`` at a time: the
csv module reads a whole record in one call, and one quoted cell may span millions of lines.
A malformed line (bad quoting, a byte that is not UTF-8) ends the reading: it counts as a failed
row, and the report's ``stopped_at_row`` names it. A store error that ends a default import
after rows were written (or may have been) keeps its status, and its message and details say
what was written and where to resume: rows without an id would be imported twice by a retry.
So does an atomic batch whose outcome is unknown (the connection lost, no answer in time).

This module drives the import; rows are read and validated by ``csv_rows``, written by
``csv_import_batches`` (``BatchLimits``, the chunk writer), counted in ``csv_import_report``,
and store errors become the answers of ``csv_import_errors``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import IO, Any

from api.errors import CONFLICT_CODES, ApiError
from api.services.csv_import_batches import BATCH_VALUES, BatchLimits, ChunkWriter, RowRead
from api.services.csv_import_errors import (
    atomic_too_big,
    failed_index,
    interrupted,
    may_have_landed,
    status_of,
    stopped_because,
    store_row_errors,
)
from api.services.csv_import_report import ImportReport
from api.services.csv_rows import Record, RowError, RowReader, Rows, read_rows, reader_for
from api.store import Store
from storeserver.errors import StoreError

IMPORT_PATH = "/api/v1/batch/import"
CHUNK_ROWS = 500
ATOMIC_MAX_ROWS = 1000  # the store's maximum batch size
Pause = Callable[[], Awaitable[None]]
"""Awaited after every ``CHUNK_ROWS`` lines read (rows, valid or not, and blank lines): lets
the loop run (a job reports progress and stops there when cancelled)."""


async def _let_others_run() -> None:
    await asyncio.sleep(0)


async def _paced(
    rows: Rows,
    between_chunks: Pause,
    report: ImportReport,
    read: Callable[[list[str], int], RowRead],
    max_bytes: int,
) -> AsyncGenerator[tuple[int, RowRead]]:
    """The rows of ``rows`` as ``read`` makes them (number, ``read(cells, number)``), counted
    in ``report``: blank lines skipped, the first malformed one ending them (``report.stop``).
    Read and made ``CHUNK_ROWS`` lines at a time (fewer once their records pass ``max_bytes``)
    in a thread, with ``between_chunks`` awaited between them. QA: a quoted cell of 3.5
    million line breaks (7 MB) is one step, one call into the csv module: read on the loop, it
    held the worker 3.2 s, and a job reading one stopped beating and was declared lost while
    alive (its rows never written). The same for one cell of 25 million JSON values (50 MB):
    14.6 s to decode and check, on the loop."""
    first = True
    while batch := await asyncio.to_thread(_read_lines, rows, read, max_bytes):
        if not first:
            # QA: counted in rows only, 7 MiB of blank lines held the worker 3.8 s, and a job
            # over 40 MiB of them stopped beating: declared lost, its rows never imported.
            await between_chunks()
        first = False
        for number, row in batch:
            if row is None:
                continue
            if isinstance(row, RowError):
                report.stop(row)
                return
            report.rows += 1
            yield number, row


def _read_lines(
    rows: Rows, read: Callable[[list[str], int], RowRead], max_bytes: int
) -> list[tuple[int, RowRead | RowError | None]]:
    """The next ``CHUNK_ROWS`` lines of ``rows``, each row made by ``read``; up to the first
    malformed one, or fewer once their records pass ``max_bytes`` (review: 500 rows of big
    records, held decoded at once, doubled an import's peak memory)."""
    lines: list[tuple[int, RowRead | RowError | None]] = []
    size = 0
    for number, row in itertools.islice(rows, CHUNK_ROWS):
        if row is None or isinstance(row, RowError):
            lines.append((number, row))
            if row is not None:
                break
            continue
        made = read(row, number)
        lines.append((number, made))
        size += made[1]
        if size >= max_bytes:
            break
    return lines


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
    header, rows = await asyncio.to_thread(read_rows, binary)  # the header may span lines too
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
    rows: Rows,
    report: ImportReport,
    between_chunks: Pause,
) -> None:
    """The next chunk is parsed while the store writes the previous one (one write at a time,
    so rows are written in file order and duplicate ids are reported deterministically)."""
    writer = ChunkWriter(store, reader.table, report)
    limits = BatchLimits.of(store, reader.table)
    chunk: list[tuple[int, Record]] = []
    chunk_bytes = 0
    try:
        lines = _paced(rows, between_chunks, report, limits.reader(reader), limits.chunk_bytes)
        async with aclosing(lines) as read:
            async for number, (record, size, _, errors) in read:
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
        await writer.start(chunk)
        await writer.wait()
    except BaseException:
        await writer.settle()
        raise


async def _import_atomic(
    store: Store,
    reader: RowReader,
    rows: Rows,
    report: ImportReport,
    between_chunks: Pause,
) -> None:
    limits = BatchLimits.of(store, reader.table)
    numbers: list[int] = []
    ops: list[dict[str, Any]] = []
    batch_bytes = 0
    batch_values = 0
    lines = _paced(rows, between_chunks, report, limits.reader(reader), limits.chunk_bytes)
    async with aclosing(lines) as read:
        async for number, (record, size, values, errors) in read:
            if report.rows > ATOMIC_MAX_ROWS:
                raise atomic_too_big(
                    f"at most {ATOMIC_MAX_ROWS} rows", f"more than {ATOMIC_MAX_ROWS} rows"
                )
            if record is None:
                report.failed += 1
                report.add(errors)
            else:
                batch_bytes += size
                if batch_bytes > limits.atomic_bytes:
                    raise atomic_too_big(
                        f"at most {limits.atomic_bytes} bytes of rows once encoded (one store"
                        " batch with this store's STORE_MAX_FRAME_BYTES)",
                        f"rows 1 to {number} are already {batch_bytes} bytes",
                    )
                batch_values += values
                if batch_values > BATCH_VALUES:
                    # Review: the store refused the batch naming a row that was fine.
                    raise atomic_too_big(
                        f"at most {BATCH_VALUES} values (maps, lists and scalars, each row and"
                        " its fields counted) in its rows together (one store batch)",
                        f"rows 1 to {number} already hold {batch_values} values",
                    )
                numbers.append(number)
                ops.append({"op": "insert", "table": reader.table, "record": record})
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
        status, code = status_of(exc)
        if may_have_landed(exc):
            message = (
                f"{stopped_because(exc)}: whether the {len(ops)} rows were imported is not"
                " known (the store writes all of them or none); check before importing again"
            )
            raise ApiError(status, code, message, [{"field": None, "message": message}]) from None
        index = failed_index(exc, len(ops))
        if index is None:
            raise
        code = CONFLICT_CODES.get(str(exc.details.get("reason")), code)
        errors = store_row_errors(exc, numbers[index])
        message = f"row {numbers[index]}: {exc.message}; nothing was imported"
        raise ApiError(status, code, message, [error.as_dict() for error in errors]) from None
    report.imported = len(ops)
