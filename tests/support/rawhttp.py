"""HTTP/1.1 over a bare socket, for what no client library sends: pipelined requests, broken
framing, bodies that never end. Responses are parsed by their Content-Length (every answer
the API writes has one, errors included)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lowercased names; a repeated header keeps its last value
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def read_until_closed(sock: socket.socket, bound: float = 15.0) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within ``bound``
    seconds (a failure bound, not a timing assertion)."""
    sock.settimeout(bound)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def parse_responses(data: bytes) -> list[RawResponse]:
    responses = []
    while data:
        head, found, rest = data.partition(b"\r\n\r\n")
        assert found, f"an incomplete response head: {data[:300]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        responses.append(RawResponse(int(status_line.split()[1]), headers, rest[:length]))
        data = rest[length:]
    return responses


def request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One request's bytes; ``Content-Length`` is added for a body unless ``headers`` frame it."""
    fields = {"Host": "test", **(headers or {})}
    if body and "Transfer-Encoding" not in fields and "Content-Length" not in fields:
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body
