"""Orders and the user↔orders relationship; the store enforces the foreign key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from api.errors import ApiError
from api.queries import BASE_FIELDS, FieldType, ListQuery, Page, store_time
from api.schemas.orders import OrderCreate, OrderPublic, OrderUpdate
from api.services import users
from api.services.versions import expected_version, with_version
from api.store import Store

T = TypeVar("T")

TABLE = "orders"
# An order whose user_id names no user is refused by the store (409), atomically.
SCHEMA: dict[str, Any] = {
    "table": TABLE,
    "indexes": [{"field": "user_id"}],
    "foreign_keys": [{"field": "user_id", "table": users.TABLE}],
}
FIELDS: dict[str, FieldType] = {
    **BASE_FIELDS,
    "user_id": "uuid",
    "product_name": "str",
    "quantity": "int",
    "total_price": "decimal",
    "order_date": "timestamp",
}
PUBLIC_FIELDS = tuple(OrderPublic.model_fields)


def to_public(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name) for name in PUBLIC_FIELDS}


# order_date is stored in the store's fixed-width UTC format (``store_time``), so it sorts and
# filters like created_at; the model has refused a moment outside years 1-9999 in UTC.


def changes_of(payload: OrderCreate | OrderUpdate) -> dict[str, Any]:
    """The stored fields of a payload (a replacement is these changes: order_date is kept
    unless given; ``new_record`` sets it for a new order)."""
    changes = payload.model_dump(exclude_unset=True)
    if changes.get("order_date") is not None:
        changes["order_date"] = store_time(changes["order_date"])
    else:
        changes.pop("order_date", None)
    if "user_id" in changes:
        changes["user_id"] = str(changes["user_id"])
    return changes


def new_record(payload: OrderCreate, order_date: datetime | None = None) -> dict[str, Any]:
    """The stored form of a new order, dated ``order_date`` (checked by the caller), else now."""
    date = store_time(order_date if order_date is not None else datetime.now(UTC))
    return {**changes_of(payload), "order_date": date}


async def create_order(
    store: Store, payload: OrderCreate, *, dated_by_admin: bool = False
) -> dict[str, Any]:
    """``dated_by_admin``: keep the payload's ``order_date`` (an admin's request); otherwise
    the order is dated now."""
    record = new_record(payload, payload.order_date if dated_by_admin else None)
    return to_public(await store.call("insert", {"table": TABLE, "record": record}))


async def read_order(store: Store, order_id: str) -> dict[str, Any]:
    return to_public(await store.call("get", {"table": TABLE, "id": order_id}))


async def list_orders(store: Store, query: ListQuery) -> tuple[list[dict[str, Any]], int]:
    found = await store.call("find", query.find_args(TABLE))
    return [to_public(record) for record in found["items"]], int(found["total"])


async def update_order(
    store: Store, order_id: str, payload: OrderUpdate, if_match: frozenset[int] | None
) -> dict[str, Any]:
    return await _patch(store, order_id, changes_of(payload), if_match)


async def replace_order(
    store: Store, order_id: str, payload: OrderCreate, if_match: frozenset[int] | None
) -> dict[str, Any]:
    """Replace every client-set field; order_date is kept unless given (admin-only route)."""
    return await _patch(store, order_id, changes_of(payload), if_match)


async def delete_order(store: Store, order_id: str, if_match: frozenset[int] | None) -> None:
    version = await expected_version(store, TABLE, order_id, if_match)
    await store.call("delete", with_version({"table": TABLE, "id": order_id}, version))


async def list_user_orders(
    store: Store, user_id: str, query: ListQuery
) -> tuple[list[dict[str, Any]], int]:
    """A user's orders through the store's user_id index (404 if the user does not exist).

    The orders first, then the user: a user deleted between the two reads (with their orders,
    by a cascade) is a 404, not an existing user's empty page."""
    found = await list_orders(store, query.with_condition(["user_id", "eq", user_id]))
    await store.call("get", {"table": users.TABLE, "id": user_id})
    return found


async def read_order_user(store: Store, order_id: str) -> dict[str, Any]:
    """The user who placed the order."""
    order = await store.call("get", {"table": TABLE, "id": order_id})
    return await users.read_user(store, str(order["user_id"]))


async def _patch(
    store: Store, order_id: str, changes: dict[str, Any], if_match: frozenset[int] | None
) -> dict[str, Any]:
    version = await expected_version(store, TABLE, order_id, if_match)
    args: dict[str, object] = {"table": TABLE, "id": order_id, "changes": changes}
    return to_public(await store.call("patch", with_version(args, version)))


class _OwnerGone(Exception):
    """An order read a moment ago has no user now: a cascade deleted both in between."""


READ_ATTEMPTS = 3


async def with_users(
    store: Store, found: list[dict[str, Any]], sources: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Each order with its user under ``user``: one ``get_many``, however many orders. Call it
    inside ``read_consistently``, with the read of the orders.

    ``sources`` are the full orders when ``found`` is a projection (that may lack user_id).
    """
    owners = [str(order.get("user_id") or "") for order in (sources or found)]
    ids = list(dict.fromkeys(owner for owner in owners if owner))
    people = await store.call("get_many", {"table": users.TABLE, "ids": ids}) if ids else []
    by_id = {person["id"]: users.to_public(person) for person in people if person is not None}
    if len(by_id) < len(ids):
        raise _OwnerGone  # the store never keeps an order without its user
    return [{**order, "user": by_id.get(owner)} for order, owner in zip(found, owners, strict=True)]


async def read_consistently(read: Callable[[], Awaitable[T]]) -> T:
    """Run ``read`` (orders, then their users: two store commands) again while a user was
    deleted between its two reads, so an answer never shows an order with ``user: null``, a
    state the store never held; the next read no longer finds the deleted orders. After
    ``READ_ATTEMPTS`` such races in a row: 503, retry shortly."""
    for _ in range(READ_ATTEMPTS):
        try:
            return await read()
        except _OwnerGone:
            continue
    raise ApiError(
        503,
        "CHANGED_WHILE_READ",
        "The orders changed while they were read; retry shortly",
        headers={"Retry-After": "1"},
    )


async def user_with_orders(
    store: Store, user_id: str, page: Page
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """A user and one page of their orders (newest last), through the user_id index.

    The orders first, then the user, as ``list_user_orders``."""
    args = {
        "table": TABLE,
        "where": [["user_id", "eq", user_id]],
        "offset": page.offset,
        "limit": page.per_page,
    }
    found = await store.call("find", args)
    user = await users.read_user(store, user_id)
    return user, [to_public(order) for order in found["items"]], int(found["total"])
