"""The job runner against an in-process engine that can "restart": job states recorded across
a store outage, the sweep of orphaned result files, and ``_jobs`` declared on every connection.

No processes: ``EngineStore`` answers ``call`` from a real ``Engine`` (so ``_jobs`` behaves as in
the store, versions and all), and raises ``StoreUnavailable`` while an outage lasts.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from api.auth import sessions
from api.errors import ApiError
from api.jobs import runner as runner_module
from api.jobs.model import SCHEMA, TABLE, now_stamp
from api.jobs.runner import JobContext, JobRunner
from api.jobs.state import SWEEP_LIMIT
from api.services.schema import ensure_schema
from api.settings import Settings
from storeserver.client import current_actor
from storeserver.clientconnection import READ_COMMANDS
from storeserver.engine import Engine
from storeserver.errors import OutcomeUnknown, StoreUnavailable


class EngineStore:
    """A ``Store`` over an engine, unavailable until ``down_until`` (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.down_until = 0.0
        self.started = time.monotonic() - 3600  # up for an hour, as a store that was not restarted

    def outage(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds

    def store_uptime(self) -> float | None:
        """As ``StoreClient.store_uptime``: an outage is a restart."""
        now = time.monotonic()
        return None if now < self.down_until else now - max(self.started, self.down_until)

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        await asyncio.sleep(0)
        if time.monotonic() < self.down_until:
            raise StoreUnavailable("store connection lost")
        return self.engine.execute(command, args or {})


@pytest.fixture
def store() -> EngineStore:
    return EngineStore()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        job_result_dir=str(tmp_path),
        job_heartbeat_seconds=0.05,
        job_stale_seconds=5,
        job_retention_seconds=60,
    )


async def wait_until_finished(runner: JobRunner, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        if job_id not in runner._tasks:
            break
        await asyncio.sleep(0.02)
    job: dict[str, Any] = await runner.jobs.store.call("get", {"table": TABLE, "id": job_id})
    return job


async def test_a_job_broken_by_a_store_restart_is_recorded_failed_once_it_is_back(
    store: EngineStore, settings: Settings
):
    """The job's own store call fails, and so does recording that; both are retried until
    the store answers: the job ends STORE_UNAVAILABLE, not running and later WORKER_LOST."""

    async def restarted_midway(ctx: JobContext) -> dict[str, Any]:
        store.outage(0.3)
        await ctx.store.call("count", {"table": "t"})
        return {}

    runner = JobRunner(store, settings)
    await runner.start()
    try:
        job = await runner.submit("test", "owner", {}, restarted_midway)
        task = runner._tasks[job["id"]]
        done = await wait_until_finished(runner, job["id"])
        assert task.done() and task.exception() is None
        assert done["state"] == "failed"
        assert done["error"] == {"code": "STORE_UNAVAILABLE", "message": "store connection lost"}
    finally:
        await runner.stop()


async def test_a_job_is_not_declared_lost_just_after_a_store_restart_longer_than_the_stale_time(
    store: EngineStore, tmp_path: Path
):
    """Its heartbeat is as old as the outage, but its worker lives and records what the job
    met once the store is back: another worker reading the job meanwhile leaves it running
    (it used to mark it WORKER_LOST, "start it again", over the STORE_UNAVAILABLE to come)."""
    quick = Settings(job_result_dir=str(tmp_path), job_heartbeat_seconds=0.05, job_stale_seconds=1)

    went_down = asyncio.Event()

    async def restarted_midway(ctx: JobContext) -> dict[str, Any]:
        store.outage(1.2)
        went_down.set()
        await ctx.store.call("count", {"table": "t"})
        return {}

    runner = JobRunner(store, quick)  # not started: no heartbeat lands after the outage
    other_worker = JobRunner(store, quick).jobs
    try:
        job = await runner.submit("test", "owner", {}, restarted_midway)
        await went_down.wait()
        await asyncio.sleep(store.down_until - time.monotonic())
        seen = await other_worker.get(job["id"])
        assert seen["state"] == "running" and seen.get("error") is None
        done = await wait_until_finished(runner, job["id"])
        assert done["state"] == "failed"
        assert done["error"] == {"code": "STORE_UNAVAILABLE", "message": "store connection lost"}
    finally:
        await runner.stop()


async def test_a_job_whose_worker_died_is_declared_lost_once_the_store_has_been_up_long_enough(
    store: EngineStore, tmp_path: Path
):
    quick = Settings(job_result_dir=str(tmp_path), job_heartbeat_seconds=0.05, job_stale_seconds=1)
    jobs = JobRunner(store, quick).jobs
    job = await jobs.create("test", "owner", {}, "a-worker-that-died")
    store.outage(1.2)  # the store restarts while the job's worker is already gone
    await asyncio.sleep(store.down_until - time.monotonic())
    assert (await jobs.get(job["id"]))["state"] == "queued"  # just back: its worker may beat
    await asyncio.sleep(1.1)
    lost = await jobs.get(job["id"])
    assert lost["state"] == "failed" and lost["error"]["code"] == "WORKER_LOST"


async def test_a_queued_job_waits_for_the_store_and_then_runs(
    store: EngineStore, settings: Settings
):
    async def succeed(ctx: JobContext) -> dict[str, Any]:
        return {"ran": True}

    runner = JobRunner(store, settings)
    try:
        job = await runner.submit("test", "owner", {}, succeed)
        store.outage(0.3)  # before the task claims it (it has not run yet)
        done = await wait_until_finished(runner, job["id"])
        assert done["state"] == "succeeded" and done["result"] == {"ran": True}
    finally:
        await runner.stop()


async def test_a_worker_holds_at_most_job_max_queued_jobs(store: EngineStore, tmp_path: Path):
    """QA: nothing bounded the queue, and each queued import holds its body in memory."""
    release = asyncio.Event()

    async def wait(ctx: JobContext) -> dict[str, Any]:
        await release.wait()
        return {}

    settings = Settings(job_result_dir=str(tmp_path), job_max_concurrent=1, job_max_queued=2)
    runner = JobRunner(store, settings)
    try:
        held = [await runner.submit("test", "owner", {}, wait) for _ in range(2)]
        with pytest.raises(ApiError) as refused:
            await runner.submit("test", "owner", {}, wait)
        assert (refused.value.status_code, refused.value.code) == (503, "JOBS_BUSY")
        assert refused.value.headers == {"Retry-After": "5"}
        assert await store.call("count", {"table": TABLE}) == 2  # no record of the refused one
        release.set()
        for job in held:
            assert (await wait_until_finished(runner, job["id"]))["state"] == "succeeded"
        # Submitted together, the records' writes under way at once (QA: all 10 got in).
        together = await asyncio.gather(
            *(runner.submit("test", "owner", {}, wait) for _ in range(10)),
            return_exceptions=True,
        )
        assert sum(isinstance(job, dict) for job in together) == 2
        assert all(
            getattr(e, "code", None) == "JOBS_BUSY" for e in together if isinstance(e, Exception)
        )
    finally:
        release.set()
        await runner.stop()


async def test_a_store_away_past_the_retries_ends_the_task_without_an_exception(
    store: EngineStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(runner_module, "RECORD_RETRY_SECONDS", 0.2)

    async def succeed(ctx: JobContext) -> dict[str, Any]:
        return {}

    runner = JobRunner(store, settings)
    try:
        job = await runner.submit("test", "owner", {}, succeed)
        store.outage(5)
        task = runner._tasks[job["id"]]
        await asyncio.wait_for(asyncio.shield(task), 3)
        assert task.exception() is None  # logged; the sweep settles the record later
    finally:
        store.down_until = 0
        await runner.stop()


async def test_the_sweep_deletes_old_files_no_live_job_owns(
    store: EngineStore, settings: Settings, tmp_path: Path
):
    runner = JobRunner(store, settings)
    jobs = runner.jobs
    running = await jobs.create("export", "o", {}, runner.worker)
    await jobs.transition(running["id"], ("queued",), {"state": "running"})
    lost = await jobs.create("export", "o", {}, runner.worker)  # its worker was killed
    await jobs.transition(lost["id"], ("queued",), {"state": "failed"})
    kept_result = await jobs.create("export", "o", {}, runner.worker)
    await jobs.transition(kept_result["id"], ("queued",), {"state": "succeeded"})

    names = {
        "running_part": f"{running['id']}.ndjson.part",  # being written: never deleted
        "lost_part": f"{lost['id']}.csv.part",
        "vanished": f"{uuid.uuid4()}.ndjson",  # its job vanished (a restore)
        "result": f"{kept_result['id']}.ndjson",  # goes with its record
        "recent": f"{uuid.uuid4()}.ndjson",  # no job, but recent
    }
    old = time.time() - settings.job_retention_seconds - 10
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"x")
        if key != "recent":
            os.utime(tmp_path / name, (old, old))

    await runner._sweep()
    left = {path.name for path in tmp_path.iterdir()}
    assert left == {names["running_part"], names["result"], names["recent"]}


async def test_one_sweep_deletes_every_expired_job_not_just_one_batch(
    store: EngineStore, settings: Settings, tmp_path: Path
):
    """Soak QA: 100 expired jobs a sweep fell behind 25 short jobs a second."""
    runner = JobRunner(store, settings)
    jobs = runner.jobs
    past = now_stamp(datetime.now(UTC) - timedelta(seconds=settings.job_retention_seconds + 5))
    for _ in range(SWEEP_LIMIT * 2 + 7):
        job = await jobs.create("export", "o", {}, runner.worker)
        name = f"{job['id']}.csv"
        changes = {"state": "succeeded", "finished_at": past, "result": {"file": name}}
        store.engine.execute("patch", {"table": TABLE, "id": job["id"], "changes": changes})
        (tmp_path / name).write_bytes(b"x")
    recent = await jobs.create("export", "o", {}, runner.worker)
    await jobs.transition(recent["id"], ("queued",), {"state": "succeeded"})
    await runner._sweep()
    assert store.engine.execute("count", {"table": TABLE}) == 1
    assert await jobs.find(recent["id"]) is not None
    assert not any(tmp_path.iterdir())


async def test_ensure_schema_declares_the_jobs_table_with_its_indexes():
    """Run on every store connection: a store back without its data gets ``_jobs`` indexed."""
    store = EngineStore()
    await ensure_schema(store.call)
    described = store.engine.stats()["tables"][TABLE]
    declared = {spec["field"] for spec in SCHEMA["indexes"]}
    assert declared <= {spec["field"] for spec in described["indexes"]}


async def test_a_cancel_in_the_worker_running_the_job_stops_it_at_its_next_checkpoint(
    store: EngineStore, tmp_path: Path
):
    """No wait for a heartbeat (none comes here: one a minute) nor a progress report."""
    slow = Settings(job_result_dir=str(tmp_path), job_heartbeat_seconds=60, job_stale_seconds=300)
    running = asyncio.Event()

    async def endless(ctx: JobContext) -> dict[str, Any]:
        while True:
            await ctx.checkpoint()  # no progress given: the store is not asked
            running.set()

    runner = JobRunner(store, slow)
    await runner.start()
    try:
        job = await runner.submit("test", "owner", {}, endless)
        await running.wait()
        runner.cancel_here(job["id"])
        done = await wait_until_finished(runner, job["id"])
        assert done["state"] == "cancelled"
    finally:
        await runner.stop()


async def test_the_sweep_keeps_results_within_their_byte_cap(
    store: EngineStore, settings: Settings, tmp_path: Path
):
    """Past JOB_RESULT_MAX_BYTES the oldest finished jobs go, result and record, before their
    retention ends; a job still running keeps its files."""
    runner = JobRunner(store, settings.model_copy(update={"job_result_max_bytes": 250}))
    jobs = runner.jobs
    made = []
    for n in range(4):
        job = await jobs.create("export", "o", {}, runner.worker)
        state = "running" if n == 0 else "succeeded"
        await jobs.transition(job["id"], ("queued",), {"state": state})
        path = tmp_path / f"{job['id']}.csv"
        path.write_bytes(b"x" * 100)
        os.utime(path, (time.time() - 100 + n, time.time() - 100 + n))  # oldest first
        made.append(job["id"])
    await runner._sweep()
    left = sorted(path.name.split(".")[0] for path in tmp_path.iterdir())
    # 400 bytes over a 250 cap: the running one stays; the two oldest finished go
    assert left == sorted([made[0], made[3]])
    assert await jobs.find(made[1]) is None and await jobs.find(made[3]) is not None


async def test_the_sweeps_delete_only_job_result_files(
    store: EngineStore, settings: Settings, tmp_path: Path
):
    """QA: JOB_RESULT_DIR set to the store's data directory: the size sweep deleted its
    snapshot and log (and the age sweep any old file there). Only ``<job id>.csv|ndjson``
    (``.part``) are the jobs' to delete, however old or large the others."""
    runner = JobRunner(store, settings.model_copy(update={"job_result_max_bytes": 10}))
    others = ["snapshot.mdb", "log-0000000002.aof", "notes.txt", "job-1.csv", "Ab.csv"]
    job = await runner.jobs.create("export", "o", {}, runner.worker)
    await runner.jobs.transition(job["id"], ("queued",), {"state": "succeeded"})
    others.append(f"{job['id']}.csv.bak")
    result = f"{job['id']}.csv"
    old = time.time() - settings.job_retention_seconds - 10
    for name in [*others, result]:
        (tmp_path / name).write_bytes(b"x" * 100)
        os.utime(tmp_path / name, (old, old))
    await runner._sweep()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(others)
    assert await runner.jobs.find(job["id"]) is None  # over the cap: its result went with it


async def test_heartbeats_failing_through_an_outage_are_told_once(
    store: EngineStore, settings: Settings
) -> None:
    """jobs QA: a job_heartbeat_failed warning every beat of an outage (46 in 90 s)."""
    release = asyncio.Event()

    async def waits(ctx: JobContext) -> dict[str, Any]:
        await release.wait()
        return {}

    runner = JobRunner(store, settings)  # a beat every 0.05 s
    await runner.start()
    try:
        with structlog.testing.capture_logs() as lines:
            await runner.submit("test", "owner", {}, waits)
            store.outage(0.5)  # about 10 beats
            await asyncio.sleep(0.8)
        events = [line["event"] for line in lines if line["event"].startswith("job_heartbeat")]
        assert events == ["job_heartbeat_failed", "job_heartbeats_resumed"]
    finally:
        release.set()
        await runner.stop()


async def test_heartbeats_with_no_job_say_resumed_only_once_the_store_answers(
    store: EngineStore, settings: Settings
) -> None:
    """QA: a worker running no job asks the store nothing at most beats, and each such beat
    counted as a success: ``job_heartbeats_resumed`` 2 s after every failure (of a sweep)
    while the store was still hung. Only a beat the store answers ends the outage."""
    # a sweep (a store call) every 5 beats: 0.25 s; the outage spans three of them
    runner = JobRunner(store, settings.model_copy(update={"job_stale_seconds": 0.5}))
    await runner.start()
    try:
        with structlog.testing.capture_logs() as lines:
            store.outage(0.8)
            await asyncio.sleep(1.4)
        events = [line["event"] for line in lines if line["event"].startswith("job_heartbeat")]
        assert events == ["job_heartbeat_failed", "job_heartbeats_resumed"]
    finally:
        await runner.stop()


async def test_an_export_past_the_result_cap_fails_and_leaves_no_file(
    store: EngineStore, settings: Settings, tmp_path: Path
) -> None:
    """jobs QA: an export larger than JOB_RESULT_MAX_BYTES said ``succeeded``, then the
    sweep deleted it, record and file, a second later (the client polled a 404). It fails
    now, saying why, and its partial file goes; one under the cap still succeeds."""
    store.engine.execute("create_table", {"table": "t"})
    for n in range(50):
        store.engine.execute("insert", {"table": "t", "record": {"n": n, "pad": "x" * 40}})
    runner = JobRunner(store, settings.model_copy(update={"job_result_max_bytes": 1000}))
    await runner.start()
    try:
        job = await runner.submit("export", "owner", {"table": "t"})
        done = await wait_until_finished(runner, job["id"])
        assert done["state"] == "failed", done
        assert done["error"]["code"] == "RESULT_TOO_LARGE"
        assert "JOB_RESULT_MAX_BYTES" in done["error"]["message"]
        assert list(tmp_path.iterdir()) == []
        runner.settings = settings  # the 1 GiB default
        kept = await wait_until_finished(
            runner, (await runner.submit("export", "o", {"table": "t"}))["id"]
        )
        assert kept["state"] == "succeeded" and kept["result"]["rows"] == 50
        assert kept["result"]["bytes"] == (tmp_path / kept["result"]["file"]).stat().st_size > 1000
    finally:
        await runner.stop()


@pytest.mark.parametrize("rows", [3, 400])  # the bytes stay in the file's buffer; they do not
async def test_an_export_the_disk_refuses_fails_with_its_own_code(
    store: EngineStore,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
) -> None:
    """jobs QA: a full JOB_RESULT_DIR failed exports with INTERNAL_ERROR ("the job failed
    unexpectedly") and a traceback, read by operators as a bug. The result file is written to
    /dev/full here (ENOSPC on every write), whether the rows reach it while the job writes or
    only as the file is closed."""
    real_open = os.open

    def full_disk(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".part"):
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", full_disk)
    store.engine.execute("create_table", {"table": "t"})
    for n in range(rows):
        store.engine.execute("insert", {"table": "t", "record": {"n": n, "pad": "x" * 40}})
    runner = JobRunner(store, settings)
    await runner.start()
    try:
        for kind in ("export", "csv_export"):
            with structlog.testing.capture_logs() as logs:
                job = await runner.submit(kind, "owner", {"table": "t"})
                done = await wait_until_finished(runner, job["id"])
            assert done["state"] == "failed", done
            assert done["error"]["code"] == "RESULT_WRITE_FAILED"
            assert "No space left on device" in done["error"]["message"]
            assert [e["errno"] for e in logs if e["event"] == "job_result_write_failed"] == [28]
            assert not [e for e in logs if e["log_level"] == "error"]
            assert list(tmp_path.iterdir()) == []
    finally:
        await runner.stop()


class ProgressLostStore(EngineStore):
    """The first progress patch of a job lands, and its reply is lost with the connection."""

    lost = False

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        answer = await super().call(command, args, timeout=timeout)
        changes = (args or {}).get("changes") or {}
        if command == "patch" and "progress" in changes and not self.lost:
            self.lost = True
            raise OutcomeUnknown("the connection to the store was lost after 'patch' was sent")
        return answer


async def test_an_export_whose_progress_write_is_in_doubt_failed_for_the_outage(
    settings: Settings,
) -> None:
    """jobs QA: an export stopped by a store restart said ``OUTCOME_UNKNOWN`` "... after
    'patch' was sent": the write in doubt was its own progress record, and an export changes
    no data. It fails as the outage it met; the landed patch does not stop the record's end."""
    store = ProgressLostStore()
    store.engine.execute("create_table", {"table": "t"})
    store.engine.execute("insert", {"table": "t", "record": {"n": 1}})
    runner = JobRunner(store, settings)
    await runner.start()
    try:
        done = await wait_until_finished(
            runner, (await runner.submit("export", "o", {"table": "t"}))["id"]
        )
    finally:
        await runner.stop()
    assert store.lost and done["state"] == "failed", done
    assert done["error"]["code"] == "STORE_UNAVAILABLE"
    assert "recorded its progress" in done["error"]["message"]


async def test_a_state_filter_lists_stale_jobs_as_what_they_become(
    store: EngineStore, settings: Settings
) -> None:
    """jobs QA: ``GET /jobs?state=running`` listed a job it had just marked failed (its
    worker killed), and counted it in ``meta.total``."""
    jobs = JobRunner(store, settings).jobs
    old = now_stamp(datetime.now(UTC) - timedelta(seconds=settings.job_stale_seconds + 5))
    dead = await jobs.create("export", "o", {}, "gone-worker")
    await jobs.transition(dead["id"], ("queued",), {"state": "running", "heartbeat_at": old})
    alive = await jobs.create("export", "o", {}, "here")
    await jobs.transition(alive["id"], ("queued",), {"state": "running"})
    running, total = await jobs.list_jobs(None, "running", 0, 20)
    assert ([job["id"] for job in running], total) == ([alive["id"]], 1)
    failed, total = await jobs.list_jobs(None, "failed", 0, 20)
    assert ([job["id"] for job in failed], total) == ([dead["id"]], 1)
    assert failed[0]["error"]["code"] == "WORKER_LOST"


async def test_a_job_refused_by_the_store_says_what_its_route_would(
    store: EngineStore, settings: Settings
) -> None:
    """write QA: a write by filter run as a job failed with the store's ``CONFLICT`` and no
    details, where the synchronous route answered ``ALREADY_EXISTS`` naming the field."""
    store.engine.execute(
        "create_table", {"table": "t", "indexes": [{"field": "sku", "unique": True}]}
    )
    store.engine.execute("insert", {"table": "t", "record": {"sku": "same"}})

    async def duplicate(ctx: JobContext) -> dict[str, Any]:
        await ctx.store.call("insert", {"table": "t", "record": {"sku": "same"}})
        return {}

    runner = JobRunner(store, settings)
    await runner.start()
    try:
        job = await runner.submit("test", "owner", {}, duplicate)
        done = await wait_until_finished(runner, job["id"])
    finally:
        await runner.stop()
    assert done["state"] == "failed"
    error = done["error"]
    assert error["code"] == "ALREADY_EXISTS", error
    assert error["details"] == [{"field": "sku", "reason": "unique", "table": "t"}]


class CallerEngineStore(EngineStore):
    """As the store client does: a write carries the request's ``current_actor`` (with its
    credential), which the engine checks."""

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        await asyncio.sleep(0)
        actor = current_actor.get() if command not in READ_COMMANDS else None
        return self.engine.execute(command, dict(args or {}), actor=actor)


async def test_a_job_whose_caller_logs_out_writes_nothing_more_and_records_why(
    settings: Settings,
) -> None:
    """A job runs with its caller's credential: once the session has ended its writes are
    refused (401 INVALID_TOKEN, as a route's), while its own record still says so."""
    store = CallerEngineStore()
    credential = sessions.credential("s1", "u1", time.time() - 1)

    async def outlives_its_session(ctx: JobContext) -> dict[str, Any]:
        await ctx.store.call("insert", {"table": "t", "record": {"n": 1}})
        store.engine.execute("kv_set", {"key": sessions.SESSION_REVOKED + "s1", "value": 1})
        await ctx.checkpoint(done=1, total=2)  # the job's own record: still written
        await ctx.store.call("insert", {"table": "t", "record": {"n": 2}})
        return {}

    runner = JobRunner(store, settings)
    await runner.start()
    token = current_actor.set({"user_id": "u1", "role": "admin", "credential": credential})
    try:
        job = await runner.submit("test", "u1", {}, outlives_its_session)
    finally:
        current_actor.reset(token)
    try:
        done = await wait_until_finished(runner, job["id"])
    finally:
        await runner.stop()
    assert done["state"] == "failed"
    assert done["error"]["code"] == "INVALID_TOKEN", done["error"]
    assert done["progress"]["done"] == 1
    assert store.engine.execute("count", {"table": "t"}) == 1
