"""The floor under the store's CPU per operation: a uvloop server that does no work.

``python -m loadtests.store_floor --socket PATH`` listens on a Unix socket and answers every
frame it receives with one canned reply: the encoded ``Result`` of a stored order-like record,
the size of a real ``get`` reply. It splits the byte stream by the 4-byte length prefixes and
answers the frames of one read with one write, as the store does, but decodes nothing, runs no
engine and encodes nothing. ``bench_store`` drives it with the same driver processes, connection
count and depth as the store; its CPU per request is what any Python server on uvloop pays for
the event loop, the transport and the system calls before doing anything, so the store's own
work per request is the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import struct
import sys
from typing import Any

from storeserver.protocol import Result, encode

from .store_driver import order_record, preload_id

_LENGTH = struct.Struct(">I")


def canned_reply() -> bytes:
    """What the store sends for a ``get`` of a preloaded record (its managed fields too)."""
    record: dict[str, Any] = {"id": preload_id(1), **order_record(random.Random(1), "u1")}
    record.update(
        created_at="2026-11-23T04:59:59.123456Z",
        updated_at="2026-11-23T04:59:59.123456Z",
        version=1,
    )
    return encode(Result(1, record))


class FloorConnection(asyncio.Protocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        size = len(buf)
        pos = frames = 0
        while size - pos >= 4:
            end = pos + 4 + _LENGTH.unpack_from(buf, pos)[0]
            if end > size:
                break
            frames += 1
            pos = end
        self.buffer = buf[pos:] if pos < size else b""
        if frames and self.transport is not None:
            self.transport.write(self.reply if frames == 1 else self.reply * frames)


async def serve(path: str) -> None:
    reply = canned_reply()
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: FloorConnection(reply), path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.store_floor")
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    import uvloop

    try:
        uvloop.run(serve(args.socket))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent cleans up
        sys.exit(130)


if __name__ == "__main__":
    main()
