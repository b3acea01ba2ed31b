"""CSV import as a job: the body is kept (spooled to disk past 1 MiB) and handed to the
import service when the job runs, in the worker that accepted it.

The import calls back after every ``CHUNK_ROWS`` lines read (rows valid or not, blank lines):
there the job
reports its progress (bytes read, at most once a heartbeat) and stops if cancelled. A job that
fails or is cancelled ends with its progress in ``rows`` imported: those rows stay. So do those
of a job lost with its worker, whose error says how many at least instead of "start it again".

Every batch of rows goes through ``JobBoundStore``: it carries a patch of the job's record
(the rows confirmed imported once it lands, and a heartbeat) checked against the record's
version (``JobStore.write_owned``). The store applies both or neither, so the record counts
every chunk written, and a worker that stalled (a stopped process) and was declared lost
meanwhile writes no chunk after that: its next batch fails the check and the job stops.

For the same reason, an import the store's restart stopped says what the record says once the
store is back (``settle_after_outage``), not what the worker saw acknowledged: with
``STORE_FSYNC=everysec`` (or ``no``) a crash loses the last writes the store acknowledged, and
"resume from row N" would then skip the rows it lost.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from typing import IO, Any

from api.errors import ApiError
from api.jobs import runner
from api.jobs.model import ACTIVE, JobLost
from api.jobs.runner import JobContext, JobFunc, while_the_store_restarts
from api.jobs.state import LOST_CHANGES, Job
from api.services.csv_import import ATOMIC_MAX_ROWS, import_csv
from api.services.csv_import_errors import interrupted
from api.services.csv_import_report import ImportReport
from storeserver.errors import StoreError, StoreUnavailable

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


class JobBoundStore:
    """The store as an import job writes through it: each ``batch`` (a chunk of rows, or an
    atomic import's one batch) also records what the import will have confirmed once it
    lands, and is applied only while the job is still this worker's (``JobLost`` if not)."""

    def __init__(self, ctx: JobContext, report: ImportReport) -> None:
        self.ctx, self.report = ctx, report
        # The import sizes its batches by the frame the store announced (``BatchLimits``).
        self.server_info = getattr(ctx.store, "server_info", None)
        # The store going away under a batch: what landed is then read from the job's record
        # (``settle_after_outage``). Not a timeout: the batch may still land after the read.
        self.outage: StoreUnavailable | None = None

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        try:
            return await self._call(command, args, timeout)
        except StoreUnavailable as exc:
            # Whatever the command: an import of rows with ids reads before each batch
            # (``get_many``), and the outage may meet that read rather than the batch.
            self.outage = exc
            raise

    async def _call(self, command: str, args: dict[str, Any] | None, timeout: float | None) -> Any:
        if command != "batch" or args is None:
            return await self.ctx.store.call(command, args, timeout=timeout)
        changes = {"confirmed": self.confirmed_after(len(args["ops"]))}
        if len(args["ops"]) >= ATOMIC_MAX_ROWS:
            # No room for the record's op within the store's batch limit (an atomic import of
            # the most rows it takes).
            return await self._unbundled(args, changes, timeout)
        try:
            reply, job = await self.ctx.jobs.write_owned(self.ctx.job_id, args, changes, timeout)
        except StoreError as exc:
            if exc.details.get("scope") != "batch" or exc.details.get("index") != len(args["ops"]):
                raise
            # The rows fit one batch's value budget, but not with the record's op after them
            # (QA: a row of ~600,000 values imported alone synchronously failed the job, and
            # with it every row after it). Refused whole, so nothing was written: again alone.
            return await self._unbundled(args, changes, timeout)
        self.ctx.cancel_requested = self.ctx.cancel_requested or bool(job.get("cancel_requested"))
        return reply

    async def _unbundled(
        self, args: dict[str, Any], changes: dict[str, Any], timeout: float | None
    ) -> Any:
        """The batch without the record's op: the ownership is checked just before, and the
        counts written just after; a worker that stalls in between may still write it."""
        job = await self.ctx.jobs.touch(self.ctx.job_id, {})
        if job.get("state") not in ACTIVE:
            raise JobLost()
        reply = await self.ctx.store.call("batch", args, timeout=timeout)
        job = await self.ctx.jobs.touch(self.ctx.job_id, changes)
        self.ctx.cancel_requested = self.ctx.cancel_requested or bool(job.get("cancel_requested"))
        return reply

    def confirmed_after(self, rows: int) -> dict[str, Any]:
        """The report as it will be once this batch of ``rows`` rows lands: the chunk writer
        names the batch's rows in ``unconfirmed`` while it is sent (an atomic import has no
        row order to report: its lost job says all or none)."""
        in_doubt = self.report.unconfirmed
        return {
            "imported": self.report.imported + rows,
            "failed": self.report.failed,
            "last_row_written": in_doubt[1] if in_doubt else self.report.last_row_written,
        }


def import_job(table: str, binary: IO[bytes], atomic: bool) -> JobFunc:
    """The job: ``import_csv`` as the synchronous route runs it, with progress in bytes read
    and cancellation between its chunks (rows already imported stay, as after an error)."""
    size = body_size(binary)

    async def run(ctx: JobContext) -> dict[str, Any]:
        report = ImportReport(table, atomic)
        store = JobBoundStore(ctx, report)
        next_report = 0.0

        async def between_chunks() -> None:
            nonlocal next_report
            if time.monotonic() < next_report:
                await ctx.checkpoint()  # no store call: a cancel made in this worker
                return
            next_report = time.monotonic() + ctx.settings.job_heartbeat_seconds
            # Not ``confirmed``: each batch records it as it lands (a count taken here could
            # be written after a later batch's, and say less).
            try:
                await ctx.checkpoint(bytes_read(binary, size), size, "bytes")
            except StoreUnavailable as exc:
                store.outage = exc  # as a batch meeting it: what landed is read back
                raise

        try:
            result = await import_csv(
                store, table, binary, atomic, report=report, between_chunks=between_chunks
            )
            ctx.final_progress = {"done": bytes_read(binary, size), "total": size, "unit": "bytes"}
        except ApiError as exc:
            outage = store.outage
            if outage is None or atomic:  # an atomic import's one batch has no row to resume at
                ctx.final_progress = {"done": report.imported, "total": None, "unit": "rows"}
                raise
            # The store stayed away: the counts are the acknowledged ones, and it says so.
            settled = await settle_after_outage(ctx, report, outage) or interrupted(
                outage, report, UNSETTLED
            )
            ctx.final_progress = {"done": report.imported, "total": None, "unit": "rows"}
            raise settled from exc
        except BaseException as exc:
            # Failed, cancelled (JobCancelled) or stopped with the worker (CancelledError, a
            # redeploy): what was imported stays, and the progress must say how much.
            ctx.final_progress = {"done": report.imported, "total": None, "unit": "rows"}
            if isinstance(exc, asyncio.CancelledError):
                # QA: a redeploy mid-import said only "the worker shut down during the job",
                # where a lost worker or an outage says where to resume (and not to import
                # the file again): the most common stop gave the least to go on.
                counted = {
                    "params": {"table": table, "atomic": atomic},
                    "confirmed": {
                        "imported": report.imported,
                        "failed": report.failed,
                        "last_row_written": report.last_row_written,
                    },
                }
                ctx.stopped_error = lost_import(counted, SHUT_DOWN, "WORKER_STOPPED")["error"]
            raise
        finally:
            binary.close()
        return result

    return run


UNSETTLED = (
    "the store did not come back in time to say which rows it kept: with STORE_FSYNC everysec"
    " or no, a crash may have lost some of the rows counted here; check the last ones before"
    " resuming"
)


async def settle_after_outage(
    ctx: JobContext, report: ImportReport, outage: StoreUnavailable
) -> ApiError | None:
    """The answer of a default import the store's outage stopped, from the rows its record
    confirmed once the store is back (each batch lands with its record: exact, in-flight
    batch included); ``None`` while the store stays away. ``report`` is set to those rows."""
    try:
        # Longer than the runner's own wait to record the end (``RECORD_RETRY_SECONDS``):
        # given up, the job would be recorded with the worker's counts.
        job = await while_the_store_restarts(
            lambda: ctx.jobs.find(ctx.job_id), 2 * runner.RECORD_RETRY_SECONDS
        )
    except StoreError:
        return None
    if job is None or job.get("state") not in ACTIVE:
        return None  # the record is gone, or another worker settled it (``lost_import``)
    confirmed = job.get("confirmed") or {}
    imported = int(confirmed.get("imported", 0))
    lost = report.imported - imported
    report.imported = imported
    report.failed = int(confirmed.get("failed", report.failed))
    report.last_row_written = int(confirmed.get("last_row_written", 0))
    report.unconfirmed = None
    note = None
    if lost > 0:
        note = (
            f"the store came back without the last {lost} rows it had acknowledged (with"
            " STORE_FSYNC everysec or no, a crash loses its last second or so of writes)"
        )
    return interrupted(outage, report, note)


LOST = "the worker running this import stopped (crash, kill or stuck loop)"
SHUT_DOWN = "the worker running this import shut down (a restart or a redeploy)"


def lost_import(job: Job, stopped: str = LOST, code: str = "WORKER_LOST") -> dict[str, Any]:
    """What an import lost with its worker says: the rows its record confirmed (every batch
    that landed records them: ``JobBoundStore``) were written and stay, and none is written
    once it is declared lost; importing the file again would import them twice. Also what
    one stopped by its worker's shutdown says (``stopped`` and ``code`` then tell it apart),
    from the rows it counted itself."""
    table = (job.get("params") or {}).get("table", "the table")
    if (job.get("params") or {}).get("atomic"):
        message = (
            f"{stopped}; an atomic import writes all its rows or none: check whether they are in"
            f" {table} before importing the file again"
        )
        return {"error": {"code": code, "message": message}}
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
    error = {"code": code, "message": message, "details": [summary]}
    return {"error": error, "progress": {"done": imported, "total": None, "unit": "rows"}}


LOST_CHANGES[KIND] = lost_import
