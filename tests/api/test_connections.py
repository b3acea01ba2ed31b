"""A request httptools cannot parse, alone or after pipelined ones (``api.connections``).

uvicorn wrote its plain-text 400 and closed at once, while the requests before the bad one
were running: their answers were lost (a record was written all the same) and each logged
a traceback for writing to a closed transport.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from api.connections import MAX_URL_BYTES
from tests.support.auth import Account
from tests.support.factories import token
from tests.support.logs import json_lines
from tests.support.rawhttp import RawResponse, parse_responses, read_until_closed, request
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
BAD = b"FOO / HTTP/1.1\r\n\r\n"  # a method httptools does not know: 501 (RFC 9110 §9.1)
SECURITY = ("strict-transport-security", "x-content-type-options", "content-security-policy")


def _send(stack: Stack, data: bytes) -> list[RawResponse]:
    """Write ``data`` in one piece; the answers, once the server has closed the connection."""
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(data)
        received, closed = read_until_closed(sock)
    assert closed, received
    return parse_responses(received)


def _error_lines(stack: Stack, start: int) -> list[dict[str, object]]:
    time.sleep(0.5)  # a failing request task logs just after the connection ends
    log = stack.workdir / "api.log"
    return [r for r in json_lines(log, start) if r.get("level") in ("error", "critical")]


def _log_size(stack: Stack) -> int:
    return (stack.workdir / "api.log").stat().st_size


def assert_refused(
    response: RawResponse, reason: str, status: int = 400, code: str = "BAD_REQUEST"
) -> None:
    """The answer to a refused request: the envelope, our headers, and a closing connection."""
    assert response.status == status, response
    body = response.json()
    assert body["status"] == "error" and body["request_id"] == response.headers["x-request-id"]
    assert body["error"]["code"] == code and body["error"]["details"] == []
    assert reason in body["error"]["message"]
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert response.headers["cache-control"] == "no-store"
    assert all(name in response.headers for name in SECURITY)


def test_a_bad_request_after_pipelined_writes_waits_for_their_answers(
    stack: Stack, admin: Account
) -> None:
    table = f"t_{token()}"
    post = request(
        "POST",
        f"/api/v1/data/{table}",
        {**admin.headers, "Content-Type": "application/json"},
        b'{"data": {"n": 1}}',
    )
    start = _log_size(stack)
    responses = _send(stack, post + post + BAD)
    assert [r.status for r in responses] == [201, 201, 501], responses
    assert_refused(responses[2], "method is not implemented", 501, "NOT_IMPLEMENTED")
    assert _error_lines(stack, start) == []
    with httpx.Client(base_url=stack.base_url, headers=admin.headers) as http:
        assert http.get(f"/api/v1/data/{table}").json()["meta"]["total"] == 2


def test_anonymous_pipelined_requests_then_a_bad_one_log_no_error(stack: Stack) -> None:
    me = request("GET", "/api/v1/users/me")
    start = _log_size(stack)
    responses = _send(stack, me + me + BAD)
    assert [r.status for r in responses] == [401, 401, 501], responses
    assert_refused(responses[2], "method is not implemented", 501, "NOT_IMPLEMENTED")
    assert _error_lines(stack, start) == []


def test_a_bad_request_alone_is_answered_at_once(stack: Stack) -> None:
    (response,) = _send(stack, b"GET /api/v1/health\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_refused(response, "Invalid char in url")


def test_broken_chunk_framing_is_400_for_that_request(stack: Stack, admin: Account) -> None:
    """The bad bytes are in the last request's body: the 400 answers that request, after the
    ones before it, and its app never gets a body."""
    chunked = request(
        "POST",
        f"/api/v1/data/t_{token()}",
        {**admin.headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        b"ZZ\r\n",
    )
    start = _log_size(stack)
    (alone,) = _send(stack, chunked)
    assert_refused(alone, "chunk size")
    health = request("GET", "/api/v1/health")
    responses = _send(stack, health + chunked)
    assert [r.status for r in responses] == [200, 400], responses
    assert_refused(responses[1], "chunk size")
    assert _error_lines(stack, start) == []


def test_a_request_target_over_the_limit_is_414(stack: Stack) -> None:
    """httptools takes up to 64 KiB, past which uvicorn answered 400 "User callback error"."""
    fits = "/api/v1/health?pad=" + "a" * (MAX_URL_BYTES - 19)
    too_long = fits + "a"
    huge = "/api/v1/health?pad=" + "a" * 100_000
    responses = _send(stack, request("GET", fits) + request("GET", too_long))
    assert [r.status for r in responses] == [200, 414], responses
    assert_refused(responses[1], f"over {MAX_URL_BYTES} bytes", 414, "URI_TOO_LONG")
    (response,) = _send(stack, request("GET", huge))
    assert_refused(response, "request target", 414, "URI_TOO_LONG")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/v1/health HTTP/1.1\r\n\r\n",
        b"GET /api/v1/health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ],
    ids=["no-host", "two-hosts"],
)
def test_an_http11_request_needs_exactly_one_host(stack: Stack, head: bytes) -> None:
    """RFC 9112 §3.2: such a request is a 400 (a proxy and we could each read another Host)."""
    (response,) = _send(stack, head)
    assert_refused(response, "exactly one Host")


def test_an_http10_request_without_host_is_served(stack: Stack) -> None:
    (response,) = _send(stack, b"GET /api/v1/health HTTP/1.0\r\n\r\n")
    assert response.status == 200, response


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked"])
def test_a_transfer_coding_other_than_chunked_is_501(
    stack: Stack, admin: Account, coding: str
) -> None:
    """RFC 9112 §6.1; the coded body reached the JSON parser as if it were plain."""
    table = f"t_{token()}"
    post = request(
        "POST",
        f"/api/v1/data/{table}",
        {**admin.headers, "Content-Type": "application/json", "Transfer-Encoding": coding},
        b"12\r\n" + b'{"data": {"n": 1}}' + b"\r\n0\r\n\r\n",
    )
    responses = _send(stack, request("GET", "/api/v1/health") + post)
    assert [r.status for r in responses] == [200, 501], responses
    assert_refused(responses[1], "Transfer-Encoding must be chunked", 501, "NOT_IMPLEMENTED")
    with httpx.Client(base_url=stack.base_url, headers=admin.headers) as http:
        assert http.get(f"/api/v1/data/{table}").status_code == 404
