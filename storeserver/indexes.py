"""Unique and hash (secondary) indexes over one table's rows.

Index keys come from ``query.index_key`` (so ``1``, ``1.0`` and ``Decimal(1)`` share a key and
``True`` does not); ``None``/missing values are not indexed. Both index kinds are maintained by
``tables.Table`` on every write; they never raise, uniqueness is checked before a write.

A hash bucket holds the ids having one value, in creation order. To save memory a bucket with a
single id is that id string itself, and a larger one a ``dict[id, None]`` (an ordered set). A
record moving into an existing bucket (an update, or undoing a delete) older than the bucket's
newest is kept aside and put in its place by ``created_at`` (strictly increasing in creation
order, see ``records.Timestamps``) the next time the bucket is read.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable
from typing import Any

from storeserver.query import compile_getter, index_key

Record = dict[str, Any]


class UniqueIndex:
    __slots__ = ("casefold", "field", "get", "owners")

    def __init__(self, field: str, casefold: bool = False) -> None:
        self.field = field
        self.casefold = casefold
        self.get = compile_getter(field)
        self.owners: dict[Any, str] = {}

    def spec(self) -> dict[str, Any]:
        return {"field": self.field, "unique": True, "casefold": self.casefold}

    def key_of(self, record: Record) -> Any:
        value = self.get(record)
        if value is None:
            return None
        if self.casefold and type(value) is str:
            return value.casefold()
        return index_key(value)

    def owner(self, key: Any) -> str | None:
        return self.owners.get(key)

    def add(self, key: Any, rid: str) -> None:
        if key is not None:
            self.owners[key] = rid

    def discard(self, key: Any, rid: str) -> None:
        if key is not None and self.owners.get(key) == rid:
            del self.owners[key]

    def lookup(self, value: Any) -> str | None:
        """The id whose value matches ``value`` under this index's normalisation."""
        if value is None:
            return None
        key = value.casefold() if self.casefold and type(value) is str else index_key(value)
        return self.owners.get(key)


class HashIndex:
    __slots__ = ("buckets", "field", "get", "moved", "rows")

    def __init__(self, field: str, rows: dict[str, Record]) -> None:
        self.field = field
        self.get = compile_getter(field)
        self.rows = rows
        self.buckets: dict[Any, str | dict[str, None]] = {}
        # key -> ids that moved in older than the bucket's newest, not yet in the bucket:
        # placed in creation order when the bucket is next read (``_place``).
        self.moved: dict[Any, list[str]] = {}

    def spec(self) -> dict[str, Any]:
        return {"field": self.field, "unique": False, "casefold": False}

    def key_of(self, record: Record) -> Any:
        value = self.get(record)
        return None if value is None else index_key(value)

    def add(self, key: Any, rid: str) -> None:
        """Add the newest record (its id goes last: creation order is kept)."""
        if key is None:
            return
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = rid
        elif type(bucket) is str:
            self.buckets[key] = {bucket: None, rid: None}
        else:
            bucket[rid] = None  # type: ignore[index]

    def add_moved(self, key: Any, rid: str, created_at: str) -> None:
        """Add a record that may be older than the bucket's last one."""
        if key is None:
            return
        bucket = self.buckets.get(key)
        if bucket is not None:
            last = bucket if type(bucket) is str else next(reversed(bucket))
            if self.rows[last]["created_at"] > created_at:
                self.moved.setdefault(key, []).append(rid)
                return
        self.add(key, rid)

    def discard(self, key: Any, rid: str) -> None:
        if key is None:
            return
        moved = self.moved.get(key)
        if moved is not None and rid in moved:
            moved.remove(rid)
            if not moved:
                del self.moved[key]
            return
        bucket = self.buckets.get(key)
        if bucket is None:
            return
        if type(bucket) is str:
            if bucket == rid:
                del self.buckets[key]
            return
        bucket.pop(rid, None)  # type: ignore[union-attr]
        if len(bucket) == 1:
            self.buckets[key] = next(iter(bucket))

    def all_keys(self) -> list[Any]:
        """Every key with ids: those in ``buckets`` and those whose ids were all moved in
        (their bucket emptied meanwhile) and wait in ``moved`` (``ids`` places them)."""
        return [*self.buckets, *(key for key in self.moved if key not in self.buckets)]

    def count(self, key: Any) -> int:
        bucket = self.buckets.get(key)
        moved = self.moved.get(key)
        n = 0 if bucket is None else 1 if type(bucket) is str else len(bucket)
        return n if moved is None else n + len(moved)

    def ids(self, key: Any) -> tuple[str, ...] | dict[str, None]:
        """The ids with this key, in creation order (an iterable to read, not to keep)."""
        if key in self.moved:
            self._place(key)
        bucket = self.buckets.get(key)
        if bucket is None:
            return ()
        if type(bucket) is str:
            return (bucket,)
        return bucket  # type: ignore[return-value]

    def _place(self, key: Any) -> None:
        """Put the moved ids of ``key`` into its bucket in creation order (``place_in_order``:
        sorting the whole bucket, as before, cost ~0.25 s for 200,000 ids after one status
        change)."""
        rows = self.rows

        def created(rid: str) -> str:
            return rows[rid]["created_at"]

        moved = self.moved.pop(key)
        bucket = self.buckets.get(key)
        if bucket is None or type(bucket) is str:
            ids = sorted(moved if bucket is None else [bucket, *moved], key=created)
            self.buckets[key] = ids[0] if len(ids) == 1 else dict.fromkeys(ids)
            return
        assert type(bucket) is dict
        place_in_order(bucket, moved, lambda rid: None, created)

    def normalize(self) -> None:
        """Put every moved id in its bucket now."""
        for key in list(self.moved):
            self._place(key)


_PLACED_ONE_BY_ONE = 64
"""Moved ids placed by binary search (each an O(n) list insert at C speed); past this many,
one sort of the bucket is cheaper."""
_TAIL_MIN = 1000
"""A bucket's newest ids taken out and put back when the moved ids belong among them: at
least this many, or a sixteenth of the bucket (past that a C-speed rebuild is cheaper)."""


def place_in_order(
    entries: dict[str, Any],
    moved: list[str],
    value_of: Callable[[str], Any],
    created: Callable[[str], str],
) -> None:
    """Add the ``moved`` keys (not in ``entries``; their values from ``value_of``) to
    ``entries``, a dict in ``created`` order, keeping that order; in place.

    When they belong among the newest entries (a recent record moving), only that tail is
    taken out and put back merged. Otherwise the dict is rebuilt at C speed, each moved key
    at the position a binary search gives (or, for many, one sort): ~20-50 ms per 250,000
    entries, where sorting them all by a Python key took 0.25 s.
    """
    stamps = {key: created(key) for key in moved}
    moved = sorted(moved, key=stamps.__getitem__)
    oldest = stamps[moved[0]]
    tail: list[str] = []  # the keys newer than the oldest moved one, newest first
    most = max(_TAIL_MIN, len(entries) // 16)
    fits = True
    for key in reversed(entries):
        stamp = created(key)
        if stamp < oldest:
            break
        if len(tail) == most:
            fits = False
            break
        tail.append(key)
        stamps[key] = stamp
    values = {key: value_of(key) for key in moved}
    if fits:
        values.update((key, entries.pop(key)) for key in tail)
        tail.reverse()
        for key in heapq.merge(tail, moved, key=stamps.__getitem__):
            entries[key] = values[key]
        return
    keys = list(entries)
    if len(moved) > _PLACED_ONE_BY_ONE:
        keys += moved
        keys.sort(key=created)
    else:
        for key in moved:
            keys.insert(bisect.bisect(keys, created(key), key=created), key)
    rebuilt = dict.fromkeys(keys)  # the order; then the values (building from pairs: 2.5x slower)
    rebuilt.update(entries)
    rebuilt.update(values)
    entries.clear()
    entries.update(rebuilt)
