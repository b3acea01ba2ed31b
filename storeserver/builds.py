"""Long commands run in chunks: an index built over a big table, a schema checked over one.

Design note. The store is one thread, so a command that reads a million rows stalls every
client. These commands instead return a ``Job``: the server calls ``Engine.advance(job)``
once per loop turn (other clients' commands run in between) until the job is done, then
sends its reply. A job sees writes made meanwhile through ``Table.watchers``:

- ``IndexBuild`` copies the table's id list, indexes ``CHUNK`` of those ids per step, and
  applies every row change made during the build to its index at once (those ids are then
  skipped by the chunks). A hash index keeps those rows apart (``late``) and places them in
  creation order as it is put in force; the chunks' ids, in creation order, go last in their
  buckets (one out of order, after an undo, is marked and placed: ``HashIndex.add_moved``).
  A unique index records colliding ids instead
  of enforcing anything: it is not in force until complete. At the end, collisions still
  true are a ``CONFLICT`` with examples; those since resolved are settled, each key given to
  the row that holds it now (``IndexBuild._settle``).
- ``ChunkedRead`` runs a read (``find``, ``count``, ``join``, ``aggregate`` over many rows,
  ``selection``) as a generator yielding between chunks. It reads a copy of the row list
  taken when the command starts; stored records are never mutated (a write swaps in a new
  dict), so that copy is a consistent view as of the command's start, whatever is written
  meanwhile. Its chunks are sized by time (``Pace``): a row can cost far more than another
  (a field holding a 500,000-item list takes ~0.1 s to key or sort), so a step takes as many
  rows as fit ``STEP_SECONDS``, up to ``CHUNK``. A read over fewer rows runs at once, unless
  it is still running after ``STEP_SECONDS``: then the server lets it go on as a job
  (``spill``).
- ``SchemaCheck`` validates as many rows per step as fit ``STEP_SECONDS`` (``Pace``: one
  row's check can cost up to ``schemas.MAX_STEPS`` keywords), and each row written meanwhile
  as it is written.
- ``bulk.BulkWrite`` (``update_where``/``delete_where`` over many rows) selects ``CHUNK``
  rows per step, tests the rows written meanwhile again at the end, and changes them all in
  its last step.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import Any, TypeVar

from storeserver.indexes import HashIndex, UniqueIndex
from storeserver.schemas import TableSchema
from storeserver.tables import MAX_EXAMPLES, Record, Table

CHUNK = 10_000
"""Rows handled per step (a few milliseconds)."""
MAX_VIOLATIONS = 100
REPORT_BYTES = 256 * 1024
"""About the most a ``set_schema`` report's violations take (``SchemaCheck.report``)."""

STEP_SECONDS = 0.005
"""About how long a step of a read holds the loop (the scheduler's ``JOB_BUDGET`` too)."""

T = TypeVar("T")


class Pace:
    """The rows each step of a read takes, sized by how long the last one took.

    The first step takes one row; while steps take under a quarter of ``STEP_SECONDS`` the
    next takes eight times as many, up to ``most``; a slower one sizes the next to fit
    ``STEP_SECONDS`` (at least one row). Cheap rows so reach ``most`` in a few steps, and
    rows that hold large values are read a few per step. A consumer reads each slice that
    ``slices`` hands out, then calls ``measure`` before it yields::

        for start, end in pace.slices(len(rows)):
            ...  # rows[start:end]
            pace.measure()
            yield
    """

    __slots__ = ("began", "most", "rows", "step_began")

    def __init__(self, most: int = CHUNK, first: int = 1) -> None:
        self.most = most
        self.rows = first
        self.began = 0.0
        self.step_began = time.perf_counter()

    def slices(self, total: int) -> Iterator[tuple[int, int]]:
        start = 0
        while start < total:
            end = min(total, start + self.rows)
            self.began = time.perf_counter()
            yield start, end
            start = end

    def next_end(self, start: int, total: int) -> int:
        """The end of the slice from ``start``: ``slices`` for a job that keeps its place."""
        self.began = time.perf_counter()
        return min(total, start + self.rows)

    def measure(self) -> None:
        """Size the next slice from the time since this one was handed out."""
        took = time.perf_counter() - self.began
        if took * 4 < STEP_SECONDS:
            self.rows = min(self.most, self.rows * 8)
        else:
            self.rows = max(1, min(self.most, int(self.rows * STEP_SECONDS / took)))

    def due(self) -> bool:
        """Whether the step begun at the last ``restart`` has run ``STEP_SECONDS``: for loops
        that yield when a step's time is up rather than after every slice (a merge, item by
        item; metrics fed many small groups, a slice each)."""
        return time.perf_counter() - self.step_began >= STEP_SECONDS

    def restart(self) -> None:
        """A step begins (after a yield)."""
        self.step_began = time.perf_counter()


def release_steps(items: list[Any]) -> Generator[None, None, None]:
    """Empty a long list a slice per step, from its end (where ``del`` moves nothing), sized
    by time: a read's temporary objects freed at once held the loop (QA: the 300,000 groups of
    an ``aggregate`` took 43-47 ms to free, 100-113 ms for 1M). A short list goes at once."""
    if len(items) <= CHUNK:
        items.clear()
        return
    pace = Pace(len(items), CHUNK)
    while items:
        count = pace.next_end(0, len(items))
        del items[len(items) - count :]
        pace.measure()
        if items:
            yield


def run_steps(steps: Generator[None, None, T]) -> T:
    """A ``ChunkedRead``'s generator run to the end at once (work too small to split)."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def spill(job: ChunkedRead) -> Any:
    """A read run at once while it is quick: its result, or, once it has run
    ``STEP_SECONDS``, the job itself, for the server to go on with a step per loop turn (so a
    read of few but costly rows does not hold the loop either)."""
    deadline = time.perf_counter() + STEP_SECONDS
    while not job.step():
        if time.perf_counter() >= deadline:
            return job
    return job.result


class Job:
    """One long command in progress; ``step`` until it returns ``True``, then ``finish``."""

    command = ""
    context: Any = None  # the audit context of the command that started it

    def step(self) -> bool:
        raise NotImplementedError

    def abort(self) -> None:
        """Detach from the table (on failure, or when the server stops)."""


class ChunkedRead(Job):
    def __init__(self, command: str, steps: Generator[None, None, Any]) -> None:
        self.command = command
        self._steps = steps
        self.result: Any = None

    def step(self) -> bool:
        try:
            next(self._steps)
        except StopIteration as stop:
            self.result = stop.value
            return True
        return False

    def abort(self) -> None:
        self._steps.close()


class IndexBuild(Job):
    command = "create_index"

    def __init__(self, table: Table, field: str, unique: bool, casefold: bool) -> None:
        self.table = table
        self.field = field
        self.unique = unique
        self.casefold = casefold
        self._start()
        table.building[field] = self
        table.watchers = (*table.watchers, self)

    def _start(self) -> None:
        table = self.table
        self.index: UniqueIndex | HashIndex = (
            UniqueIndex(self.field, self.casefold)
            if self.unique
            else HashIndex(self.field, table.rows)
        )
        self.ids = list(table.rows)
        self.pos = 0
        # Rows per step by time: keying a value can cost ~0.1 s (a 300,000-item list), and
        # 20 such rows held the store ~2 s in one step (under CHUNK rows: no job at all).
        self.pace = Pace()
        self.written: set[str] = set()  # ids indexed by a write during the build
        # A hash index's rows written during the build, by key, kept out of its buckets until
        # ``finish``: in a bucket, a written row (often a newer one) went last, and every
        # older row the scan reached after it was a moved id, all sorted into place in the
        # last step (QA: 198,924 of 200,000 rows after 5 patches, a 0.42 s step).
        self.late: dict[Any, dict[str, None]] = {}
        self.collisions: dict[Any, dict[str, None]] = {}

    def _add(self, record: Record) -> None:
        index = self.index
        key = index.key_of(record)
        if key is None:
            return
        rid = record["id"]
        if type(index) is HashIndex:
            index.add_moved(key, rid, record["created_at"])
            return
        assert type(index) is UniqueIndex
        owner = index.owners.get(key)
        if owner is None:
            index.owners[key] = rid
        elif owner != rid:
            self.collisions.setdefault(key, {owner: None})[rid] = None

    def changed(self, old: Record | None, new: Record | None) -> None:
        index = self.index
        if type(index) is HashIndex:
            late = self.late
            if old is not None:
                key, rid = index.key_of(old), old["id"]
                ids = late.get(key)
                if ids is not None and rid in ids:
                    del ids[rid]
                    if not ids:
                        del late[key]
                else:
                    index.discard(key, rid)
            if new is not None:
                key = index.key_of(new)
                if key is not None:
                    late.setdefault(key, {})[new["id"]] = None
                self.written.add(new["id"])
            return
        if old is not None:
            index.discard(index.key_of(old), old["id"])
        if new is not None:
            self._add(new)
            self.written.add(new["id"])

    def step(self) -> bool:
        rows, written, ids = self.table.rows, self.written, self.ids
        end = self.pace.next_end(self.pos, len(ids))
        for i in range(self.pos, end):
            rid = ids[i]
            if rid not in written:
                record = rows.get(rid)
                if record is not None:
                    self._add(record)
        self.pos = end
        self.pace.measure()
        if end < len(ids):
            return False
        if self.collisions:
            groups = self._settle()
            if groups:
                self.abort()
                probe = self.index
                assert type(probe) is UniqueIndex
                self.table.raise_duplicates(probe, groups)
        return True

    def _settle(self) -> list[list[str]]:
        """The keys that collided during the pass, settled: groups of ids still sharing a
        key (only as many, and as many ids in each, as the ``CONFLICT`` names: walking every
        colliding id, unique on a 5-valued field of 1M rows, took ~1 s in this one step);
        or, when there are none, each such key owned by the one row holding it now, if any.

        Every row holding a key at the end is its owner or among its collisions: a row is
        added to one or the other each time it is indexed, and leaves ``owners`` only when
        its own row changes (and is indexed again). So the owner and the collisions of a
        key are all the rows that can hold it. (The build restarted its pass instead when a
        duplicate made meanwhile was resolved: QA, a failing batch that set a value taken,
        ~35 a second, rolled back each time, kept a build over 100,000 rows from ever
        ending.)"""
        rows, index = self.table.rows, self.index
        assert type(index) is UniqueIndex
        owners = index.owners
        groups = []
        settled: dict[Any, str | None] = {}
        for key, ids in self.collisions.items():
            owner = owners.get(key)
            claimants = ids if owner is None or owner in ids else (owner, *ids)
            holders = []
            for rid in claimants:
                record = rows.get(rid)
                if record is not None and index.key_of(record) == key:
                    holders.append(rid)
                    if len(holders) == MAX_EXAMPLES:
                        break
            if len(holders) > 1:
                groups.append(holders)
                if len(groups) == MAX_EXAMPLES:
                    break
            elif not groups:
                settled[key] = holders[0] if holders else None
        if not groups:
            for key, holder in settled.items():
                if holder is None:
                    owners.pop(key, None)
                else:
                    owners[key] = holder
        return groups

    def finish(self) -> None:
        """Put the complete index in force."""
        self.abort()
        index = self.index
        if type(index) is HashIndex:
            # The rows written meanwhile, placed in creation order among the scanned ones:
            # one pass per bucket they fall in, however many the scan added.
            for key, ids in self.late.items():
                index.moved.setdefault(key, []).extend(ids)
            index.normalize()
        self.table.attach_index(index)

    def abort(self) -> None:
        table = self.table
        table.watchers = tuple(w for w in table.watchers if w is not self)
        if table.building.get(self.field) is self:
            del table.building[self.field]


class SchemaCheck(Job):
    command = "set_schema"

    def __init__(self, table: Table, schema: TableSchema, force: bool) -> None:
        self.table = table
        self.schema = schema
        self.force = force
        self.ids = list(table.rows)
        self.pos = 0
        self.pace = Pace()  # a row's check can cost up to schemas.MAX_STEPS keywords
        self.bad: dict[str, list[dict[str, Any]]] = {}  # id -> errors (all violating rows' ids)
        table.watchers = (*table.watchers, self)

    def changed(self, old: Record | None, new: Record | None) -> None:
        # A row written meanwhile is checked as it is written, as every write is once the
        # schema is attached (and again if the scan has yet to reach it: the scan skipping
        # written rows made its steps' cost uneven, and the pacing overshot). Kept for the
        # last step, they held the store 2.2 s under a stream of writes (QA).
        if new is not None:
            self._check(new)
        elif old is not None:
            self.bad.pop(old["id"], None)

    def _check(self, record: Record) -> None:
        errors = self.schema.errors(record)
        rid = record["id"]
        if errors:
            self.bad[rid] = errors if len(self.bad) < MAX_VIOLATIONS else []
        else:
            self.bad.pop(rid, None)

    def step(self) -> bool:
        rows, ids = self.table.rows, self.ids
        end = self.pace.next_end(self.pos, len(ids))
        for i in range(self.pos, end):
            record = rows.get(ids[i])
            if record is not None:
                self._check(record)
        self.pace.measure()
        self.pos = end
        if end < len(ids):
            return False
        self.abort()
        return True

    def report(self) -> dict[str, Any]:
        """The rows checked and violating, and the first violations, as many as fit
        ``REPORT_BYTES`` (a reply must fit the smallest frame even when the schema is attached
        with ``force``: a write is never reported failed once applied)."""
        violations: list[dict[str, Any]] = []
        room = REPORT_BYTES
        for rid, errors in self.bad.items():
            if not errors:
                continue
            room -= len(rid) + sum(_error_size(e) for e in errors)
            if room < 0 or len(violations) == MAX_VIOLATIONS:
                break
            violations.append({"id": rid, "errors": errors})
        return {
            "checked": len(self.table.rows),
            "violating": len(self.bad),
            "violations": violations,
        }

    def abort(self) -> None:
        table = self.table
        table.watchers = tuple(w for w in table.watchers if w is not self)


def _error_size(error: dict[str, Any]) -> int:
    """About the bytes one violation takes encoded (its message and path, both bounded)."""
    path = error["path"]
    return 32 + len(error["message"].encode()) + sum(len(str(p).encode()) + 2 for p in path)
