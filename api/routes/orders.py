"""Orders: creation, reads, partial updates, deletion, and an order's user."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response

from api.conditions import WRITE_PRECONDITIONS
from api.deps import (
    CurrentUser,
    OrderId,
    OrderListQuery,
    OrderWrite,
    StoreDep,
    UntaggedRead,
    embeds_only,
    order_owner_check,
    visible_order,
)
from api.errors import ApiError
from api.etags import identity_etag, list_etag
from api.http_metrics import MeteredRoute
from api.responses import groups_response, list_response, no_content, record_response
from api.schemas.envelope import (
    CREATED,
    NOT_MODIFIED,
    QUERY_MATCHED,
    TAGGED,
    Envelope,
    GroupsEnvelope,
    ListEnvelope,
    error_responses,
    projected_list,
)
from api.schemas.orders import OrderCreate, OrderPublic, OrderUpdate
from api.schemas.query import AggregateBody, OrderQueryBody, OrderWithUser
from api.schemas.users import UserPublic
from api.services import orders as order_service
from api.services import record_queries
from api.services import users as user_service

router = APIRouter(route_class=MeteredRoute, prefix="/orders", tags=["orders"])
Expand = Annotated[
    Literal["user"] | None, Query(description="`user`: embed each order's user (one lookup)")
]


@router.post(
    "",
    status_code=201,
    response_model=Envelope[OrderPublic],
    responses={**CREATED, **error_responses(401, 403, 409, 413, 415, 422, 507)},
    summary="Create an order",
)
async def create_order(
    request: Request, payload: OrderCreate, store: StoreDep, caller: CurrentUser
) -> Response:
    """Place an order for yourself (an admin: for anyone; 409 if user_id names no user).

    total_price is an exact decimal. An admin may set order_date (not in the future); for
    anyone else it is validated the same way (a 422 if it is not a valid date), then
    ignored and the order is dated now.
    """
    _check_owner(caller, str(payload.user_id))
    order = await order_service.create_order(store, payload, dated_by_admin=caller.is_admin)
    location = request.app.url_path_for("read_order", order_id=order["id"])
    return record_response(request, order, status_code=201, location=location)


@router.get(
    "",
    response_model=ListEnvelope[OrderWithUser],
    responses={**NOT_MODIFIED, **error_responses(400, 401, 422, 507)},
    summary="List orders",
)
async def list_orders(
    request: Request,
    caller: CurrentUser,  # first: a 401 comes before any word about the query (list_users)
    query: OrderListQuery,
    store: StoreDep,
    expand: Expand = None,
) -> Response:
    """List your orders (an admin: everyone's) with pagination, sorting and filters
    (e.g. total_price__gte=10); `expand=user` embeds each order's user."""
    if not caller.is_admin:
        query = query.with_condition(["user_id", "eq", caller.id])
    if expand:

        async def read() -> tuple[Records, Records, int]:
            items, total = await order_service.list_orders(store, query)
            return await order_service.with_users(store, items), items, total

        embedded, items, total = await order_service.read_consistently(read)
        return list_response(request, embedded, total, query.page, _versioned(embedded, items))
    items, total = await order_service.list_orders(store, query)
    return list_response(request, items, total, query.page)


@router.post(
    "/query",
    response_model=projected_list(OrderWithUser),
    responses={**TAGGED, **error_responses(400, 401, 413, 415, 422, 507, described=QUERY_MATCHED)},
    summary="Query orders with a filter tree",
)
async def query_orders(
    request: Request, body: OrderQueryBody, store: StoreDep, caller: CurrentUser
) -> Response:
    """Your orders (an admin: everyone's) matching a filter tree, as in
    `POST /data/{table}/query`; `expand: "user"` embeds each order's user."""
    query = record_queries.TreeQuery.parse(body, order_service.FIELDS, scoped=not caller.is_admin)
    if not caller.is_admin:
        query = query.with_condition(["user_id", "eq", caller.id])

    # An embed joins on user_id, read even when the projection leaves it out.
    also = ("user_id",) if body.expand else ()

    async def read() -> tuple[Records, Records, int]:
        table = order_service.TABLE
        items, versioned, total = await record_queries.query_records(store, table, query, also)
        if body.expand:
            items = await order_service.with_users(store, items, versioned)
            versioned = _versioned(items, versioned)
        return items, versioned, total

    items, versioned, total = await order_service.read_consistently(read)
    return list_response(request, items, total, query.page, versioned, query.shape)


@router.post(
    "/aggregate",
    response_model=GroupsEnvelope,
    responses=error_responses(400, 401, 413, 415, 422, 507),
    summary="Aggregate orders by group",
)
async def aggregate_orders(
    body: AggregateBody, store: StoreDep, caller: CurrentUser, _untagged: UntaggedRead = None
) -> Response:
    """Your orders (an admin: everyone's) grouped and summed, as in
    `POST /data/{table}/aggregate`: e.g. revenue and count per status, or per user for an
    admin. Decimal sums stay exact (strings)."""
    scope = None if caller.is_admin else ["user_id", "eq", caller.id]
    items, total = await record_queries.aggregate_records(store, order_service.TABLE, body, scope)
    return groups_response(items, total, body.page, body.per_page)


@router.get(
    "/{order_id}",
    response_model=Envelope[OrderWithUser],
    responses={
        **NOT_MODIFIED,
        **error_responses(400, 401, 404, 422),
    },
    summary="Read an order",
)
async def read_order(
    request: Request,
    order_id: OrderId,
    store: StoreDep,
    expand: Expand = None,
    _embeds: Annotated[None, embeds_only("expand")] = None,
) -> Response:
    """Read one order; the weak ETag is the record's version.

    `expand=user` embeds the order's user; the ETag then covers both, so it is not the one
    to send as If-Match on a write (read the order without `expand` for that).
    """
    if expand is None:
        order = visible_order(request, await order_service.read_order(store, order_id))
        return record_response(request, order)

    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        order = await order_service.read_order(store, order_id)  # 404 once a cascade took it
        visible_order(request, order)
        (embedded,) = await order_service.with_users(store, [order])
        return order, embedded

    order, embedded = await order_service.read_consistently(read)
    return record_response(
        request, embedded, etag=list_etag(_versioned([embedded], [order]), 1, 1, 1)
    )


@router.patch(
    "/{order_id}",
    response_model=Envelope[OrderPublic],
    responses={
        **TAGGED,
        **error_responses(401, 403, 404, 409, 413, 415, 422, 507, described=WRITE_PRECONDITIONS),
    },
    summary="Update an order",
)
async def update_order(
    request: Request, order: OrderWrite, payload: OrderUpdate, caller: CurrentUser
) -> Response:
    """Change the fields sent; with If-Match the write happens only at that version, with
    If-None-Match only at another (412).

    Only an admin may give an order to another user.
    """
    if payload.user_id is not None:
        _check_owner(caller, str(payload.user_id))
    update = partial(order_service.update_order, order.store, order.record_id, payload)
    return record_response(request, await order.run(update))


@router.delete(
    "/{order_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 404, described=WRITE_PRECONDITIONS),
    summary="Delete an order",
)
async def delete_order(order: OrderWrite) -> Response:
    """Delete an order."""
    await order.run(partial(order_service.delete_order, order.store, order.record_id))
    return no_content()


@router.get(
    "/{order_id}/user",
    response_model=Envelope[UserPublic],
    responses={**NOT_MODIFIED, **error_responses(400, 401, 404)},
    summary="Read an order's user",
)
async def read_order_user(
    request: Request,
    order_id: OrderId,
    store: StoreDep,
    _embeds: Annotated[None, embeds_only()] = None,
) -> Response:
    """The user who placed the order. Its weak ETag covers which user that is (the order may
    move to another): not the one to send as If-Match on a write to the user (read
    `GET /users/{user_id}` for that)."""
    check = order_owner_check(request)
    if check is not None:  # the caller's own order, as it was when checked: the caller
        user = await user_service.read_user(store, check.owner)
    else:
        user = await order_service.read_order_user(store, order_id)
    # The order may move to another user: the tag says which one (QA: after a move, the
    # new user at version 1 kept the old one's W/"1", and a revalidation got a 304).
    return record_response(request, user, etag=identity_etag(user))


def _check_owner(caller: CurrentUser, user_id: str) -> None:
    if user_id != caller.id and not caller.is_admin:
        raise ApiError(403, "FORBIDDEN", "Only an admin may place or move orders for other users")


Records = list[dict[str, Any]]


def _versioned(embedded: Records, orders: Records) -> Records:
    """The orders and their embedded users, for a list ETag that changes when either does."""
    return [*orders, *(order["user"] for order in embedded if order.get("user"))]
