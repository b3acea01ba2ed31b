"""Inner joins of two tables."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict

from api.deps import JoinKey, JoinListQuery, LeftTable, RightTable, StoreDep, require_admin
from api.http_metrics import MeteredRoute
from api.responses import list_response
from api.schemas.envelope import NOT_MODIFIED, ListEnvelope, error_responses
from api.services.joins import join_tables

router = APIRouter(
    route_class=MeteredRoute,
    prefix="/join",
    tags=["join"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)


class JoinRow(BaseModel):
    """One joined row: each record under its table's name."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "users": {"id": "5b0f…", "email": "ada@example.com", "version": 1},
                    "orders": {"id": "0d6c…", "user_id": "5b0f…", "total_price": "39.98"},
                }
            ]
        },
    )


@router.get(
    "/{left}/{right}/{key}",
    response_model=ListEnvelope[JoinRow],
    responses={**NOT_MODIFIED, **error_responses(400, 404, 422, 507)},
    summary="Join two tables",
)
async def join_records(
    request: Request,
    left: LeftTable,
    right: RightTable,
    key: JoinKey,
    query: JoinListQuery,
    store: StoreDep,
) -> Response:
    """Paginated inner join; `user_id` on users/orders matches users.id == orders.user_id.

    A key named `<singular of a table>_id` means that table's `id` (`user_id` for users,
    `category_id` for categories, `address_id` for addresses), as does `<table>_id`
    (`status_id` for a table named status, unless the other side's plural names it);
    otherwise both sides use the key. Filters (`field=value`, `field__op=value`) apply to
    the left table.
    """
    rows, versioned, total = await join_tables(store, left, right, key, query)
    return list_response(request, rows, total, query.page, versioned=versioned)
