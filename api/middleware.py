"""The middleware stack, assembled in one place (auth, limits and security headers join here).

Middleware is pure ASGI: ``BaseHTTPMiddleware`` costs a task and a queue per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import structlog
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.compression import AcceptEncodingGZipMiddleware
from api.compression import accepts_gzip as accepts_gzip  # re-exported
from api.headers import SECURITY_HEADERS, security_headers_for
from api.logs import direct_fds, write_access_line
from api.ratelimit import client_ip
from api.settings import Settings
from storeserver.client import current_actor, current_request_id

SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
ACCESS_LOGGER = "api.access"
access_log = structlog.get_logger(ACCESS_LOGGER)
_access_stdlib = logging.getLogger(ACCESS_LOGGER)


class _RequestIds:
    """Unique request ids, cheaper than ``uuid4``: a random per-process prefix (64 bits, new in
    every forked child) and a counter; 32 lowercase hex characters, like ``uuid4().hex``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_request_ids = _RequestIds()
os.register_at_fork(after_in_child=_request_ids.reset)


def new_request_id() -> str:
    """A fresh request id, for a request the middleware never sees (``api.connections``)."""
    return _request_ids.next()


def request_id_from(headers: Any) -> str:
    """The client's ``X-Request-ID`` from raw ``(name, value)`` header pairs (names
    lowercased) when it is sane (≤ 128 chars of ``[A-Za-z0-9._-]``), else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return _request_ids.next()


# Encoded once: (lowercased name, value) pairs as MutableHeaders would store them.
_encoded: dict[int, tuple[dict[str, str], list[tuple[bytes, bytes]]]] = {}


# Every name the middleware may add (any path); a response already carrying one takes the
# slower path that replaces it.
_OUR_HEADER_NAMES = frozenset(
    {b"x-request-id", b"x-worker-pid"}
    | {
        name.lower().encode("latin-1")
        for headers in (SECURITY_HEADERS.default, *SECURITY_HEADERS.by_path.values())
        for name in headers
    }
)


def _encoded_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """The raw form of one of the (static) security header sets, computed once per set."""
    cached = _encoded.get(id(headers))
    if cached is None or cached[0] is not headers:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        cached = _encoded[id(headers)] = (headers, raw)
    return cached[1]


def encoded_response_headers(request_id: str, path: str) -> list[tuple[bytes, bytes]]:
    """``response_headers_for`` (without the worker PID) already encoded, in the same order."""
    return [
        (b"x-request-id", request_id.encode("latin-1")),
        *_encoded_headers(security_headers_for(path)),
    ]


HEAD_STATE = "head"


def asked_with_head(scope: Scope) -> bool:
    """Whether the client sent HEAD, which the app sees as GET (``RequestIdMiddleware``)."""
    state: dict[str, Any] = scope.get("state") or {}
    return bool(state.get(HEAD_STATE))


def request_id_of(scope: Scope) -> str:
    """The request id the middleware stored for this request ("" outside a request)."""
    state: dict[str, Any] = scope.get("state") or {}
    return str(state.get("request_id", ""))


def response_headers_for(scope: Scope) -> dict[str, str]:
    """Headers every response carries; also used by the 500 handler, which runs outside.

    Besides the request id: HSTS, CSP, X-Frame-Options, nosniff, Referrer-Policy (``api.headers``).
    """
    state: dict[str, Any] = scope.get("state") or {}
    headers = {
        "X-Request-ID": str(state.get("request_id", "")),
        **security_headers_for(scope["path"]),
    }
    if state.get("expose_worker_pid"):
        headers["X-Worker-PID"] = str(os.getpid())
    return headers


def relative_redirect(raw: Any) -> list[tuple[bytes, bytes]]:
    """The headers of the router's trailing-slash 307 with ``Location`` cut to path and query,
    and never cached.

    Starlette builds that Location from the request's Host header, so a forged Host made a
    redirect to another site (307 keeps the method and body: a registration's password too).
    The app sends no other 307.
    """
    headers = [(b"cache-control", b"no-store")]
    for name, value in raw:
        name = name.lower()
        if name == b"location":
            parts = urlsplit(value)
            # One leading slash: "//host/..." would name a host again.
            value = b"/" + parts.path.lstrip(b"/") + (b"?" + parts.query if parts.query else b"")
        elif name == b"cache-control":
            continue
        headers.append((name, value))
    return headers


def user_id_of(state: dict[str, Any]) -> str | None:
    """The authenticated user's id, once the request guard has verified a token."""
    auth = state.get("auth")
    principal = getattr(auth, "principal", None)
    user_id = getattr(principal, "id", None)
    return str(user_id) if user_id is not None else None


CLIENT_LEFT = "memdb.client_left"
"""Scope key set by ``api.errors`` when the client left while its body was read."""


LOGGED_PATH_CHARS = 1024
"""A path in log lines is cut past this (the request target may be 16 KiB, on every line)."""


def logged_path(path: str) -> str:
    if len(path) <= LOGGED_PATH_CHARS:
        return path
    return f"{path[:LOGGED_PATH_CHARS]}… ({len(path)} characters)"


def log_access(scope: Scope, status: int, started: float, error: str | None) -> None:
    """The request's one access line (method, path and request id come from the context)."""
    fields: dict[str, Any] = {
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        # Cut: a trusted proxy may pass on any text as the address (QA: 1,100 characters).
        "client": client_ip(scope) if scope.get("client") else None,
    }
    user_id = user_id_of(scope.get("state") or {})
    if user_id is not None:
        fields["user_id"] = user_id
    if error is not None:
        fields["error"] = error  # raised after (or instead of) the response
    fds = direct_fds(_access_stdlib, logging.INFO)
    if fds is not None:
        try:
            write_access_line(fds, ACCESS_LOGGER, "access", fields)
            return
        except Exception:  # e.g. a value JSON cannot hold: let logging report it
            pass
    access_log.info("access", **fields)


class RequestIdMiddleware:
    """Echo a sane ``X-Request-ID`` (≤ 128 chars of ``[A-Za-z0-9._-]``) or generate one; bind it
    (with method and path) to every log line of the request; write the request's access line.

    The log context is left bound when the request ends: uvicorn runs each request in its own
    task (its own context copy), and its "Exception in ASGI application" line comes after us.
    The access line never holds the query string, headers or bodies (tokens, passwords).
    """

    def __init__(self, app: ASGIApp, expose_worker_pid: bool = False) -> None:
        self.app = app
        self.expose_worker_pid = expose_worker_pid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])
        started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=scope["method"], path=logged_path(scope["path"])
        )
        current_request_id.set(request_id)  # store calls carry it into slow-command log lines
        # No caller until this request's is known (``deps.get_caller``): uvicorn starts a
        # pipelined request from the task of the one before it, whose context the new task
        # copies (QA: a login behind a logout on one connection wrote as the logged-out
        # session, refused 401, and a rehash was audited to the previous request's admin).
        current_actor.set(None)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["expose_worker_pid"] = self.expose_worker_pid
        extra = encoded_response_headers(request_id, scope["path"])
        if self.expose_worker_pid:
            extra.append((b"x-worker-pid", str(os.getpid()).encode("latin-1")))
        asked = scope  # the scope outer middleware reads (the metrics read the route from it)
        if scope["method"] == "HEAD":
            # Answered as the GET it asks about (same status and headers). uvicorn sends no
            # body for it: it decides that on its own scope, which keeps the method. A GET
            # that would start work (a job) asks ``asked_with_head`` first: HEAD is safe.
            state[HEAD_STATE] = True
            scope = {**scope, "method": "GET"}
        status = 500  # if the app raises before answering, the server error handler sends 500
        finished = False  # the last body message went out

        async def send_with_id(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.body":
                finished = not message.get("more_body", False)
            elif message["type"] == "http.response.start":
                status = message["status"]
                raw = message.get("headers") or ()
                if status == 307:
                    raw = message["headers"] = relative_redirect(raw)
                if any(name.lower() in _OUR_HEADER_NAMES for name, _ in raw):
                    # The app set one of them: replace it, as MutableHeaders does.
                    headers = MutableHeaders(scope=message)
                    for name, value in extra:
                        headers[name.decode("latin-1")] = value.decode("latin-1")
                else:
                    # A new list: a Response may send the same header list object again.
                    message["headers"] = [*raw, *extra]
            await send(message)

        error: str | None = None
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            error = type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):
                # A graceful stop's cut-off: uvicorn logged "Cancel N running task(s)" and this
                # access line names the request; its traceback would add nothing.
                exc.already_logged = True  # type: ignore[attr-defined]
            raise
        finally:
            if scope is not asked and "route" in scope:
                # The router matched on the GET copy: the metrics label a HEAD that a route
                # answered 404 (no such record) by that route, not as an unknown path (QA).
                asked["route"] = scope["route"]
            if error is None and (not finished or scope.get(CLIENT_LEFT)):
                # A streamed body the app stopped without an exception: Starlette does that
                # when the client goes away, and a 200 alone would read as a full download.
                # Or an upload abandoned mid-body, whose 400 went to no one (``CLIENT_LEFT``).
                error = "ClientDisconnected"
            log_access(scope, status, started, error)


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Add the stack; the last added runs first (outermost).

    Outermost first: request id (+ security headers) → CORS → body size / content type →
    guard (authentication, rate limit) → gzip → the app. CORS outside the body checks, so a
    browser app from an allowed origin can read their 413/415 too.
    """
    # Imported here: both import api.errors, which imports this module.
    from api.guard import TOKEN_PATH, RequestGuardMiddleware
    from api.hardening import EnvelopeCORSMiddleware, RequestBodyMiddleware
    from api.openapi import authenticates
    from api.services.csv_import import IMPORT_PATH

    app.add_middleware(
        AcceptEncodingGZipMiddleware,
        minimum_size=settings.gzip_min_bytes,
        authenticates=authenticates,
    )
    app.add_middleware(RequestGuardMiddleware, settings=settings)
    app.add_middleware(
        RequestBodyMiddleware,
        max_bytes=settings.max_body_bytes,
        form_paths=frozenset({TOKEN_PATH}),
        upload_paths={IMPORT_PATH: settings.import_max_bytes},
        body_timeout=settings.body_timeout,
    )
    app.state.cors = None
    if settings.cors_origins:
        cors: dict[str, Any] = dict(
            allow_origins=settings.cors_origins,
            # HEAD: every GET answers it, and a browser preflights an authorised one (QA: 400).
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "If-None-Match",
                "X-Request-ID",
                "X-Requested-With",  # sent by jQuery and some axios set-ups
                "Cache-Control",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "X-Request-ID",
                "Retry-After",
                "X-Rate-Limit-Limit",
                "X-Rate-Limit-Remaining",
                "X-Rate-Limit-Reset",
                "Allow",
                "Content-Disposition",
                "WWW-Authenticate",
            ],
            # Authentication is a bearer header, never a cookie, so credentials carry nothing
            # here; allowed for listed origins only, so fetch(..., {credentials: "include"})
            # and axios's withCredentials are not blocked. Never with "*", where Starlette
            # would echo any origin.
            allow_credentials="*" not in settings.cors_origins,
        )
        app.add_middleware(EnvelopeCORSMiddleware, **cors)
        # The 500 handler runs outside every middleware: it asks this one for its headers.
        app.state.cors = EnvelopeCORSMiddleware(app, **cors)
    app.add_middleware(RequestIdMiddleware, expose_worker_pid=settings.expose_worker_pid)
