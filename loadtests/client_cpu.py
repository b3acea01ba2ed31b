"""Worker-side CPU per round trip: our ``StoreClient`` next to redis-py's asyncio client.

Run by ``bench_store`` in a process of its own, so ``getrusage(RUSAGE_SELF)`` counts only the
client's work (encoding, the event loop, the transport, decoding, futures), never the server's.
Each client does ``n`` GETs of existing keys one at a time (one in flight) and ``n`` with 16
concurrent tasks, after a warm-up, each 3 times; the median of the 3 is reported (all three
are kept: the figure moves with other load on the machine). Prints one JSON object.

The floor under both: a bare uvloop client sending 60 bytes to an echo server (another process
started here) and awaiting them back, one future per round trip: what the event loop, the
transport and the system calls cost on this machine before any client does any work.

Both run on uvloop, as an API worker does under uvicorn. redis-py multiplexes nothing: its 16
tasks take 16 pooled connections, while ``StoreClient`` carries them on its one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from storeserver.client import StoreClient
from storeserver.probe import wait_for_socket

from .store_driver import GET_IDS, preload_id

CONCURRENCY = 16


REPEATS = 3


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _measure(call: Callable[[int], Awaitable[Any]], n: int, tasks: int) -> dict[str, Any]:
    """``n`` calls from ``tasks`` concurrent tasks, REPEATS times; the median run is reported."""

    async def worker(first: int, count: int) -> None:
        for i in range(first, first + count):
            await call(i)

    share = n // tasks
    await asyncio.gather(*(worker(k * share, share // 10) for k in range(tasks)))  # warm-up
    runs = []
    for _ in range(REPEATS):
        (user0, sys0), wall0 = _cpu(), time.monotonic()
        await asyncio.gather(*(worker(k * share, share) for k in range(tasks)))
        (user1, sys1), wall = _cpu(), time.monotonic() - wall0
        done = share * tasks
        runs.append(
            {
                "calls": done,
                "cpu_us": (user1 - user0 + sys1 - sys0) / done * 1e6,
                "sys_us": (sys1 - sys0) / done * 1e6,
                "calls_per_s": done / wall,
            }
        )
    runs.sort(key=lambda r: r["cpu_us"])
    return {**runs[len(runs) // 2], "all_cpu_us": [r["cpu_us"] for r in runs]}


async def store_side(address: str, table: str, n: int) -> dict[str, Any]:
    rng = random.Random(7)
    ids = [preload_id(rng.randrange(GET_IDS)) for _ in range(n)]
    client = StoreClient(address)
    try:
        await client.call("get", {"table": table, "id": ids[0]})

        def call(i: int) -> Awaitable[Any]:
            return client.call("get", {"table": table, "id": ids[i]})

        return {
            "sequential": await _measure(call, n, 1),
            "concurrent": await _measure(call, n, CONCURRENCY),
        }
    finally:
        await client.close()


async def redis_side(socket_path: str, n: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    rng = random.Random(7)
    # The keys redis-benchmark -r 100000 wrote: key:000000012345.
    keys = [f"key:{rng.randrange(100_000):012d}" for _ in range(n)]
    client = aioredis.Redis(unix_socket_path=socket_path, max_connections=CONCURRENCY)
    try:
        await client.get(keys[0])

        def call(i: int) -> Awaitable[Any]:
            return client.get(keys[i])

        return {
            "sequential": await _measure(call, n, 1),
            "concurrent": await _measure(call, n, CONCURRENCY),
        }
    finally:
        await client.aclose()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class _EchoClient(asyncio.Protocol):
    """Resolves the future of the (one) round trip in flight with whatever comes back."""

    def __init__(self) -> None:
        self.waiting: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(data)


async def serve_echo(path: str) -> None:
    server = await asyncio.get_running_loop().create_unix_server(_Echo, path)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def echo_server() -> Iterator[Path]:
    """An echo server in a process of its own (its CPU must not count); yields its socket."""
    with tempfile.TemporaryDirectory(prefix="echo-") as tmp:
        path = Path(tmp) / "echo.sock"
        cmd = [sys.executable, "-m", "loadtests.client_cpu", "--echo", str(path)]
        server = subprocess.Popen(cmd)
        try:
            wait_for_socket(path, 10.0, server)
            yield path
        finally:
            server.terminate()
            server.wait(10)


async def echo_side(path: Path, n: int) -> dict[str, Any]:
    """Sequential round trips only: a bare client has no request ids to multiplex on."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_unix_connection(_EchoClient, str(path))
    payload = b"x" * 60

    async def call(_: int) -> bytes:
        protocol.waiting = fut = loop.create_future()
        transport.write(payload)
        return await fut

    try:
        return {"sequential": await _measure(call, n, 1)}
    finally:
        transport.close()


async def run(args: argparse.Namespace, echo: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"store": await store_side(args.store, args.table, args.n)}
    if args.redis_socket:
        out["redis"] = await redis_side(args.redis_socket, args.n)
    out["echo"] = await echo_side(echo, args.n)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.client_cpu")
    parser.add_argument("--store", help="store address, e.g. unix:/tmp/x.sock")
    parser.add_argument("--echo", metavar="PATH", help=argparse.SUPPRESS)  # the echo server
    parser.add_argument("--table", default="bench_get")
    parser.add_argument("--redis-socket")
    parser.add_argument("--n", type=int, default=20_000, help="calls per repeat")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner: Callable[[Any], Any] = asyncio.run
    else:
        runner = uvloop.run
    if args.echo:
        runner(serve_echo(args.echo))
        return
    if not args.store:
        parser.error("--store is required")
    with echo_server() as echo:
        print(json.dumps(runner(run(args, echo))), flush=True)


if __name__ == "__main__":
    main()
