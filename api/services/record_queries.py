"""Reading many records of a table: lists, counts, query bodies and aggregations.

``TreeQuery`` is a parsed ``POST .../query`` body (the store's ``where`` tree, sort, page and
projection); ``aggregate_args`` checks an aggregation body and builds the store's arguments.
Separate from ``api.services.records`` (one record at a time, and bulk inserts) because this
is query building: the filter, sort and projection parsing of ``api.filters`` put together.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from api.filters import (
    Loc,
    and_where,
    check_group_field,
    check_metric,
    parse_body_sort,
    parse_filter_tree,
    parse_projection,
    tree_error,
)
from api.queries import Fields, FieldType, ListQuery, Page
from api.schemas.query import AggregateBody, QueryBody
from api.services.record_values import Record
from api.services.typed_tables import fields_of, to_public
from api.store import Store

_ABSENT = object()


async def list_records(store: Store, table: str, query: ListQuery) -> tuple[list[Record], int]:
    found = await store.call("find", query.find_args(table))
    return [to_public(table, record) for record in found["items"]], int(found["total"])


async def count_records(store: Store, table: str, query: ListQuery) -> int:
    args: dict[str, Any] = {"table": table}
    if query.where:
        args["where"] = query.where
    return int(await store.call("count", args))


@dataclass(frozen=True)
class TreeQuery:
    """A parsed query body: the store's ``where`` tree, sort, page and projection."""

    page: Page
    where: Any = None
    sort: list[list[str]] | None = None
    fields: list[str] | None = None

    @classmethod
    def parse(cls, body: QueryBody, fields: Fields | None, scoped: bool = False) -> TreeQuery:
        """``scoped``: a condition will be added (``with_condition``), so the tree keeps one
        level and two nodes free for it."""
        return cls(
            Page(body.page, body.per_page),
            parse_filter_tree(body.filter, fields, reserve=int(scoped)),
            parse_body_sort(body.sort, fields),
            parse_projection(body.fields, fields),
        )

    def with_condition(self, condition: list[Any]) -> TreeQuery:
        return TreeQuery(self.page, and_where(condition, self.where), self.sort, self.fields)

    @property
    def shape(self) -> str:
        """The projection, for the page's ETag (``list_etag``)."""
        return "" if self.fields is None else "fields=" + ",".join(self.fields)

    def find_args(self, table: str, also: tuple[str, ...] = ()) -> dict[str, Any]:
        """``also``: fields read with a projection though not asked for (what an embed joins
        on), dropped again by ``project``."""
        args: dict[str, Any] = {
            "table": table,
            "offset": self.page.offset,
            "limit": self.page.per_page,
        }
        if self.where is not None:
            args["where"] = self.where
        if self.sort:
            args["sort"] = self.sort
        if self.fields is not None:
            # The version too, for the list's ETag; dropped again unless asked for. The store
            # takes one name more than a body may hold (MAX_PROJECTION) for it.
            args["fields"] = list(dict.fromkeys([*self.fields, "version", *also]))
        return args


async def query_records(
    store: Store, table: str, query: TreeQuery, also: tuple[str, ...] = ()
) -> tuple[list[Record], list[Record], int]:
    """One page: the records (projected) and those with their versions (for the ETag) and the
    ``also`` fields (``TreeQuery.find_args``)."""
    found = await store.call("find", query.find_args(table, also))
    full = [to_public(table, record) for record in found["items"]]
    return project(full, query.fields), full, int(found["total"])


async def aggregate_records(
    store: Store, table: str, body: AggregateBody, scope: list[Any] | None = None
) -> tuple[list[Record], int]:
    """One page of groups: the group fields then the metrics, sorted as asked.

    ``scope``: a condition every aggregated record must also meet (a user's own orders).
    """
    fields = fields_of(table)
    args = aggregate_args(table, body, fields, scope)
    found = await store.call("aggregate", args)
    items = list(found["items"])
    # A sum over no rows is the store's 0, an int: over a decimal field (total_price) it is
    # the decimal 0 all the same, a string like every other decimal (QA: ``"spent": 0`` for
    # a filter matching nothing, ``"3.00"`` otherwise).
    zero_sums = [
        m.name
        for m in body.metrics
        if m.op == "sum" and fields is not None and fields.get(m.field or "") == "decimal"
    ]
    for item in items if zero_sums else ():
        for name in zero_sums:
            if type(item.get(name)) is int:
                item[name] = Decimal(item[name])
    return items, int(found["total"])


def aggregate_args(
    table: str, body: AggregateBody, fields: Fields | None, scope: list[Any] | None = None
) -> dict[str, Any]:
    """The store's ``aggregate`` arguments for a body, every name checked (400/422)."""
    group_by = [
        check_group_field(name, fields, ("body", "group_by", i))
        for i, name in enumerate(body.group_by)
    ]
    names: dict[str, FieldType] = {}
    for index, name in enumerate(group_by):
        if name in names:
            raise tree_error(422, "VALIDATION_ERROR", ("body", "group_by", index), (), "repeated")
        names[name] = "str"
    metrics = []
    for index, metric in enumerate(body.metrics):
        loc: Loc = ("body", "metrics", index)
        check_metric(metric.op, metric.field, fields, loc)
        if metric.name in names:
            message = f"'{metric.name}' is already a group field or metric name"
            raise tree_error(422, "VALIDATION_ERROR", (*loc, "as"), (), message)
        names[metric.name] = "str"
        spec = {"op": metric.op, "as": metric.name}
        metrics.append(spec if metric.field is None else {**spec, "field": metric.field})
    args: dict[str, Any] = {
        "table": table,
        "group_by": group_by,
        "metrics": metrics,
        "offset": (body.page - 1) * body.per_page,
        "limit": body.per_page,
    }
    where = parse_filter_tree(body.filter, fields, reserve=0 if scope is None else 1)
    if scope is not None:
        where = and_where(scope, where)
    if where is not None:
        args["where"] = where
    sort = parse_body_sort(body.sort, names)
    if sort:
        args["sort"] = sort
    return args


def project(items: list[Record], fields: list[str] | None) -> list[Record]:
    """``id`` plus ``fields`` of each item (fields missing from a record are left out)."""
    if fields is None:
        return items
    # The store has already cut nested paths (``meta.c``) down; keep their top-level maps.
    # Only maps: a path through anything else is nothing, even where the store was also asked
    # for the whole field (``version``, for the ETag: QA, ``version.x`` answered the version).
    whole = {"id", *(name for name in fields if "." not in name)}
    names = list(dict.fromkeys(["id", *(name.split(".", 1)[0] for name in fields)]))
    return [
        {
            name: value
            for name in names
            if (value := item.get(name, _ABSENT)) is not _ABSENT
            and (name in whole or type(value) is dict)
        }
        for item in items
    ]
