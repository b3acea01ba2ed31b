"""CSV import as a job: the body is kept (spooled to disk past 1 MiB) and handed to the
import service when the job runs, in the worker that accepted it."""

from __future__ import annotations

import shutil
import tempfile
from typing import IO, Any

from api.jobs.runner import JobContext, JobFunc, run_watched
from api.services.csv_import import import_csv

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
        try:
            work = import_csv(ctx.store, table, binary, atomic)
            return await run_watched(ctx, work, lambda: (bytes_read(binary, size), size, "bytes"))
        finally:
            binary.close()

    return run
