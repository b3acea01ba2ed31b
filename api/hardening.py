"""Request-body rules (size, content type) and CORS answers in the envelope (pure ASGI).

Body size: a declared ``Content-Length`` over ``MAX_BODY_BYTES`` is refused before the app
runs; otherwise the bytes actually received are counted as the app reads them, so a chunked
body without Content-Length is cut off at the limit too. Starlette 1.10's own
``RequestBodyLimitMiddleware`` counts the same way but answers in plain text from outside the
exception handlers; this one answers 413 in the error envelope. Every refusal here (413, 408,
415, 431) closes the connection after the answer, so the unread rest of the body is never read.

Headers: more than ``MAX_HEADER_BYTES`` of them (names and values) is 431 before the guard
(token, rate limit) or the app look at them. uvicorn's HTTP parser (httptools) itself has no
limit, so the head was already read into memory: on an untrusted network, a proxy in front
bounds that (deploy/README.md).

Content type: on ``/api/`` paths a request with a body must be JSON (``application/json`` or
``application/*+json``), except the OAuth2 token endpoint, which takes a form, and upload paths
(CSV import), which take ``multipart/form-data`` or ``text/csv`` up to their own byte limit
(``IMPORT_MAX_BYTES``). Anything else is 415 before any parsing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
MAX_HEADER_BYTES = 32 * 1024
"""Request header bytes accepted (nginx answers past 4 x 8 KiB; a bearer token is ~300)."""
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
UPLOAD_TYPES = frozenset({"multipart/form-data", "text/csv"})
CLOSE_HEADERS = {"Connection": "close"}
CLOSE = (b"connection", b"close")


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` once the body passes the limit; the 413 handler answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes")


class BodyTimeout(StarletteHTTPException):
    """Raised from ``receive`` when the body stops arriving: 408 (a slow-body client held the
    request, and its connection, for as long as it liked)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"The request body stopped arriving for {seconds:g} s")


def is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


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
        if has_body and scope["path"].startswith("/api/"):
            media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
            wanted_form = scope["path"] in self.form_paths
            if scope["path"] in self.upload_paths:
                accepted, expected = media_type in UPLOAD_TYPES, "multipart/form-data or text/csv"
            elif wanted_form:
                accepted, expected = media_type in FORM_TYPES, "a form"
            else:
                accepted, expected = is_json(media_type), "application/json"
            if not accepted:
                await self._reject(
                    scope,
                    receive,
                    send,
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    f"The request body must be {expected}",
                )
                return
            coding = headers.get("content-encoding", "identity").strip().lower()
            if coding != "identity":
                # Bodies are read as sent: a gzipped one reached the JSON parser as bytes (422
                # "not valid UTF-8"). RFC 9110 §8.4.1: an unsupported coding is a 415.
                message = "Request bodies must not be compressed (Content-Encoding: identity)"
                await self._reject(scope, receive, send, 415, "UNSUPPORTED_MEDIA_TYPE", message)
                return

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
                if body_cut:  # the 413/408 of FastAPI's handlers, which read the body
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

    @staticmethod
    async def _reject(
        scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
    ) -> None:
        # Answered before the body was read (or while it stalled): without Connection: close
        # uvicorn would keep the connection and read, and drop, whatever body the client
        # still sends (10 GB after a 413, a byte at a time after a 408). It closes instead.
        response = error_response(Request(scope), status, code, message, headers=CLOSE_HEADERS)
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
