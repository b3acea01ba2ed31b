"""uvicorn's HTTP protocol with a deadline for a request's headers, and our 400 for a request
it cannot parse.

uvicorn arms its keep-alive timer only once a response is done: a connection that sends
nothing, or only part of a request's headers, is kept until the client closes it, holding a
worker's file descriptor and buffers (a slow-headers attack, bounded only by the worker's fd
limit). As nginx's ``client_header_timeout`` and Go's ``ReadHeaderTimeout`` do, a connection
here has ``HEADER_TIMEOUT`` seconds (10), from opening or from the first byte of each request, to
deliver that request's headers; past that it is closed. Between requests uvicorn's keep-alive
timeout (gunicorn's ``keepalive``, 5 s) applies as before; a request's body is read by the
app, which bounds it itself (``MAX_BODY_BYTES``, and ``BODY_TIMEOUT`` between two pieces:
``api.hardening``).

A request httptools cannot parse gets a 400 in the error envelope (with X-Request-ID and the
security headers) and the connection closes. uvicorn wrote its plain-text 400 and closed at
once, while requests pipelined before the bad one were still running: their answers were lost
(one of them may have written a record) and each logged a traceback for writing to a closed
transport. Here the 400 waits until those requests are answered, in order.

``deploy/gunicorn.conf.py`` installs it in each worker (``post_fork``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from api.encoding import dumps
from api.middleware import access_log, encoded_response_headers, new_request_id

log = logging.getLogger("api.connections")

MAX_URL_BYTES = 16 * 1024
"""Request-target bytes (path and query) accepted; Node's limit for a whole head, twice
Apache's ``LimitRequestLine``. A filter with a few hundred ids in ``[in]`` fits."""

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application


class Refusal(Exception):
    """Raised from a parser callback to refuse the request being parsed; httptools turns it
    into an ``HttpParserCallbackError`` and the protocol answers with these."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def refusal(refused: Refusal, request_id: str, server_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole answer to a refused request: the error envelope with our headers."""
    body = dumps(
        {
            "status": "error",
            "error": {"code": refused.code, "message": refused.message, "details": []},
            "request_id": request_id,
        }
    )
    headers = [
        *server_headers,  # uvicorn's Date and Server, as on every answer
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        *encoded_response_headers(request_id, "/"),
        (b"connection", b"close"),
    ]
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return STATUS_LINE[refused.status] + head + b"\r\n" + body


def head_problem(http_version: str, headers: list[tuple[bytes, bytes]]) -> Refusal | None:
    """Why a parsed request head must be refused (RFC 9112), or None. ``headers`` have
    lower-case names, as uvicorn collects them."""
    hosts = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            if any(c != b"chunked" for c in codings):
                return Refusal(
                    501,
                    "NOT_IMPLEMENTED",
                    "Transfer-Encoding must be chunked (or absent): other codings are not "
                    "decoded here",
                )
    if http_version == "1.1" and hosts != 1:
        return Refusal(400, "BAD_REQUEST", "An HTTP/1.1 request needs exactly one Host header")
    return None


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout = 10.0  # HEADER_TIMEOUT, set per worker by deploy/gunicorn.conf.py
    _header_timer: asyncio.TimerHandle | None = None
    _running: RequestResponseCycle | None = None  # the pipelined ones wait in ``self.pipeline``
    _refusal: bytes | None = None  # the answer, once a request could not be parsed
    _refused: Refusal | None = None  # why a callback stopped the parser, if one did

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a keep-alive connection's next request
            self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            self._stop(
                Refusal(414, "URI_TOO_LONG", f"The request target is over {MAX_URL_BYTES} bytes")
            )

    def on_headers_complete(self) -> None:
        self._disarm()
        problem = head_problem(self.parser.get_http_version(), self.headers)
        if problem is not None:
            self._stop(problem)
        super().on_headers_complete()

    def _stop(self, refused: Refusal) -> None:
        self._refused = refused
        raise refused

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            # Debug only: under a slow-headers attack this would be one line per connection.
            log.debug("closed a connection: no whole request headers in %ss", self.header_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # the parser is stuck at the bad request: whatever follows is dropped
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._refuse(exc)
        except httptools.HttpParserUpgrade:  # as uvicorn does
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if any
        if self._refusal is not None and not self.transport.is_closing() and self._answered():
            self._send_refusal()

    def _answered(self) -> bool:
        """Whether every request parsed before the bad one has had its answer."""
        running = self._running
        return not self.pipeline and (
            running is None or running.response_complete or running.disconnected
        )

    def _refuse(self, exc: httptools.HttpParserError) -> None:
        self._disarm()  # the bad request's head is over
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            # The bad bytes are in this request's body (chunk framing): the 400 answers it.
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()  # never started
            else:
                # Its app reads a disconnect and its answer is dropped, as if the client left
                # (set before any close: writing to a closed transport raises).
                cycle.disconnected = True
                cycle.message_event.set()
                if cycle.response_started:
                    self.transport.close()  # too late for a 400
                    return
        refused = self._refused or Refusal(
            400, "BAD_REQUEST", f"The request is not valid HTTP/1.1: {exc}"
        )
        request_id = new_request_id()
        # The request's one access line (as the middleware writes for the others).
        access_log.info(
            "access",
            status=refused.status,
            client=self.client[0] if self.client else None,
            request_id=request_id,
            error=refused.code if self._refused else type(exc).__name__,
        )
        self._refusal = refusal(refused, request_id, self.server_state.default_headers)
        if self._answered():
            self._send_refusal()

    def _send_refusal(self) -> None:
        self._unset_keepalive_if_required()
        self.transport.write(self._refusal or b"")
        self.transport.close()
