"""CSV import as a job: the body is kept (spooled to disk past 1 MiB) and handed to the
import service when the job runs, in the worker that accepted it.

The import calls back after every ``CHUNK_ROWS`` rows read, valid or not: there the job
reports its progress (bytes read, at most once a heartbeat, with the rows confirmed imported
kept aside) and stops if cancelled. A job that fails or is cancelled ends with its progress in
``rows`` imported: those rows stay. So do those of a job lost with its worker, whose error
says how many at least (the last checkpoint's count) instead of "start it again".
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import IO, Any

from api.jobs.runner import JobContext, JobFunc
from api.jobs.state import LOST_CHANGES, Job
from api.services.csv_import import import_csv
from api.services.csv_import_report import ImportReport

KIND = "import"
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
            confirmed = {
                "imported": report.imported,
                "failed": report.failed,
                "last_row_written": report.last_row_written,
            }
            await ctx.checkpoint(bytes_read(binary, size), size, "bytes", confirmed)

        try:
            result = await import_csv(
                ctx.store, table, binary, atomic, report=report, between_chunks=between_chunks
            )
            ctx.final_progress = {"done": bytes_read(binary, size), "total": size, "unit": "bytes"}
        except BaseException:
            # Failed, cancelled (JobCancelled) or stopped with the worker (CancelledError, a
            # redeploy): what was imported stays, and the progress must say how much.
            ctx.final_progress = {"done": report.imported, "total": None, "unit": "rows"}
            raise
        finally:
            binary.close()
        return result

    return run


def lost_import(job: Job) -> dict[str, Any]:
    """What an import lost with its worker says: rows up to its last checkpoint were written
    and stay, later ones may have been; importing the file again would import them twice."""
    table = (job.get("params") or {}).get("table", "the table")
    stopped = "the worker running this import stopped (crash, kill or stuck loop)"
    if (job.get("params") or {}).get("atomic"):
        message = (
            f"{stopped}; an atomic import writes all its rows or none: check whether they are in"
            f" {table} before importing the file again"
        )
        return {"error": {"code": "WORKER_LOST", "message": message}}
    confirmed = job.get("confirmed") or {}
    imported = int(confirmed.get("imported", 0))
    last = int(confirmed.get("last_row_written", 0))
    if last:
        message = (
            f"{stopped}: at least {imported} rows were imported (every row up to row {last} was"
            f" imported or failed), and rows after row {last} may have been too. Do not import"
            f" the whole file again: rows without an id would be imported twice. Check {table}"
            f" for the rows after row {last}, then import only those missing"
        )
    else:
        message = (
            f"{stopped}: rows may have been imported (none was confirmed yet). Check {table}"
            " before importing the file again: rows without an id would be imported twice"
        )
    summary = {
        "field": None,
        "message": f"at least {imported} rows imported, up to row {last}",
        "imported": imported,
        "failed": int(confirmed.get("failed", 0)),
        "last_row_written": last,
    }
    error = {"code": "WORKER_LOST", "message": message, "details": [summary]}
    return {"error": error, "progress": {"done": imported, "total": None, "unit": "rows"}}


LOST_CHANGES[KIND] = lost_import
