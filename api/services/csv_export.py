"""CSV export, streamed: the store's ``scan`` cursor a chunk at a time (the next chunk is
requested while this one is encoded), so neither the worker nor the store ever holds the whole
table and the store's loop is held for one chunk at most. The cursor is closed as soon as an
export ends early, and its loss reported, as for the dump (``dumps.TableScan``).

List filters go to the store with the scan (its ``where``): only matching records cross the
socket, and an indexed equality (``user_id=...``) reads that index's ids instead of the table.
A filtered read may come back empty with a cursor (the store bounds the rows it examines per
read); only the end of the cursor ends the export. The columns are fixed at the start:
``users`` and ``orders`` have their public fields; a generic table has ``id``, the fields of
the table's first ``HEADER_SAMPLE`` records in order of appearance (whatever the filter or the
chunk size, so an export matching nothing still has the table's header, and a job's file is
the request's), at most ``MAX_COLUMNS`` in all (what the import takes), the store-managed
fields, and ``_extra``, a JSON map of any field a record has that is not a column (empty when
there is none), and of a field named ``""`` (no column can have that name).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from api.services import orders, users
from api.services.csv_rows import EXTRA, MAX_COLUMNS, Record
from api.services.csvio import ABSENT, encode_cell, encode_name
from api.services.dumps import open_scan
from api.store import Store
from storeserver.errors import LimitExceeded

_TYPED_COLUMNS: dict[str, tuple[str, ...]] = {
    users.TABLE: users.PUBLIC_FIELDS,
    orders.TABLE: orders.PUBLIC_FIELDS,
}
# Orders need no mapping: the columns pick the public fields. Users get their default role.
_TO_PUBLIC: dict[str, Callable[[Record], Record]] = {users.TABLE: users.to_public}
_META = ("created_at", "updated_at", "version")
CHUNK_ROWS = 1000
"""Records per ``scan`` read (the store's page maximum): about a millisecond of its loop."""
HEADER_SAMPLE = 1000
"""A generic table's columns are the fields of its first ``HEADER_SAMPLE`` records."""
_SAMPLE_PAGE = 100
"""Records per ``find`` when the first chunk is not the sample (a filter, an export job's
smaller chunks): few, so that big records still fit in one reply; only their names are kept."""


def columns_for(table: str, first: Iterable[Iterable[str]]) -> tuple[tuple[str, ...], bool]:
    """The header, and whether it ends with the ``_extra`` column (``first``: the first
    records, or their field names)."""
    typed = _TYPED_COLUMNS.get(table)
    if typed is not None:
        return typed, False
    names: dict[str, None] = {"id": None}
    for record in first:
        names.update(dict.fromkeys(record))
    # "" cannot name a column (the importer needs every column named): it goes in _extra.
    for name in (*_META, EXTRA, ""):
        names.pop(name, None)
    # A sparse or wide table's fields past the import's limit go in _extra too.
    return (*list(names)[:MAX_COLUMNS], *_META), True


class CsvEncoder:
    """Records → CSV bytes for one export (header first)."""

    def __init__(self, table: str, columns: tuple[str, ...], extra: bool) -> None:
        self.columns = columns
        self.extra = extra
        self.known = frozenset(columns)
        self.public = _TO_PUBLIC.get(table)
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\r\n")

    def header(self) -> bytes:
        names = [*self.columns, EXTRA] if self.extra else list(self.columns)
        # Spreadsheets evaluate header cells too: a field named "=cmd|..." is a formula there.
        return self._lines([[encode_name(name) for name in names]])

    def rows(self, records: Iterable[Record]) -> bytes:
        return self._lines([self._cells(record) for record in records])

    def _cells(self, record: Record) -> list[str]:
        if self.public is not None:
            record = self.public(record)
        cells = [encode_cell(record.get(name, ABSENT)) for name in self.columns]
        if self.extra:
            if record.keys() - self.known:  # rare: a field not among the first records'
                others = {k: v for k, v in record.items() if k not in self.known}
                cells.append(encode_cell(others))
            else:
                cells.append("")
        return cells

    def _lines(self, rows: list[list[str]]) -> bytes:
        self.writer.writerows(rows)
        text = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return text.encode("utf-8")


async def open_export(
    store: Store, table: str, where: list[list[Any]], chunk: int = CHUNK_ROWS
) -> AsyncIterator[bytes]:
    """Read the first chunk now (a missing table is a 404 before streaming starts) and return
    the CSV as an iterator of byte strings."""
    scan = await open_scan(store, table, chunk, where)
    # The header is the table's, whatever matches (even none) and whatever the chunk size.
    sample: Iterable[Iterable[str]] = scan.head[:HEADER_SAMPLE]
    if table in _TYPED_COLUMNS:
        sample = []
    elif where or (len(scan.head) < HEADER_SAMPLE and scan.cursor):
        sample = await _first_fields(store, table)
    columns, extra = columns_for(table, sample)
    encoder = CsvEncoder(table, columns, extra)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield encoder.header()
            async for items in scan:
                if items:
                    yield encoder.rows(items)
        finally:
            scan.close()  # closing this generator leaves the scan's own at its ``yield``

    return stream()


async def _first_fields(store: Store, table: str) -> list[list[str]]:
    """The field names of the table's first ``HEADER_SAMPLE`` records."""
    names: list[list[str]] = []
    page_size = _SAMPLE_PAGE
    while len(names) < HEADER_SAMPLE:
        size = min(page_size, HEADER_SAMPLE - len(names))
        try:
            page = await store.call("find", {"table": table, "offset": len(names), "limit": size})
        except LimitExceeded:
            if size == 1:
                raise
            # Big records: a page of them passed the store's reply frame (records are at most
            # half of one, so a page of one always fits).
            page_size = max(1, size // 4)
            continue
        names += [list(record) for record in page["items"]]
        if not page["items"] or len(names) >= page["total"]:
            break
    return names
