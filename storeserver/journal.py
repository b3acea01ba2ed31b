"""Journal entries and the engine's state: replaying an entry (``apply_change``) and the
whole state as entries (``iter_state``, for snapshots).

Kept apart from the engine because this is its persistence side: the append-only log and the
snapshot files hold these entries (``persistence.py``), and a replay must rebuild what live
writes made, down to which string objects are shared. Recording the entries stays in the
engine (``Engine.drain_changes``), next to ``execute``, which rolls them back when a command
fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storeserver.catalog import TableSpec
from storeserver.errors import InternalError, StoreError
from storeserver.logfile import CorruptData
from storeserver.records import SHARED_STRING_LENGTH
from storeserver.schemas import TableSchema

if TYPE_CHECKING:
    from storeserver.audit import AuditLog
    from storeserver.catalog import Catalog
    from storeserver.keyvalue import KeyValueStore
    from storeserver.writes import RecordWriter


class UnknownEntry(InternalError):
    """A journal entry of a kind this release does not know: a newer release wrote it."""

    def __init__(self, kind: Any) -> None:
        super().__init__(f"unknown journal entry {kind!r}", {"entry": repr(kind)})
        self.kind = kind


REPLAY_ERRORS = (StoreError, ValueError, TypeError, KeyError, IndexError, AttributeError)
"""What replaying an entry raises when the entry is not one this release wrote: another shape
(``("put", "t")``), another type, an unknown kind. ``unreadable_entry`` says so."""


def unreadable_entry(path: Path, change: Any, exc: Exception) -> CorruptData:
    """Why the store cannot start on ``path``, whose ``change`` failed to replay with ``exc``.

    A ``CorruptData``: the store refuses to start (exit 3, ``store_failed_to_start``) rather
    than crash with a traceback at every restart, which no restart can mend.
    """
    if isinstance(exc, UnknownEntry):
        return CorruptData(
            f"{path} holds an entry this release does not know ({exc.kind!r}): it was written"
            " by a newer release; refusing to start. Start that release, or restore a backup"
            " made by this one."
        )
    # Both shortened: a record's repr, or a KeyError of one, can be megabytes.
    kind = repr(change[0] if type(change) in (list, tuple) and change else change)[:80]
    problem = f"{type(exc).__name__}: {exc}"[:200]
    return CorruptData(
        f"{path} holds an entry this release cannot apply ({kind}: {problem}): the file is"
        " damaged or was written by a newer release; refusing to start. Restore a backup"
        " made by this release, or start the release that wrote it."
    )


class JournalReplay:
    def __init__(
        self,
        catalog: Catalog,
        writer: RecordWriter,
        kv: KeyValueStore,
        audit: AuditLog,
        clock: Callable[[], float],
    ) -> None:
        self._catalog = catalog
        self._writer = writer
        self._kv = kv
        self.audit = audit
        self._clock = clock

    def apply_change(self, change: tuple[Any, ...]) -> None:
        """Re-apply one journal entry (replay). Only keeps indexes right; no other checks."""
        kind = change[0]
        catalog = self._catalog
        if kind == "put":
            _, name, record = change
            table = catalog.tables.get(name) or catalog.add_empty(name)
            record = self._share_strings(table, record)
            old = table.rows.get(record["id"])
            if old is None:
                table.insert(record)
            else:
                table.replace(old, record)
            self._writer.timestamps.raise_floor(record["updated_at"])
        elif kind == "delete":
            _, name, rid = change
            existing = catalog.tables.get(name)
            if existing is not None and rid in existing.rows:
                existing.delete(existing.rows[rid])
        elif kind == "table":
            _, name, spec = change
            catalog.define(name, TableSpec.parse(spec), check=False)
            floor = spec.get("version_floor")
            if type(floor) is int and floor > catalog.tables[name].version_floor:
                catalog.tables[name].version_floor = floor
        elif kind == "kv_set":
            _, key, value, expires_at = change
            if expires_at is None or expires_at > self._clock():
                self._kv.set(key, value, expires_at)
            else:
                # Expired since, but it replaced whatever the key held before: that stays gone
                # (QA: a revocation mark overwritten with a short TTL came back after a crash).
                self._kv.delete(key)
        elif kind == "kv_delete":
            self._kv.delete(change[1])
        elif kind == "audit":
            entry = self._share_audit(change[1])
            self.audit.restore(entry)
            # A delete's or a drop's entry is newer than every record left: the listing by
            # ``since`` stops at the first older entry, so later entries must not be stamped
            # before it, even by a clock that is behind after a restart (QA).
            if type(entry) in (list, tuple) and len(entry) > 1 and type(entry[1]) is str:
                self._writer.timestamps.raise_floor(entry[1])
        elif kind == "schema":
            _, name, document = change
            table = catalog.tables.get(name) or catalog.add_empty(name)
            table.schema = None if document is None else TableSchema(document)
        elif kind == "drop_index":
            _, name, field = change
            existing = catalog.tables.get(name)
            if existing is not None:
                existing.drop_index(field)
        elif kind == "drop_table":
            _, name, highest = change
            if name in catalog.tables:
                catalog.remove(name)
            catalog.raise_floor(name, highest)
        elif kind == "dropped_floor":
            _, name, highest = change
            catalog.raise_floor(name, highest)
        else:
            raise UnknownEntry(kind)

    def _share_strings(self, table: Any, record: dict[str, Any]) -> dict[str, Any]:
        """Share string objects the way live writes do (``records.copy_fields``), so a store
        loaded from disk is as small as the one that wrote it: short values interned,
        ``updated_at`` the same object as an equal ``created_at``, and a foreign key the
        referenced row's own id string (the table's ``keep`` then makes the compact row)."""
        shared: dict[str, Any] = {}
        for key, value in record.items():
            if type(value) is str and len(value) <= SHARED_STRING_LENGTH:
                value = sys.intern(value)
            shared[sys.intern(key)] = value
        if shared.get("updated_at") == shared.get("created_at"):
            shared["updated_at"] = shared.get("created_at")
        for field, target_name in table.foreign_keys.items():
            value = shared.get(field)
            target = self._catalog.tables.get(target_name)
            if type(value) is str and target is not None and value in target.rows:
                shared[field] = target.rows[value]["id"]
        return shared

    def _share_audit(self, entry: Any) -> Any:
        """Share an audit entry's strings the way live entries do: live, they are the table's
        name, the record's own id and ``updated_at``, interned field names. Decoded as they
        come, 100,000 entries took ~68 MB more after a restart (QA soak: RSS 130 → 170 MiB)."""
        if type(entry) not in (list, tuple) or len(entry) != 11:
            return entry  # the audit log decides what to do with it
        seq, at, user, role, request, table, op, rid, filter_fields, fields, count = entry
        intern = sys.intern
        if type(table) is str:
            row = self._catalog.tables.get(table)
            table = row.name if row is not None else intern(table)
            record = row.rows.get(rid) if row is not None and type(rid) is str else None
            if record is not None:
                rid = record["id"]
                if at == record["updated_at"]:
                    at = record["updated_at"]
        user = intern(user) if type(user) is str else user  # one object per acting user
        role = intern(role) if type(role) is str else role
        op = intern(op) if type(op) is str else op
        if type(fields) in (list, tuple):
            fields = tuple(intern(f) if type(f) is str else f for f in fields)
        if type(filter_fields) in (list, tuple):
            filter_fields = [intern(f) if type(f) is str else f for f in filter_fields]
        return (seq, at, user, role, request, table, op, rid, filter_fields, fields, count)

    def iter_state(self) -> Iterator[tuple[Any, ...]]:
        """The whole state as journal entries (tables first, then the dropped tables' version
        floors, rows and keys), for snapshots. The floors come after the tables: each of those
        carries its own (``snapshot_spec``), so what a floor gives a table created again later
        is only for names created after the snapshot.

        A generator: the snapshot child process iterates it on its copy-on-write image.
        """
        tables = self._catalog.tables
        for name, table in tables.items():
            yield ("table", name, table.snapshot_spec())
            if table.schema is not None:
                yield ("schema", name, table.schema.document)
        for name, highest in self._catalog.dropped_floors.items():
            yield ("dropped_floor", name, highest)
        for name, table in tables.items():
            for record in table.rows.values():
                yield ("put", name, record)
        for key, value, expires_at in self._kv.items():
            yield ("kv_set", key, value, expires_at)
        for entry in self.audit.state():
            yield ("audit", entry)
