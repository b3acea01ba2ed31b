"""The per-worker job runner, started in the lifespan.

A job runs in the worker that accepted it, as an asyncio task, at most
``JOB_MAX_CONCURRENT`` at a time per worker (the others wait ``queued``; a worker holds at most
``JOB_MAX_QUEUED`` in all, past which a new one is 503 ``JOBS_BUSY``). Job functions work in
chunks and call ``ctx.checkpoint()`` between them: that reports progress, yields the event
loop, and raises ``JobCancelled`` once a cancel was requested. One background task per worker
beats the heart of its own jobs and, every few beats, sweeps the whole ``_jobs`` table for
jobs of dead workers and for results past ``JOB_RETENTION_SECONDS``.

A job's state changes are retried while the store restarts (``RECORD_RETRY_SECONDS``): a job
the restart broke ends ``failed`` with ``STORE_UNAVAILABLE`` (``OUTCOME_UNKNOWN`` if a write of
its was in flight), not as a lost worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from fastapi.exceptions import RequestValidationError

from api.errors import ApiError, StreamCutOff, refusal
from api.jobs.model import (
    ACTIVE,
    ADMIN,
    FINISHED,
    JobCancelled,
    JobFailed,
    JobLost,
    now_stamp,
)
from api.jobs.state import SWEEP_LIMIT, Job, JobStore
from api.settings import Settings
from api.store import Store
from storeserver.errors import (
    NotFound,
    OutcomeUnknown,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    VersionMismatch,
)

log = structlog.get_logger("api.jobs")
JobFunc = Callable[["JobContext"], Awaitable[dict[str, Any] | None]]
KINDS: dict[str, JobFunc] = {}
# Kinds a cancel cannot stop once running (409). A write by filter (submitted as a closure by
# api.routes.filter_writes) is one atomic store command: cancelling its wait could leave a job
# "cancelled" whose write the store had applied. ``job_kind(stoppable=False)`` adds more.
UNSTOPPABLE: set[str] = {"update_where", "delete_where"}
JOBS_BUSY_RETRY_AFTER = 5  # seconds: jobs run for seconds at least
WORKER_STOPPED = {"code": "WORKER_STOPPED", "message": "the worker shut down during the job"}
RESULT_DIR_MODE = 0o700
RESULT_FILE_MODE = 0o600
# How long a job's claim or final state is retried while the store is away (a restart).
RECORD_RETRY_SECONDS = 60.0
SWEEP_ROUNDS = 50
"""Batches of expired jobs one sweep deletes at most: 5,000 jobs, a few store calls each."""
T = TypeVar("T")


def job_kind(name: str, *, stoppable: bool = True) -> Callable[[JobFunc], JobFunc]:
    """Register a job function under ``name`` (``@job_kind("export")``). ``stoppable=False``:
    once running, the job has no checkpoint to stop at (one store command does the work), so
    a cancel is refused (409) rather than accepted and then not honoured."""

    def register(func: JobFunc) -> JobFunc:
        KINDS[name] = func
        if not stoppable:
            UNSTOPPABLE.add(name)
        return func

    return register


def result_dir(settings: Settings) -> Path:
    """Where export results go (``Settings.job_results_path``: JOB_RESULT_DIR or its default),
    checked at start by deploy/start_gunicorn.py (``job_result_dir_error``)."""
    return settings.job_results_path


async def while_the_store_restarts(
    step: Callable[[], Awaitable[T]], seconds: float | None = None
) -> T:
    """``step()``, again with backoff while the store is unavailable, for at most ``seconds``
    (``RECORD_RETRY_SECONDS``). A transition is safe to repeat: it re-reads the state first
    (a timed-out patch that did land leaves the job no longer in ``allowed_from``)."""
    deadline = time.monotonic() + (RECORD_RETRY_SECONDS if seconds is None else seconds)
    delay = 0.05
    while True:
        try:
            return await step()
        except (StoreUnavailable, StoreTimeout):
            if time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


@dataclass
class JobContext:
    """What a job function gets: its parameters, the store, and checkpoints."""

    job_id: str
    params: dict[str, Any]
    store: Store
    settings: Settings
    jobs: JobStore
    results: Path
    cancel_requested: bool = False
    final_progress: dict[str, Any] | None = None
    """Set by a job that ends with other progress than it ran with: recorded with its final
    state, in the same write (retried while the store restarts)."""
    stopped_error: dict[str, Any] | None = None
    """Set by a job that has more to say than ``WORKER_STOPPED`` when its worker shuts down
    (an import: the rows written and where to resume)."""

    async def checkpoint(
        self,
        done: int | None = None,
        total: int | None = None,
        unit: str = "rows",
        confirmed: dict[str, Any] | None = None,
    ) -> None:
        """Between chunks: record progress (if given), let the loop run, stop if cancelled,
        or if the job was declared lost meanwhile (``JobLost``: it is no longer ours to run).
        ``confirmed``: what the job has surely done so far, kept in its record (not shown)
        for what it says if its worker is lost (``state.LOST_CHANGES``)."""
        if done is not None:
            changes: dict[str, Any] = {"progress": {"done": done, "total": total, "unit": unit}}
            if confirmed is not None:
                changes["confirmed"] = confirmed
            try:
                job = await self.jobs.touch(self.job_id, changes)
            except OutcomeUnknown as exc:
                # The write in doubt is the job's own progress, not its work: the job met an
                # outage, and says so (QA: an export read "OUTCOME_UNKNOWN ... after 'patch'
                # was sent", as if it had changed data). A landed patch is found on the next
                # write of the record, which then reads it again.
                message = "the connection to the store was lost while the job recorded its progress"
                raise StoreUnavailable(message) from exc
            if job.get("state") in FINISHED:
                raise JobLost()
            self.cancel_requested = self.cancel_requested or bool(job.get("cancel_requested"))
        else:
            await asyncio.sleep(0)
        if self.cancel_requested:
            raise JobCancelled()

    def record_progress(self, done: int, total: int | None, unit: str = "rows") -> None:
        """Progress of work done in one step (a write by filter), written with the job's end
        (``_finish``, retried while the store restarts), not apart: a write of its own that
        met a store restart failed a job whose work was done, "not run" (QA)."""
        self.final_progress = {"done": done, "total": total, "unit": unit}

    def result_path(self, suffix: str) -> Path:
        # Results are exports of users and orders: the workers' user alone reads them.
        self.results.mkdir(mode=RESULT_DIR_MODE, parents=True, exist_ok=True)
        return self.results / f"{self.job_id}{suffix}"


# What ``result_path`` names: a job's id (a store-made UUID) and its format, ``.part`` while it
# is written. The sweeps delete nothing else: JOB_RESULT_DIR may hold other files (QA: pointed
# at the store's data directory, the size sweep deleted its snapshot and log).
RESULT_NAME = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(?:csv|ndjson)(?:\.part)?"
)


def _result_files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """The job result files of ``folder`` with their ``stat`` (none when no job wrote one
    yet): plain files named as ``result_path`` names them."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if RESULT_NAME.fullmatch(entry.name) is None:
            continue
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile by another worker
            if entry.is_file(follow_symlinks=False):
                found.append((Path(entry.path), entry.stat()))
    return found


def files_older_than(folder: Path, cutoff: float) -> list[Path]:
    """The result files of ``folder`` last written before ``cutoff`` (epoch seconds)."""
    return [path for path, stat in _result_files(folder) if stat.st_mtime < cutoff]


def results_oldest_first(folder: Path) -> list[tuple[Path, int]]:
    """Finished result files of ``folder`` (not ``.part``) with their sizes, oldest first."""
    found = sorted(
        (stat.st_mtime, path, stat.st_size)
        for path, stat in _result_files(folder)
        if not path.name.endswith(".part")
    )
    return [(path, size) for _, path, size in found]


@dataclass
class JobRunner:
    store: Store
    settings: Settings
    jobs: JobStore = field(init=False)
    worker: str = field(init=False)
    _slots: asyncio.Semaphore = field(init=False)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _submitting: int = 0  # jobs whose record is being written: they hold places too
    _contexts: dict[str, JobContext] = field(default_factory=dict)
    _beat: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.jobs = JobStore(self.store, self.settings.job_stale_seconds)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._slots = asyncio.Semaphore(self.settings.job_max_concurrent)

    async def start(self) -> None:
        # ``_jobs`` is declared with the other tables on every store connection (ensure_schema).
        self._beat = asyncio.create_task(self._heartbeats(), name="job-heartbeats")

    async def submit(
        self,
        kind: str,
        owner_id: str,
        params: dict[str, Any],
        func: JobFunc | None = None,
        owner_role: str = ADMIN,
    ) -> Job:
        """Record a queued job and start it here; returns the stored record.

        ``func`` (default: the function registered for ``kind``) may be a closure over what
        the accepting request already parsed: the job runs in this same worker. ``params``
        (stored, shown to nobody) must be plain data. ``owner_role``: the role the job runs
        with; an admin's job is readable by admins only (``model.readable_by``), which is also
        the default, so that a job started without saying is never shown to a user.
        """
        func = func or KINDS.get(kind)
        if func is None:
            raise ValueError(f"unknown job kind {kind!r}")
        held = len(self._tasks) + self._submitting
        if held >= self.settings.job_max_queued:
            # QA: each queued import holds its body (up to 1 MiB in memory): 132 of them took
            # a worker from 85 to 213 MiB, and nothing bounded their number.
            raise ApiError(
                503,
                "JOBS_BUSY",
                f"this worker holds {held} jobs, queued or running (JOB_MAX_QUEUED);"
                " retry once some have finished",
                headers={"Retry-After": str(JOBS_BUSY_RETRY_AFTER)},
            )
        # The place is taken before the record's write: requests arriving together all got
        # past the check while theirs were under way (QA: 10 jobs with JOB_MAX_QUEUED=1).
        self._submitting += 1
        try:
            job = await self.jobs.create(kind, owner_id, params, self.worker, owner_role)
        finally:
            self._submitting -= 1
        task = asyncio.create_task(self._run(job["id"], func, params), name=f"job-{job['id']}")
        self._tasks[job["id"]] = task
        return job

    async def _run(self, job_id: str, func: JobFunc, params: dict[str, Any]) -> None:
        try:
            async with self._slots:
                started = now_stamp()
                claimed = await while_the_store_restarts(
                    lambda: self.jobs.transition(
                        job_id, ("queued",), {"state": "running", "started_at": started}
                    )
                )
                if claimed is None:  # cancelled (or lost) while it waited
                    return
                ctx = JobContext(
                    job_id, params, self.store, self.settings, self.jobs, result_dir(self.settings)
                )
                self._contexts[job_id] = ctx
                await self._execute(ctx, func)
        except asyncio.CancelledError:
            ctx_left = self._contexts.get(job_id)
            error = (ctx_left.stopped_error if ctx_left else None) or WORKER_STOPPED
            with contextlib.suppress(Exception):
                stopped = self._finish(job_id, "failed", error=error, from_=ACTIVE)
                await asyncio.wait_for(stopped, 2)
            raise
        except Exception:
            # The store stayed away past the retries: the sweep settles the record. Logged
            # here: a task's exception is only reported once collected, and none collects it.
            log.exception("job_state_not_recorded", job_id=job_id)
        finally:
            self._tasks.pop(job_id, None)
            self._contexts.pop(job_id, None)
            self.jobs.forget(job_id)

    async def _execute(self, ctx: JobContext, func: JobFunc) -> None:
        try:
            result = await func(ctx)
        except JobLost:
            # Another worker declared the job lost while this one stalled (a stopped process,
            # a stuck loop): its record is final, and says what was done; leave it.
            log.warning("job_lost_stopped", job_id=ctx.job_id)
        except JobCancelled:
            await self._finish(ctx.job_id, "cancelled")
        except JobFailed as exc:
            await self._finish(
                ctx.job_id, "failed", error={"code": exc.code, "message": exc.message}
            )
        except StoreError as exc:
            # An outage keeps the store's own code (STORE_UNAVAILABLE, OUTCOME_UNKNOWN...), and
            # so does a version check of the job's own (its record kept changing: not the
            # client's precondition); a refusal is what the synchronous route would answer.
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            answer = None if isinstance(exc, VersionMismatch) else refusal(exc)
            if answer is not None:
                _, code, message, details = answer
                error = {"code": code, "message": message, "details": details}
            await self._finish(ctx.job_id, "failed", error=error)
        except StreamCutOff as exc:  # logged where raised: a store restart, or a stall
            error = {"code": "EXPORT_CUT_OFF", "message": str(exc)}
            await self._finish(ctx.job_id, "failed", error=error)
        except ApiError as exc:  # what the synchronous route would have answered
            error = {"code": exc.code, "message": exc.message, "details": exc.details}
            await self._finish(ctx.job_id, "failed", error=error)
        except RequestValidationError as exc:
            details = [
                {"loc": list(e.get("loc", ())), "message": e.get("msg")} for e in exc.errors()
            ]
            error = {"code": "VALIDATION_ERROR", "message": "validation failed", "details": details}
            await self._finish(ctx.job_id, "failed", error=error)
        except Exception:
            log.exception("job_failed_unexpectedly", job_id=ctx.job_id)
            error = {"code": "INTERNAL_ERROR", "message": "the job failed unexpectedly"}
            await self._finish(ctx.job_id, "failed", error=error)
        else:
            await self._finish(ctx.job_id, "succeeded", result=result)

    async def _finish(
        self,
        job_id: str,
        state: str,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        from_: tuple[str, ...] = ("running",),
    ) -> None:
        changes = {"state": state, "finished_at": now_stamp(), "result": result, "error": error}
        ctx = self._contexts.get(job_id)
        if ctx is not None and ctx.final_progress is not None:
            changes["progress"] = ctx.final_progress
        await while_the_store_restarts(lambda: self.jobs.transition(job_id, from_, changes))

    async def _heartbeats(self) -> None:
        beat = self.settings.job_heartbeat_seconds
        sweep_every = max(1, round(self.settings.job_stale_seconds / 2 / beat))
        count = 0
        failing = False
        while True:
            await asyncio.sleep(beat)
            count += 1
            try:
                answered = await self._beat_once()
                if count % sweep_every == 0:
                    await self._sweep()
                    answered = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: try again next beat
                if not failing:  # once per outage (jobs QA: a line every beat, 46 in 90 s)
                    log.warning("job_heartbeat_failed", error=repr(exc))
                failing = True
            else:
                # Only a beat the store answered ends an outage: one with no job to touch
                # asked it nothing (QA: "resumed" 2 s after each failure, the store still hung).
                if failing and answered:
                    log.info("job_heartbeats_resumed")
                    failing = False

    def cancel_here(self, job_id: str) -> None:
        """The cancel of a job this worker runs takes effect at its next checkpoint; one
        running in another worker learns of it from the store at its next beat."""
        ctx = self._contexts.get(job_id)
        if ctx is not None:
            ctx.cancel_requested = True

    async def _beat_once(self) -> bool:
        """Touch each job this worker runs; whether the store answered any of it."""
        answered = False
        for job_id, task in list(self._tasks.items()):
            if self.jobs.writing(job_id):
                # Its batch in flight writes the heartbeat: waiting for it here would hold every
                # other job's heartbeat behind it (up to a store timeout each).
                continue
            try:
                job = await self.jobs.touch(job_id, {})
            except NotFound:  # the store lost the record (restarted empty): stop the job
                task.cancel()
                answered = True
                continue
            answered = True
            ctx = self._contexts.get(job_id)
            if ctx is not None and job.get("cancel_requested"):
                ctx.cancel_requested = True
            if job.get("state") not in ("queued", "running"):
                if (job.get("error") or {}).get("code") == "WORKER_LOST":
                    # This worker was stalled and is back: said as its next batch would.
                    log.warning("job_lost_stopped", job_id=job_id)
                task.cancel()  # another worker declared it lost: do not finish it twice
        return answered

    async def _sweep(self) -> None:
        failed = await self.jobs.sweep_stale()
        if failed:
            log.warning("lost_worker_jobs_failed", jobs=failed)
        await self._sweep_expired()
        await self._sweep_files()
        await self._sweep_size()

    async def _sweep_expired(self) -> None:
        """Delete the finished jobs past their retention, with their results: ``SWEEP_LIMIT``
        at a time until none is left, at most ``SWEEP_ROUNDS`` times (soak QA: one batch per
        sweep, every few seconds, fell behind 25 short jobs a second and never caught up)."""
        for _ in range(SWEEP_ROUNDS):
            expired = await self.jobs.expired(self.settings.job_retention_seconds)
            for job in expired:
                path = (job.get("result") or {}).get("file")
                if path:
                    with contextlib.suppress(OSError):
                        (result_dir(self.settings) / Path(path).name).unlink()
                await self.jobs.delete(job["id"])
            if len(expired) < SWEEP_LIMIT:
                return

    async def _sweep_size(self) -> None:
        """Keep the results within JOB_RESULT_MAX_BYTES: past it, the oldest finished jobs go,
        result and record, before their retention ends (exports can fill a disk in hours)."""
        cap = self.settings.job_result_max_bytes
        files = await asyncio.to_thread(results_oldest_first, result_dir(self.settings))
        total = sum(size for _, size in files)
        for path, size in files:
            if total <= cap:
                break
            job_id = path.name.split(".", 1)[0]
            job = await self.jobs.find(job_id)
            if job is not None and job.get("state") in ACTIVE:
                continue
            with contextlib.suppress(OSError):  # another worker's sweep may be first
                path.unlink()
            total -= size
            if job is not None:
                await self.jobs.delete(job_id)
            log.info("job_deleted_over_result_cap", job_id=job_id)

    async def _sweep_files(self) -> None:
        """Delete the files past the retention that no live job owns: the ``.part`` of a job
        whose worker was killed, a result whose record vanished (a restore, a store restarted
        empty). The workers share the directory: a ``.part`` of a job still active in the
        store is being written (or about to be), and a result of an existing job goes with
        its record (above)."""
        cutoff = time.time() - self.settings.job_retention_seconds
        for path in await asyncio.to_thread(files_older_than, result_dir(self.settings), cutoff):
            job = await self.jobs.find(path.name.split(".", 1)[0])
            if job is not None and (job.get("state") in ACTIVE or path.suffix != ".part"):
                continue
            with contextlib.suppress(OSError):  # another worker's sweep may be first
                path.unlink()

    async def stop(self) -> None:
        """Shutdown: stop beating, and mark this worker's unfinished jobs failed."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
