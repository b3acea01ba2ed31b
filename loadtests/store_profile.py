"""Where the store's CPU goes per request, measured in-process (no sockets, no event loop).

Builds a ``StoreServer`` with the same 100k preloaded records as the socket benchmark and
feeds its connection handler request frames through a fake transport, then times each stage
on its own: frame decode (msgpack + message checks), ``Engine.execute``, reply encode, and the
server's bookkeeping around them. The difference between the socket benchmark's CPU per op
and ``data_received`` here is the event loop, the transport and the kernel (syscalls).

CPU time (``time.process_time``), best of 3 repeats. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack

from storeserver import connection as connection_module
from storeserver.connection import StoreConnection
from storeserver.logs import configure_logging
from storeserver.protocol import Hello, Request, Result, decode_body, encode
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings

from .store_driver import GET_IDS, order_record, preload_id

N = 32_000


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def per_op_us(fn: Callable[[Any], Any], items: list[Any], ops: int, repeats: int = 3) -> float:
    """CPU µs per operation of ``fn`` over ``items`` (``ops`` operations), best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - t0)
    return best / ops * 1e6


def profile() -> dict[str, Any]:
    # No event loop runs here: a turn's budget spent (a GC pause passes 2 ms) would leave the
    # rest of a chunk waiting for a loop turn that never comes, and the figure would count
    # requests that never ran. The budget checks themselves still run, and are measured. The
    # limits are put back after: this runs inside the test session too.
    saved = connection_module.TURN_BUDGET, connection_module.TURN_REPLY_BYTES
    connection_module.TURN_BUDGET, connection_module.TURN_REPLY_BYTES = float("inf"), 1 << 62
    try:
        return _profile()
    finally:
        connection_module.TURN_BUDGET, connection_module.TURN_REPLY_BYTES = saved


def _profile() -> dict[str, Any]:
    rng = random.Random(5)
    # The server object is only fed bytes: it never listens, so the socket path is never made.
    server = StoreServer(
        StoreSettings(socket=Path(tempfile.gettempdir()) / "bench-prof-unused.sock")
    )
    engine = server.engine
    for i in range(GET_IDS):
        record = {"id": preload_id(i), **order_record(rng, "u1")}
        engine.execute("insert", {"table": "bench_get", "record": record})
    conn = StoreConnection(server)
    conn.connection_made(_NullTransport())  # type: ignore[arg-type]
    conn.data_received(encode(Hello(1, None)))

    def get_frame() -> bytes:
        args = {"table": "bench_get", "id": preload_id(rng.randrange(GET_IDS))}
        return encode(Request(1, "get", args))

    def insert_frame() -> bytes:
        return encode(
            Request(1, "insert", {"table": "bench_ins", "record": order_record(rng, "u1")})
        )

    def unpack(body: bytes) -> Any:
        return msgpack.unpackb(body, raw=False)

    def execute(request: Any) -> Any:
        return engine.execute(request.command, request.args)

    def reply(value: Any) -> bytes:
        return encode(Result(1, value))

    out: dict[str, Any] = {}
    for kind, make in (("get", get_frame), ("insert", insert_frame)):
        frames = [make() for _ in range(N)]
        bodies = [f[4:] for f in frames]
        chunks16 = [b"".join(frames[i : i + 16]) for i in range(0, N, 16)]
        stages: dict[str, float] = {}
        stages["data_received, 1 frame per read"] = per_op_us(conn.data_received, frames, N)
        stages["data_received, 16 frames per read"] = per_op_us(conn.data_received, chunks16, N)
        stages["msgpack.unpackb alone"] = per_op_us(unpack, bodies, N)
        stages["decode_body (unpackb + Decimal hook + checks)"] = per_op_us(decode_body, bodies, N)
        requests = [decode_body(b) for b in bodies]
        if kind == "get":
            stages["Engine.execute"] = per_op_us(execute, requests, N)
            results = [execute(r) for r in requests]
        else:
            # Inserts cannot be repeated with the same ids: time one pass of fresh records.
            fresh = [decode_body(make()[4:]) for _ in range(N)]
            gc.collect()
            t0 = time.process_time()
            results = [execute(r) for r in fresh]
            stages["Engine.execute"] = (time.process_time() - t0) / N * 1e6
        stages["encode(Result(record))"] = per_op_us(reply, results, N)
        plain = [{k: (str(v) if type(v) is Decimal else v) for k, v in r.items()} for r in results]
        stages["encode, Decimal replaced by str (no default= callback)"] = per_op_us(
            reply, plain, N
        )
        if kind == "get":
            stages["StoreServer.handle (run + encode + stats)"] = per_op_us(
                server.handle, requests, N
            )
        out[kind] = {k: round(v, 2) for k, v in stages.items()}
    return out


async def _in_a_loop() -> dict[str, Any]:
    # A connection arms its handshake timer on the running loop (never fired here: the
    # handshake comes at once, and the timing itself stays synchronous).
    return profile()


def main() -> None:
    configure_logging("ERROR")  # slow_command warnings would land on stdout
    print(json.dumps(asyncio.run(_in_a_loop())), flush=True)


if __name__ == "__main__":
    main()
