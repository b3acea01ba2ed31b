"""HEAD is safe (RFC 9110 §9.2.1): on the GETs that may start a background job (a dump, a CSV
export) it starts none, and reads no record; it answers the headers of ``?async=false``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.auth.principals import Principal
from api.deps import get_caller, get_store
from api.jobs.web import get_jobs
from api.main import create_app
from api.settings import Settings
from tests.support.factories import assert_error, create_record, token
from tests.support.inprocess import in_process

API = "/api/v1"
ADMIN = Principal(id="admin-id", role="admin", session_id="s")
STARTERS = [
    (f"{API}/dump/things", "application/x-ndjson"),
    (f"{API}/batch/things/export", "text/csv; charset=utf-8"),
]


class Store:
    """A table far past JOB_ASYNC_ROWS; records every command."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        self.calls.append(command)
        if command == "count":
            return 10**9
        return {"items": [{"id": "r1", "n": 1}], "cursor": None}


class Jobs:
    def __init__(self) -> None:
        self.started: list[str] = []

    async def submit(self, kind: str, owner: str, params: Any, func: Any = None) -> Any:
        self.started.append(kind)
        return {"id": "j1", "kind": kind, "owner": owner, "status": "queued", "version": 1}


@pytest.fixture
def app() -> FastAPI:
    app = create_app(Settings())
    app.dependency_overrides[get_caller] = lambda: ADMIN
    return app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(app) as client:
        yield client


@pytest.mark.parametrize(("url", "media_type"), STARTERS)
@pytest.mark.parametrize("flag", [None, "true", "false"])
async def test_head_starts_no_job_and_reads_no_record(
    app: FastAPI, http: httpx.AsyncClient, url: str, media_type: str, flag: str | None
) -> None:
    """HEAD was run as the GET: `?async=true` (or a table past JOB_ASYNC_ROWS) started a job
    and answered 202; without one it read the whole table for a body nobody receives."""
    store, jobs = Store(), Jobs()
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_jobs] = lambda: jobs
    params = {} if flag is None else {"async": flag}
    response = await http.head(url, params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == b"" and "content-length" not in response.headers
    assert jobs.started == [] and store.calls == ["count"]  # the 404 check only
    # The GET itself still starts its job.
    started = await http.get(url, params=params)
    assert started.status_code == (200 if flag == "false" else 202)


@pytest.mark.integration
def test_head_on_a_job_starting_get_creates_no_job(client: httpx.Client) -> None:
    table = f"t_{token()}"
    create_record(client, table, n=1)
    jobs = client.get(f"{API}/jobs").json()["meta"]["total"]
    dump = client.head(f"{API}/dump/{table}", params={"async": "true"})
    assert dump.status_code == 200, dump.headers
    assert dump.headers["content-type"] == "application/x-ndjson"
    export = client.head(f"{API}/batch/{table}/export", params={"async": "true"})
    assert export.status_code == 200
    assert export.headers["content-disposition"] == f'attachment; filename="{table}.csv"'
    assert client.get(f"{API}/jobs").json()["meta"]["total"] == jobs
    # The GET's refusals are the HEAD's: a missing table, a parameter it does not take.
    missing = client.head(f"{API}/dump/t_{token()}", params={"async": "true"})
    assert missing.status_code == 404 and missing.content == b""
    assert client.head(f"{API}/batch/{table}/export", params={"page": "2"}).status_code == 400
    assert client.head(f"{API}/dump/{table}", params={"n": "1"}).status_code == 400
    assert_error(client.get(f"{API}/dump/{table}", params={"n": "1"}), 400, "BAD_QUERY")


@pytest.mark.integration
@pytest.mark.parametrize("path", ["dump/{table}", "batch/{table}/export"])
def test_head_and_get_of_an_empty_table_agree_on_the_coding(
    client: httpx.Client, path: str
) -> None:
    """QA: an empty table's dump was one empty, plain body, while its HEAD said gzip."""
    table = f"t_{token()}"
    record = create_record(client, table, n=1)
    assert client.delete(f"{API}/data/{table}/{record['id']}").status_code == 204
    url = f"{API}/{path.format(table=table)}"
    gzip = {"Accept-Encoding": "gzip"}
    head = client.head(url, params={"async": "false"}, headers=gzip)
    get = client.get(url, params={"async": "false"}, headers=gzip)
    assert head.status_code == get.status_code == 200, get.text
    assert head.headers.get("content-encoding") == get.headers.get("content-encoding") == "gzip"
    assert get.content == b"" if path.startswith("dump") else get.content.startswith(b"id,")
