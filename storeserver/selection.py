"""``find`` and ``count`` over many rows, a chunk per loop turn (``builds.ChunkedRead``).

Design note. A filter or a sort that must look at every row of a million-row table took
0.2-0.6 s in one command, and the store is one thread: every client waited. When more than
``CHUNK`` candidate rows must be read, the work is split into steps of ``CHUNK`` rows:

- the candidate rows are copied into a list in the first step (C speed, a few ms per 1M);
  stored records are never mutated (a write swaps in a new dict), so the answer is the rows
  as they were when the command started, whatever is written between steps;
- each step filters one slice (as many rows as fit a few milliseconds, ``builds.Pace``); with a
  sort, either keeps the best ``offset + limit`` so far (a heap, when that is small next to a
  chunk; each row keyed once) or sorts the slice (a run); the runs are then merged lazily, a
  few milliseconds per step, up to the end of the page.

The results are those of filtering and sorting the whole list at once (small tables run the
same steps without pausing, ``builds.run_steps``, or while they are quick, ``builds.spill``):
Python's sort, the heap selections and ``heapq.merge`` are all stable, so ties keep creation
order. ``candidates`` and ``matches_in`` also serve the chunked ``join`` and ``aggregate``, and
``select_steps`` picks an aggregate's sorted page of groups the same way.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any

from storeserver.builds import CHUNK, Pace
from storeserver.filters import Node, weight
from storeserver.query import Predicate, SortField, sort_key_function
from storeserver.tables import Record

Steps = Generator[None, None, tuple[list[Record], int]]


def candidates(rows: Mapping[str, Record], ids: Iterable[str] | None) -> list[Record]:
    """The rows to read as they are now: all of them (``ids`` None) or those ids, in order,
    less those deleted since the ids were picked. A list taken in one step: ``ids`` may be a
    live index bucket, or a list picked when the command was read, a loop turn before a
    job's first step (QA: a row deleted in between failed a chunked join with a KeyError)."""
    if ids is None:
        return list(rows.values())
    get = rows.get
    return [r for r in map(get, ids) if r is not None]


def rows_per_step(
    where: list[Node], sort: list[SortField] | tuple[()] = (), simple: int | None = None
) -> int:
    """How many rows a step reads so that it stays near a simple filter's cost: ``simple``
    (``CHUNK``) for up to four filter nodes, fewer the costlier each row is to test and sort
    (measured: a 100-node filter took ~0.3 s per 10,000 rows, a sort on 10 fields ~0.24 s)."""
    simple = CHUNK if simple is None else simple
    cost = weight(where) + 4 * len(sort)
    return simple if cost <= 4 else max(simple * 4 // cost, simple // 50)


def count_of(rows: Mapping[str, Record], ids: Iterable[str] | None) -> int:
    """How many rows ``candidates`` would take (without taking them)."""
    return len(rows) if ids is None else len(ids)  # type: ignore[arg-type]


def matches_in(
    rows: list[Record], start: int, chunk: int, predicate: Predicate | None
) -> list[Record]:
    """The rows of ``rows[start:start + chunk]`` meeting ``predicate`` (all when None)."""
    part = rows[start : start + chunk]
    return part if predicate is None else list(filter(predicate, part))


def select_steps(
    candidates: list[Record],
    predicate: Predicate | None,
    sort: list[SortField],
    descending: bool,
    start: int,
    size: int,
    chunk: int = CHUNK,
    order: tuple[Callable[[Any], Any], bool] | None = None,
) -> Steps:
    """``(the page, total matches)`` of ``candidates`` (creation order; the list is consumed)
    meeting ``predicate``, sorted by ``sort`` (or in creation order, newest first when
    ``descending``), yielding after each slice of at most ``chunk`` rows (``builds.Pace``).
    ``order``: the ``(key, reverse)`` to sort by instead of ``sort``'s over stored records
    (an aggregate's groups read their fields otherwise)."""
    if descending:
        candidates.reverse()
    end = start + size
    total = 0
    pace = Pace(chunk)
    if not sort:
        kept: list[Record] = []
        for i, j in pace.slices(len(candidates)):
            part = matches_in(candidates, i, j - i, predicate)
            if len(kept) < end:
                kept += part[: end - len(kept)]
            total += len(part)
            pace.measure()
            yield
        return kept[start:end], total
    key, reverse = order or sort_key_function(sort)
    first = operator.itemgetter(0)
    if end * 4 <= chunk:
        # (key, record) pairs, each row keyed once; the best ``end`` are picked again only
        # once twice that many are kept, so a step of one costly row does not compare the
        # whole page again (QA: one row per step made that 4-9 times slower).
        best: list[tuple[Any, Record]] = []
        pick = heapq.nlargest if reverse else heapq.nsmallest
        for i, j in pace.slices(len(candidates)):
            part = matches_in(candidates, i, j - i, predicate)
            total += len(part)
            best += [(key(r), r) for r in part]
            if len(best) > 2 * end:
                # The best so far come first: on ties they are the earlier rows, as in one sort.
                best = pick(end, best, key=first)
            pace.measure()
            yield
        best = pick(end, best, key=first)
        return [r for _, r in best[start:end]], total
    # Runs keep no keys (a million sort keys would take ~150 MB): the merge keys each row again.
    runs: list[list[Record]] = []
    for i, j in pace.slices(len(candidates)):
        part = matches_in(candidates, i, j - i, predicate)
        total += len(part)
        part.sort(key=key, reverse=reverse)
        runs.append(part)
        pace.measure()
        yield
    out: list[Record] = []
    pace.restart()
    for position, record in enumerate(heapq.merge(*runs, key=key, reverse=reverse)):
        if position >= end:
            break
        if position >= start:
            out.append(record)
        if pace.due():  # keys of large values compare slowly too
            yield
            pace.restart()
    return out, total


def count_steps(
    candidates: list[Record], predicate: Predicate, chunk: int = CHUNK
) -> Generator[None, None, int]:
    """The number of ``candidates`` meeting ``predicate``, yielding after each slice of at
    most ``chunk`` rows."""
    total = 0
    pace = Pace(chunk)
    for i, j in pace.slices(len(candidates)):
        total += len(matches_in(candidates, i, j - i, predicate))
        pace.measure()
        yield
    return total
