"""Orders and the user↔orders relationship; the store enforces the foreign key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.queries import BASE_FIELDS, FieldType, ListQuery
from api.schemas.orders import OrderCreate, OrderPublic, OrderUpdate
from api.services import users
from api.services.versions import expected_version, with_version
from api.store import Store

TABLE = "orders"
# An order whose user_id names no user is refused by the store (409), atomically.
SCHEMA: dict[str, Any] = {
    "table": TABLE,
    "indexes": [{"field": "user_id"}],
    "foreign_keys": [{"field": "user_id", "table": users.TABLE}],
}
FIELDS: dict[str, FieldType] = {
    **BASE_FIELDS,
    "user_id": "str",
    "product_name": "str",
    "quantity": "int",
    "total_price": "decimal",
    "order_date": "timestamp",
}
PUBLIC_FIELDS = tuple(OrderPublic.model_fields)


def to_public(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name) for name in PUBLIC_FIELDS}


def _now() -> str:
    # The store's fixed-width UTC format, so order_date sorts and filters like created_at.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fields(payload: OrderCreate | OrderUpdate) -> dict[str, Any]:
    changes = payload.model_dump(exclude_unset=True)
    if "user_id" in changes:
        changes["user_id"] = str(changes["user_id"])
    return changes


async def create_order(store: Store, payload: OrderCreate) -> dict[str, Any]:
    record = {**_fields(payload), "order_date": _now()}
    return to_public(await store.call("insert", {"table": TABLE, "record": record}))


async def read_order(store: Store, order_id: str) -> dict[str, Any]:
    return to_public(await store.call("get", {"table": TABLE, "id": order_id}))


async def list_orders(store: Store, query: ListQuery) -> tuple[list[dict[str, Any]], int]:
    found = await store.call("find", query.find_args(TABLE))
    return [to_public(record) for record in found["items"]], int(found["total"])


async def update_order(
    store: Store, order_id: str, payload: OrderUpdate, if_match: frozenset[int] | None
) -> dict[str, Any]:
    return await _patch(store, order_id, _fields(payload), if_match)


async def replace_order(
    store: Store, order_id: str, payload: OrderCreate, if_match: frozenset[int] | None
) -> dict[str, Any]:
    """Replace every client-set field; order_date is kept."""
    return await _patch(store, order_id, _fields(payload), if_match)


async def delete_order(store: Store, order_id: str, if_match: frozenset[int] | None) -> None:
    version = await expected_version(store, TABLE, order_id, if_match)
    await store.call("delete", with_version({"table": TABLE, "id": order_id}, version))


async def list_user_orders(
    store: Store, user_id: str, query: ListQuery
) -> tuple[list[dict[str, Any]], int]:
    """A user's orders through the store's user_id index (404 if the user does not exist)."""
    await store.call("get", {"table": users.TABLE, "id": user_id})
    return await list_orders(store, query.with_condition(["user_id", "eq", user_id]))


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
