"""uvicorn's HTTP protocol with a deadline for a request's headers, our checks of a request's
head, and our answer (the error envelope) to a request it refuses.

uvicorn arms its keep-alive timer only once a response is done: a connection that sends
nothing, or only part of a request's headers, is kept until the client closes it, holding a
worker's file descriptor and buffers (a slow-headers attack, bounded only by the worker's fd
limit). As nginx's ``client_header_timeout`` and Go's ``ReadHeaderTimeout`` do, a connection
here has ``HEADER_TIMEOUT`` seconds (10), from opening or from the first byte of each request (an
empty line before it too), to deliver that request's headers; past that it is closed. Between
requests uvicorn's keep-alive timeout (gunicorn's ``keepalive``, 5 s) applies as before; a
request's body is read by the app, which bounds it itself (``MAX_BODY_BYTES``, and
``BODY_TIMEOUT`` between two pieces: ``api.hardening``).

A response whose client reads none of it for ``SEND_TIMEOUT`` seconds (60, nginx's
``send_timeout``: checked while the worker's write buffer is full, each period from the last
time the client took some of what waits, in that buffer or the kernel's send queue) ends with
the connection, logged as ``response_cut_off`` (warning; a streamed
answer's access line also says ``ClientDisconnected``):
uvicorn waits for the client to drain what it sent, without bound, and a download whose
client stopped reading held its request, its connection and the app's task until the client
closed (the store freed the dump's cursor after ``STORE_SCAN_IDLE``, the worker kept the
rest).

A request httptools cannot parse, or whose head ``head_problem`` refuses (RFC 9112: the
version, Host, the framing; one Authorization), gets the error envelope (with X-Request-ID
and the security headers; no body for HEAD) and the connection closes, lingering (below). uvicorn
wrote its plain-text 400 and closed at once, while requests pipelined before the bad one were
still running: their answers were lost (one of them may have written a record) and each logged a
traceback for writing to a closed transport. Here the refusal waits until those requests are
answered, in order. A request line naming a later HTTP (``PRI * HTTP/2.0``, the HTTP/2
preface; ``HTTP/3.0``, ``HTTP/3``) gets 505, as an HTTP/2.0 head does; a garbage version, 400.

Every close while the client may still be sending lingers as nginx's does (``LINGER_*``): after a
refusal the client's bytes past the bad head (a body, the HTTP/2 frames after the preface) are
read and dropped, or the close would reset the connection and destroy the refusal unread; so
after any answer that ends its connection (``_LingeringClose``), requests parsed after it
dropped unstarted. A client that half-closes after whole requests gets their answers
(``eof_received``).

What uvicorn's httptools protocol does not do by the RFCs, done here: an HTTP/1.0 client
gets no ``100 Continue`` and no chunked body (a body of unknown length is sent raw and ends
when the connection closes: ``close_delimited``); a request asking to ``Upgrade`` (the API
has no WebSocket route) is served over HTTP/1.1, then the connection closes; an absolute
request target (``GET http://host/path``) is served with its authority as the Host the app sees
(RFC 9112 §3.2.2, §3.3), and with an empty path as ``/``; one of another scheme
(``ftp://``) is refused, as is the asterisk form for any method but OPTIONS.

``deploy/gunicorn.conf.py`` installs it in each worker (``post_fork``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import re
import socket
import struct
import sys
import termios
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote_to_bytes

import httptools
import structlog
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from api.encoding import dumps
from api.hardening import MAX_HEADER_BYTES
from api.http_metrics import OTHER_METHOD, UNMATCHED, observe
from api.middleware import (
    CLIENT_LEFT,
    access_log,
    encoded_response_headers,
    logged_path,
    request_id_from,
)

log = logging.getLogger("api.connections")
cut_log = structlog.get_logger("api.connections")

# Linux: the bytes the kernel holds for a socket, unsent or unacknowledged (None elsewhere).
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None

MAX_URL_BYTES = 16 * 1024
"""Request-target bytes (path and query) accepted; Node's limit for a whole head, twice
Apache's ``LimitRequestLine``. A filter with a few hundred ids in ``[in]`` fits."""
MAX_HEAD_BYTES = MAX_URL_BYTES + MAX_HEADER_BYTES
"""A request's target and headers together, counted as they are parsed (431 past it). The app
checks the headers' size too (``api.hardening``), but only once all are in: httptools keeps
whatever a head holds, and one connection sending 2 GB of header lines grew a worker to 1.5 GB."""
READ_BYTES = 256 * 1024
"""The most uvloop reads from a socket at once."""
LINGER_IDLE_SECONDS = 5.0
LINGER_MAX_SECONDS = 30.0
"""A connection closed while its client may still be sending (requests past those answered,
a head cut short) first sends FIN and goes on reading, discarding: until the client closes,
LINGER_IDLE_SECONDS pass without a byte from it, or LINGER_MAX_SECONDS in all (nginx's
lingering close, same figures). Closed with bytes unread, Linux sends RST instead of FIN, and
the client's kernel drops the answers it received and the client had not read yet: the end of
a download, or the request answered last."""
MAX_PIPELINED = 32
"""Requests one connection may have waiting behind the one being served. uvicorn pauses reading
while one waits, but parses every request of a read (up to 256 KiB) and resumes reading after
each answer: a client pipelining without reading the answers queued ~2.4 KB a request in the
worker without bound (one connection took a worker from 69 to 285 MB in 2.5 s, never returned)."""

HOST = re.compile(
    rb"(?:\[[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"  # IP-literal
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"  # IPv4address or reg-name
    rb"(?::[0-9]*)?"
)
"""A valid Host value: ``uri-host [":" port]`` (RFC 9112 §3.2, RFC 3986 §3.2.2); empty too,
as a client sends for a target without an authority."""
ABSOLUTE_TARGET = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)")
"""An absolute-form request target's scheme and authority (RFC 3986 §3)."""
SERVED_SCHEMES = frozenset({b"http", b"https"})
"""The schemes of the targets this server is the origin for (``ftp://`` or ``ws://`` is not)."""

if TYPE_CHECKING:
    from uvicorn._types import (
        ASGI3Application,
        ASGIReceiveCallable,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )


# The reasons llhttp (httptools 0.9) gives when it stops at a request line's version.
H2_PREFACE = "Pause on PRI/Upgrade"  # PRI * HTTP/2.0: the start of the HTTP/2 preface
UNKNOWN_VERSION = "Invalid HTTP version"  # DIGIT "." DIGIT, but not 0.9, 1.0, 1.1 or 2.0
NO_MINOR = "Expected dot"  # "HTTP/" DIGIT, then no "."


class Refusal(Exception):
    """Raised from a parser callback to refuse the request being parsed; httptools turns it
    into an ``HttpParserCallbackError`` and the protocol answers with these."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def head_too_large() -> Refusal:
    return Refusal(
        431,
        "HEADERS_TOO_LARGE",
        f"The request target and headers are larger than {MAX_HEAD_BYTES} bytes",
    )


def refusal(
    refused: Refusal, request_id: str, server_headers: list[tuple[bytes, bytes]], head: bool
) -> bytes:
    """The whole answer to a refused request: the error envelope with our headers, without
    the envelope itself in answer to HEAD (RFC 9110 §9.3.2; its Content-Length stays, as a
    GET would get)."""
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
    head_lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return STATUS_LINE[refused.status] + head_lines + b"\r\n" + (b"" if head else body)


def version_not_supported(version: str) -> Refusal:
    return Refusal(505, "HTTP_VERSION_NOT_SUPPORTED", f"HTTP/{version} is not served here: use 1.1")


def later_version(reason: str, version: str, read: bytes) -> str | None:
    """The version of a request line httptools refused, if it is a later major one (2 to 9:
    RFC 9110 §15.6.6, 505), else None (garbage, such as ``HTTP/22.0`` or ``HTTP/2x``: 400).

    llhttp stops at the first digit it does not take, without saying where: ``reason`` says
    which (its major alone, as in ``HTTP/3``, or major and minor), ``version`` the digits read
    (a missing minor is 0), and ``read`` (the bytes read last, the request line's end among
    them) whether the version ends there: at a line end (its CR may be all that has come), or
    at the end of what has come yet.
    """
    if reason == H2_PREFACE:
        return "2.0"
    if version[0] not in "23456789":
        return None
    if reason == NO_MINOR:
        version = version[0]
    elif reason != UNKNOWN_VERSION:
        return None
    sent = b"HTTP/" + version.encode("ascii")
    if re.search(re.escape(sent) + rb"(?:[\r\n]|\Z)", read) is None:
        return None
    return version


def head_problem(
    http_version: str, headers: list[tuple[bytes, bytes]], upgrade: bool = False
) -> Refusal | None:
    """Why a parsed request head must be refused (RFC 9112), or None. ``headers`` have
    lower-case names, as uvicorn collects them; ``upgrade``: httptools stops after this head
    (an ``Upgrade`` asked, or CONNECT)."""
    if http_version not in ("1.0", "1.1"):  # httptools takes 0.9 and 2.0 too
        return version_not_supported(http_version)
    hosts = authorizations = 0
    body = False
    for name, value in headers:
        if name == b"host":
            hosts += 1
            if not HOST.fullmatch(value.strip(b" \t")):
                return Refusal(400, "BAD_REQUEST", "The Host header is not a valid host[:port]")
        elif name == b"authorization":
            # Two could name two identities: a proxy reading the last would see another one.
            authorizations += 1
        elif name == b"content-length":
            body = body or value.strip().lstrip(b"0") != b""  # not 0 (httptools: digits)
        elif name == b"transfer-encoding":
            if http_version == "1.0":  # RFC 9112 §6.1: faulty framing, whatever it says
                return Refusal(
                    400, "BAD_REQUEST", "An HTTP/1.0 request cannot have a Transfer-Encoding"
                )
            codings = [c.strip().lower() for c in value.split(b",")]
            if any(c != b"chunked" for c in codings):
                return Refusal(
                    501,
                    "NOT_IMPLEMENTED",
                    "Transfer-Encoding must be chunked (or absent): other codings are not "
                    "decoded here",
                )
            body = True
    if hosts > 1 or (http_version == "1.1" and hosts == 0):
        return Refusal(
            400, "BAD_REQUEST", "A request needs exactly one Host header (HTTP/1.0: at most one)"
        )
    if authorizations > 1:
        return Refusal(400, "BAD_REQUEST", "A request can have only one Authorization header")
    if upgrade and body:
        # httptools skips the body of such a request and would parse it as the next request.
        return Refusal(
            400, "BAD_REQUEST", "A request asking for a protocol upgrade cannot have a body here"
        )
    return None


_HIGH_ESCAPE = re.compile(rb"%[89a-fA-F][0-9a-fA-F]")


def target_encoding_problem(url: bytes) -> Refusal | None:
    """400 for a target whose percent-escapes decode to bytes that are not UTF-8 (``%FF``, a
    surrogate's ``%ED%A0%80``): uvicorn and Starlette decode each to U+FFFD, which a filter
    then matched (QA: ``DELETE /data/t?name=%ED%A0%80`` deleted a record holding "\ufffd"),
    where a JSON body with those bytes is a 422."""
    if not _HIGH_ESCAPE.search(url):
        return None
    try:
        unquote_to_bytes(url).decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(
            400, "BAD_REQUEST", "The request target is not valid UTF-8 once percent-decoded"
        )
    return None


def routable_target(url: bytes) -> bytes | None:
    """The request target as uvicorn can route it, or None if it is not a valid one.

    uvicorn takes the path of an absolute target (``http://host/path``) and ignores its
    authority, but one with an empty path (``http://host``, valid: RFC 9112 §3.2.2) made it
    fail on ``None`` ("User callback error"): that one is served as ``/``.
    """
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return None
    if parsed.path is None:
        return b"/?" + parsed.query if parsed.query else b"/"
    return url


def target_host(url: bytes) -> bytes | None:
    """The authority of an absolute-form target (``http://host:port/path``), or None for a
    target without one (``*``). The app must see it as the Host (RFC 9112 §3.2.2: the received
    Host is ignored; §3.3: the target URI is the request target), and a path without it.
    ``Refusal`` (400) for a scheme other than http or https: another origin's, not served here
    (uvicorn served ``GET ftp://host/path`` as ``/path``)."""
    absolute = ABSOLUTE_TARGET.match(url)
    if absolute is None:
        return None
    if absolute[1].lower() not in SERVED_SCHEMES:
        raise Refusal(400, "BAD_REQUEST", "The request target's scheme is not http or https")
    return absolute[2]


def use_host(headers: list[tuple[bytes, bytes]], host: bytes) -> None:
    """Make ``host`` the one Host of ``headers``, in place (the list is the scope's)."""
    kept = [(name, value) for name, value in headers if name != b"host"]
    headers[:] = [*kept, (b"host", host)]


def close_delimited(app: ASGI3Application, cycle: RequestResponseCycle) -> ASGI3Application:
    """``app`` answering an HTTP/1.0 request: a body without Content-Length goes raw and ends
    as the connection closes (RFC 9112 §6.3), where uvicorn would chunk it, a coding 1.0
    clients do not know (§7). uvicorn closes the connection after answering 1.0.

    uvicorn has no setting for it, so two fields of its cycle are set: ``chunked_encoding``
    False before the head goes out (the framing is decided: it adds no Transfer-Encoding),
    then ``expected_content_length`` to each piece of the body (what it counts the body
    down from, as for a Content-Length, and wants at zero once the body ends).

    Such a body that cannot be finished (a dump whose store cursor is lost, a graceful stop's
    cut-off) ends with a reset, not the close that ends a complete one: a client (or an nginx
    hop, HTTP/1.0 by default) had a 200 whose body stopped at a line boundary and no way to
    tell (QA; RFC 9112 §6.3). HTTP/1.1's chunked bodies say it by their missing last chunk.
    """

    async def http10_app(
        scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        raw = False

        async def send_raw(message: ASGISendEvent) -> None:
            nonlocal raw
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"content-length" for name, _ in headers):
                    raw = True
                    cycle.chunked_encoding = False
                    message["headers"] = [
                        h for h in headers if h[0].lower() != b"transfer-encoding"
                    ]
            elif raw and message["type"] == "http.response.body":
                cycle.expected_content_length = len(message.get("body", b""))
            await send(message)

        try:
            await app(scope, receive, send_raw)
        except BaseException:
            if raw and not cycle.response_complete:
                reset(cycle.transport)
            raise

    return http10_app


def reset(transport: asyncio.Transport) -> None:
    """Close ``transport`` with a TCP reset: data still unsent is dropped (SO_LINGER 0)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _LingeringClose:
    """The transport as every request sees it: its ``close()``, which uvicorn calls after an
    answer that ends the connection, is the protocol's lingering close (``_linger``): nothing
    more is parsed, and what the client still sends is read and dropped. QA: a 413 (or 415,
    401, 408) sent with ``Connection: close`` while the body was still coming was closed at
    once, with bytes unread: the kernel reset the connection and ordinary clients
    (``urllib``) lost the answer."""

    def __init__(self, protocol: HeaderDeadlineProtocol) -> None:
        self._protocol = protocol
        transport = self._transport = protocol.transport
        # What uvicorn calls on every answer, bound here rather than found by __getattr__.
        self.write = transport.write
        self.is_closing = transport.is_closing

    def close(self) -> None:
        self._protocol._close_lingering()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout = 10.0  # HEADER_TIMEOUT, set per worker by deploy/gunicorn.conf.py
    send_timeout = 60.0  # SEND_TIMEOUT, the same way
    _header_timer: asyncio.TimerHandle | None = None
    _send_timer: asyncio.TimerHandle | None = None  # armed while the write buffer is full
    _unsent = 0  # bytes waiting (``_unsent_bytes``) when the send timer was last armed
    _running: RequestResponseCycle | None = None  # the pipelined ones wait in ``self.pipeline``
    _refusal: bytes | None = None  # the answer, once a request could not be parsed
    _refused: Refusal | None = None  # why a callback stopped the parser, if one did
    _head = False  # the request being parsed is a HEAD
    _upgrade_asked = False  # a request asked for Upgrade: nothing after its head is parsed
    # No more is read (MAX_PIPELINED were waiting, or a head came too slowly behind them): those
    # waiting are answered, then the connection closes; later requests are dropped unanswered.
    _closing = False
    _head_bytes = 0  # of the request whose head is being parsed (MAX_HEAD_BYTES)
    _head_read = 0  # bytes of the reads that ended inside that head
    _in_head = False  # a request's head has begun and is not complete
    _head_tail = b""  # the end of the last read that ended inside that head (``later_version``)
    _parsing = False  # a request is being parsed: ``self.headers`` are its own (so far)
    _linger_timer: asyncio.TimerHandle | None = None
    _half_closed = False  # the client's EOF came with requests to answer (``eof_received``)
    _linger_ends = 0.0  # loop time past which a lingering close ends whatever the client does

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsing = True
        self._head = False
        self._head_bytes, self._head_read, self._in_head = 0, 0, True
        self._head_tail = b""
        if self._header_timer is None and not self._closing:  # a keep-alive's next one
            self._arm()

    def on_message_complete(self) -> None:
        self._parsing = False  # what comes next is another request, or garbage before one
        super().on_message_complete()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head = self.parser.get_method() == b"HEAD"  # parsed before the target
        if len(self.url) > MAX_URL_BYTES:
            self._stop(
                Refusal(414, "URI_TOO_LONG", f"The request target is over {MAX_URL_BYTES} bytes")
            )
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # With ": " and CRLF: 30,000 empty headers ("a:") were 30 KB counted, 150 KB sent.
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._stop(head_too_large())

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        http_version = self.parser.get_http_version()
        upgrade = self.parser.should_upgrade()
        problem = head_problem(http_version, self.headers, upgrade)
        if problem is None and b"%" in self.url:
            problem = target_encoding_problem(self.url)
        if problem is not None:
            self._stop(problem)
        if not self.url.startswith(b"/"):  # origin form, nearly every request, parses
            target = routable_target(self.url)
            if target is None:
                self._stop(Refusal(400, "BAD_REQUEST", "The request target is not a valid URI"))
            try:
                host = target_host(self.url)
            except Refusal as refused:
                self._stop(refused)
            if host is None and self.url == b"*" and self.parser.get_method() != b"OPTIONS":
                # RFC 9112 §3.2.4: the asterisk form is for OPTIONS only
                self._stop(Refusal(400, "BAD_REQUEST", "A request target of * is for OPTIONS"))
            if host is not None:
                # Not empty, no user info (RFC 9110 §4.2.1, §4.2.4): what a Host may hold.
                if not host or not HOST.fullmatch(host):
                    self._stop(
                        Refusal(
                            400,
                            "BAD_REQUEST",
                            "The request target's authority is not a valid host[:port]",
                        )
                    )
                use_host(self.headers, host)
            self.url = target
        if http_version == "1.0":
            self.expect_100_continue = False  # RFC 9110 §10.1.1: a 1.0 client waits for none
        super().on_headers_complete()
        if self._closing or len(self.pipeline) > MAX_PIPELINED:
            # Drop this one and whatever follows in the read, and close once those waiting are
            # answered: by RFC 9112 §9.3.2 a client retries the requests a closed connection
            # left unanswered (none of them was started).
            if self.pipeline and self.pipeline[0][0] is self.cycle:
                self.pipeline.popleft()
            if not self._closing:
                log.debug("closing a connection: over %s requests waiting", MAX_PIPELINED)
                self._close_after_waiting()
        if upgrade:
            # Served over HTTP/1.1 (RFC 9110 §7.8), then closed: httptools parses nothing
            # after this head, whose next bytes may be in the protocol the client asked for.
            self.cycle.keep_alive = False

    def _should_upgrade(self) -> bool:
        """Never: the API has no WebSocket route. uvicorn's WebSocket handler answered
        ``Upgrade: websocket`` with its plain-text 400 or a bare 403, without our headers."""
        return False

    def _stop(self, refused: Refusal) -> NoReturn:
        self._refused = refused
        raise refused

    def pause_writing(self) -> None:
        """The transport's buffer is full: the client reads nothing (or too slowly)."""
        super().pause_writing()
        if self._send_timer is None:
            self._arm_send_timer()

    def _arm_send_timer(self) -> None:
        self._unsent = self._unsent_bytes()
        self._send_timer = self.loop.call_later(self.send_timeout, self._check_reading)

    def _unsent_bytes(self) -> int:
        """The transport's buffer and, on Linux, the kernel's send queue: a slow client reads
        from the kernel's queue (up to megabytes), and the transport's buffer shrinks only once
        half of that is free, which at SEND_TIMEOUT=1 cut off a client reading steadily."""
        size = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if _OUTQ is not None and sock is not None:
            # Closed under us (fileno -1: ValueError), or refused: the buffer alone.
            with contextlib.suppress(OSError, ValueError):
                size += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0" * 4))[0]
        return size

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_timer()

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _check_reading(self) -> None:
        """``send_timeout`` after the buffer filled or the client last took some of what
        waits: one that took some is slow, not gone (a big page goes out in one write); one
        that took none is."""
        if self._unsent_bytes() < self._unsent:
            self._arm_send_timer()
            return
        self._send_timer = None
        running = self._running or self.cycle
        state = running.scope.get("state", {}) if running is not None else {}
        cut_log.warning(
            "response_cut_off",
            request_id=state.get("request_id"),
            path=logged_path(running.scope["path"]) if running is not None else None,
            unsent_bytes=self._unsent,
            send_timeout=self.send_timeout,
        )
        if running is not None and not running.response_complete:
            # A streamed answer's access line, still to come, says ClientDisconnected. One
            # sent in one write was logged as it was handed over (status 200, no error).
            running.scope[CLIENT_LEFT] = True  # type: ignore[literal-required]
        # A reset, not close (which would wait for the unread buffer to drain, as the app
        # did) nor abort (the kernel still sends what it holds, then a FIN: QA, an HTTP/1.0
        # download, whose end is the connection's, then looked complete to its client).
        reset(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_send_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            # uvicorn tells only ``self.cycle``, the request parsed last, that the client left:
            # with requests pipelined behind it, the one being served wrote to the closed
            # transport (a RuntimeError traceback per client that pipelined and left).
            running.disconnected = True
            running.message_event.set()
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
            log.debug("closing a connection: no whole request headers in %ss", self.header_timeout)
            # Not at once if requests before this one wait for their answers: uvicorn stopped
            # reading while they wait, so the head may be late through no fault of the client.
            self._close_after_waiting()

    def _close_after_waiting(self) -> None:
        """Parse no more; answer the requests parsed whole (running or waiting), then close,
        lingering (``LINGER_IDLE_SECONDS``). What the client sends meanwhile is read and
        dropped (``data_received``): left unread, it would turn the close into a reset."""
        self._closing = True
        self._disarm()
        running = self._running
        last = self.pipeline[0][0] if self.pipeline else running
        if last is None or last.response_complete or last.disconnected:
            self._linger()
            return
        last.keep_alive = False  # uvicorn closes the connection once its answer is out...
        last.transport = _LingeringClose(self)  # type: ignore[assignment]  # ...lingering

    def _close_lingering(self) -> None:
        """An answer that ends the connection is out: parse no more, and linger."""
        self._closing = True
        self._disarm()
        self._linger()

    def _linger(self) -> None:
        """Send FIN once what is buffered is out, and close when the client has gone (its
        EOF), or has sent nothing for LINGER_IDLE_SECONDS, or after LINGER_MAX_SECONDS."""
        transport = self.transport
        if transport.is_closing() or self._linger_timer is not None:
            return
        self._unset_keepalive_if_required()  # only the linger's own timers end it
        if self._half_closed:
            transport.close()  # the client sends nothing more: once what is buffered is out
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            transport.close()
            return
        self.flow.resume_reading()
        self._linger_ends = self.loop.time() + LINGER_MAX_SECONDS
        self._linger_timer = self.loop.call_later(LINGER_IDLE_SECONDS, transport.close)

    def _lingered_read(self) -> None:
        """A read while lingering: the client is still there; wait for it a while more."""
        if self._linger_timer is None:
            return
        self._linger_timer.cancel()
        wait = min(LINGER_IDLE_SECONDS, self._linger_ends - self.loop.time())
        self._linger_timer = self.loop.call_later(max(wait, 0.0), self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None or self._upgrade_asked or self._closing:
            self._lingered_read()
            return  # the parser is stopped at that request: whatever follows is dropped
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._closing:
                return  # a request after those the connection will answer: dropped as they are
            if self._refused is None:
                self._refused = self._version_refusal(str(exc), data)
            self._refuse(exc)
        except httptools.HttpParserUpgrade:
            # Where uvicorn would switch protocols; its request is already served over
            # HTTP/1.1 and closes the connection (``on_headers_complete``).
            self._upgrade_asked = True
        else:
            if not self._parsing and self._header_timer is None and self._idle():
                # Bytes between requests that begin none: the line ends RFC 9112 §2.2 lets a
                # server skip before a request line. They stopped uvicorn's keep-alive timer,
                # and no head began to start ours (QA: one CRLF after an answer held the
                # connection for good); the next request's head has HEADER_TIMEOUT from them.
                self._arm()
            if self._in_head:
                # The read ended inside a head. httptools keeps a header's pieces until it is
                # whole, before ``on_header`` counts it: one endless header would grow in it.
                # At most one read holds bytes before the head, hence the margin.
                self._head_read += len(data)
                # A request line's "HTTP/x.y" may end in the next read (``later_version``).
                self._head_tail = (self._head_tail + data)[-8:]
                if self._head_read > MAX_HEAD_BYTES + READ_BYTES:
                    self._refused = head_too_large()
                    self._refuse(httptools.HttpParserError("the request head is too large"))

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol's
        """The client half-closed (``shutdown(SHUT_WR)``, ``nc -N``): the requests it sent
        whole are answered, then the connection closes. QA: uvicorn closed at once, and a
        complete POST was dropped unanswered (and unwritten). Behind them, a head cut off
        mid-way is dropped, and the refusal of a bad one is sent after their answers (as
        without the EOF: QA found both closed at once, the whole ones unanswered). A body
        cut off mid-way is a disconnect, and nothing to answer closes at once, as before."""
        if self._linger_timer is not None:
            return None  # lingering: the client has gone (QA: held 5 s more)
        if self._idle() or (self._parsing and not self._in_head and self._refusal is None):
            return None  # asyncio closes the transport
        self._half_closed = True
        if self._refusal is None:  # else ``_send_refusal`` closes once the rest is answered
            self._close_after_waiting()
        return True

    def _idle(self) -> bool:
        """Nothing to answer: no request running or waiting, the connection not closing."""
        cycle = self.cycle
        return (
            not self.pipeline
            and not self._closing
            and (cycle is None or cycle.response_complete)
            and not self.transport.is_closing()
        )

    def _version_refusal(self, reason: str, data: bytes) -> Refusal | None:
        """505 if the request line httptools stopped at names a later HTTP, else None."""
        version = self.parser.get_http_version()
        later = later_version(reason, version, self._head_tail + data)
        return None if later is None else version_not_supported(later)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        cycle.transport = _LingeringClose(self)  # type: ignore[assignment]
        if cycle.scope["http_version"] == "1.0":
            app = close_delimited(app, cycle)
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        if self._linger_timer is not None:
            # The answer that ends the connection is out, and the close lingers: requests
            # parsed after it are dropped unstarted (RFC 9112 §9.3.2), as uvicorn drops them
            # once the transport is closing, and no keep-alive timer cuts the linger short.
            # QA: a POST pipelined behind a 415 ran, its answer thrown away.
            self.server_state.total_requests += 1
            self.pipeline.clear()
            return
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
        if self._refused is not None:
            refused = self._refused
        elif isinstance(exc, httptools.HttpParserInvalidMethodError):
            # A method httptools does not know (it knows all the API routes, and more): 501
            # by RFC 9110 §9.1 (bytes that are no method at all, TLS to this port, get it too).
            refused = Refusal(501, "NOT_IMPLEMENTED", "The request method is not implemented")
        else:
            refused = Refusal(400, "BAD_REQUEST", f"The request is not valid HTTP/1.1: {exc}")
        # The client's own id when its head got that far (QA: a request refused for a second
        # Authorization line got a generated one, and no log line held the client's).
        request_id = request_id_from(self.headers if self._parsing else ())
        # Counted as the middleware counts the others (the 5xx-rate alert must see a 501),
        # under method OTHER: the bytes in its place may be no method at all.
        observe(OTHER_METHOD, UNMATCHED, refused.status, 0.0)
        # The request's one access line (as the middleware writes for the others).
        access_log.info(
            "access",
            status=refused.status,
            client=self.client[0] if self.client else None,
            request_id=request_id,
            error=refused.code if self._refused else type(exc).__name__,
        )
        self._refusal = refusal(refused, request_id, self.server_state.default_headers, self._head)
        if self._answered():
            self._send_refusal()

    def _send_refusal(self) -> None:
        self._unset_keepalive_if_required()
        self.transport.write(self._refusal or b"")
        # Not ``close()``: the client may have sent more (a body, HTTP/2 frames) that this
        # connection will never read, and a close with bytes unread resets the connection.
        self._linger()
