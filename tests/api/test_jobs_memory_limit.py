"""Jobs at the store's memory limit, on a real store server in this process.

Over its limit the store refuses the writes that add data, and a job's record is written
with every heartbeat, progress report and change of state: refused too, a running export
(a read) died without a word, its readers' marking it lost answered 507, a queued job could
be neither started nor cancelled, and once room was made the job was blamed on a lost worker.
The store takes changes to internal records over its limit (``server._bookkeeping``).
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
from storeserver.errors import MemoryLimit
from storeserver.memory import MemoryGauge
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings


@pytest.fixture
async def full(tmp_path: Path) -> AsyncIterator[tuple[StoreServer, StoreClient]]:
    server = StoreServer(StoreSettings(socket=tmp_path / "s.sock"))
    await server.start()
    client = StoreClient(f"unix:{server.settings.socket}", timeout=2.0)
    await client.connect()
    try:
        yield server, client
    finally:
        await client.close()
        await server.shutdown()


def settings(tmp_path: Path, **more: Any) -> Settings:
    return Settings(job_result_dir=str(tmp_path), job_heartbeat_seconds=0.05, **more)


def fill(server: StoreServer) -> None:
    server.memory = MemoryGauge(limit_bytes=1)  # any process is over one byte


async def finished(runner: JobRunner, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        if job_id not in runner._tasks:
            break
        await asyncio.sleep(0.02)
    job: dict[str, Any] = await runner.jobs.get(job_id)
    return job


async def test_a_job_running_when_the_store_fills_up_records_progress_and_its_end(
    full: tuple[StoreServer, StoreClient], tmp_path: Path
) -> None:
    server, client = full

    async def reads_then_writes(ctx: JobContext) -> dict[str, Any]:
        fill(server)
        ctx.record_progress(1, 2)  # an export: reads, and says how far it got
        await asyncio.sleep(0.2)  # heartbeats go on
        await ctx.store.call("insert", {"table": "t", "record": {"n": 1}})  # an import's rows
        return {}

    runner = JobRunner(client, settings(tmp_path))
    await runner.start()
    try:
        job = await runner.submit("test", "owner", {}, reads_then_writes)
        done = await finished(runner, job["id"])
    finally:
        await runner.stop()
    assert done["state"] == "failed", done
    assert done["error"]["code"] == "INSUFFICIENT_STORAGE"
    assert done["progress"] == {"done": 1, "total": 2, "unit": "rows"}
    with pytest.raises(MemoryLimit):  # no new job starts at the limit
        await runner.submit("test", "owner", {}, reads_then_writes)


async def test_at_the_limit_a_lost_job_is_read_as_lost_and_a_queued_one_cancelled(
    full: tuple[StoreServer, StoreClient], tmp_path: Path
) -> None:
    server, client = full
    jobs = JobRunner(client, settings(tmp_path, job_stale_seconds=1)).jobs
    lost = await jobs.create("test", "owner", {}, "a-worker-that-died")
    queued = await jobs.create("test", "owner", {}, "a-live-worker")
    await client.call(
        "patch",
        {
            "table": TABLE,
            "id": lost["id"],
            "changes": {"heartbeat_at": "2000-01-01T00:00:00.000000Z"},
        },
    )
    fill(server)
    # The store's uptime must pass the stale time before a silent job counts as lost.
    await asyncio.sleep(max(0.0, 1.05 - (client.store_uptime() or 0.0)))
    seen = await jobs.get(lost["id"])
    assert seen["state"] == "failed" and seen["error"]["code"] == "WORKER_LOST"
    cancelled = await jobs.transition(queued["id"], ("queued",), {"state": "cancelled"})
    assert cancelled is not None and cancelled["state"] == "cancelled"
