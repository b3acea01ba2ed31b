"""A job whose work is done when the store restarts: its end is recorded, as succeeded.

On a real store server in this process, behind a proxy that refuses the next write to the
jobs table once, as a stopping store answers what it did not run (STORE_UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api.jobs.model import TABLE
from api.jobs.runner import JobContext, JobRunner
from api.settings import Settings
from storeserver.client import StoreClient
from storeserver.errors import StoreUnavailable
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings


class RefusesOnce:
    """The store; once ``armed``, its next write to the jobs table is refused as unavailable."""

    def __init__(self, client: StoreClient) -> None:
        self.client = client
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        if self.armed and command != "get" and (args or {}).get("table") == TABLE:
            self.armed = False
            raise StoreUnavailable("the store is stopping: not run; send it again shortly")
        return await self.client.call(command, args, timeout=timeout)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RefusesOnce]:
    server = StoreServer(StoreSettings(socket=tmp_path / "s.sock"))
    await server.start()
    client = StoreClient(f"unix:{server.settings.socket}", timeout=2.0)
    await client.connect()
    try:
        yield RefusesOnce(client)
    finally:
        await client.close()
        await server.shutdown()


async def test_a_write_by_filter_done_before_a_restart_ends_succeeded(
    store: RefusesOnce, tmp_path: Path
) -> None:
    """QA: an async update-by-filter applied its write, then its separate progress write met
    the stopping store; the job ended failed, "not run; send it again", though it was done.
    Its progress is written with its end, which is retried while the store restarts."""

    async def update_job(ctx: JobContext) -> dict[str, Any]:
        await ctx.store.call("insert", {"table": "t", "record": {"n": 1}})  # the work: done
        store.armed = True  # the store stops now
        ctx.record_progress(1, 1)
        return {"matched": 1, "updated": 1}

    settings = Settings(
        job_result_dir=str(tmp_path), job_heartbeat_seconds=30, job_stale_seconds=120
    )
    runner = JobRunner(store, settings)  # type: ignore[arg-type]
    await runner.start()
    try:
        job = await runner.submit("update_where", "owner", {}, update_job)
        for _ in range(200):
            if job["id"] not in runner._tasks:
                break
            await asyncio.sleep(0.02)
        done = await runner.jobs.get(job["id"])
    finally:
        await runner.stop()
    assert done["state"] == "succeeded", done
    assert done["result"] == {"matched": 1, "updated": 1}
    assert done["progress"] == {"done": 1, "total": 1, "unit": "rows"}
    assert not store.armed  # the refusal did come, and was ridden out
