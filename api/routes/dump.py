"""Streamed table export."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends
from starlette.responses import Response, StreamingResponse

from api.deps import AdminUser, SettingsDep, StoreDep, TableName, require_admin
from api.http_metrics import MeteredRoute
from api.jobs.web import AsyncFlag, JobsDep, job_or_now, run_as_job
from api.responses import DATA_CACHE_CONTROL, dumps
from api.schemas.envelope import error_responses
from api.services.dumps import open_dump

router = APIRouter(
    route_class=MeteredRoute,
    prefix="/dump",
    tags=["dump"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)


@router.get(
    "/{table}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON record per line (NDJSON), in creation order",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        202: {"description": "Started as an export job (`Location: /api/v1/jobs/{id}`)"},
        **error_responses(400, 404, 507),
    },
    summary="Dump a table",
)
async def dump_table(
    table: TableName,
    store: StoreDep,
    settings: SettingsDep,
    jobs: JobsDep,
    caller: AdminUser,
    run_async: AsyncFlag = None,
) -> Response:
    """Stream every record as NDJSON, read from the store in bounded chunks. With
    `?async=true` (or past `JOB_ASYNC_ROWS` rows): 202 and an export job whose result URL
    serves the same bytes."""
    if run_async is not False:
        rows = await store.call("count", {"table": table})  # 404 before any job
        if run_as_job(run_async, rows, settings.job_async_rows):
            job = await job_or_now(jobs, run_async, "export", str(caller.id), {"table": table})
            if job is not None:
                return job
    chunks = await open_dump(store, table, settings.dump_chunk_size)

    async def ndjson() -> AsyncIterator[bytes]:
        async for records in chunks:
            if records:
                yield b"".join(dumps(record) + b"\n" for record in records)

    headers = {"Cache-Control": DATA_CACHE_CONTROL}
    return StreamingResponse(ndjson(), media_type="application/x-ndjson", headers=headers)
