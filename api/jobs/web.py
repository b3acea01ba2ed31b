"""How routes offer a job: the ``async`` query flag, the threshold rule and the 202 answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request
from starlette.responses import Response

from api.jobs.model import to_public
from api.jobs.runner import JobFunc, JobRunner
from api.responses import PROBE_CACHE_CONTROL, json_response
from api.store import Store, announced
from storeserver.errors import MemoryLimit, StoreUnavailable

JOB_LOCATION = "/api/v1/jobs/{id}"


async def get_jobs(request: Request) -> JobRunner:
    """The worker's job runner, opened in the lifespan."""
    runner: JobRunner | None = getattr(request.app.state, "jobs", None)
    if runner is None:
        raise StoreUnavailable("background jobs are not ready")
    return runner


JobsDep = Annotated[JobRunner, Depends(get_jobs)]
AsyncFlag = Annotated[
    bool | None,
    Query(
        alias="async",
        description="`true`: run as a background job (202 + Location); `false`: answer now;"
        " unset: a job once the rows involved pass JOB_ASYNC_ROWS",
    ),
]


def run_as_job(flag: bool | None, rows: int, threshold: int) -> bool:
    """``?async=`` decides when given; otherwise large work becomes a job."""
    return flag if flag is not None else rows > threshold


async def filter_write_as_job(
    store: Store, table: str, where: list[Any], flag: bool | None, threshold: int, cap: int
) -> bool:
    """For an update/delete by filter: a job when ``?async=true``, or without ``?async`` when
    more than ``threshold`` rows match (counted only when the table itself is that large);
    but never for more than ``cap`` matches (MAX_ROWS_PER_FILTER_WRITE), even when asked:
    such a write is refused, and a 400 now says so better than a 202 and a job that fails."""
    ceiling = announced(store, "max_bulk_rows")  # STORE_MAX_BULK_ROWS, if lower (QA)
    if type(ceiling) is int and ceiling > 0:
        cap = min(cap, ceiling)
    rows: int = await store.call("count", {"table": table})  # a missing table: 404 now
    if flag is False or (flag is None and rows <= threshold):
        return False
    if flag and rows <= cap:
        return True  # too few rows to pass the cap: no need to count the matches
    matched: int = await store.call("count", {"table": table, "where": where})
    if matched > cap:
        return False  # run now: the write answers 400 TOO_MANY_ROWS
    return bool(flag) or matched > threshold


async def job_or_now(
    jobs: JobRunner,
    flag: bool | None,
    kind: str,
    owner: str,
    params: dict[str, Any],
    func: JobFunc | None = None,
) -> Response | None:
    """202 with a new job; ``None``: answer the request now instead.

    A job's record is a write, which the store refuses at its memory limit, where reads and
    deletes go on (deletes are how to make room): a job chosen only for its size (no
    ``?async=true``) is then run now, as ``?async=false`` would be. (An update by filter
    then meets the store's own 507.) One asked for explicitly is still 507.
    """
    try:
        return accepted(await jobs.submit(kind, owner, params, func))
    except MemoryLimit:
        if flag:
            raise
        return None


def accepted(job: dict[str, Any]) -> Response:
    """202 Accepted with the job and ``Location: /api/v1/jobs/{id}``."""
    location = JOB_LOCATION.format(id=job["id"])
    headers = {"Location": location, "Cache-Control": PROBE_CACHE_CONTROL}
    return json_response({"status": "success", "data": to_public(job)}, 202, headers)
