"""The query and path parameters shared by routes, as dependencies (re-exported by
``api.deps``, where routes take them from): table names and join keys (400 for a hostile
name, before any store call), pages, the orders embed, the list queries with their filters,
and those filters alone for the routes that select a table's records as its list does
(``FILTERING`` tells ``api.openapi`` which fields each one filters on).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, Path, Query, Request
from pydantic import BeforeValidator

from api.errors import ApiError, bad_query
from api.queries import (
    EXPANDABLE,
    NAME_PART,
    RESERVED,
    Fields,
    ListQuery,
    Page,
    build_list_query,
)
from api.services import orders, typed_tables, users

TABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
FIELD_NAME = re.compile(NAME_PART)
_DIGITS = re.compile(r"[0-9]{1,20}")


def _ascii_integer(value: object) -> object:
    """A query-string number of pages, rows or items in ASCII digits only: pydantic's lax int
    reads ``1_0`` as 10 and takes ``1.0`` and `` 2``, which the typed integer filters refuse
    (QA: ``?page=1_0`` answered page 10)."""
    if type(value) is str and not _DIGITS.fullmatch(value):
        raise ValueError("expected a whole number in ASCII digits")
    return value


ASCII_DIGITS = BeforeValidator(_ascii_integer)
"""Put after the parameter's ``Query`` (``Annotated[int, Query(ge=1), ASCII_DIGITS]``): before
it, the bounds reach the OpenAPI document as ``ge``/``le``, which JSON Schema does not know,
instead of ``minimum``/``maximum`` (QA: every page bound was lost to clients so)."""


async def validate_table(
    table: Annotated[
        str,
        Path(
            description="Table name: ^[a-z][a-z0-9_]{0,62}$",
            json_schema_extra={"pattern": f"^{TABLE_NAME.pattern}$"},
            examples=["products"],
        ),
    ],
) -> str:
    """Hostile names (``../x``, ``users;drop``, 10 KB, unicode) get 400, not a store call."""
    return check_table_name(table, "table")


def check_table_name(name: str, param: str) -> str:
    if not TABLE_NAME.fullmatch(name):
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise ApiError(
            400,
            "INVALID_TABLE_NAME",
            f"invalid table name {shown!r}: use ^[a-z][a-z0-9_]{{0,62}}$",
            [{"field": param, "message": "must match ^[a-z][a-z0-9_]{0,62}$"}],
        )
    return name


async def validate_left(
    left: Annotated[str, Path(description="Left table", examples=["users"])],
) -> str:
    return check_table_name(left, "left")


async def validate_right(
    right: Annotated[str, Path(description="Right table", examples=["orders"])],
) -> str:
    return check_table_name(right, "right")


TableName = Annotated[str, Depends(validate_table)]
LeftTable = Annotated[str, Depends(validate_left)]
RightTable = Annotated[str, Depends(validate_right)]


MAX_PAGE = 1_000_000
MAX_PER_PAGE = 100


def page_number(description: str) -> Any:
    """The ``Query`` of a page number, 1 to ``MAX_PAGE`` (with ``ASCII_DIGITS`` after it)."""
    return Query(ge=1, le=MAX_PAGE, description=description)


def page_size(description: str) -> Any:
    """The ``Query`` of a page's size, 1 to ``MAX_PER_PAGE`` (with ``ASCII_DIGITS`` after it)."""
    return Query(ge=1, le=MAX_PER_PAGE, description=description)


async def parse_page(
    page: Annotated[int, page_number("Page number, from 1"), ASCII_DIGITS] = 1,
    per_page: Annotated[int, page_size("Items per page, 1 to 100"), ASCII_DIGITS] = 20,
) -> Page:
    return Page(page, per_page)


PageParams = Annotated[Page, Depends(parse_page)]


def only_params(*names: str) -> Any:
    """A route dependency refusing (400 ``BAD_QUERY``) a query parameter a list route with a
    fixed set of them does not read: a misspelt filter (``?stat=failed``) would otherwise
    list everything, where the typed lists refuse an unknown field."""
    allowed = frozenset(("page", "per_page", *names))
    listed = ", ".join(sorted(allowed))

    async def check(request: Request) -> None:
        for key in request.query_params:
            if key not in allowed:
                shown = key if len(key) <= 40 else key[:40] + "…"
                raise bad_query(shown, f"unknown parameter {shown!r}: this route takes {listed}")

    return Depends(check)


def embeds_only(*served: str) -> Any:
    """A single-record read's parameter refusing (400 ``BAD_QUERY``) ``expand`` or ``embed``
    where the route does not embed that: the lists refuse them as unknown fields, and a
    client asking ``GET /data/orders/{id}?expand=user`` must not get a 200 without the user
    (QA). Other unknown parameters stay ignored there, as caches' busters (``?_=1``) expect.
    Declared after the caller and the record's ownership check: 401 and 404 come first."""
    refused = tuple(name for name in ("expand", "embed") if name not in served)
    takes = " and ".join(f"{name!r}" for name in served) or "no expand or embed"

    async def check(request: Request) -> None:
        for name in refused:
            if name in request.query_params:
                raise bad_query(name, f"{name!r} embeds nothing on this route (it takes {takes})")

    return Depends(check)


async def parse_orders_embed(
    embed: Annotated[
        Literal["orders"] | None, Query(description="`orders`: embed a page of their orders")
    ] = None,
    orders_page: Annotated[int, page_number("Page of orders"), ASCII_DIGITS] = 1,
    orders_per_page: Annotated[int, page_size("Orders per page"), ASCII_DIGITS] = 20,
) -> Page | None:
    """The page of a user's orders to embed (``embed=orders``), else None. One dependency for
    ``GET /users/{user_id}`` and ``GET /users/me``: the same parameters, the same answers."""
    return Page(orders_page, orders_per_page) if embed is not None else None


OrdersEmbed = Annotated[Page | None, Depends(parse_orders_embed)]
SortParam = Annotated[
    str | None,
    Query(description="`field:asc|desc[,field:dir]`", examples=["created_at:desc"]),
]
CreatedAfter = Annotated[
    str | None,
    Query(description="ISO date or datetime (UTC if no offset)", examples=["2024-01-01"]),
]
CreatedBefore = Annotated[str | None, Query(description="ISO date or datetime (UTC if no offset)")]


def _list_query(
    request: Request,
    page: Page,
    sort: str | None,
    after: str | None,
    before: str | None,
    fields: Fields | None,
    reserved: frozenset[str] = RESERVED,
) -> ListQuery:
    params = request.query_params.multi_items()
    return build_list_query(params, page, sort, after, before, fields, reserved)


FILTERING: dict[Callable[..., Any], Fields | None] = {}
"""The list-query dependencies and their filterable fields (``None``: any field); the
filters are read from the query string as a whole, so ``api.openapi`` describes them."""


def typed_list_query(
    fields: Fields, reserved: frozenset[str] = RESERVED
) -> Callable[..., Awaitable[ListQuery]]:
    """The list-query dependency of a typed resource whose filterable fields are ``fields``
    (``reserved``: its parameters that are not filters)."""

    async def parse(
        request: Request,
        page: PageParams,
        sort: SortParam = None,
        created_after: CreatedAfter = None,
        created_before: CreatedBefore = None,
    ) -> ListQuery:
        return _list_query(request, page, sort, created_after, created_before, fields, reserved)

    FILTERING[parse] = fields
    return parse


parse_user_list_query = typed_list_query(users.FIELDS)
parse_order_list_query = typed_list_query(orders.FIELDS, EXPANDABLE)  # its routes take expand


async def parse_data_list_query(
    request: Request,
    table: TableName,
    page: PageParams,
    sort: SortParam = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> ListQuery:
    fields = typed_tables.fields_of(table)
    return _list_query(request, page, sort, created_after, created_before, fields)


async def parse_join_query(
    request: Request,
    left: LeftTable,
    page: PageParams,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> ListQuery:
    """Filters apply to the left table; a join has no sort (the left table's order)."""
    if "sort" in request.query_params:
        raise bad_query("sort", "a join is returned in the left table's order; sort is unsupported")
    fields = typed_tables.fields_of(left)
    return _list_query(request, page, None, created_after, created_before, fields)


def table_filter_query(
    not_filters: frozenset[str] = frozenset(),
) -> Callable[..., Awaitable[ListQuery]]:
    """The filters of ``GET /data/{table}`` without its page and sort: the dependency of the
    routes that select a table's records as its list does (the count, the writes by filter,
    the CSV export), registered in ``FILTERING`` so their documents describe the filters as
    the list's does. ``not_filters``: the route's own query parameters (``async``...); page,
    per_page and sort are never filters (the route ignores or refuses them)."""
    reserved = RESERVED | not_filters

    async def parse(
        request: Request,
        table: TableName,
        created_after: CreatedAfter = None,
        created_before: CreatedBefore = None,
    ) -> ListQuery:
        fields = typed_tables.fields_of(table)
        return _list_query(request, Page(), None, created_after, created_before, fields, reserved)

    FILTERING[parse] = None
    return parse


FILTERING[parse_data_list_query] = FILTERING[parse_join_query] = None
UserListQuery = Annotated[ListQuery, Depends(parse_user_list_query)]
OrderListQuery = Annotated[ListQuery, Depends(parse_order_list_query)]
DataListQuery = Annotated[ListQuery, Depends(parse_data_list_query)]
JoinListQuery = Annotated[ListQuery, Depends(parse_join_query)]


async def validate_key(
    key: Annotated[str, Path(description="Join field name", examples=["user_id"])],
) -> str:
    if not FIELD_NAME.fullmatch(key):
        raise bad_query("key", "join key must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    return key


JoinKey = Annotated[str, Depends(validate_key)]
