"""Talk to the stack's store directly, for fast test setup and for checking what is stored."""

from __future__ import annotations

import asyncio
from typing import Any

from storeserver.client import StoreClient
from tests.support.stack import Stack


def store_call(stack: Stack, command: str, args: dict[str, Any]) -> Any:
    """One store command from synchronous test code."""

    async def run() -> Any:
        store = StoreClient(f"unix:{stack.socket_path}", timeout=10.0)
        await store.connect()
        try:
            return await store.call(command, args)
        finally:
            await store.close()

    return asyncio.run(run())


def bulk_insert(stack: Stack, table: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert many records in atomic batches of 500; returns the stored records."""
    stored: list[dict[str, Any]] = []
    for start in range(0, len(records), 500):
        ops = [{"op": "insert", "table": table, "record": r} for r in records[start : start + 500]]
        stored += store_call(stack, "batch", {"ops": ops})["results"]
    return stored
