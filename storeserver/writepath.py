"""The write path of a running store: one log entry per loop turn, fsync, held replies.

``WritePath`` is the part of ``Durability`` every write command goes through, and what a
failed log write or fsync does to it; ``durability`` (its subclass) loads and closes the files,
recovers after a failure and schedules snapshots.

Write path: each write command's changes are queued (``record``); at the end of the loop turn
(``_flush``) the turn's commands become one log entry (one encode, one checksum, one
``write``). Commands are never split across entries, so each is still replayed whole or not
at all; an entry is closed early once it holds ``ENTRY_CHANGES`` changes. A turn whose
changes would encode to more than ``logfile.MAX_ENTRY`` bytes fails as a log write does.

The replies of a turn's writes are held (``hold``) until their entries are written: with
``everysec`` and ``no`` they are sent right after the write (to the page cache, which outlives
the process: QA, sent before it, a ``kill -9`` lost acknowledged writes, as Redis, which writes
its AOF before any reply, does not); with ``always`` once an fsync of the log, started after
their entries were written, succeeds. Under ``always``, after any failure (a write, an fsync,
opening a new log) the replies held then are aborted, never sent, even if a later fsync
succeeds: a reply is sent only for a write known to be on disk (``_fail``, ``_fsync_done``).
Under ``everysec`` and ``no`` a failed write sends them: the writes are in memory, which the
recovery snapshot saves.

Fsync policies (``STORE_FSYNC``), Redis's promises: ``always``: a write's reply is sent only
after its entry is on disk (group commit: one fsync covers every write made while the previous
one ran); ``everysec``: fsync once a second, so at most about a second is lost; ``no``: the OS
decides. Entries are written to the file at the end of each loop iteration (a page-cache write);
only ``fsync`` runs on a helper thread, which touches no store state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from .errors import PersistenceError
from .logfile import AppendLog, EntryTooLarge, encode_entry

log = structlog.get_logger("storeserver.writepath")

ENTRY_CHANGES = 10_000
"""Changes after which the current entry is encoded and a new one started (same loop turn)."""


class Sink(Protocol):
    """Where held replies go once they may be sent (a client connection)."""

    def send(self, data: bytes) -> None: ...
    def abort(self) -> None: ...


class WritePath:
    """Queues each write command's changes, writes them once per loop turn, syncs them as
    ``policy`` says and sends the replies held for them (``always``) once they are on disk.

    The base of ``Durability``, which sets ``rewrite_bytes`` and ``_child`` and provides
    ``start_snapshot`` (a log past ``rewrite_bytes`` is compacted) and ``_schedule_recovery``.
    """

    rewrite_bytes: int
    _child: int | None

    def __init__(self, policy: str) -> None:
        self.policy = policy
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
        self._pending: list[tuple[Any, ...]] = []  # this turn's changes, not yet encoded
        self._buffer = bytearray()  # encoded entries, not yet written
        self._unencodable: str | None = None  # why this turn's changes make no entry
        self._flush_scheduled = False
        self._dirty = False  # written since the last fsync
        self._held: list[tuple[Sink, bytes]] = []
        # Syncs of held replies in flight: a log rotation queues the old log's beside the live
        # one's (QA: a flag, cleared by the first to end, let ``settle`` return at once).
        self._syncing = 0
        self._background_sync = False  # everysec: an fsync of its own is under way
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="store-fsync")
        # Every sync on the thread whose outcome the loop has not taken yet (``close``).
        self._unseen: set[Future[None]] = set()
        # Closed: ``close`` took every sync's outcome, and its final snapshot holds every
        # write; a sync's callback the loop runs afterwards has nothing left to do (QA: it
        # failed the store again, after a stop that had saved everything).
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._everysec: asyncio.TimerHandle | None = None

    if TYPE_CHECKING:

        def start_snapshot(self) -> None: ...
        def _schedule_recovery(self) -> None: ...

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
        """Whether every reply that comes after a write's waits for the disk (``always``): a
        connection then runs even a lone request in its turn. Otherwise a write's reply waits
        only for the log write, at the end of the loop turn (``hold``)."""
        return self.policy == "always"

    def hold(self, sink: Sink, data: bytes) -> None:
        """Keep a reply until the entries recorded before it are written (``everysec``,
        ``no``) or on disk (``always``).

        Under ``always``, one held once a failure was found is aborted at once, as ``_fail``
        aborts those held then: its write was recorded before the failure (writes are refused
        after it), in the same loop turn. QA: a snapshot pipelined after an insert wrote the
        log mid-turn and failed; the insert's reply, held after that, went out once a later
        fsync succeeded, though its entry was never written."""
        if self.error is not None and self.holds_replies:
            sink.abort()
            return
        self._held.append((sink, data))

    async def settle(self, timeout: float) -> None:
        """At a clean stop, once no command runs any more: write what is pending and wait,
        at most ``timeout`` seconds, until the replies held for the disk are sent (or aborted
        by a failure). QA: the stop closed connections with them held, and their clients saw
        an unknown outcome for writes the final snapshot then kept."""
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        while self._held or self._syncing:
            if not self._syncing:
                if not self._write_buffer() or self.log is None:
                    return  # failed: ``_fail`` dealt with the held replies
                if not self.holds_replies:
                    self._send_held()
                    return
                self._start_fsync()
            if self._loop.time() >= deadline:
                return
            await asyncio.sleep(0.001)

    def _encode_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            try:
                self._buffer += encode_entry(pending)
            except EntryTooLarge as exc:
                # Over 4 GiB of records changed in one loop turn (one command may not be
                # split). Failed at the flush (``_write_buffer``), once the turn's replies are
                # held, so they are aborted with the others; a snapshot then holds the changes.
                self._unencodable = str(exc)

    def _write_buffer(self) -> bool:
        self._encode_pending()
        if self._unencodable is not None:
            reason, self._unencodable = self._unencodable, None
            self._buffer = bytearray()
            self._fail(f"log entry not written: {reason}", since=self._written)
            return False
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
        if self._held:
            if not self.holds_replies:
                self._send_held()  # written: in the page cache, past the process's end
            elif not self._syncing:
                self._start_fsync()
        if self._child is None and self.log is not None and self.log.size > self.rewrite_bytes:
            self.start_snapshot()

    def _send_held(self) -> None:
        batch, self._held = self._held, []
        _send(batch)

    def _start_fsync(self) -> None:
        assert self.log is not None
        self._dirty = False
        self._sync_held(self.log.fsync)

    def _sync_held(self, sync: Callable[[], None]) -> None:
        """Run ``sync`` on the fsync thread; the replies held so far are sent once it succeeds."""
        batch, self._held = self._held, []
        failures, written = self._failures, self._written
        self._syncing += 1
        future = self._run_sync(sync)
        future.add_done_callback(lambda f: self._fsync_done(f, batch, failures, written))

    def _fsync_done(
        self,
        future: asyncio.Future[None],
        batch: list[tuple[Sink, bytes]],
        failures: int,
        written: int,
    ) -> None:
        self._syncing -= 1
        if self._closed:
            return
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
            _send(batch)
        # Replies held since may be of commands whose changes are still pending (this turn's
        # ``_flush`` is queued, not run): written first, so the next fsync covers them (QA:
        # an fsync started with them in memory only acknowledged them once it ended).
        if self._held and self._write_buffer():
            self._start_fsync()

    def _every_second(self) -> None:
        assert self._loop is not None
        # Not while the last one runs: a disk slower than a second per fsync would queue one
        # more every second for as long as it stays slow (review), as Redis postpones too.
        idle = not self._syncing and not self._background_sync
        if self._dirty and idle and self.log is not None:
            self._dirty = False
            self._background_sync = True
            written = self._written
            self._run_sync(self.log.fsync).add_done_callback(
                lambda f: self._check_background_fsync(f, written)
            )
        self._everysec = self._loop.call_later(1.0, self._every_second)

    def _run_sync(self, sync: Callable[[], None]) -> asyncio.Future[None]:
        """``sync`` on the fsync thread; the loop learns its outcome from the future's
        callbacks, or ``close`` from ``_unseen_failure`` if the loop never ran them."""
        assert self._loop is not None
        done = self._executor.submit(sync)
        self._unseen.add(done)
        future = asyncio.wrap_future(done, loop=self._loop)
        future.add_done_callback(lambda _: self._unseen.discard(done))  # before the others
        return future

    def _unseen_failure(self) -> BaseException | None:
        """Once the fsync thread has stopped: a failure of a sync whose callbacks never ran.
        QA: a stop while a background fsync failed fsynced the log again, which Linux then
        reports as a success, and counted no write as unsaved."""
        unseen, self._unseen = self._unseen, set()
        for done in unseen:
            if done.done() and done.exception() is not None:
                return done.exception()
        return None

    def _check_background_fsync(self, future: asyncio.Future[None], written: int) -> None:
        self._background_sync = False
        if self._closed:
            return
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
        # Under always the replies still held are never sent: a failed write left their
        # entries out of the log, and after a failed fsync the kernel may have dropped the
        # dirty pages of entries written meanwhile, so a later fsync that succeeds (the next
        # rotation's) proves nothing.
        # Their clients see the connection drop; so do those of batches whose fsync is queued
        # (_fsync_done). Only a snapshot forked after this failure holds their writes for sure.
        held, self._held = self._held, []
        if self.holds_replies:
            _abort(held)
        else:
            # everysec and no never promised the disk: their writes are in memory, which the
            # recovery snapshot saves, as they were before replies waited for the log write.
            # Aborted, the connection would take every other call on it along.
            _send(held)
        self._schedule_recovery()


def _send(replies: list[tuple[Sink, bytes]]) -> None:
    for sink, data in replies:
        sink.send(data)


def _abort(replies: list[tuple[Sink, bytes]]) -> None:
    for sink, _ in replies:
        sink.abort()
