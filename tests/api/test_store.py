"""``api.store.connect_store``: each worker's (and gunicorn's) wait for the store at start."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from api.store import connect_store
from storeserver.protocol import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    Request,
    encode,
    encode_result,
)


async def test_a_store_slow_to_answer_its_first_ping_is_waited_for() -> None:
    """client QA: a store that answered its handshake but not a ping within STORE_TIMEOUT
    ended the wait (StoreTimeout) at once, long before STORE_WAIT_SECONDS: the worker
    failed to boot, and gunicorn with it."""
    busy_until = time.monotonic() + 1.5

    async def busy_then_ready(reader: Any, writer: Any) -> None:
        decoder, greeted = FrameDecoder(), False
        while data := await reader.read(65536):
            for message in decoder.feed(data):
                if not greeted:
                    greeted = True
                    writer.write(encode(Hello(PROTOCOL_VERSION, {})))
                elif isinstance(message, Request) and time.monotonic() > busy_until:
                    writer.write(encode_result(message.request_id, {"ready": True}))

    folder = tempfile.mkdtemp(prefix="store-", dir="/tmp")  # a short Unix socket path
    path = str(Path(folder) / "s.sock")
    fake = await asyncio.start_unix_server(busy_then_ready, path)
    try:
        client = await connect_store(path, call_timeout=0.5, wait_seconds=30.0)
        assert await client.call("ping", {}) == {"ready": True}
        await client.close()
    finally:
        fake.close()
        shutil.rmtree(folder, ignore_errors=True)
