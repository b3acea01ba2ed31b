"""A separate process that pings the store every 2 ms and reports the latencies: the longest
stall of the store's loop while a benchmark runs something big (an export, an index build).

``Probe(procs, socket_path)`` starts it (``python -m loadtests.store_probe SOCKET``); ``stop()``
closes its stdin and returns ``{"pings", "p50_ms", "p99_ms", "max_ms", "over_50ms"}``. It is a
process of its own so that the benchmark's own work cannot delay the pings it measures.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.servers import Processes
from storeserver.client import StoreClient

PROBE_INTERVAL = 0.002
STALL_GOAL_MS = 50.0
ROOT = Path(__file__).resolve().parent.parent


async def ping_until_stdin_closes(socket_path: str) -> dict[str, Any]:
    """Ping the store every PROBE_INTERVAL until stdin closes; latencies in ms."""
    store = StoreClient(f"unix:{socket_path}", timeout=60.0)
    await store.connect()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), stop.set)
    samples: list[float] = []
    while not stop.is_set():
        begin = time.perf_counter()
        await store.call("ping", {})
        samples.append((time.perf_counter() - begin) * 1000)
        await asyncio.sleep(PROBE_INTERVAL)
    await store.close()
    samples.sort()
    return {
        "pings": len(samples),
        "p50_ms": statistics.median(samples) if samples else None,
        "p99_ms": samples[max(0, int(len(samples) * 0.99) - 1)] if samples else None,
        "max_ms": samples[-1] if samples else None,
        "over_50ms": sum(1 for s in samples if s > STALL_GOAL_MS),
    }


class Probe:
    """The probe process, started and stopped by a benchmark."""

    def __init__(self, procs: Processes, socket_path: Path) -> None:
        args = [sys.executable, "-m", "loadtests.store_probe", str(socket_path)]
        self.proc = procs.start(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        time.sleep(0.5)

    def stop(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(b"", timeout=120)
        result: dict[str, Any] = json.loads(out)
        return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(ping_until_stdin_closes(sys.argv[1]))))
