"""CSV import and export (admin). The cell encoding is in ``api.services.csvio``."""

from __future__ import annotations

import tempfile
from pathlib import PurePath
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from api.deps import (
    AdminUser,
    SettingsDep,
    StoreDep,
    TableName,
    UntaggedRead,
    check_table_name,
    require_admin,
    table_filter_query,
)
from api.errors import ApiError, bad_query
from api.http_metrics import MeteredRoute
from api.jobs.imports import KIND as IMPORT_KIND
from api.jobs.imports import body_size, copy_upload, import_job
from api.jobs.web import AsyncFlag, JobsDep, accepted, job_or_now, run_as_job
from api.middleware import asked_with_head
from api.queries import ListQuery
from api.responses import DATA_CACHE_CONTROL, head_answer, json_response
from api.schemas.batch import ImportReport
from api.schemas.envelope import Envelope, error_responses
from api.schemas.jobs import job_started
from api.services.csv_export import open_export
from api.services.csv_import import import_csv
from api.services.csv_rows import check_importable

router = APIRouter(
    route_class=MeteredRoute,
    prefix="/batch",
    tags=["batch"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403),
)
SPOOL_BYTES = 1024 * 1024  # a text/csv body past this is spooled to a temporary file
NOT_FILTERS = ("page", "per_page", "sort")
CSV = "text/csv; charset=utf-8"


@router.post(
    "/import",
    response_model=Envelope[ImportReport],
    responses={
        **job_started(),
        **error_responses(400, 404, 409, 413, 415, 507),
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            }
        }
    },
    summary="Import a CSV file",
)
async def import_table(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    jobs: JobsDep,
    caller: AdminUser,
    table: Annotated[
        str | None,
        Query(description="Target table; default: the uploaded file's name without .csv"),
    ] = None,
    atomic: Annotated[
        bool, Query(description="All rows or none (at most 1000 rows, one store batch)")
    ] = False,
    run_async: AsyncFlag = None,
) -> Response:
    """Validate every row and import the good ones; answer counts and per-row errors. With
    `?async=true` (or a body over JOB_ASYNC_BYTES): 202 and a job whose result is this report."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "multipart/form-data":  # text/csv: the body middleware allows no other
        if table is None:
            raise bad_query("table", "give ?table=... (or upload a file named <table>.csv)")
        name = check_table_name(table, "table")
        check_importable(name)
        binary = await _spooled_body(request)
        if run_as_job(run_async, body_size(binary), settings.job_async_bytes):
            return await _import_job(jobs, caller, name, binary, atomic)
        with binary:
            report = await import_csv(store, name, binary, atomic)
        return _report(report)
    form = await request.form(max_files=1, max_fields=10)
    try:
        upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise ApiError(
                400,
                "INVALID_CSV",
                "the multipart body has no file part",
                [{"field": "file", "message": "upload the CSV as a file part"}],
            )
        name = check_table_name(table or _table_from_filename(upload.filename), "table")
        check_importable(name)
        if run_as_job(run_async, body_size(upload.file), settings.job_async_bytes):
            return await _import_job(jobs, caller, name, copy_upload(upload.file), atomic)
        report = await import_csv(store, name, upload.file, atomic)
    finally:
        await form.close()
    return _report(report)


def _report(report: dict[str, Any]) -> Response:
    """An import's counts: a data answer, not kept by caches as any other (QA: it said no
    Cache-Control at all)."""
    return json_response(
        {"status": "success", "data": report}, 200, {"Cache-Control": DATA_CACHE_CONTROL}
    )


async def _import_job(
    jobs: JobsDep, caller: AdminUser, table: str, binary: IO[bytes], atomic: bool
) -> Response:
    params = {"table": table, "atomic": atomic}
    job = await jobs.submit(IMPORT_KIND, str(caller.id), params, import_job(table, binary, atomic))
    return accepted(job)


def _table_from_filename(filename: str | None) -> str:
    if not filename:
        raise bad_query("table", "give ?table=... (the uploaded file has no name)")
    stem = PurePath(filename.replace("\\", "/")).name
    return stem[:-4] if stem.lower().endswith(".csv") else stem


async def _spooled_body(request: Request) -> IO[bytes]:
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned)
    try:
        async for chunk in request.stream():
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


ExportQuery = Annotated[ListQuery, Depends(table_filter_query(frozenset({"async"})))]


async def export_filters(request: Request, query: ExportQuery) -> list[list[object]]:
    """The list endpoint's filters (`field=value`, `field__op=value`, created_after/before)."""
    for name in NOT_FILTERS:
        if name in request.query_params:
            raise bad_query(
                name, f"an export is every matching record in creation order: no {name}"
            )
    return query.where


@router.get(
    "/{table}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "CSV (RFC 4180, UTF-8), header line first, in creation order",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **job_started(),
        **error_responses(400, 404, 507),
    },
    summary="Export a table as CSV",
)
async def export_table(
    request: Request,
    table: TableName,
    store: StoreDep,
    _untagged: UntaggedRead,  # its 412 before the filters' 422 (QA): dependencies run in order
    where: Annotated[list[list[object]], Depends(export_filters)],
    settings: SettingsDep,
    jobs: JobsDep,
    caller: AdminUser,
    run_async: AsyncFlag = None,
) -> Response:
    """Stream the records matching the list filters as CSV, read in bounded chunks. With
    `?async=true` (or a table over JOB_ASYNC_ROWS rows): 202 and a job writing the same CSV.
    HEAD starts no job: it answers the headers of `?async=false`, reading no record."""
    headers = {
        "Cache-Control": DATA_CACHE_CONTROL,
        "Content-Disposition": f'attachment; filename="{table}.csv"',
    }
    if asked_with_head(request.scope):
        await store.call("count", {"table": table})  # 404 as the GET
        return head_answer(CSV, headers)
    if run_async is not False:
        rows = await store.call("count", {"table": table})  # 404 before any job
        if run_as_job(run_async, rows, settings.job_async_rows):
            params = {"table": table, "where": where}
            job = await job_or_now(jobs, run_async, "csv_export", str(caller.id), params)
            if job is not None:
                return job
    chunks = await open_export(store, table, where)
    return StreamingResponse(chunks, media_type=CSV, headers=headers)
