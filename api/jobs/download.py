"""The download of a job's result file: conditional requests, ETags per coding, Range.

``result_response`` answers ``GET /jobs/{id}/result`` once the route has found the job the
caller may read: the preconditions of RFC 9110 §13 against a strong ETag (one per content
coding) and Last-Modified, ``Range``/``If-Range`` decided here (so a bad range is answered in
the error envelope, not by Starlette in plain text), and the gzip coding chosen by this code
rather than the middleware. It is separate from ``api.routes.jobs`` because this HTTP
validator and byte-range logic is most of the code and none of it is about jobs' state.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path as FilePath
from stat import S_ISREG
from typing import TYPE_CHECKING, Literal

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.middleware.gzip import GZipResponder
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from api.conditions import header_list
from api.errors import ApiError, error_response
from api.jobs.runner import result_dir
from api.middleware import accepts_gzip, asked_with_head
from api.responses import DATA_CACHE_CONTROL
from api.services.versions import precondition_failed

if TYPE_CHECKING:
    from api.jobs.state import Job
    from api.settings import Settings

NO_CACHE = {"Cache-Control": DATA_CACHE_CONTROL}  # a result: revalidate with its ETag
# One range-spec of a bytes Range (RFC 9110 §14.1.2): first-last, first-, or -suffix. Positions
# longer than 18 digits are not read (int() of a huge text is costly); such a header is ignored.
_BYTE_RANGE = re.compile(r"([0-9]{0,18})-([0-9]{0,18})")
MAX_RANGES = 100  # Starlette's FileResponse serves the whole file past this many
_ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')


def range_verdict(header: str, size: int) -> Literal["serve", "ignore", "unsatisfiable"]:
    """What to do with a ``Range`` header on a file of ``size`` bytes (RFC 9110 §14.2).

    ``serve``: every range is valid and satisfiable, so FileResponse answers 206 itself.
    ``ignore``: another unit, a malformed or invalid range (``bytes=5-2``), too many ranges,
    some unsatisfiable among satisfiable ones, or an empty file: the whole file, 200 (a server
    may always ignore Range). ``unsatisfiable``: no range starts inside the file: 416.
    """
    unit, equals, spec = header.partition("=")
    parts = [part.strip() for part in spec.split(",")]
    if not equals or unit.strip().lower() != "bytes" or len(parts) > MAX_RANGES or size == 0:
        return "ignore"
    satisfiable = 0
    for part in parts:
        match = _BYTE_RANGE.fullmatch(part)
        if match is None or match.group(0) == "-":
            return "ignore"
        first, last = match.groups()
        if first and last and int(last) < int(first):
            return "ignore"
        satisfiable += int(first) < size if first else int(last) > 0
    if satisfiable == len(parts):
        return "serve"
    return "unsatisfiable" if satisfiable == 0 else "ignore"


GONE = "the result file is gone (expired or on another host)"
# An open file read again by name, whatever became of the name: the sweeps may delete a result
# while it is being answered (Linux; elsewhere the name is opened, as before).
_OPEN_FILES = FilePath("/proc/self/fd")
_BY_OPEN_FILE = _OPEN_FILES.is_dir()


class ResultFileResponse(FileResponse):
    """A FileResponse that opens its file before it sends anything, and reads that open file
    (QA: a result a sweep deleted between the route's stat and Starlette's open was a 200
    with Content-Length and ETag sent, then no body and a traceback): one deleted before is
    the route's 404 still."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            gone = error_response(Request(scope), 404, "NOT_FOUND", GONE)
            await gone(scope, receive, send)
            return
        try:
            if _BY_OPEN_FILE:
                self.path = str(_OPEN_FILES / str(fd))
                extensions = dict(scope.get("extensions") or {})
                extensions.pop("http.response.pathsend", None)  # a server would open that name
                scope = {**scope, "extensions": extensions}
            await super().__call__(scope, receive, send)
        finally:
            os.close(fd)


class WholeFileResponse(ResultFileResponse):
    """A FileResponse that answers as if the request had no ``Range`` header."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


class GzipFileResponse(WholeFileResponse):
    """The whole file, gzipped here: its ETag names the gzip coding, so the coding must be
    this route's decision, not the middleware's guess (which leaves a response that already
    has a Content-Encoding alone). Not as ``pathsend``, which would skip the compression."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if asked_with_head(scope):
            # The GET's headers without compressing the file for nothing (QA: a HEAD of a
            # 10 MB result took as long as its GET). No Content-Length: the GET's is known
            # only once compressed (and a large one is sent chunked, without one).
            headers = MutableHeaders(raw=list(self.raw_headers))
            del headers["content-length"]
            headers["content-encoding"] = "gzip"
            headers.add_vary_header("Accept-Encoding")
            await send({"type": "http.response.start", "status": 200, "headers": headers.raw})
            await send({"type": "http.response.body", "body": b""})
            return
        extensions = dict(scope.get("extensions") or {})
        extensions.pop("http.response.pathsend", None)
        gzip = GZipResponder(super().__call__, minimum_size=0, exclude_content_types=())
        await gzip({**scope, "extensions": extensions}, receive, send)


def file_etag(stat: os.stat_result) -> str:
    """The strong ETag of a file's bytes (as Starlette's FileResponse makes it)."""
    base = f"{stat.st_mtime}-{stat.st_size}".encode()
    return f'"{hashlib.md5(base, usedforsecurity=False).hexdigest()}"'


def gzip_etag(etag: str) -> str:
    """The strong ETag of the gzip coding of the bytes tagged ``etag``: a strong validator
    differs between content codings (RFC 9110 §8.8.3)."""
    return etag[:-1] + '-gzip"'


def entity_tags(header: str) -> list[tuple[bool, str]] | None:
    """(weak, quoted tag) for each entity tag of a list header; ``None`` for ``*``."""
    if header.strip() == "*":
        return None
    return [(bool(m.group(1)), m.group(2)) for m in _ENTITY_TAG.finditer(header)]


def http_date(value: str | None) -> float | None:
    """The time of an HTTP-date header; ``None`` when absent or not a date (then ignored)."""
    if value is None:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def cached_tag(request: Request, etag: str, zipped: bool, modified: int) -> str | None:
    """The preconditions in RFC 9110 §13.2.2's order. A failed If-Match (strong comparison
    with either coding's tag: either says the file is unchanged) or, without one, a failed
    If-Unmodified-Since is 412 (raised). Returns the ETag for a 304: an If-None-Match hit
    (weak comparison with the tag of a coding this request accepts; a cache may list every
    copy it holds, RFC 9111 §4.3.1) or, without one, If-Modified-Since; else ``None``."""
    sent = gzip_etag(etag) if zipped else etag
    if_match = header_list(request, "if-match")
    if if_match is not None:
        accepted = entity_tags(if_match)
        current = {etag, gzip_etag(etag)}
        if accepted is not None and not any(not weak and t in current for weak, t in accepted):
            raise precondition_failed("If-Match does not match the result's ETag", {"ETag": sent})
    else:
        since = http_date(request.headers.get("if-unmodified-since"))
        if since is not None and modified > since:
            raise precondition_failed(
                "the result changed after If-Unmodified-Since", {"ETag": sent}
            )
    if_none_match = header_list(request, "if-none-match")
    if if_none_match is not None:
        cached = entity_tags(if_none_match)
        if cached is None:
            return sent
        held = {tag for _, tag in cached}
        return next((tag for tag in dict.fromkeys((sent, etag)) if tag in held), None)
    since = http_date(request.headers.get("if-modified-since"))
    return sent if since is not None and modified <= since else None


def result_stat(path: FilePath) -> os.stat_result:
    """The result file's stat (one, so its validators and the bytes sent agree), else 404."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        stat = None
    if stat is None or not S_ISREG(stat.st_mode):
        raise ApiError(404, "NOT_FOUND", GONE)
    return stat


def result_response(request: Request, job: Job, job_id: str) -> Response:
    """The answer to a download of ``job``'s result (the caller may read the job): the file,
    a 304, or the 409/404/412/416 error (raised); ``read_job_result`` documents them."""
    result = job.get("result") or {}
    if job.get("state") != "succeeded":
        raise ApiError(409, "JOB_NOT_FINISHED", f"the job is {job.get('state')}, not succeeded")
    if not result.get("file"):
        raise ApiError(404, "NOT_FOUND", "this job has no result file")
    settings: Settings = request.app.state.settings
    path = result_dir(settings) / FilePath(str(result["file"])).name
    stat = result_stat(path)
    filename = f"{job.get('params', {}).get('table', 'export')}-{job_id}.{result['format']}"
    size, etag = stat.st_size, file_etag(stat)
    last_modified = formatdate(stat.st_mtime, usegmt=True)
    # Starlette answers a bad Range itself in plain text: decide here, errors in the envelope.
    # A Range whose If-Range does not hold (weak, stale, the gzip tag) is ignored: all of it.
    http_range = request.headers.get("range")
    verdict: Literal["serve", "ignore", "unsatisfiable"] = "ignore"
    if http_range is not None and request.headers.get("if-range") in (None, etag, last_modified):
        verdict = range_verdict(http_range, size)
    # Gzipped (by GzipFileResponse) when the middleware would have: from GZIP_MIN_BYTES, or
    # streamed (more than one chunk); a smaller file is one body the middleware leaves alone.
    accept_encoding = [v for k, v in request.scope["headers"] if k == b"accept-encoding"]
    big = size >= min(settings.gzip_min_bytes, FileResponse.chunk_size)
    zipped = verdict != "serve" and big and accepts_gzip(b",".join(accept_encoding))
    vary = {"Vary": "Accept-Encoding"}  # on a 200 the gzip middleware (or GZipResponder) adds it
    cached = cached_tag(request, etag, zipped, int(stat.st_mtime))
    if cached is not None:
        return Response(status_code=304, headers={"ETag": cached, **NO_CACHE, **vary})
    if verdict == "unsatisfiable":
        raise ApiError(
            416,
            "RANGE_NOT_SATISFIABLE",
            f"the result has {size} bytes: no range asked for starts inside it",
            [{"field": "header.range", "message": f"the file has {size} bytes"}],
            headers={"Content-Range": f"bytes */{size}"},
        )
    headers = {"ETag": gzip_etag(etag) if zipped else etag, "Last-Modified": last_modified}
    response_class: type[FileResponse] = WholeFileResponse
    if verdict == "serve":
        response_class, headers = ResultFileResponse, {**headers, **vary}
    elif zipped:
        response_class = GzipFileResponse
    return response_class(
        path,
        media_type=str(result["media_type"]),
        filename=filename,
        headers={**headers, **NO_CACHE},
        stat_result=stat,
    )
