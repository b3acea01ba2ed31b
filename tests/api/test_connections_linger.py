"""A refusal of a request the parser stops at closes the connection lingering
(``api.connections``), as the other closes do: the client's bytes past the bad head are read and
dropped. It was closed at once, with those bytes unread: Linux then sends a reset, and the
client's kernel drops the refusal the client had not read yet (ECONNRESET, no answer)."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import httpx
import pytest

from api.connections import MAX_HEAD_BYTES
from tests.api.test_connections import _error_lines, _log_size, assert_refused
from tests.support.auth import Account
from tests.support.factories import token
from tests.support.rawhttp import parse_responses, read_until_closed, request
from tests.support.stack import Stack, worker_pids

pytestmark = pytest.mark.integration
PIECE = b"x" * 2**20
PIECES = 64  # after the bad head: far more than one read (256 KiB) and the socket buffers hold
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an HTTP/2 client's first frame
HUGE_HEADER = b"X-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n"


def _refused_while_sending(stack: Stack, head: bytes) -> tuple[bytes, OSError | None]:
    """Send a bad ``head``, then 64 MiB the server does not parse, then read. Before reading,
    the client has sent everything or met the server's reset."""
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        error = None
        try:
            sock.sendall(head)
            for _ in range(PIECES):
                sock.sendall(PIECE)
        except OSError as exc:  # a reset: the server closed with bytes unread
            error = exc
        received, closed = read_until_closed(sock)
    assert closed, received
    return received, error


@pytest.mark.parametrize(
    ("head", "status", "code", "reason"),
    [
        (
            b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n"
            b"Content-Length: 67108864\r\n\r\n",
            400,
            "BAD_REQUEST",
            "not valid HTTP/1.1",
        ),
        (b"GET /api/v1/he\x01lth HTTP/1.1\r\n", 400, "BAD_REQUEST", "Invalid char in url"),
        (
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n" + HUGE_HEADER,
            431,
            "HEADERS_TOO_LARGE",
            "larger than",
        ),
        (PREFACE + SETTINGS, 505, "HTTP_VERSION_NOT_SUPPORTED", "HTTP/2.0 is not served"),
    ],
    ids=["bad-header-then-body", "bad-request-line", "oversized-head", "http2-preface-frames"],
)
def test_a_refusal_is_read_whole_while_the_client_sends_on(
    stack: Stack, head: bytes, status: int, code: str, reason: str
) -> None:
    start = _log_size(stack)
    received, error = _refused_while_sending(stack, head)
    assert error is None  # the server read (and dropped) everything after the bad head
    (response,) = parse_responses(received)
    assert_refused(response, reason, status, code)
    assert _error_lines(stack, start) == []


def test_a_client_that_half_closes_after_whole_requests_gets_their_answers(
    stack: Stack, admin: Account
) -> None:
    """QA: a client that sends its requests, then shuts its side (``nc -N``): uvicorn closed
    at once, and a complete POST was neither answered nor written. Requests sent whole are
    answered, then the connection closes."""
    table = f"half_{token()}"
    head = {**admin.headers, "Content-Type": "application/json"}
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(request("POST", f"/api/v1/data/{table}", head, b'{"data": {"id": "a"}}'))
        sock.sendall(request("GET", "/api/v1/health") * 4)
        sock.shutdown(socket.SHUT_WR)
        received, closed = read_until_closed(sock)
    assert closed
    assert [r.status for r in parse_responses(received)] == [201, 200, 200, 200, 200]
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(request("GET", f"/api/v1/data/{table}/a", admin.headers))
        sock.shutdown(socket.SHUT_WR)
        received, closed = read_until_closed(sock)
    assert closed and [r.status for r in parse_responses(received)] == [200]


@pytest.mark.parametrize(
    ("tail", "refused"),
    [
        (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Cut: ", None),
        (b"GET /a\x01b HTTP/1.1\r\n", 400),
    ],
    ids=["head-cut-off", "bad-head"],
)
def test_a_client_that_half_closes_behind_whole_requests_gets_their_answers(
    stack: Stack, admin: Account, tail: bytes, refused: int | None
) -> None:
    """QA: whole requests followed by a head cut off mid-way, or a bad one, then the client's
    EOF: the connection closed at once, the whole ones unanswered (the writes unwritten or
    done unseen). They are answered; the cut-off head is dropped, the bad one refused."""
    table = f"half_{token()}"
    head = {**admin.headers, "Content-Type": "application/json"}
    writes = b"".join(
        request("POST", f"/api/v1/data/{table}", head, b'{"data": {"id": "%d"}}' % i)
        for i in range(4)
    )
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(writes + tail)
        sock.shutdown(socket.SHUT_WR)
        received, closed = read_until_closed(sock)
    assert closed
    expected = [201] * 4 + ([refused] if refused else [])
    assert [r.status for r in parse_responses(received)] == expected


def test_a_client_that_half_closes_mid_request_is_gone(stack: Stack, admin: Account) -> None:
    """A request cut off by the client's EOF (20 of its 100 bytes) is a disconnect, as
    before: nothing written."""
    table = f"half_{token()}"
    head = {**admin.headers, "Content-Type": "application/json", "Content-Length": "100"}
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(request("POST", f"/api/v1/data/{table}", head, b'{"data": {"id": "a"}'))
        sock.shutdown(socket.SHUT_WR)
        received, closed = read_until_closed(sock)
    assert closed and received == b""
    with httpx.Client(base_url=stack.base_url) as http:
        assert http.get(f"/api/v1/data/{table}/a", headers=admin.headers).status_code == 404


def test_a_request_pipelined_behind_a_closing_answer_is_not_run(
    stack: Stack, admin: Account
) -> None:
    """Review: once every closing answer lingered, the transport no longer looked closing to
    uvicorn, which started the POST parsed behind a 415 and threw its answer away (RFC 9112
    §9.3.2: such a request is dropped unstarted, for the client to send again)."""
    table = f"half_{token()}"
    refused = request(
        "POST", f"/api/v1/data/{table}", {**admin.headers, "Content-Type": "text/plain"}, b"x"
    )
    write = request(
        "POST",
        f"/api/v1/data/{table}",
        {**admin.headers, "Content-Type": "application/json"},
        b'{"data": {"n": 1}}',
    )
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(refused + write)
        received, closed = read_until_closed(sock)
    assert closed and [r.status for r in parse_responses(received)] == [415]
    with httpx.Client(base_url=stack.base_url) as http:
        assert http.get(f"/api/v1/data/{table}", headers=admin.headers).status_code == 404


def test_a_refusal_lingers_past_the_keep_alive_while_the_body_comes(
    stack: Stack, admin: Account
) -> None:
    """Review: uvicorn's keep-alive timer (5 s) closed a lingering connection while the client
    still sent its body: urllib, uploading slowly, lost the 413 after 5 s."""

    def slow_body() -> Iterator[bytes]:
        for _ in range(28):  # ~7 s at 256 KiB/s: past the 5 s keep-alive
            yield b"x" * 65536
            time.sleep(0.25)

    sent = urllib.request.Request(
        f"{stack.base_url}/api/v1/data/t",
        data=slow_body(),
        headers={
            **admin.headers,
            "Content-Type": "application/json",
            "Content-Length": str(50 << 20),
        },
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(sent, timeout=60)
    assert refused.value.code == 413


def test_a_closed_connection_is_let_go_when_its_client_leaves(stack: Stack) -> None:
    """Review: a lingering connection whose client closed was held 5 s more (its EOF taken for
    a half-close): 100 HTTP/1.0 requests held 100 worker descriptors that long."""

    def descriptors() -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in worker_pids(stack))

    before = descriptors()
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", stack.port)) as sock:
            sock.sendall(b"GET /api/v1/health HTTP/1.0\r\n\r\n")
            assert read_until_closed(sock)[1]
    deadline = time.monotonic() + 3  # a failure bound: the linger's idle close is 5 s
    while descriptors() - before >= 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert descriptors() - before < 10
