"""Inner joins through the store's ``join`` (it probes a hash index on the right field)."""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from api.queries import ListQuery
from api.services.records import to_public
from api.store import Store


def singular(table: str) -> str:
    """``users`` → ``user``, ``categories`` → ``category``; other names unchanged."""
    if table.endswith("ies") and len(table) > 3:
        return table[:-3] + "y"
    if table.endswith("s") and len(table) > 1:
        return table[:-1]
    return table


def join_fields(left: str, right: str, key: str) -> tuple[str, str]:
    """Which field each side joins on.

    A key named after a side (``user_id`` for ``users``) means that side's ``id``; otherwise
    both sides use ``key``. So users/orders on user_id is ``users.id == orders.user_id``.
    """
    left_field = "id" if key == f"{singular(left)}_id" else key
    right_field = "id" if key == f"{singular(right)}_id" else key
    return left_field, right_field


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
