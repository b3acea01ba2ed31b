"""Background jobs: status from any worker, cancellation, and export results."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import FileResponse, Response

from api.deps import CurrentUser, PageParams
from api.errors import ApiError
from api.http_metrics import MeteredRoute
from api.jobs.model import now_stamp, to_public
from api.jobs.runner import result_dir
from api.jobs.state import Job
from api.jobs.web import JobsDep
from api.responses import PROBE_CACHE_CONTROL, json_response
from api.schemas.envelope import Envelope, ListEnvelope, error_responses
from api.schemas.jobs import JobPublic
from api.settings import Settings
from storeserver.errors import NotFound

router = APIRouter(
    route_class=MeteredRoute, prefix="/jobs", tags=["jobs"], responses=error_responses(401)
)
JobId = Annotated[str, Path(max_length=128, description="Job id")]
NO_STORE = {"Cache-Control": PROBE_CACHE_CONTROL}


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r}", {"table": "jobs", "id": job_id})


async def visible_job(jobs: JobsDep, caller: CurrentUser, job_id: str) -> Job:
    """The job if it is the caller's (or the caller is an admin); else the same 404 as none."""
    try:
        job = await jobs.jobs.get(job_id)
    except NotFound:
        raise job_not_found(job_id) from None
    if job.get("owner_id") != caller.id and not caller.is_admin:
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
    """Your jobs, newest first (an admin sees everyone's)."""
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
        202: {"description": "Cancel requested; the job stops at its next chunk"},
        **error_responses(404, 409),
    },
    summary="Cancel a job",
)
async def cancel_job(job_id: JobId, jobs: JobsDep, caller: CurrentUser) -> Response:
    """A queued job is cancelled at once (200); a running one stops at its next chunk (202);
    a finished one is 409."""
    await visible_job(jobs, caller, job_id)
    stamp = {"state": "cancelled", "cancel_requested": True, "finished_at": now_stamp()}
    cancelled = await jobs.jobs.transition(job_id, ("queued",), stamp)
    if cancelled is not None:
        return job_response(cancelled)
    requested = await jobs.jobs.transition(job_id, ("running",), {"cancel_requested": True})
    if requested is not None:
        return job_response(requested, 202)
    job = await visible_job(jobs, caller, job_id)
    raise ApiError(
        409,
        "JOB_FINISHED",
        f"the job is already {job['state']}",
        [{"field": "state", "message": str(job["state"])}],
    )


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"description": "The job's result file (an export: NDJSON or CSV)"},
        **error_responses(404, 409),
    },
    summary="Download a job's result",
)
async def read_job_result(
    request: Request, job_id: JobId, jobs: JobsDep, caller: CurrentUser
) -> Response:
    """The file a finished export wrote (409 while the job has not succeeded)."""
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
    return FileResponse(
        path,
        media_type=str(result["media_type"]),
        filename=filename,
        headers={"Cache-Control": "private, no-cache"},
    )
