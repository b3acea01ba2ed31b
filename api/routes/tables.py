"""Table management (admin): what its route modules share, and dropping a table
(``DELETE /tables/{table}``: ``DELETE /data/{table}`` deletes rows by filter).

The table routes under ``/data`` (``table_schemas``, ``table_indexes``, ``filter_writes``) are
included before the data router, so ``/data/{table}/schema`` and ``/data/{table}/indexes``
are these routes and not reads of records with those ids.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from api.deps import StoreDep, TableName, require_admin
from api.http_metrics import MeteredRoute
from api.responses import DATA_CACHE_CONTROL, json_response, no_content
from api.schemas.envelope import error_responses
from api.services import tables as table_service


def table_router(prefix: str) -> APIRouter:
    """A router of table management routes: admin only, under the ``tables`` tag."""
    return APIRouter(
        route_class=MeteredRoute,
        prefix=prefix,
        tags=["tables"],
        dependencies=[Depends(require_admin)],
        responses=error_responses(401, 403, validation=False),
    )


def success_response(
    data: object, status_code: int = 200, cache: str = DATA_CACHE_CONTROL
) -> Response:
    return json_response({"status": "success", "data": data}, status_code, {"Cache-Control": cache})


router = table_router("/tables")


@router.delete(
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
