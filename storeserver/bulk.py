"""``update_where`` and ``delete_where``: one atomic command over every row a filter selects.

The matching rows are collected first; more than ``max_rows`` of them (default and ceiling:
the engine's ``max_bulk_rows``) is ``LIMIT_EXCEEDED`` before anything changes. The rows are
then changed one by one through ``RecordWriter`` with an undo log, and the first failure
(unique value, foreign key, schema, dependants) rolls every one of them back. Each changed
row is journaled as a single write would be, so replaying the log replays the command; the
audit log gets one entry naming the filter and the number of rows.
"""

from __future__ import annotations

from storeserver.arguments import Args, check_keys, limit, optional_bool, required_dict
from storeserver.errors import LimitExceeded
from storeserver.reads import matching_records
from storeserver.records import merge_patch
from storeserver.tables import Record, Table
from storeserver.writes import RecordWriter, Undo

_UPDATE_ARGS = frozenset({"table", "where", "changes", "max_rows"})
_DELETE_ARGS = frozenset({"table", "where", "cascade", "max_rows"})


class BulkWriter:
    def __init__(self, writer: RecordWriter, max_rows: int, max_in: int) -> None:
        self.writer = writer
        self.max_rows = max_rows
        self.max_in = max_in

    def update_where(self, args: Args) -> dict[str, int]:
        check_keys(args, _UPDATE_ARGS)
        table = self.writer.catalog.get(args)
        changes = required_dict(args, "changes")
        matched = self._select(table, args)
        undo: Undo = []
        updated = 0
        try:
            for old in matched:
                new = merge_patch(old, changes)
                if new != old:
                    self.writer._update(table, old, new, undo)
                    updated += 1
        except BaseException:
            self.writer.rollback(undo)
            raise
        if updated:
            self.writer.audit.add(
                table.name, "update_where", None, changes, updated, where=args.get("where")
            )
        return {"matched": len(matched), "updated": updated}

    def delete_where(self, args: Args) -> dict[str, int]:
        check_keys(args, _DELETE_ARGS)
        table = self.writer.catalog.get(args)
        cascade = optional_bool(args, "cascade")
        matched = self._select(table, args)
        doomed = {(table.name, r["id"]) for r in matched}
        writer = self.writer
        undo: Undo = []
        cascaded = 0
        try:
            for record in matched:
                if table.rows.get(record["id"]) is not record:
                    continue  # already gone with an earlier row's dependants
                dependants = writer._dependants(table, record, cascade, doomed)
                for victim_table, victim in reversed(dependants):
                    if victim_table.rows.get(victim["id"]) is victim:
                        writer._remove(victim_table, victim, undo)
                        cascaded += 1
                writer._remove(table, record, undo)
        except BaseException:
            writer.rollback(undo)
            raise
        deleted = len(matched)
        if deleted:
            writer.audit.add(
                table.name, "delete_where", None, (), deleted + cascaded, where=args.get("where")
            )
        return {"deleted": deleted, "cascaded": cascaded}

    def _select(self, table: Table, args: Args) -> list[Record]:
        max_rows = limit(args, self.max_rows, self.max_rows, "max_rows")
        records = matching_records(table, args.get("where"), max_in=self.max_in)
        if len(records) > max_rows:
            raise LimitExceeded(
                f"{len(records)} rows match, more than max_rows ({max_rows})",
                {"arg": "max_rows", "matched": len(records), "max": max_rows},
            )
        return records
