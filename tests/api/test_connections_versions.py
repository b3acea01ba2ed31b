"""A request line naming a later HTTP gets 505 (``api.connections``): the HTTP/2 preface
(``PRI * HTTP/2.0``) and versions httptools stops at (``HTTP/3.0``, ``HTTP/3``) were a 400,
where only an ``HTTP/2.0`` head that parsed was a 505. Garbage versions stay 400."""

from __future__ import annotations

import socket
import time

import httptools
import pytest

from api.connections import later_version
from tests.api.test_connections import SECURITY, _send, assert_refused
from tests.support.rawhttp import parse_responses, read_until_closed
from tests.support.stack import Stack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LATER = [
    (PREFACE, "2.0"),
    (b"GET / HTTP/3.0\r\n", "3.0"),
    (b"GET / HTTP/2.1\r\n", "2.1"),
    (b"GET / HTTP/9.9\r\n", "9.9"),
    (b"GET / HTTP/3\r\n", "3"),
    (b"GET / HTTP/2\r\n", "2"),
    (b"GET / HTTP/3.0\n", "3.0"),
    (b"GET / HTTP/3.0", "3.0"),  # the line's end not read yet
]
GARBAGE = [
    b"GET / HTTP/1.2\r\n",
    b"GET / HTTP/0.5\r\n",
    b"GET / HTTP/22.0\r\n",
    b"GET / HTTP/2x\r\n",
    b"GET / HTTP/3.0x\r\n",
    b"GET / HTTP/3.01\r\n",
    b"GET / HTTP/3.0 \r\n",
    b"GET / HTTP/x.1\r\n",
    b"GET / HTTP/1.x\r\n",
    b"GET / http/3.0\r\n",
    b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n",  # httptools wants the preface after it
]


def _stopped_at(line: bytes) -> tuple[str, str]:
    """What a real httptools parser says when it stops at ``line``: reason and version."""
    parser = httptools.HttpRequestParser(object())
    with pytest.raises(httptools.HttpParserError) as stopped:
        parser.feed_data(line)
    return str(stopped.value), parser.get_http_version()


@pytest.mark.parametrize(("line", "version"), LATER)
def test_later_version_names_a_later_http(line: bytes, version: str) -> None:
    """On the parser's own reasons: a new httptools wording would fail here."""
    assert later_version(*_stopped_at(line), line) == version


@pytest.mark.parametrize("line", GARBAGE)
def test_later_version_leaves_garbage_alone(line: bytes) -> None:
    assert later_version(*_stopped_at(line), line) is None


def test_later_version_sees_a_version_split_between_reads() -> None:
    """The protocol passes the end of the read before with the one the parser stopped in."""
    assert later_version("Expected dot", "3.0", b" HTTP/3" + b"\r\nHost: x") == "3"
    assert later_version("Expected dot", "3.0", b" HTTP/3" + b"\r") == "3"  # the CR read alone
    assert later_version("Expected dot", "3.0", b"3x") is None


def _head(version: str, method: str = "GET") -> bytes:
    return f"{method} /api/v1/health HTTP/{version}\r\nHost: x\r\n\r\n".encode()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("data", "version"),
    [
        (PREFACE, "2.0"),
        (PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", "2.0"),  # and a SETTINGS frame
        (_head("3.0"), "3.0"),
        (_head("2.1"), "2.1"),
        (_head("3"), "3"),
        (_head("2"), "2"),
        (_head("2.0"), "2.0"),  # parsed whole: refused by head_problem, as before
    ],
    ids=["preface", "preface-settings", "3.0", "2.1", "3", "2", "2.0"],
)
def test_a_later_http_is_505(stack: Stack, data: bytes, version: str) -> None:
    (response,) = _send(stack, data)
    assert_refused(response, f"HTTP/{version} is not served", 505, "HTTP_VERSION_NOT_SUPPORTED")


@pytest.mark.integration
def test_a_head_request_in_a_later_http_is_505_without_a_body(stack: Stack) -> None:
    (response,) = _send(stack, _head("3.0", "HEAD"))
    assert response.status == 505 and response.body == b""
    assert response.headers["connection"] == "close" and "x-request-id" in response.headers
    assert all(name in response.headers for name in SECURITY)


@pytest.mark.integration
def test_a_later_http_typed_byte_by_byte_is_505(stack: Stack) -> None:
    """Each byte its own read (as far as the network keeps them apart): the version ends in a
    read after the one holding ``HTTP/3``."""
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in _head("3"):
            sock.sendall(bytes([byte]))
            time.sleep(0.005)  # to keep the reads apart: the condition, not a timing check
            if byte == ord("\n"):
                break  # the parser stops at the line's end
        received, closed = read_until_closed(sock)
    assert closed
    (response,) = parse_responses(received)
    assert_refused(response, "HTTP/3 is not served", 505, "HTTP_VERSION_NOT_SUPPORTED")


@pytest.mark.integration
@pytest.mark.parametrize("line", [line for line in GARBAGE if b"1.2" not in line])
def test_a_garbage_version_is_400(stack: Stack, line: bytes) -> None:
    (response,) = _send(stack, line if line.endswith(b"\r\n\r\n") else line + b"Host: x\r\n\r\n")
    assert_refused(response, "not valid HTTP/1.1")


@pytest.mark.integration
@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_http10_and_http11_are_served(stack: Stack, version: str) -> None:
    data = _head(version).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    (response,) = _send(stack, data)
    assert response.status == 200, response
