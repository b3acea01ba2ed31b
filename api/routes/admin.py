"""Operator actions on the store (admin only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from api.deps import (
    AdminUser,
    PageParams,
    SettingsDep,
    StoreDep,
    UntaggedRead,
    check_table_name,
    only_params,
    require_admin,
)
from api.http_metrics import MeteredRoute
from api.jobs.web import AsyncFlag, JobsDep, job_or_now, run_as_job
from api.responses import PROBE_CACHE_CONTROL, json_response
from api.schemas.envelope import Envelope, ListEnvelope, error_responses
from api.schemas.jobs import job_started
from api.schemas.tables import AuditEntry
from api.services.audit import AuditFilter, list_audit
from api.services.stats import read_stats

router = APIRouter(
    route_class=MeteredRoute,
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, 429, validation=False),
)
TimeBound = Annotated[
    str | None,
    Query(max_length=40, description="ISO date or datetime (UTC if no offset)"),
]


class SnapshotInfo(BaseModel):
    path: str
    bytes: int
    generation: int
    seconds: float
    finished_at: float


async def snapshot_rows(store: StoreDep) -> int | None:
    """Rows in every table: the size a snapshot has to write; None when the store keeps no
    data directory (it refuses a snapshot at once: no job is started to fail with that)."""
    stats = await store.call("stats", {})
    if not stats.get("persistence", {}).get("enabled"):
        return None
    return sum(int(table.get("rows", 0)) for table in stats.get("tables", {}).values())


@router.post(
    "/snapshot",
    response_model=Envelope[SnapshotInfo],
    responses={**job_started(), **error_responses(400, 507)},
    summary="Write a snapshot now (backup)",
)
async def create_snapshot(
    store: StoreDep,
    settings: SettingsDep,
    jobs: JobsDep,
    caller: AdminUser,
    run_async: AsyncFlag = None,
) -> Response:
    """Write the whole store to its data directory and answer once it is on disk, with the
    file's path and size: copy that file (and any newer `log-*.aof`) to back up. 400 when the
    store runs without `STORE_DATA_DIR`, at once, `?async=true` too. With `?async=true` (or past
    `JOB_ASYNC_ROWS` rows in all): 202 and a job (`Location: /api/v1/jobs/{id}`) whose result
    is this same answer."""
    rows = await snapshot_rows(store) if run_async is not False else None
    if rows is not None and run_as_job(run_async, rows, settings.job_async_rows):
        job = await job_or_now(jobs, run_async, "snapshot", str(caller.id), {})
        if job is not None:
            return job
    info = await store.call("snapshot", {}, timeout=settings.snapshot_timeout)
    body = {"status": "success", "data": info}
    return json_response(body, headers={"Cache-Control": PROBE_CACHE_CONTROL})


@router.get(
    "/audit",
    response_model=ListEnvelope[AuditEntry],
    responses=error_responses(400),
    summary="List the audit log",
    dependencies=[only_params("user_id", "table", "since", "until")],
)
async def read_audit(
    store: StoreDep,
    page: PageParams,
    user_id: Annotated[str | None, Query(max_length=128, description="Who made the change")] = None,
    table: Annotated[str | None, Query(max_length=200, description="Which table")] = None,
    since: TimeBound = None,
    until: TimeBound = None,
    _untagged: UntaggedRead = None,
) -> Response:
    """Every table mutation, newest first: who (user id, role), what (table, record id or
    filter, operation, changed field names; never values), when, and the request id. Bounded
    by STORE_AUDIT_MAX_ENTRIES and STORE_AUDIT_MAX_AGE."""
    if table is not None:
        check_table_name(table, "table")
    where = AuditFilter(user_id=user_id, table=table, since=since, until=until)
    items, total = await list_audit(store, where, page)
    body = {
        "status": "success",
        "data": items,
        "meta": {"page": page.page, "per_page": page.per_page, "total": total},
    }
    return json_response(body, headers={"Cache-Control": PROBE_CACHE_CONTROL})


@router.get(
    "/stats",
    response_model=Envelope[dict[str, Any]],
    summary="Store statistics",
)
async def read_store_stats(store: StoreDep, _untagged: UntaggedRead = None) -> Response:
    """For people who do not run Prometheus: tables (rows, `estimated_bytes`), store memory and
    limit, operations with counts and latency percentiles, recent slow operations, connected
    clients, persistence (log size, last snapshot, fsync policy), uptime and version."""
    body = {"status": "success", "data": await read_stats(store)}
    return json_response(body, headers={"Cache-Control": PROBE_CACHE_CONTROL})
