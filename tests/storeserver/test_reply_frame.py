"""Replies fit the API's client whatever STORE_MAX_FRAME_BYTES the store takes requests of."""

from __future__ import annotations

import asyncio

import pytest

from storeserver.client import StoreClient
from storeserver.errors import LimitExceeded
from storeserver.protocol import MAX_FRAME_SIZE
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings


async def test_a_read_reply_over_the_clients_frame_limit_is_limit_exceeded(sock_dir):
    """QA: with STORE_MAX_FRAME_BYTES=64 MiB a 30 MB ``find`` reply was sent; the client
    (16 MiB frames) dropped the connection, failing a write in flight on it too."""
    settings = StoreSettings(socket=sock_dir / "b.sock", max_frame_bytes=64 * 1024 * 1024)
    server = StoreServer(settings)
    await server.start()
    client = StoreClient(f"unix:{settings.socket}", timeout=20)
    try:
        rows = MAX_FRAME_SIZE // 1_000_000 + 1  # ~17 MB of records together
        for i in range(rows):
            await client.call("insert", {"table": "t", "record": {"id": f"r{i}", "b": "x" * 10**6}})
        read = client.call("find", {"table": "t", "limit": rows})
        write = client.call("kv_set", {"key": "in-flight", "value": 1})
        found, written = await asyncio.gather(read, write, return_exceptions=True)
        assert isinstance(found, LimitExceeded)
        assert found.details == {"max_frame_bytes": MAX_FRAME_SIZE}
        assert written is True and client.connected
        with pytest.raises(LimitExceeded):
            await client.call("get_many", {"table": "t", "ids": [f"r{i}" for i in range(rows)]})
        assert len((await client.call("find", {"table": "t", "limit": 2}))["items"]) == 2
    finally:
        await client.close()
        await server.shutdown()
