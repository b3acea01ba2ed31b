"""Scan cursors: a snapshot of a table's ids read a page at a time.

Opening copies the id list (a few ms for 1M rows); each read returns up to ``limit`` records
(and stops after the record that takes the page past ``max_bytes`` encoded, a quarter frame:
a page always fits in a reply, whatever its records' sizes, and holds at least one) still
present (deleted ones are skipped, rows added since are not included, nor is one deleted
and made again under the same id: its ``created_at`` is after the opening's; a record updated
since is returned as it is now). ``fields``, given when opening, projects every page (see
``projection``). A cursor is freed when it reaches the end, when its reader closes it
(``scan_close``: the API does as soon as an export ends early), after ``idle`` seconds
without use (``STORE_SCAN_IDLE``), or when its table is dropped (``close_table``: its pages
would otherwise go on reading the dropped rows, whatever the table's name holds since).

Open cursors are capped (``max_open``, and ``max_ids`` ids held between them: 8 bytes each).
At the cap, opening another is refused with ``STORE_BUSY`` instead of evicting one. An open
cursor is most likely an export in progress: its client already has a 200 and part of the
body, so evicting it cuts the download off with nothing to resume from, and a flood of opens
(downloads dropped before the API closed their cursors) once evicted every live export. The
newcomer, refused, has not started its response yet (the API reads the first page before it
answers): it gets a 503 with Retry-After and can come back. Cursors nobody reads any more
still go first: they expire (see ``expire``).

A ``where`` (``find``'s), given when opening, keeps only the matching records: an indexed
``eq``/``in`` ANDed at its root makes the snapshot the index's ids alone, and the rest is tested
as each read goes. A filtered read examines at most ``MAX_FILTERED_PROBES`` ids, so it may end
with fewer than ``limit`` records (even none) and a cursor to go on with: only ``cursor: None``
means the end.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from storeserver.errors import NotFound, StoreBusy
from storeserver.filters import Node, compile_predicate, plan
from storeserver.projection import Projector, parse_fields
from storeserver.protocol import MAX_FRAME_SIZE, EncodedPage, item_packer, release_items
from storeserver.selection import rows_per_step
from storeserver.tables import Table

MAX_PROBES = 100_000
"""Ids examined per read at most, so a range of deleted rows cannot stall the loop."""
MAX_FILTERED_PROBES = 5_000
"""The same with a ``where``: each id examined is also tested (a few ms at most per read)."""


class _Cursor:
    __slots__ = (
        "hidden",
        "ids",
        "include_hidden",
        "keep",
        "position",
        "probes",
        "project",
        "since",
        "table",
        "used_at",
    )

    def __init__(
        self,
        table: Table,
        include_hidden: bool,
        project: Projector | None,
        now: float,
        where: list[Node],
        since: str,
    ) -> None:
        self.table = table
        self.hidden = table.hidden  # what ``project`` was checked against
        self.since = since  # the latest created_at when opened: anything later is new
        ids, _ = plan(table, where)
        self.ids = list(table.rows if ids is None else ids)
        # The whole filter, the index-served part too: a scan reads rows calls later, and a
        # row the index listed may have stopped matching since (``find`` reads in one go).
        self.keep = compile_predicate(where, table.casefold_fields)
        # ids examined per call: fewer the costlier the filter (a 100-node one took ~0.3 s
        # for 5,000 rows), as for find's steps
        self.probes = (
            MAX_PROBES if self.keep is None else rows_per_step(where, simple=MAX_FILTERED_PROBES)
        )
        self.position = 0
        self.include_hidden = include_hidden
        self.project = project
        self.used_at = now


MAX_SCAN_IDS = 20_000_000
"""Ids the open cursors hold between them without a memory limit (8 bytes each: 160 MB). With
``STORE_MAX_MEMORY``, an eighth of it (``scan_ids_for``)."""


def scan_ids_for(max_memory: int) -> int:
    """The cap on ids held by open cursors under a memory limit (0: none): an eighth of it.
    QA: 100 stalled dumps of a 245,000-row table held ~150 MB past a 250 MB limit."""
    if max_memory <= 0:
        return MAX_SCAN_IDS
    return max(100_000, min(MAX_SCAN_IDS, max_memory // 8 // 8))


class ScanCursors:
    def __init__(
        self,
        clock: Callable[[], float],
        idle: float = 60.0,
        max_open: int = 1000,
        max_ids: int = MAX_SCAN_IDS,
        max_bytes: int = MAX_FRAME_SIZE // 4,
    ) -> None:
        """``idle``: seconds a cursor may go unread; ``max_open``, ``max_ids``: the caps;
        ``max_bytes``: a page's encoded size past which a read stops."""
        self._clock = clock
        self._max_bytes = max_bytes
        self._idle = idle
        self._max_open = max_open
        self._max_ids = max_ids
        self._open: OrderedDict[str, _Cursor] = OrderedDict()
        self._ids_held = 0

    def __len__(self) -> int:
        return len(self._open)

    def _drop(self, cursor_id: str) -> None:
        cursor = self._open.pop(cursor_id)
        self._ids_held -= len(cursor.ids)

    def expire(self) -> None:
        deadline = self._clock() - self._idle
        while self._open:
            cursor_id, cursor = next(iter(self._open.items()))
            if cursor.used_at > deadline:
                break
            self._drop(cursor_id)

    def open(
        self,
        table: Table,
        include_hidden: bool,
        since: str,
        fields: Any = None,
        where: list[Node] | None = None,
    ) -> str:
        """Open a cursor over ``table``; ``since`` the store's latest timestamp
        (``records.Timestamps.latest``), ``fields`` the unchecked ``fields`` argument, ``where``
        the parsed ``where`` nodes (``filters.parse_where``)."""
        project = parse_fields(fields, table.hidden, include_hidden)  # before any state changes
        self.expire()
        if len(self._open) >= self._max_open:  # refused, not evicted: see the module doc
            raise StoreBusy("too many scan cursors open; retry shortly", {"max": self._max_open})
        cursor = _Cursor(table, include_hidden, project, self._clock(), where or [], since)
        # One cursor alone may pass max_ids (else a big table could never be scanned).
        if self._open and self._ids_held + len(cursor.ids) > self._max_ids:
            raise StoreBusy("scan cursors hold too many ids; retry shortly", {"max": self._max_ids})
        cursor_id = os.urandom(16).hex()
        self._open[cursor_id] = cursor
        self._ids_held += len(cursor.ids)
        return cursor_id

    def close(self, cursor_id: str) -> bool:
        """Free a cursor now; False if there is none by that id (finished, expired, closed)."""
        if cursor_id not in self._open:
            return False
        self._drop(cursor_id)
        return True

    def close_table(self, table: Table) -> int:
        """Free every cursor over ``table`` (dropped); how many there were."""
        doomed = [cursor_id for cursor_id, cursor in self._open.items() if cursor.table is table]
        for cursor_id in doomed:
            self._drop(cursor_id)
        return len(doomed)

    def read(self, cursor_id: str, limit: int) -> EncodedPage:
        """``{"items": up to limit records, "cursor": cursor_id or None at the end}``."""
        self.expire()
        cursor = self._open.get(cursor_id)
        if cursor is None:
            raise NotFound(
                "no such cursor (finished, closed, expired, or its table dropped)",
                {"cursor": cursor_id},
            )
        rows, ids, table, project = cursor.table.rows, cursor.ids, cursor.table, cursor.project
        keep, since = cursor.keep, cursor.since
        items: list[dict[str, Any]] = []
        position = cursor.position
        stop = min(len(ids), position + cursor.probes)
        # Encoded as they are read, to stop at the byte budget; the server sends these bytes
        # (``EncodedPage``), so measuring costs no second encoding.
        packer, budget = item_packer(), self._max_bytes
        packer.reset()
        pack, buffer = packer.pack, packer.getbuffer
        while position < stop and len(items) < limit and len(buffer()) < budget:
            record = rows.get(ids[position])
            position += 1
            if (
                record is not None
                and record["created_at"] <= since
                and (keep is None or keep(record))
            ):
                if project is None:
                    item = table.visible(record, cursor.include_hidden)
                else:
                    item = project(record)
                    if table.hidden is not cursor.hidden and not cursor.include_hidden:
                        # A field hidden since the cursor was opened with it among its
                        # ``fields`` is not returned (QA: it was).
                        item = table.strip(item)
                items.append(item)
                pack(item)
        body = packer.bytes()
        release_items(len(body))
        cursor.position = position
        if position >= len(ids):
            self._drop(cursor_id)
            return EncodedPage({"items": items, "cursor": None}, "items", body)
        cursor.used_at = self._clock()
        self._open.move_to_end(cursor_id)
        return EncodedPage({"items": items, "cursor": cursor_id}, "items", body)
