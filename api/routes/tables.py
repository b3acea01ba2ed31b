"""Table management (admin): schemas, indexes, update/delete by filter (under ``/data``), and
dropping a table (``DELETE /tables/{table}``: ``DELETE /data/{table}`` deletes rows by filter).

Included before the data router, so ``/data/{table}/schema`` and ``/data/{table}/indexes`` are
these routes and not reads of records with those ids.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from api.deps import (
    AdminUser,
    CreatedAfter,
    CreatedBefore,
    SettingsDep,
    StoreDep,
    TableName,
    require_admin,
)
from api.errors import ApiError, allowed_methods, bad_query, refuses_methods
from api.http_metrics import MeteredRoute
from api.jobs.runner import JobContext
from api.jobs.web import AsyncFlag, JobsDep, filter_write_as_job, job_or_now
from api.queries import ListQuery, Page, build_list_query
from api.responses import DATA_CACHE_CONTROL, PROBE_CACHE_CONTROL, json_response, no_content
from api.schemas.data import DataBody
from api.schemas.envelope import Envelope, error_responses
from api.schemas.jobs import job_started
from api.schemas.tables import (
    FIELD_PATTERN,
    FilterDeleteResult,
    FilterUpdateResult,
    IndexBody,
    IndexSpec,
    SchemaBody,
    SchemaResult,
    TableDescription,
)
from api.services import tables as table_service
from api.services import typed_tables

data_router = APIRouter(
    route_class=MeteredRoute,
    prefix="/data",
    tags=["tables"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)
tables_router = APIRouter(
    route_class=MeteredRoute,
    prefix="/tables",
    tags=["tables"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)
# Query parameters of a write by filter that are not filters.
WRITE_FLAGS = frozenset({"all", "cascade", "async"})
NOT_FOR_WRITES = ("page", "per_page", "sort")
_FIELD = re.compile(FIELD_PATTERN)


def _body(data: object, status_code: int = 200, cache: str = DATA_CACHE_CONTROL) -> Response:
    return json_response({"status": "success", "data": data}, status_code, {"Cache-Control": cache})


async def parse_write_filter(
    request: Request,
    table: TableName,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    all_rows: Annotated[
        bool, Query(alias="all", description="Required to write every row (no filter)")
    ] = False,
) -> ListQuery:
    """The filters of ``GET /data/{table}`` (same syntax and checks); at least one, unless
    ``all=true``."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in WRITE_FLAGS]
    for name in NOT_FOR_WRITES:
        if name in request.query_params:
            raise bad_query(name, f"'{name}' does not apply to a write by filter")
    fields = typed_tables.fields_of(table)
    query = build_list_query(params, Page(), None, created_after, created_before, fields)
    if not query.where and not all_rows:
        raise ApiError(
            400,
            "FILTER_REQUIRED",
            "A write by filter needs at least one filter; send all=true to change every row",
            [{"field": "query", "message": "no filter given"}],
        )
    return query


WriteFilter = Annotated[ListQuery, Depends(parse_write_filter)]


async def validate_field(
    field: Annotated[str, Path(description="Indexed field", examples=["sku"])],
) -> str:
    if not _FIELD.fullmatch(field):
        raise bad_query("field", f"field must match {FIELD_PATTERN}")
    return field


FieldName = Annotated[str, Depends(validate_field)]


@data_router.get(
    "/{table}/schema",
    response_model=Envelope[TableDescription],
    responses=error_responses(400, 404),
    summary="Describe a table",
)
async def read_schema(
    table: TableName,
    store: StoreDep,
    sample: Annotated[
        int | None, Query(ge=1, le=100_000, description="Rows to examine (generic tables)")
    ] = None,
) -> Response:
    """users/orders: the JSON Schema of their public model. Generic tables: each field seen
    with its types and counts, the indexes, the row count and any attached JSON Schema."""
    return _body(await table_service.describe_table(store, table, sample))


@data_router.put(
    "/{table}/schema",
    response_model=Envelope[SchemaResult],
    responses=error_responses(400, 404, 409, 413, 415, 507),
    summary="Attach a JSON Schema",
)
async def attach_schema(table: TableName, body: SchemaBody, store: StoreDep) -> Response:
    """Validate every later write to this generic table against `schema` (422 naming the
    field). Existing rows that break it: 409 listing them, or with `force` attached anyway
    and reported. `schema: null` removes it. Not for users/orders (400)."""
    result = await table_service.attach_schema(store, table, body.json_schema, body.force)
    return _body(result)


@data_router.delete(
    "/{table}/schema",
    response_model=Envelope[SchemaResult],
    responses=error_responses(400, 404),
    summary="Remove the JSON Schema",
)
async def remove_schema(table: TableName, store: StoreDep) -> Response:
    """Stop validating writes to this generic table (as `PUT` with `schema: null`); 200 even
    if none was attached. Not for users/orders (400)."""
    return _body(await table_service.attach_schema(store, table, None, False))


# `/data/{table}/schema` and `/indexes` are the table's, never records with those ids: a method
# they lack is 405 here rather than falling through to `/data/{table}/{record_id}` (a DELETE
# of ".../schema" deleted the record called "schema"). Its Allow is what the router answers.
@data_router.api_route("/{table}/schema", methods=["POST", "PATCH"], include_in_schema=False)
@data_router.api_route(
    "/{table}/indexes", methods=["PUT", "PATCH", "DELETE"], include_in_schema=False
)
@refuses_methods
async def sub_resource_method_not_allowed(request: Request, table: TableName) -> Response:
    allowed = allowed_methods(request.app, request.url.path)
    raise ApiError(405, "METHOD_NOT_ALLOWED", "Method Not Allowed", headers={"Allow": allowed})


@data_router.get(
    "/{table}/indexes",
    response_model=Envelope[list[IndexSpec]],
    responses=error_responses(400, 404),
    summary="List a table's indexes",
)
async def list_indexes(table: TableName, store: StoreDep) -> Response:
    """The table's hash indexes (equality filters, joins and expand on them use them)."""
    return _body(await table_service.list_indexes(store, table))


@data_router.post(
    "/{table}/indexes",
    status_code=201,
    response_model=Envelope[IndexSpec],
    responses={
        200: {"model": Envelope[IndexSpec], "description": "The same index existed already"},
        **error_responses(400, 404, 409, 413, 415, 507),
    },
    summary="Create an index",
)
async def create_index(
    request: Request, table: TableName, body: IndexBody, store: StoreDep
) -> Response:
    """Build a hash index on a field (in chunks, without stalling other clients). A unique
    index over duplicate values is 409 listing examples. 200 if it already existed."""
    spec, created = await table_service.create_index(
        store, table, body.field, body.unique, body.casefold
    )
    if not created:
        return _body(spec)
    location = request.app.url_path_for("read_index", table=table, field=body.field)
    return json_response(
        {"status": "success", "data": spec},
        201,
        {"Cache-Control": DATA_CACHE_CONTROL, "Location": location},
    )


@data_router.get(
    "/{table}/indexes/{field}",
    response_model=Envelope[IndexSpec],
    responses=error_responses(400, 404),
    summary="Read an index",
)
async def read_index(table: TableName, field: FieldName, store: StoreDep) -> Response:
    """One index of the table, by field; 404 if the field has none."""
    for spec in await table_service.list_indexes(store, table):
        if spec.get("field") == field:
            return _body(spec)
    raise ApiError(404, "NOT_FOUND", f"no index on {table}.{field}")


@data_router.delete(
    "/{table}/indexes/{field}",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 404),
    summary="Drop an index",
)
async def drop_index(table: TableName, field: FieldName, store: StoreDep) -> Response:
    """Drop the index (400 for a built-in one or one a foreign key needs; 404 if none)."""
    await table_service.drop_index(store, table, field)
    return no_content()


@data_router.patch(
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
    if await filter_write_as_job(
        store, table, query.where, run_async, settings.job_async_rows, limit
    ):

        async def update_job(ctx: JobContext) -> dict[str, Any]:
            result = await table_service.update_where(ctx.store, table, query, body.data, limit)
            await ctx.record_progress(result["updated"], result["matched"])
            return result

        params = {"table": table, "where": query.where}
        job = await job_or_now(jobs, run_async, "update_where", str(caller.id), params, update_job)
        if job is not None:
            return job
    result = await table_service.update_where(store, table, query, body.data, limit)
    return _body(result, cache=PROBE_CACHE_CONTROL)


@data_router.delete(
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
    if await filter_write_as_job(
        store, table, query.where, run_async, settings.job_async_rows, limit
    ):

        async def delete_job(ctx: JobContext) -> dict[str, Any]:
            result = await table_service.delete_where(ctx.store, table, query, cascade, limit)
            await ctx.record_progress(result["deleted"], result["deleted"])
            return result

        params = {"table": table, "where": query.where, "cascade": cascade}
        job = await job_or_now(jobs, run_async, "delete_where", str(caller.id), params, delete_job)
        if job is not None:
            return job
    result = await table_service.delete_where(store, table, query, cascade, limit)
    return _body(result, cache=PROBE_CACHE_CONTROL)


@tables_router.delete(
    "/{table}",
    status_code=204,
    response_class=Response,
    responses=error_responses(
        400,
        404,
        described={
            409: "`TABLE_NOT_EMPTY` (send force=true), `TABLE_REFERENCED` (another table's"
            " foreign key names it), `TABLE_BUSY` (a long write runs on it), `BUILT_IN_TABLE`"
        },
    ),
    summary="Drop a table",
)
async def drop_table(
    table: TableName,
    store: StoreDep,
    force: Annotated[
        bool, Query(description="Drop it with its rows (without: 409 unless it is empty)")
    ] = False,
) -> Response:
    """Remove a generic table with its indexes and schema, freeing its place under
    STORE_MAX_TABLES; its name is free at once. 409: it holds rows (unless force=true),
    another table's foreign key references it, a long write is running on it, or it is
    built in (users, orders). 404 if there is no such table."""
    await table_service.drop_table(store, table, force)
    return no_content()


# The router ``api.main`` mounts: both prefixes (routes are copied in: they are all above).
router = APIRouter()
router.include_router(data_router)
router.include_router(tables_router)
