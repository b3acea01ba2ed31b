"""Background jobs: status from any worker, cancellation, and export results."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import FileResponse, Response

from api.deps import CurrentUser, PageParams, UntaggedRead, only_params
from api.errors import ApiError
from api.http_metrics import MeteredRoute
from api.jobs.download import result_response
from api.jobs.kinds import MEDIA_TYPES
from api.jobs.model import now_stamp, readable_by, to_public
from api.jobs.runner import UNSTOPPABLE
from api.jobs.state import Job
from api.jobs.web import JobsDep
from api.openapi import header_parameter
from api.responses import PROBE_CACHE_CONTROL, json_response
from api.schemas.envelope import Envelope, ErrorEnvelope, ListEnvelope, error_responses
from api.schemas.jobs import JobPublic
from storeserver.errors import NotFound

router = APIRouter(
    route_class=MeteredRoute, prefix="/jobs", tags=["jobs"], responses=error_responses(401)
)
JobId = Annotated[str, Path(max_length=128, description="Job id")]
NO_STORE = {"Cache-Control": PROBE_CACHE_CONTROL}


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
    # After ``caller``: a caller without a token gets the 401 before any word about the query
    # (a route's ``dependencies=`` would run first).
    _known: Annotated[None, only_params("state")],
    page: PageParams,
    state: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(description="Only jobs in this state"),
    ] = None,
    _untagged: UntaggedRead = None,
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
async def read_job(
    job_id: JobId, jobs: JobsDep, caller: CurrentUser, _untagged: UntaggedRead = None
) -> Response:
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
        **error_responses(
            404,
            described={
                409: "`JOB_FINISHED` (it has ended already) or `JOB_NOT_CANCELLABLE` (a running"
                " snapshot or write by filter, which nothing stops halfway)"
            },
        ),
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


RESULT_VALIDATORS = {
    "ETag": {
        "description": 'Strong tag of the file: "<hash>", gzipped "<hash>-gzip"',
        "schema": {"type": "string"},
    },
    "Last-Modified": {"description": "When the file was written", "schema": {"type": "string"}},
}
CONTENT_RANGE = {
    "Content-Range": {
        "description": "The bytes sent (`bytes 0-99/1234`), or the size (`bytes */1234`)",
        "schema": {"type": "string"},
    }
}
# Read from the request by ``api.jobs.download`` (If-Match and If-None-Match are added with
# the other conditional reads', ``api.openapi.add_request_parameters``).
RESULT_REQUEST_HEADERS = [
    header_parameter("Range", "`bytes=first-last`, `first-` or `-suffix`, comma-separated"),
    header_parameter("If-Range", "The ETag or Last-Modified the Range applies to"),
    header_parameter("If-Modified-Since", "An HTTP date: 304 if the file is no newer"),
    header_parameter("If-Unmodified-Since", "An HTTP date: 412 if the file is newer"),
]
TEXT = {"type": "string"}
# The media types of the files jobs write (``api.jobs.kinds.MEDIA_TYPES``), each served as
# its job wrote it: a generated client reads the body as text instead of dropping it.
RESULT_CONTENT = {kind.partition(";")[0]: {"schema": TEXT} for kind in MEDIA_TYPES.values()}


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The job's result file (an export: NDJSON or CSV)",
            "headers": RESULT_VALIDATORS,
            "content": RESULT_CONTENT,
        },
        206: {
            "description": "The byte ranges asked for with `Range: bytes=...`: one range in"
            " the file's own type, several as `multipart/byteranges`",
            "headers": {**RESULT_VALIDATORS, **CONTENT_RANGE},
            "content": {**RESULT_CONTENT, "multipart/byteranges": {"schema": TEXT}},
        },
        304: {
            "description": "If-None-Match or If-Modified-Since: your copy is current",
            "headers": {"ETag": RESULT_VALIDATORS["ETag"]},
        },
        **error_responses(
            404, described={409: "`JOB_NOT_FINISHED`: the job has not succeeded (yet)"}
        ),
        412: {"model": ErrorEnvelope, "description": "If-Match or If-Unmodified-Since failed"},
        416: {
            "model": ErrorEnvelope,
            "description": "No range asked for starts in the file",
            "headers": CONTENT_RANGE,
        },
    },
    openapi_extra={"parameters": RESULT_REQUEST_HEADERS},
    summary="Download a job's result",
)
async def read_job_result(
    request: Request, job_id: JobId, jobs: JobsDep, caller: CurrentUser
) -> Response:
    """The file a finished export wrote (409 while the job has not succeeded).

    Conditional requests (RFC 9110 §13) against a strong ETag and Last-Modified:
    If-None-Match / If-Modified-Since give 304, If-Match / If-Unmodified-Since 412. The gzip
    coding has its own ETag: the identity one with a `-gzip` suffix. `Range: bytes=...` gives
    206 with those bytes of the identity coding (If-Range: its ETag or Last-Modified); a
    range that starts past the end is 416 with `Content-Range: bytes */<size>`. A Range
    header that is malformed, in another unit, or partly unsatisfiable is ignored: the whole
    file, 200.
    """
    job = await visible_job(jobs, caller, job_id)
    return result_response(request, job, job_id)
