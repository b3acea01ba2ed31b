"""Request-body rules (size, content type) and CORS answers in the envelope (pure ASGI).

Body size: a declared ``Content-Length`` over ``MAX_BODY_BYTES`` is refused before the app
runs; otherwise the bytes actually received are counted as the app reads them, so a chunked
body without Content-Length is cut off at the limit too. Starlette 1.10's own
``RequestBodyLimitMiddleware`` counts the same way but answers in plain text from outside the
exception handlers; this one answers 413 in the error envelope. Every refusal here (413, 408,
415, 431) closes the connection after the answer, so the unread rest of the body is never read;
so does any answer sent before the body was read to its end (a GET's body, a route that takes
none), which uvicorn would otherwise go on reading with no limit and no timeout.

Headers: more than ``MAX_HEADER_BYTES`` of them (names and values) is 431 before the guard
(token, rate limit) or the app look at them. uvicorn's HTTP parser (httptools) itself has no
limit, so the head was already read into memory: on an untrusted network, a proxy in front
bounds that (deploy/README.md).

Content type: on ``/api/`` paths a request with a body must be JSON (``application/json`` or
``application/*+json``), except the OAuth2 token endpoint, which takes a form, and upload paths
(CSV import), which take ``multipart/form-data`` or ``text/csv`` up to their own byte limit
(``IMPORT_MAX_BYTES``), a CSV declaring no charset other than UTF-8; and it must not be
compressed (``Content-Encoding`` other than identity). Anything else is 415 before any parsing,
read from every line of each header (RFC 9110 §5.3: repeated lines are one list), but only when
the route the router would pick reads a body: with none, the app's 404 or 405 (with ``Allow``)
says more, and a route that takes no body (a DELETE) answers as it would without one. That
lookup runs only for a body about to be refused, never for an accepted one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import deciding_routes, error_response, route_answers

BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
MAX_HEADER_BYTES = 32 * 1024
"""Request header bytes accepted (nginx answers past 4 x 8 KiB; a bearer token is ~300)."""
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
UPLOAD_TYPES = frozenset({"multipart/form-data", "text/csv"})
CLOSE_HEADERS = {"Connection": "close"}
CLOSE = (b"connection", b"close")
UTF8_NAMES = frozenset({"utf-8", "utf8", "utf_8", "cp65001", "us-ascii", "ascii"})
"""Charsets a CSV upload may declare: UTF-8's names and its subset ASCII (any other is 415)."""
IDENTITY_ONLY = {"Accept-Encoding": "identity"}
"""On a 415 for a compressed body: the coding, not the media type, was refused (RFC 9110
§12.5.3)."""


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` once the body passes the limit; the 413 handler answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes")


class BodyTimeout(StarletteHTTPException):
    """Raised from ``receive`` when the body stops arriving: 408 (a slow-body client held the
    request, and its connection, for as long as it liked)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"The request body stopped arriving for {seconds:g} s")


def declared_charset(content_type: str) -> str | None:
    """The ``charset`` parameter of a Content-Type line, lowercased and unquoted, if any."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').strip().lower()[:40]
    return None


def _sends_body(scope: Scope) -> bool:
    """Whether the request has a body (a chunked one, or a Content-Length above 0)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0 ")):
            return True
    return False


def _closing(send: Send) -> Send:
    """``send`` with ``Connection: close`` added to the response's headers."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), CLOSE]
        await send(message)

    return closing_send


def is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def routed_to(app: Any, method: str, path: str) -> Any:
    """The route (a ``RouteContext``) the router would run for ``method`` at ``path``;
    ``None`` when it would answer 404 or 405, including through a route that only answers 405
    (``api.errors.refuses_methods``)."""
    route = deciding_routes(app, path).get(method)
    return route if route is not None and route_answers(route) else None


class RequestBodyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        form_paths: frozenset[str],
        upload_paths: Mapping[str, int] | None = None,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.form_paths = form_paths
        self.upload_paths = dict(upload_paths or {})  # path → its byte limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            await self._reject(
                scope,
                receive,
                send,
                431,
                "HEADERS_TOO_LARGE",
                f"The request headers are larger than {MAX_HEADER_BYTES} bytes",
            )
            return
        if scope["method"] in BODYLESS_METHODS:
            if _sends_body(scope):
                # Nothing reads it: close after the answer (QA: uvicorn went on reading a
                # GET's chunked body after the answer, with no limit and no timeout).
                await self.app(scope, receive, _closing(send))
            else:
                await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.upload_paths.get(scope["path"], self.max_bytes)
        declared = headers.get("content-length")
        length: int | None = None
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._reject(scope, receive, send, 400, "BAD_REQUEST", "Bad Content-Length")
                return
        if length is not None and length > limit:
            await self._reject(
                scope, receive, send, 413, "PAYLOAD_TOO_LARGE", BodyTooLarge(limit).detail
            )
            return
        has_body = (length or 0) > 0 or "transfer-encoding" in headers
        refusal = self._refusal(scope["path"], headers) if has_body else None
        if refusal is not None and self._reads_body(scope):
            message, extra = refusal
            await self._reject(scope, receive, send, 415, "UNSUPPORTED_MEDIA_TYPE", message, extra)
            return
        # A refused body that nothing reads: the app answers (404, 405, a DELETE's answer)
        # without it, and the connection closes after that as after a 415 (the rest is unread).
        unread = refusal is not None

        received = 0
        started = False
        body_done = False
        body_cut = False  # the body was refused part-way: the rest is not read
        body_timeout = self.body_timeout

        async def counting_receive() -> Message:
            nonlocal received, body_done, body_cut
            if body_done:  # a streamed answer listening for the client going away: no limit
                return await receive()
            try:
                async with asyncio.timeout(body_timeout):  # between two pieces of the body
                    message = await receive()
            except TimeoutError:
                body_cut = True
                raise BodyTimeout(body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    body_cut = True
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # body_cut: the 413/408 of FastAPI's handlers, which read the body. Or a
                # body not read to its end (a route that takes none: logout, a DELETE):
                # uvicorn would go on reading it after the answer, past MAX_BODY_BYTES and
                # BODY_TIMEOUT, holding the connection for as long as the client liked (QA).
                if body_cut or unread or (has_body and not body_done):
                    message["headers"] = [*message.get("headers", ()), CLOSE]
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            # Only reached when something read the body outside FastAPI's handlers.
            if started:
                raise
            await self._reject(scope, receive, send, 413, "PAYLOAD_TOO_LARGE", str(exc.detail))
        except BodyTimeout as exc:
            if started:
                raise
            await self._reject(scope, receive, send, 408, "REQUEST_TIMEOUT", str(exc.detail))

    def _refusal(self, path: str, headers: Headers) -> tuple[str, dict[str, str]] | None:
        """Why a body sent to ``path`` is refused (message, extra headers), or ``None``."""
        if not path.startswith("/api/"):
            return None
        # Every line: Content-Type is one value, and a second line the app would not read
        # must not get past; Content-Encoding's lines are one list (RFC 9110 §5.3).
        types = [v.partition(";")[0].strip().lower() for v in headers.getlist("content-type")]
        types = types or [""]
        if path in self.upload_paths:
            expected = "multipart/form-data or text/csv"
            accepted = all(t in UPLOAD_TYPES for t in types)
        elif path in self.form_paths:
            accepted, expected = all(t in FORM_TYPES for t in types), "a form"
        else:
            accepted, expected = all(is_json(t) for t in types), "application/json"
        if not accepted:
            return f"The request body must be {expected}", {}
        for line in headers.getlist("content-type"):
            # CSV only: JSON has no charset parameter (RFC 8259 §11: one has no effect) and a
            # form's body is ASCII, so clients that add one anyway (charset=ISO-8859-1) are served.
            if line.partition(";")[0].strip().lower() != "text/csv":
                continue
            charset = declared_charset(line)
            if charset is not None and charset not in UTF8_NAMES:
                # Bodies are read as UTF-8: a Latin-1 CSV was imported up to its first "é",
                # then stopped with the rest unread (QA). Refused before anything is written.
                return f"The request body must be UTF-8; it declares charset={charset}", {}
        lines = headers.getlist("content-encoding")
        if any(c.strip().lower() not in ("", "identity") for v in lines for c in v.split(",")):
            # Bodies are read as sent: a gzipped one reached the JSON parser as bytes (422
            # "not valid UTF-8"). RFC 9110 §8.4.1: an unsupported coding is a 415.
            message = "Request bodies must not be compressed (Content-Encoding: identity)"
            return message, IDENTITY_ONLY
        return None

    def _reads_body(self, scope: Scope) -> bool:
        """Whether the route the router would pick for this request reads its body: one with
        a body parameter, or an upload or form path. Without an app to ask: it does."""
        app = scope.get("app")
        if app is None:
            return True
        route = routed_to(app, scope["method"], scope["path"])
        if route is None:
            return False
        path = scope["path"]
        return (
            getattr(route, "body_field", None) is not None
            or path in self.upload_paths
            or path in self.form_paths
        )

    @staticmethod
    async def _reject(
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # Answered before the body was read (or while it stalled): without Connection: close
        # uvicorn would keep the connection and read, and drop, whatever body the client
        # still sends (10 GB after a 413, a byte at a time after a 408). It closes instead.
        all_headers = {**(headers or {}), **CLOSE_HEADERS}
        response = error_response(Request(scope), status, code, message, headers=all_headers)
        await response(scope, receive, send)


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the error envelope (400)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code >= 400:
                    reason = bytes(response.body).decode("utf-8", "replace")
                    refused = self._refused_headers(headers.get("access-control-request-headers"))
                    if refused:  # which ones, and what would do: a browser shows no more
                        allowed = ", ".join(self.allow_headers)
                        reason += f" ({', '.join(refused)}; allowed: {allowed})"
                    response = error_response(Request(scope), 400, "CORS_REJECTED", reason)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _refused_headers(self, requested: str | None) -> list[str]:
        if requested is None or self.allow_all_headers:
            return []
        names = (name.strip().lower() for name in requested.split(","))
        return [name for name in names if name and name not in self.allow_headers]
