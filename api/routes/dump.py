"""Streamed table export."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from api.deps import AdminUser, SettingsDep, StoreDep, TableName, UntaggedRead, require_admin
from api.errors import ApiError
from api.http_metrics import MeteredRoute
from api.jobs.web import AsyncFlag, JobsDep, job_or_now, run_as_job
from api.middleware import asked_with_head
from api.responses import DATA_CACHE_CONTROL, ReleasingStreamingResponse, dumps, head_answer
from api.schemas.envelope import error_responses
from api.schemas.jobs import job_started
from api.services.dumps import open_dump

router = APIRouter(
    route_class=MeteredRoute,
    prefix="/dump",
    tags=["dump"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)


DUMP_PARAMETERS = frozenset({"async"})
NDJSON = "application/x-ndjson"


async def refuse_other_parameters(request: Request) -> None:
    """A dump is the whole table: a filter, page or sort it would ignore is 400 (as the CSV
    export refuses what it does not take), not every row as if it had been applied."""
    others = sorted({name for name in request.query_params if name not in DUMP_PARAMETERS})
    if others:
        shown = [name if len(name) <= 64 else name[:64] + "…" for name in others]
        message = (
            f"a dump is every record of the table and takes only async: not {', '.join(shown)}"
        )
        details = [{"field": name, "message": "not a parameter of a dump"} for name in shown]
        raise ApiError(400, "BAD_QUERY", message, details)


@router.get(
    "/{table}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON record per line (NDJSON), in creation order",
            "content": {NDJSON: {"schema": {"type": "string"}}},
        },
        **job_started("Started as an export job"),
        **error_responses(400, 404, 507),
    },
    dependencies=[Depends(refuse_other_parameters)],
    summary="Dump a table",
)
async def dump_table(
    request: Request,
    table: TableName,
    store: StoreDep,
    settings: SettingsDep,
    jobs: JobsDep,
    caller: AdminUser,
    run_async: AsyncFlag = None,
    _untagged: UntaggedRead = None,
) -> Response:
    """Stream every record as NDJSON, read from the store in bounded chunks. With
    `?async=true` (or past `JOB_ASYNC_ROWS` rows): 202 and an export job whose result URL
    serves the same bytes. Any other query parameter (a filter, `page`, `sort`...) is 400
    `BAD_QUERY`: the CSV export filters, a dump does not. HEAD starts no job: it answers the
    headers of `?async=false`, reading no record."""
    headers = {"Cache-Control": DATA_CACHE_CONTROL}
    if asked_with_head(request.scope):
        await store.call("count", {"table": table})  # 404 as the GET
        return head_answer(NDJSON, headers)
    if run_async is not False:
        rows = await store.call("count", {"table": table})  # 404 before any job
        if run_as_job(run_async, rows, settings.job_async_rows):
            job = await job_or_now(jobs, run_async, "export", str(caller.id), {"table": table})
            if job is not None:
                return job
    chunks = await open_dump(store, table, settings.dump_chunk_size)

    async def ndjson() -> AsyncIterator[bytes]:
        # A streamed start, whatever follows: an empty table's dump was one empty body, not
        # gzipped, where its HEAD (head_answer) said Content-Encoding: gzip (QA).
        yield b""
        async with aclosing(chunks):  # closed with this one, not by asyncio a turn later
            async for records in chunks:
                if records:
                    yield b"".join(dumps(record) + b"\n" for record in records)

    return ReleasingStreamingResponse(ndjson(), media_type=NDJSON, headers=headers)
