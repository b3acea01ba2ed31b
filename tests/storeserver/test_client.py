"""``storeserver.client.StoreClient`` without a store: what its callers see while it connects."""

from __future__ import annotations

import asyncio

import pytest

from storeserver.client import StoreClient, _Connection
from storeserver.errors import StoreUnavailable


async def test_callers_waiting_on_a_connect_whose_caller_was_cancelled_do_not_hang(
    tmp_path, monkeypatch
) -> None:
    """The caller that opens the connection is cancelled (an ``asyncio.timeout`` around its
    call, as /metrics has): the others waiting on that attempt get StoreUnavailable (reads
    then retry) instead of waiting on a future nobody resolves."""
    opening = asyncio.Event()

    async def never_opens(self: StoreClient) -> _Connection:
        opening.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(StoreClient, "_open", never_opens)
    client = StoreClient(str(tmp_path / "store.sock"), timeout=1.0)
    first = asyncio.create_task(client.call("insert", {"table": "t", "record": {}}))
    await opening.wait()
    second = asyncio.create_task(client.call("insert", {"table": "t", "record": {}}))
    await asyncio.sleep(0)  # the second now waits on the first's attempt
    first.cancel()
    with pytest.raises(StoreUnavailable, match="abandoned"):
        await asyncio.wait_for(second, 2.0)
    with pytest.raises(asyncio.CancelledError):
        await first
