"""``update_where`` and ``delete_where``: one atomic command over every row a filter selects.

The matching rows are collected first; more than ``max_rows`` of them (default and ceiling:
the engine's ``max_bulk_rows``) is ``LIMIT_EXCEEDED`` before anything changes. The rows are
then changed one by one through ``RecordWriter`` with an undo log, and the first failure
(unique value, foreign key, schema, dependants) rolls every one of them back. Each changed
row is journaled as a single write would be, so replaying the log replays the command; the
audit log gets one entry naming the filter and the number of rows.

Design note. Selecting by a filter no index serves reads every row (0.2 s per million), and
the store is one thread. Over more than ``CHUNK`` candidate rows the command is a
``BulkWrite`` job: the candidates (as of the start) are filtered ``CHUNK`` per step while the
job watches the table (``Table.watchers``) for rows written meanwhile. The last step tests
those rows again, as they are then, with the whole filter, so the rows changed are exactly
those matching at that step, and it changes them all in that one step: the command is atomic
as of its last step, as if it had run whole there. Only the selection is spread out. What the
filter means may change meanwhile (a casefold unique index added or dropped changes ``eq``; a
field made hidden can no longer be filtered on): then the selection starts over, as
``IndexBuild`` does when its collisions are resolved meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from storeserver.arguments import Args, check_keys, limit, optional_bool, required_dict
from storeserver.builds import Job
from storeserver.errors import LimitExceeded
from storeserver.filters import compile_predicate, fields_of, parse_where, plan
from storeserver.query import Predicate
from storeserver.records import apply_patch, checked_patch, same_value
from storeserver.selection import candidates, count_of, matches_in, rows_per_step
from storeserver.tables import Record, Table
from storeserver.writes import RecordWriter, Undo

_UPDATE_ARGS = frozenset({"table", "where", "changes", "max_rows"})
_DELETE_ARGS = frozenset({"table", "where", "cascade", "max_rows"})

# The rows to change, and the field names the filter tests (``None`` without a filter).
Change = Callable[[list[Record], list[str] | None], dict[str, int]]
_CREATED = itemgetter("created_at")


class BulkWrite(Job):
    """A ``*_where`` command over many rows: the selection in chunks, then ``finish``."""

    def __init__(
        self, command: str, table: Table, where: Any, max_in: int, max_rows: int, change: Change
    ) -> None:
        self.command = command
        self.table = table
        self.where = where
        self.max_in = max_in
        self.max_rows = max_rows
        self.change = change
        self.watching = False
        self._start()

    def _start(self) -> None:
        table = self.table
        # What the filter means: which fields compare ignoring case, which may be named.
        self.meaning = (table.casefold_fields, table.hidden)
        conditions = parse_where(self.where, table.hidden, False, self.max_in)
        # What the audit entry keeps of the filter: names, never values.
        self.filter_fields = None if self.where is None else fields_of(conditions)
        self.chunk = rows_per_step(conditions)
        ids, self.predicate = plan(table, conditions) if conditions else (None, None)
        # Rows written meanwhile are tested again with every condition (their indexed field
        # may have changed too): ``plan``'s predicate leaves out what its index answered.
        self.full: Predicate | None = compile_predicate(conditions, table.casefold_fields)
        # The candidates are taken at the first step: a job set aside to wait for a turn
        # (``scheduler.SCAN_JOBS``) holds no list. Rows written before then are in ``written``.
        self.ids = ids
        self.size = count_of(table.rows, ids)
        self.rows_read: list[Record] | None = None
        self.pos = 0
        self.matched: list[Record] = []
        self.written: set[str] = set()

    def watch(self) -> BulkWrite:
        """Hear of writes to the table (a job: other commands run between its steps)."""
        self.table.watchers = (*self.table.watchers, self)
        self.watching = True
        return self

    def changed(self, old: Record | None, new: Record | None) -> None:
        self.written.add((new if new is not None else old)["id"])  # type: ignore[index]

    def step(self) -> bool:
        table = self.table
        if self.meaning != (table.casefold_fields, table.hidden):
            self._start()  # the filter means something else now (may raise BAD_REQUEST)
        if self.rows_read is None:
            self.rows_read = candidates(table.rows, self.ids)
            self.ids = None  # possibly a live index bucket: not kept
        self.matched += matches_in(self.rows_read, self.pos, self.chunk, self.predicate)
        self.pos += self.chunk
        # Rows written meanwhile may stop matching: only past that is the limit surely hit.
        surely = len(self.matched) - len(self.written)
        if surely > self.max_rows:
            self._too_many(surely, at_least=self.pos < len(self.rows_read))
        return self.pos >= len(self.rows_read)

    def finish(self) -> dict[str, int]:
        """Change the rows matching now (all in this one step); raises if more than
        ``max_rows`` do, before anything changes."""
        self.abort()
        selected = self._selected()
        if len(selected) > self.max_rows:
            self._too_many(len(selected))
        return self.change(selected, self.filter_fields)

    def abort(self) -> None:
        if self.watching:
            table = self.table
            table.watchers = tuple(w for w in table.watchers if w is not self)
            self.watching = False
        self.rows_read = []
        self.ids = None

    def _selected(self) -> list[Record]:
        written = self.written
        if not written:
            return self.matched  # untouched rows are the very records that were tested
        rows, full = self.table.rows, self.full
        selected = [r for r in self.matched if r["id"] not in written]
        for rid in written:
            record = rows.get(rid)
            if record is not None and (full is None or full(record)):
                selected.append(record)
        selected.sort(key=_CREATED)  # creation order, as one pass over the table gives
        return selected

    def _too_many(self, matched: int, at_least: bool = False) -> None:
        """``at_least``: the selection stopped early; ``matched`` is a lower bound."""
        details = {"arg": "max_rows", "matched": matched, "max": self.max_rows}
        if at_least:
            details["at_least"] = True
        raise LimitExceeded(
            f"{'at least ' if at_least else ''}{matched} rows match,"
            f" more than max_rows ({self.max_rows})",
            details,
        )


class BulkWriter:
    def __init__(self, writer: RecordWriter, max_rows: int, max_in: int) -> None:
        self.writer = writer
        self.max_rows = max_rows
        self.max_in = max_in

    def update_where(self, args: Args) -> dict[str, int] | BulkWrite:
        check_keys(args, _UPDATE_ARGS)
        table = self.writer.catalog.get(args)
        changes = required_dict(args, "changes")
        # Checked before any row is selected, so a bad patch is refused whatever the filter
        # matches (none included), and copied once: the rows share its values.
        patch = checked_patch(changes)

        def change(matched: list[Record], filter_fields: list[str] | None) -> dict[str, int]:
            undo: Undo = []
            updated = 0
            changed = changed_fields_by(patch)
            fields: set[str] = set()  # changed in any row
            try:
                for old in matched:
                    new = apply_patch(old, patch)
                    names = changed(old, new)
                    if names:
                        self.writer._update(table, old, new, undo)
                        updated += 1
                        fields.update(names)
            except BaseException:
                self.writer.rollback(undo)
                raise
            if updated:
                self.writer.audit.add(
                    table.name,
                    "update_where",
                    None,
                    [name for name in patch if name in fields],  # the patch's order
                    updated,
                    filter_fields=filter_fields,
                )
            return {"matched": len(matched), "updated": updated}

        return self._run("update_where", table, args, change)

    def delete_where(self, args: Args) -> dict[str, int] | BulkWrite:
        check_keys(args, _DELETE_ARGS)
        table = self.writer.catalog.get(args)
        cascade = optional_bool(args, "cascade")

        def change(matched: list[Record], filter_fields: list[str] | None) -> dict[str, int]:
            doomed = {(table.name, r["id"]) for r in matched}
            writer = self.writer
            undo: Undo = []
            victims: list[tuple[Table, Record]] = []
            try:
                for record in matched:
                    if table.rows.get(record["id"]) is not record:
                        continue  # already gone with an earlier row's dependants
                    dependants = writer._dependants(table, record, cascade, doomed)
                    for victim_table, victim in reversed(dependants):
                        if victim_table.rows.get(victim["id"]) is victim:
                            writer._remove(victim_table, victim, undo)
                            victims.append((victim_table, victim))
                    writer._remove(table, record, undo)
            except BaseException:
                writer.rollback(undo)
                raise
            deleted = len(matched)
            if deleted:
                writer.audit.add(
                    table.name, "delete_where", None, (), deleted, filter_fields=filter_fields
                )
                writer.audit_cascade(victims)
            return {"deleted": deleted, "cascaded": len(victims)}

        return self._run("delete_where", table, args, change)

    def _run(
        self, command: str, table: Table, args: Args, change: Change
    ) -> dict[str, int] | BulkWrite:
        """The command done now, or, over more than ``CHUNK`` candidate rows, as a job."""
        max_rows = limit(args, self.max_rows, self.max_rows, "max_rows")
        job = BulkWrite(command, table, args.get("where"), self.max_in, max_rows, change)
        if job.size > job.chunk:
            job.context = self.writer.audit.context  # the audit entry names the caller
            return job.watch()
        job.chunk = max(job.size, 1)  # one step: nothing can be written meanwhile
        job.step()
        return job.finish()


def changed_fields_by(patch: Record) -> Callable[[Record, Record], list[str]]:
    """``writes.changed_by`` for the rows one ``checked_patch`` is applied to, each field
    compared once per distinct old value: whether ``patch`` changes a field depends only on
    the field's old value, and rows written by an earlier ``update_where`` share theirs (a
    100,000-value list written again over 1,000 rows was compared 1,000 times: 6.8 s)."""
    seen: dict[tuple[str, int], bool] = {}

    def changed(old: Record, new: Record) -> list[str]:
        names = []
        for name in patch:
            before = old.get(name, _MISSING)
            # ``old`` stays alive through the command (in the matched rows and the undo
            # log), so the id of its value names that value throughout.
            key = (name, id(before))
            same = seen.get(key)
            if same is None:
                same = seen[key] = same_value(before, new.get(name, _MISSING))
            if not same:
                names.append(name)
        return names

    return changed


_MISSING = object()
