"""How a CSV import's rows reach the store: the byte bounds of its batches (``BatchLimits``)
and the default mode's chunk writing (``ChunkWriter``, ``write_chunk``).

Kept apart from the import's driver (``csv_import``), which reads and validates the rows and
decides where chunks end: this is the store side, one ``batch`` call at a time, with the ids
that already exist and the rows the store refuses taken out of a chunk and reported.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from api.services.csv_import_errors import failed_index, may_have_landed, store_row_errors
from api.services.csv_rows import Record, RowError, RowReader
from api.store import announced
from storeserver.errors import NotFound, ProtocolError, StoreError
from storeserver.protocol import MAX_FRAME_SIZE, pack_value
from storeserver.records import MAX_VALUES

if TYPE_CHECKING:
    from api.services.csv_import_report import ImportReport
    from api.store import Store

BATCH_VALUES = MAX_VALUES
"""Values a store batch's records may hold together (``records.one_budget``): an atomic import
is one batch."""

RowRead = tuple[Record | None, int, int, list[RowError]]
"""A row read for a batch: its record (None if invalid), the bytes and the values it adds (the
store's count, ``value_count``), its errors."""


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
        frame = MAX_FRAME_SIZE
        if type(frame_limit := announced(store, "max_frame_bytes")) is int and frame_limit > 0:
            frame = min(frame, frame_limit)
        row = frame // 2
        if type(record_limit := announced(store, "max_record_bytes")) is int and record_limit > 0:
            row = min(row, record_limit)
        # ``create`` counted whether sent or not (``write_chunk`` adds it after the first rows)
        op = len(pack_value({"op": "insert", "table": table, "record": {}, "create": False}))
        return cls(frame // 4, frame // 2, row, op)

    def reader(self, reader: RowReader) -> Callable[[list[str], int], RowRead]:
        """``read`` for the rows of ``reader`` (called in the import's reading thread)."""
        return functools.partial(self.read, reader)

    def read(self, reader: RowReader, row: list[str], number: int) -> RowRead:
        """``reader.read``, plus the bytes the record adds to a batch; a record no batch can
        take is a row error."""
        record, errors = reader.read(row, number)
        if record is None:
            return None, 0, 0, errors
        try:
            size = len(pack_value(record))
        except ProtocolError as exc:
            message = f"the row cannot be sent to the store: {exc.message}"
            return None, 0, 0, [RowError(number, None, message)]
        if size > self.row_bytes:
            message = (
                f"the row is {size} bytes once encoded, more than one record may hold"
                f" ({self.row_bytes} bytes with this store's STORE_MAX_FRAME_BYTES)"
            )
            return None, 0, 0, [RowError(number, None, message)]
        return record, size + self.op_bytes, value_count(record), []


def value_count(record: Record) -> int:
    """The values the store counts for ``record`` against a batch's ``BATCH_VALUES``
    (``records.copy_fields``): its fields and itself, and each map's or list's items."""
    count = len(record) + 1
    nested = [v for v in record.values() if type(v) is dict or type(v) is list]
    while nested:
        value = nested.pop()
        count += len(value)
        items = value.values() if type(value) is dict else value
        nested += [v for v in items if type(v) is dict or type(v) is list]
    return count


class ChunkWriter:
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
        if self.task is None:
            return
        try:
            # Shielded: a cancel of the import does not cut a batch off mid-call (``settle``).
            await asyncio.shield(self.task)
        finally:
            if self.task.done():
                # Not kept once done (nor in a local of this frame): a failed write's error,
                # raised on through here, holds its records (its traceback's frames), and a
                # writer or frame holding its task made a cycle with it, which a worker's
                # collector rarely reaches (QA: each failed import of one huge JSON cell left
                # ~500 MB held).
                self.task = None

    async def settle(self) -> None:
        """The import stopped (an error, a cancel): let the batch in flight end, so the report
        counts exactly the rows written (one batch: at most a store call's timeout)."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            await asyncio.wait({task})


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
        ops: list[dict[str, Any]] = [
            {"op": "insert", "table": table, "record": record} for _, record in part
        ]
        # An earlier store refuses ``create``: with it, a table dropped meanwhile is made again.
        if report.imported and announced(store, "insert_create") is True:
            # The table exists now (rows of ours are in it): dropped meanwhile, it is not made
            # again with the rest of the file, and the import stops there (NOT_FOUND; QA: the
            # import "succeeded" over a fresh table holding part of the rows).
            for op in ops:
                op["create"] = False
        report.unconfirmed = (part[0][0], part[-1][0])
        try:
            await store.call("batch", {"ops": ops, "refs": False})
        except StoreError as exc:
            if not may_have_landed(exc):
                report.unconfirmed = None
            if exc.details.get("scope") == "batch" and len(part) > 1:
                # Too many values in the rows together (records.one_budget), not in the
                # row the store stopped at: halves, each sent again.
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]
                continue
            index = failed_index(exc, len(part))
            if index is None:
                raise
            report.failed += 1
            report.add(store_row_errors(exc, part[index][0]))
            parts += [part[index + 1 :], part[:index]]  # the rows before it go first
            continue
        report.unconfirmed = None
        report.imported += len(part)
        report.last_row_written = part[-1][0]


async def _drop_existing_ids(
    store: Store, table: str, chunk: list[tuple[int, Record]], report: ImportReport
) -> list[tuple[int, Record]]:
    # An id of null is no id (the store gives the record one, as POST /data/{table} does; QA:
    # sent to get_many it failed the whole import).
    ids = [record["id"] for _, record in chunk if record.get("id") is not None]
    if not ids:
        return chunk
    try:
        found = await store.call("get_many", {"table": table, "ids": ids})
    except NotFound:  # the import creates the table, unless it wrote there already
        if report.imported:
            raise
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
