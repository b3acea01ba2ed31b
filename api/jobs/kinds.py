"""The jobs the API runs: a snapshot, and full table exports (NDJSON, CSV) to a result file.

Each is a ``JobFunc`` registered with ``@job_kind``; the routes that start them decide sync or
async (``?async=true``, or past ``JOB_ASYNC_ROWS``). An export writes ``<job id>.<format>.part``
in the result directory chunk by chunk (one store ``scan`` per chunk, so the store's loop is
never held for long) and renames it when complete; ``GET /jobs/{id}/result`` serves it from any
worker of the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from api.jobs.model import JobFailed
from api.jobs.runner import RESULT_FILE_MODE, JobContext, job_kind
from api.responses import dumps
from api.services.csv_export import open_export
from api.services.dumps import open_dump

RESULT_URL = "/api/v1/jobs/{id}/result"
log = structlog.get_logger("api.jobs")
MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


@job_kind("snapshot", stoppable=False)
async def run_snapshot(ctx: JobContext) -> dict[str, Any]:
    """The same store command as the synchronous route; its answer is the result. A forked
    child writes the snapshot, and nothing stops it halfway: a running one cannot be
    cancelled."""
    await ctx.checkpoint()
    info: dict[str, Any] = await ctx.store.call(
        "snapshot", {}, timeout=ctx.settings.snapshot_timeout
    )
    return info


@job_kind("export")
async def run_export(ctx: JobContext) -> dict[str, Any]:
    """Every record of ``params.table`` as NDJSON (the bytes ``GET /dump/{table}`` streams)."""
    table = ctx.params["table"]
    total = await ctx.store.call("count", {"table": table})
    chunks = await open_dump(ctx.store, table, ctx.settings.dump_chunk_size)
    rows = 0
    with result_file(ctx, ".ndjson") as (out, final):
        async for records in chunks:
            if records:
                await out.write(b"".join(dumps(record) + b"\n" for record in records))
            rows += len(records)
            await ctx.checkpoint(rows, total)
    return export_result(ctx.job_id, final.name, "ndjson", rows, out.written)


@job_kind("csv_export")
async def run_csv_export(ctx: JobContext) -> dict[str, Any]:
    """The CSV ``GET /batch/{table}/export`` streams (same filters), to a result file.
    Progress is in bytes written (the filter decides how many rows there are)."""
    table = ctx.params["table"]
    where = ctx.params.get("where") or []
    chunks = await open_export(ctx.store, table, where, ctx.settings.dump_chunk_size)
    with result_file(ctx, ".csv") as (out, final):
        async for data in chunks:
            await out.write(data)
            await ctx.checkpoint(out.written, None, "bytes")
    # Rows are not counted: a quoted cell may hold line breaks.
    return export_result(ctx.job_id, final.name, "csv", None, out.written)


class ResultWriter:
    """A result file written off the loop, refused past ``JOB_RESULT_MAX_BYTES``: a result the
    cap cannot hold would be the sweep's first victim, a job reported ``succeeded`` whose
    record and file were gone a second later (QA: polling saw only a 404)."""

    def __init__(self, out: BinaryIO, cap: int) -> None:
        self.out = out
        self.cap = cap
        self.written = 0

    async def write(self, data: bytes) -> None:
        if self.written + len(data) > self.cap:
            raise JobFailed(
                "RESULT_TOO_LARGE",
                f"the result passes JOB_RESULT_MAX_BYTES ({self.cap} bytes), the most the"
                " service keeps of all results together: export less (a filter), stream it"
                " (GET /dump/{table}, GET /batch/{table}/export) or raise the limit",
            )
        with disk_errors():
            await asyncio.to_thread(self.out.write, data)
        self.written += len(data)


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    """A result file the disk refuses (full, read-only, gone) fails the job with its own code,
    not INTERNAL_ERROR (QA: a full JOB_RESULT_DIR read as a bug in the code)."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        log.warning("job_result_write_failed", errno=exc.errno, error=reason)
        raise JobFailed(
            "RESULT_WRITE_FAILED",
            f"could not write the result file ({reason}): JOB_RESULT_DIR has no room or cannot"
            " be written; stream the table instead (GET /dump/{table}, GET"
            " /batch/{table}/export) or ask the operator",
        ) from exc


@contextlib.contextmanager
def result_file(ctx: JobContext, suffix: str) -> Iterator[tuple[ResultWriter, Path]]:
    """The job's result file open for writing, and its final path: written as ``.part`` and
    renamed when the block ends; removed if the block fails or the job is cancelled. Created
    owner-only (the rename keeps the mode): it holds user and order data."""
    final = ctx.result_path(suffix)
    partial = final.with_name(final.name + ".part")
    try:
        with disk_errors():
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, RESULT_FILE_MODE)
            out = os.fdopen(fd, "wb")
        try:
            yield ResultWriter(out, ctx.settings.job_result_max_bytes), final
            with disk_errors():
                out.close()  # writes the buffer's last bytes: a full disk shows here too
        finally:
            # A job that failed or was cancelled: its error stands, not the buffer's flush.
            with contextlib.suppress(OSError):
                out.close()
        with disk_errors():
            partial.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def export_result(job_id: str, file: str, fmt: str, rows: int | None, size: int) -> dict[str, Any]:
    """An export job's result; ``rows`` only when counted (NDJSON): the job record is written
    as a merge patch, where a null would not be kept, only dropped (QA: a CSV export's result
    came without the key its null was meant to fill)."""
    result: dict[str, Any] = {
        "url": RESULT_URL.format(id=job_id),
        "file": file,
        "format": fmt,
        "media_type": MEDIA_TYPES[fmt],
        "bytes": size,
    }
    if rows is not None:
        result["rows"] = rows
    return result
