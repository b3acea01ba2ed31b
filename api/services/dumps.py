"""Whole-table export in bounded chunks through the store's ``scan`` cursor, so a dump never
holds the store's single thread for longer than one chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from api.services.records import to_public
from api.store import Store


async def open_dump(store: Store, table: str, chunk: int) -> AsyncIterator[list[dict[str, Any]]]:
    """Fetch the first chunk now (so a missing table is a 404 before streaming starts) and
    return an iterator over every chunk, that first one included."""
    first = await store.call("scan", {"table": table, "limit": chunk})

    async def chunks() -> AsyncIterator[list[dict[str, Any]]]:
        page = first
        while True:
            yield [to_public(table, record) for record in page["items"]]
            cursor = page.get("cursor")
            if not cursor:
                return
            page = await store.call("scan", {"cursor": cursor, "limit": chunk})

    return chunks()
