"""Success responses: the envelope written with orjson, caching headers, ETags and 304s.

Routes return these ``Response`` objects directly, so FastAPI skips re-validating the body;
the ``response_model`` on each route documents the same shape for OpenAPI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from fastapi import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from api.conditions import header_list
from api.encoding import dumps
from api.errors import ApiError
from api.etags import list_etag, none_match_hits, record_etag
from api.queries import Page

DATA_CACHE_CONTROL = "private, no-cache"
PROBE_CACHE_CONTROL = "no-store"


def if_none_match(request: Request) -> str | None:
    """The request's If-None-Match, its repeated lines joined as one list (RFC 9110 §5.3)."""
    return header_list(request, "if-none-match")


def read_preconditions(request: Request, etag: str, headers: Mapping[str, str]) -> Response | None:
    """A read's conditions in RFC 9110 §13.2.2's order, by weak comparison with ``etag``: an
    If-Match that does not name it is 412 (§13.1.1 applies it to any method that selects a
    representation); then an If-None-Match that names it is 304, or 412 for a query sent by
    POST (§13.1.2: 304 only answers GET and HEAD). ``None``: send the representation."""
    if_match = header_list(request, "if-match")
    if if_match is not None and not none_match_hits(if_match, etag):
        raise ApiError(
            412,
            "PRECONDITION_FAILED",
            "If-Match does not match the current version",
            headers={"ETag": etag},
        )
    if not none_match_hits(if_none_match(request), etag):
        return None
    if request.method != "GET":
        raise ApiError(
            412,
            "PRECONDITION_FAILED",
            "If-None-Match matches the current result: nothing new to send",
            headers={"ETag": etag},
        )
    return Response(status_code=304, headers=headers)


def json_response(
    body: object, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(dumps(body), status_code, headers, media_type="application/json")


def record_response(
    request: Request,
    record: Mapping[str, Any],
    *,
    status_code: int = 200,
    location: str | None = None,
    etag: str | None = None,
) -> Response:
    """One record in the envelope, with its ETag (the record's version unless given), after a
    GET's preconditions (``read_preconditions``)."""
    if etag is None:
        etag = record_etag(record.get("version"))
    headers = {"ETag": etag, "Cache-Control": DATA_CACHE_CONTROL}
    if location:
        headers["Location"] = location
    if request.method == "GET":  # a write's own conditions were decided before it
        cached = read_preconditions(request, etag, headers)
        if cached is not None:
            return cached
    return json_response({"status": "success", "data": record}, status_code, headers)


def list_response(
    request: Request,
    items: Sequence[Any],
    total: int,
    page: Page,
    versioned: Sequence[Mapping[str, Any]] | None = None,
    shape: str = "",
) -> Response:
    """A page in the envelope with ``meta``; the ETag covers ids, versions, the total and the
    ``shape`` (``list_etag``), after the read's preconditions (``read_preconditions``)."""
    records = items if versioned is None else versioned
    etag = list_etag(records, total, page.page, page.per_page, shape)
    headers = {"ETag": etag, "Cache-Control": DATA_CACHE_CONTROL}
    cached = read_preconditions(request, etag, headers)
    if cached is not None:
        return cached
    body = {
        "status": "success",
        "data": items,
        "meta": {"page": page.page, "per_page": page.per_page, "total": total},
    }
    return json_response(body, 200, headers)


def groups_response(items: Sequence[Any], total: int, page: int, per_page: int) -> Response:
    """A page of aggregate groups in the list envelope (not cached by tag: groups have no
    versions to build one from)."""
    meta = {"page": page, "per_page": per_page, "total": total}
    headers = {"Cache-Control": DATA_CACHE_CONTROL}
    return json_response({"status": "success", "data": items, "meta": meta}, 200, headers)


def no_content() -> Response:
    """204: no body."""
    return Response(status_code=204)


def head_answer(media_type: str, headers: dict[str, str]) -> Response:
    """The answer to a HEAD of a streamed GET: its status and headers, with no record read.

    Streamed as the GET is, one empty chunk, so the same headers follow (no Content-Length;
    Content-Encoding when gzip is accepted); the server sends no body to a HEAD."""

    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    return StreamingResponse(nothing(), media_type=media_type, headers=headers)


class ReleasingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that lets go of everything it was sending as soon as it ends,
    above all when the client leaves mid-stream (an aborted download).

    Starlette stops the stream on a disconnect by cancelling its task in an anyio task group,
    and anyio keeps that task's ``CancelledError`` in a reference cycle (``task_done`` stores it
    in a local of the frame its traceback holds). The traceback holds every frame the body was
    going through (the chunk being sent, each middleware's message, the gzip compressor), and
    Starlette leaves the body iterator suspended at its ``yield``: an aborted dump of 1 KB
    records kept ~3 MB (its current page, the page read ahead, their NDJSON) until a cyclic
    collection, which a worker runs rarely (``api.collector``): a worker's RSS grew 16.7 MiB
    over 30 aborted dumps of a 20 MB table (``make bench-dump-abort``; 0 with this class).
    Here the stream and the disconnect listener are plain asyncio tasks, a cancelled one is
    never asked for its exception, and the body iterator is closed (``aclose``) however the
    response ends, so its ``finally`` runs now, not when collected.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["type"] != "http" or _spec_version(scope) >= (2, 4):
                await super().__call__(scope, receive, send)  # no listener task there
                return
            error = await self._stream_until_disconnect(receive, send)
            if error is not None:
                try:
                    raise error
                finally:
                    del error  # the traceback holds this frame: no cycle through its local
            if self.background is not None:
                await self.background()
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _stream_until_disconnect(self, receive: Receive, send: Send) -> BaseException | None:
        """Send the body until it ends or the client leaves, whichever comes first; the
        other is cancelled and waited for. Returns what either raised (not its cancellation)."""
        loop = asyncio.get_running_loop()
        tasks = (
            loop.create_task(self.stream_response(send)),
            loop.create_task(self.listen_for_disconnect(receive)),
        )
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            try:
                await _settle(tasks)
            finally:
                # Every exception retrieved (else asyncio logs each, kept until collected);
                # the first one is raised.
                raised = [task.exception() for task in tasks if not task.cancelled()]
        return next((exc for exc in raised if exc is not None), None)


async def _settle(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Wait until ``tasks`` have ended, even when this task is cancelled meanwhile (a graceful
    stop): then its cancellation is raised once they have."""
    cancelled = False
    while not all(task.done() for task in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _spec_version(scope: Scope) -> tuple[int, ...]:
    return tuple(int(part) for part in scope.get("asgi", {}).get("spec_version", "2.0").split("."))
