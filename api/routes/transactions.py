"""``POST /transaction``: several writes across tables, all applied or none (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from api.deps import StoreDep, require_admin
from api.http_metrics import MeteredRoute
from api.responses import DATA_CACHE_CONTROL, json_response
from api.schemas.envelope import Envelope, error_responses
from api.schemas.transactions import TransactionBody, TransactionResult
from api.services import transactions

router = APIRouter(
    route_class=MeteredRoute,
    tags=["data"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)


@router.post(
    "/transaction",
    response_model=Envelope[TransactionResult],
    responses=error_responses(400, 404, 409, 412, 413, 415, 422, 507),
    summary="Run a transaction",
)
async def run_transaction(body: TransactionBody, store: StoreDep) -> Response:
    """Apply up to 100 insert/replace/patch/delete operations across tables atomically: all
    succeed, or none is applied and the error names the failed operation (`details[0].index`,
    `op`, `table`) with its status (404, 409, 412, 422). `{"$ref": "0.id"}` uses a value of an
    earlier operation's result. users and orders keep their validation and password hashing.
    Admin only: operations may touch any record, so ownership is not checked per operation;
    your own password or email changes only through `PATCH /users/{id}` with
    `current_password` (422 here), though your email sent again as stored is no change.
    """
    results = await transactions.run_transaction(store, body)
    headers = {"Cache-Control": DATA_CACHE_CONTROL}
    return json_response({"status": "success", "data": {"results": results}}, 200, headers)
