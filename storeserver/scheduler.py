"""The store's long commands: their jobs stepped in turns, the cap on scans, ``cancel``.

The commands that would read a whole big table (``create_index``, ``set_schema``, and
``find``, ``count``, ``join``, ``aggregate``, ``update_where``, ``delete_where`` over many
rows) come back from the engine as a ``builds.Job``. The server (``server.py``) dispatches
commands and holds what is shared across connections; its ``JobScheduler`` is what happens to
those jobs after that, kept apart because it has state and limits of its own (the jobs
running, their turn order, the commands waiting for a turn) that no single command touches.

Design note. The jobs are stepped in turn, a chunk each, for about ``JOB_BUDGET`` per loop
turn (``_run_jobs``), other clients' commands in between, and each reply is sent when its job
is done. A long write is checked again before each step (memory limit, log writable), as it was
when it started. A job whose connection closes is abandoned. A long read, and a long
``*_where``'s selection, holds a list of its candidate rows (8 bytes per row) until it is done,
so at most ``SCAN_JOBS`` of them run at once: one that comes back as a job past that waits as
its request (dropping its list) and is handled again when one ends (in arrival order, the
connections with the fewest running first); past
``WAITING_SCANS`` waiting the store answers ``STORE_BUSY``. Their memory is bounded by the cap,
not by the number of clients.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from .builds import ChunkedRead, Job
from .bulk import BulkWrite
from .client import ACTOR_ARG, REQUEST_ID_ARG
from .errors import BadRequest, InternalError, MemoryLimit, StoreBusy, StoreError
from .protocol import Request, encode_result

if TYPE_CHECKING:
    from .connection import StoreConnection
    from .server import StoreServer

log = structlog.get_logger("storeserver")

JOB_BUDGET = 0.005
"""Seconds of job steps per loop turn, beyond the first step (``JobScheduler._run_jobs``)."""
SCAN_JOBS = 8
"""Jobs holding a list of candidate rows running at once: long reads (``builds.ChunkedRead``)
and the selections of ``update_where``/``delete_where`` (``bulk.BulkWrite``). Each holds up
to 8 bytes per row of its table plus its matches: about 64-128 MB for eight over a 1M-row
table. More at once would not finish sooner (one thread steps them all)."""
WAITING_SCANS = 1024
"""Such commands waiting for a turn past ``SCAN_JOBS``; past this the store answers
``STORE_BUSY`` (the API: 503 with Retry-After) to a connection that has
``WAITING_PER_CONNECTION`` waiting already, and to any once twice as many wait. Those of
clients not reading their replies (``admit_waiting``) do not count: they cannot start, and a
few such clients held every place (review). QA: one connection that reads its replies took
all 1,024 places, and every other connection's long read was ``STORE_BUSY``."""
WAITING_PER_CONNECTION = 128
_SCANS = (ChunkedRead, BulkWrite)
_CANCEL_ARGS = frozenset({"request"})


@dataclass(slots=True)
class _JobRun:
    """A long command in progress: the job, where and how its reply goes, and the time its
    steps took so far (not the time between them: what it cost other clients, and what the
    stats and the slow log report)."""

    job: Job
    conn: StoreConnection | None
    rid: int
    request_tag: Any
    spent: float
    # The command's arguments, for ``_check_write`` before each step: a bookkeeping write to
    # an internal table goes on over the memory limit in steps as it does at once (QA: a
    # chunked ``update_where`` on ``_x`` was refused there, a quick one was not).
    args: dict[str, Any]
    # The caller's credential (``_actor``), checked again before each step of a write: one
    # that ends while the write runs stops it as ``_check_write`` does (``check_credential``).
    credential: Any = None


def _stalled(conn: StoreConnection | None) -> bool:
    """Whether ``conn``'s client is not reading its replies (``admit_waiting`` skips it)."""
    return conn is not None and conn.writing_paused


@dataclass(slots=True, eq=False)
class _Waiting:
    """A command that would run as a scan while ``SCAN_JOBS`` already run: kept as its
    request (its arguments, with its tags, not its candidate rows) until a turn frees up,
    then handled again. Equal only to itself: ``deque.remove`` takes out this one, not an
    earlier one alike (a client may send the same request id twice)."""

    request: Request
    conn: StoreConnection | None
    spent: float


class JobScheduler:
    """The server's long commands: those running (by job) in turn order, those waiting for
    a scan turn, and how many their clients cancelled. Replies are encoded, accounted and
    sent through the server, as those of the commands it answers at once."""

    def __init__(self, server: StoreServer) -> None:
        self.server = server
        # Long commands in progress (by job), and their turn order.
        self.running: dict[Job, _JobRun] = {}
        self._queue: deque[_JobRun] = deque()
        self._jobs_scheduled = False
        self.waiting: deque[_Waiting] = deque()
        self.cancelled = 0  # long commands stopped by their client's ``cancel``
        self.stopped = False  # the store is stopping: no job steps, none starts (``stop``)

    @property
    def jobs(self) -> int:
        """Long commands in progress."""
        return len(self.running)

    def start(
        self,
        job: Job,
        request: Request,
        request_tag: Any,
        actor: Any,
        conn: StoreConnection | None,
        spent: float,
    ) -> None:
        """Run ``job``, what ``request`` came back as, in turns; or, past ``SCAN_JOBS`` scans,
        set the request aside until a turn frees (``StoreBusy`` past ``WAITING_SCANS``)."""
        if type(job) in _SCANS and self._scans_running() >= SCAN_JOBS:
            job.abort()  # drops its candidate list; run again when a turn frees
            if len(self.waiting) >= WAITING_SCANS and (
                sum(1 for w in self.waiting if w.conn is conn) >= WAITING_PER_CONNECTION
                or sum(1 for w in self.waiting if not _stalled(w.conn)) >= 2 * WAITING_SCANS
            ):
                raise StoreBusy(
                    "the store is busy with long commands; retry shortly", {"max": WAITING_SCANS}
                )
            # As it came (tags included), to be handled again; counted once, when it runs.
            if request_tag is not None:
                request.args[REQUEST_ID_ARG] = request_tag
            if actor is not None:
                request.args[ACTOR_ARG] = actor
            self.server.engine.uncount(request.command)
            self.waiting.append(_Waiting(request, conn, spent))
            return
        credential = actor.get("credential") if type(actor) is dict else None
        run = _JobRun(job, conn, request.request_id, request_tag, spent, request.args, credential)
        self.running[job] = run
        self._queue.append(run)
        self.schedule_jobs()

    def cancel_jobs(self, conn: StoreConnection | None = None) -> None:
        """Abort the long commands of ``conn`` (every one without it): nobody would read their
        answers. A cancelled read just stops; a cancelled ``create_index`` or ``set_schema``
        leaves the table as it was, as a command that never ran."""
        for job, run in list(self.running.items()):
            if conn is None or run.conn is conn:
                del self.running[job]
                job.abort()
                self._account_stopped(run)
        if conn is None:
            self.waiting.clear()
        elif self.waiting:
            self.waiting = deque(w for w in self.waiting if w.conn is not conn)
            self.admit_waiting()  # the turns just freed go to those already waiting

    def stop(self) -> None:
        """At a stop: step no job and start none any more (``refuse_all`` answers them)."""
        self.stopped = True

    def refuse_all(self, error: StoreError) -> None:
        """At a stop: answer ``error`` to every long command running or waiting, each aborted
        as if it never ran (a long write applies its changes only at its last step): its
        client knows it was not applied, where the connection's close left it unknown."""
        for job, run in list(self.running.items()):
            del self.running[job]
            job.abort()
            self._account_stopped(run)
            self._deliver(run.conn, self.server.encode_error(run.rid, error), False)
        waiting, self.waiting = self.waiting, deque()
        for w in waiting:
            self._deliver(w.conn, self.server.encode_error(w.request.request_id, error), False)

    def _account_stopped(self, run: _JobRun) -> None:
        """Count a long command stopped before it answered in the ``commands`` stats, with
        the time its steps took, as the engine's ``ops`` counted it when it started (QA: a
        cancelled read was in one and not the other)."""
        self.server._account(run.job.command, run.spent, run.request_tag)

    def _scans_running(self) -> int:
        return sum(type(job) in _SCANS for job in self.running)

    def admit_waiting(self) -> None:
        """Start waiting commands while there are turns for them: each turn to the first in
        line of the connections with the fewest scans running (``_next_waiting``).

        Not those of a connection whose client does not read its replies (its transport's
        buffer is full, ``StoreConnection.writing_paused``): they keep their places and start
        once it reads (``resume_writing`` calls this again). Its long reads could not be
        sent anyway, and each would add its whole reply to what the store holds for it (QA:
        150 pipelined long ``find``s never read held 191 MB); now that is at most the
        ``SCAN_JOBS`` already running when it stopped reading.
        """
        durability = self.server.durability
        while self.waiting and self._scans_running() < SCAN_JOBS and not self.stopped:
            w = self._next_waiting()
            if w is None:
                break
            self.waiting.remove(w)
            recorded = durability.recorded if durability is not None else 0
            reply = self.server.handle(w.request, w.conn, w.spent)
            if reply is not None:  # a write done at once, this time
                wrote = durability is not None and durability.recorded != recorded
                self._deliver(w.conn, reply, wrote)

    def _next_waiting(self) -> _Waiting | None:
        """The first waiting command, in arrival order, of a reading connection with the
        fewest scans running. Arrival order alone gave every turn to one client that had sent
        1,100 long counts (QA: another client's one count, 40 ms alone, waited 6-26 s behind
        them); now a connection waits for at most one turn to free while another holds them."""
        running: dict[int, int] = {}
        for job, run in self.running.items():
            if type(job) in _SCANS:
                running[id(run.conn)] = running.get(id(run.conn), 0) + 1
        best: _Waiting | None = None
        fewest = SCAN_JOBS + 1
        for w in self.waiting:
            if _stalled(w.conn):
                continue
            count = running.get(id(w.conn), 0)
            if count < fewest:
                best, fewest = w, count
                if count == 0:
                    break
        return best

    def schedule_jobs(self) -> None:
        """A turn of ``_run_jobs`` soon: job steps, then waiting commands admitted."""
        if not self._jobs_scheduled:
            self._jobs_scheduled = True
            asyncio.get_running_loop().call_soon(self._run_jobs)

    def _run_jobs(self) -> None:
        """Step the long commands in turn, each at most once, until ``JOB_BUDGET`` seconds
        are used; then let the loop serve everyone else and come back.

        So however many jobs run, a short command waits about one budget plus one step
        (a step is about ``CHUNK`` rows), not one step of every job. A job's first step runs
        here too, not while its request is read: a pipelined burst of long reads does not
        hold the turn that reads it.
        """
        self._jobs_scheduled = False
        if self.stopped:
            return
        queue = self._queue
        deadline = time.perf_counter() + JOB_BUDGET
        for _ in range(len(queue)):
            run = queue.popleft()
            if self._step(run):
                queue.append(run)
            if time.perf_counter() >= deadline:
                break
        self.admit_waiting()
        if queue:
            self.schedule_jobs()

    def _step(self, run: _JobRun) -> bool:
        """One step of a job; ``True`` while it goes on."""
        job, conn, rid = run.job, run.conn, run.rid
        if job not in self.running:
            return False  # cancelled (its client left, or the store is stopping): aborted
        server = self.server
        started = time.perf_counter()
        reply: bytes | None = None
        recorded = False
        try:
            if type(job) is not ChunkedRead:
                server._check_write(job.command, run.args)
                if run.credential is not None:
                    server.engine.check_credential(run.credential)
            elif server.memory.reads_over():
                # What a long read holds (groups, a join's hash, sort keys) is in use until it
                # ends: QA, eight aggregates took the store to 2.8 times STORE_MAX_MEMORY.
                raise MemoryLimit(
                    "the store's memory in use is past STORE_MAX_MEMORY by a quarter: this long"
                    " read stopped (read fewer rows, or fewer at once)",
                    {"max_memory": server.memory.limit},
                )
            done, result = server.engine.advance(job)
            if done:
                changes = server.engine.drain_changes()
                if changes and server.durability is not None:
                    server.durability.record(changes)
                    recorded = True
                reply = server._encode(rid, result)
        except StoreError as exc:
            job.abort()  # (again, if the step failed: aborting twice is harmless)
            reply = server.encode_error(rid, exc)
        except Exception:
            job.abort()
            log.exception("command_failed", command=job.command)
            reply = server.encode_error(rid, InternalError("internal store error"))
        run.spent += time.perf_counter() - started
        if reply is None:
            return True
        del self.running[job]
        server._account(job.command, run.spent, run.request_tag)
        self._deliver(conn, reply, recorded)
        return False

    def _deliver(self, conn: StoreConnection | None, reply: bytes, wrote: bool) -> None:
        """Send a reply outside ``data_received``; one acknowledging a write waits for its log
        write (STORE_FSYNC=always: the disk), as ``data_received`` does for its batch."""
        if conn is None:
            return
        durability = self.server.durability
        if wrote and durability is not None:
            conn.send_when_durable(durability, reply)  # counted: the connection waits for it
        else:
            conn.send(reply)

    def serves(self, conn: StoreConnection) -> bool:
        """Whether a long command of ``conn`` is running or waiting: its reply is owed."""
        return any(run.conn is conn for run in self.running.values()) or any(
            w.conn is conn for w in self.waiting
        )

    def cancel(self, conn: StoreConnection, request: Request, withdrawn: bool = False) -> bytes:
        """``cancel {"request": id}``: the client gave up on its request ``id`` (it timed
        out). If that request is a long command still running, or waiting for a turn, it
        stops as if it never ran (``cancel_jobs``); either way nobody gets its reply.

        Answers ``{"cancelled": bool}``; the client sends cancels with request id 0, whose
        replies it does not wait for.
        """
        args = request.args
        target = args.get("request")
        if not args.keys() <= _CANCEL_ARGS or type(target) is not int:
            err = BadRequest("cancel takes request: the id of a request", {"arg": "request"})
            return self.server.encode_error(request.request_id, err)
        if withdrawn:  # read with it and never run (``connection._withdrawn``)
            return encode_result(request.request_id, {"cancelled": True})
        found: _JobRun | _Waiting | None = None
        for w in self.waiting:
            if w.conn is conn and w.request.request_id == target:
                self.waiting.remove(w)
                found = w
                break
        else:
            for job, run in self.running.items():
                if run.conn is conn and run.rid == target:
                    del self.running[job]
                    job.abort()
                    self._account_stopped(run)
                    found = run
                    self.admit_waiting()  # its turn goes to the next waiting command
                    break
        if found is not None:
            if isinstance(found, _JobRun):
                command, tag = found.job.command, found.request_tag
            else:
                command, tag = found.request.command, found.request.args.get(REQUEST_ID_ARG)
            self.cancelled += 1
            log.info(
                "command_cancelled",
                command=command,
                request_id=tag if isinstance(tag, str) else None,
                spent_ms=round(found.spent * 1000, 2),
            )
        return encode_result(request.request_id, {"cancelled": found is not None})
