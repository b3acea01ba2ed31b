"""Generic tables: records of any shape, under ``{"data": {...}}`` bodies.

``users`` and ``orders`` here go through the same validation and services as their own routes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from api.deps import DataListQuery, IfMatch, StoreDep, TableName, require_admin
from api.responses import list_response, no_content, record_response
from api.schemas.data import DataBody, DataRecord
from api.schemas.envelope import Envelope, ListEnvelope, error_responses
from api.services import records

router = APIRouter(
    prefix="/data",
    tags=["data"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)
RecordId = Annotated[str, Path(max_length=128, description="Record id")]


@router.post(
    "/{table}",
    status_code=201,
    response_model=Envelope[DataRecord],
    responses=error_responses(400, 409, 413, 415, 422, 507),
    summary="Create a record",
)
async def create_record(
    request: Request, table: TableName, body: DataBody, store: StoreDep
) -> Response:
    """Insert a record (the table is created on first insert); an `id` may be supplied."""
    record = await records.create_record(store, table, body.data)
    location = request.app.url_path_for("read_record", table=table, record_id=record["id"])
    return record_response(request, record, status_code=201, location=location)


@router.get(
    "/{table}",
    response_model=ListEnvelope[DataRecord],
    responses=error_responses(400, 404, 422),
    summary="List records",
)
async def list_records(
    request: Request, table: TableName, query: DataListQuery, store: StoreDep
) -> Response:
    """List a table with pagination, sorting and filters; values parse as JSON scalars."""
    items, total = await records.list_records(store, table, query)
    return list_response(request, items, total, query.page)


@router.get(
    "/{table}/{record_id}",
    response_model=Envelope[DataRecord],
    responses={304: {"description": "Not modified (If-None-Match)"}, **error_responses(400, 404)},
    summary="Read a record",
)
async def read_record(
    request: Request, table: TableName, record_id: RecordId, store: StoreDep
) -> Response:
    """Read one record; the weak ETag is its version."""
    return record_response(request, await records.read_record(store, table, record_id))


@router.put(
    "/{table}/{record_id}",
    response_model=Envelope[DataRecord],
    responses=error_responses(400, 404, 409, 412, 413, 415, 422, 507),
    summary="Replace a record",
)
async def replace_record(
    request: Request,
    table: TableName,
    record_id: RecordId,
    body: DataBody,
    store: StoreDep,
    if_match: IfMatch,
) -> Response:
    """Replace the record's fields with `data` (users/orders: every client field required)."""
    record = await records.replace_record(store, table, record_id, body.data, if_match)
    return record_response(request, record)


@router.patch(
    "/{table}/{record_id}",
    response_model=Envelope[DataRecord],
    responses=error_responses(400, 404, 409, 412, 413, 415, 422, 507),
    summary="Update a record",
)
async def update_record(
    request: Request,
    table: TableName,
    record_id: RecordId,
    body: DataBody,
    store: StoreDep,
    if_match: IfMatch,
) -> Response:
    """Merge `data` into the record (RFC 7386: nested maps merge, null removes a field)."""
    record = await records.update_record(store, table, record_id, body.data, if_match)
    return record_response(request, record)


@router.delete(
    "/{table}/{record_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 404, 409, 412),
    summary="Delete a record",
)
async def delete_record(
    table: TableName,
    record_id: RecordId,
    store: StoreDep,
    if_match: IfMatch,
    cascade: Annotated[bool, Query(description="Also delete records that reference it")] = False,
) -> Response:
    """Delete a record; 409 if others reference it, unless cascade=true."""
    await records.delete_record(store, table, record_id, if_match, cascade)
    return no_content()
