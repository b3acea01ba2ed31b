"""Background jobs: status from any worker, cancellation, and export results."""

from __future__ import annotations

import re
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from api.deps import CurrentUser, PageParams
from api.errors import ApiError
from api.http_metrics import MeteredRoute
from api.jobs.model import now_stamp, readable_by, to_public
from api.jobs.runner import UNSTOPPABLE, result_dir
from api.jobs.state import Job
from api.jobs.web import JobsDep
from api.responses import PROBE_CACHE_CONTROL, json_response
from api.schemas.envelope import Envelope, ErrorEnvelope, ListEnvelope, error_responses
from api.schemas.jobs import JobPublic
from api.settings import Settings
from storeserver.errors import NotFound

router = APIRouter(
    route_class=MeteredRoute, prefix="/jobs", tags=["jobs"], responses=error_responses(401)
)
JobId = Annotated[str, Path(max_length=128, description="Job id")]
NO_STORE = {"Cache-Control": PROBE_CACHE_CONTROL}
# One range-spec of a bytes Range (RFC 9110 §14.1.2): first-last, first-, or -suffix. Positions
# longer than 18 digits are not read (int() of a huge text is costly); such a header is ignored.
_BYTE_RANGE = re.compile(r"([0-9]{0,18})-([0-9]{0,18})")
MAX_RANGES = 100  # Starlette's FileResponse serves the whole file past this many


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r}", {"table": "jobs", "id": job_id})


async def visible_job(jobs: JobsDep, caller: CurrentUser, job_id: str) -> Job:
    """The job if the caller may read it (``readable_by``); else the same 404 as none."""
    try:
        job = await jobs.jobs.get(job_id)
    except NotFound:
        raise job_not_found(job_id) from None
    if not readable_by(job, caller.id, caller.is_admin):
        raise job_not_found(job_id)
    return job


def job_response(job: Job, status_code: int = 200) -> Response:
    return json_response({"status": "success", "data": to_public(job)}, status_code, NO_STORE)


@router.get(
    "",
    response_model=ListEnvelope[JobPublic],
    responses=error_responses(400),
    summary="List jobs",
)
async def list_jobs(
    jobs: JobsDep,
    caller: CurrentUser,
    page: PageParams,
    state: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(description="Only jobs in this state"),
    ] = None,
) -> Response:
    """Your jobs, newest first (an admin sees everyone's). A job started as an admin is
    admins' only: an owner demoted since no longer sees it."""
    owner = None if caller.is_admin else caller.id
    items, total = await jobs.jobs.list_jobs(owner, state, page.offset, page.per_page)
    body = {
        "status": "success",
        "data": [to_public(job) for job in items],
        "meta": {"page": page.page, "per_page": page.per_page, "total": total},
    }
    return json_response(body, 200, NO_STORE)


@router.get(
    "/{job_id}",
    response_model=Envelope[JobPublic],
    responses=error_responses(404),
    summary="Read a job",
)
async def read_job(job_id: JobId, jobs: JobsDep, caller: CurrentUser) -> Response:
    """State, progress, timing and result or error; answered by any worker."""
    return job_response(await visible_job(jobs, caller, job_id))


@router.delete(
    "/{job_id}",
    response_model=Envelope[JobPublic],
    responses={
        202: {
            "model": Envelope[JobPublic],
            "description": "Cancel requested; the job stops at its next chunk",
        },
        **error_responses(404, 409),
    },
    summary="Cancel a job",
)
async def cancel_job(job_id: JobId, jobs: JobsDep, caller: CurrentUser) -> Response:
    """A queued job is cancelled at once (200); a running one stops at its next chunk (202),
    except a running snapshot or write by filter, which nothing stops halfway (409); a
    finished one is 409."""
    kind = (await visible_job(jobs, caller, job_id)).get("kind")
    stamp = {"state": "cancelled", "cancel_requested": True, "finished_at": now_stamp()}
    cancelled = await jobs.jobs.transition(job_id, ("queued",), stamp)
    if cancelled is not None:
        return job_response(cancelled)
    if kind not in UNSTOPPABLE:
        requested = await jobs.jobs.transition(job_id, ("running",), {"cancel_requested": True})
        if requested is not None:
            jobs.cancel_here(job_id)
            return job_response(requested, 202)
    job = await visible_job(jobs, caller, job_id)
    if job["state"] == "running":
        raise ApiError(
            409,
            "JOB_NOT_CANCELLABLE",
            f"a running {kind} job cannot be stopped; it finishes on its own",
            [{"field": "kind", "message": str(kind)}],
        )
    raise ApiError(
        409,
        "JOB_FINISHED",
        f"the job has already finished ({job['state']})",
        [{"field": "state", "message": str(job["state"])}],
    )


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


class WholeFileResponse(FileResponse):
    """A FileResponse that answers as if the request had no ``Range`` header."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"description": "The job's result file (an export: NDJSON or CSV)"},
        206: {"description": "The byte ranges asked for with `Range: bytes=...`"},
        **error_responses(404, 409),
        416: {"model": ErrorEnvelope, "description": "No range asked for starts in the file"},
    },
    summary="Download a job's result",
)
async def read_job_result(
    request: Request, job_id: JobId, jobs: JobsDep, caller: CurrentUser
) -> Response:
    """The file a finished export wrote (409 while the job has not succeeded).

    `Range: bytes=...` (RFC 9110) gives 206 with those bytes; a range that starts past the
    end is 416 with `Content-Range: bytes */<size>`. A Range header that is malformed, in
    another unit, or partly unsatisfiable is ignored: the whole file, 200.
    """
    job = await visible_job(jobs, caller, job_id)
    result = job.get("result") or {}
    if job.get("state") != "succeeded":
        raise ApiError(409, "JOB_NOT_FINISHED", f"the job is {job.get('state')}, not succeeded")
    if not result.get("file"):
        raise ApiError(404, "NOT_FOUND", "this job has no result file")
    settings: Settings = request.app.state.settings
    path = result_dir(settings) / FilePath(str(result["file"])).name
    if not path.is_file():
        raise ApiError(404, "NOT_FOUND", "the result file is gone (expired or on another host)")
    filename = f"{job.get('params', {}).get('table', 'export')}-{job_id}.{result['format']}"
    # Starlette answers a bad Range itself in plain text: decide here, errors in the envelope.
    # With If-Range, a stale validator means the whole file, so a range is never refused.
    response_class = FileResponse
    size = path.stat().st_size
    http_range = request.headers.get("range")
    if http_range is not None:
        verdict = range_verdict(http_range, size)
        if verdict == "unsatisfiable" and "if-range" not in request.headers:
            raise ApiError(
                416,
                "RANGE_NOT_SATISFIABLE",
                f"the result has {size} bytes: no range asked for starts inside it",
                [{"field": "header.range", "message": f"the file has {size} bytes"}],
                headers={"Content-Range": f"bytes */{size}"},
            )
        if verdict != "serve":
            response_class = WholeFileResponse
    return response_class(
        path,
        media_type=str(result["media_type"]),
        filename=filename,
        headers={"Cache-Control": "private, no-cache"},
    )
