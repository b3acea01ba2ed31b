"""CSV export, streamed: the store's ``scan`` cursor a chunk at a time (the next chunk is
requested while this one is encoded), so neither the worker nor the store ever holds the whole
table and the store's loop is held for one chunk at most.

List filters are applied here, in the worker, with the store's own condition code
(``storeserver.query.compile_condition``): a filtered ``find`` paged by offset would rescan
the table for every page. The columns are fixed by the first chunk: ``users`` and ``orders``
have their public fields; a generic table has ``id``, the fields of its first chunk in order
of appearance, the store-managed fields, and ``_extra``, a JSON map of any field a later
record has that is not a column (empty when there is none).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from api.services import orders, users
from api.services.csv_rows import EXTRA, Record
from api.services.csvio import ABSENT, encode_cell
from api.store import Store
from storeserver.query import Condition, compile_condition

_TYPED_COLUMNS: dict[str, tuple[str, ...]] = {
    users.TABLE: users.PUBLIC_FIELDS,
    orders.TABLE: orders.PUBLIC_FIELDS,
}
# Orders need no mapping: the columns pick the public fields. Users get their default role.
_TO_PUBLIC: dict[str, Callable[[Record], Record]] = {users.TABLE: users.to_public}
_META = ("created_at", "updated_at", "version")
CHUNK_ROWS = 1000
"""Records per ``scan`` read (the store's page maximum): about a millisecond of its loop."""


def columns_for(table: str, first: Iterable[Record]) -> tuple[tuple[str, ...], bool]:
    """The header, and whether it ends with the ``_extra`` column."""
    typed = _TYPED_COLUMNS.get(table)
    if typed is not None:
        return typed, False
    names: dict[str, None] = {"id": None}
    for record in first:
        names.update(dict.fromkeys(record))
    for name in (*_META, EXTRA):
        names.pop(name, None)
    return (*names, *_META), True


def matcher(where: list[list[Any]], table: str) -> Callable[[Record], bool] | None:
    """The list filters as one predicate (``None``: no filter)."""
    if not where:
        return None
    casefold = frozenset({"email"}) if table == users.TABLE else frozenset()
    tests = [compile_condition(Condition(*leaf), casefold) for leaf in where]
    return lambda record: all(test(record) for test in tests)


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
        return self._lines([[*self.columns, EXTRA] if self.extra else list(self.columns)])

    def rows(self, records: Iterable[Record]) -> bytes:
        return self._lines([self._cells(record) for record in records])

    def _cells(self, record: Record) -> list[str]:
        if self.public is not None:
            record = self.public(record)
        cells = [encode_cell(record.get(name, ABSENT)) for name in self.columns]
        if self.extra:
            if record.keys() - self.known:  # rare: a field no record of the first chunk had
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
    first = await store.call("scan", {"table": table, "limit": chunk})
    columns, extra = columns_for(table, first["items"])
    encoder = CsvEncoder(table, columns, extra)
    keep = matcher(where, table)

    async def stream() -> AsyncIterator[bytes]:
        yield encoder.header()
        page = first
        pending: asyncio.Task[Any] | None = None
        try:
            while True:
                cursor = page.get("cursor")
                if cursor:  # ask for the next chunk before encoding this one
                    args = {"cursor": cursor, "limit": chunk}
                    pending = asyncio.ensure_future(store.call("scan", args))
                items = page["items"]
                if keep is not None:
                    items = [record for record in items if keep(record)]
                if items:
                    yield encoder.rows(items)
                if pending is None:
                    return
                page, pending = await pending, None
        finally:
            if pending is not None:
                pending.cancel()

    return stream()
