"""Operator actions on the store (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from api.deps import SettingsDep, StoreDep, require_admin
from api.responses import PROBE_CACHE_CONTROL, json_response
from api.schemas.envelope import Envelope, error_responses

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, validation=False),
)


class SnapshotInfo(BaseModel):
    path: str
    bytes: int
    generation: int
    seconds: float
    finished_at: float


@router.post(
    "/snapshot",
    response_model=Envelope[SnapshotInfo],
    responses=error_responses(400),
    summary="Write a snapshot now (backup)",
)
async def create_snapshot(store: StoreDep, settings: SettingsDep) -> Response:
    """Write the whole store to its data directory and answer once it is on disk, with the
    file's path and size: copy that file (and any newer `log-*.aof`) to back up. 400 when the
    store runs without `STORE_DATA_DIR`."""
    info = await store.call("snapshot", {}, timeout=settings.snapshot_timeout)
    body = {"status": "success", "data": info}
    return json_response(body, headers={"Cache-Control": PROBE_CACHE_CONTROL})
