"""The record read commands: get, get_many, find, count, join, aggregate, describe.

Cost model (one slow command stalls every client):

- ``find`` in creation order without a filter reads only ``offset + limit`` rows, forwards or
  backwards. Sorting on ``created_at`` is creation order (timestamps are strictly increasing).
- An ``eq``/``in`` condition on ``id`` or an indexed field, ANDed at the root of ``where``,
  reads only the index's ids (a root ``or`` of only such conditions: their union); the rest of
  the filter then tests those (see ``filters.plan``).
  Anything else scans the table once; a sort keeps only the top ``offset + limit`` with a
  heap when that is well below the number of matches. Over more than ``CHUNK`` rows to read,
  ``find``, ``count``, ``join`` and ``aggregate`` run a chunk per loop turn (``selection``,
  ``joins``, ``builds.ChunkedRead``).
- Equality on a field with a casefold unique index ignores case (see ``query``).
- Hidden fields are stripped from every result unless ``include_hidden`` is given (``get``,
  ``get_many``, ``find``), and may not be filtered, sorted, grouped on or projected without it.
- ``describe`` examines at most ``sample`` rows (the newest), so its cost is bounded too.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Generator, Iterable
from itertools import islice
from typing import Any, NamedTuple, TypeVar

from storeserver.aggregation import MAX_GROUP_BY, aggregate, aggregate_steps, parse_metrics
from storeserver.arguments import Args, check_keys, limit, offset, optional_bool, optional_list
from storeserver.builds import CHUNK, ChunkedRead, Pace, release_steps, run_steps, spill
from storeserver.catalog import Catalog
from storeserver.errors import BadRequest, LimitExceeded
from storeserver.filters import Node, compile_predicate, parse_where, plan
from storeserver.joins import folds, join_steps, needs_chunks
from storeserver.projection import parse_fields
from storeserver.query import (
    Condition,
    Predicate,
    SortField,
    check_field,
    check_visible,
    page,
    parse_sort,
    sort_key_function,
    top,
)
from storeserver.records import no_record
from storeserver.selection import (
    Steps,
    candidates,
    count_of,
    count_steps,
    matches_in,
    rows_per_step,
    select_steps,
)
from storeserver.shapes import describe_steps
from storeserver.tables import Record, Table

DEFAULT_LIMIT = 100

_GET_ARGS = frozenset({"table", "id", "include_hidden"})
_GET_MANY_ARGS = frozenset({"table", "ids", "include_hidden"})
_FIND_ARGS = frozenset({"table", "where", "sort", "offset", "limit", "include_hidden", "fields"})
_COUNT_ARGS = frozenset({"table", "where"})
_JOIN_ARGS = frozenset({"left", "right", "left_field", "right_field", "where", "offset", "limit"})
_AGGREGATE_ARGS = frozenset({"table", "where", "group_by", "metrics", "sort", "offset", "limit"})
_DESCRIBE_ARGS = frozenset({"table", "sample"})
MAX_SAMPLE = 100_000
"""Rows ``describe`` examines at most (its default): about 0.1 s for ten-field rows."""


def _matching(table: Table, conditions: list[Node]) -> tuple[Iterable[Record], int | None]:
    """Records meeting ``conditions`` in creation order, and their number if known cheaply."""
    rows = table.rows
    if not conditions:
        return rows.values(), len(rows)
    ids, predicate = plan(table, conditions)
    source: Iterable[Record] = rows.values() if ids is None else (rows[i] for i in ids)
    if predicate is None:
        return source, len(ids)  # type: ignore[arg-type]
    return filter(predicate, source), None


def _find_page(
    table: Table,
    items: list[Record],
    total: int,
    project: Callable[[Record], Record] | None,
    include_hidden: bool,
) -> dict[str, Any]:
    if project is not None:
        items = [project(r) for r in items]
    elif table.hidden and not include_hidden:
        items = [table.strip(r) for r in items]
    return {"items": items, "total": total}


def _find_reply(
    table: Table,
    steps: Steps,
    project: Callable[[Record], Record] | None,
    include_hidden: bool,
    hidden: frozenset[str],
) -> Generator[None, None, dict[str, Any]]:
    """``hidden``: the set the projection was checked against, when the find was parsed (a
    generator's body starts at its first step, a loop turn later)."""
    items, total = yield from steps
    page = _find_page(table, items, total, project, include_hidden)
    if project is not None and table.hidden is not hidden and not include_hidden:
        # A field hidden between the steps (``create_table`` replaces the set): not returned,
        # even named by ``fields`` (QA). Only then: a strip per item costs as much again.
        page["items"] = [table.strip(r) for r in page["items"]]
    return page


def _join_reply(
    left: Table, right: Table, steps: Generator[None, None, tuple[list[Any], int]]
) -> Generator[None, None, dict[str, Any]]:
    pairs, total = yield from steps
    items = [[left.visible(a, False), right.visible(b, False)] for a, b in pairs]
    return {"items": items, "total": total}


T = TypeVar("T")


class _Planned(NamedTuple):
    """A read's steps, and whether they cover more rows than one step takes."""

    steps: Steps
    many: bool


class RecordReader:
    def __init__(self, catalog: Catalog, max_limit: int, max_in: int) -> None:
        self.catalog = catalog
        self.max_limit = max_limit
        self.max_in = max_in
        self.spill = False
        """Run a short read at once only while it is quick, then as a job (``builds.spill``):
        set by the server, whose scheduler runs the jobs. Off, a short read runs to its end
        (direct callers, such as tests, then always get the answer itself)."""

    def _run(self, command: str, steps: Generator[None, None, T], many: bool) -> T | ChunkedRead:
        """A read's steps as a job over many rows; else run at once (see ``spill``)."""
        if many:
            return ChunkedRead(command, steps)
        if self.spill:
            return spill(ChunkedRead(command, steps))
        return run_steps(steps)

    def get(self, args: Args) -> Record:
        if not args.keys() <= _GET_ARGS:
            check_keys(args, _GET_ARGS)
        # ``catalog.get`` inlined for a table that exists (one call less on every get).
        name = args.get("table")
        table = self.catalog.tables.get(name) if type(name) is str else None
        if table is None:
            table = self.catalog.get(args)  # raises NotFound or BadRequest
        rid = args.get("id")
        if type(rid) is not str:
            raise BadRequest("id must be a string", {"arg": "id"})
        record = table.rows.get(rid)
        if record is None:
            raise no_record(table.name, rid)
        if table.hidden:
            return table.visible(record, optional_bool(args, "include_hidden"))
        if "include_hidden" in args:
            optional_bool(args, "include_hidden")
        return record

    def get_many(self, args: Args) -> list[Record | None]:
        check_keys(args, _GET_MANY_ARGS)
        table = self.catalog.get(args)
        include_hidden = optional_bool(args, "include_hidden")
        ids = optional_list(args, "ids")
        if len(ids) > self.max_limit:
            raise LimitExceeded(
                f"at most {self.max_limit} ids", {"arg": "ids", "max": self.max_limit}
            )
        if any(type(i) is not str for i in ids):
            raise BadRequest("ids must be strings", {"arg": "ids"})
        rows = table.rows
        return [
            None if (r := rows.get(i)) is None else table.visible(r, include_hidden) for i in ids
        ]

    def find(self, args: Args) -> dict[str, Any] | ChunkedRead:
        check_keys(args, _FIND_ARGS)
        table = self.catalog.get(args)
        include_hidden = optional_bool(args, "include_hidden")
        conditions = parse_where(args.get("where"), table.hidden, include_hidden, self.max_in)
        sort = parse_sort(args.get("sort"), table.hidden, include_hidden)
        project = parse_fields(args.get("fields"), table.hidden, include_hidden)
        start = offset(args)
        size = limit(args, DEFAULT_LIMIT, self.max_limit)
        selected = self._select(table, conditions, sort, start, size)
        if isinstance(selected, _Planned):
            reply = _find_reply(table, selected.steps, project, include_hidden, table.hidden)
            return self._run("find", reply, selected.many)
        items, total = selected
        return _find_page(table, items, total, project, include_hidden)

    @staticmethod
    def _select(
        table: Table, conditions: list[Node], sort: list[SortField], start: int, size: int
    ) -> tuple[list[Record], int] | _Planned:
        """The page and the total when an index or the creation order gives them; else the
        steps that compute them (``selection``)."""
        descending = False
        if sort and sort[0].field == "created_at":
            descending, sort = sort[0].descending, []  # creation order; created_at is unique
        rows = table.rows
        if not sort and not conditions:
            source = reversed(rows.values()) if descending else rows.values()
            return page(source, start, size), len(rows)
        ids, predicate = plan(table, conditions) if conditions else (None, None)
        if ids is not None and predicate is None and not sort and not descending:
            return page((rows[i] for i in ids), start, size), len(ids)  # type: ignore[arg-type]
        rows_read = candidates(rows, ids)
        step = rows_per_step(conditions, sort)
        steps = select_steps(rows_read, predicate, sort, descending, start, size, step)
        return _Planned(steps, len(rows_read) > step)

    def count(self, args: Args) -> int | ChunkedRead:
        check_keys(args, _COUNT_ARGS)
        table = self.catalog.get(args)
        conditions = parse_where(args.get("where"), table.hidden, False, self.max_in)
        if not conditions:
            return len(table.rows)
        if len(conditions) == 1 and type(conditions[0]) is Condition:
            counted = table.count_in(conditions[0])
            if counted is not None:
                return counted
        ids, predicate = plan(table, conditions, ordered=False)  # a count needs no order
        rows = table.rows
        if predicate is None:
            return count_of(rows, ids)
        rows_read = candidates(rows, ids)
        step = rows_per_step(conditions)
        return self._run("count", count_steps(rows_read, predicate, step), len(rows_read) > step)

    def join(self, args: Args) -> dict[str, Any] | ChunkedRead:
        check_keys(args, _JOIN_ARGS)
        left = self.catalog.get(args, "left")
        right = self.catalog.get(args, "right")
        left_field = check_field(args.get("left_field"), "left_field")
        right_field = check_field(args.get("right_field"), "right_field")
        check_visible(left_field, left.hidden, False)
        check_visible(right_field, right.hidden, False)
        conditions = parse_where(args.get("where"), left.hidden, False, self.max_in)
        start = offset(args)
        size = limit(args, DEFAULT_LIMIT, self.max_limit)
        left_ids, predicate = plan(left, conditions)
        left_count = len(left.rows) if left_ids is None else len(left_ids)  # type: ignore[arg-type]
        fold = folds(left, left_field, right, right_field)
        chunked = needs_chunks(left_count, right, right_field, fold)
        if chunked and left_ids is not None:
            # A job's rows are taken at its first step, a loop turn later (``scheduler``): a
            # row the index picked may have changed by then, so it meets every condition again.
            predicate = compile_predicate(conditions, left.casefold_fields)
        steps = join_steps(
            left, right, left_field, right_field, left_ids, predicate, start, size, fold
        )
        reply = _join_reply(left, right, steps)
        return self._run("join", reply, chunked)

    def aggregate(self, args: Args) -> dict[str, Any] | ChunkedRead:
        check_keys(args, _AGGREGATE_ARGS)
        table = self.catalog.get(args)
        conditions = parse_where(args.get("where"), table.hidden, False, self.max_in)
        group_by = optional_list(args, "group_by", MAX_GROUP_BY)
        for field in group_by:
            check_field(field, "group_by")
            check_visible(field, table.hidden, False)
        if len(set(group_by)) != len(group_by):
            raise BadRequest("group_by repeats a field", {"arg": "group_by"})
        metrics = parse_metrics(args.get("metrics"), group_by, table.hidden)
        names = [*group_by, *(m.name for m in metrics)]
        sort = parse_sort(args.get("sort"), frozenset(), True, allowed=names)
        start = offset(args)
        size = limit(args, DEFAULT_LIMIT, self.max_limit)
        if len(table.rows) > CHUNK or self.spill:
            # The candidate rows as they are now; the filter runs a slice per step with the rest.
            ids, predicate = plan(table, conditions) if conditions else (None, None)
            rows = table.rows
            rows_read = candidates(rows, ids)
            steps = self._aggregate_steps(
                rows_read, predicate, group_by, metrics, names, sort, start, size
            )
            return self._run("aggregate", steps, len(table.rows) > CHUNK)
        source, _ = _matching(table, conditions)
        groups = aggregate(source, group_by, metrics)
        return _group_page(groups, sort, start, size)

    @staticmethod
    def _aggregate_steps(
        rows: list[Record],
        predicate: Predicate | None,
        group_by: list[str],
        metrics: list[Any],
        names: list[str],
        sort: Any,
        start: int,
        size: int,
    ) -> Generator[None, None, dict[str, Any]]:
        pace = Pace()
        chunks = (matches_in(rows, i, j - i, predicate) for i, j in pace.slices(len(rows)))
        groups = yield from aggregate_steps(chunks, group_by, metrics, CHUNK, pace)
        if not sort:
            page = _group_page(groups, sort, start, size)
        else:
            # The page is picked a slice of groups per step, as ``find`` picks rows: keys
            # computed in steps but selected at once held the store 2-4 s (QA: 40,000 groups
            # keyed by long lists sharing a prefix, page 199 sorted by them).
            order = sort_key_function(sort, getter=_output_getter)
            total = len(groups)
            items, _ = yield from select_steps(groups, None, sort, False, start, size, order=order)
            page = {"items": items, "total": total}
        yield from release_steps(groups)  # the groups off the page
        return page

    def describe(self, args: Args) -> dict[str, Any] | ChunkedRead:
        """The shape of a table: field names with counts per value type, over a sample
        (in chunks when it is over ``CHUNK`` rows). All as of the command's start."""
        check_keys(args, _DESCRIBE_ARGS)
        table = self.catalog.get(args)
        sample = limit(args, MAX_SAMPLE, MAX_SAMPLE, "sample")
        rows = table.rows
        # the newest rows: they show the shape clients write today
        sampled = list(islice(reversed(rows.values()), sample))
        spec = table.spec()
        facts = {
            "table": table.name,
            "rows": len(rows),
            "indexes": spec["indexes"],
            "foreign_keys": spec["foreign_keys"],
            "schema": table.schema.document if table.schema is not None else None,
        }
        steps = _describe_reply(describe_steps(sampled, table.hidden, CHUNK), facts)
        return ChunkedRead("describe", steps) if len(sampled) > CHUNK else run_steps(steps)


def _describe_reply(
    steps: Generator[None, None, tuple[int, dict[str, Any]]], facts: dict[str, Any]
) -> Generator[None, None, dict[str, Any]]:
    sampled, fields = yield from steps
    return {**facts, "sampled": sampled, "fields": fields}


def _group_page(groups: list[dict[str, Any]], sort: Any, start: int, size: int) -> dict[str, Any]:
    if sort:
        key, reverse = sort_key_function(sort, getter=_output_getter)
        items = top(groups, len(groups), key, reverse, start, size)
    else:
        items = groups[start : start + size]
    return {"items": items, "total": len(groups)}


def _output_getter(name: str) -> Any:
    return operator.methodcaller("get", name)
