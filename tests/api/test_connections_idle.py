"""A connection between requests (``api.connections``): bytes that begin no request, such as
the empty lines RFC 9112 §2.2 lets a server skip before a request line, do not keep it open.

uvicorn stops its keep-alive timer on any bytes, and the header deadline started only when a
request's head began: one CRLF after an answer left the connection with no timer at all, held
for good (QA). Run in an in-process uvicorn server with a short HEADER_TIMEOUT.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from api.connections import HeaderDeadlineProtocol
from tests.api.test_connections_absolute import scope_echo
from tests.support.inprocessserver import serving
from tests.support.rawhttp import parse_responses, read_until_closed


class QuickHeaders(HeaderDeadlineProtocol):
    header_timeout = 0.5


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    # A keep-alive far past the header deadline: only that one can close.
    with serving(scope_echo, QuickHeaders, timeout_keep_alive=60) as port:
        yield port


@pytest.mark.parametrize("between", [b"\r\n", b"\n", b"\r\n\r\n"])
def test_empty_lines_after_an_answer_do_not_hold_the_connection(port: int, between: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"path"' not in first:
            chunk = sock.recv(65536)
            assert chunk, "closed before the answer"
            first += chunk
        sock.sendall(between)
        # Closed by the header deadline (0.5 s), long before the 60 s keep-alive; the socket's
        # 10 s timeout is only a failure bound.
        rest, closed = read_until_closed(sock, bound=10.0)
    assert closed and rest == b""
    assert [r.status for r in parse_responses(first)] == [200]


def test_a_request_after_empty_lines_is_served(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while received.count(b'"path"') < 2:
            chunk = sock.recv(65536)
            assert chunk, "closed before both answers"
            received += chunk
    assert [r.status for r in parse_responses(received)] == [200, 200]
