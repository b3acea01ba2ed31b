"""Request heads the protocol refuses or serves itself (``api.connections``): RFC 9112's Host
and request line, one Authorization, HEAD refusals without a body, Upgrade ignored."""

from __future__ import annotations

import httpx
import pytest

from api.connections import MAX_URL_BYTES
from tests.api.test_connections import SECURITY, _send, assert_refused
from tests.support.auth import Account
from tests.support.factories import token
from tests.support.rawhttp import request
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
HEALTH = "/api/v1/health"


def _head(target: str, version: str = "1.1", host: bool = True) -> bytes:
    return f"HEAD {target} HTTP/{version}\r\n{'Host: x' if host else 'X-No: host'}\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (_head(HEALTH + "?pad=" + "a" * MAX_URL_BYTES), 414, "URI_TOO_LONG"),
        (_head(HEALTH, host=False), 400, "BAD_REQUEST"),
        (_head(HEALTH, "1.2"), 400, "BAD_REQUEST"),
        (_head(HEALTH, "2.0"), 505, "HTTP_VERSION_NOT_SUPPORTED"),
    ],
    ids=["414", "no-host", "bad-version", "505"],
)
def test_a_refused_head_request_gets_no_body(
    stack: Stack, data: bytes, status: int, code: str
) -> None:
    """RFC 9110 §9.3.2; the headers are a GET's (Content-Length too)."""
    (response,) = _send(stack, data)  # read by its Content-Length: nothing may follow
    assert response.status == status, response
    assert response.body == b""
    assert int(response.headers["content-length"]) > 0
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close" and "x-request-id" in response.headers
    assert all(name in response.headers for name in SECURITY)
    (get,) = _send(stack, data.replace(b"HEAD", b"GET", 1))
    assert_refused(get, "", status, code)


@pytest.mark.parametrize("host", ["a b", "user@evil:80", "a/b", "x, y", "a:80x", "[::1"])
def test_an_invalid_host_is_400(stack: Stack, host: str) -> None:
    """RFC 9112 §3.2: ``uri-host [":" port]``."""
    (response,) = _send(stack, request("GET", HEALTH, {"Host": host}))
    assert_refused(response, "Host header is not a valid")


@pytest.mark.parametrize(
    "host", ["example.com", "example.com:8080", "127.0.0.1:80", "[::1]:8080", "a%41.b", ""]
)
def test_a_valid_host_is_served(stack: Stack, host: str) -> None:
    responses = _send(stack, request("GET", HEALTH, {"Host": host, "Connection": "close"}))
    assert [r.status for r in responses] == [200], responses


def test_an_http10_request_with_two_hosts_is_400(stack: Stack) -> None:
    (response,) = _send(stack, b"GET /api/v1/health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n")
    assert_refused(response, "exactly one Host")


def test_two_authorization_headers_are_400(stack: Stack, admin: Account) -> None:
    """Refused even when both name one identity, after the request pipelined before it."""
    auth = admin.headers["Authorization"]
    me = request("GET", "/api/v1/users/me", admin.headers)
    twice = me.replace(b"\r\n\r\n", f"\r\nAuthorization: {auth}\r\n\r\n".encode(), 1)
    responses = _send(stack, request("GET", HEALTH) + twice)
    assert [r.status for r in responses] == [200, 400], responses
    assert_refused(responses[1], "only one Authorization header")


@pytest.mark.parametrize(
    "refused",
    [
        request("GET", HEALTH, {"Authorization": "Bearer a"}).replace(
            b"\r\n\r\n", b"\r\nAuthorization: Bearer b\r\n\r\n", 1
        ),
        request("GET", HEALTH).replace(b"\r\n\r\n", b"\r\nHost: other\r\n\r\n", 1),
        request("GET", HEALTH + "?q=%FF"),
    ],
    ids=["two-authorization", "two-hosts", "bad-target"],
)
def test_a_refused_request_keeps_the_clients_request_id(stack: Stack, refused: bytes) -> None:
    """QA: a request refused once its head was read got a generated id, and no log line held
    the client's; the id of the request before it on the connection is not taken either."""
    first = request("GET", HEALTH, {"X-Request-ID": "first-1"})
    tagged = refused.replace(b"\r\n", b"\r\nX-Request-ID: my-trace-42\r\n", 1)
    responses = _send(stack, first + tagged)
    assert [r.status for r in responses] == [200, 400], responses
    assert responses[1].headers["x-request-id"] == "my-trace-42"
    assert responses[1].json()["request_id"] == "my-trace-42"
    untagged = _send(stack, first + refused)
    assert untagged[1].headers["x-request-id"] not in ("first-1", "my-trace-42")


def test_bytes_that_are_no_request_get_a_new_id_not_the_last_requests(stack: Stack) -> None:
    first = request("GET", HEALTH, {"X-Request-ID": "first-1"})
    responses = _send(stack, first + b"\x01\x02 garbage\r\n\r\n")
    assert [r.status for r in responses] in ([200, 400], [200, 501]), responses
    assert responses[-1].headers["x-request-id"] != "first-1"


WEBSOCKET = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.mark.parametrize(
    ("path", "upgrade", "status"),
    [(HEALTH, "websocket", 200), ("/api/v1/nothing-here", "websocket", 404), (HEALTH, "h2c", 200)],
)
def test_an_upgrade_is_ignored_and_the_request_served(
    stack: Stack, path: str, upgrade: str, status: int
) -> None:
    """RFC 9110 §7.8. The connection then closes: bytes after that head may be in the
    protocol asked for, and are not read as requests."""
    asks = request("GET", path, {**WEBSOCKET, "Upgrade": upgrade})
    (response,) = _send(stack, asks + request("GET", HEALTH))
    assert response.status == status, response
    assert response.headers["connection"] == "close"
    assert response.json()["status"] == ("success" if status == 200 else "error")
    assert "x-request-id" in response.headers  # answered by the app, as any request
    assert all(name in response.headers for name in SECURITY)


def test_an_upgrade_request_with_a_body_is_400(stack: Stack, admin: Account) -> None:
    """httptools skips such a body: read as the next request, it would be smuggled in."""
    table = f"t_{token()}"
    smuggled = request(
        "POST",
        f"/api/v1/data/{table}",
        {**admin.headers, "Content-Type": "application/json"},
        b'{"data": {"n": 1}}',
    )
    headers = {**admin.headers, **WEBSOCKET, "Content-Type": "application/json"}
    (response,) = _send(stack, request("POST", f"/api/v1/data/{table}", headers, smuggled))
    assert_refused(response, "protocol upgrade cannot have a body")
    with httpx.Client(base_url=stack.base_url, headers=admin.headers) as http:
        assert http.get(f"/api/v1/data/{table}").status_code == 404


def test_http2_on_an_http1_connection_is_505(stack: Stack) -> None:
    (response,) = _send(stack, b"GET /api/v1/health HTTP/2.0\r\nHost: x\r\n\r\n")
    assert_refused(response, "HTTP/2.0 is not served", 505, "HTTP_VERSION_NOT_SUPPORTED")


@pytest.mark.parametrize(("suffix", "status"), [("", 404), ("?x=1", 404), (HEALTH, 200)])
def test_an_absolute_target_is_served_by_its_path(stack: Stack, suffix: str, status: int) -> None:
    """An empty path (RFC 9112 §3.2.2) is ``/``, where nothing is routed: 404, not a 400
    "User callback error" from the parser."""
    target = f"http://127.0.0.1:{stack.port}{suffix}"
    (response,) = _send(stack, request("GET", target, {"Connection": "close"}))
    assert response.status == status, response
    assert response.json()["status"] == ("success" if status == 200 else "error")
    assert "x-request-id" in response.headers  # answered by the app, as any request


def test_a_target_that_is_not_a_uri_is_400(stack: Stack) -> None:
    (response,) = _send(stack, b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_refused(response, "request target is not a valid URI")


def test_an_unknown_method_is_501(stack: Stack) -> None:
    (response,) = _send(stack, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_refused(response, "method is not implemented", 501, "NOT_IMPLEMENTED")
