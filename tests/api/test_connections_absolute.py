"""An absolute-form request target (``GET http://example.com/path``): the app sees its
authority as the Host and its path as the path (RFC 9112 §3.2.2, §3.3) (``api.connections``).

The app had the received Host, whatever the target named. The service's routes show no Host,
so the protocol runs here in an in-process uvicorn server, on a real socket, in front of an
app that answers with the scope it was given.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from api.connections import HeaderDeadlineProtocol, Refusal, target_host
from tests.api.test_connections import _send, assert_refused
from tests.support.inprocessserver import serving
from tests.support.rawhttp import RawResponse, parse_responses, read_until_closed
from tests.support.stack import Stack


async def scope_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what the protocol put in the scope."""
    body = orjson.dumps(
        {
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "hosts": [
                value.decode("latin-1") for name, value in scope["headers"] if name == b"host"
            ],
            "server": list(scope["server"]),
        }
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with serving(scope_echo, HeaderDeadlineProtocol) as port:
        yield port


def _scopes(port: int, data: bytes) -> list[dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        received, closed = read_until_closed(sock)
    assert closed, received
    responses: list[RawResponse] = parse_responses(received)
    assert all(r.status == 200 for r in responses), responses
    return [r.json() for r in responses]


def _get(target: str, host: str | None = "test", version: str = "1.1", close: bool = True) -> bytes:
    lines = [f"GET {target} HTTP/{version}"]
    lines += [f"Host: {host}"] if host is not None else []
    lines += ["Connection: close"] if close else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    ("target", "host", "raw_path", "query"),
    [
        ("http://example.com/api/v1/health", "example.com", "/api/v1/health", ""),
        ("http://example.com:8080/a%20b?x=1&y=2", "example.com:8080", "/a%20b", "x=1&y=2"),
        ("https://[::1]:8443/p", "[::1]:8443", "/p", ""),
        ("HTTP://Example.COM/p#frag", "Example.COM", "/p", ""),
        ("http://example.com", "example.com", "/", ""),
        ("http://example.com?x=1", "example.com", "/", "x=1"),
    ],
)
def test_the_app_sees_the_targets_authority_as_host(
    echo_port: int, target: str, host: str, raw_path: str, query: str
) -> None:
    """The Host received (another name) is ignored; the path carries no scheme or authority."""
    (scope,) = _scopes(echo_port, _get(target, host="received.example"))
    assert scope["hosts"] == [host]
    assert scope["raw_path"] == raw_path and scope["query_string"] == query
    assert scope["path"] == raw_path.replace("%20", " ")
    assert scope["server"] == ["127.0.0.1", echo_port]  # the socket's address, as ASGI says


def test_an_http10_absolute_target_without_host_gets_its_authority(echo_port: int) -> None:
    (scope,) = _scopes(echo_port, _get("http://example.com/a", host=None, version="1.0"))
    assert scope["hosts"] == ["example.com"] and scope["path"] == "/a"


def test_the_host_is_replaced_per_request_on_a_kept_connection(echo_port: int) -> None:
    """An absolute target, then an origin-form one: the second keeps its own Host."""
    first = _get("http://example.com/a", host="received.example", close=False)
    scopes = _scopes(echo_port, first + _get("/b", host="second.example"))
    assert [s["hosts"] for s in scopes] == [["example.com"], ["second.example"]]
    assert [s["path"] for s in scopes] == ["/a", "/b"]


def test_an_origin_form_target_keeps_its_host(echo_port: int) -> None:
    (scope,) = _scopes(echo_port, _get("/api/v1/health?x=1", host="example.com:81"))
    assert scope["hosts"] == ["example.com:81"] and scope["path"] == "/api/v1/health"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        (b"http://example.com/a", b"example.com"),
        (b"http://h:80", b"h:80"),
        (b"http://u@h/a", b"u@h"),
        (b"http://h?x=/y", b"h"),
        (b"/a?next=http://h/", None),
        (b"*", None),
    ],
)
def test_target_host(url: bytes, host: bytes | None) -> None:
    assert target_host(url) == host


@pytest.mark.parametrize("url", [b"HTTPS://h/a", b"Http://h"])
def test_the_served_schemes_in_any_case(url: bytes) -> None:
    assert target_host(url) == b"h"


@pytest.mark.parametrize("url", [b"ftp://h/a", b"ws://h/a", b"wss://h", b"file:///etc/passwd"])
def test_another_scheme_is_refused(url: bytes) -> None:
    with pytest.raises(Refusal) as refused:
        target_host(url)
    assert (refused.value.status, refused.value.code) == (400, "BAD_REQUEST")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://user@example.com/api/v1/health", "target's authority is not a valid host"),
        ("http://user:pw@example.com/api/v1/health", "target's authority is not a valid host"),
        ("http://a%zz/api/v1/health", "request target is not a valid URI"),  # httptools'
        ("http://:80/api/v1/health", "request target is not a valid URI"),
    ],
)
def test_an_authority_that_is_no_host_is_400(stack: Stack, target: str, reason: str) -> None:
    """User info (RFC 9110 §4.2.4), a bad escape, no host: nothing to take as the Host."""
    (response,) = _send(stack, _get(target))
    assert_refused(response, reason)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("target", "host"),
    [("/api/v1/health", None), ("http://example.com/api/v1/health", None)],
    ids=["origin-form", "absolute-form"],
)
def test_an_http11_request_without_host_stays_400(
    stack: Stack, target: str, host: str | None
) -> None:
    """RFC 9112 §3.2: every HTTP/1.1 request needs one Host, whatever its target's form."""
    (response,) = _send(stack, _get(target, host=host))
    assert_refused(response, "exactly one Host")


@pytest.mark.integration
@pytest.mark.parametrize(
    "target", ["ftp://localhost/api/v1/health", "ws://localhost/api/v1/health"]
)
def test_a_target_of_another_scheme_is_400(stack: Stack, target: str) -> None:
    """Review: served as if it were http (``GET ftp://host/api/v1/health``: 200)."""
    (response,) = _send(stack, _get(target))
    assert_refused(response, "scheme is not http or https")


@pytest.mark.integration
def test_the_asterisk_form_is_for_options_only(stack: Stack) -> None:
    """RFC 9112 §3.2.4; ``GET *`` was routed as a path (404)."""
    (response,) = _send(stack, _get("*"))
    assert_refused(response, "request target of * is for OPTIONS")
    (options,) = _send(stack, _get("*").replace(b"GET", b"OPTIONS", 1))
    assert options.status != 400


@pytest.mark.integration
def test_an_absolute_target_naming_another_host_is_served(stack: Stack) -> None:
    (response,) = _send(stack, _get("http://example.com/api/v1/health", host="other.example"))
    assert response.status == 200 and response.json()["status"] == "success"


@pytest.mark.integration
@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/data/t?name=%FF",
        "/api/v1/data/t?name=%C0%AF",  # an overlong "/"
        "/api/v1/data/t?name=%ED%A0%80",  # a surrogate, U+D800
        "/api/v1/data/t/%E2%82",  # a truncated sequence in the path
        "/api/v1/health?x=%ff",
    ],
)
def test_a_target_that_is_not_utf8_once_decoded_is_400(stack: Stack, target: str) -> None:
    """QA: each bad byte was decoded to U+FFFD, so ``DELETE /data/t?name=%ED%A0%80`` deleted
    a record holding "\\ufffd", one the client never named."""
    (response,) = _send(stack, _get(target))
    assert_refused(response, "not valid UTF-8")


@pytest.mark.integration
def test_a_target_with_utf8_escapes_is_served(stack: Stack) -> None:
    (response,) = _send(stack, _get("/api/v1/health?x=%C3%A9%F0%9F%98%80%25FF"))
    assert response.status == 200
