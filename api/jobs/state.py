"""Job records in the store: create, read (marking a dead worker's job failed), transitions
guarded by ``expected_version``, heartbeats, the sweep of stale jobs and old results.

A worker writes its own job's record (heartbeats, progress, and the record patch that rides in
each batch of an import: ``write_owned``) only while the record is still active: every such
write carries the ``expected_version`` of the record as this worker last wrote or read it. Once
another worker declared the job lost (a transition, also versioned), the next write fails its
version check, the record is read again, and nothing is written on a finished record. These
writes are serialized per job in the worker (``_locks``), so they never race each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from api.jobs.model import (
    ACTIVE,
    ADMIN,
    FINISHED,
    TABLE,
    JobLost,
    is_stale,
    new_job,
    now_stamp,
)
from api.store import BookkeepingStore, Store
from storeserver.errors import NotFound, StoreError, VersionMismatch

Job = dict[str, Any]
WORKER_LOST = {
    "code": "WORKER_LOST",
    "message": "the worker running this job stopped (crash, kill or stuck loop); start it again",
}
LOST_CHANGES: dict[str, Callable[[Job], dict[str, Any]]] = {}
"""Per kind, the ``error`` (and ``progress``) of a job lost with its worker, from its record,
where "start it again" would do harm: an import's rows stay written (``api.jobs.imports``)."""
# A transition re-reads and retries when a heartbeat bumped the version in between.
TRANSITION_ATTEMPTS = 5
SWEEP_LIMIT = 100
# A listing reads again after failing the stale jobs it found; a page still holding some after
# this many reads (more jobs went stale meanwhile) shows them failed, its total as read.
LIST_ATTEMPTS = 3


class _RecordMoved(Exception):
    """An owned write's version check failed: someone else wrote the job's record."""


class JobStore:
    """The ``_jobs`` table, as the runner and the routes use it."""

    def __init__(self, store: Store, stale_seconds: float) -> None:
        # A job's record is kept up to date however its caller's session fares; the data a
        # job writes with it (``write_owned``) is the caller's, refused once that has ended.
        self.store = BookkeepingStore(store)
        self._callers_store = store
        self.stale_seconds = stale_seconds
        # Per job this worker runs: the record's version as last written or read here.
        self._versions: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def create(
        self,
        kind: str,
        owner_id: str,
        params: dict[str, Any],
        worker: str,
        owner_role: str = ADMIN,
    ) -> Job:
        record = new_job(kind, owner_id, params, worker, owner_role)
        job: Job = await self.store.call("insert", {"table": TABLE, "record": record})
        self._versions[job["id"]] = job["version"]
        return job

    def _is_stale(self, job: Job) -> bool:
        """An active job whose worker stopped beating: no heartbeat for ``stale_seconds``,
        while the store has been up that long. Right after a store restart every job's last
        heartbeat is as old as the outage, and its worker, alive, had no store to write to:
        it gets ``stale_seconds`` to beat again, or to record the ``STORE_UNAVAILABLE`` its
        job met (``runner``). Without the store's uptime (an older store), the heartbeat alone."""
        if not is_stale(job, self.stale_seconds):
            return False
        uptime = getattr(self.store, "store_uptime", None)
        up = uptime() if callable(uptime) else None
        return up is None or up >= self.stale_seconds

    def writing(self, job_id: str) -> bool:
        """Whether an owned write of this job is in flight (it carries a heartbeat)."""
        lock = self._locks.get(job_id)
        return lock is not None and lock.locked()

    def forget(self, job_id: str) -> None:
        """The job ended in this worker: no more owned writes."""
        self._versions.pop(job_id, None)
        self._locks.pop(job_id, None)

    async def get(self, job_id: str) -> Job:
        """The job (``NotFound`` if absent); a stale active job is marked failed first."""
        job: Job = await self.store.call("get", {"table": TABLE, "id": job_id})
        if self._is_stale(job):
            job = await self.fail_if_stale(job)
        return job

    async def find(self, job_id: str) -> Job | None:
        """The record as stored (no staleness check), or ``None`` if there is none."""
        try:
            job: Job = await self.store.call("get", {"table": TABLE, "id": job_id})
        except NotFound:
            return None
        return job

    async def fail_if_stale(self, job: Job) -> Job:
        changes = {"state": "failed", "error": WORKER_LOST, "finished_at": now_stamp()}
        lost = LOST_CHANGES.get(str(job.get("kind")))
        if lost is not None:
            changes.update(lost(job))
        updated = await self.transition(job["id"], ACTIVE, changes, only_if_stale=True)
        return updated or await self.store.call("get", {"table": TABLE, "id": job["id"]})

    async def transition(
        self,
        job_id: str,
        allowed_from: tuple[str, ...],
        changes: dict[str, Any],
        *,
        only_if_stale: bool = False,
    ) -> Job | None:
        """Apply ``changes`` if the job is in one of ``allowed_from`` (and stale, if asked),
        atomically against concurrent writers; ``None`` when the job was not in such a state.

        Without ``only_if_stale``, one ``update_where`` on the id and the states: the store
        checks the state as it writes, whatever the record's version. A read and a versioned
        patch lost to a running import, which writes its record with every batch (tens a
        second): a cancel request failed five times in a row, and was refused (409)."""
        if not only_if_stale:
            return await self._transition_by_state(job_id, allowed_from, changes)
        for _ in range(TRANSITION_ATTEMPTS):
            try:
                job = await self.store.call("get", {"table": TABLE, "id": job_id})
            except NotFound:
                return None
            if job.get("state") not in allowed_from:
                return None
            if only_if_stale and not self._is_stale(job):
                return None
            args = {"table": TABLE, "id": job_id, "changes": changes}
            try:
                updated: Job = await self.store.call(
                    "patch", {**args, "expected_version": job["version"]}
                )
            except VersionMismatch:
                continue  # a heartbeat or another writer came in between: read again
            self._note_version(job_id, updated)
            return updated
        return None

    async def _transition_by_state(
        self, job_id: str, allowed_from: tuple[str, ...], changes: dict[str, Any]
    ) -> Job | None:
        where = [["id", "eq", job_id], ["state", "in", list(allowed_from)]]
        try:
            done = await self.store.call(
                "update_where", {"table": TABLE, "where": where, "changes": changes}
            )
            if not done.get("matched"):
                return None
            updated: Job = await self.store.call("get", {"table": TABLE, "id": job_id})
        except NotFound:  # no job table yet, or the record is gone
            return None
        self._note_version(job_id, updated)
        return updated

    def _note_version(self, job_id: str, updated: Job) -> None:
        if updated.get("state") not in ACTIVE:  # finished: no owned write may follow
            self._versions.pop(job_id, None)
        elif job_id in self._versions:  # this worker's job: its next owned write expects it
            self._versions[job_id] = updated["version"]

    async def touch(self, job_id: str, changes: dict[str, Any]) -> Job:
        """Heartbeat and progress, written only while the job is active: the record as
        written, or as it is once finished (or declared lost), unchanged."""
        changes = {**changes, "heartbeat_at": now_stamp()}

        async def patch(version: int) -> Job:
            args = {"table": TABLE, "id": job_id, "changes": changes}
            try:
                job: Job = await self.store.call("patch", {**args, "expected_version": version})
            except VersionMismatch:
                raise _RecordMoved() from None
            return job

        return await self._write_owned(job_id, patch)

    async def write_owned(
        self,
        job_id: str,
        args: dict[str, Any],
        changes: dict[str, Any],
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], Job]:
        """The ``batch`` of ``args`` with a patch of the job's record (``changes`` and a
        heartbeat) as its last op, checked against the record's version: the store applies
        the batch only if the job is still this worker's, all of it or none. The batch's reply
        (without that op's result) and the record; ``JobLost`` once the job is not active."""
        changes = {**changes, "heartbeat_at": now_stamp()}
        replies: list[dict[str, Any]] = []

        async def batch(version: int) -> Job:
            guard = {"op": "patch", "table": TABLE, "id": job_id, "changes": changes}
            ops = [*args["ops"], {**guard, "expected_version": version}]
            try:
                reply = await self._callers_store.call(
                    "batch", {**args, "ops": ops}, timeout=timeout
                )
            except StoreError as exc:
                if exc.details.get("index") != len(ops) - 1:
                    raise  # a row's error, reported by the caller as without the record's op
                if isinstance(exc, VersionMismatch):
                    raise _RecordMoved() from None
                if isinstance(exc, NotFound):  # the store lost the record (restarted empty)
                    raise JobLost() from None
                raise
            *results, job = reply["results"]
            replies.append({**reply, "results": results})
            return job

        job = await self._write_owned(job_id, batch)
        if not replies:
            raise JobLost()
        return replies[-1], job

    async def _write_owned(self, job_id: str, write: Callable[[int], Awaitable[Job]]) -> Job:
        """``write(version)`` with the record's version as this worker knows it, once the
        record is read again after another writer changed it; without writing, the record as
        read once it is no longer active."""
        lock = self._locks.get(job_id)
        if lock is None:
            lock = asyncio.Lock()
            if job_id in self._versions:  # a job this worker runs (not one it forgot)
                self._locks[job_id] = lock
        async with lock:
            for _ in range(TRANSITION_ATTEMPTS):
                version = self._versions.get(job_id)
                if version is None:
                    job: Job = await self.store.call("get", {"table": TABLE, "id": job_id})
                    if job.get("state") not in ACTIVE:
                        return job
                    version = int(job["version"])
                try:
                    job = await write(version)
                except _RecordMoved:  # a cancel request, or the job declared lost: read again
                    self._versions.pop(job_id, None)
                    continue
                if self._locks.get(job_id) is lock:  # not forgotten meanwhile (the job ended)
                    self._versions[job_id] = job["version"]
                return job
        raise VersionMismatch(f"the record of job {job_id} kept changing under its worker")

    async def list_jobs(
        self, owner_id: str | None, state: str | None, offset: int, limit: int
    ) -> tuple[list[Job], int]:
        """Newest first; ``owner_id=None`` lists everyone's (admins). An owner's list holds the
        jobs ``readable_by`` them: those they started without an admin's rights."""
        where: list[list[Any]] = []
        if owner_id is not None:
            where += [
                ["owner_id", "eq", owner_id],
                ["owner_role", "exists", True],
                ["owner_role", "ne", ADMIN],
            ]
        if state is not None:
            where.append(["state", "eq", state])
        args = {"table": TABLE, "where": where, "sort": [["created_at", "desc"]]}
        for _ in range(LIST_ATTEMPTS):
            try:
                found = await self.store.call("find", {**args, "offset": offset, "limit": limit})
            except NotFound:  # no job was ever created on this store
                return [], 0
            stale = [job for job in found["items"] if self._is_stale(job)]
            if not stale:
                break
            # Failed now, then read again: the filter and the total must count them as they
            # are (QA: ``?state=running`` listed a job it had just marked failed, in its total).
            for job in stale:
                await self.fail_if_stale(job)
        items = [
            await self.fail_if_stale(job) if self._is_stale(job) else job for job in found["items"]
        ]
        return items, int(found["total"])

    async def sweep_stale(self) -> int:
        """Mark failed every active job whose heartbeat stopped; returns how many."""
        cutoff = now_stamp(datetime.now(UTC) - timedelta(seconds=self.stale_seconds))
        where = [["state", "in", list(ACTIVE)], ["heartbeat_at", "lt", cutoff]]
        try:
            found = await self.store.call(
                "find", {"table": TABLE, "where": where, "limit": SWEEP_LIMIT}
            )
        except NotFound:
            return 0
        failed = 0
        for job in found["items"]:
            if (await self.fail_if_stale(job)).get("state") == "failed":
                failed += 1
        return failed

    async def expired(self, retention_seconds: float) -> list[Job]:
        """Finished jobs older than the retention period (at most ``SWEEP_LIMIT``)."""
        cutoff = now_stamp(datetime.now(UTC) - timedelta(seconds=retention_seconds))
        where = [["state", "in", list(FINISHED)], ["finished_at", "lt", cutoff]]
        try:
            found = await self.store.call(
                "find", {"table": TABLE, "where": where, "limit": SWEEP_LIMIT}
            )
        except NotFound:
            return []
        items: list[Job] = found["items"]
        return items

    async def delete(self, job_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self.store.call("delete", {"table": TABLE, "id": job_id})
