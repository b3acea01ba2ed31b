"""Persistence inside the running server: loading, stopping, recovery and snapshots.

The files are read and written by ``logfile`` (the entry format, the open log), ``snapshots``
(the snapshot, written in a forked child) and ``datadir`` (the directory, loading at start);
this module schedules them on the event loop. The write path (one entry per loop turn, fsync
per ``STORE_FSYNC``, held replies) is its base class ``writepath.WritePath``; the final
snapshot of a stop, retried while the disk is full, is ``finalsnapshot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from .datadir import DataDir, LoadReport
from .errors import InternalError, PersistenceError, StoreError
from .finalsnapshot import write_final_snapshot
from .logfile import AppendLog, fsync_dir, log_begins_entry
from .snapshots import ensure_snapshot_dir, fork_snapshot
from .writepath import WritePath

log = structlog.get_logger("storeserver.durability")

START_COMPACT_LOGS = 1
"""A start that replayed more logs than this compacts them at once (a background snapshot).

Every start opens a new log generation and only a snapshot prunes the old ones: without this a
store that restarts often and writes little (a crash loop, a host rebooted nightly) kept one
more log file per start, and replayed them all at each (QA: 20 ``kill -9``, 21 logs). With it
the directory holds the snapshot and at most two logs after any start (once that snapshot is
written)."""
RECOVERY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds between attempts to recover from a failed log write or fsync (the last repeats)."""

SnapshotWaiter = Callable[[dict[str, Any] | StoreError], None]


class Engine(Protocol):
    def apply_change(self, change: tuple[Any, ...]) -> None: ...
    def drain_changes(self) -> list[tuple[Any, ...]]: ...
    def iter_state(self) -> Any: ...


class Durability(WritePath):
    def __init__(
        self, data_dir: Any, policy: str, engine: Engine, rewrite_bytes: int = 64 << 20
    ) -> None:
        self.dir = DataDir(data_dir)
        super().__init__(policy)
        self.engine = engine
        self.rewrite_bytes = rewrite_bytes
        self._child_recorded = 0
        self._child_failures = 0
        self._recovery: asyncio.TimerHandle | None = None
        self._recovery_attempts = 0
        self.last_load: LoadReport | None = None
        self.last_snapshot: dict[str, Any] | None = None
        self._child: int | None = None
        self._child_generation = 0
        self._child_started = 0.0
        self._waiters: list[SnapshotWaiter] = []
        # Asked for while the running snapshot predates the last failure: they wait for the
        # next one, forked once it ends.
        self._deferred: list[SnapshotWaiter] = []
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
        if report.last_log is not None:
            self._begin_log(*report.last_log)
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

    def _begin_log(self, previous_generation: int, previous_bytes: int) -> None:
        """Write where the log before the new one ends: a power loss that cuts it at an entry
        boundary, once this log's writes are on disk, is then found at the next start
        (``datadir``). Not written (a full disk), the log goes on without it, as logs did
        before it existed: a store that cannot write it still starts and serves reads, and a
        rotation still closes the old log (review: ENOSPC here stopped both)."""
        assert self.log is not None
        try:
            self.log.write(log_begins_entry(previous_generation, previous_bytes))
        except OSError as exc:
            log.warning("log_begins_not_written", file=str(self.log.path), error=str(exc))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the timers; compact at once if the logs loaded call for it: past
        ``rewrite_bytes``, or more than ``START_COMPACT_LOGS`` of them."""
        self._loop = loop
        if self.policy == "everysec":
            self._everysec = loop.call_later(1.0, self._every_second)
        replayed = len(self.last_load.logs) if self.last_load is not None else 0
        if replayed > START_COMPACT_LOGS:
            log.info("compacting_after_start", logs_replayed=replayed)
            self.start_snapshot()
        elif self._log_bytes() > self.rewrite_bytes:
            self.start_snapshot()

    def close(self) -> None:
        """Clean shutdown: flush, stop a running snapshot, write a final one; then let go
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
            self._stop_child()
        # Their connections are closed (the server stops serving first); the final snapshot
        # below holds everything they waited for.
        self._deferred.clear()
        self._executor.shutdown(wait=True)
        failed = self._unseen_failure()
        self._closed = True
        if failed is not None:
            self._fail(f"fsync failed: {failed}", since=self._synced)
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
        size = write_final_snapshot(self, generation)
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

    def _stop_child(self) -> None:
        """As Redis's SHUTDOWN aborts a running BGSAVE: the final snapshot written next holds
        everything the child's would, so the child is killed, not waited for (QA: a stopped
        child held the SIGTERM of the store for good; waiting also wrote the data twice). One
        in uninterruptible disk sleep dies only once its I/O ends: ``waitpid`` waits for that."""
        assert self._child is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._child, signal.SIGKILL)
        os.waitpid(self._child, 0)
        self._child = None
        self.dir.discard_partial_snapshot()
        log.info("snapshot_child_stopped", on="shutdown")
        self._notify(
            PersistenceError("the store stopped; its final snapshot holds every write", {})
        )

    @property
    def unsaved_writes(self) -> int:
        """Write commands held only in memory: a restart now would not have them."""
        return 0 if self._unsaved_from is None else self.recorded - self._unsaved_from

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
        forked_before_failure = self.error is not None and self._child_failures != self._failures
        if self._child is not None and forked_before_failure and waiter is not None:
            # The log lacks writes the running snapshot lacks too, so a backup of both would
            # miss acknowledged writes (QA: it answered success without one). The next
            # snapshot, forked after the failure, holds them.
            self._deferred.append(waiter)
            return
        if waiter is not None:
            self._waiters.append(waiter)
        if self._child is not None:
            return
        assert self._loop is not None and self.log is not None
        if not self._write_buffer():
            self._notify(PersistenceError("cannot snapshot: the log is not writable", {}))
            return
        if not self.holds_replies:
            # Written: sent now, as ``_flush`` would. Left held, they would wait for the old
            # log's fsync below, after the replies their connections build meanwhile (sent by
            # the next ``_flush``), and be aborted if it failed (review).
            self._send_held()
        old = self.log
        generation = old.generation
        try:
            ensure_snapshot_dir(self.dir.snapshot)  # removed meanwhile: the new log goes there
            self.log = AppendLog(self.dir.log_path(generation + 1), generation + 1)
            self._begin_log(generation, old.size)
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
        try:
            self._child = fork_snapshot(self.dir.snapshot, generation, self.engine.iter_state())
        except OSError as exc:
            # No process to spare (EAGAIN: a pids limit) or no memory (ENOMEM). Raised, it
            # left its waiters waiting, escaped a connection's callback (dropping it and every
            # call on it), and ended recovery for good (QA). The new log is in place: the
            # next snapshot covers it, and recovery tries again on its schedule.
            log.error("snapshot_failed", reason="fork", error=str(exc))
            self._notify(PersistenceError(f"the snapshot could not start: {exc.strerror}", {}))
            if self.error is not None:
                self._schedule_recovery()
            return
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
        try:
            self._child_done(status)
        except Exception as exc:
            # A loop callback's exception is only printed: the snapshot's callers would wait
            # for ever (QA: a stray file in the data directory did that, fixed in datadir).
            log.exception("snapshot_finish_failed")
            self._notify(InternalError(f"the snapshot's end could not be recorded: {exc!r}"))
        deferred, self._deferred = self._deferred, []
        for waiter in deferred:
            self.start_snapshot(waiter)  # the first forks, the others join it

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
            # Most likely the disk (full, read-only), or, killed, the OOM killer: a condition
            # to report, not a bug (500). QA: a child killed by a signal was "disk full?" too.
            if code > 0:
                message = "the snapshot could not be written (disk full?)"
            else:
                message = f"the snapshot's process was killed ({how['signal']}: out of memory?)"
            self._notify(PersistenceError(message, {}))
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


def _sync_and_close(log_file: AppendLog) -> None:
    try:
        log_file.fsync()
    finally:
        log_file.close()
