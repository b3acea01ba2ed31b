"""Reading a whole table through the store's ``scan`` cursor, in bounded chunks, so an export
never holds the store's single thread for longer than one chunk: the NDJSON dump here, the CSV
export (``csv_export``) and the jobs that write them to files.

A cursor holds its table's id list in the store until it is read to the end, so a read that
ends early (the client went away, the task was cancelled, an error) closes it at once
(``scan_close``, best effort: one left open still frees itself when idle). A ``finally`` in the
reading generator is not enough: Starlette's ``StreamingResponse`` does not close its body
iterator when the client disconnects (the dump's ``ReleasingStreamingResponse`` does), and a
generator left at its ``yield`` runs its ``finally`` only when it is collected. So the close is
tied to the tasks too: the one that opened the cursor (the request's) and the one reading it
(the response's); when either ends with the cursor still open, it is closed.

A cursor freed under a read anyway (a client that stopped reading for longer than the store's
``STORE_SCAN_IDLE``, or a store restart) cannot be resumed; neither can a read that fails
otherwise (the store unreachable, a page it cannot send). The read logs one warning naming the
table and the records it had handed out, then raises ``StreamCutOff``: a response already
started ends without its final chunk, which is how HTTP says a chunked body is incomplete, and
the access line carries ``error: StreamCutOff`` (a store error raised there would be logged as
an error with a traceback, after a 200 and part of the body).

A worker's graceful stop cancels the reads still running at its drain's end and closes its
store client right after: the close tasks their ends start would find the client gone. The
lifespan closes every cursor still open first (``close_open_scans``), and waits a moment for
the closes (QA: six downloads cut off by a redeploy left six cursors open for 300 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import structlog

from api.errors import StreamCutOff
from api.services.typed_tables import to_public
from api.store import Store
from storeserver.errors import NotFound, StoreError

log = structlog.get_logger("api.exports")
Record = dict[str, Any]
_closing: set[asyncio.Task[None]] = set()
"""``scan_close`` calls in flight (the loop keeps only weak references to its tasks)."""
_open: weakref.WeakSet[TableScan] = weakref.WeakSet()
"""Scans holding a cursor, for ``close_open_scans``."""


class TableScan:
    """One read of a table through a ``scan`` cursor: iterate it (once) for its pages, each
    asked for while the previous one is used. ``head`` is the first page's records."""

    def __init__(self, store: Store, table: str, chunk: int, first: dict[str, Any]) -> None:
        self.store = store
        self.table = table
        self.chunk = chunk
        self.head: list[Record] = first["items"]
        self.cursor: str | None = first.get("cursor")
        self.records = 0  # handed out so far
        self._first: dict[str, Any] | None = first
        self._tasks: list[asyncio.Task[Any]] = []
        if self.cursor:
            _open.add(self)
        self._watch()

    def __aiter__(self) -> AsyncIterator[list[Record]]:
        return self._pages()

    async def _pages(self) -> AsyncIterator[list[Record]]:
        page, self._first = self._first, None
        if page is None:
            raise RuntimeError("a TableScan is read once")
        self._watch()  # the reading task, when it is not the opening one
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                if self.cursor:
                    args = {"cursor": self.cursor, "limit": self.chunk}
                    pending = asyncio.ensure_future(self.store.call("scan", args))
                    pending.add_done_callback(_seen)  # a read nobody waits for any more
                self.records += len(page["items"])
                yield page["items"]
                if pending is None:
                    return
                try:
                    page = await pending
                except StoreError as exc:
                    if isinstance(exc, NotFound):  # expired, or the store restarted
                        self.cursor = None  # nothing to close
                    log.warning(
                        "export_cut_off", table=self.table, records=self.records, detail=exc.message
                    )
                    message = f"the scan of {self.table} was lost after {self.records} records"
                    raise StreamCutOff(message) from exc
                pending = None
                self.cursor = page.get("cursor")
        finally:
            self.close()
            if pending is not None:
                pending.cancel()

    def _watch(self) -> None:
        task = asyncio.current_task()
        if self.cursor and task is not None and task not in self._tasks:
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    def _task_done(self, _: asyncio.Task[Any]) -> None:
        self.close()

    def close(self) -> None:
        """Close the cursor in the store unless it is finished or closed; never raises."""
        cursor, self.cursor = self.cursor, None
        _open.discard(self)
        for task in self._tasks:
            task.remove_done_callback(self._task_done)
        self._tasks.clear()
        if cursor is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # collected after the loop stopped: the cursor will idle out
            return
        closing = loop.create_task(_close_cursor(self.store, cursor))
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)


def _seen(read: asyncio.Future[Any]) -> None:
    """Mark a read's failure retrieved: one abandoned with its export is nobody's news."""
    if not read.cancelled():
        read.exception()


async def _close_cursor(store: Store, cursor: str) -> None:
    # Best effort: a cursor left open (the store unreachable, say) frees itself when idle.
    with contextlib.suppress(Exception):
        await store.call("scan_close", {"cursor": cursor})


async def close_open_scans(timeout: float) -> None:
    """Close every cursor still open and wait up to ``timeout`` seconds for the closes in
    flight: a worker stopping, before it closes its store client."""
    for scan in list(_open):
        scan.close()
    if _closing:
        await asyncio.wait(list(_closing), timeout=timeout)


async def open_scan(
    store: Store, table: str, chunk: int, where: list[list[Any]] | None = None
) -> TableScan:
    """Open a cursor and read its first page now, so a missing table (404) or a store at its
    cursor limit (503) is answered before any response starts."""
    args: dict[str, Any] = {"table": table, "limit": chunk}
    if where:
        args["where"] = where
    return TableScan(store, table, chunk, await store.call("scan", args))


async def open_dump(store: Store, table: str, chunk: int) -> AsyncGenerator[list[Record], None]:
    """Fetch the first chunk now and return an iterator over every chunk, that one included."""
    scan = await open_scan(store, table, chunk)

    async def chunks() -> AsyncGenerator[list[Record], None]:
        try:
            async for records in scan:
                yield [to_public(table, record) for record in records]
        finally:
            scan.close()  # closing this generator leaves the scan's own at its ``yield``

    return chunks()
