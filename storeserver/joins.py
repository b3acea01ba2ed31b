"""Inner join of two tables: left rows in creation order, each probing the right side.

The right side is probed through a hash lookup (its primary key, its hash or unique index on
the field, or a dict built once for the call), never by a nested loop. Only the requested page
of pairs is materialised; ``total`` counts every pair.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from storeserver.query import Predicate, compile_getter, index_key
from storeserver.tables import Record, Table

Probe = Callable[[Any], Collection[str]]


def _probe(right: Table, field: str) -> Probe:
    """A function from a left value to the matching right ids, in creation order."""
    rows = right.rows
    if field == "id":
        return lambda v: (v,) if type(v) is str and v in rows else ()
    hashed = right.hashes.get(field)
    if hashed is not None:
        return lambda v: hashed.ids(index_key(v))
    unique = right.uniques.get(field)
    if unique is not None and not unique.casefold:
        owners = unique.owners

        def probe_unique(v: Any) -> Collection[str]:
            rid = owners.get(index_key(v))
            return () if rid is None else (rid,)

        return probe_unique
    get = compile_getter(field)
    built: dict[Any, list[str]] = {}
    for rid, record in rows.items():
        value = get(record)
        if value is not None:
            built.setdefault(index_key(value), []).append(rid)
    return lambda v: built.get(index_key(v), ())


def join_tables(
    left: Table,
    right: Table,
    left_field: str,
    right_field: str,
    left_ids: Iterable[str] | None,
    predicate: Predicate | None,
    offset: int,
    limit: int,
) -> tuple[list[tuple[Record, Record]], int]:
    """``(page of (left, right) pairs, total pairs)``; ``None`` values never match."""
    probe = _probe(right, right_field)
    get_left = compile_getter(left_field)
    left_rows, right_rows = left.rows, right.rows
    source: Iterable[Record] = (
        left_rows.values() if left_ids is None else (left_rows[i] for i in left_ids)
    )
    if predicate is not None:
        source = filter(predicate, source)
    end = offset + limit
    total = 0
    items: list[tuple[Record, Record]] = []
    for record in source:
        value = get_left(record)
        if value is None:
            continue
        matches = probe(value)
        n = len(matches)
        if n and total < end and total + n > offset:
            for position, rid in enumerate(matches, total):
                if offset <= position < end:
                    items.append((record, right_rows[rid]))
        total += n
    return items, total
