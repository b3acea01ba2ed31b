"""What a worker logs while the store is away: a warning per failed request, at most 10 a
second, the rest counted in one line (soak QA: 1,066 ``store_unavailable`` lines in a 7 s
outage, 2,863 in another)."""

from __future__ import annotations

import asyncio

import pytest
import structlog.testing

from storeserver.errors import StoreTimeout, StoreUnavailable
from storeserver.throttledlog import WARNINGS_PER_S
from tests.api.test_metrics import ScriptedStore, app_with
from tests.support.inprocess import in_process


@pytest.mark.parametrize(
    ("error", "event"),
    [
        (StoreUnavailable("gone"), "store_unavailable"),
        (StoreTimeout("slow"), "store_timeout"),
    ],
)
async def test_an_outage_logs_a_bounded_number_of_lines(error: Exception, event: str) -> None:
    async with in_process(app_with(ScriptedStore(error=error))) as client:
        with structlog.testing.capture_logs() as lines:
            for _ in range(3 * WARNINGS_PER_S):
                # A probe: not rate-limited, no credentials, anyone may call it at will.
                assert (await client.get("/api/v1/ready")).status_code == 503
            await asyncio.sleep(1.1)  # the end of the window: the count of the others
    warned = [line for line in lines if line["event"] == event]
    assert 1 <= len(warned) <= WARNINGS_PER_S
    (suppressed,) = [line for line in lines if line["event"] == f"{event}_suppressed"]
    assert suppressed["suppressed"] >= 1
