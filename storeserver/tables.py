"""One table: its rows (in creation order), indexes, foreign keys and hidden fields.

Invariants the engine relies on:

- ``rows`` is insertion ordered and that order is creation order; ``created_at`` is strictly
  increasing along it (``records.Timestamps``). Undoing a delete may append an old record at the
  end: ``rows_disordered`` is then set and ``normalize()`` restores the order.
- Every index reflects ``rows`` exactly after each write method returns. The write methods
  never raise; checks (``check_unique``, the schema) run before them.
- ``watchers`` (the jobs that must see writes made between their steps: an index build, a
  schema check, a ``*_where`` selection; see ``builds``) hear of every row change
  ``(old, new)`` after the indexes are updated; ``building`` names the fields being indexed.
- Record dicts in ``rows`` are never mutated.
- ``version_floor`` is the highest version of any record deleted from the table (kept in
  snapshots): a record created again under an id the client chose starts above it, so a weak
  ETag (the version) is never reused for a different record under the same id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from storeserver.errors import BadRequest, Conflict
from storeserver.indexes import HashIndex, UniqueIndex, place_in_order
from storeserver.query import Condition, index_key

Record = dict[str, Any]
Index = UniqueIndex | HashIndex
MAX_EXAMPLES = 5
UNION_MAX = 40_000
"""Ids from several index buckets sorted into creation order in one command at most (about
50 ms); past this a filter reads the table instead, in chunks (``filters.plan``)."""


class Watcher(Protocol):
    def changed(self, old: Record | None, new: Record | None) -> None: ...


def _row_type() -> type:
    """A class of its own for one table's records (``Table.keep``): CPython shares one keys
    table among the ``__dict__`` of a class's instances while they have the same fields."""
    return type("Row", (), {"__module__": __name__})


class Table:
    __slots__ = (
        "_indexes",
        "_row",
        "building",
        "foreign_keys",
        "hashes",
        "hidden",
        "keeps",
        "name",
        "restored",
        "rows",
        "rows_disordered",
        "schema",
        "uniques",
        "version_floor",
        "watchers",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[str, Record] = {}
        self.uniques: dict[str, UniqueIndex] = {}
        self.hashes: dict[str, HashIndex] = {}
        self.foreign_keys: dict[str, str] = {}  # field -> referenced table
        self.hidden: frozenset[str] = frozenset()
        self.rows_disordered = False
        self.restored: list[str] = []  # restored ids appended out of order (``normalize``)
        self._indexes: tuple[Index, ...] = ()
        self.schema: Any = None  # a ``schemas.TableSchema`` once ``set_schema`` attached one
        self.watchers: tuple[Watcher, ...] = ()
        self.building: dict[str, Any] = {}  # field -> its ``builds.IndexBuild``
        self.version_floor = 0
        # (field, value, at_least): writes may not take the rows holding ``field == value``
        # below ``at_least`` (``users``: the last admin stays one).
        self.keeps: tuple[tuple[str, Any, int], ...] = ()
        self._row = _row_type()

    # -- schema ---------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        spec = {
            "indexes": [i.spec() for i in self._indexes],
            "foreign_keys": [{"field": f, "table": t} for f, t in self.foreign_keys.items()],
            "hidden": sorted(self.hidden),
        }
        if self.keeps:  # only then: a spec without keeps reads as before
            spec["keep"] = [{"field": f, "value": v, "at_least": n} for f, v, n in self.keeps]
        return spec

    def check_keeps(self, old: Record, new: Record | None) -> None:
        """``Conflict`` if replacing ``old`` by ``new`` (``None``: deleting it) would leave fewer
        than ``at_least`` rows with ``field == value`` where there were enough. Counted only
        when ``old`` holds the value and ``new`` does not (demoting or deleting an admin), from
        the field's index or, without one, over the rows: such writes are rare."""
        for field, value, at_least in self.keeps:
            # Equal as ``eq`` and the indexes have it (``index_key``): Python's ``==`` took
            # ``true`` for ``1``, and the answer then changed with an index on the field (QA).
            key = index_key(value)
            if index_key(old.get(field)) != key or (
                new is not None and index_key(new.get(field)) == key
            ):
                continue
            ids = self.lookup(field, value)
            held = (
                sum(1 for r in self.rows.values() if index_key(r.get(field)) == key)
                if ids is None
                else sum(1 for _ in ids)
            )
            if held <= at_least:
                raise Conflict(
                    f"{self.name} must keep at least {at_least} row(s) with {field} = {value!r}:"
                    " this change would leave fewer",
                    {"reason": "keep", "table": self.name, "field": field, "id": old["id"]},
                )

    def snapshot_spec(self) -> dict[str, Any]:
        """``spec()`` plus what only persistence needs. Releases before ``version_floor`` read
        it as a plain spec: ``TableSpec.parse`` ignores keys it does not know."""
        spec = self.spec()
        if self.version_floor:
            spec["version_floor"] = self.version_floor
        return spec

    def index_specs(self) -> list[dict[str, Any]]:
        return [i.spec() for i in self._indexes]

    def check_not_building(self, field: str) -> None:
        """A create or drop of an index being built waits for the build's end: a 409 to retry
        (QA: a second identical create was a 400, and a drop a 404 before the index appeared)."""
        if field in self.building:
            raise Conflict(
                f"an index on {self.name}.{field} is being built: retry once it has ended",
                {"reason": "busy", "field": field, "table": self.name},
            )

    def index_is_new(self, field: str, unique: bool, casefold: bool) -> bool:
        """``False`` if this exact index exists; ``BadRequest`` if a different one does;
        ``Conflict`` (busy, to retry) while one is being built."""
        self.check_not_building(field)
        existing = self.uniques.get(field) or self.hashes.get(field)
        if existing is None:
            return True
        if existing.spec() == {"field": field, "unique": unique, "casefold": casefold}:
            return False
        raise BadRequest(
            f"field {field!r} already has a different index", {"field": field, "table": self.name}
        )

    def check_unique_values(self, field: str, casefold: bool) -> None:
        """``Conflict`` if existing rows repeat a value of ``field`` (before a unique index)."""
        probe = UniqueIndex(field, casefold)
        first: dict[Any, str] = {}
        repeated: dict[Any, list[str]] = {}
        for rid, record in self.rows.items():
            key = probe.key_of(record)
            if key is not None:
                owner = first.setdefault(key, rid)
                if owner != rid:
                    repeated.setdefault(key, [owner]).append(rid)
        if repeated:
            self.raise_duplicates(probe, list(repeated.values()))

    def raise_duplicates(self, probe: UniqueIndex, groups: list[list[str]]) -> None:
        """``Conflict`` naming up to ``MAX_EXAMPLES`` repeated values and their ids."""
        examples = [
            {"value": probe.get(self.rows[ids[0]]), "ids": ids[:MAX_EXAMPLES]}
            for ids in groups[:MAX_EXAMPLES]
        ]
        raise Conflict(
            f"existing rows repeat a value of {probe.field!r}",
            {
                "reason": "duplicate",
                "field": probe.field,
                "table": self.name,
                "examples": examples,
            },
        )

    def add_index(self, field: str, unique: bool, casefold: bool) -> None:
        """Add and build an index (the caller checked it is new and, if unique, holds)."""
        index: Index
        if unique:
            index = UniqueIndex(field, casefold)
            self.uniques[field] = index
        else:
            index = HashIndex(field, self.rows)
            self.hashes[field] = index
        for rid, record in self.rows.items():
            index.add(index.key_of(record), rid)
        self._indexes = (*self._indexes, index)

    def attach_index(self, index: Index) -> None:
        """Add an index built elsewhere (``builds.IndexBuild``) that reflects ``rows``."""
        if type(index) is UniqueIndex:
            self.uniques[index.field] = index
        else:
            self.hashes[index.field] = index  # type: ignore[assignment]
        self._indexes = (*self._indexes, index)

    def drop_index(self, field: str) -> bool:
        index = self.uniques.pop(field, None) or self.hashes.pop(field, None)
        if index is None:
            return False
        self._indexes = tuple(i for i in self._indexes if i is not index)
        return True

    def has_index(self, field: str) -> bool:
        return field in self.uniques or field in self.hashes

    # -- checks ---------------------------------------------------------------------------

    def check_unique(self, record: Record, rid: str) -> None:
        for index in self.uniques.values():
            key = index.key_of(record)
            if key is not None:
                owner = index.owners.get(key)
                if owner is not None and owner != rid:
                    raise Conflict(
                        f"{self.name}.{index.field} value is taken",
                        {"reason": "unique", "field": index.field, "table": self.name},
                    )

    # -- writes (never raise) -------------------------------------------------------------

    def keep(self, record: Record) -> Record:
        """``record`` as the table stores it: a copy that takes ~130 bytes less.

        A plain dict holds its own keys table: 272 bytes for an order record's 9 fields. The
        ``__dict__`` of an instance of the table's row class shares the class's keys table
        and holds only the values (CPython's key-sharing dicts, PEP 412): 144 bytes in a big
        table (bench-store; a new table's first rows count more of the shared keys table,
        as ``sys.getsizeof`` splits it among them). It is a dict in every other way (stored
        records are never changed in place, which would make CPython turn it back into a
        plain one). ``update`` from ``items()``, not from the dict: a dict's fast copy would
        bring its own keys table along."""
        row = self.new_row()
        row.update(record.items())
        return row

    def new_row(self) -> Record:
        """An empty record of this table's compact kind (``keep``), for a write to fill and
        then ``add`` as it is: an insert so makes one dict, not two."""
        row: Record = self._row().__dict__
        return row

    def insert(self, record: Record) -> None:
        self.add(self.keep(record))

    def add(self, record: Record) -> None:
        """``insert`` of a record stored as it is: one this table made (``new_row``)."""
        rid = record["id"]
        self.rows[rid] = record
        for index in self._indexes:
            index.add(index.key_of(record), rid)
        if self.watchers:
            self._notify(None, record)

    def replace(self, old: Record, new: Record) -> None:
        self.swap(old, self.keep(new))

    def swap(self, old: Record, new: Record) -> None:
        """``replace`` with ``new`` stored as it is: a record this table stored before (undo
        puts the very object back)."""
        rid = new["id"]
        self.rows[rid] = new
        for index in self._indexes:
            old_key = index.key_of(old)
            new_key = index.key_of(new)
            if old_key != new_key:
                index.discard(old_key, rid)
                if type(index) is HashIndex:
                    index.add_moved(new_key, rid, new["created_at"])
                else:
                    index.add(new_key, rid)
        if self.watchers:
            self._notify(old, new)

    def delete(self, record: Record) -> None:
        """``remove`` for a deletion, which raises ``version_floor`` to the row's version."""
        self.remove(record)
        if record["version"] > self.version_floor:
            self.version_floor = record["version"]

    def remove(self, record: Record) -> None:
        rid = record["id"]
        del self.rows[rid]
        for index in self._indexes:
            index.discard(index.key_of(record), rid)
        if self.watchers:
            self._notify(record, None)

    def restore(self, record: Record) -> None:
        """Undo ``remove``: the row comes back (its order is fixed by ``normalize``)."""
        rid = record["id"]
        rows = self.rows
        if self.rows_disordered:
            self.restored.append(rid)  # after an out-of-order one: order unknown
        elif rows and rows[next(reversed(rows))]["created_at"] > record["created_at"]:
            self.rows_disordered = True
            self.restored.append(rid)
        rows[rid] = record
        for index in self._indexes:
            key = index.key_of(record)
            if type(index) is HashIndex:
                index.add_moved(key, rid, record["created_at"])
            else:
                index.add(key, rid)
        if self.watchers:
            self._notify(None, record)

    def _notify(self, old: Record | None, new: Record | None) -> None:
        for watcher in self.watchers:
            watcher.changed(old, new)

    def normalize(self) -> None:
        """Restore creation order in ``rows`` and in every hash bucket (after an undo)."""
        if self.rows_disordered:
            # Sorting every row by a Python key took ~1.5 s over 1M rows after a failed
            # batch that had deleted an old row; the restored rows are placed instead.
            rows = self.rows
            moved = [rid for rid in dict.fromkeys(self.restored) if rid in rows]
            popped = {rid: rows.pop(rid) for rid in moved}
            if moved:
                place_in_order(
                    rows,
                    moved,
                    popped.__getitem__,
                    lambda rid: (rows.get(rid) or popped[rid])["created_at"],
                )
            self.restored = []
            self.rows_disordered = False
        for index in self.hashes.values():
            index.normalize()

    # -- reads ----------------------------------------------------------------------------

    def strip(self, record: Record) -> Record:
        hidden = self.hidden
        return {k: v for k, v in record.items() if k not in hidden}

    @property
    def casefold_fields(self) -> frozenset[str]:
        """Fields whose equality ignores case (their unique index casefolds)."""
        return frozenset(f for f, index in self.uniques.items() if index.casefold)

    def visible(self, record: Record, include_hidden: bool) -> Record:
        if include_hidden or not self.hidden:
            return record
        return self.strip(record)

    def lookup(self, field: str, value: Any) -> Iterable[str] | None:
        """Ids whose ``field`` equals ``value`` (as ``eq`` compares), in creation order.

        ``None`` if no index serves the field.
        """
        if value is None:
            return None
        if field == "id":
            return (value,) if type(value) is str and value in self.rows else ()
        hashed = self.hashes.get(field)
        if hashed is not None:
            return hashed.ids(index_key(value))
        unique = self.uniques.get(field)
        if unique is not None:
            rid = unique.lookup(value)  # case-insensitive on a casefold index, like ``eq``
            return () if rid is None else (rid,)
        return None

    def count_in(self, cond: Condition) -> int | None:
        """The number of rows an ``in`` on a hash-indexed field matches, from the bucket
        sizes (no ids gathered); ``None`` when no hash index serves it."""
        hashed = self.hashes.get(cond.field)
        if hashed is None or cond.op != "in" or any(v is None for v in cond.value):
            return None
        return sum(hashed.count(key) for key in {index_key(v) for v in cond.value})

    def estimate(self, cond: Condition) -> int | None:
        """How many ids an index gives for ``cond``, or ``None`` if no index serves it."""
        if cond.op == "eq":
            values = [cond.value]
        elif cond.op == "in":
            values = cond.value
        else:
            return None
        if any(v is None for v in values):
            return None  # missing values are not indexed
        if cond.field == "id":
            return len(values)
        hashed = self.hashes.get(cond.field)
        unique = self.uniques.get(cond.field)
        if hashed is None and unique is None:
            return None
        if hashed is not None:
            return sum(hashed.count(index_key(v)) for v in values)
        return len(values)

    def candidates(
        self, conditions: list[Condition], *, ordered: bool = True
    ) -> tuple[Iterable[str] | None, Condition | None]:
        """Pick the most selective indexed ``eq``/``in`` condition.

        Returns ``(ids in creation order, the condition they satisfy exactly)`` or
        ``(None, None)`` when the whole table must be read. An ``in`` over several buckets
        is merged (and, if ``ordered``, sorted into creation order) at once: past
        ``UNION_MAX`` ids it is passed over.
        """
        best: Condition | None = None
        best_size = 0
        for cond in conditions:
            size = self.estimate(cond)
            if size is None or (best is not None and size >= best_size):
                continue
            if size > UNION_MAX and cond.op == "in" and len(cond.value) > 1:
                continue  # merging (and sorting) that many ids at once: read the table
            best, best_size = cond, size
        if best is None:
            return None, None
        if best.op == "eq":
            ids = self.lookup(best.field, best.value)
            assert ids is not None
            return ids, best
        seen: dict[str, None] = {}
        for value in best.value:
            found = self.lookup(best.field, value)
            assert found is not None
            seen.update(dict.fromkeys(found))
        if ordered and len({index_key(v) for v in best.value}) > 1:
            rows = self.rows
            return sorted(seen, key=lambda i: rows[i]["created_at"]), best
        return seen, best
