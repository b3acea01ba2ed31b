"""The store keeps what is alive out of the cyclic collector's walks (``collector.Freezer``)."""

from __future__ import annotations

import asyncio
import gc

from storeserver.collector import Freezer


def test_freezer_freezes_now_and_again_and_stops() -> None:
    async def run() -> tuple[int, int, int]:
        gc.unfreeze()
        freezer = Freezer(interval=0.01)
        freezer.start(asyncio.get_running_loop())
        first = gc.get_freeze_count()
        kept = [[i] for i in range(1000)]  # lists are tracked; allocated after the first freeze
        await asyncio.sleep(0.05)
        second = gc.get_freeze_count()
        freezer.stop()
        del kept
        return first, second, gc.get_freeze_count()

    try:
        first, second, _ = asyncio.run(run())
    finally:
        gc.unfreeze()
    assert first > 0
    assert second > first + 900  # the later allocations were frozen by a later tick
