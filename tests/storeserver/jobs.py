"""Driving the store server by hand in tests: long commands' jobs, a transport that records
what the server sends, and waiting for a condition on the running loop."""

from __future__ import annotations

import asyncio
from typing import Any

from storeserver.engine import Engine


def finish(engine: Engine, job: Any) -> tuple[int, Any]:
    """``(steps taken, result)`` of advancing ``job`` until it is done."""
    steps, done, result = 0, False, None
    while not done:
        done, result = engine.advance(job)
        steps += 1
    return steps, result


class RecordingTransport:
    """What ``StoreConnection`` writes, kept; nothing goes out once aborted (as a real one)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        if not self.aborted:
            self.data += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


async def wait_until(condition: Any, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")
