"""A generic table's JSON Schema (admin): describe the table, attach or remove the schema.

Its 405 route also guards ``/data/{table}/indexes``: both sub-resources keep the methods they
lack from the record routes of ``api.routes.data``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, Response

from api.deps import StoreDep, TableName, UntaggedRead
from api.errors import ApiError, allowed_methods, refuses_methods
from api.query_params import ASCII_DIGITS
from api.routes.tables import success_response, table_router
from api.schemas.envelope import Envelope, error_responses
from api.schemas.tables import SchemaBody, SchemaResult, TableDescription
from api.services import tables as table_service

router = table_router("/data")


@router.get(
    "/{table}/schema",
    response_model=Envelope[TableDescription],
    responses=error_responses(
        404,
        described={
            400: "Bad table name; or `LIMIT_EXCEEDED`: the description (every field name"
            " seen) would not fit one store reply: examine fewer rows with `sample`"
        },
    ),
    summary="Describe a table",
)
async def read_schema(
    table: TableName,
    store: StoreDep,
    sample: Annotated[
        int | None,
        Query(ge=1, le=100_000, description="Rows to examine (generic tables)"),
        ASCII_DIGITS,
    ] = None,
    _untagged: UntaggedRead = None,
) -> Response:
    """users/orders: the JSON Schema of their public model. Generic tables: each field seen
    with its types and counts, the indexes, the row count and any attached JSON Schema."""
    return success_response(await table_service.describe_table(store, table, sample))


@router.put(
    "/{table}/schema",
    response_model=Envelope[SchemaResult],
    responses=error_responses(
        400,
        404,
        413,
        415,
        507,
        described={
            409: "`SCHEMA_VIOLATIONS`: existing rows break it (listed in `details`: `id`,"
            " `field` (its path in the record; empty for the record as a whole) and `message`;"
            " send force=true to attach it anyway)"
        },
    ),
    summary="Attach a JSON Schema",
)
async def attach_schema(table: TableName, body: SchemaBody, store: StoreDep) -> Response:
    """Validate every later write to this generic table against `schema` (422 naming the
    field). Existing rows that break it: 409 listing them, or with `force` attached anyway
    and reported. `schema: null` removes it. Not for users/orders (400)."""
    result = await table_service.attach_schema(store, table, body.json_schema, body.force)
    return success_response(result)


@router.delete(
    "/{table}/schema",
    response_model=Envelope[SchemaResult],
    responses=error_responses(400, 404),
    summary="Remove the JSON Schema",
)
async def remove_schema(table: TableName, store: StoreDep) -> Response:
    """Stop validating writes to this generic table (as `PUT` with `schema: null`); 200 even
    if none was attached, 404 if the table does not exist. Not for users/orders (400)."""
    return success_response(await table_service.attach_schema(store, table, None, False))


# `/data/{table}/schema` and `/indexes` are the table's, never records with those ids: a method
# they lack is 405 here rather than falling through to `/data/{table}/{record_id}` (a DELETE
# of ".../schema" deleted the record called "schema"). Its Allow is what the router answers.
@router.api_route("/{table}/schema", methods=["POST", "PATCH"], include_in_schema=False)
@router.api_route("/{table}/indexes", methods=["PUT", "PATCH", "DELETE"], include_in_schema=False)
@refuses_methods
async def sub_resource_method_not_allowed(request: Request, table: TableName) -> Response:
    allowed = allowed_methods(request.app, request.url.path)
    raise ApiError(405, "METHOD_NOT_ALLOWED", "Method Not Allowed", headers={"Allow": allowed})
