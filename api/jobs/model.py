"""What a job is: its states, its record in the store, and the view clients get.

A job is one record of the internal store table ``_jobs`` (internal tables start with ``_``; the
HTTP API never lets a client name one, and they are not audited). Life cycle::

    queued ──▶ running ──▶ succeeded | failed | cancelled
       └────────────────────────────────────▶ cancelled | failed

The worker that accepted a job runs it and writes ``heartbeat_at`` every
``JOB_HEARTBEAT_SECONDS`` while it is queued or running. A queued/running job whose heartbeat
is older than ``JOB_STALE_SECONDS`` belongs to a worker that died: whoever reads it first (a
``GET``, or any worker's sweeper) marks it ``failed`` with ``WORKER_LOST``. Every transition is
a ``patch`` with ``expected_version``, so two workers never both win one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, Literal

from api.queries import store_time

ADMIN: Final = "admin"  # the role (api.auth.tokens.ROLES) whose jobs only admins read

TABLE = "_jobs"
SCHEMA: dict[str, Any] = {
    "table": TABLE,
    "indexes": [{"field": "owner_id"}, {"field": "state"}],
}

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[State, ...] = ("queued", "running")
FINISHED: tuple[State, ...] = ("succeeded", "failed", "cancelled")

# Record fields clients may see (heartbeats, the worker and parameters stay inside).
PUBLIC_FIELDS = (
    "id",
    "kind",
    "state",
    "owner_id",
    "progress",
    "cancel_requested",
    "created_at",
    "started_at",
    "finished_at",
    "result",
    "error",
)


class JobCancelled(Exception):
    """Raised inside a job at a checkpoint once a cancel was requested."""


class JobLost(Exception):
    """The job's record says it is no longer this worker's to run (declared lost, or gone):
    the job stops where it is, writing nothing more and leaving its record as it is."""


class JobFailed(Exception):
    """A job's own, expected failure: ``code`` and ``message`` go to the job's ``error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now_stamp(at: datetime | None = None) -> str:
    """The store's fixed-width UTC timestamp format, so string order is time order."""
    return store_time(at or datetime.now(UTC))


def parse_stamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def is_stale(job: dict[str, Any], stale_seconds: float, now: datetime | None = None) -> bool:
    """An active job whose worker stopped beating (it died, or its loop is stuck)."""
    if job.get("state") not in ACTIVE:
        return False
    beat = job.get("heartbeat_at") or job.get("created_at")
    if not isinstance(beat, str):
        return True
    age = ((now or datetime.now(UTC)) - parse_stamp(beat)).total_seconds()
    return age > stale_seconds


def new_job(
    kind: str, owner_id: str, params: dict[str, Any], worker: str, owner_role: str = ADMIN
) -> dict[str, Any]:
    stamp = now_stamp()
    return {
        "kind": kind,
        "state": "queued",
        "owner_id": owner_id,
        "owner_role": owner_role,
        "params": params,
        "worker": worker,
        "progress": {"done": 0, "total": None, "unit": "rows"},
        "cancel_requested": False,
        "queued_at": stamp,
        "heartbeat_at": stamp,
        "started_at": None,
        "finished_at": None,
        "result": None,
        "error": None,
    }


def to_public(job: dict[str, Any]) -> dict[str, Any]:
    """The client's view, with ``elapsed_seconds`` (running time so far, or in total)."""
    view = {name: job.get(name) for name in PUBLIC_FIELDS}
    # Progress is merge-patched into the record, where a null total removes the key: the view
    # always has all three.
    view["progress"] = {"done": 0, "total": None, "unit": "rows", **(job.get("progress") or {})}
    started = job.get("started_at")
    elapsed = None
    if isinstance(started, str):
        end = job.get("finished_at")
        end_at = parse_stamp(end) if isinstance(end, str) else datetime.now(UTC)
        elapsed = round((end_at - parse_stamp(started)).total_seconds(), 6)
    view["elapsed_seconds"] = elapsed
    return view


def readable_by(job: dict[str, Any], caller_id: str | None, caller_is_admin: bool) -> bool:
    """Admins read every job; anyone else only their own, and only one they started without an
    admin's rights. A job started as an admin (every export, dump, import, snapshot and write
    by filter is) holds what only an admin may see, so an owner demoted since loses it. A
    record without ``owner_role`` predates the field, when only admin routes started jobs."""
    if caller_is_admin:
        return True
    return job.get("owner_id") == caller_id and job.get("owner_role", ADMIN) != ADMIN
