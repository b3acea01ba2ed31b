"""uvicorn's HTTP protocol with a deadline for a request's headers.

uvicorn arms its keep-alive timer only once a response is done: a connection that sends
nothing, or only part of a request's headers, is kept until the client closes it, holding a
worker's file descriptor and buffers (a slow-headers attack, bounded only by the worker's fd
limit). As nginx's ``client_header_timeout`` and Go's ``ReadHeaderTimeout`` do, a connection
here has ``HEADER_TIMEOUT`` seconds (10), from opening or from the first byte of each request, to
deliver that request's headers; past that it is closed. Between requests uvicorn's keep-alive
timeout (gunicorn's ``keepalive``, 5 s) applies as before; a request's body is read by the
app, which bounds it itself (``MAX_BODY_BYTES``, and ``BODY_TIMEOUT`` between two pieces:
``api.hardening``).

``deploy/gunicorn.conf.py`` installs it in each worker (``post_fork``).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("api.connections")


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout = 10.0  # HEADER_TIMEOUT, set per worker by deploy/gunicorn.conf.py
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a keep-alive connection's next request
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

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
