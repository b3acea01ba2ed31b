"""The record write commands: insert (and upsert), replace, patch, delete (with cascade).

Each command validates everything (arguments, existence, version, foreign keys, uniqueness,
the table's JSON Schema, size) before it changes anything, so a failing command leaves no
trace. A record may not take more than ``max_record_bytes`` encoded (``RECORD_TOO_LARGE``).
Measuring costs an encoding, so a record the client sent whole (insert, replace) is measured
only when its request was big enough to hold one that large (``measure_sent``); a merge
(patch, upsert, ``update_where``) can grow a record from a small request: always measured,
and its values counted against ``MAX_VALUES`` when it encodes to more bytes than that
(``records.check_merged_values``).
Inside a batch each command also appends to an undo log; ``rollback`` replays it backwards,
restoring rows and indexes exactly (creation order included). Successful changes are
appended to ``changes`` for the journal: ``("table", name, spec)``, ``("put", table,
record)``, ``("delete", table, id)``. Each change of a record is also noted in the audit
log (``audit.AuditLog.add``).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import Any

from storeserver.arguments import (
    Args,
    check_keys,
    optional_bool,
    optional_version,
    required_dict,
    table_name,
)
from storeserver.audit import AuditLog
from storeserver.catalog import Catalog
from storeserver.errors import BadRequest, Conflict, RecordTooLarge, VersionMismatch
from storeserver.protocol import MAX_FRAME_SIZE, pack_value
from storeserver.records import (
    MAX_VALUES,
    META_FIELDS,
    IdGenerator,
    Timestamps,
    check_id,
    check_merged_values,
    copy_fields,
    max_record_bytes,
    merge_patch,
    no_record,
    same_value,
    take_fields,
)
from storeserver.tables import Record, Table

_INSERT_ARGS = frozenset({"table", "record", "upsert", "create"})
_REPLACE_ARGS = frozenset({"table", "id", "record", "expected_version"})
_PATCH_ARGS = frozenset({"table", "id", "changes", "expected_version"})
_DELETE_ARGS = frozenset({"table", "id", "expected_version", "cascade"})

# Undo log entries: (kind, ...) replayed backwards by ``rollback``.
_INSERTED, _REPLACED, _REMOVED, _CREATED = range(4)
Undo = list[tuple[Any, ...]]


class RecordWriter:
    def __init__(
        self,
        catalog: Catalog,
        clock: Callable[[], float],
        journal: bool = True,
        audit: AuditLog | None = None,
        max_bytes: int = max_record_bytes(MAX_FRAME_SIZE),
    ) -> None:
        self.catalog = catalog
        self.max_record_bytes = max_bytes
        # Per command (``Engine.execute`` sets it): whether records sent whole are measured too.
        self.measure_sent = True
        self.timestamps = Timestamps(clock)
        self.new_id = IdGenerator()
        self.journal = journal
        self.changes: list[tuple[Any, ...]] = []
        self.audit = audit if audit is not None else AuditLog(clock)

    # -- commands ---------------------------------------------------------------------------

    def insert(self, args: Args, undo: Undo | None = None) -> Record:
        if not args.keys() <= _INSERT_ARGS:
            check_keys(args, _INSERT_ARGS)
        record = args.get("record")
        if type(record) is not dict:
            record = required_dict(args, "record")  # raises
        name = args.get("table")
        table = self.catalog.tables.get(name) if type(name) is str else None
        rid = record.get("id")
        upsert = "upsert" in args and optional_bool(args, "upsert")
        create = "create" not in args or optional_bool(args, "create")
        if upsert and table is not None:
            old = table.rows.get(rid) if type(rid) is str else None
            if old is not None:
                merged = merge_patch(old, record)
                fields = changed_by(old, merged, record)
                if not fields:
                    return table.visible(old, False)  # as ``patch``: nothing to write
                new = self._update(table, old, merged, undo)
                self.audit.add(table.name, "upsert", old["id"], fields, 1, at=new["updated_at"])
                return new
        if upsert:
            # An upsert creates what its merge would make of an empty record: a null removes
            # (RFC 7396), so the same upsert sent again changes nothing (QA: the create kept
            # {"discount": null}, and the repeat merged it away, version 2).
            record = merge_patch({}, record)
        chosen = rid is not None
        rid = self.new_id() if rid is None else check_id(rid)
        # Built as the table stores it (``Table.new_row``), so it is kept without a copy.
        new = {} if table is None else table.new_row()
        new["id"] = rid
        if upsert:
            take_fields(new, record)  # merge_patch's copy
        else:
            copy_fields(new, record)
        # Stamped before the checks: a unique index may be on a store-owned field too.
        stamp = self.timestamps()
        new["created_at"] = stamp
        new["updated_at"] = stamp
        new["version"] = 1
        if table is None:
            if not create:
                # A writer that has written here already (an import's later batches): a table
                # dropped meanwhile is not made again with the rest (QA: a force drop during an
                # import left a fresh table with part of the rows, the import "succeeded").
                self.catalog.get(args)  # raises NotFound (or BadRequest for the name)
            name = table_name(args)
            if self.measure_sent:
                self._check_size(name, new)
            self.catalog.check_room()
            table = self.catalog.add_empty(name)
            if chosen and table.version_floor:  # a dropped table's: as below, for its first
                new["version"] = table.version_floor + 1
            if self.journal:
                self.changes.append(("table", name, table.spec()))
            if undo is not None:
                undo.append((_CREATED, name))
            new = table.keep(new)
        else:
            if rid in table.rows:
                raise Conflict(
                    f"id {rid!r} exists in {table.name}",
                    {"reason": "duplicate_id", "table": table.name, "id": rid},
                )
            if chosen and table.version_floor:
                # Maybe an id deleted before: start above every deleted version, so no ETag
                # or If-Match of the old record fits the new one (generated ids are new).
                new["version"] = table.version_floor + 1
            if self.measure_sent:
                self._check_size(table.name, new)
            if table.foreign_keys:
                self._check_foreign_keys(table, new, None)
            if table.uniques:
                table.check_unique(new, rid)
            if table.schema is not None:
                table.schema.check(new, table.name)
        table.add(new)
        if self.journal:
            self.changes.append(("put", table.name, new))
        if undo is not None:
            undo.append((_INSERTED, table, new))
        self.audit.add(table.name, "insert", rid, record, 1, at=stamp)
        return table.strip(new) if table.hidden else new

    def replace(self, args: Args, undo: Undo | None = None) -> Record:
        check_keys(args, _REPLACE_ARGS)
        table = self.catalog.get(args)
        rid = _id_arg(args)
        record = required_dict(args, "record")
        expected = optional_version(args)
        new: Record = {"id": rid}
        copy_fields(new, record)
        old = self._current(table, rid, expected)
        new["created_at"] = old["created_at"]
        fields = [k for k in changed_fields(old, new) if k not in META_FIELDS]
        if not fields:
            return table.visible(old, False)  # as ``patch``: nothing to write
        result = self._update(table, old, new, undo, merged=False)
        self.audit.add(table.name, "replace", rid, fields, 1, at=new["updated_at"])
        return result

    def patch(self, args: Args, undo: Undo | None = None) -> Record:
        check_keys(args, _PATCH_ARGS)
        table = self.catalog.get(args)
        rid = _id_arg(args)
        changes = required_dict(args, "changes")
        expected = optional_version(args)
        old = self._current(table, rid, expected)
        new = merge_patch(old, changes)
        fields = changed_by(old, new, changes)
        if not fields:
            # No new version, so ETags and caches of the record stay valid; no journal or
            # audit entry either (``update_where`` skips such rows too).
            return table.visible(old, False)
        result = self._update(table, old, new, undo)
        # The stored id, not the request's equal copy: the entry then shares the record's.
        self.audit.add(table.name, "patch", old["id"], fields, 1, at=result["updated_at"])
        return result

    def delete(self, args: Args, undo: Undo | None = None) -> dict[str, Any]:
        check_keys(args, _DELETE_ARGS)
        table = self.catalog.get(args)
        rid = _id_arg(args)
        expected = optional_version(args)
        cascade = optional_bool(args, "cascade")
        record = self._current(table, rid, expected)
        if table.keeps:  # before any row goes: a single delete has no undo
            table.check_keeps(record, None)
        doomed = self._dependants(table, record, cascade)
        # A dependant's table may refuse to lose it (``keeps``) after others went: a cascade
        # outside a batch undoes its own removals then (a batch undoes all of its ops).
        own: Undo | None = [] if undo is None and doomed else None
        removals = undo if own is None else own
        try:
            for victim_table, victim in reversed(doomed):  # deepest first
                self._remove(victim_table, victim, removals)
            self._remove(table, record, removals)
        except BaseException:
            if own is not None:
                self.rollback(own)
            raise
        self.audit.add(table.name, "delete", rid, (), 1)
        self.audit_cascade(doomed)
        return {"id": rid, "cascaded": len(doomed)}

    def audit_cascade(self, doomed: Iterable[tuple[Table, Record]]) -> None:
        """An entry per table that lost rows to a cascade (op ``cascade_delete``, their count),
        after the entry of the delete that caused it (QA: an order deleted with its user left
        no trace under ``table=orders``). Counted per table, not per row, as a delete_where
        is: a user with 50,000 orders does not push 50,000 entries out of the bounded log."""
        counts: dict[str, int] = {}
        for victim_table, _ in doomed:
            counts[victim_table.name] = counts.get(victim_table.name, 0) + 1
        for name, count in counts.items():
            self.audit.add(name, "cascade_delete", None, (), count)

    def rollback(self, undo: Undo) -> None:
        """Undo a partly applied batch, newest change first."""
        touched: dict[Table, None] = {}
        for entry in reversed(undo):
            kind = entry[0]
            if kind == _INSERTED:
                entry[1].remove(entry[2])
            elif kind == _REPLACED:
                entry[1].swap(entry[3], entry[2])
                touched[entry[1]] = None
            elif kind == _REMOVED:
                entry[1].restore(entry[2])
                entry[1].version_floor = entry[3]
                touched[entry[1]] = None
            else:
                self.catalog.drop(entry[1])
        for table in touched:
            table.normalize()
        undo.clear()

    # -- helpers ----------------------------------------------------------------------------

    def _current(self, table: Table, rid: str, expected: int | None) -> Record:
        record = table.rows.get(rid)
        if record is None:
            raise no_record(table.name, rid)
        if expected is not None and expected != record["version"]:
            raise VersionMismatch(
                f"version is {record['version']}, not {expected}",
                {"current": record["version"], "table": table.name, "id": rid},
            )
        return record

    def _update(
        self, table: Table, old: Record, new: Record, undo: Undo | None, merged: bool = True
    ) -> Record:
        # The checks see the record as it will be stored: a unique index on ``version`` or
        # ``updated_at`` is enforced like any other (``new`` is a fresh dict, dropped on failure).
        new["updated_at"] = self.timestamps()
        new["version"] = old["version"] + 1
        if merged or self.measure_sent:
            size = self._check_size(table.name, new)
            if merged and size > MAX_VALUES:  # fewer bytes cannot hold more values
                check_merged_values(old, new)
        if table.keeps:
            table.check_keeps(old, new)
        if table.foreign_keys:
            self._check_foreign_keys(table, new, old)
        if table.uniques:
            table.check_unique(new, new["id"])
        if table.schema is not None:
            table.schema.check(new, table.name)
        table.replace(old, new)
        if self.journal:
            self.changes.append(("put", table.name, new))
        if undo is not None:
            undo.append((_REPLACED, table, old, new))
        return table.visible(new, False)

    def _check_size(self, table: str, record: Record) -> int:
        """``RECORD_TOO_LARGE`` unless ``record`` encodes within the limit (exactly: about a
        microsecond per small record, 2 ms per MB); its encoded size."""
        size = len(pack_value(record))
        if size > self.max_record_bytes:
            raise RecordTooLarge(
                f"the record would take {size} bytes, over the limit of"
                f" {self.max_record_bytes} bytes: store large values in smaller records",
                {"table": table, "id": record["id"], "max": self.max_record_bytes, "size": size},
            )
        return size

    def _remove(self, table: Table, record: Record, undo: Undo | None) -> None:
        if table.keeps:
            table.check_keeps(record, None)
        floor = table.version_floor
        table.delete(record)
        if self.journal:
            self.changes.append(("delete", table.name, record["id"]))
        if undo is not None:
            undo.append((_REMOVED, table, record, floor))

    def _check_foreign_keys(self, table: Table, new: Record, old: Record | None) -> None:
        """Check every changed reference; store the target's own id string (saves memory)."""
        tables = self.catalog.tables
        for field, target_name in table.foreign_keys.items():
            value = new.get(field)
            if value is None or (old is not None and old.get(field) is value):
                continue
            target = tables.get(target_name)
            referenced = target.rows.get(value) if type(value) is str and target else None
            if referenced is not None:
                new[field] = referenced["id"]  # equal, but one shared object per id
                continue
            if target is table and value == new["id"]:
                continue  # a row may reference itself
            raise Conflict(
                f"{table.name}.{field} names no record in {target_name}",
                {
                    "reason": "foreign_key",
                    "field": field,
                    "table": table.name,
                    "references": target_name,
                },
            )

    def _dependants(
        self,
        table: Table,
        record: Record,
        cascade: bool,
        exempt: Container[tuple[str, str]] = frozenset(),
    ) -> list[tuple[Table, Record]]:
        """Rows that reference ``record`` (transitively when cascading), parents first.

        Rows in ``exempt`` (deleted by the same command anyway) neither block nor cascade.
        """
        referrers = self.catalog.referrers
        if table.name not in referrers:
            return []
        found: list[tuple[Table, Record]] = []
        seen = {(table.name, record["id"])}
        # ``exempt`` is read, never copied into ``seen``: delete_where passes the same set
        # of every matched row for each of them (a copy each made it O(rows²)).
        stack = [(table, record)]
        while stack:
            parent_table, parent = stack.pop()
            for child_name, field in referrers.get(parent_table.name, ()):
                child_table = self.catalog.tables.get(child_name)
                if child_table is None:
                    continue
                for child_id in _referencing(child_table, field, parent["id"]):
                    if (child_name, child_id) in seen or (child_name, child_id) in exempt:
                        continue
                    if not cascade:
                        raise Conflict(
                            f"{child_name} rows reference this record",
                            {
                                "reason": "dependants",
                                "table": table.name,
                                "id": record["id"],
                                "dependant_table": child_name,
                                "field": field,
                            },
                        )
                    seen.add((child_name, child_id))
                    child = child_table.rows[child_id]
                    found.append((child_table, child))
                    stack.append((child_table, child))
        return found


def changed_fields(old: Record, new: Record) -> list[str]:
    """Names of the top-level fields that differ between two versions of a record."""
    return [
        k
        for k in old.keys() | new.keys()
        if not same_value(old.get(k, _MISSING), new.get(k, _MISSING))
    ]


def changed_by(old: Record, new: Record, changes: Record) -> list[str]:
    """The fields ``new``, ``old`` merge-patched with ``changes``, stores otherwise than
    ``old`` (only the patch's top-level fields can differ): none, nothing to write. The
    audit lists these, not every name sent (QA: a patch that set one field again and
    removed one that never existed listed both)."""
    return [k for k in changes if not same_value(old.get(k, _MISSING), new.get(k, _MISSING))]


_MISSING = object()


def _referencing(table: Table, field: str, rid: str) -> list[str]:
    ids = table.lookup(field, rid)
    if ids is None:  # no index on the field (declared by an old journal): scan
        return [i for i, r in table.rows.items() if r.get(field) == rid]
    if field in table.hashes:  # keys strings as they are: exact, as the check on write
        return list(ids)
    # A unique index's one id. A reference names one id exactly, and a casefold one lists the
    # row of "abc" for "ABC" (QA: deleting parent ABC with cascade deleted the child of abc).
    return [i for i in ids if table.rows[i].get(field) == rid]


def _id_arg(args: Args) -> str:
    rid = args.get("id")
    if type(rid) is not str or not rid:
        raise BadRequest("id must be a non-empty string", {"arg": "id"})
    return rid
