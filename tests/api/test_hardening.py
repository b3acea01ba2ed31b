"""A request refused for its body or headers closes its connection after the answer
(``api.hardening``): uvicorn kept it and read, and dropped, whatever body still came (30 MB
after a 413 for ``Content-Length: 10000000000``; a byte every 3 s kept a 408's open)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import httpx
import pytest

from api.hardening import MAX_HEADER_BYTES
from tests.support.auth import Account
from tests.support.logs import json_lines
from tests.support.metrics import value
from tests.support.rawhttp import RawResponse, parse_responses, read_until_closed, request
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}
LIMIT = 1024 * 1024  # MAX_BODY_BYTES of the stacks here


def _answer_while_trickling(sock: socket.socket, bound: float = 10.0) -> tuple[bytes, bool]:
    """What the server sends, and whether it closes within ``bound`` seconds (a failure bound)
    while, once its answer has come, the body goes on a byte at a time."""
    deadline = time.monotonic() + bound
    sock.settimeout(0.25)
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if data:
                try:
                    sock.sendall(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    return data, True
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _refused_and_closed(port: int, data: bytes) -> RawResponse:
    """Send ``data`` (a request whose body never ends); the one answer, once the server has
    closed the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        received, closed = _answer_while_trickling(sock)
    (response,) = parse_responses(received)
    assert closed, f"the connection stayed open after {response.status}"
    assert response.headers["connection"] == "close"
    error = response.json()["error"]
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert error["code"] and error["message"]
    return response


def test_refusals_before_the_body_close_the_connection(stack: Stack) -> None:
    declared = request(
        "POST", "/api/v1/data/t", {**JSON, "Content-Length": "10000000000"}, b'{"data": {'
    )
    assert _refused_and_closed(stack.port, declared).status == 413
    not_json = request(
        "POST", "/api/v1/users", {"Content-Type": "text/plain", "Content-Length": "100"}, b"x"
    )
    assert _refused_and_closed(stack.port, not_json).status == 415
    headers = request("GET", "/api/v1/health", {"X-Big": "x" * (MAX_HEADER_BYTES + 1)})
    assert _refused_and_closed(stack.port, headers).status == 431


def test_a_refusal_sent_while_the_body_comes_reaches_a_plain_client(
    stack: Stack, admin: Account
) -> None:
    """QA: the 413 went out with Connection: close and the connection was closed at once, the
    body's rest unread: the kernel reset it, and http.client (urllib) lost the answer. The
    close lingers now: the client reads its refusal."""
    sent = urllib.request.Request(
        f"{stack.base_url}/api/v1/data/t",
        data=b"a" * 8_000_000,
        headers={**admin.headers, **JSON},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(sent, timeout=30)
    assert refused.value.code == 413
    assert refused.value.headers["connection"] == "close"


def test_a_body_counted_past_the_limit_closes_the_connection(stack: Stack, admin: Account) -> None:
    """No Content-Length: the 413 comes from the handlers once the bytes read pass the limit."""
    size = LIMIT + 1
    chunked = request(
        "POST",
        "/api/v1/data/t",
        {**admin.headers, **JSON, "Transfer-Encoding": "chunked"},
        f"{size:x}\r\n".encode() + b"x" * size + b"\r\n",  # and no last chunk
    )
    assert _refused_and_closed(stack.port, chunked).status == 413


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_body_the_route_never_reads_closes_the_connection_after_the_answer(
    stack: Stack, admin: Account, method: str
) -> None:
    """QA: a GET (or a route that takes no body: a DELETE, logout) answered at once, then
    uvicorn went on reading the body it was sent, past MAX_BODY_BYTES and BODY_TIMEOUT; a
    byte now and then held the connection for good. Now the answer closes it."""
    path = "/api/v1/health" if method == "GET" else "/api/v1/data/t/no-such-record"
    head = {**admin.headers, **JSON, "Transfer-Encoding": "chunked"}
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(request(method, path, head, b"5\r\nhello\r\n"))  # and no last chunk
        received, closed = _answer_while_trickling(sock)
    (response,) = parse_responses(received)
    assert response.status == (200 if method == "GET" else 404)
    assert response.headers["connection"] == "close"
    assert closed, "the connection stayed open while the body went on"


def test_a_request_without_a_body_keeps_its_connection(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(request("GET", "/api/v1/health") + request("GET", "/api/v1/health"))
        received, closed = read_until_closed(sock, bound=1.0)
    assert [r.status for r in parse_responses(received)] == [200, 200]
    assert "connection" not in parse_responses(received)[0].headers
    assert not closed


@pytest.fixture(scope="module")
def impatient_stack() -> Iterator[Stack]:
    with running_stack(workers=1, extra_env={"BODY_TIMEOUT": "1"}) as stack:
        yield stack


def test_a_body_that_stopped_arriving_closes_the_connection(impatient_stack: Stack) -> None:
    stalled = request("POST", "/api/v1/users", {**JSON, "Content-Length": "100"}, b'{"email": ')
    response = _refused_and_closed(impatient_stack.port, stalled)
    assert response.status == 408 and response.json()["error"]["code"] == "REQUEST_TIMEOUT"


@pytest.mark.parametrize(
    "content_type", ["text/csv", "multipart/form-data; boundary=b0undary"], ids=["csv", "form"]
)
def test_an_upload_the_client_abandons_is_no_server_error(
    stack: Stack, admin: Account, content_type: str
) -> None:
    """A CSV import whose client closes mid-body: nobody is left to answer, and it is not the
    service's failure: no 500, no traceback (it was 500 with two error-level tracebacks,
    ~11 KB of log per abort, counted in the 5xx rate operators alert on)."""
    route = {"handler": "/api/v1/batch/import"}

    def count(status: str) -> float:
        return value(
            httpx.get(stack.url("/metrics")).text, "http_requests_total", **route, status=status
        )

    before = {status: count(status) for status in ("400", "500")}
    log = stack.workdir / "api.log"
    start = log.stat().st_size
    head = {**admin.headers, "Content-Type": content_type, "Content-Length": "2000000"}
    first = b"--b0undary\r\nContent-Disposition: form-data; name=file; filename=t.csv\r\n\r\n"
    data = request("POST", "/api/v1/batch/import?table=abandoned", head, first + b"a,b\r\n" * 20000)
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(data)  # about a twentieth of the declared body, then the client is gone
    deadline = time.monotonic() + 10  # a failure bound: the worker notices the close at once
    while count("400") == before["400"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count("400") == before["400"] + 1
    assert count("500") == before["500"]
    records = json_lines(log, start)  # the stacks here log warnings and up
    assert not [r for r in records if r["level"] in ("error", "critical")], records[-5:]
