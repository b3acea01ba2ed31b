"""Background jobs against a real stack: life cycle from each state, status from another
worker, cancellation, a killed worker's jobs, authorization, and results identical to the
synchronous paths (export = dump bytes, snapshot = the snapshot answer).

The stack runs the real application plus a test-only ``sleep`` job kind and a route to start it
(``create_jobs_app`` below), so a job can be held running, failed or cancelled on demand. One
job slot per worker makes "queued" reproducible; a short heartbeat and stale time make a dead
worker's job visible as failed within seconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, cast

import httpx
import pytest
from fastapi import FastAPI, Query
from starlette.responses import Response

from api.deps import CurrentUser
from api.jobs.download import range_verdict
from api.jobs.kinds import result_file
from api.jobs.model import JobFailed, is_stale, to_public
from api.jobs.runner import JobContext, job_kind, result_dir
from api.jobs.state import JobStore
from api.jobs.web import JobsDep, accepted, run_as_job
from api.main import create_app
from api.settings import Settings
from api.store import Store
from tests.support.auth import Account, login, login_admin, register
from tests.support.factories import assert_error
from tests.support.stack import Stack, running_stack, worker_pids
from tests.support.storedirect import bulk_insert
from tests.support.workers import close_all, pinned_clients

pytestmark = pytest.mark.integration

JOBS = "/api/v1/jobs"
ASYNC_ROWS = 1000
FILTER_WRITE_CAP = 1500


def create_jobs_app() -> FastAPI:
    """The real app plus ``POST /api/v1/test-jobs/sleep`` (any logged-in user;
    ``stoppable=false``: a kind registered as a snapshot is, with no checkpoint honoured)."""

    @job_kind("sleep_unstoppable", stoppable=False)
    @job_kind("sleep")
    async def run_sleep(ctx: JobContext) -> dict[str, Any]:
        chunks = int(ctx.params["chunks"])
        for done in range(1, chunks + 1):
            await asyncio.sleep(float(ctx.params["delay"]))
            await ctx.checkpoint(done, chunks)
        if ctx.params.get("fail"):
            raise JobFailed("TEST_FAILURE", "this job was asked to fail")
        return {"chunks": chunks, "worker_pid": os.getpid()}

    app = create_app()

    @app.post("/api/v1/test-jobs/sleep")
    async def start_sleep(
        jobs: JobsDep,
        caller: CurrentUser,
        chunks: Annotated[int, Query()] = 3,
        delay: Annotated[float, Query()] = 0.01,
        fail: Annotated[bool, Query()] = False,
        stoppable: Annotated[bool, Query()] = True,
    ) -> Response:
        params = {"chunks": chunks, "delay": delay, "fail": fail}
        kind = "sleep" if stoppable else "sleep_unstoppable"
        job = await jobs.submit(kind, str(caller.id), params, owner_role=caller.role)
        return accepted(job)

    return app


@pytest.fixture(scope="module")
def jobs_stack() -> Iterator[Stack]:
    data_dir = tempfile.mkdtemp(prefix="memdb-jobs-data-")
    env = {
        "STORE_DATA_DIR": data_dir,
        "JOB_MAX_CONCURRENT": "1",
        "JOB_HEARTBEAT_SECONDS": "0.2",
        "JOB_STALE_SECONDS": "2",
        "JOB_ASYNC_ROWS": str(ASYNC_ROWS),
        "MAX_ROWS_PER_FILTER_WRITE": str(FILTER_WRITE_CAP),
        "ACCESS_TOKEN_TTL": "3600",
    }
    try:
        with running_stack(workers=2, extra_env=env, app=f"{__name__}:create_jobs_app()") as stack:
            yield stack
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def jobs_admin(jobs_stack: Stack) -> Account:
    with httpx.Client(base_url=jobs_stack.base_url, timeout=10.0) as http:
        return login_admin(http)


@pytest.fixture
def http(jobs_stack: Stack, jobs_admin: Account) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=jobs_stack.base_url, timeout=30.0, headers=jobs_admin.headers
    ) as client:
        yield client


def start_sleep(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.post("/api/v1/test-jobs/sleep", params=params)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()["data"]
    assert response.headers["location"] == f"{JOBS}/{job['id']}"
    return job


def wait_for(
    client: httpx.Client, job_id: str, states: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"{JOBS}/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()["data"]
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job stayed {job['state']}: {job}"
        time.sleep(0.05)


async def await_state(
    client: httpx.AsyncClient, job_id: str, states: set[str], timeout: float = 30.0
) -> tuple[dict[str, Any], str]:
    """Poll from ``client``; returns the job and the PID of the worker that answered."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"{JOBS}/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()["data"]
        if job["state"] in states:
            return job, response.headers["x-worker-pid"]
        assert time.monotonic() < deadline, f"job stayed {job['state']}: {job}"
        await asyncio.sleep(0.05)


# --- life cycle -------------------------------------------------------------------------------


async def test_job_succeeds_and_any_worker_reports_it(jobs_stack: Stack, jobs_admin: Account):
    clients = await pinned_clients(jobs_stack.base_url, headers=jobs_admin.headers)
    try:
        (pid_a, (client_a,)), (pid_b, (client_b,)) = list(clients.items())
        response = await client_a.post("/api/v1/test-jobs/sleep", params={"chunks": 5})
        assert response.status_code == 202, response.text
        assert response.headers["x-worker-pid"] == pid_a
        job = response.json()["data"]
        assert job["state"] == "queued" and job["progress"] == {
            "done": 0,
            "total": None,
            "unit": "rows",
        }

        done, answered_by = await await_state(client_b, job["id"], {"succeeded"})
        assert answered_by == pid_b != pid_a  # read from the other worker
        assert done["result"] == {"chunks": 5, "worker_pid": int(pid_a)}
        assert done["progress"] == {"done": 5, "total": 5, "unit": "rows"}
        assert done["error"] is None and done["cancel_requested"] is False
        assert done["created_at"] <= done["started_at"] <= done["finished_at"]
        assert done["elapsed_seconds"] >= 0
        assert set(done) == {
            "id", "kind", "state", "owner_id", "progress", "cancel_requested", "created_at",
            "started_at", "finished_at", "elapsed_seconds", "result", "error",
        }  # fmt: skip
    finally:
        await close_all(clients)


def test_failing_job_reports_its_error(http: httpx.Client):
    job = start_sleep(http, chunks=2, fail=True)
    failed = wait_for(http, job["id"], {"failed", "succeeded"})
    assert failed["state"] == "failed"
    assert failed["error"] == {"code": "TEST_FAILURE", "message": "this job was asked to fail"}
    assert failed["result"] is None and failed["finished_at"] is not None
    assert_error(http.get(f"{JOBS}/{job['id']}/result"), 409, "JOB_NOT_FINISHED")


async def test_running_job_is_cancelled_at_a_checkpoint(jobs_stack: Stack, jobs_admin: Account):
    clients = await pinned_clients(jobs_stack.base_url, headers=jobs_admin.headers)
    try:
        (_, (client_a,)), (_, (client_b,)) = list(clients.items())
        response = await client_a.post(
            "/api/v1/test-jobs/sleep", params={"chunks": 2000, "delay": 0.01}
        )
        job_id = response.json()["data"]["id"]
        running, _ = await await_state(client_b, job_id, {"running"})
        assert running["started_at"] is not None
        cancel = await client_b.delete(f"{JOBS}/{job_id}")  # the other worker asks
        assert cancel.status_code == 202, cancel.text
        assert cancel.json()["data"]["cancel_requested"] is True
        cancelled, _ = await await_state(client_b, job_id, {"cancelled", "succeeded"})
        assert cancelled["state"] == "cancelled"
        assert cancelled["progress"]["done"] < 2000 and cancelled["result"] is None
        assert cancelled["finished_at"] is not None
        again = await client_a.delete(f"{JOBS}/{job_id}")
        assert_error(again, 409, "JOB_FINISHED")
    finally:
        await close_all(clients)


def test_a_running_job_of_an_unstoppable_kind_refuses_the_cancel(http: httpx.Client):
    # (The test kind registered as a snapshot is; its checkpoints would honour a cancel, so a
    # "succeeded" below proves the request was refused, not queued for later.)
    job = start_sleep(http, chunks=40, delay=0.02, stoppable="false")
    wait_for(http, job["id"], {"running"})
    error = assert_error(http.delete(f"{JOBS}/{job['id']}"), 409, "JOB_NOT_CANCELLABLE")
    assert "cannot be stopped" in error["message"]
    done = wait_for(http, job["id"], {"succeeded", "cancelled", "failed"})
    assert done["state"] == "succeeded" and done["cancel_requested"] is False
    finished = assert_error(http.delete(f"{JOBS}/{job['id']}"), 409, "JOB_FINISHED")
    assert finished["message"] == "the job has already finished (succeeded)"


async def test_queued_job_is_cancelled_before_it_starts(jobs_stack: Stack, jobs_admin: Account):
    clients = await pinned_clients(jobs_stack.base_url, headers=jobs_admin.headers)
    try:
        (_, (client_a,)), _ = list(clients.items())
        # One job slot per worker: the first holds it, the second waits queued.
        first = (await client_a.post("/api/v1/test-jobs/sleep", params={"chunks": 2000})).json()
        second = (await client_a.post("/api/v1/test-jobs/sleep", params={"chunks": 1})).json()
        await await_state(client_a, first["data"]["id"], {"running"})
        queued = (await client_a.get(f"{JOBS}/{second['data']['id']}")).json()["data"]
        assert queued["state"] == "queued" and queued["started_at"] is None

        cancel = await client_a.delete(f"{JOBS}/{second['data']['id']}")
        assert cancel.status_code == 200, cancel.text
        assert cancel.json()["data"]["state"] == "cancelled"
        assert (await client_a.delete(f"{JOBS}/{first['data']['id']}")).status_code == 202
        await await_state(client_a, first["data"]["id"], {"cancelled"})
        # The slot is free again, and the cancelled job never ran.
        still, _ = await await_state(client_a, second["data"]["id"], {"cancelled"})
        assert still["started_at"] is None
    finally:
        await close_all(clients)


async def test_killed_workers_jobs_are_marked_failed(jobs_stack: Stack, jobs_admin: Account):
    clients = await pinned_clients(jobs_stack.base_url, headers=jobs_admin.headers)
    try:
        (pid_a, (client_a,)), (pid_b, (client_b,)) = list(clients.items())
        running = (await client_a.post("/api/v1/test-jobs/sleep", params={"chunks": 5000})).json()
        queued = (await client_a.post("/api/v1/test-jobs/sleep", params={"chunks": 1})).json()
        await await_state(client_b, running["data"]["id"], {"running"})
        os.kill(int(pid_a), signal.SIGKILL)

        for job in (running, queued):
            lost, answered_by = await await_state(client_b, job["data"]["id"], {"failed"})
            assert answered_by == pid_b
            assert lost["error"]["code"] == "WORKER_LOST"
            assert lost["finished_at"] is not None
    finally:
        await close_all(clients)
        deadline = time.monotonic() + 30
        while len(worker_pids(jobs_stack)) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)


# --- authorization ----------------------------------------------------------------------------


def test_owners_see_their_jobs_admins_all_others_404(jobs_stack: Stack, http: httpx.Client):
    with httpx.Client(base_url=jobs_stack.base_url, timeout=30.0) as anon:
        owner = register(anon)
        other = register(anon)
        assert_error(anon.post("/api/v1/test-jobs/sleep"), 401)

        mine = anon.post("/api/v1/test-jobs/sleep", headers=owner.headers)
        assert mine.status_code == 202, mine.text
        job_id = mine.json()["data"]["id"]
        assert mine.json()["data"]["owner_id"] == owner.id
        done = wait_for(http, job_id, {"succeeded"})  # the admin reads anyone's
        assert done["owner_id"] == owner.id

        own = anon.get(f"{JOBS}/{job_id}", headers=owner.headers)
        assert own.status_code == 200 and own.json()["data"]["state"] == "succeeded"
        listed = anon.get(JOBS, headers=owner.headers).json()
        assert [item["id"] for item in listed["data"]] == [job_id]
        assert listed["meta"]["total"] == 1

        for method in ("GET", "DELETE"):
            foreign = anon.request(method, f"{JOBS}/{job_id}", headers=other.headers)
            assert_error(foreign, 404, "NOT_FOUND")
        assert_error(anon.get(f"{JOBS}/{job_id}/result", headers=other.headers), 404)
        assert anon.get(JOBS, headers=other.headers).json()["meta"]["total"] == 0
        assert_error(anon.get(f"{JOBS}/{job_id}"), 401)
        assert_error(anon.get(f"{JOBS}/no-such-job", headers=owner.headers), 404, "NOT_FOUND")

        everyone = http.get(JOBS, params={"per_page": 100}).json()
        assert job_id in {item["id"] for item in everyone["data"]}
        # Only admins export or snapshot.
        assert_error(anon.get("/api/v1/dump/users?async=true", headers=owner.headers), 403)
        assert_error(anon.post("/api/v1/admin/snapshot?async=true", headers=owner.headers), 403)


def test_a_demoted_admin_loses_the_jobs_started_as_admin(jobs_stack: Stack, http: httpx.Client):
    with httpx.Client(base_url=jobs_stack.base_url, timeout=30.0) as anon:
        ada = register(anon)
        mine = anon.post("/api/v1/test-jobs/sleep", headers=ada.headers)  # as a user
        assert mine.status_code == 202, mine.text
        mine_id = mine.json()["data"]["id"]
        promoted = http.patch(f"/api/v1/users/{ada.id}", json={"role": "admin"})
        assert promoted.status_code == 200, promoted.text
        as_admin = login(anon, ada.user["email"], ada.password)
        started = anon.get("/api/v1/dump/users?async=true", headers=as_admin.headers)
        assert started.status_code == 202, started.text
        export_id = started.json()["data"]["id"]
        assert started.json()["data"]["owner_id"] == ada.id
        wait_for(http, export_id, {"succeeded"})
        # Demoted: the export (every user's email) was admin work; the plain job stays hers.
        demoted = http.patch(f"/api/v1/users/{ada.id}", json={"role": "user"})
        assert demoted.status_code == 200, demoted.text
        as_user = login(anon, ada.user["email"], ada.password)
        for path in (f"{JOBS}/{export_id}", f"{JOBS}/{export_id}/result"):
            assert_error(anon.get(path, headers=as_user.headers), 404, "NOT_FOUND")
        assert_error(anon.delete(f"{JOBS}/{export_id}", headers=as_user.headers), 404)
        listed = anon.get(JOBS, headers=as_user.headers).json()
        assert [item["id"] for item in listed["data"]] == [mine_id]
        assert listed["meta"]["total"] == 1
        assert anon.get(f"{JOBS}/{mine_id}", headers=as_user.headers).status_code == 200
        assert http.get(f"{JOBS}/{export_id}/result").status_code == 200  # admins still do


def test_jobs_list_refuses_an_unknown_state(http: httpx.Client):
    error = assert_error(http.get(JOBS, params={"state": "done"}), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "query.state"


def test_jobs_list_refuses_a_parameter_it_does_not_read(http: httpx.Client):
    """A misspelt filter listed every job; the typed lists refuse an unknown field too."""
    response = http.get(JOBS, params={"stat": "failed", "page": 1})
    error = assert_error(response, 400, "BAD_QUERY")
    assert error["details"][0]["field"] == "stat"
    assert "'stat'" in error["message"] and "state" in error["message"]
    long_name = "x" * 500
    error = assert_error(http.get(JOBS, params={long_name: "1"}), 400, "BAD_QUERY")
    assert len(error["details"][0]["field"]) < 50
    # without a token: the 401 first, no word about the query (review)
    assert_error(httpx.get(str(http.base_url).rstrip("/") + JOBS, params={"stat": "x"}), 401)


# --- the jobs behind real routes ----------------------------------------------------------------


def test_export_job_result_is_the_dump(jobs_stack: Stack, http: httpx.Client):
    rows = [
        {"sku": f"S-{i:05}", "price": Decimal(f"{i}.{i % 100:02}"), "tags": ["a", i], "n": {"i": i}}
        for i in range(ASYNC_ROWS + 250)
    ]
    bulk_insert(jobs_stack, "job_export_items", rows)
    sync = http.get("/api/v1/dump/job_export_items", params={"async": "false"})
    assert sync.status_code == 200 and sync.content.count(b"\n") == len(rows)

    started = http.get("/api/v1/dump/job_export_items")  # past JOB_ASYNC_ROWS: a job
    assert started.status_code == 202, started.text
    job_id = started.json()["data"]["id"]
    assert started.headers["location"] == f"{JOBS}/{job_id}"
    done = wait_for(http, job_id, {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    assert done["progress"] == {"done": len(rows), "total": len(rows), "unit": "rows"}
    result = done["result"]
    assert result["url"] == f"{JOBS}/{job_id}/result" and result["rows"] == len(rows)

    download = http.get(result["url"])
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("application/x-ndjson")
    assert download.content == sync.content
    assert result["bytes"] == len(sync.content)

    small = http.get("/api/v1/dump/users")  # under the threshold: streamed as before
    assert small.status_code == 200 and small.headers["content-type"].startswith(
        "application/x-ndjson"
    )
    assert http.get("/api/v1/dump/users", params={"async": "true"}).status_code == 202
    missing = http.get("/api/v1/dump/no_such_table", params={"async": "true"})
    assert_error(missing, 404, "NOT_FOUND")  # refused now, not as a failed job


def test_result_ranges_and_their_errors(http: httpx.Client):
    """RFC 9110: a satisfiable range is 206; one starting past the end is 416 in the envelope
    (with ``Content-Range: bytes */size``); anything else about Range is ignored (200)."""
    started = http.get("/api/v1/dump/users", params={"async": "true"})
    assert started.status_code == 202, started.text
    done = wait_for(http, started.json()["data"]["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    url = done["result"]["url"]
    whole = http.get(url).content
    size = len(whole)
    assert size > 10
    for header, expected in [("bytes=0-4", whole[:5]), ("bytes=-3", whole[-3:])]:
        part = http.get(url, headers={"Range": header})
        assert (part.status_code, part.content) == (206, expected), header
    ignored = ["bytes=abc", "bytes=5-2", "items=0-1", "bytes", "bytes=-", "bytes=0-1,,2-3"]
    ignored += [f"bytes=0-1,{size}-", "bytes=" + "9" * 30 + "-"]
    for header in ignored:
        response = http.get(url, headers={"Range": header})
        assert (response.status_code, response.content) == (200, whole), header
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        response = http.get(url, headers={"Range": header})
        assert_error(response, 416, "RANGE_NOT_SATISFIABLE")
        assert response.headers["content-range"] == f"bytes */{size}"
    stale = http.get(url, headers={"Range": f"bytes={size}-", "If-Range": '"old"'})
    assert (stale.status_code, stale.content) == (200, whole)  # a stale If-Range: all of it


def test_result_answers_conditional_requests(jobs_stack: Stack, http: httpx.Client):
    """On the real server, HEAD included (the cases: test_jobs_result_conditional.py): the
    gzip coding has its own strong ETag; the tag or date just sent is 304, another If-Match
    or a past If-Unmodified-Since is 412."""
    rows = [{"id": f"c{i:04}", "text": f"row {i} " * 4} for i in range(100)]  # past 1024 bytes
    bulk_insert(jobs_stack, "job_conditional_items", rows)
    started = http.get("/api/v1/dump/job_conditional_items", params={"async": "true"})
    assert started.status_code == 202, started.text
    done = wait_for(http, started.json()["data"]["id"], {"succeeded", "failed"})
    url = done["result"]["url"]
    plain = http.get(url, headers={"Accept-Encoding": "identity"})
    zipped = http.get(url, headers={"Accept-Encoding": "gzip"})
    etag, modified = plain.headers["etag"], plain.headers["last-modified"]
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == plain.content
    assert zipped.headers["etag"] == etag[:-1] + '-gzip"'
    for method, headers in [
        ("GET", {"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["etag"]}),
        ("HEAD", {"Accept-Encoding": "identity", "If-None-Match": etag}),
        ("GET", {"Accept-Encoding": "identity", "If-Modified-Since": modified}),
    ]:
        response = http.request(method, url, headers=headers)
        assert (response.status_code, response.content) == (304, b""), headers
    for headers in (
        {"If-Match": '"nope"'},
        {"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
    ):
        assert_error(http.get(url, headers=headers), 412, "PRECONDITION_FAILED")


@pytest.mark.parametrize(
    ("header", "size", "verdict"),
    [
        ("bytes=0-0", 1, "serve"),
        ("Bytes = 2-, -1", 3, "serve"),
        ("bytes=0-99", 3, "serve"),  # the end is clamped to the file
        ("bytes=3-", 3, "unsatisfiable"),
        ("bytes=-0", 3, "unsatisfiable"),
        ("bytes=3-4,5-", 3, "unsatisfiable"),
        ("bytes=0-1,3-", 3, "ignore"),  # partly satisfiable: the whole file
        ("bytes=0-", 0, "ignore"),  # an empty file
        ("bytes=1-0", 3, "ignore"),
        ("bytes=x-1", 3, "ignore"),
        ("bytes=0-1" + ",0-1" * 100, 3, "ignore"),
        ("items=0-1", 3, "ignore"),
        ("bytes", 3, "ignore"),
    ],
)
def test_range_verdict(header: str, size: int, verdict: str):
    assert range_verdict(header, size) == verdict


def test_snapshot_job_result_matches_the_synchronous_answer(http: httpx.Client):
    sync = http.post("/api/v1/admin/snapshot", params={"async": "false"})
    assert sync.status_code == 200, sync.text
    started = http.post("/api/v1/admin/snapshot", params={"async": "true"})
    assert started.status_code == 202, started.text
    assert started.json()["data"]["kind"] == "snapshot"
    done = wait_for(http, started.json()["data"]["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    expected, got = sync.json()["data"], done["result"]
    assert set(got) == set(expected)
    assert os.path.dirname(got["path"]) == os.path.dirname(expected["path"])
    assert got["generation"] > expected["generation"] and got["bytes"] > 0
    assert_error(http.get(f"{JOBS}/{done['id']}/result"), 404, "NOT_FOUND")  # no file to serve


def test_csv_export_job_result_is_the_csv_export(jobs_stack: Stack, http: httpx.Client):
    rows = [{"sku": f"C-{i:04}", "price": Decimal(f"{i}.5"), "note": "a,b\nc"} for i in range(700)]
    bulk_insert(jobs_stack, "job_csv_items", rows)
    url = "/api/v1/batch/job_csv_items/export"
    sync = http.get(url, params={"async": "false", "price__gte": 100})
    assert sync.status_code == 200, sync.text
    started = http.get(url, params={"async": "true", "price__gte": 100})
    assert started.status_code == 202, started.text
    done = wait_for(http, started.json()["data"]["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    assert done["kind"] == "csv_export" and done["result"]["format"] == "csv"
    download = http.get(done["result"]["url"])
    assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
    assert download.content == sync.content
    # rows are not counted in a CSV (a cell may hold line breaks): no key rather than a null
    assert set(done["result"]) == {"url", "file", "format", "media_type", "bytes"}
    assert done["result"]["bytes"] == len(download.content)


def test_csv_export_job_has_the_columns_of_the_request(jobs_stack: Stack, http: httpx.Client):
    """A field first met at record 600: past the job's first chunk (DUMP_CHUNK_SIZE, 500), within
    the request's (1000). Both choose the columns from the same first records."""
    rows = [{"id": f"h{i:04}", "a": i, **({"late": "x"} if i >= 600 else {})} for i in range(900)]
    bulk_insert(jobs_stack, "job_csv_late", rows)
    url = "/api/v1/batch/job_csv_late/export"
    sync = http.get(url, params={"async": "false"})
    assert sync.status_code == 200, sync.text
    assert sync.text.startswith("id,a,late,created_at,updated_at,version,_extra\r\n")
    started = http.get(url, params={"async": "true"})
    assert started.status_code == 202, started.text
    done = wait_for(http, started.json()["data"]["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    assert http.get(done["result"]["url"]).content == sync.content


def post_import(
    http: httpx.Client, table: str, body: bytes, mode: str, **params: str
) -> httpx.Response:
    """``POST /batch/import`` of ``body``: ``mode`` "false" answers the report, "true" a job."""
    return http.post(
        "/api/v1/batch/import",
        params={"table": table, "async": mode, **params},
        content=body,
        headers={"Content-Type": "text/csv"},
    )


def import_job(http: httpx.Client, table: str, body: bytes, **params: str) -> dict[str, Any]:
    """The import of ``body`` as a job, once it has ended."""
    started = post_import(http, table, body, "true", **params)
    assert started.status_code == 202, started.text
    return wait_for(http, started.json()["data"]["id"], {"succeeded", "failed"}, timeout=60)


def test_import_job_report_is_the_synchronous_report(http: httpx.Client):
    lines = ["sku,qty"] + [f"I-{i},{i}" for i in range(300)] + ["bad,not json {"]
    body = ("\n".join(lines) + "\n").encode()
    sync = post_import(http, "job_import_a", body, "false")
    assert sync.status_code == 200, sync.text
    done = import_job(http, "job_import_b", body)
    assert done["state"] == "succeeded" and done["kind"] == "import", done
    expected = {**sync.json()["data"], "table": "job_import_b"}
    assert done["result"] == expected
    assert done["progress"] == {"done": len(body), "total": len(body), "unit": "bytes"}


def test_an_import_job_naming_a_huge_column_in_its_errors_records_its_end(http: httpx.Client):
    """QA: 100 row errors naming a 100,000-character column made a 10 MB report, over the
    store's record limit: the job could not record its end and was later declared lost to a
    worker crash. Each error's field and message are cut to 1,000 characters, both ways."""
    name = "c" * 100_000
    body = (f"id,{name}\n" + "".join(f'r{i},"[1,"\n' for i in range(100)) + "ok,5\n").encode()
    sync = post_import(http, "job_import_wide_a", body, "false")
    assert sync.status_code == 200, sync.text[:300]
    report = sync.json()["data"]
    assert (report["imported"], report["failed"], len(report["errors"])) == (1, 100, 100)
    assert all(len(e["field"]) == 1000 and e["field"].endswith("…") for e in report["errors"])
    done = import_job(http, "job_import_wide_b", body)
    assert done["state"] == "succeeded", str(done)[:500]
    assert done["result"] == {**report, "table": "job_import_wide_b"}


def test_writes_by_filter_as_jobs_match_the_synchronous_answers(
    jobs_stack: Stack, http: httpx.Client
):
    bulk_insert(jobs_stack, "job_filter_items", [{"group": i % 4, "n": i} for i in range(400)])
    url = "/api/v1/data/job_filter_items"
    sync = http.patch(url, params={"group": 0, "async": "false"}, json={"data": {"seen": True}})
    assert sync.status_code == 200, sync.text
    started = http.patch(url, params={"group": 1, "async": "true"}, json={"data": {"seen": True}})
    assert started.status_code == 202, started.text
    done = wait_for(http, started.json()["data"]["id"], {"succeeded", "failed"})
    assert done["kind"] == "update_where" and done["result"] == sync.json()["data"]
    assert http.get(url, params={"seen": "true"}).json()["meta"]["total"] == 200

    sync = http.delete(url, params={"group": 2, "async": "false"})
    assert sync.status_code == 200, sync.text
    started = http.delete(url, params={"group": 3, "async": "true"})
    assert started.status_code == 202, started.text
    done = wait_for(http, started.json()["data"]["id"], {"succeeded", "failed"})
    assert done["kind"] == "delete_where" and done["result"] == sync.json()["data"]
    assert done["progress"] == {"done": 100, "total": 100, "unit": "rows"}
    assert http.get(url).json()["meta"]["total"] == 200


def test_a_filter_write_refused_on_its_face_is_answered_not_a_job(http: httpx.Client):
    """jobs QA: what needs no data to refuse (users, managed or no fields) was a 202, then a
    job that failed with the synchronous route's error; now it is that error, and no job."""
    url = "/api/v1/data/job_filter_items"
    before = http.get("/api/v1/jobs").json()["meta"]["total"]
    refusals = [
        (http.patch(url, params={"n__gte": 0, "async": "true"}, json={"data": {"id": "x"}}), 422),
        (http.patch(url, params={"n__gte": 0, "async": "true"}, json={"data": {}}), 422),
        (
            http.patch(
                "/api/v1/data/users", params={"age": 1, "async": "true"}, json={"data": {"age": 2}}
            ),
            400,
        ),
        (http.delete("/api/v1/data/users", params={"age": 1, "async": "true"}), 400),
    ]
    for response, status in refusals:
        assert_error(response, status, "TYPED_TABLE" if status == 400 else "VALIDATION_ERROR")
    assert http.get("/api/v1/jobs").json()["meta"]["total"] == before


def test_a_filter_write_over_the_cap_is_a_400_not_a_job_that_fails(
    jobs_stack: Stack, http: httpx.Client
):
    rows = [{"n": i} for i in range(FILTER_WRITE_CAP + 300)]
    bulk_insert(jobs_stack, "job_filter_capped", rows)
    url = "/api/v1/data/job_filter_capped"
    # Over JOB_ASYNC_ROWS but within the cap: a job by its size alone.
    within = http.patch(url, params={"n__lt": ASYNC_ROWS + 100}, json={"data": {"a": 1}})
    assert within.status_code == 202, within.text
    done = wait_for(http, within.json()["data"]["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded" and done["result"]["updated"] == ASYNC_ROWS + 100
    changed = ASYNC_ROWS + 100
    assert done["progress"] == {"done": changed, "total": changed, "unit": "rows"}  # was 0
    # Over the cap: refused at once, nothing changed (was: 202, then a job failing with it).
    for response in (
        http.patch(url, params={"all": "true"}, json={"data": {"b": 1}}),
        http.delete(url, params={"all": "true"}),
        http.patch(url, params={"all": "true", "async": "true"}, json={"data": {"b": 1}}),
        http.delete(url, params={"all": "true", "async": "true"}),
    ):
        error = assert_error(response, 400, "TOO_MANY_ROWS")
        assert error["details"][0]["matched"] == len(rows)
    assert http.get(f"{url}/count").json()["data"]["count"] == len(rows)
    assert http.get(f"{url}/count", params={"b": 1}).json()["data"]["count"] == 0


# --- pieces without a stack ---------------------------------------------------------------------


def test_staleness_and_public_view():
    now = datetime(2025, 1, 1, 12, 0, 10, tzinfo=UTC)
    job = {"state": "running", "heartbeat_at": "2025-01-01T12:00:00.000000Z"}
    assert is_stale(job, 5, now) and not is_stale(job, 15, now)
    assert not is_stale({**job, "state": "succeeded"}, 5, now)
    view = to_public({**job, "started_at": "2025-01-01T12:00:00.000000Z",
                      "finished_at": "2025-01-01T12:00:01.500000Z", "worker": "h:1"})  # fmt: skip
    assert view["elapsed_seconds"] == 1.5 and "worker" not in view and "heartbeat_at" not in view
    # A merge patch with a null total removed the key from the record: the view keeps it.
    patched = to_public({**job, "progress": {"done": 512, "unit": "bytes"}})
    assert patched["progress"] == {"done": 512, "total": None, "unit": "bytes"}


def test_async_rule_and_result_directory(tmp_path: Path):
    assert run_as_job(None, 11, 10) and not run_as_job(None, 10, 10)
    assert run_as_job(True, 0, 10) and not run_as_job(False, 99, 10)
    settings = Settings(store_socket=str(tmp_path / "store.sock"))
    assert result_dir(settings) == tmp_path / "jobs"
    assert result_dir(Settings(store_socket="tcp://db:7000")).name == "memdb-jobs"
    assert result_dir(Settings(job_result_dir=str(tmp_path / "x"))) == tmp_path / "x"


async def test_result_files_are_owner_only(tmp_path: Path):
    """Exports hold user and order data: 0600 files in a 0700 folder, whatever the umask."""
    results = tmp_path / "jobs"
    ctx = JobContext("job-1", {}, cast(Store, None), Settings(), cast(JobStore, None), results)
    old = os.umask(0o022)  # the usual default, which gives 0644 files
    try:
        with result_file(ctx, ".csv") as (out, final):
            await out.write(b"email\nada@example.com\n")
            partial = final.with_name(final.name + ".part")
            assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert final.read_bytes() == b"email\nada@example.com\n"
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert stat.S_IMODE(results.stat().st_mode) == 0o700


def test_settings_refuse_a_short_stale_time_and_the_dev_admin_password_in_production():
    with pytest.raises(ValueError, match="JOB_STALE_SECONDS"):
        Settings(job_heartbeat_seconds=2, job_stale_seconds=5)
    secret = "k3Y-9vQz_Lw2Rt8Xb5Nm1Hp4Jc7Fd0Sg6Ae-Uo3Iy"  # no run, no repeat
    with pytest.raises(ValueError, match="development default"):
        Settings(
            env="production", jwt_secret=secret, admin_email="root@example.com",
            admin_password="dev-only-admin-password",
        )  # fmt: skip
