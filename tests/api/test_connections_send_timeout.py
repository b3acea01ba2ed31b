"""A response whose client reads none of it for SEND_TIMEOUT ends with its connection
(``api.connections``). uvicorn waited for the client to drain what it sent without bound: a
dump whose client stopped reading kept its request, its connection and the app's task until
the client closed (QA: 20 stalled downloads held 20 worker connections for a minute and more)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.auth import login_admin
from tests.support.logs import json_lines
from tests.support.metrics import value
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration
SEND_TIMEOUT = 1
DUMP = "/api/v1/dump/{table}"


@pytest.fixture(scope="module")
def impatient() -> Iterator[Stack]:
    env = {"SEND_TIMEOUT": str(SEND_TIMEOUT), "LOG_LEVEL": "info"}  # info: access lines
    with running_stack(workers=2, extra_env=env) as stack:
        yield stack


def in_progress(http: httpx.Client) -> float:
    return value(http.get("/metrics").text, "http_requests_inprogress", handler=DUMP)


def big_table(http: httpx.Client, headers: dict[str, str], table: str) -> None:
    """10,000 rows, 4 MB: more than the socket buffers on both sides hold."""
    rows = [{"n": n, "pad": "p" * 400} for n in range(1000)]
    for _ in range(10):
        created = http.post(f"/api/v1/data/{table}", headers=headers, json={"data": rows})
        assert created.status_code == 201, created.text


def unread_dump(sock: socket.socket, port: int, token: str, table: str, version: str) -> None:
    """Connect ``sock`` (a small receive buffer) and start a dump of ``table`` it then does
    not read."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /api/v1/dump/{table} HTTP/{version}\r\nHost: t\r\nAccept-Encoding: identity\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")  # started; now read nothing


def read_rest(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server still sends, and whether it ended with a reset."""
    received = b""
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        return received, True
    return received, False


def test_a_download_its_client_stopped_reading_is_ended(impatient: Stack) -> None:
    with httpx.Client(base_url=impatient.base_url, timeout=30.0) as http:
        admin = login_admin(http)
        big_table(http, admin.headers, "big")
        with socket.socket() as sock:
            unread_dump(sock, impatient.port, admin.access_token, "big", "1.1")
            assert in_progress(http) == 1
            deadline = time.monotonic() + SEND_TIMEOUT + 20
            while in_progress(http) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert in_progress(http) == 0  # the request is over, though the client is there
            received, reset = read_rest(sock)
            assert reset or not received.endswith(b"0\r\n\r\n"), "the dump went on to its end"
        # A streamed answer is logged at its end: as cut off, not as a whole 200.
        assert access_line(impatient, "/api/v1/dump/big")["error"] == "ClientDisconnected"
        assert cut_off(impatient, "/api/v1/dump/big")
        # A client that reads gets its download whole.
        whole = http.get("/api/v1/dump/big", headers=admin.headers)
        assert whole.status_code == 200 and len(whole.text.splitlines()) == 10_000


def test_an_http10_download_cut_off_ends_with_a_reset(impatient: Stack) -> None:
    """QA: an HTTP/1.0 body ends with its connection; cut off by SEND_TIMEOUT, the kernel
    still sent what it held, then a FIN: to the client, a complete download. A reset says
    otherwise (README, HTTP/1.0)."""
    with httpx.Client(base_url=impatient.base_url, timeout=30.0) as http:
        admin = login_admin(http)
        big_table(http, admin.headers, "big10")
    with socket.socket() as sock:
        unread_dump(sock, impatient.port, admin.access_token, "big10", "1.0")
        time.sleep(SEND_TIMEOUT + 3)  # the condition under test (stalled past it), no timing
        received, reset = read_rest(sock)
    assert reset, f"ended by a plain close after {len(received)} bytes"


def test_a_slow_reader_gets_its_answer_whole_and_a_stalled_one_is_logged(
    impatient: Stack,
) -> None:
    """The timer restarts whenever the client took some of the buffer: a big page goes out in
    one write, and a client reading it slower than its size over SEND_TIMEOUT is slow, not
    gone. One that stops is cut off, and its access line says so (it read as a 200)."""
    with httpx.Client(base_url=impatient.base_url, timeout=30.0) as http:
        admin = login_admin(http)
        rows = [{"pad": "q" * 60_000} for _ in range(15)]  # 900 KB a request
        for table in ("slow", "stalled"):
            for _ in range(7):  # 6 MB a page: past what the socket buffers hold (4 MB here)
                created = http.post(
                    f"/api/v1/data/{table}", headers=admin.headers, json={"data": rows}
                )
                assert created.status_code == 201, created.text
        head = (
            b"GET /api/v1/data/slow?per_page=100 HTTP/1.1\r\nHost: t\r\n"
            b"Accept-Encoding: identity\r\nConnection: close\r\n"
            b"Authorization: Bearer " + admin.access_token.encode() + b"\r\n\r\n"
        )
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", impatient.port))
            sock.sendall(head)
            received = bytearray()
            started = time.monotonic()
            while chunk := sock.recv(4096):
                received += chunk
                # Never a pause near SEND_TIMEOUT, but slow overall: ~400 KB/s took over a
                # second to free half of the kernel's send queue, which the worker's buffer
                # waited for (cut off at half the page when only that buffer was watched).
                time.sleep(0.01)
        assert time.monotonic() - started > 2 * SEND_TIMEOUT  # it was slow indeed
        body = bytes(received).partition(b"\r\n\r\n")[2]
        assert received.startswith(b"HTTP/1.1 200") and body.count(b'"pad"') == 100
        with socket.socket() as sock:  # one that reads nothing after the first bytes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", impatient.port))
            sock.sendall(head.replace(b"/slow", b"/stalled"))
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            deadline = time.monotonic() + SEND_TIMEOUT + 20
            while time.monotonic() < deadline and not cut_off(impatient, "/api/v1/data/stalled"):
                time.sleep(0.2)
        (line,) = cut_off(impatient, "/api/v1/data/stalled")
        assert line["level"] == "warning" and line["unsent_bytes"] > 0, line


def cut_off(stack: Stack, path: str) -> list[dict[str, Any]]:
    lines = json_lines(stack.workdir / "api.log")
    return [line for line in lines if line["event"] == "response_cut_off" and line["path"] == path]


def access_line(stack: Stack, path: str) -> dict[str, Any]:
    lines = json_lines(stack.workdir / "api.log")
    (line,) = [
        line
        for line in lines
        if line["event"] == "access" and line.get("method") == "GET" and line.get("path") == path
    ]
    return line
