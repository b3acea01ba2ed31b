"""The store cursors behind the streamed exports (GET /dump/{table}, GET /batch/{table}/export):
closed as soon as a download ends early, never evicted by a flood of new ones, and a cursor lost
under a download reported as such (a warning, the access line's error, an incomplete body).

The in-process tests drive ``TableScan`` with a scripted store; the rest use the real stack,
over a raw socket with a small receive buffer, so the worker blocks in its send as soon as the
test stops reading (httpx would read ahead into its own buffers).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from api.errors import StreamCutOff
from api.services import dumps
from api.services.csv_export import open_export
from api.services.dumps import open_dump
from storeserver.client import StoreClient
from storeserver.errors import NotFound, StoreBusy
from tests.support.auth import Account, login_admin
from tests.support.factories import assert_error, token
from tests.support.logs import wait_for_records
from tests.support.stack import Stack, running_stack
from tests.support.storedirect import bulk_insert, store_call

# 12 MB, far more than the socket buffers hold, in many pages (the CSV reads 1000 rows a
# page, the dump DUMP_CHUNK_SIZE): many are left to read when the client stops reading.
ROWS, PAD = 20_000, 600
EXPORTS = ["/api/v1/dump/{}", "/api/v1/batch/{}/export"]
Opener = Callable[[Any, str], Awaitable[AsyncIterator[Any]]]
OPENERS: dict[str, Opener] = {
    "dump": lambda store, table: open_dump(store, table, 2),
    "csv": lambda store, table: open_export(store, table, [], 2),
}


# -- in-process: TableScan with a scripted store -------------------------------------------------


class PagedStore:
    """A table of ``pages`` pages of two records behind cursor "c1"; ``lose_at``: the read
    (counting the opening one) that finds the cursor gone. Records every call."""

    def __init__(self, pages: int = 5, lose_at: int | None = None) -> None:
        self.pages = pages
        self.lose_at = lose_at
        self.reads = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
        self.calls.append((command, args or {}))
        await asyncio.sleep(0)
        if command == "scan_close":
            return True
        if command == "find":  # a CSV export's header sample: no fields but the store's
            return {"items": [], "total": 0}
        assert command == "scan", command
        self.reads += 1
        if self.reads == self.lose_at:
            raise NotFound("no such cursor (finished, closed or expired)")
        items = [{"id": f"r{self.reads}-{n}", "page": self.reads} for n in range(2)]
        return {"items": items, "cursor": "c1" if self.reads < self.pages else None}

    @property
    def closes(self) -> list[dict[str, Any]]:
        return [args for command, args in self.calls if command == "scan_close"]


async def settle() -> None:
    """Let callbacks and the close task they start run."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("kind", OPENERS)
async def test_a_read_abandoned_at_a_yield_closes_its_cursor(kind: str) -> None:
    """The client went away while the worker was sending (the response task is cancelled
    with the generator at its ``yield``: no ``finally`` of it runs)."""
    store = PagedStore()
    sending = asyncio.Event()

    async def respond() -> None:
        async for _ in await OPENERS[kind](store, "t"):
            sending.set()
            await asyncio.Event().wait()  # a send that never completes

    task = asyncio.create_task(respond())
    await sending.wait()
    assert store.closes == []
    task.cancel()
    await settle()
    assert store.closes == [{"cursor": "c1"}]


@pytest.mark.parametrize("kind", OPENERS)
async def test_an_export_opened_but_never_read_closes_its_cursor(kind: str) -> None:
    """A response that never starts (the client gone before the headers went)."""
    store = PagedStore()
    await asyncio.create_task(OPENERS[kind](store, "t"))
    await settle()
    assert store.closes == [{"cursor": "c1"}]


@pytest.mark.parametrize("kind", OPENERS)
async def test_a_read_closed_early_closes_its_cursor_once(kind: str) -> None:
    store = PagedStore()
    chunks = await OPENERS[kind](store, "t")
    await anext(chunks)
    await chunks.aclose()  # type: ignore[attr-defined]
    await settle()
    assert store.closes == [{"cursor": "c1"}]


@pytest.mark.parametrize("kind", OPENERS)
async def test_a_read_to_the_end_sends_no_close(kind: str) -> None:
    store = PagedStore(pages=4)
    got = [chunk async for chunk in await OPENERS[kind](store, "t")]
    await settle()
    assert len(got) == (4 if kind == "dump" else 5)  # the CSV has its header first
    assert store.reads == 4 and store.closes == []


class Warnings:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


async def test_a_lost_cursor_is_one_warning_and_cuts_the_stream_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warnings = Warnings()
    monkeypatch.setattr(dumps, "log", warnings)
    store = PagedStore(pages=10, lose_at=4)
    got: list[Any] = []
    with pytest.raises(StreamCutOff, match="scan of things was lost after 6 records"):
        async for records in await open_dump(store, "things", 2):
            got += records
    await settle()
    assert len(got) == 6  # three pages handed out
    assert warnings.lines == [
        (
            "export_cut_off",
            {
                "table": "things",
                "records": 6,
                "detail": "no such cursor (finished, closed or expired)",
            },
        )
    ]
    assert store.closes == []  # the store has nothing left to close


# -- the real stack ------------------------------------------------------------------------------


class Download:
    """A GET whose body the test reads when it wants to, over a small receive buffer."""

    def __init__(
        self, stack: Stack, path: str, headers: dict[str, str], version: str = "1.1"
    ) -> None:
        self.request_id = f"dl-{uuid.uuid4().hex}"
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", stack.port))
        lines = [f"GET {path} HTTP/{version}", "Host: test", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"X-Request-ID: {self.request_id}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before the headers: {data!r}"
            data += chunk
        head, _, self.raw = data.partition(b"\r\n\r\n")
        self.status = int(head.split()[1])
        assert self.status == 200, data[:2000]

    def read_to_the_end(self) -> tuple[bytes, bool]:
        """The body (de-chunked) and whether it ended with the final chunk."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # 10x faster
        while chunk := self.sock.recv(1 << 20):
            self.raw += chunk
        self.close()
        return dechunk(self.raw)

    def close(self) -> None:
        self.sock.close()


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    body, at = [], 0
    while (end := raw.find(b"\r\n", at)) >= 0:
        size = int(raw[at:end].split(b";")[0], 16)
        start = end + 2
        if size == 0:
            return b"".join(body), raw[start:] == b"\r\n"
        body.append(raw[start : start + size])
        if len(raw) < start + size + 2:
            break
        at = start + size + 2
    return b"".join(body), False


def open_cursors(stack: Stack) -> int:
    """The store's open cursors (``stats``, as in GET /admin/stats)."""
    count: int = store_call(stack, "stats", {})["cursors"]
    return count


def cursors_down_to(stack: Stack, expected: int) -> int:
    """The store's open cursors once they are down to ``expected`` (or after 10 s)."""
    deadline = time.monotonic() + 10
    while (count := open_cursors(stack)) > expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return count


def fill_table(stack: Stack) -> str:
    table = f"streamed_{token()}"
    bulk_insert(stack, table, [{"n": n, "pad": "x" * PAD} for n in range(ROWS)])
    return table


@pytest.fixture(scope="module")
def big_table(stack: Stack) -> str:
    return fill_table(stack)


@pytest.mark.integration
@pytest.mark.parametrize("path", EXPORTS)
def test_a_dropped_download_releases_its_cursor_at_once(
    admin: Account, stack: Stack, big_table: str, path: str
) -> None:
    before = open_cursors(stack)
    for _ in range(5):  # dropped downloads must not pile up
        download = Download(stack, path.format(big_table), admin.headers)
        download.raw += download.sock.recv(65536)  # some of the body: it is under way
        assert open_cursors(stack) == before + 1  # its cursor, open while it streams
        download.close()
        assert cursors_down_to(stack, before) == before


async def open_until_refused(stack: Stack, table: str, most: int) -> tuple[list[str], bool]:
    store = StoreClient(f"unix:{stack.socket_path}", timeout=10.0)
    await store.connect()
    opened: list[str] = []
    try:
        while len(opened) < most:
            try:
                page = await store.call("scan", {"table": table, "limit": 1})
            except StoreBusy:
                return opened, True
            opened.append(page["cursor"])
        return opened, False
    finally:
        await store.close()


async def close_cursors(stack: Stack, cursors: list[str]) -> None:
    store = StoreClient(f"unix:{stack.socket_path}", timeout=10.0)
    await store.connect()
    try:
        closes = (store.call("scan_close", {"cursor": c}) for c in cursors)
        await asyncio.gather(*closes, return_exceptions=True)  # cleanup: the assertions tell
    finally:
        await store.close()


@pytest.mark.integration
def test_a_flood_of_new_cursors_cannot_cut_off_a_download_in_progress(
    client: httpx.Client, admin: Account, stack: Stack, big_table: str
) -> None:
    before = open_cursors(stack)
    live = Download(stack, f"/api/v1/dump/{big_table}", admin.headers)
    assert open_cursors(stack) == before + 1  # under way, and far from its end
    flood, refused = asyncio.run(open_until_refused(stack, big_table, 1100))
    try:
        at_the_cap = client.get(f"/api/v1/dump/{big_table}")
        body, complete = live.read_to_the_end()
    finally:
        live.close()
        asyncio.run(close_cursors(stack, flood))
    assert complete  # not evicted: read to its end
    assert len(body.splitlines()) == ROWS
    assert refused, "the store never refused a cursor"
    # The newcomer is refused instead, before its response starts, and told to come back.
    assert_error(at_the_cap, 503, "STORE_BUSY")
    assert at_the_cap.headers["retry-after"]


@pytest.fixture(scope="module")
def idle_stack() -> Iterator[tuple[Stack, Account, str]]:
    """A stack whose cursors expire after half a second unread, logging at INFO."""
    env = {"STORE_SCAN_IDLE": "0.5", "LOG_LEVEL": "info", "DUMP_CHUNK_SIZE": "100"}
    with running_stack(workers=1, extra_env=env) as running:
        with httpx.Client(base_url=running.base_url, timeout=10.0) as http:
            admin = login_admin(http)
        yield running, admin, fill_table(running)


@pytest.mark.integration
def test_a_dropped_download_is_not_logged_as_a_plain_200(
    idle_stack: tuple[Stack, Account, str],
) -> None:
    stack, admin, table = idle_stack
    download = Download(stack, f"/api/v1/dump/{table}", admin.headers)
    download.raw += download.sock.recv(65536)
    download.close()
    records = wait_for_records(
        stack.workdir / "api.log",
        lambda found: any(
            r["event"] == "access" and r.get("request_id") == download.request_id for r in found
        ),
    )
    (access,) = [
        r for r in records if r["event"] == "access" and r["request_id"] == download.request_id
    ]
    assert access["status"] == 200 and access["error"] == "ClientDisconnected"
    # A download read to its end has no error.
    whole = Download(stack, f"/api/v1/dump/{table}", admin.headers)
    _, complete = whole.read_to_the_end()
    assert complete
    records = wait_for_records(
        stack.workdir / "api.log",
        lambda found: any(
            r["event"] == "access" and r.get("request_id") == whole.request_id for r in found
        ),
    )
    (done,) = [r for r in records if r["event"] == "access" and r["request_id"] == whole.request_id]
    assert done["status"] == 200 and "error" not in done


@pytest.mark.integration
@pytest.mark.parametrize("path", EXPORTS)
def test_a_download_that_outlives_its_cursor_is_cut_off_and_reported(
    idle_stack: tuple[Stack, Account, str], path: str
) -> None:
    stack, admin, table = idle_stack
    download = Download(stack, path.format(table), admin.headers)
    time.sleep(1.5)  # the client stops reading for longer than STORE_SCAN_IDLE
    body, complete = download.read_to_the_end()
    assert not complete  # no final chunk: the client can tell the body is incomplete
    assert 0 < body.count(b"\n") < ROWS

    def mine(record: dict[str, Any]) -> bool:
        return record.get("request_id") == download.request_id

    log = stack.workdir / "api.log"
    records = wait_for_records(
        log, lambda found: any(r["event"] == "access" for r in found if mine(r))
    )
    warnings = [r for r in records if r["level"] == "warning" and mine(r)]
    assert [(r["event"], r["table"]) for r in warnings] == [("export_cut_off", table)]
    assert 0 < warnings[0]["records"] < ROWS
    (access,) = [r for r in records if r["event"] == "access" and mine(r)]
    assert access["status"] == 200 and access["error"] == "StreamCutOff"
    # That warning is the report: no 500-handler line, no uvicorn traceback beside it.
    assert not [r for r in records if r["level"] in ("error", "critical") and mine(r)]
    assert not any("Exception in ASGI application" in str(r.get("event")) for r in records)


@pytest.mark.integration
@pytest.mark.parametrize("path", EXPORTS)
def test_an_http10_download_cut_off_ends_with_a_reset(
    idle_stack: tuple[Stack, Account, str], path: str
) -> None:
    """HTTP/1.0 has no chunks: the body ends with the connection. QA: a cut-off download closed
    it as a complete one does, after whole records: a 200 that looked complete. A reset says
    it is not (RFC 9112 6.3); a complete download still ends with a plain close."""
    stack, admin, table = idle_stack
    download = Download(stack, path.format(table), admin.headers, version="1.0")
    time.sleep(1.5)  # the client stops reading for longer than STORE_SCAN_IDLE
    download.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    with pytest.raises(ConnectionResetError):
        while download.sock.recv(1 << 20):
            pass
    download.close()
    whole = Download(stack, path.format(table), admin.headers, version="1.0")
    whole.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    while chunk := whole.sock.recv(1 << 20):
        whole.raw += chunk
    whole.close()
    assert whole.raw.count(b"\n") >= ROWS  # every row (and a CSV's header line)


@pytest.mark.integration
def test_downloads_cut_off_by_a_graceful_stop_close_their_cursors() -> None:
    """QA: a redeploy's SIGTERM cancelled the downloads still running at the drain's end and
    closed the store client before their cursors' closes were sent: each cursor stayed open
    for STORE_SCAN_IDLE (300 s), counted against the store's cursor caps."""
    with running_stack(workers=1, extra_env={"GRACEFUL_TIMEOUT": "3"}) as stack:
        with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
            admin = login_admin(http)
        table = fill_table(stack)
        downloads = [Download(stack, path.format(table), admin.headers) for path in EXPORTS]
        try:
            for download in downloads:
                download.raw += download.sock.recv(65536)  # under way, then no longer read
            assert open_cursors(stack) == len(EXPORTS)
            api = stack.processes["api"]
            api.send_signal(signal.SIGTERM)
            assert api.wait(15) == 0
            assert open_cursors(stack) == 0, stack.logs()
        finally:
            for download in downloads:
                download.close()
