"""A stalled job worker declared lost, then let go on, in-process: its import writes no chunk
after that, the lost job says every row written (each batch records them as it lands), and
the worker's own writes never change a finished record.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from api.jobs.imports import import_job
from api.jobs.model import TABLE as JOBS
from api.jobs.model import now_stamp, to_public
from api.jobs.runner import JobRunner
from api.settings import Settings
from tests.api.test_jobs_imports import RestartingStore, rows_summary, valid_rows
from tests.support.engine import EngineStore, run

PARAMS = {"table": "t", "atomic": False}


def settings(tmp_path: Path) -> Settings:
    # Progress is checkpointed once an hour at most: only the first checkpoint is recorded,
    # as in a real worker stopped before its first heartbeat.
    return Settings(
        job_result_dir=str(tmp_path), job_heartbeat_seconds=3600, job_stale_seconds=4 * 3600
    )


def declare_lost(store: EngineStore, runner: JobRunner, job_id: str) -> Any:
    """What another worker does once the job's heartbeat is old: mark it WORKER_LOST."""
    long_ago = now_stamp(datetime.now(UTC) - timedelta(days=1))
    run(store.engine, "patch", table=JOBS, id=job_id, changes={"heartbeat_at": long_ago})
    return runner.jobs.get(job_id)


async def test_a_stalled_import_declared_lost_writes_nothing_more_and_says_what_it_wrote(
    tmp_path: Path,
) -> None:
    """The worker stalls sending batch 5 (rows 2001-2500) and is declared lost: the job says
    the 2000 rows of batches 1-4, and once the worker goes on, batch 5 fails its check on the
    job's record: no row after 2000 is written, and the record stays as declared."""
    store = RestartingStore(stick_at=5)
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    try:
        func = import_job("t", io.BytesIO(valid_rows(3000)), False)
        job = await runner.submit("import", "owner", PARAMS, func)
        task = runner._tasks[job["id"]]
        await asyncio.wait_for(store.stuck.wait(), 10)
        lost = to_public(await declare_lost(store, runner, job["id"]))
        store.release.set()  # the stalled worker goes on (SIGCONT)
        await asyncio.wait_for(asyncio.shield(task), 10)
        final = to_public(run(store.engine, "get", table=JOBS, id=job["id"]))
    finally:
        store.release.set()
        await runner.stop()
    assert lost["state"] == "failed" and lost["error"]["code"] == "WORKER_LOST"
    assert lost["error"]["details"] == rows_summary(2000, 2000)
    assert lost["progress"] == {"done": 2000, "total": None, "unit": "rows"}
    assert store.count("t") == 2000
    assert final == lost


async def test_a_worker_stalled_before_its_first_chunk_landed_writes_none(
    tmp_path: Path,
) -> None:
    """Declared lost while its first batch is on its way: nothing is written at all, and the
    job says none was confirmed."""
    store = RestartingStore(stick_at=1)
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    try:
        func = import_job("t", io.BytesIO(valid_rows(1200)), False)
        job = await runner.submit("import", "owner", PARAMS, func)
        task = runner._tasks[job["id"]]
        await asyncio.wait_for(store.stuck.wait(), 10)
        lost = to_public(await declare_lost(store, runner, job["id"]))
        store.release.set()
        await asyncio.wait_for(asyncio.shield(task), 10)
    finally:
        store.release.set()
        await runner.stop()
    assert lost["error"]["code"] == "WORKER_LOST"
    assert "none was confirmed yet" in lost["error"]["message"]
    assert store.count("t") == 0
    assert to_public(run(store.engine, "get", table=JOBS, id=job["id"])) == lost


async def test_an_import_whose_record_another_writer_changed_imports_every_row_once(
    tmp_path: Path,
) -> None:
    """Another worker's write to the record (here a heartbeat's) fails a batch's check while
    the job is still running: the batch is sent again with the record's new version, and the
    import ends with every row written once."""
    store = RestartingStore()
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    touched: list[str] = []

    def touch_record_once() -> None:
        if not touched:
            job_id = run(store.engine, "find", table=JOBS)["items"][0]["id"]
            changes = {"heartbeat_at": now_stamp()}
            run(store.engine, "patch", table=JOBS, id=job_id, changes=changes)
            touched.append(job_id)

    store.before["batch"] = touch_record_once
    try:
        func = import_job("t", io.BytesIO(valid_rows(1200)), False)
        job = await runner.submit("import", "owner", PARAMS, func)
        await asyncio.wait_for(asyncio.shield(runner._tasks[job["id"]]), 10)
    finally:
        await runner.stop()
    done = to_public(run(store.engine, "get", table=JOBS, id=job["id"]))
    assert touched == [job["id"]]
    assert done["state"] == "succeeded" and done["result"]["imported"] == 1200
    assert store.count("t") == 1200


async def test_a_heartbeat_never_writes_a_finished_record(tmp_path: Path) -> None:
    """The stalled worker's own heartbeat, once it goes on, finds its job declared lost: it
    writes nothing on the record (its progress stays what the lost job says)."""
    store = EngineStore()
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    job = await runner.jobs.create("import", "owner", PARAMS, runner.worker)
    await runner.jobs.transition(job["id"], ("queued",), {"state": "running"})
    lost = await declare_lost(store, runner, job["id"])
    assert lost["state"] == "failed"
    seen = await runner.jobs.touch(job["id"], {"progress": {"done": 9, "total": 9}})
    assert seen == lost
    assert run(store.engine, "get", table=JOBS, id=job["id"]) == lost


async def test_a_heartbeat_skips_a_job_whose_batch_is_in_flight(tmp_path: Path) -> None:
    """That batch carries the heartbeat: waiting for it would hold every other job's heartbeat
    behind it (review). The other job is touched; the busy one is left alone."""
    store = EngineStore()
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    busy = await runner.jobs.create("import", "owner", PARAMS, runner.worker)
    idle = await runner.jobs.create("import", "owner", PARAMS, runner.worker)
    never = asyncio.get_running_loop().create_future()
    runner._tasks = {busy["id"]: never, idle["id"]: never}  # type: ignore[dict-item]
    lock = asyncio.Lock()
    runner.jobs._locks[busy["id"]] = lock
    async with lock:  # an owned write of ``busy`` in flight
        await asyncio.wait_for(runner._beat_once(), 10)  # a guard against a hang only
    records = {j: run(store.engine, "get", table=JOBS, id=j) for j in (busy["id"], idle["id"])}
    assert records[busy["id"]]["version"] == busy["version"]
    assert records[idle["id"]]["version"] > idle["version"]
    runner._tasks = {}
    never.cancel()


async def test_a_forgotten_job_leaves_no_lock_behind(tmp_path: Path) -> None:
    """A heartbeat racing the end of its job (``forget``) must not leave a lock, nor a
    version that would have this worker write the record again."""
    store = EngineStore()
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    job = await runner.jobs.create("import", "owner", PARAMS, runner.worker)
    runner.jobs.forget(job["id"])
    await runner.jobs.touch(job["id"], {})
    assert job["id"] not in runner.jobs._locks and job["id"] not in runner.jobs._versions


async def test_a_cancel_request_lands_while_the_import_writes_its_record(tmp_path: Path) -> None:
    """A running import writes its job's record with every batch (tens a second): a cancel
    that read the record and then patched it at that version lost every time (jobs QA: 409
    JOB_NOT_CANCELLABLE, and the import ran to the end). The state is checked as it writes."""
    store = EngineStore()
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    job = await runner.jobs.create("import", "owner", PARAMS, runner.worker)
    await runner.jobs.transition(job["id"], ("queued",), {"state": "running"})

    def batch_lands() -> None:  # the owner's batch, between any read and write of the cancel
        run(store.engine, "patch", table=JOBS, id=job["id"], changes={"n": now_stamp()})

    for command in ("get", "patch", "update_where"):
        store.before[command] = batch_lands
    requested = await runner.jobs.transition(job["id"], ("running",), {"cancel_requested": True})
    assert requested is not None and requested["cancel_requested"] is True
    # A state it is not in is still refused, and nothing is written.
    store.before.clear()
    version = run(store.engine, "get", table=JOBS, id=job["id"])["version"]
    assert await runner.jobs.transition(job["id"], ("queued",), {"state": "cancelled"}) is None
    assert run(store.engine, "get", table=JOBS, id=job["id"])["version"] == version


async def test_a_stalled_worker_whose_heartbeat_finds_its_job_lost_says_so(
    tmp_path: Path,
) -> None:
    """Back from a stall, the heartbeat is often first to read the lost record: it stops the
    task and logs job_lost_stopped, as the next batch would have (jobs QA: never logged)."""
    store = EngineStore()
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    job = await runner.jobs.create("import", "owner", PARAMS, runner.worker)
    await runner.jobs.transition(job["id"], ("queued",), {"state": "running"})
    await declare_lost(store, runner, job["id"])
    task = asyncio.ensure_future(asyncio.sleep(3600))
    runner._tasks = {job["id"]: task}
    with capture_logs() as logs:
        await runner._beat_once()
    runner._tasks = {}
    await asyncio.sleep(0)
    assert task.cancelled()
    assert [e["job_id"] for e in logs if e["event"] == "job_lost_stopped"] == [job["id"]]
