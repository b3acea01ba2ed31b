"""Pipelined requests (``api.connections``): how many may wait, and a client that pipelines and
leaves. uvicorn queued every request of a read and read on after each answer, so a client that
pipelined without reading the answers grew a worker by hundreds of MB; and when a client left,
it told only the request parsed last, so the one being served wrote to the closed connection
(a RuntimeError traceback, logged at error)."""

from __future__ import annotations

import socket
import struct

import pytest

from api.connections import MAX_PIPELINED
from tests.api.test_connections import _error_lines, _log_size, _send
from tests.support.auth import Account
from tests.support.factories import token
from tests.support.rawhttp import request
from tests.support.stack import Stack
from tests.support.storedirect import bulk_insert

pytestmark = pytest.mark.integration


def test_a_deep_pipeline_is_answered_in_part_then_closed(stack: Stack) -> None:
    """2,000 requests in one write: the first ones are answered in order, the last of them
    with ``Connection: close``; the rest were never started, for the client to send again."""
    responses = _send(stack, request("GET", "/api/v1/health") * 2000)
    assert MAX_PIPELINED + 1 <= len(responses) < 2000
    assert all(r.status == 200 for r in responses)
    assert responses[-1].headers["connection"] == "close"
    assert all(r.headers.get("connection") != "close" for r in responses[:-1])


def test_a_pipeline_within_the_limit_is_answered_whole(stack: Stack) -> None:
    """One served and MAX_PIPELINED waiting behind it, the last of them closing."""
    waiting = request("GET", "/api/v1/health") * (MAX_PIPELINED - 1)
    last = request("GET", "/api/v1/health", {"Connection": "close"})
    responses = _send(stack, request("GET", "/api/v1/health") + waiting + last)
    assert [r.status for r in responses] == [200] * (MAX_PIPELINED + 1)


def test_a_client_that_leaves_during_a_pipelined_download_logs_no_error(
    stack: Stack, admin: Account
) -> None:
    table = f"pipe_{token()}"
    bulk_insert(stack, table, [{"text": "x" * 1000, "n": i} for i in range(3000)])
    dump = request("GET", f"/api/v1/dump/{table}", admin.headers)
    start = _log_size(stack)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", stack.port)) as sock:
            sock.sendall(dump * 3)
            received = 0
            while received < 100_000:
                chunk = sock.recv(65536)
                assert chunk, "closed before 100 KB of the first dump"
                received += len(chunk)
            # Reset, not a graceful close: the worker learns of it while it writes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert _error_lines(stack, start) == []
