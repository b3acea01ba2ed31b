"""Persistence inside the running server: when to write, fsync, hold replies and snapshot.

The file formats and the fork live in ``persistence.py``; this module schedules them on the
event loop. See that module's design note for the guarantees of each ``STORE_FSYNC`` policy.

Write path: each write command's changes are queued (``record``); at the end of the loop turn
(``_flush``) the turn's commands become one log entry (one encode, one checksum, one
``write``). Commands are never split across entries, so each is still replayed whole or not
at all; an entry is closed early once it holds ``ENTRY_CHANGES`` changes, to keep it far
below the reader's size limit.

With ``always`` the replies of a turn's writes are held (``hold``) and sent once an fsync of
the log, started after their entries were written, succeeds. After any failure (a write, an
fsync, opening a new log) the replies held then are aborted, never sent, even if a later fsync
succeeds: a reply is sent only for a write known to be on disk (``_fail``, ``_fsync_done``).

Stopping: ``close`` flushes and writes a final snapshot. If that fails while writes are missing
from the files (``unsaved_writes``: a log write or fsync failed since the last snapshot that
recovered), exiting would drop them, acknowledged ones included (every write under
``everysec`` and ``no``). Redis refuses to shut down when its final save fails; here the
snapshot is retried every ``STOP_RETRY_INTERVAL`` for ``STOP_RETRY_SECONDS`` with a critical
line each time (free space and it saves and exits 0), then ``WritesLost``. When nothing is
missing (the logs hold every write) a failed final snapshot is raised at once: the next start
replays the logs.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import structlog

from .errors import PersistenceError, StoreError
from .persistence import (
    AppendLog,
    DataDir,
    LoadReport,
    encode_entry,
    fork_snapshot,
    fsync_dir,
    write_snapshot,
)

log = structlog.get_logger("storeserver.durability")

ENTRY_CHANGES = 10_000
"""Changes after which the current entry is encoded and a new one started (same loop turn)."""

RECOVERY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds between attempts to recover from a failed log write or fsync (the last repeats)."""

STOP_RETRY_SECONDS = 30.0
"""How long a stop retries a final snapshot that would save writes missing from the files.
deploy/supervisord.conf ``stopwaitsecs`` and compose's ``stop_grace_period`` must exceed it,
plus the snapshot's own time, or the launcher's SIGKILL ends the retries unannounced."""

STOP_RETRY_INTERVAL = 1.0

SnapshotWaiter = Callable[[dict[str, Any] | StoreError], None]


class WritesLost(Exception):
    """The store stopped with writes that only its memory held (the final snapshot never fit)."""

    def __init__(self, count: int, acknowledged: bool) -> None:
        kind = "acknowledged" if acknowledged else "unacknowledged"
        super().__init__(f"{count} {kind} writes lost")
        self.count = count


class Sink(Protocol):
    """Where held replies go once they may be sent (a client connection)."""

    def send(self, data: bytes) -> None: ...
    def abort(self) -> None: ...


class Engine(Protocol):
    def apply_change(self, change: tuple[Any, ...]) -> None: ...
    def drain_changes(self) -> list[tuple[Any, ...]]: ...
    def iter_state(self) -> Any: ...


class Durability:
    def __init__(
        self, data_dir: Any, policy: str, engine: Engine, rewrite_bytes: int = 64 << 20
    ) -> None:
        self.dir = DataDir(data_dir)
        self.policy = policy
        self.engine = engine
        self.rewrite_bytes = rewrite_bytes
        self.log: AppendLog | None = None
        self.recorded = 0  # entries recorded so far; the server compares it around a chunk
        self.error: str | None = None
        self._failures = 0  # every _fail counts; a snapshot clears only failures before its fork
        # Counts of ``recorded`` commands: all up to _written are in the log (the page cache
        # keeps them past the process's exit), up to _synced on disk; none after _unsaved_from
        # is known to be anywhere but memory (set by a failure, cleared by a recovery).
        self._written = 0
        self._synced = 0
        self._unsaved_from: int | None = None
        self._child_recorded = 0
        self._child_failures = 0
        self._recovery: asyncio.TimerHandle | None = None
        self._recovery_attempts = 0
        self.last_load: LoadReport | None = None
        self.last_snapshot: dict[str, Any] | None = None
        self._pending: list[tuple[Any, ...]] = []  # this turn's changes, not yet encoded
        self._buffer = bytearray()  # encoded entries, not yet written
        self._flush_scheduled = False
        self._dirty = False  # written since the last fsync
        self._held: list[tuple[Sink, bytes]] = []
        self._syncing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="store-fsync")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._everysec: asyncio.TimerHandle | None = None
        self._child: int | None = None
        self._child_generation = 0
        self._child_started = 0.0
        self._waiters: list[SnapshotWaiter] = []
        self._lock: int | None = None  # the data directory's lock (``DataDir.lock``)

    # -- start and stop --------------------------------------------------------------------

    def load(self) -> LoadReport:
        """Lock the directory, load the snapshot and replay the logs, then open a fresh log
        generation."""
        if self._lock is None:
            self._lock = self.dir.lock()
        report = self.dir.load(self.engine.apply_change)
        self.engine.drain_changes()  # replay journals nothing new, but keep the engine clean
        generation = self.dir.next_generation()
        self.log = AppendLog(self.dir.log_path(generation), generation)
        fsync_dir(self.dir.root)
        self.last_load = report
        if self.dir.snapshot.exists():
            # The snapshot loaded is the last one on disk: its age counts from when it was
            # written (so an alert on a growing age holds across restarts).
            stat = self.dir.snapshot.stat()
            self.last_snapshot = {
                "path": str(self.dir.snapshot),
                "bytes": stat.st_size,
                "generation": report.snapshot_generation,
                "seconds": None,
                "finished_at": stat.st_mtime,
            }
        log.info(
            "store_loaded",
            data_dir=str(self.dir.root),
            snapshot_generation=report.snapshot_generation,
            snapshot_changes=report.snapshot_changes,
            log_entries=report.log_entries,
            seconds=round(report.seconds, 3),
        )
        return report

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.policy == "everysec":
            self._everysec = loop.call_later(1.0, self._every_second)
        if self._log_bytes() > self.rewrite_bytes:
            self.start_snapshot()

    def close(self) -> None:
        """Clean shutdown: flush, wait for a running snapshot, write a final one; then let go
        of the directory (also when that fails: the process is stopping)."""
        try:
            self._close()
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def _close(self) -> None:
        if self._everysec is not None:
            self._everysec.cancel()
        self._write_buffer()
        if self._child is not None:
            _, status = os.waitpid(self._child, 0)
            self._child_done(status)
        self._executor.shutdown(wait=True)
        assert self.log is not None
        generation = self.log.generation
        try:
            self.log.fsync()
        except OSError as exc:
            self._fail(f"fsync failed: {exc}", since=self._synced)
        else:
            self._synced = self._written
        self.log.close()
        if self._recovery is not None:  # scheduled by a failure above, or earlier
            self._recovery.cancel()
        started = time.perf_counter()
        size = self._write_final_snapshot(generation)
        self.dir.prune(generation)
        if self.error is not None:
            log.warning("persistence_recovered", after=self.error, on="shutdown")
            self.error, self._unsaved_from = None, None
        log.info(
            "snapshot_written",
            on="shutdown",
            bytes=size,
            seconds=round(time.perf_counter() - started, 3),
        )

    @property
    def unsaved_writes(self) -> int:
        """Write commands held only in memory: a restart now would not have them."""
        return 0 if self._unsaved_from is None else self.recorded - self._unsaved_from

    def _write_final_snapshot(self, generation: int) -> int:
        deadline: float | None = None
        while True:
            try:
                return write_snapshot(self.dir.snapshot, generation, self.engine.iter_state())
            except OSError as exc:
                unsaved = self.unsaved_writes
                if not unsaved:
                    raise  # the logs hold every write: the next start replays them
                acknowledged = self.policy != "always"  # ``always`` aborted their replies
                now = time.monotonic()
                if deadline is None:
                    deadline = now + STOP_RETRY_SECONDS
                if now >= deadline:
                    lost = WritesLost(unsaved, acknowledged)
                    log.critical(
                        "writes_lost",
                        message=str(lost),
                        writes=unsaved,
                        acknowledged=acknowledged,
                        error=str(exc),
                        data_dir=str(self.dir.root),
                    )
                    raise lost from exc
                kind = "acknowledged" if acknowledged else "unacknowledged"
                log.critical(
                    "final_snapshot_failed",
                    message=f"{unsaved} {kind} writes are not on disk: free space in"
                    f" {self.dir.root} within {math.ceil(deadline - now)} s and the store"
                    " saves them and stops; otherwise they are lost",
                    writes=unsaved,
                    acknowledged=acknowledged,
                    error=str(exc),
                    data_dir=str(self.dir.root),
                    retry_for_s=round(deadline - now, 1),
                )
                time.sleep(STOP_RETRY_INTERVAL)

    # -- the write path ----------------------------------------------------------------------

    def check_writable(self) -> None:
        if self.error is not None:
            raise PersistenceError(
                "the store cannot write its log; writes are refused until a new snapshot is"
                " on disk (retried in the background)",
                {"reason": self.error},
            )

    def record(self, changes: list[tuple[Any, ...]]) -> None:
        """Queue one command's changes; they reach the file at the end of this loop turn."""
        pending = self._pending
        pending += changes
        self.recorded += 1
        if len(pending) >= ENTRY_CHANGES:
            self._encode_pending()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    @property
    def holds_replies(self) -> bool:
        return self.policy == "always"

    def hold(self, sink: Sink, data: bytes) -> None:
        """Keep a reply until the entries written before it are on disk (``always``)."""
        self._held.append((sink, data))

    def _encode_pending(self) -> None:
        if self._pending:
            self._buffer += encode_entry(self._pending)
            self._pending = []

    def _write_buffer(self) -> bool:
        self._encode_pending()
        if not self._buffer or self.log is None:
            self._written = self.recorded  # commands with no changes leave nothing to write
            return True
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
            self.log.write(data)
        except OSError as exc:
            self._fail(f"log write failed: {exc}", since=self._written)
            return False
        self._written = self.recorded
        self._dirty = True
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._write_buffer():
            return
        if self._held and not self._syncing:
            self._start_fsync()
        if self._child is None and self.log is not None and self.log.size > self.rewrite_bytes:
            self.start_snapshot()

    def _start_fsync(self) -> None:
        assert self.log is not None
        self._dirty = False
        self._sync_held(self.log.fsync)

    def _sync_held(self, sync: Callable[[], None]) -> None:
        """Run ``sync`` on the fsync thread; the replies held so far are sent once it succeeds."""
        assert self._loop is not None
        batch, self._held = self._held, []
        failures, written = self._failures, self._written
        self._syncing = True
        future = self._loop.run_in_executor(self._executor, sync)
        future.add_done_callback(lambda f: self._fsync_done(f, batch, failures, written))

    def _fsync_done(
        self,
        future: asyncio.Future[None],
        batch: list[tuple[Sink, bytes]],
        failures: int,
        written: int,
    ) -> None:
        self._syncing = False
        exc = future.exception()
        if exc is not None:
            # Not durable, so not acknowledged: the clients see the connection drop.
            _abort(batch)
            self._fail(f"fsync failed: {exc}", since=self._synced)
            return
        self._synced = max(self._synced, written)
        if self._failures != failures:
            # A failure came while this batch waited: as for the replies _fail aborts, this
            # fsync succeeding proves nothing for it (it may have run after a failed one on the
            # same file). Cautious after a failed write too, whose batches were written before.
            _abort(batch)
        else:
            for sink, data in batch:
                sink.send(data)
        if self._held:
            self._start_fsync()

    def _every_second(self) -> None:
        assert self._loop is not None
        if self._dirty and not self._syncing and self.log is not None:
            self._dirty = False
            written = self._written
            self._loop.run_in_executor(self._executor, self.log.fsync).add_done_callback(
                lambda f: self._check_background_fsync(f, written)
            )
        self._everysec = self._loop.call_later(1.0, self._every_second)

    def _check_background_fsync(self, future: asyncio.Future[None], written: int) -> None:
        if future.exception() is not None:
            self._fail(f"fsync failed: {future.exception()}", since=self._synced)
        else:
            self._synced = max(self._synced, written)

    def _fail(self, reason: str, *, since: int) -> None:
        """``since``: the commands after this count may be missing from the files (after a
        failed fsync the kernel may drop every page not yet synced, not only this one's)."""
        if self.error is None:
            log.error("persistence_failed", reason=reason)
        self.error = reason
        self._failures += 1
        if self._unsaved_from is None or since < self._unsaved_from:
            self._unsaved_from = since
        # The replies still held are never sent: a failed write left their entries out of the
        # log, and after a failed fsync the kernel may have dropped the dirty pages of entries
        # written meanwhile, so a later fsync that succeeds (the next rotation's) proves nothing.
        # Their clients see the connection drop; so do those of batches whose fsync is queued
        # (_fsync_done). Only a snapshot forked after this failure holds their writes for sure.
        held, self._held = self._held, []
        _abort(held)
        self._schedule_recovery()

    # -- recovery ----------------------------------------------------------------------------
    #
    # After a failed write or fsync the log no longer holds everything in memory, so writes
    # are refused (Redis's stance on a failing AOF). A snapshot forked after the failure holds
    # everything, and the log starts afresh beside it: its success clears the error. Retried
    # with backoff until the disk has room again; a snapshot asked for by an admin counts too.

    def _schedule_recovery(self) -> None:
        if self._recovery is not None or self._loop is None:
            return
        delay = RECOVERY_DELAYS[min(self._recovery_attempts, len(RECOVERY_DELAYS) - 1)]
        self._recovery_attempts += 1
        self._recovery = self._loop.call_later(delay, self._recover)

    def _recover(self) -> None:
        self._recovery = None
        if self.error is not None:
            # Starts a snapshot, or waits for the running one; if that one was forked before
            # the failure it cannot clear it, and the next attempt starts a new one.
            self.start_snapshot(self._recovery_done)

    def _recovery_done(self, outcome: dict[str, Any] | StoreError) -> None:
        if self.error is not None:
            self._schedule_recovery()

    # -- snapshots ---------------------------------------------------------------------------

    def start_snapshot(self, waiter: SnapshotWaiter | None = None) -> None:
        """Start a background snapshot (or join the running one)."""
        if waiter is not None:
            self._waiters.append(waiter)
        if self._child is not None:
            return
        assert self._loop is not None and self.log is not None
        if not self._write_buffer():
            self._notify(PersistenceError("cannot snapshot: the log is not writable", {}))
            return
        old = self.log
        generation = old.generation
        try:
            self.log = AppendLog(self.dir.log_path(generation + 1), generation + 1)
            fsync_dir(self.dir.root)
        except OSError as exc:
            self._fail(f"cannot open a new log: {exc}", since=self._written)
            self._notify(PersistenceError("cannot snapshot: a new log cannot be opened", {}))
            return
        # The old log is synced and closed on the fsync thread, after any fsync in flight on it;
        # replies held for entries in it wait for that.
        self._sync_held(lambda: _sync_and_close(old))
        self._child_generation = generation
        self._child_failures = self._failures
        self._child_recorded = self.recorded
        self._child_started = time.perf_counter()
        self._child = fork_snapshot(self.dir.snapshot, generation, self.engine.iter_state())
        log.info("snapshot_started", generation=generation, pid=self._child)
        self._loop.call_later(0.05, self._poll_child)

    def _poll_child(self) -> None:
        if self._child is None:
            return
        pid, status = os.waitpid(self._child, os.WNOHANG)
        if pid == 0:
            assert self._loop is not None
            self._loop.call_later(0.05, self._poll_child)
            return
        self._child_done(status)

    def _child_done(self, status: int) -> None:
        self._child = None
        seconds = time.perf_counter() - self._child_started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            # exit 1: the child's own error (its "snapshot_child_failed" line says which);
            # negative: killed by that signal (the OOM killer's SIGKILL, most likely)
            how = {"exit_code": code} if code > 0 else {"signal": signal.Signals(-code).name}
            log.error("snapshot_failed", **how)
            self.dir.discard_partial_snapshot()  # a child killed mid-write leaves its part
            # Most likely the disk (full, read-only): a condition to report, not a bug (500).
            self._notify(PersistenceError("the snapshot could not be written (disk full?)", {}))
            return
        self.dir.prune(self._child_generation)
        self.last_snapshot = {
            "path": str(self.dir.snapshot),
            "bytes": self.dir.snapshot.stat().st_size,
            "generation": self._child_generation,
            "seconds": round(seconds, 3),
            "finished_at": time.time(),
        }
        log.info("snapshot_written", on="background", **self.last_snapshot)
        # Every command before the fork is on disk now, whatever failed since.
        self._synced = max(self._synced, self._child_recorded)
        if self._unsaved_from is not None:
            self._unsaved_from = max(self._unsaved_from, self._child_recorded)
        if self.error is not None and self._child_failures == self._failures:
            # Forked after the last failure: this snapshot holds every change, and the new log
            # holds the rest. Writes are accepted again.
            log.warning("persistence_recovered", after=self.error)
            self.error = None
            self._unsaved_from = None
            self._recovery_attempts = 0
        self._notify(dict(self.last_snapshot))

    def _notify(self, outcome: dict[str, Any] | StoreError) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter(outcome)

    # -- insight -----------------------------------------------------------------------------

    def _log_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.logs())

    def status(self) -> dict[str, Any]:
        last = self.last_snapshot
        return {
            "enabled": True,
            "data_dir": str(self.dir.root),
            "fsync": self.policy,
            "log_bytes": self._log_bytes(),
            "log_generation": self.log.generation if self.log else None,
            "snapshot_in_progress": self._child is not None,
            "last_snapshot": last,
            "last_snapshot_age_s": round(time.time() - last["finished_at"], 3) if last else None,
            "error": self.error,
        }


def _abort(replies: list[tuple[Sink, bytes]]) -> None:
    for sink, _ in replies:
        sink.abort()


def _sync_and_close(log_file: AppendLog) -> None:
    try:
        log_file.fsync()
    finally:
        log_file.close()
