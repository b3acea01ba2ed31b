"""CSV import when things go wrong, in-process: a file of bad rows must not hold the worker's
loop, a store failure midway must say what was written, a malformed line must count as a
failure, and as a job the import must report progress, stop when cancelled and record what it
imported.

No processes: the app runs on ``httpx.ASGITransport`` with its store swapped for ``EngineStore``
(a real ``Engine`` answering ``call``), which can fail one chosen ``batch``.
"""

from __future__ import annotations

import asyncio
import gc
import io
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from api.auth.principals import Principal
from api.deps import get_caller, get_store
from api.errors import ApiError
from api.jobs.imports import import_job
from api.jobs.model import TABLE as JOBS
from api.jobs.model import JobCancelled
from api.jobs.runner import JobContext, JobRunner
from api.jobs.web import get_jobs
from api.main import create_app
from api.schemas.orders import OrderCreate
from api.services import csvio
from api.services.csv_import import CHUNK_ROWS, import_csv
from api.services.csv_import_batches import BatchLimits
from api.services.csv_rows import RowReader, reader_for
from api.settings import Settings
from storeserver.engine import Engine
from storeserver.errors import (
    CredentialRevoked,
    LimitExceeded,
    MemoryLimit,
    NotFound,
    OutcomeUnknown,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from tests.support.factories import assert_error
from tests.support.inprocess import in_process

IMPORT = "/api/v1/batch/import"
ADMIN = Principal(id="admin-id", role="admin", session_id="s")


class EngineStore:
    """A ``Store`` over an in-process engine; ``fail_batch(n, exc)``: the n-th ``batch`` call
    (1 = the first) raises ``exc`` and writes nothing."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.batches = 0
        self.failing: tuple[int, StoreError] | None = None

    def fail_batch(self, number: int, exc: StoreError) -> None:
        self.failing = (number, exc)

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        await asyncio.sleep(0)
        if command == "batch":
            self.batches += 1
            if self.failing is not None and self.failing[0] == self.batches:
                raise self.failing[1]
        return self.engine.execute(command, args or {})

    def count(self, table: str) -> int:
        try:
            return int(self.engine.execute("count", {"table": table}))
        except NotFound:  # nothing was ever written to it
            return 0


@pytest.fixture
def store() -> EngineStore:
    return EngineStore()


@pytest.fixture
def app(store: EngineStore) -> FastAPI:
    app = create_app(Settings())
    app.dependency_overrides[get_caller] = lambda: ADMIN
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_jobs] = lambda: None  # ?async=false: no job is started
    return app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(app) as client:
        yield client


async def post_csv(http: httpx.AsyncClient, table: str, body: bytes, **params: str) -> Any:
    return await http.post(
        IMPORT,
        params={"table": table, "async": "false", **params},
        content=body,
        headers={"Content-Type": "text/csv"},
    )


def invalid_rows(count: int) -> bytes:
    """Every row's ``n`` is broken JSON: nothing to write, only row errors."""
    return b"id,n\n" + b"".join(b"r%d,[\n" % i for i in range(count))


def valid_rows(count: int, bad: frozenset[int] = frozenset()) -> bytes:
    """Rows without ids (a retry would duplicate them); the rows numbered in ``bad`` are
    invalid (1 = the first row after the header)."""
    return b"n\n" + b"".join(b"[\n" if i in bad else b"%d\n" % i for i in range(1, count + 1))


class RowsRead:
    """Counts the rows the import has read (``RowReader.read`` calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        read = RowReader.read

        def counted(reader: RowReader, row: Sequence[str], number: int) -> Any:
            self.count += 1
            return read(reader, row, number)

        monkeypatch.setattr(RowReader, "read", counted)


@pytest.fixture
def rows_read(monkeypatch: pytest.MonkeyPatch) -> RowsRead:
    return RowsRead(monkeypatch)


class Ticker:
    """Another coroutine on the loop: notes how many rows the import had read each time it
    got to run."""

    def __init__(self, rows_read: RowsRead) -> None:
        self.rows_read = rows_read
        self.seen: set[int] = set()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Ticker:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self.seen.add(self.rows_read.count)
            await asyncio.sleep(0)

    def midway(self, total: int) -> set[int]:
        """The counts of rows read, neither none nor all, at which it ran."""
        return {n for n in self.seen if 0 < n < total}


# -- 1. the loop is given back whatever the rows are ----------------------------------------


@pytest.mark.parametrize("atomic", ["false", "true"])
async def test_an_import_of_invalid_rows_lets_others_run_between_chunks(
    http: httpx.AsyncClient, store: EngineStore, rows_read: RowsRead, atomic: str
) -> None:
    """Nothing is written, so no store call yields the loop: the import itself must, after
    every CHUNK_ROWS rows read (atomic: up to its 1000 rows). The rows are read and checked in
    a thread, so the loop runs meanwhile too."""
    count = 2 * CHUNK_ROWS if atomic == "true" else 6 * CHUNK_ROWS
    async with Ticker(rows_read) as ticker:
        response = await post_csv(http, "t", invalid_rows(count), atomic=atomic)
    if atomic == "true":
        assert response.status_code == 422, response.text
        assert len(response.json()["error"]["details"]) == 100 + 1  # listed, and "N more"
    else:
        assert response.status_code == 200, response.text
        report = response.json()["data"]
        assert (report["rows"], report["imported"], report["failed"]) == (count, 0, count)
    assert rows_read.count == count and store.batches == 0
    assert ticker.midway(count) >= set(range(CHUNK_ROWS, count, CHUNK_ROWS))


@pytest.mark.parametrize("atomic", [False, True])
async def test_blank_lines_let_others_run_as_rows_do(store: EngineStore, atomic: bool) -> None:
    """QA: the loop was given back every CHUNK_ROWS rows, and blank lines are no rows: 7 MiB
    of them held a worker 3.8 s, and a job over 40 MiB stopped beating (declared lost, its
    rows never written). Lines count, blank or not."""
    blank = 20 * CHUNK_ROWS
    body = b"n\n" + b"\r\n" * blank + b"1\n"
    pauses = 0

    async def pause() -> None:
        nonlocal pauses
        pauses += 1

    report = await import_csv(store, "t", io.BytesIO(body), atomic, between_chunks=pause)  # type: ignore[arg-type]
    assert (report["rows"], report["imported"]) == (1, 1) and store.count("t") == 1
    assert pauses == blank // CHUNK_ROWS


class CountingLines(io.BytesIO):
    """A body that counts the pieces the reader asked for (one per line here)."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.lines = 0

    def readline(self, size: int | None = -1) -> bytes:
        self.lines += 1
        return super().readline(size)


@pytest.mark.parametrize("atomic", [False, True])
async def test_a_cell_of_many_lines_lets_others_run_while_it_is_read(
    store: EngineStore, atomic: bool
) -> None:
    """QA: a quoted cell of 3.5 million line breaks is one record, read by the csv module in
    one call: on the loop, it held the worker 3.2 s, and a job reading one stopped beating and
    was declared lost while alive. Read in a thread, the loop runs while the cell is read."""
    lines = 300_000
    binary = CountingLines(b'n,text\n1,"' + b"\n" * lines + b'"\n2,x\n')
    report, seen = await import_noting(store, binary, atomic, lambda: binary.lines)
    assert (report["rows"], report["imported"]) == (2, 2) and store.count("t") == 2
    assert any(2 < count < lines for count in seen), sorted(seen)[:5]


async def import_noting(
    store: EngineStore, binary: io.BytesIO, atomic: bool, progress: Callable[[], int]
) -> tuple[dict[str, Any], set[int]]:
    """The import of ``binary`` into ``t``, and the values of ``progress`` another coroutine
    saw each time it got to run meanwhile."""
    seen: set[int] = set()

    async def tick() -> None:
        while True:
            seen.add(progress())
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    try:
        report = await import_csv(store, "t", binary, atomic)  # type: ignore[arg-type]
    finally:
        ticker.cancel()
    return report, seen


@pytest.mark.parametrize("atomic", [False, True])
async def test_a_cell_of_many_values_lets_others_run_while_it_is_decoded(
    store: EngineStore, atomic: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: a row is decoded and checked as one piece of work; on the loop, one cell of 25
    million JSON values held the worker 14.6 s (its jobs declared lost). In the reading
    thread, the loop runs while the cell is decoded."""
    values = 300_000
    decoded = 0
    json_int = csvio._json_int

    def counting(text: str) -> int:
        nonlocal decoded
        decoded += 1
        return json_int(text)

    monkeypatch.setattr(csvio, "_json_int", counting)
    cell = "[" + ",".join(["7"] * values) + "]"
    binary = io.BytesIO(f'n,v\n1,"{cell}"\n2,1\n'.encode())
    report, seen = await import_noting(store, binary, atomic, lambda: decoded)
    assert (report["rows"], report["imported"]) == (2, 2) and store.count("t") == 2
    assert any(0 < count < values for count in seen), sorted(seen)[:5]


async def test_an_import_job_past_job_max_queued_is_503_jobs_busy(
    app: FastAPI, store: EngineStore, tmp_path: Path
) -> None:
    """QA: each queued import job holds its body, and nothing bounded their number."""
    settings = Settings(job_result_dir=str(tmp_path), job_max_concurrent=1, job_max_queued=1)
    runner = JobRunner(store, settings)
    app.dependency_overrides[get_jobs] = lambda: runner
    release = asyncio.Event()

    async def held(ctx: JobContext) -> dict[str, Any]:
        await release.wait()
        return {}

    try:
        await runner.submit("test", "owner", {}, held)
        async with in_process(app) as http:
            refused = await post_csv(http, "t", valid_rows(3), **{"async": "true"})
        error = assert_error(refused, 503, "JOBS_BUSY")
        assert "JOB_MAX_QUEUED" in error["message"]
        assert refused.headers["retry-after"] == "5"
        assert store.count("t") == 0
    finally:
        release.set()
        await runner.stop()


async def test_rows_of_big_records_are_read_a_few_at_a_time(store: EngineStore) -> None:
    """Review: 500 rows were decoded in the thread before the import saw any, whatever their
    size: rows of big records doubled its peak memory. A read stops once its records pass a
    chunk's bytes."""
    chunk_bytes = BatchLimits.of(store, "t").chunk_bytes  # type: ignore[arg-type]
    cell = "x" * 400_000
    count = 3 * chunk_bytes // len(cell)
    body = ("n,text\n" + "".join(f"{n},{cell}\n" for n in range(count))).encode()
    pauses = 0

    async def pause() -> None:
        nonlocal pauses
        pauses += 1

    report = await import_csv(store, "t", io.BytesIO(body), False, between_chunks=pause)  # type: ignore[arg-type]
    assert (report["rows"], report["imported"]) == (count, count) and store.count("t") == count
    assert count < CHUNK_ROWS and pauses >= 2


async def test_an_atomic_import_over_a_batchs_values_is_refused_before_the_store(
    store: EngineStore,
) -> None:
    """Review: an atomic import is one store batch, whose records hold at most 600,000 values
    together; the store refused it naming a row that was fine. Refused first, by the import,
    and the same file imports without atomic=true."""
    cell = '"[' + ",".join(["1"] * 250_000) + ']"'
    body = ("n,v\n" + "".join(f"{n},{cell}\n" for n in range(3))).encode()
    with pytest.raises(ApiError) as refused:
        await import_csv(store, "t", io.BytesIO(body), True)  # type: ignore[arg-type]
    assert (refused.value.status_code, refused.value.code) == (400, "LIMIT_EXCEEDED")
    assert "600000 values" in refused.value.message
    assert refused.value.details == [
        {"field": "atomic", "message": "rows 1 to 3 already hold 750009 values"}
    ]
    assert store.count("t") == 0
    report = await import_csv(store, "t", io.BytesIO(body), False)  # type: ignore[arg-type]
    assert (report["imported"], report["failed"]) == (3, 0) and store.count("t") == 3


async def test_an_import_job_of_invalid_rows_reports_progress_as_it_reads(
    store: EngineStore, rows_read: RowsRead, tmp_path: Path
) -> None:
    """As a job too; and its progress (bytes read) advances as rows are read, written or not."""
    count = 4 * CHUNK_ROWS
    body = invalid_rows(count)
    jobs = RecordingJobs()
    ctx = job_context(store, jobs, tmp_path)
    async with Ticker(rows_read) as ticker:
        result = await import_job("t", io.BytesIO(body), False)(ctx)
    assert result is not None and result["failed"] == count
    assert ticker.midway(count) >= set(range(CHUNK_ROWS, count, CHUNK_ROWS))
    during = jobs.progress
    assert during, "no progress before the end"
    assert all(0 < p["done"] < len(body) and p["unit"] == "bytes" for p in during)
    assert ctx.final_progress == {"done": len(body), "total": len(body), "unit": "bytes"}


class RecordingJobs:
    """The ``JobStore`` of a job run by hand: records progress; ``cancel_after`` reports."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.progress: list[dict[str, Any]] = []
        self.cancel_after = cancel_after
        self.touched = asyncio.Event()
        self.store: EngineStore | None = None  # set by ``job_context``

    async def touch(self, job_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # a store call
        self.progress.append(changes["progress"])
        self.touched.set()
        cancel = self.cancel_after is not None and len(self.progress) >= self.cancel_after
        return {"id": job_id, "state": "running", "cancel_requested": cancel}

    async def write_owned(
        self, job_id: str, args: dict[str, Any], changes: dict[str, Any], timeout: float | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The import's batch alone (the check on the job's record: test_jobs_import_ownership)."""
        assert self.store is not None
        reply = await self.store.call("batch", args, timeout=timeout)
        return reply, {"id": job_id, "state": "running", "cancel_requested": False}


def job_context(store: EngineStore, jobs: RecordingJobs, tmp_path: Path) -> JobContext:
    settings = Settings(job_heartbeat_seconds=60, job_stale_seconds=300)
    jobs.store = store
    return JobContext("job-1", {}, store, settings, jobs, tmp_path)  # type: ignore[arg-type]


# -- 2. a store failure midway says what was written ----------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "code", "in_doubt"),
    [
        (StoreUnavailable("the connection to the store was lost"), 503, "STORE_UNAVAILABLE", True),
        (
            OutcomeUnknown("lost after 'batch' was sent", {"outcome": "unknown"}),
            503,
            "OUTCOME_UNKNOWN",
            True,
        ),
        (StoreTimeout("the store did not answer 'batch' in time"), 504, "STORE_TIMEOUT", True),
        (MemoryLimit("memory limit reached"), 507, "INSUFFICIENT_STORAGE", False),
        # The caller's session ended while the import ran (review: no WWW-Authenticate, and
        # the store's "the caller's session was ended" said which check refused the token).
        (CredentialRevoked("the caller's session was ended"), 401, "INVALID_TOKEN", False),
    ],
)
async def test_a_store_failure_after_rows_were_written_says_how_many_and_where_to_resume(
    http: httpx.AsyncClient,
    store: EngineStore,
    exc: StoreError,
    status: int,
    code: str,
    in_doubt: bool,
) -> None:
    """Chunks of 500 valid rows: rows 1-501 (row 10 is invalid), 502-1001, then the third
    batch (rows 1002-1501) fails. The status stays the store error's; the message and the
    details give the count and the last row written, and do not invite a blind retry."""
    store.fail_batch(3, exc)
    response = await post_csv(http, "t", valid_rows(3000, bad=frozenset({10})))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert store.count("t") == 1000
    message = error["message"]
    assert "1000 rows were imported, up to row 1001" in message
    assert "resume from row 1002 instead" in message
    assert "retry shortly" not in message
    assert (
        "rows 1002 to 1501 were being written and may have been imported" in message
    ) is in_doubt
    summary, *row_errors = error["details"]
    assert summary == {
        "field": None,
        "message": "1000 rows imported, up to row 1001",
        "imported": 1000,
        "failed": 1,
        "last_row_written": 1001,
        "resume_from_row": 1002,
        "unconfirmed_rows": [1002, 1501] if in_doubt else None,
    }
    assert [(e["row"], e["field"]) for e in row_errors] == [(10, "n")]
    assert "Retry-After" not in response.headers
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert "session" not in message


async def test_a_store_failure_before_any_write_is_the_store_error(
    http: httpx.AsyncClient, store: EngineStore
) -> None:
    """Refused (nothing written, nothing in doubt): the plain 507, a retry is safe."""
    store.fail_batch(1, MemoryLimit("memory limit reached"))
    response = await post_csv(http, "t", valid_rows(10))
    assert response.status_code == 507
    assert response.json()["error"]["details"] == []
    assert store.count("t") == 0


async def test_a_failed_import_leaves_no_cycle_holding_its_records() -> None:
    """QA: each failed import of one huge JSON cell left ~500 MB held in the worker. The
    chunk writer kept its failed write, whose error (raised on through the writer's own
    frame) held the rows: a cycle of error, frames and writer that only a full collection
    frees, and a worker's runs rarely (``api.collector``). Freed by reference counting now."""

    class Refusing(EngineStore):  # a new error each time, as the client raises them
        async def call(
            self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
        ) -> Any:
            if command == "batch":
                raise LimitExceeded("the request holds too many values", {"max_entries": 9})
            return await super().call(command, args, timeout=timeout)

    refusing = Refusing()
    gc.collect()
    gc.disable()  # nothing collected behind the test's back
    try:
        with pytest.raises(LimitExceeded):
            await import_csv(refusing, "t", io.BytesIO(b"a\n" + b'"{}"\n' * 300), False)
        await asyncio.sleep(0)  # the done callbacks of the failed write run
        left_in_cycles = gc.collect()
    finally:
        gc.enable()
    assert left_in_cycles == 0, f"{left_in_cycles} objects were only freed by the collector"


async def test_a_first_batch_in_doubt_says_so(http: httpx.AsyncClient, store: EngineStore) -> None:
    store.fail_batch(1, StoreUnavailable("the connection to the store was lost"))
    response = await post_csv(http, "t", valid_rows(10))
    assert response.status_code == 503
    error = response.json()["error"]
    assert "no row was confirmed imported" in error["message"]
    assert "rows 1 to 10 were being written and may have been imported" in error["message"]
    assert "resume" not in error["message"]
    assert error["details"][0]["unconfirmed_rows"] == [1, 10]


async def test_an_atomic_batch_in_doubt_is_not_retried_blindly(
    http: httpx.AsyncClient, store: EngineStore
) -> None:
    store.fail_batch(1, StoreTimeout("the store did not answer 'batch' in time"))
    response = await post_csv(http, "t", valid_rows(10), atomic="true")
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "STORE_TIMEOUT"
    assert "whether the 10 rows were imported is not known" in error["message"]


async def test_a_failed_import_job_records_the_rows_it_imported(
    store: EngineStore, tmp_path: Path
) -> None:
    """Through the runner: the job ends failed with the store error's code, the counts in its
    error details, and its progress in rows imported (not bytes, not 0)."""
    settings = Settings(
        job_result_dir=str(tmp_path), job_heartbeat_seconds=0.05, job_stale_seconds=5
    )
    store.fail_batch(3, StoreUnavailable("the connection to the store was lost"))
    runner = JobRunner(store, settings)
    await runner.start()
    try:
        func = import_job("t", io.BytesIO(valid_rows(3000)), False)
        job = await runner.submit("import", "owner", {}, func)
        await asyncio.wait({runner._tasks[job["id"]]})
        done = store.engine.execute("get", {"table": JOBS, "id": job["id"]})
    finally:
        await runner.stop()
    assert done["state"] == "failed"
    assert done["error"]["code"] == "STORE_UNAVAILABLE"
    assert "resume from row 1001" in done["error"]["message"]
    assert done["error"]["details"][0]["imported"] == 1000
    assert done["progress"]["done"] == 1000 and done["progress"]["unit"] == "rows"
    assert store.count("t") == 1000


@pytest.mark.parametrize("atomic", [False, True])
async def test_an_import_job_takes_a_row_that_fills_a_batchs_value_budget(
    store: EngineStore, tmp_path: Path, atomic: bool
) -> None:
    """QA: a job's batches also patch its record, which spent from the store's 600,000 values
    per batch: a row of 599,995 values, imported synchronously, failed the job (and the rows
    after it, or all of them when atomic). Such a batch goes without the record's patch.
    Here the five rows fill the budget but for 2 values: each flat row spends 3 (its two
    fields and itself), the big one 3 and its list's 599,983."""
    big = b'"[' + b",".join([b"0"] * 599_983) + b']"'
    body = b"id,v\na0,1\na1,2\nbig," + big + b"\nb0,3\nb1,4\n"
    settings = Settings(job_result_dir=str(tmp_path), job_heartbeat_seconds=5)
    runner = JobRunner(store, settings)
    await runner.start()
    try:
        job = await runner.submit("import", "owner", {}, import_job("t", io.BytesIO(body), atomic))
        await asyncio.wait({runner._tasks[job["id"]]})
        done = store.engine.execute("get", {"table": JOBS, "id": job["id"]})
    finally:
        await runner.stop()
    assert done["state"] == "succeeded", str(done)[:500]
    assert (done["result"]["imported"], done["result"]["failed"]) == (5, 0)
    assert store.count("t") == 5


async def test_a_cancelled_import_job_records_the_rows_it_imported(
    store: EngineStore, tmp_path: Path
) -> None:
    """Cancelled at the first checkpoint (after 500 rows read): the chunk being written then
    is written and counted, and the progress says so."""
    jobs = RecordingJobs(cancel_after=1)
    ctx = job_context(store, jobs, tmp_path)
    with pytest.raises(JobCancelled):
        await import_job("t", io.BytesIO(valid_rows(3000)), False)(ctx)
    assert store.count("t") == CHUNK_ROWS
    assert ctx.final_progress == {"done": CHUNK_ROWS, "total": None, "unit": "rows"}


async def test_an_import_job_stopped_with_its_worker_records_the_rows_it_kept(
    store: EngineStore, tmp_path: Path
) -> None:
    """A worker shutting down (a redeploy) cancels its jobs' tasks: CancelledError, not
    JobCancelled. The progress must still count the rows kept, or the job reads as nothing
    imported and a rerun duplicates them."""
    jobs = RecordingJobs()
    ctx = job_context(store, jobs, tmp_path)
    task = asyncio.ensure_future(import_job("t", io.BytesIO(valid_rows(3000)), False)(ctx))
    await jobs.touched.wait()  # the first checkpoint: the import is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kept = store.count("t")
    assert ctx.final_progress == {"done": kept, "total": None, "unit": "rows"}


# -- 3. a malformed line is a failure, and the report says the file was not read to the end --

MALFORMED = [
    b'a,b\n1,2\n3,"x"y\n5,6\n7,8\n',  # a quote inside an unquoted... after a closing quote
    b"a,b\n1,2\n3,caf\xe9\n5,6\n7,8\n",  # not UTF-8
    b'a,b\n1,2\n3,"x\n5,6\n7,8\n',  # a quote never closed
    b"a,b\r1,2\r3,caf\xe9\r5,6\r7,8\r",  # not UTF-8, lines ended by lone CRs
]


@pytest.mark.parametrize("body", MALFORMED)
async def test_a_malformed_line_stops_the_import_and_counts_as_failed(
    http: httpx.AsyncClient, store: EngineStore, body: bytes
) -> None:
    response = await post_csv(http, "t", body)
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["rows"], report["imported"], report["failed"]) == (2, 1, 1)
    assert report["stopped_at_row"] == 2
    [error] = report["errors"]
    assert (error["row"], error["field"]) == (2, None)
    assert "the rest of the file was not read" in error["message"]
    assert store.count("t") == 1


@pytest.mark.parametrize("body", MALFORMED)
async def test_a_malformed_line_fails_an_atomic_import_the_same_way(
    http: httpx.AsyncClient, store: EngineStore, body: bytes
) -> None:
    response = await post_csv(http, "t", body, atomic="true")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"] == (
        "1 of 2 rows are invalid (the file was not read past row 2); nothing was imported"
    )
    assert [(d["row"], d["field"]) for d in error["details"]] == [(2, None)]
    assert store.batches == 0


async def test_a_file_read_to_the_end_has_no_stop(http: httpx.AsyncClient) -> None:
    report = (await post_csv(http, "t", valid_rows(3, bad=frozenset({2})))).json()["data"]
    assert (report["rows"], report["imported"], report["failed"]) == (3, 2, 1)
    assert "stopped_at_row" not in report


SCHEMA = {
    "type": "object",
    "properties": {"stock": {"type": "integer", "minimum": 0}},
    "required": ["stock"],
}


@pytest.mark.parametrize("atomic", ["false", "true"])
async def test_a_row_the_table_schema_refuses_names_its_column(
    http: httpx.AsyncClient, store: EngineStore, atomic: str
) -> None:
    store.engine.execute("create_table", {"table": "t"})
    store.engine.execute("set_schema", {"table": "t", "schema": SCHEMA})
    body = b"id,stock\nneg,-1\nmissing,\n"
    response = await post_csv(http, "t", body, atomic=atomic)
    if atomic == "true":
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert error["message"].startswith("row 1: the record does not match the schema of t")
        assert error["details"] == [
            {"row": 1, "field": "stock", "message": "-1 is less than the minimum of 0"}
        ]
        return
    assert response.status_code == 200, response.text
    assert response.json()["data"]["errors"] == [
        {"row": 1, "field": "stock", "message": "-1 is less than the minimum of 0"},
        {"row": 2, "field": "stock", "message": "'stock' is a required property"},
    ]


# -- 4. an order's date is checked as POST /orders checks it --------------------------------

USER = "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1"
ORDER = {"user_id": USER, "product_name": "W", "quantity": 1, "total_price": "1.00"}


@pytest.mark.parametrize(
    "date",
    ["2024-01-01T00:00:00", "2024-01-01", "2999-01-01T00:00:00Z", "0001-01-01T00:30:00+01:00"],
)
def test_an_order_date_is_refused_in_the_words_of_post_orders(date: str) -> None:
    """No time zone, in the future, before year 1 in UTC: the model's rule and message."""
    with pytest.raises(ValidationError) as caught:
        OrderCreate.model_validate({**ORDER, "order_date": date})
    [expected] = caught.value.errors()
    reader = reader_for("orders", [*ORDER, "order_date"])
    record, errors = reader.read([USER, "W", "1", "1.00", date], 1)
    assert record is None
    assert [(e.field, e.message) for e in errors] == [("order_date", expected["msg"])]


@pytest.mark.parametrize(
    ("date", "stored"),
    [
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00.000000Z"),
        ("2024-01-01T02:00:00+02:00", "2024-01-01T00:00:00.000000Z"),
        ("0999-06-01T00:00:00.000000Z", "0999-06-01T00:00:00.000000Z"),  # as exported
    ],
)
def test_an_order_date_with_a_time_zone_is_kept_in_utc(date: str, stored: str) -> None:
    reader = reader_for("orders", [*ORDER, "order_date"])
    record, errors = reader.read([USER, "W", "1", "1.00", date], 1)
    assert errors == [] and record is not None
    assert record["order_date"] == stored


async def test_an_order_row_without_a_time_zone_is_a_row_error(
    http: httpx.AsyncClient, store: EngineStore
) -> None:
    body = (
        "user_id,product_name,quantity,total_price,order_date\n"
        f"{USER},a,1,1.00,2024-01-01T00:00:00Z\n"
        f"{USER},b,1,1.00,2024-01-01T00:00:00\n"
    ).encode()
    response = await post_csv(http, "orders", body)
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["imported"], report["failed"]) == (1, 1)
    assert report["errors"] == [
        {"row": 2, "field": "order_date", "message": "Input should have timezone info"}
    ]
