"""A table's hash indexes (admin): list, create, read and drop them.

The methods ``/data/{table}/indexes`` lacks are refused (405) by the route in
``api.routes.table_schemas``, included before this router.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path, Request, Response

from api.deps import StoreDep, TableName, UntaggedRead
from api.errors import ApiError, bad_query
from api.responses import DATA_CACHE_CONTROL, json_response, no_content
from api.routes.tables import success_response, table_router
from api.schemas.envelope import LOCATION_HEADER, Envelope, error_responses
from api.schemas.tables import FIELD_PATTERN, IndexBody, IndexSpec
from api.services import tables as table_service

router = table_router("/data")
_FIELD = re.compile(FIELD_PATTERN)


async def validate_field(
    field: Annotated[str, Path(description="Indexed field", examples=["sku"])],
) -> str:
    if not _FIELD.fullmatch(field):
        raise bad_query("field", f"field must match {FIELD_PATTERN}")
    return field


FieldName = Annotated[str, Depends(validate_field)]


@router.get(
    "/{table}/indexes",
    response_model=Envelope[list[IndexSpec]],
    responses=error_responses(400, 404),
    summary="List a table's indexes",
)
async def list_indexes(
    table: TableName, store: StoreDep, _untagged: UntaggedRead = None
) -> Response:
    """The table's hash indexes (equality filters, joins and expand on them use them)."""
    return success_response(await table_service.list_indexes(store, table))


@router.post(
    "/{table}/indexes",
    status_code=201,
    response_model=Envelope[IndexSpec],
    responses={
        200: {"model": Envelope[IndexSpec], "description": "The same index existed already"},
        201: {"headers": LOCATION_HEADER},
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
        return success_response(spec)
    location = request.app.url_path_for("read_index", table=table, field=body.field)
    return json_response(
        {"status": "success", "data": spec},
        201,
        {"Cache-Control": DATA_CACHE_CONTROL, "Location": location},
    )


@router.get(
    "/{table}/indexes/{field}",
    response_model=Envelope[IndexSpec],
    responses=error_responses(400, 404),
    summary="Read an index",
)
async def read_index(
    table: TableName, field: FieldName, store: StoreDep, _untagged: UntaggedRead = None
) -> Response:
    """One index of the table, by field; 404 if the field has none."""
    for spec in await table_service.list_indexes(store, table):
        if spec.get("field") == field:
            return success_response(spec)
    raise ApiError(404, "NOT_FOUND", f"no index on {table}.{field}")


@router.delete(
    "/{table}/indexes/{field}",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 404, 409),
    summary="Drop an index",
)
async def drop_index(table: TableName, field: FieldName, store: StoreDep) -> Response:
    """Drop the index (400 for a built-in one or one a foreign key needs; 404 if none; 409
    `TABLE_BUSY` while it is being built)."""
    await table_service.drop_index(store, table, field)
    return no_content()
