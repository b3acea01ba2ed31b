"""Keep Python's cyclic garbage collector away from the store's records.

Records are acyclic dicts, freed by reference counting the moment they are dropped, yet every
full collection walks all of them: with 1M+ records one collection held the loop for 250 to 450 ms,
several times during a 500,000-row import (docs/bench-jobs.md). ``gc.freeze()`` moves every
object alive now into the permanent generation, which no collection walks, in O(1). The store
freezes after loading its data and then every ``INTERVAL`` seconds, after a cheap collection of
the young generations (so short-lived cycles are collected, not frozen). Full collections then
only walk what was allocated since the last freeze.

The price: a reference cycle that was alive at a freeze and becomes garbage later is never
collected. Records have none; the rest (connections, cursors) is small and long-lived.
"""

from __future__ import annotations

import asyncio
import gc

INTERVAL = 1.0


class Freezer:
    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick(loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        gc.collect(1)
        gc.freeze()
        self._handle = loop.call_later(self.interval, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
