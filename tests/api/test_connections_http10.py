"""HTTP/1.0 requests (``api.connections``): no chunked bodies, no ``100 Continue``, and no
Transfer-Encoding (RFC 9112 §6.1, §6.3, §7; RFC 9110 §10.1.1). uvicorn chunked a streamed
body for a 1.0 client as for 1.1 (the chunk sizes ended up in its NDJSON), sent it
``100 Continue``, and read a 1.0 request's chunked body.
"""

from __future__ import annotations

import gzip
import json
import socket

import httpx
import pytest

from tests.api.test_connections import assert_refused
from tests.support.auth import Account
from tests.support.factories import token
from tests.support.rawhttp import RawResponse, read_until_closed
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def exchange(stack: Stack, data: bytes) -> tuple[list[str], RawResponse]:
    """The status lines (``100 Continue`` included) and the final answer to one request,
    whose body is everything until the server closes (no framing assumed)."""
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(data)
        received, closed = read_until_closed(sock)
    assert closed, received
    status_lines = []
    while True:
        head, found, received = received.partition(b"\r\n\r\n")
        assert found, head
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status_lines.append(status_line)
        if not status_line.startswith("HTTP/1.1 1"):
            break
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_lines, RawResponse(int(status_line.split()[1]), headers, received)


def http10(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


@pytest.fixture(scope="module")
def table(admin: Account, stack: Stack) -> str:
    name = f"t_{token()}"
    with httpx.Client(base_url=stack.base_url, headers=admin.headers) as http:
        for n in range(3):
            assert http.post(f"/api/v1/data/{name}", json={"data": {"n": n}}).status_code == 201
    return name


@pytest.mark.parametrize("coding", ["identity", "gzip"])
def test_a_streamed_body_goes_raw_to_an_http10_client(
    stack: Stack, admin: Account, table: str, coding: str
) -> None:
    """No Content-Length (streamed): the body is the bytes until the server closes."""
    headers = {**admin.headers, "Accept-Encoding": coding}
    status_lines, response = exchange(stack, http10("GET", f"/api/v1/dump/{table}", headers))
    assert status_lines == ["HTTP/1.1 200 OK"]
    assert "transfer-encoding" not in response.headers
    assert "content-length" not in response.headers
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"].startswith("application/x-ndjson")
    body = response.body
    if coding == "gzip":
        assert response.headers["content-encoding"] == "gzip"
        body = gzip.decompress(body)
    assert [json.loads(line)["n"] for line in body.splitlines()] == [0, 1, 2]


def test_http11_clients_still_get_a_chunked_stream(
    stack: Stack, admin: Account, table: str
) -> None:
    request = f"GET /api/v1/dump/{table} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in admin.headers.items())
    _, response = exchange(stack, request.encode("latin-1") + b"\r\n")
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.body.endswith(b"\r\n0\r\n\r\n")


def test_an_http10_client_gets_no_100_continue(stack: Stack, admin: Account) -> None:
    body = b'{"data": {"n": 1}}'
    headers = {
        **admin.headers,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Expect": "100-continue",
    }
    status_lines, response = exchange(
        stack, http10("POST", f"/api/v1/data/t_{token()}", headers, body)
    )
    assert status_lines == ["HTTP/1.1 201 Created"]
    assert response.json()["data"]["n"] == 1


def test_an_http10_request_with_transfer_encoding_is_400(stack: Stack, admin: Account) -> None:
    """Faulty framing for 1.0, even when chunked; its body is never read as a request."""
    table = f"t_{token()}"
    headers = {**admin.headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    body = b"12\r\n" + b'{"data": {"n": 1}}' + b"\r\n0\r\n\r\n"
    status_lines, response = exchange(stack, http10("POST", f"/api/v1/data/{table}", headers, body))
    assert status_lines == ["HTTP/1.1 400 Bad Request"]
    assert_refused(response, "HTTP/1.0 request cannot have a Transfer-Encoding")
    with httpx.Client(base_url=stack.base_url, headers=admin.headers) as http:
        assert http.get(f"/api/v1/data/{table}").status_code == 404
