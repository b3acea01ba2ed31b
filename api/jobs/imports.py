"""CSV import as a job: the body is kept (spooled to disk past 1 MiB) and handed to the
import service when the job runs, in the worker that accepted it.

The import calls back after every ``CHUNK_ROWS`` rows read, valid or not: there the job
reports its progress (bytes read, at most once a heartbeat) and stops if cancelled. A job that
fails or is cancelled ends with its progress in ``rows`` imported: those rows stay.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from typing import IO, Any

from api.jobs.runner import JobContext, JobFunc
from api.services.csv_import import ImportReport, import_csv
from storeserver.errors import StoreError

SPOOL_BYTES = 1024 * 1024


def body_size(binary: IO[bytes]) -> int:
    """Bytes in a seekable body, leaving it at the start."""
    size = binary.seek(0, 2)
    binary.seek(0)
    return size


def bytes_read(binary: IO[bytes], size: int) -> int:
    """How far the import has read (all of it once the service closed the file)."""
    return size if binary.closed else min(binary.tell(), size)


def copy_upload(source: IO[bytes]) -> IO[bytes]:
    """A copy of an uploaded file that outlives the request (the form closes its own)."""
    copy = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned)
    source.seek(0)
    shutil.copyfileobj(source, copy)
    copy.seek(0)
    return copy


def import_job(table: str, binary: IO[bytes], atomic: bool) -> JobFunc:
    """The job: ``import_csv`` as the synchronous route runs it, with progress in bytes read
    and cancellation between its chunks (rows already imported stay, as after an error)."""
    size = body_size(binary)

    async def run(ctx: JobContext) -> dict[str, Any]:
        report = ImportReport(table, atomic)
        next_report = 0.0

        async def between_chunks() -> None:
            nonlocal next_report
            if time.monotonic() < next_report:
                await ctx.checkpoint()  # no store call: a cancel made in this worker
                return
            next_report = time.monotonic() + ctx.settings.job_heartbeat_seconds
            await ctx.checkpoint(bytes_read(binary, size), size, "bytes")

        try:
            result = await import_csv(
                ctx.store, table, binary, atomic, report=report, between_chunks=between_chunks
            )
            progress = {"done": bytes_read(binary, size), "total": size, "unit": "bytes"}
        except BaseException:
            # Failed, cancelled (JobCancelled) or stopped with the worker (CancelledError, a
            # redeploy): what was imported stays, and the progress must say how much.
            progress = {"done": report.imported, "total": None, "unit": "rows"}
            await _record(ctx, progress)
            raise
        finally:
            binary.close()
        await _record(ctx, progress)
        return result

    return run


async def _record(ctx: JobContext, progress: dict[str, Any]) -> None:
    """The final progress; the outcome (recorded next, with retries) matters more than this."""
    with contextlib.suppress(StoreError):
        await ctx.jobs.touch(ctx.job_id, {"progress": progress})
