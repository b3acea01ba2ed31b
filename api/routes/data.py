"""Generic tables: records of any shape, under ``{"data": {...}}`` bodies.

``users`` and ``orders`` here go through the same validation and services as their own routes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from api.conditions import (
    WRITE_PRECONDITIONS,
    WriteConditions,
    header_list,
    parse_write_conditions,
)
from api.deps import (
    DataListQuery,
    Preconditions,
    StoreDep,
    TableName,
    UntaggedRead,
    embeds_only,
    require_admin,
    table_filter_query,
)
from api.errors import ApiError
from api.etags import ANY
from api.http_metrics import MeteredRoute
from api.queries import ListQuery
from api.responses import (
    DATA_CACHE_CONTROL,
    groups_response,
    json_response,
    list_response,
    no_content,
    record_response,
)
from api.schemas.data import DataBody, DataRecord
from api.schemas.envelope import (
    CREATED,
    NOT_MODIFIED,
    QUERY_MATCHED,
    RECORD_HEADERS,
    TAGGED,
    Envelope,
    GroupsEnvelope,
    ListEnvelope,
    error_responses,
    projected_list,
)
from api.schemas.query import AggregateBody, CountResult, QueryBody
from api.schemas.transactions import BulkMeta, DataCreateBody
from api.services import record_queries, records, typed_tables
from api.services.batches import check_refs
from api.services.record_values import DATA
from api.services.versions import accepted_versions

router = APIRouter(
    route_class=MeteredRoute,
    prefix="/data",
    tags=["data"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)
RecordId = Annotated[str, Path(max_length=128, description="Record id")]
Upsert = Annotated[
    bool, Query(description="Merge into records whose id exists (generic tables only)")
]
Refs = Annotated[
    bool,
    Query(
        description='`{"$ref": "<i>.<field path>"}` in a record of a list under `data` is'
        " that field of record i (an earlier one) of the same list, as in a transaction (in a"
        " single record, which has no earlier one, such a map is a 422)."
        " Without it, such a map is data and every record is written as sent"
    ),
]


class BulkEnvelope(ListEnvelope[DataRecord]):
    """The records a bulk insert stored, in order."""

    meta: BulkMeta  # type: ignore[assignment]


CreatedRecords = Envelope[DataRecord] | BulkEnvelope


# The filters of the list; its page, per_page and sort mean nothing to a count (ignored).
CountQuery = Annotated[ListQuery, Depends(table_filter_query())]


@router.post(
    "/{table}",
    status_code=201,
    response_model=CreatedRecords,
    responses={
        # Chosen at run time: a client generated from the document must expect it.
        200: {
            "model": CreatedRecords,
            "description": "`upsert=true` merged, created nothing",
            "headers": RECORD_HEADERS,  # of one record, not of a list
        },
        **CREATED,  # Location and ETag of one record, not of a list
        **error_responses(
            400,
            409,
            413,
            415,
            422,
            507,
            described={412: "`upsert=true` with If-Match or If-None-Match that does not hold"},
        ),
    },
    summary="Create a record, or many",
)
async def create_record(
    request: Request,
    table: TableName,
    body: DataCreateBody,
    store: StoreDep,
    upsert: Upsert = False,
    refs: Refs = False,
) -> Response:
    """Insert a record (the table is created on first insert); an `id` may be supplied.

    With a list under `data`, every record is inserted in one atomic store operation (none if
    one fails; the error names it); with `refs=true`, a record may take values of earlier ones
    (`{"$ref": "0.id"}`). `upsert=true` merges into records whose `id` exists (RFC 7386,
    version + 1; none for a record that already holds those values, counted in neither
    `meta.inserted` nor `meta.updated`): the answer is 200 when nothing was created. An upsert
    of one record evaluates `If-None-Match: *` (create only; 412 if the id exists) and
    `If-Match` (`W/"3"`, or `*`: merge only into the record at that version, or at any; 412 if
    it is not there); other creates ignore both headers.
    """
    conditions, match_any = WriteConditions(), False
    if upsert:
        conditions = await parse_write_conditions(request)
        sent = header_list(request, "if-match")
        match_any = sent is not None and sent.strip() == ANY
    conditional = match_any or conditions != WriteConditions()
    if isinstance(body.data, list):
        if conditional:
            raise ApiError(
                400,
                "BAD_REQUEST",
                "If-Match and If-None-Match apply to an upsert of one record, not a list",
                [{"field": "body.data", "message": "send one record, or no condition"}],
            )
        written = await records.create_records(store, table, body.data, upsert, refs)
        meta = {"inserted": written.inserted, "updated": written.updated}
        headers = {"Cache-Control": DATA_CACHE_CONTROL}
        status = 201 if written.inserted else 200  # an upsert that only merged created nothing
        body_out = {"status": "success", "data": written.records, "meta": meta}
        return json_response(body_out, status, headers)
    if refs:
        # One record has no earlier one to take values of: a reference in it is the 422 the
        # same record gets as a list's first (QA: it was written as data, the flag ignored).
        check_refs(body.data, 0, DATA)
    if upsert:
        if conditional:
            record, created = await records.conditional_upsert(
                store, table, body.data, conditions, match_any
            )
        else:
            record, created = await records.upsert_record(store, table, body.data)
        status = 201 if created else 200
    else:
        record, status = await records.create_record(store, table, body.data), 201
    location = request.app.url_path_for("read_record", table=table, record_id=record["id"])
    return record_response(request, record, status_code=status, location=location)


@router.get(
    "/{table}/count",
    response_model=Envelope[CountResult],
    responses=error_responses(400, 404, 422, 507),
    summary="Count records",
)
async def count_records(
    # The If-Match 412 before the filters' 422, as the README says (QA): in this order.
    table: TableName,
    _untagged: UntaggedRead,
    query: CountQuery,
    store: StoreDep,
) -> Response:
    """How many records match the list filters (`field=value`, `field__op=value`,
    `created_after`, `created_before`); an indexed equality is answered from the index."""
    count = await record_queries.count_records(store, table, query)
    headers = {"Cache-Control": DATA_CACHE_CONTROL}
    return json_response({"status": "success", "data": {"count": count}}, 200, headers)


@router.post(
    "/{table}/query",
    response_model=projected_list(DataRecord),
    responses={**TAGGED, **error_responses(400, 404, 413, 415, 422, 507, described=QUERY_MATCHED)},
    summary="Query records with a filter tree",
)
async def query_records(
    request: Request, table: TableName, body: QueryBody, store: StoreDep
) -> Response:
    """Filter with and/or/not over eq, ne, gt, gte, lt, lte, in, contains, startswith and
    exists; sort, paginate and project (`fields`). Errors name the bad node of the tree."""
    query = record_queries.TreeQuery.parse(body, typed_tables.fields_of(table))
    items, versioned, total = await record_queries.query_records(store, table, query)
    return list_response(request, items, total, query.page, versioned, query.shape)


@router.post(
    "/{table}/aggregate",
    response_model=GroupsEnvelope,
    responses=error_responses(400, 404, 413, 415, 422, 507),
    summary="Aggregate records by group",
)
async def aggregate_records(
    table: TableName, body: AggregateBody, store: StoreDep, _untagged: UntaggedRead = None
) -> Response:
    """Group by fields and compute count, sum, avg, min and max (decimal sums stay exact and
    are sent as strings); groups are filtered first, then sorted and paginated."""
    items, total = await record_queries.aggregate_records(store, table, body)
    return groups_response(items, total, body.page, body.per_page)


@router.get(
    "/{table}",
    response_model=ListEnvelope[DataRecord],
    responses={**NOT_MODIFIED, **error_responses(400, 404, 422, 507)},
    summary="List records",
)
async def list_records(
    request: Request, table: TableName, query: DataListQuery, store: StoreDep
) -> Response:
    """List a table with pagination, sorting and filters; values parse as JSON scalars."""
    items, total = await record_queries.list_records(store, table, query)
    return list_response(request, items, total, query.page)


@router.get(
    "/{table}/{record_id}",
    response_model=Envelope[DataRecord],
    responses={**NOT_MODIFIED, **error_responses(400, 404)},
    summary="Read a record",
)
async def read_record(
    request: Request,
    table: TableName,
    record_id: RecordId,
    store: StoreDep,
    _embeds: Annotated[None, embeds_only()] = None,
) -> Response:
    """Read one record; the weak ETag is its version."""
    return record_response(request, await records.read_record(store, table, record_id))


@router.put(
    "/{table}/{record_id}",
    response_model=Envelope[DataRecord],
    responses={
        **TAGGED,
        **error_responses(400, 404, 409, 413, 415, 422, 507, described=WRITE_PRECONDITIONS),
    },
    summary="Replace a record",
)
async def replace_record(
    request: Request,
    table: TableName,
    record_id: RecordId,
    body: DataBody,
    store: StoreDep,
    conditions: Preconditions,
) -> Response:
    """Replace the record's fields with `data` (users/orders: every client field required)."""
    accepted = await accepted_versions(store, table, record_id, conditions)
    record = await records.replace_record(store, table, record_id, body.data, accepted)
    return record_response(request, record)


@router.patch(
    "/{table}/{record_id}",
    response_model=Envelope[DataRecord],
    responses={
        **TAGGED,
        **error_responses(400, 404, 409, 413, 415, 422, 507, described=WRITE_PRECONDITIONS),
    },
    summary="Update a record",
)
async def update_record(
    request: Request,
    table: TableName,
    record_id: RecordId,
    body: DataBody,
    store: StoreDep,
    conditions: Preconditions,
) -> Response:
    """Merge `data` into the record (RFC 7386: nested maps merge, null removes a field)."""
    accepted = await accepted_versions(store, table, record_id, conditions)
    record = await records.update_record(store, table, record_id, body.data, accepted)
    return record_response(request, record)


@router.delete(
    "/{table}/{record_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 404, 409, described=WRITE_PRECONDITIONS),
    summary="Delete a record",
)
async def delete_record(
    table: TableName,
    record_id: RecordId,
    store: StoreDep,
    conditions: Preconditions,
    cascade: Annotated[bool, Query(description="Also delete records that reference it")] = False,
) -> Response:
    """Delete a record; 409 if others reference it, unless cascade=true."""
    accepted = await accepted_versions(store, table, record_id, conditions)
    await records.delete_record(store, table, record_id, accepted, cascade)
    return no_content()
