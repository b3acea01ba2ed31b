"""Inner joins through the store's ``join`` (it probes a hash index on the right field)."""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from api.queries import ListQuery
from api.services.typed_tables import to_public
from api.store import Store


def singulars(table: str) -> set[str]:
    """Every name ``table`` may be the plural of: ``users`` → user, ``categories`` → category,
    ``addresses`` → address, ``movies`` → movie; a name without a final ``s`` is its own.

    English spelling cannot tell ``addresses`` (drop "es") from ``horses`` (drop "s") without
    a dictionary, so every rule's answer is a candidate; the wrong ones (``addresse``) name
    no field anyone would join on.
    """
    if not table.endswith("s") or len(table) == 1:
        return {table}
    names = {table[:-1]}
    if table.endswith("es") and len(table) > 2:
        names.add(table[:-2])
    if table.endswith("ies") and len(table) > 3:
        names.add(table[:-3] + "y")
    return names


def join_fields(left: str, right: str, key: str) -> tuple[str, str]:
    """Which field each side joins on.

    A key named after a side (``user_id`` for ``users``, ``address_id`` for ``addresses``)
    means that side's ``id``; otherwise both sides use ``key``. So users/orders on user_id is
    ``users.id == orders.user_id``. A key named after a side's own name means its ``id`` too
    (``status_id`` for ``status``, ``address_id`` for ``address``: names whose final ``s`` is
    no plural's; QA, status/tasks on status_id joined nothing), unless the other side's plural
    names it (``address``/``addresses`` on address_id: ``addresses.id``, one side only).
    """
    plural = (_names_side(key, left), _names_side(key, right))
    own = (key == f"{left}_id", key == f"{right}_id")
    left_id = plural[0] or (own[0] and not plural[1])
    right_id = plural[1] or (own[1] and not plural[0])
    return ("id" if left_id else key), ("id" if right_id else key)


def _names_side(key: str, table: str) -> bool:
    return key.endswith("_id") and key[:-3] in singulars(table)


async def join_tables(
    store: Store, left: str, right: str, key: str, query: ListQuery
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """One page of rows ``{left: record, right: record}``, plus the records for the ETag."""
    if left == right:
        raise ApiError(400, "BAD_REQUEST", "a table cannot be joined with itself here")
    left_field, right_field = join_fields(left, right, key)
    args: dict[str, Any] = {
        "left": left,
        "right": right,
        "left_field": left_field,
        "right_field": right_field,
        "offset": query.page.offset,
        "limit": query.page.per_page,
    }
    if query.where:
        args["where"] = query.where
    found = await store.call("join", args)
    rows: list[dict[str, Any]] = []
    versioned: list[dict[str, Any]] = []
    for left_record, right_record in found["items"]:
        pair = (to_public(left, left_record), to_public(right, right_record))
        rows.append({left: pair[0], right: pair[1]})
        versioned.extend(pair)
    return rows, versioned, int(found["total"])
