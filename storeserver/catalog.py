"""The set of tables and their declarations (indexes, foreign keys, hidden fields).

A table spec, as taken by ``create_table`` and written to the journal, is::

    {"indexes": [{"field", "unique"?, "casefold"?}], "foreign_keys": [{"field", "table"}],
     "hidden": [field]}

Declaring a table again adds what is new (indexes are built over existing rows); changing an
existing declaration is refused. ``drop_table`` (``definitions``) removes a table with its
declarations (``Catalog.remove``), and its slot under ``max_tables`` with it.

``Catalog.dropped_floors`` keeps, per name of a dropped table, the highest version it held (a
row's, or its own ``version_floor``): a table created again under that name takes it as its
own ``version_floor``, so a record inserted there under an id the client chose starts above
every version of the dropped table (``tables.py``): a table dropped and created again does not
hand an old record's ETag to a new one, the insert that creates a table implicitly included
(``writes.RecordWriter.insert``). Other names are not affected. One small int per distinct
dropped name, kept for good (snapshotted as ``("dropped_floor", name, n)``).
"""

from __future__ import annotations

from typing import Any

from storeserver.arguments import TABLE_NAME, Args, table_name
from storeserver.errors import BadRequest, Conflict, LimitExceeded, NotFound
from storeserver.query import check_field, index_key
from storeserver.records import META_FIELDS
from storeserver.tables import Table

MAX_INDEXES = 64
"""Indexes (unique and hash, a foreign key's included) and, apart, foreign keys per table. Each
write maintains every index, and adding one rebuilt the table's index tuple: 40,000 indexes
in one ``create_table`` held the loop 3.4 s, 100,000 took 26 s (QA). Only new definitions are
checked: a table an older store defined with more still loads."""


def check_index_room(table: Table, new_indexes: int, new_foreign_keys: int) -> None:
    """``LIMIT_EXCEEDED`` if ``table`` would pass ``MAX_INDEXES`` indexes or foreign keys, the
    ones being built counted (QA: 80 creates at once on a large table all got built)."""
    for what, have, adding in (
        ("indexes", len(table.uniques) + len(table.hashes) + len(table.building), new_indexes),
        ("foreign_keys", len(table.foreign_keys), new_foreign_keys),
    ):
        if adding and have + adding > MAX_INDEXES:
            raise LimitExceeded(
                f"a table has at most {MAX_INDEXES} {what.replace('_', ' ')}",
                {"arg": what, "max": MAX_INDEXES, "table": table.name},
            )


class TableSpec:
    __slots__ = ("foreign_keys", "hidden", "indexes", "keeps")

    def __init__(
        self,
        indexes: list[tuple[str, bool, bool]],
        foreign_keys: list[tuple[str, str]],
        hidden: list[str],
        keeps: list[tuple[str, Any, int]] | None = None,
    ) -> None:
        self.indexes = indexes  # (field, unique, casefold)
        self.foreign_keys = foreign_keys  # (field, referenced table)
        self.hidden = hidden
        self.keeps = keeps or []  # (field, value, at_least): see ``Table.check_keeps``

    @classmethod
    def parse(cls, args: Args) -> TableSpec:
        """Validate the spec arguments of ``create_table`` (or a journal entry)."""
        raw_indexes = _list(args, "indexes")
        raw_fks = _list(args, "foreign_keys")
        raw_hidden = _list(args, "hidden")
        indexes = []
        for item in raw_indexes:
            if type(item) is not dict or not item.keys() <= {"field", "unique", "casefold"}:
                raise BadRequest("indexes: each is {field, unique?, casefold?}", {"arg": "indexes"})
            field = check_field(item.get("field"), "indexes")
            unique, casefold = item.get("unique", False), item.get("casefold", False)
            if type(unique) is not bool or type(casefold) is not bool:
                raise BadRequest("indexes: unique/casefold are booleans", {"arg": "indexes"})
            if casefold and not unique:
                raise BadRequest("indexes: casefold needs unique", {"arg": "indexes"})
            if field == "id":
                raise BadRequest("indexes: id is always indexed", {"arg": "indexes"})
            indexes.append((field, unique, casefold))
        fks = []
        for item in raw_fks:
            if type(item) is not dict or item.keys() != {"field", "table"}:
                raise BadRequest("foreign_keys: each is {field, table}", {"arg": "foreign_keys"})
            field = _top_level_field(item.get("field"), "foreign_keys")
            table_name(item, "table")
            fks.append((field, item["table"]))
        hidden = [_top_level_field(f, "hidden") for f in raw_hidden]
        keeps = []
        for item in _list(args, "keep"):
            if type(item) is not dict or item.keys() != {"field", "value", "at_least"}:
                raise BadRequest("keep: each is {field, value, at_least}", {"arg": "keep"})
            value, at_least = item["value"], item["at_least"]
            if type(value) not in (str, int, bool) or type(at_least) is not int or at_least < 1:
                raise BadRequest(
                    "keep: value is a string, integer or boolean; at_least an integer >= 1",
                    {"arg": "keep"},
                )
            keeps.append((_top_level_field(item["field"], "keep"), value, at_least))
        for arg, fields in (
            ("indexes", [i[0] for i in indexes]),
            ("foreign_keys", [f[0] for f in fks]),
        ):
            if len(set(fields)) != len(fields):
                raise BadRequest(f"{arg}: a field appears twice", {"arg": arg})
        return cls(indexes, fks, hidden, keeps)


def _list(args: Args, key: str) -> list[Any]:
    value = args.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise BadRequest(f"{key} must be a list", {"arg": key})
    return value


def _top_level_field(field: Any, arg: str) -> str:
    if type(field) is not str or not field or "." in field or field in META_FIELDS:
        raise BadRequest(f"{arg}: field must be a top-level, non-store field", {"arg": arg})
    return field


class Catalog:
    def __init__(self, max_tables: int) -> None:
        self.max_tables = max_tables
        self.tables: dict[str, Table] = {}
        # referenced table -> [(referencing table, field)]
        self.referrers: dict[str, list[tuple[str, str]]] = {}
        self.dropped_floors: dict[str, int] = {}  # see the module doc

    def get(self, args: Args, key: str = "table") -> Table:
        """The existing table named by ``args[key]``; ``NotFound`` if there is none."""
        name = args.get(key)
        table = self.tables.get(name) if type(name) is str else None
        if table is None:
            name = table_name(args, key)
            raise NotFound(f"no table {name!r}", {"table": name})
        return table

    def check_room(self) -> None:
        if len(self.tables) >= self.max_tables:
            raise LimitExceeded(
                f"at most {self.max_tables} tables", {"reason": "tables", "max": self.max_tables}
            )

    def add_empty(self, name: str) -> Table:
        """Create a table with no declarations (the caller checked name and room)."""
        table = self.tables[name] = self._new_table(name)
        return table

    def _new_table(self, name: str) -> Table:
        table = Table(name)
        table.version_floor = self.dropped_floors.get(name, 0)
        return table

    def drop(self, name: str) -> None:
        """Remove a table (only used to undo an implicit creation: it has no declarations)."""
        del self.tables[name]

    def referencing(self, name: str) -> list[tuple[str, str]]:
        """``(table, field)`` of every other table's foreign key naming ``name``."""
        return [(child, field) for child, field in self.referrers.get(name, ()) if child != name]

    def remove(self, name: str) -> int:
        """Drop a table with its declarations (the caller checked that no other table
        references it); returns its highest version, which its name's floor now covers."""
        table = self.tables.pop(name)
        for field, target in table.foreign_keys.items():
            kept = [ref for ref in self.referrers.get(target, ()) if ref != (name, field)]
            if kept:
                self.referrers[target] = kept
            else:
                self.referrers.pop(target, None)
        self.referrers.pop(name, None)  # what is left: its own references to itself
        highest = max((r["version"] for r in table.rows.values()), default=0)
        highest = max(highest, table.version_floor)
        self.raise_floor(name, highest)
        return highest

    def raise_floor(self, name: str, version: int) -> None:
        if version > self.dropped_floors.get(name, 0):
            self.dropped_floors[name] = version

    def define(self, name: str, spec: TableSpec, *, check: bool = True) -> tuple[bool, bool]:
        """Create or extend a table; ``(created, changed)``. Validates everything first."""
        if TABLE_NAME.fullmatch(name) is None:
            raise BadRequest("bad table name", {"table": name})
        table = self.tables.get(name)
        created = table is None
        if created and check:
            self.check_room()
        probe = table if table is not None else self._new_table(name)
        new_indexes = self._new_indexes(probe, spec)
        new_fks = self._new_foreign_keys(probe, spec, check)
        if check:
            check_index_room(probe, len(new_indexes), len(new_fks))
            self._check_existing_rows(probe, new_indexes, new_fks)
        new_hidden = frozenset(spec.hidden) - probe.hidden
        # Told apart as ``check_keeps`` tells values apart (true is not 1; Python's ``in``
        # took a rule on true for one already on 1, and dropped it: review).
        kept = {(f, index_key(v), n) for f, v, n in probe.keeps}
        new_keeps = tuple(k for k in spec.keeps if (k[0], index_key(k[1]), k[2]) not in kept)
        if table is None:
            table = self.tables[name] = probe
        for field, unique, casefold in new_indexes:
            table.add_index(field, unique, casefold)
        for field, target in new_fks:
            table.foreign_keys[field] = target
            self.referrers.setdefault(target, []).append((name, field))
        if new_hidden:  # a new set only then: the reply cache keys on the set's identity
            table.hidden = table.hidden | new_hidden
        table.keeps = table.keeps + new_keeps
        return created, created or bool(new_indexes or new_fks or new_hidden or new_keeps)

    @staticmethod
    def _new_indexes(table: Table, spec: TableSpec) -> list[tuple[str, bool, bool]]:
        wanted = {field: (field, unique, casefold) for field, unique, casefold in spec.indexes}
        for field, _target in spec.foreign_keys:
            if field not in wanted and not table.has_index(field):
                wanted[field] = (field, False, False)  # the dependants lookup needs one
        out = []
        for field, unique, casefold in wanted.values():
            if table.index_is_new(field, unique, casefold):
                out.append((field, unique, casefold))
        return out

    @staticmethod
    def _new_foreign_keys(table: Table, spec: TableSpec, check: bool) -> list[tuple[str, str]]:
        out = []
        for field, target in spec.foreign_keys:
            current = table.foreign_keys.get(field)
            if current is None:
                out.append((field, target))
            elif current != target and check:
                raise BadRequest(
                    f"{field!r} already references {current!r}",
                    {"field": field, "table": table.name},
                )
        return out

    def _check_existing_rows(
        self, table: Table, indexes: list[tuple[str, bool, bool]], fks: list[tuple[str, str]]
    ) -> None:
        if not table.rows:
            return
        for field, unique, casefold in indexes:
            if unique:
                table.check_unique_values(field, casefold)
        for field, target_name in fks:
            target = self.tables.get(target_name)
            for record in table.rows.values():
                value = record.get(field)
                if value is None:
                    continue
                if type(value) is not str or target is None or value not in target.rows:
                    raise Conflict(
                        f"existing rows break the foreign key {field!r}",
                        {"reason": "foreign_key", "field": field, "table": table.name},
                    )

    def spec_of(self, name: str) -> dict[str, Any]:
        return self.tables[name].spec()
