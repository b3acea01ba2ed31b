"""Inner join of two tables: left rows in creation order, each probing the right side.

The right side is probed through a hash lookup (its primary key, its hash or unique index on
the field, or a dict built once for the call), never by a nested loop. Only the requested page
of pairs is materialised; ``total`` counts every pair. A join over more than ``CHUNK`` left
rows, or one that must build its dict over more than ``CHUNK`` right rows, runs a chunk per
loop turn (``builds.ChunkedRead``), so it never holds the store for long.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Iterable
from typing import Any

from storeserver.builds import CHUNK, Pace
from storeserver.indexes import UniqueIndex
from storeserver.query import Predicate, compile_getter, folded_key, index_key
from storeserver.selection import candidates, matches_in
from storeserver.tables import Record, Table

Probe = Callable[[Any], Collection[str]]


def folds(left: Table, left_field: str, right: Table, right_field: str) -> bool:
    """Whether a join compares strings ignoring case: when either field has a casefold unique
    index (``users.email``), as ``eq`` on that field does (QA: a join on email matched only
    the exact case, where ``GET /users?email=`` found the user in any). Never against an
    ``id``: ids compare exactly (``get``), and the primary key probes it (review)."""
    if left_field == "id" or right_field == "id":
        return False
    return any(
        (unique := table.uniques.get(field)) is not None and unique.casefold
        for table, field in ((left, left_field), (right, right_field))
    )


def _index_of(right: Table, field: str, fold: bool) -> Any:
    """What probes ``field`` on the right side: its rows (the primary key), its hash index or
    its unique index, each keyed as the join compares (``fold``); ``None`` when there is none."""
    unique = right.uniques.get(field)
    if fold:
        return unique if unique is not None and unique.casefold else None
    if field == "id":
        return right.rows
    hashed = right.hashes.get(field)
    if hashed is not None:
        return hashed
    return unique if unique is not None and not unique.casefold else None


def _probe(index: Any) -> Probe:
    """A function from a left value to the matching right ids (creation order)."""
    if type(index) is dict:
        return lambda v: (v,) if type(v) is str and v in index else ()
    if type(index) is UniqueIndex:
        lookup = index.lookup  # keyed as the index is: casefolded strings for a casefold one

        def probe_unique(v: Any) -> Collection[str]:
            rid = lookup(v)
            return () if rid is None else (rid,)

        return probe_unique
    return lambda v: index.ids(index_key(v))


def _key(fold: bool) -> Callable[[Any], Any]:
    return folded_key if fold else index_key


def _build(right: Table, field: str, fold: bool) -> Generator[None, None, dict[Any, list[Record]]]:
    """A temporary hash of the right rows by ``field``, a slice per step, holding the
    records themselves (as they are now: stored records are never mutated)."""
    get = compile_getter(field)
    key = _key(fold)
    built: dict[Any, list[Record]] = {}
    records = list(right.rows.values())
    pace = Pace()
    for start, end in pace.slices(len(records)):
        for record in records[start:end]:
            value = get(record)
            if value is not None:
                built.setdefault(key(value), []).append(record)
        pace.measure()
        yield
    return built


def needs_chunks(left_rows: int, right: Table, right_field: str, fold: bool) -> bool:
    """Whether a join is big enough to run a chunk per loop turn (``builds.ChunkedRead``)."""
    if left_rows > CHUNK:
        return True
    return len(right.rows) > CHUNK and _index_of(right, right_field, fold) is None


def join_steps(
    left: Table,
    right: Table,
    left_field: str,
    right_field: str,
    left_ids: Iterable[str] | None,
    predicate: Predicate | None,
    offset: int,
    limit: int,
    fold: bool,
) -> Generator[None, None, tuple[list[tuple[Record, Record]], int]]:
    """``(page of (left, right) pairs, total pairs)``, yielding after each slice of rows read
    (``builds.Pace``: up to ``CHUNK`` rows, fewer when they are costly to key). ``fold``: what
    ``folds`` said when the join was read, strings compared ignoring case.

    Without an index on the right field, a temporary hash of the right table is built first,
    a chunk per step (``_build``), so the pairs are the rows as they were when read, whatever
    is written between steps; so is the rest of a join whose index is dropped meanwhile. The
    left rows are a list taken at the start, read the same way. ``None`` values never match.
    """
    # Both sides as they are now, before the first step ends (``left_ids`` may be a live
    # index bucket).
    source = candidates(left.rows, left_ids)
    right_rows = right.rows
    index = _index_of(right, right_field, fold)
    if index is not None:
        probe: Callable[[Any], Collection[Any]] = _probe(index)
        resolve: Callable[[Any], Record] = right_rows.__getitem__
    else:
        built = yield from _build(right, right_field, fold)
        probe, resolve = _lookup(built, fold), _same
    get_left = compile_getter(left_field)
    end = offset + limit
    total = 0
    items: list[tuple[Record, Record]] = []
    pace = Pace()
    for start, stop in pace.slices(len(source)):
        if index is not None and _index_of(right, right_field, fold) is not index:
            # The index was dropped between steps, so no longer kept up to date: the rest of
            # the join reads a hash of the right rows as they are now.
            index = None
            rebuilt = yield from _build(right, right_field, fold)
            probe, resolve = _lookup(rebuilt, fold), _same
            pace.restart()
        for record in matches_in(source, start, stop - start, predicate):
            value = get_left(record)
            if value is None:
                continue
            matches = probe(value)
            n = len(matches)
            if n and total < end and total + n > offset:
                for position, match in enumerate(matches, total):
                    if offset <= position < end:
                        items.append((record, resolve(match)))
            total += n
        if stop < len(source):
            pace.measure()
            yield
    return items, total


def _lookup(built: dict[Any, list[Record]], fold: bool) -> Callable[[Any], Collection[Record]]:
    key = _key(fold)
    return lambda v: built.get(key(v), ())


def _same(record: Record) -> Record:
    return record
