"""Worker-side CPU per round trip: our ``StoreClient`` next to redis-py's asyncio client.

Run by ``bench_store`` in a process of its own, so ``getrusage(RUSAGE_SELF)`` counts only the
client's work (encoding, the event loop, the transport, decoding, futures), never the server's.
Each client does ``n`` GETs of existing keys one at a time (one in flight) and ``n`` with 16
concurrent tasks, after a warm-up, each 3 times; the median of the 3 is reported (all three
are kept: the figure moves with other load on the machine). Prints one JSON object.

Both run on uvloop, as an API worker does under uvicorn. redis-py multiplexes nothing: its 16
tasks take 16 pooled connections, while ``StoreClient`` carries them on its one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from storeserver.client import StoreClient

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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"store": await store_side(args.store, args.table, args.n)}
    if args.redis_socket:
        out["redis"] = await redis_side(args.redis_socket, args.n)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.client_cpu")
    parser.add_argument("--store", required=True, help="store address, e.g. unix:/tmp/x.sock")
    parser.add_argument("--table", default="bench_get")
    parser.add_argument("--redis-socket")
    parser.add_argument("--n", type=int, default=20_000, help="calls per repeat")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
