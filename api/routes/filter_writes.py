"""Update and delete by filter (admin): ``PATCH`` and ``DELETE /data/{table}`` with the filters
of ``GET /data/{table}``, run at once or, when asked or big, as a job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Query, Request, Response

from api.deps import AdminUser, SettingsDep, StoreDep, TableName, table_filter_query
from api.errors import ApiError, bad_query
from api.jobs.web import AsyncFlag, JobsDep, filter_write_as_job, job_or_now
from api.queries import ListQuery
from api.responses import PROBE_CACHE_CONTROL
from api.routes.tables import success_response, table_router
from api.schemas.data import DataBody
from api.schemas.envelope import Envelope, error_responses
from api.schemas.jobs import job_started
from api.schemas.tables import FilterDeleteResult, FilterUpdateResult
from api.services import tables as table_service

if TYPE_CHECKING:
    from api.jobs.runner import JobContext

router = table_router("/data")
# Query parameters of a write by filter that are not filters.
WRITE_FLAGS = frozenset({"all", "cascade", "async"})
NOT_FOR_WRITES = ("page", "per_page", "sort")
FilterQuery = Annotated[ListQuery, Depends(table_filter_query(WRITE_FLAGS))]


async def parse_write_filter(
    request: Request,
    query: FilterQuery,
    all_rows: Annotated[
        bool, Query(alias="all", description="Required to write every row (no filter)")
    ] = False,
) -> ListQuery:
    """The filters of ``GET /data/{table}`` (same syntax and checks); at least one, unless
    ``all=true``."""
    for name in NOT_FOR_WRITES:
        if name in request.query_params:
            raise bad_query(name, f"'{name}' does not apply to a write by filter")
    if not query.where and not all_rows:
        raise ApiError(
            400,
            "FILTER_REQUIRED",
            "A write by filter needs at least one filter; send all=true to change every row",
            [{"field": "query", "message": "no filter given"}],
        )
    return query


WriteFilter = Annotated[ListQuery, Depends(parse_write_filter)]


@router.patch(
    "/{table}",
    response_model=Envelope[FilterUpdateResult],
    responses={
        **job_started(),
        **error_responses(400, 404, 409, 413, 415, 507),
    },
    summary="Update records by filter",
)
async def update_by_filter(
    table: TableName,
    query: WriteFilter,
    body: DataBody,
    store: StoreDep,
    settings: SettingsDep,
    jobs: JobsDep,
    caller: AdminUser,
    run_async: AsyncFlag = None,
) -> Response:
    """Merge `data` into every record matching the filters (those of `GET /data/{table}`),
    atomically. No filter: 400 unless `all=true`. More matches than the cap
    (MAX_ROWS_PER_FILTER_WRITE): 400 TOO_MANY_ROWS, nothing changed. Not for users.
    `?async=true` (or over JOB_ASYNC_ROWS matches): 202 and a job with this same result."""
    limit = settings.max_rows_per_filter_write
    changes = await table_service.changes_for(table, body.data)
    if await filter_write_as_job(
        store, table, query.where, run_async, settings.job_async_rows, limit
    ):

        async def update_job(ctx: JobContext) -> dict[str, Any]:
            result = await table_service.update_where(ctx.store, table, query, changes, limit)
            ctx.record_progress(result["updated"], result["matched"])
            return result

        params = {"table": table, "where": query.where}
        job = await job_or_now(jobs, run_async, "update_where", str(caller.id), params, update_job)
        if job is not None:
            return job
    result = await table_service.update_where(store, table, query, changes, limit)
    return success_response(result, cache=PROBE_CACHE_CONTROL)


@router.delete(
    "/{table}",
    response_model=Envelope[FilterDeleteResult],
    responses={
        **job_started(),
        **error_responses(400, 404, 409, 507),
    },
    summary="Delete records by filter",
)
async def delete_by_filter(
    table: TableName,
    query: WriteFilter,
    store: StoreDep,
    settings: SettingsDep,
    jobs: JobsDep,
    caller: AdminUser,
    cascade: Annotated[bool, Query(description="Also delete records that reference them")] = False,
    run_async: AsyncFlag = None,
) -> Response:
    """Delete every record matching the filters, atomically (409 if one has dependants,
    unless cascade=true). Same refusals and cap as the update. Not for users.
    `?async=true` (or over JOB_ASYNC_ROWS matches): 202 and a job with this same result."""
    limit = settings.max_rows_per_filter_write
    table_service.refuse_users(table)  # a 400 now, not a job that fails
    if await filter_write_as_job(
        store, table, query.where, run_async, settings.job_async_rows, limit
    ):

        async def delete_job(ctx: JobContext) -> dict[str, Any]:
            result = await table_service.delete_where(ctx.store, table, query, cascade, limit)
            ctx.record_progress(result["deleted"], result["deleted"])
            return result

        params = {"table": table, "where": query.where, "cascade": cascade}
        job = await job_or_now(jobs, run_async, "delete_where", str(caller.id), params, delete_job)
        if job is not None:
            return job
    result = await table_service.delete_where(store, table, query, cascade, limit)
    return success_response(result, cache=PROBE_CACHE_CONTROL)
