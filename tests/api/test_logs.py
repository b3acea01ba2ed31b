"""JSON logs: one object per line, written whole, every line of a request carrying its id.

In-process tests check the rendering and the 500 path; the rest run gunicorn (2 workers, at
LOG_LEVEL=info) and read its output file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from api import logs
from api.deps import get_store
from api.logs import JsonLineHandler, json_formatter
from api.main import create_app
from api.middleware import LOGGED_PATH_CHARS, logged_path
from api.settings import Settings
from tests.support.auth import register
from tests.support.inprocess import in_process
from tests.support.logs import Record, json_lines, wait_for_records
from tests.support.rawhttp import parse_responses, read_until_closed, request
from tests.support.stack import Stack, running_stack
from tests.support.workers import close_all, pinned_clients


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[Path]:
    """Root-logger output at INFO, through the production handler, into a file."""
    path = tmp_path / "api.log"
    with path.open("ab") as sink:
        handler = JsonLineHandler(sink.fileno())
        handler.setFormatter(json_formatter())
        root = logging.getLogger()
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield path
        finally:
            root.removeHandler(handler)
            root.setLevel(level)


def test_each_line_is_one_write_call(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []

    def write(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return len(data)

    monkeypatch.setattr(logs, "os", SimpleNamespace(write=write, getpid=os.getpid))
    handler = JsonLineHandler(99)
    handler.setFormatter(json_formatter())
    big = "x" * 200_000  # far above PIPE_BUF and the io buffer size
    record = logging.LogRecord("gunicorn.error", logging.INFO, __file__, 1, "big %s", (big,), None)
    handler.emit(record)
    assert len(writes) == 1 and writes[0].endswith(b"\n") and writes[0].count(b"\n") == 1
    line = orjson.loads(writes[0])
    assert line["event"] == f"big {big}"


def test_an_access_line_with_a_string_that_is_not_utf8_is_still_one_json_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lone surrogate (bytes that were not UTF-8, decoded by Python) is written escaped; orjson
    alone raised, and the line was lost."""
    writes: list[bytes] = []

    def write(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return len(data)

    monkeypatch.setattr(logs, "os", SimpleNamespace(write=write, getpid=os.getpid))
    odd = os.fsdecode(b"agent\xff")
    logs.write_access_line([7], "api.access", "access", {"status": 200, "user_agent": odd})
    (line,) = writes
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert json.loads(line)["user_agent"] == odd  # orjson refuses the escaped surrogate


def test_foreign_record_gets_the_same_fields_and_a_string_traceback() -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "failed %s", ("x",), exc_info
    )
    line = orjson.loads(json_formatter().format(record))
    assert line["event"] == "failed x"
    assert line["level"] == "error" and line["logger"] == "uvicorn.error"
    assert line["process"] == "api" and line["pid"] == os.getpid()
    assert datetime.fromisoformat(line["timestamp"]).tzinfo is not None
    assert "Traceback" in line["exception"] and "ValueError: bad thing" in line["exception"]


async def test_unhandled_error_lines_carry_the_request_id(captured: Path) -> None:
    """The traceback and the access line of a 500: JSON, one line each, same request id."""
    app = create_app(Settings())

    class BrokenStore:
        async def call(
            self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
        ) -> Any:
            raise RuntimeError("boom")

    app.dependency_overrides[get_store] = BrokenStore
    async with in_process(app) as http:
        response = await http.get("/api/v1/ready", headers={"X-Request-ID": "rid-500"})
    assert response.status_code == 500
    records = [record for record in json_lines(captured) if record["logger"].startswith("api.")]
    assert records and all(record["request_id"] == "rid-500" for record in records), records
    (error,) = [record for record in records if record["event"] == "unhandled_error"]
    assert error["level"] == "error" and error["path"] == "/api/v1/ready"
    assert "RuntimeError: boom" in error["exception"]
    (access,) = [record for record in records if record["event"] == "access"]
    assert access["status"] == 500 and access["error"] == "RuntimeError"


async def test_unhandled_error_line_cuts_a_long_path_as_the_others_do(captured: Path) -> None:
    """QA: the 500's line named the whole path (5,006 characters) where every other line of the
    request cuts it past LOGGED_PATH_CHARS."""
    app = create_app(Settings())

    async def boom(rest: str) -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom/{rest:path}", boom)
    path = "/boom/" + "a" * 5000
    async with in_process(app) as http:
        assert (await http.get(path)).status_code == 500
    records = [record for record in json_lines(captured) if record["logger"].startswith("api.")]
    (error,) = [record for record in records if record["event"] == "unhandled_error"]
    (access,) = [record for record in records if record["event"] == "access"]
    assert error["path"] == access["path"] == logged_path(path)
    assert len(error["path"]) < LOGGED_PATH_CHARS + 40


# --- the real stack -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def info_stack() -> Iterator[Stack]:
    with running_stack(workers=2, extra_env={"LOG_LEVEL": "info"}) as running:
        # Ready means one worker answers; a worker still starting when a test stops the store
        # would fail to boot, and gunicorn would exit.
        wait_for_records(
            api_log(running),
            lambda found: sum(r["event"] == "Application startup complete." for r in found) == 2,
        )
        yield running


def api_log(stack: Stack) -> Path:
    return stack.workdir / "api.log"


def access_lines(records: list[Record], request_ids: set[str]) -> list[Record]:
    return [r for r in records if r.get("event") == "access" and r.get("request_id") in request_ids]


def quiet_offset(stack: Stack) -> int:
    """The log's size once every earlier request has written its lines.

    An access line is written just after its response is sent, so the last request before a
    test's own (a readiness poll, say) may still be writing: send a marker, wait for its line.
    """
    marker = f"marker-{uuid.uuid4().hex}"
    httpx.get(stack.url("/api/v1/health"), headers={"X-Request-ID": marker}, timeout=10.0)
    wait_for_records(api_log(stack), lambda found: bool(access_lines(found, {marker})))
    return api_log(stack).stat().st_size


@pytest.mark.integration
async def test_lines_from_two_workers_never_interleave(info_stack: Stack) -> None:
    by_pid = await pinned_clients(info_stack.base_url, workers=2, per_worker=4)
    clients = [client for group in by_pid.values() for client in group]
    prefix = uuid.uuid4().hex[:8]
    # Long ids make long lines: more chances to interleave if a line took two writes.
    ids = [f"{prefix}-{n:04d}-" + "r" * 100 for n in range(400)]
    try:

        async def fire(client: httpx.AsyncClient, batch: list[str]) -> set[str]:
            pids = set()
            for request_id in batch:
                response = await client.get("/api/v1/health", headers={"X-Request-ID": request_id})
                assert response.status_code == 200
                pids.add(response.headers["x-worker-pid"])
            return pids

        batches = [ids[i :: len(clients)] for i in range(len(clients))]
        pids = set().union(*await asyncio.gather(*map(fire, clients, batches)))
    finally:
        await close_all(by_pid)
    assert len(pids) >= 2
    wanted = set(ids)
    records = wait_for_records(
        api_log(info_stack), lambda found: len(access_lines(found, wanted)) == len(ids)
    )
    assert {str(record["pid"]) for record in access_lines(records, wanted)} == pids


@pytest.mark.integration
def test_access_line_fields_and_no_secrets(info_stack: Stack) -> None:
    with httpx.Client(base_url=info_stack.base_url, timeout=10.0) as client:
        account = register(client)
        start = quiet_offset(info_stack)
        response = client.get(
            "/api/v1/users/me?probe=1", headers={**account.headers, "X-Request-ID": "rid-me"}
        )
    assert response.status_code == 200
    records = wait_for_records(
        api_log(info_stack), lambda found: bool(access_lines(found, {"rid-me"})), start
    )
    (access,) = access_lines(records, {"rid-me"})
    assert access["method"] == "GET" and access["path"] == "/api/v1/users/me"  # no query
    assert access["status"] == 200 and access["user_id"] == account.id
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    assert access["level"] == "info" and access["process"] == "api"
    assert str(access["pid"]) == response.headers["x-worker-pid"]
    assert datetime.fromisoformat(access["timestamp"]).tzinfo is not None
    text = api_log(info_stack).read_text()
    for secret in (account.access_token, account.refresh_token, account.password):
        assert secret not in text


@pytest.mark.integration
def test_a_long_path_is_cut_in_the_log_lines(info_stack: Stack) -> None:
    """QA: a 16,000-character path went whole into every line of its request (16 KB each)."""
    path = "/garbage/" + "x" * 12_000
    with httpx.Client(base_url=info_stack.base_url, timeout=10.0) as client:
        start = quiet_offset(info_stack)
        response = client.get(path, headers={"X-Request-ID": "rid-long"})
    assert response.status_code == 404
    records = wait_for_records(
        api_log(info_stack), lambda found: bool(access_lines(found, {"rid-long"})), start
    )
    (access,) = access_lines(records, {"rid-long"})
    assert access["path"] == path[:1024] + f"… ({len(path)} characters)"
    assert access["status"] == 404


@pytest.mark.integration
def test_every_line_of_a_request_carries_its_id(info_stack: Stack) -> None:
    """With the store down, /ready logs a warning and the access line: both with the id."""
    path = api_log(info_stack)
    store = info_stack.processes["store"]
    store.terminate()
    store.wait(10)
    try:
        start = quiet_offset(info_stack)
        response = httpx.get(
            info_stack.url("/api/v1/ready"), headers={"X-Request-ID": "rid-down"}, timeout=10.0
        )
        assert response.status_code == 503
        pid = int(response.headers["x-worker-pid"])
        records = wait_for_records(
            path, lambda found: bool(access_lines(found, {"rid-down"})), start
        )
    finally:
        info_stack.restart_store()
    # Everything that worker wrote from just before the request to its access line. Another
    # client (a test run elsewhere on this host) may reach the port too: its lines must carry
    # their own request id, and ours must all carry ours.
    mine = [record for record in records if record["pid"] == pid]
    end = next(i for i, r in enumerate(mine) if r in access_lines(mine, {"rid-down"}))
    window = mine[: end + 1]
    assert all(record.get("request_id") for record in window), window
    produced = [record for record in window if record["request_id"] == "rid-down"]
    # The worker's store client tells of the lost connection once, in the call that finds it
    # lost: this request's, unless another call of that worker found it first.
    if produced[0]["event"] == "store_connection_lost":
        produced = produced[1:]
    assert [record["event"] for record in produced] == ["store_unavailable", "access"]
    assert produced[0]["level"] == "warning" and produced[1]["status"] == 503


@pytest.mark.integration
def test_a_500_under_gunicorn_logs_json_with_the_request_id() -> None:
    """Our traceback line, uvicorn's ("Exception in ASGI application") and the access line."""
    app = "tests.support.failing_app:create_failing_app()"
    with running_stack(workers=1, extra_env={"LOG_LEVEL": "info"}, app=app) as stack:
        start = quiet_offset(stack)
        response = httpx.get(stack.url("/boom"), headers={"X-Request-ID": "rid-boom"}, timeout=10)
        assert response.status_code == 500
        assert "boom for the logs test" not in response.text
        # uvicorn closes the connection after an unhandled error: the 500 says so, and a
        # request pipelined behind it is not answered on that connection.
        with socket.create_connection(("127.0.0.1", stack.port)) as sock:
            sock.sendall(request("GET", "/boom") + request("GET", "/api/v1/health"))
            received, closed = read_until_closed(sock)
        assert closed, received
        (answer,) = parse_responses(received)
        assert (answer.status, answer.headers["connection"]) == (500, "close")
        records = wait_for_records(
            api_log(stack),
            lambda found: any(r.get("logger") == "uvicorn.error" for r in found),
            start,
        )
    assert all(record.get("request_id") for record in records), records
    records = [record for record in records if record["request_id"] == "rid-boom"]
    assert [(r["logger"], r["level"]) for r in records] == [
        ("api.access", "info"),
        ("api.errors", "error"),
        ("uvicorn.error", "error"),
    ]
    assert records[0]["status"] == 500 and records[0]["error"] == "RuntimeError"
    for traceback in (records[1]["exception"], records[2]["exception"]):
        assert "RuntimeError: boom for the logs test" in traceback
