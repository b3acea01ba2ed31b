"""Unique and hash (secondary) indexes over one table's rows.

Index keys come from ``query.index_key`` (so ``1``, ``1.0`` and ``Decimal(1)`` share a key and
``True`` does not); ``None``/missing values are not indexed. Both index kinds are maintained by
``tables.Table`` on every write; they never raise, uniqueness is checked before a write.

A hash bucket holds the ids having one value, in creation order. To save memory a bucket with a
single id is that id string itself, and a larger one a ``dict[id, None]`` (an ordered set). A
record moving into an existing bucket (an update, or undoing a delete) may land out of creation
order: the bucket is then marked and sorted by ``created_at`` (strictly increasing in creation
order, see ``records.Timestamps``) the next time it is read.
"""

from __future__ import annotations

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
    __slots__ = ("buckets", "disordered", "field", "get", "rows")

    def __init__(self, field: str, rows: dict[str, Record]) -> None:
        self.field = field
        self.get = compile_getter(field)
        self.rows = rows
        self.buckets: dict[Any, str | dict[str, None]] = {}
        self.disordered: set[Any] = set()

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
                self.disordered.add(key)
        self.add(key, rid)

    def discard(self, key: Any, rid: str) -> None:
        if key is None:
            return
        bucket = self.buckets.get(key)
        if bucket is None:
            return
        if type(bucket) is str:
            if bucket == rid:
                del self.buckets[key]
                self.disordered.discard(key)
            return
        bucket.pop(rid, None)  # type: ignore[union-attr]
        if len(bucket) == 1:
            self.buckets[key] = next(iter(bucket))
            self.disordered.discard(key)

    def count(self, key: Any) -> int:
        bucket = self.buckets.get(key)
        if bucket is None:
            return 0
        return 1 if type(bucket) is str else len(bucket)

    def ids(self, key: Any) -> tuple[str, ...] | dict[str, None]:
        """The ids with this key, in creation order (an iterable to read, not to keep)."""
        bucket = self.buckets.get(key)
        if bucket is None:
            return ()
        if type(bucket) is str:
            return (bucket,)
        if key in self.disordered:
            bucket = self._reorder(key, bucket)  # type: ignore[arg-type]
        return bucket  # type: ignore[return-value]

    def _reorder(self, key: Any, bucket: dict[str, None]) -> dict[str, None]:
        rows = self.rows
        ordered = dict.fromkeys(sorted(bucket, key=lambda i: rows[i]["created_at"]))
        self.buckets[key] = ordered
        self.disordered.discard(key)
        return ordered

    def normalize(self) -> None:
        """Put every disordered bucket back in creation order now."""
        for key in list(self.disordered):
            bucket = self.buckets.get(key)
            if type(bucket) is dict:
                self._reorder(key, bucket)
        self.disordered.clear()
