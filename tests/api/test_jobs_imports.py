"""CSV import jobs (api.jobs.imports) that end badly, in-process: the runner and the real job
record in an engine. A store restart under the import, and a worker lost mid-import, must
both leave the job saying how many rows it imported: those rows stay, and a rerun of the whole
file would import them twice.
"""

from __future__ import annotations

import asyncio
import copy
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.jobs.imports import import_job
from api.jobs.model import TABLE as JOBS
from api.jobs.model import now_stamp, to_public
from api.jobs.runner import JobRunner
from api.services.csv_import import ATOMIC_MAX_ROWS
from api.settings import Settings
from storeserver.errors import NotFound, StoreUnavailable
from tests.support.engine import EngineStore, run


class RestartingStore(EngineStore):
    """Call number ``fail_at`` of ``fail_on`` (a ``batch`` unless said) loses its connection,
    and the store stays away for ``down_for`` seconds after it (a restart); ``batch`` number
    ``stick_at`` never answers until ``release`` is set (a worker frozen mid-import)."""

    def __init__(
        self,
        fail_at: int = 0,
        down_for: float = 0.0,
        stick_at: int = 0,
        lose_from: int = 0,
        fail_on: str = "batch",
    ) -> None:
        super().__init__()
        self.fail_at, self.down_for, self.stick_at = fail_at, down_for, stick_at
        self.lose_from = lose_from  # batches from this one on are answered, then lost
        self.fail_on = fail_on
        self.failing_calls = 0
        self.saved: Any = None
        self.batches = 0
        self.down_until = 0.0
        self.stuck = asyncio.Event()
        self.release = asyncio.Event()

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        await asyncio.sleep(0)
        if time.monotonic() < self.down_until:
            raise StoreUnavailable("the connection to the store was lost")
        if command == self.fail_on:
            self.failing_calls += 1
            if self.failing_calls == self.fail_at:
                self.down_until = time.monotonic() + self.down_for
                if self.saved is not None:  # restarted from what it had saved (everysec)
                    self.engine = self.saved
                raise StoreUnavailable("the connection to the store was lost")
        if command == "batch":
            self.batches += 1
            if self.batches == self.lose_from:
                self.saved = copy.deepcopy(self.engine)
            if self.batches == self.stick_at:
                self.stuck.set()
                await self.release.wait()
        return await super().call(command, args, timeout=timeout)

    def count(self, table: str) -> int:
        try:
            return int(run(self.engine, "count", table=table))
        except NotFound:
            return 0


def valid_rows(count: int) -> bytes:
    """Rows without ids: importing them twice would duplicate them."""
    return b"n\n" + b"".join(b"%d\n" % i for i in range(1, count + 1))


def settings(tmp_path: Path) -> Settings:
    # Every checkpoint records progress (one heartbeat apart at most).
    return Settings(job_result_dir=str(tmp_path), job_heartbeat_seconds=1e-6, job_stale_seconds=5)


async def import_to_the_end(
    store: RestartingStore, tmp_path: Path, rows: bytes | None = None
) -> dict[str, Any]:
    """A default import of ``rows`` (3000 without ids), as a job run to its end: the job as
    the API shows it."""
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    try:
        func = import_job("t", io.BytesIO(rows or valid_rows(3000)), False)
        job = await runner.submit("import", "owner", {"table": "t", "atomic": False}, func)
        await asyncio.wait_for(asyncio.shield(runner._tasks[job["id"]]), 10)
    finally:
        await runner.stop()
    return to_public(run(store.engine, "get", table=JOBS, id=job["id"]))


def rows_summary(imported: int, last: int) -> list[dict[str, Any]]:
    """The ``error.details`` of an import job stopped midway (lost or shut down)."""
    return [
        {
            "field": None,
            "message": f"at least {imported} rows imported, up to row {last}",
            "imported": imported,
            "failed": 0,
            "last_row_written": last,
        }
    ]


async def test_a_store_restart_leaves_the_progress_in_rows_imported(tmp_path: Path) -> None:
    """Batch 3 loses the store, which is away for a moment: the job's final state, recorded once
    the store is back, has its progress in rows imported (not the bytes read before)."""
    store = RestartingStore(fail_at=3, down_for=0.3)
    done = await import_to_the_end(store, tmp_path)
    assert done["state"] == "failed" and done["error"]["code"] == "STORE_UNAVAILABLE"
    assert done["progress"] == {"done": 1000, "total": None, "unit": "rows"}
    assert store.count("t") == 1000


async def test_a_restart_that_lost_acknowledged_rows_resumes_from_the_rows_the_store_kept(
    tmp_path: Path,
) -> None:
    """Batches 3 and 4 (rows 1001-2000) were answered, then lost by a crash before they were on
    disk (STORE_FSYNC everysec); batch 5 meets the restart. The job said 2000 rows imported and
    "resume from row 2001": rows 1001-2000 were skipped for good. It says what the store kept,
    read from its record, which lands with each batch."""
    store = RestartingStore(fail_at=5, down_for=0.3, lose_from=3)
    done = await import_to_the_end(store, tmp_path)
    assert store.count("t") == 1000
    assert done["state"] == "failed" and done["error"]["code"] == "STORE_UNAVAILABLE"
    assert done["progress"] == {"done": 1000, "total": None, "unit": "rows"}
    summary = done["error"]["details"][0]
    assert summary["imported"] == 1000 and summary["resume_from_row"] == 1001
    assert summary["unconfirmed_rows"] is None  # the batch in flight: known not to have landed
    message = done["error"]["message"]
    assert "without the last 1000 rows it had acknowledged" in message
    assert "resume from row 1001" in message


async def test_rows_with_ids_lost_by_a_restart_met_by_a_read_are_not_counted(
    tmp_path: Path,
) -> None:
    """jobs QA: rows with ids are read back before each batch (``get_many``); an outage met by
    that read, not a batch, left the job counting the acknowledged rows the crash lost (its
    resume_from_row skipped them for good). Batches 3 and 4 are lost; the 5th read fails."""
    store = RestartingStore(fail_at=5, down_for=0.3, lose_from=3, fail_on="get_many")
    with_ids = b"id,n\n" + b"".join(b"k%d,%d\n" % (i, i) for i in range(1, 3001))
    done = await import_to_the_end(store, tmp_path, with_ids)
    assert store.count("t") == 1000
    assert done["state"] == "failed" and done["error"]["code"] == "STORE_UNAVAILABLE"
    summary = done["error"]["details"][0]
    assert summary["imported"] == 1000 and summary["resume_from_row"] == 1001
    assert "without the last 1000 rows it had acknowledged" in done["error"]["message"]


async def test_an_import_lost_with_its_worker_says_what_was_imported(tmp_path: Path) -> None:
    """The worker freezes in batch 5 (rows 2001-2500) and stops beating: the job is marked
    WORKER_LOST with the rows its last checkpoint confirmed, and no "start it again"."""
    store = RestartingStore(stick_at=5)
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]  # no heartbeats
    try:
        func = import_job("t", io.BytesIO(valid_rows(3000)), False)
        job = await runner.submit("import", "owner", {"table": "t", "atomic": False}, func)
        await asyncio.wait_for(store.stuck.wait(), 10)
        record = run(store.engine, "get", table=JOBS, id=job["id"])
        confirmed = record["confirmed"]
        assert confirmed["imported"] > 0  # the checkpoints recorded what was written
        long_ago = now_stamp(datetime.now(UTC) - timedelta(minutes=1))
        run(store.engine, "patch", table=JOBS, id=job["id"], changes={"heartbeat_at": long_ago})
        lost = to_public(await runner.jobs.get(job["id"]))
    finally:
        store.release.set()
        await runner.stop()
    imported, last = confirmed["imported"], confirmed["last_row_written"]
    assert store.count("t") >= imported
    error = lost["error"]
    assert lost["state"] == "failed" and error["code"] == "WORKER_LOST"
    assert "start it again" not in error["message"]
    assert f"at least {imported} rows were imported" in error["message"]
    assert f"rows after row {last} may have been too" in error["message"]
    assert "Do not import the whole file again" in error["message"]
    assert error["details"] == rows_summary(imported, last)
    assert lost["progress"] == {"done": imported, "total": None, "unit": "rows"}


async def test_an_import_stopped_by_its_worker_shutting_down_says_where_to_resume(
    tmp_path: Path,
) -> None:
    """QA: a redeploy (SIGTERM) mid-import ended the job with only "the worker shut down
    during the job": no rows written, no row to resume from, no warning against importing
    the file again, where a lost worker or an outage give all three. Batch 5 (rows
    2001-2500) is in flight when the worker stops: its answer is waited for, and counted."""
    store = RestartingStore(stick_at=5)
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    try:
        func = import_job("t", io.BytesIO(valid_rows(3000)), False)
        job = await runner.submit("import", "owner", {"table": "t", "atomic": False}, func)
        await asyncio.wait_for(store.stuck.wait(), 10)
        stopping = asyncio.create_task(runner.stop())
        await asyncio.sleep(0.05)
    finally:
        store.release.set()
    await asyncio.wait_for(stopping, 10)
    stopped = to_public(run(store.engine, "get", table=JOBS, id=job["id"]))
    error = stopped["error"]
    assert stopped["state"] == "failed" and error["code"] == "WORKER_STOPPED"
    assert "shut down (a restart or a redeploy)" in error["message"]
    assert "at least 2500 rows were imported" in error["message"]
    assert "rows after row 2500 may have been too" in error["message"]
    assert "Do not import the whole file again" in error["message"]
    assert error["details"] == rows_summary(2500, 2500)
    assert stopped["progress"] == {"done": 2500, "total": None, "unit": "rows"}
    assert store.count("t") == 2500


@pytest.mark.parametrize(
    ("kind", "params", "says"),
    [
        ("import", {"table": "t", "atomic": False}, "rows may have been imported"),
        ("import", {"table": "t", "atomic": True}, "writes all its rows or none"),
        ("export", {"table": "t"}, "start it again"),  # read-only: a rerun is safe
        ("csv_export", {"table": "t", "where": []}, "start it again"),
    ],
)
async def test_what_a_job_lost_before_any_checkpoint_says(
    tmp_path: Path, kind: str, params: dict[str, Any], says: str
) -> None:
    store = EngineStore()
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    job = await runner.jobs.create(kind, "owner", params, "gone-worker:1")
    long_ago = now_stamp(datetime.now(UTC) - timedelta(minutes=1))
    run(store.engine, "patch", table=JOBS, id=job["id"], changes={"heartbeat_at": long_ago})
    lost = await runner.jobs.get(job["id"])
    assert lost["state"] == "failed" and lost["error"]["code"] == "WORKER_LOST"
    assert says in lost["error"]["message"]
    assert ("start it again" in lost["error"]["message"]) is (kind != "import")


async def test_an_atomic_import_job_of_the_most_rows_it_takes_imports_them_all(
    tmp_path: Path,
) -> None:
    """ATOMIC_MAX_ROWS rows are one batch of the store's maximum size: no room for the job
    record's versioned op in it (review: the job failed with LIMIT_EXCEEDED 'at most 1000
    operations'); the ownership is checked just before instead."""
    store = RestartingStore()
    runner = JobRunner(store, settings(tmp_path))  # type: ignore[arg-type]
    try:
        func = import_job("t", io.BytesIO(valid_rows(ATOMIC_MAX_ROWS)), True)
        job = await runner.submit("import", "owner", {"table": "t", "atomic": True}, func)
        await asyncio.wait_for(asyncio.shield(runner._tasks[job["id"]]), 20)
    finally:
        await runner.stop()
    done = to_public(run(store.engine, "get", table=JOBS, id=job["id"]))
    assert done["state"] == "succeeded", done
    assert done["result"]["imported"] == ATOMIC_MAX_ROWS
    assert store.count("t") == ATOMIC_MAX_ROWS
