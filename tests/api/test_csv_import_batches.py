"""CSV import batches bounded by bytes as well as rows: a store taking 1 MiB frames (the
smallest STORE_MAX_FRAME_BYTES) gets wide rows in batches well under its frame, a row no record
can hold fails alone, and normal rows still go in chunks of 500.

In-process, the store is an ``Engine`` behind the frame check the real store makes: a request
frame over its limit drops the connection (``StoreUnavailable``), as ``storeserver.connection``
does. The last test runs the real stack.
"""

from __future__ import annotations

import asyncio
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
from storeserver.engine import Engine
from storeserver.errors import NotFound, StoreUnavailable
from storeserver.protocol import encode_request
from tests.support.auth import login_admin
from tests.support.factories import assert_error
from tests.support.inprocess import in_process
from tests.support.stack import running_stack

IMPORT = "/api/v1/batch/import"
ADMIN = Principal(id="admin-id", role="admin", session_id="s")
FRAME = 1 << 20
KB = 1000


class FramedStore:
    """A ``Store`` over an engine that announces ``max_frame_bytes`` in its ``server_info``, as
    the handshake does, and drops the connection on a bigger request frame."""

    def __init__(self, max_frame_bytes: int = FRAME) -> None:
        self.engine = Engine()
        self.server_info: dict[str, Any] = {
            "server": "memdb-store",
            "max_frame_bytes": max_frame_bytes,
        }
        self.batches: list[tuple[int, int]] = []  # (rows, request frame bytes) per batch

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        await asyncio.sleep(0)
        args = args or {}
        size = len(encode_request(1, command, args)) - 4
        if size > self.server_info["max_frame_bytes"]:
            raise StoreUnavailable(f"frame of {size} bytes exceeds the limit: connection lost")
        if command == "batch":
            self.batches.append((len(args["ops"]), size))
        return self.engine.execute(command, args)

    def ids(self, table: str) -> list[str]:
        try:
            found = self.engine.execute("find", {"table": table, "limit": 1000, "fields": []})
        except NotFound:
            return []
        return sorted(item["id"] for item in found["items"])


@pytest.fixture
def store() -> FramedStore:
    return FramedStore()


@pytest.fixture
async def http(store: FramedStore) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(Settings())
    app.dependency_overrides[get_caller] = lambda: ADMIN
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_jobs] = lambda: None
    async with in_process(app) as client:
        yield client


async def post_csv(http: httpx.AsyncClient, body: bytes, **params: str) -> httpx.Response:
    return await http.post(
        IMPORT,
        params={"table": "wide", "async": "false", **params},
        content=body,
        headers={"Content-Type": "text/csv"},
    )


def csv_of(widths: list[int]) -> bytes:
    """One row per width: id ``r<n>`` (n from 1, the row's number) and a cell that wide."""
    return b"id,v\n" + b"".join(b"r%d,%s\n" % (n, b"y" * w) for n, w in enumerate(widths, 1))


async def test_wide_rows_go_in_batches_under_a_quarter_of_the_frame(
    http: httpx.AsyncClient, store: FramedStore
) -> None:
    """QA: 600 rows of 5 KB on a 1 MiB-frame store were one 2.5 MB batch, dropped: 503."""
    response = await post_csv(http, csv_of([5 * KB] * 600))
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["rows"], report["imported"], report["failed"]) == (600, 600, 0)
    assert len(store.ids("wide")) == 600
    assert len(store.batches) >= 3
    assert max(size for _, size in store.batches) <= FRAME // 4 + 1024  # + the request's own


async def test_normal_rows_still_go_in_chunks_of_500(
    http: httpx.AsyncClient, store: FramedStore
) -> None:
    response = await post_csv(http, csv_of([20] * 1200))
    assert response.status_code == 200, response.text
    assert [rows for rows, _ in store.batches] == [500, 500, 200]


@pytest.mark.parametrize("width", [600 * KB, 1200 * KB], ids=["over-a-record", "over-a-frame"])
async def test_a_row_too_big_for_one_record_fails_alone(
    http: httpx.AsyncClient, store: FramedStore, width: int
) -> None:
    """Over half a frame (the store's record limit) or over the whole frame: that row is a
    row error, never sent; the rows around it are imported."""
    response = await post_csv(http, csv_of([10, 10, width, 10]))
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["rows"], report["imported"], report["failed"]) == (4, 3, 1)
    [error] = report["errors"]
    assert error["row"] == 3 and error["field"] is None
    assert f"is {width + 14} bytes once encoded" in error["message"]
    assert f"({FRAME // 2} bytes with this store's STORE_MAX_FRAME_BYTES)" in error["message"]
    assert store.ids("wide") == ["r1", "r2", "r4"]
    assert all(size <= FRAME // 4 + 1024 for _, size in store.batches)


async def test_an_atomic_import_over_half_a_frame_is_400_and_writes_nothing(
    http: httpx.AsyncClient, store: FramedStore
) -> None:
    """One batch: it must fit a request and its reply. Before, the store dropped the request
    and the answer was a 503 saying the outcome was not known."""
    response = await post_csv(http, csv_of([5 * KB] * 250), atomic="true")
    error = assert_error(response, 400, "LIMIT_EXCEEDED")
    assert f"at most {FRAME // 2} bytes of rows once encoded" in error["message"]
    assert error["details"][0]["field"] == "atomic"
    assert store.batches == [] and store.ids("wide") == []
    # Within half a frame it is one batch, as before.
    response = await post_csv(http, csv_of([5 * KB] * 90), atomic="true")
    assert response.status_code == 200, response.text
    assert [rows for rows, _ in store.batches] == [90]


async def test_a_store_frame_over_the_clients_own_limit_is_bounded_by_it(
    http: httpx.AsyncClient, store: FramedStore
) -> None:
    """The client refuses frames over its own 16 MiB whatever the store takes."""
    store.server_info = {"max_frame_bytes": 64 << 20}  # bigger than the client takes
    response = await post_csv(http, csv_of([100 * KB] * 100))
    assert response.status_code == 200, response.text
    assert max(size for _, size in store.batches) <= (16 << 20) // 4 + 1024


@pytest.mark.integration
def test_wide_rows_import_on_a_store_with_1_mib_frames() -> None:
    """The QA scenario on the real stack: the frame limit comes from the store's handshake.
    Before, the import answered 503 STORE_UNAVAILABLE (the store dropped the connection)."""
    widths = [5 * KB] * 600
    widths[299] = 700 * KB  # over the record limit: that row alone fails
    env = {"STORE_MAX_FRAME_BYTES": str(FRAME)}
    with (
        running_stack(workers=1, extra_env=env) as stack,
        httpx.Client(base_url=stack.base_url, timeout=60.0) as client,
    ):
        client.headers.update(login_admin(client).headers)
        response = client.post(
            IMPORT,
            params={"table": "wide", "async": "false"},
            content=csv_of(widths),
            headers={"Content-Type": "text/csv"},
        )
        assert response.status_code == 200, response.text
        report = response.json()["data"]
        assert (report["rows"], report["imported"], report["failed"]) == (600, 599, 1)
        assert [e["row"] for e in report["errors"]] == [300]
        assert "bytes once encoded" in report["errors"][0]["message"]
        count = client.get("/api/v1/data/wide", params={"per_page": 1})
        assert count.json()["meta"]["total"] == 599
