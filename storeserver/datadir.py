"""The data directory (``STORE_DATA_DIR``): its files, loading them at start-up, its lock,
and pruning the logs a snapshot covers.

Separate from the formats it reads (``logfile``, ``snapshots``): this module knows the
directory's layout, the order of its history (generations) and what start-up does with a
torn tail. Files: ``log-<generation>.aof`` (``logfile``), ``snapshot.mdb`` (``snapshots``)
and ``store.lock``.

Start-up loads the snapshot, then replays the logs newer than G in order. A torn tail is cut
off with a warning, and with it every command of that loop turn (with ``always`` none of them
had been acknowledged). A torn tail is a bad last entry: cut short (a crash mid-write), or
bad and followed only by zero bytes (a file system that extended the file before its data
reached the disk). It normally ends the newest log; it may end an older one if every newer
log holds no whole entry (a power loss between a rotation and the old log's fsync), and then
those are cut too (``_cut_torn_tail``). A log's first entry (``logfile.LOG_BEGINS``) says
where the log before it ended: one found shorter, cut at an entry boundary (nothing in it shows
that), ends the history the same way if no write follows, and refuses to start if one does
(``CutLog``). A bad entry anywhere else, including a torn tail
followed by a log that holds writes, means real corruption and the store refuses to start
rather than serve half a history. So does a whole entry it cannot apply: a kind a newer release
wrote, or a malformed one (``journal.unreadable_entry``).

These files hold every record (password hashes; in development the JWT signing key): each is
created owner-only (0600) whatever the umask, and a new data directory 0700.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from .journal import REPLAY_ERRORS, unreadable_entry
from .logfile import (
    _ENTRY,
    DIR_MODE,
    FILE_MODE,
    SNAPSHOT,
    CorruptData,
    EntryReader,
    TornTail,
    log_begins,
)
from .protocol import unpack_value
from .snapshots import read_snapshot

log = structlog.get_logger("storeserver.datadir")

LOCK = "store.lock"


class DataDirBusy(RuntimeError):
    """Another store process holds the data directory."""


_LOG_NAME = re.compile(r"log-([0-9]{1,18})\.aof")
"""A log's name: the store writes ``log-<10 digits>.aof`` (``log_path``)."""


def _generation(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


@dataclass
class LoadReport:
    snapshot_generation: int = 0
    snapshot_changes: int = 0
    log_entries: int = 0
    logs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    last_log: tuple[int, int] | None = None  # the last log replayed whole: (generation, bytes)


@dataclass
class CutLog:
    """A log whose end was lost: the next log began when it held ``expected`` bytes, and it
    holds ``found`` (a power loss cut it at an entry boundary, where its own entries show
    nothing)."""

    path: Path
    found: int
    expected: int
    next_log: Path  # the log whose first entry says where ``path`` ended

    def facts(self) -> dict[str, Any]:
        return {"file": str(self.path), "bytes": self.found, "expected_bytes": self.expected}

    def corrupt(self, newer: Path) -> CorruptData:
        """Writes in ``newer`` after the cut: replayed, they would make a state that never
        was (a row deleted at the end of the cut log comes back); dropped, writes are lost."""
        how = "lost its end" if self.found < self.expected else "grew after it was closed"
        return CorruptData(
            f"{self.path.name} holds {self.found} bytes, but {self.next_log.name} began when it"
            f" held {self.expected}: it {how} (a power loss before it reached the disk), and"
            f" {newer.name} holds writes after it; refusing to start. Move {newer.name} and any"
            " newer logs away to start without their writes, or restore the data directory"
            " from a backup."
        )


def _cut_before(
    previous: tuple[Path, int] | None, begins: tuple[int, int], path: Path
) -> CutLog | None:
    """The log before ``path``, if it is not as long as ``path`` says it was (``begins``)."""
    if previous is None:
        return None
    before, found = previous
    generation, expected = begins
    if generation != _generation(before) or found == expected:
        return None
    return CutLog(before, found, expected, path)


class DataDir:
    """The files of one data directory: which logs exist, loading, rotating, pruning."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if root.exists() and not root.is_dir():  # mkdir's own error read "File exists" only
            raise NotADirectoryError(f"STORE_DATA_DIR {root} is a file, not a directory")
        try:
            root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:  # its message named a path only: say which setting it is
            message = f"STORE_DATA_DIR {root}: cannot create it: {exc.strerror}"
            raise type(exc)(message) from exc
        self.snapshot = root / SNAPSHOT

    def logs(self) -> list[Path]:
        """The store's logs, oldest first. A file only named like one (``log-old.aof``, a
        damaged log set aside as ``log-0000000001.damaged.aof``) is not one of them: QA, its
        name made start-up fail with a traceback and a running store's snapshot never
        answer (``foreign_logs`` names them for a warning)."""
        return sorted(
            (p for p in self.root.glob("log-*.aof") if _LOG_NAME.fullmatch(p.name)),
            key=_generation,
        )

    def foreign_logs(self) -> list[str]:
        """Files named ``log-*.aof`` that are not the store's logs: left alone, never read."""
        return sorted(
            p.name for p in self.root.glob("log-*.aof") if not _LOG_NAME.fullmatch(p.name)
        )

    def logs_after(self, generation: int) -> list[Path]:
        """The logs newer than a snapshot of ``generation`` (the ones to replay over it)."""
        return [path for path in self.logs() if _generation(path) > generation]

    def log_path(self, generation: int) -> Path:
        return self.root / f"log-{generation:010d}.aof"

    def snapshot_generation(self) -> int:
        """The generation in the snapshot's header (its first entry only is read)."""
        if not self.snapshot.exists():
            return 0
        with open(self.snapshot, "rb") as fh:
            header = fh.read(_ENTRY.size)
            if len(header) == _ENTRY.size:
                length, crc = _ENTRY.unpack(header)
                body = fh.read(length)
                if len(body) == length and zlib.crc32(body) == crc:
                    changes = unpack_value(body)
                    kind, meta = changes[0]
                    if kind == "meta":
                        return int(meta["generation"])
        raise CorruptData(f"{self.snapshot} has no valid header; refusing to start")

    def load(self, apply: Any) -> LoadReport:
        """Apply the snapshot, then every newer log; return what was read."""
        started = time.perf_counter()
        report = LoadReport()
        foreign = self.foreign_logs()
        if foreign:
            log.warning(
                "data_dir_foreign_files",
                files=foreign[:20],
                count=len(foreign),
                note="named like logs but not the store's: left alone, not read",
            )
        self.restrict_modes()
        if self.snapshot.exists():
            report.snapshot_generation, report.snapshot_changes = read_snapshot(
                self.snapshot, apply
            )
        logs = self.logs_after(report.snapshot_generation)
        self.check_history(report.snapshot_generation, logs)
        previous: tuple[Path, int] | None = None  # the log replayed before, and where it ended
        cut: CutLog | None = None  # a log found shorter than the next one says it was
        for i, path in enumerate(logs):
            reader = EntryReader(path)
            change: Any = None
            try:
                for n, changes in enumerate(reader):
                    begins = log_begins(changes) if n == 0 else None
                    if begins is not None:
                        cut = cut or _cut_before(previous, begins, path)
                        continue
                    if cut is not None:
                        raise cut.corrupt(path)
                    for change in changes:
                        apply(tuple(change))
                    report.log_entries += 1
            except REPLAY_ERRORS as exc:  # an entry kind of a newer release, a malformed entry
                raise unreadable_entry(path, change, exc) from exc
            report.logs.append(path.name)
            if reader.torn is not None:
                report.logs += [p.name for p in logs[i + 1 :]]
                _cut_torn_tail(reader.torn, logs[i + 1 :])
                break
            previous = (path, reader.end)
        if cut is not None:
            # No write follows it: as a torn tail that ends the history. The newer logs hold
            # only their first entries: emptied, so that the next start does not find the cut
            # again behind the writes this one will log.
            log.warning("log_tail_lost", **cut.facts())
            _empty(logs[logs.index(cut.path) + 1 :])
        if logs:  # as it is on disk now, torn tails cut: where the next log says it began
            report.last_log = (_generation(logs[-1]), logs[-1].stat().st_size)
        report.seconds = time.perf_counter() - started
        return report

    def check_history(self, snapshot_generation: int, logs: list[Path]) -> None:
        """The logs newer than the snapshot must follow it with no generation missing: a
        missing log is missing writes, and replaying the later logs over that hole makes a
        state that never was (a row's later patch without its insert). So a gap, a log
        removed, or a snapshot removed (with none, the history starts at log 1), refuses to
        start; ``storeserver.backup`` checks its copies the same way."""
        expected = snapshot_generation + 1
        for earlier, path in itertools.pairwise(logs):
            if _generation(earlier) == _generation(path):
                # ``log-1.aof`` beside ``log-0000000001.aof`` (a copy renamed by hand): QA,
                # reported as a log missing, when one is there twice.
                raise CorruptData(
                    f"{earlier.name} and {path.name} are both log generation"
                    f" {_generation(path)}: refusing to start on two histories. Keep the one"
                    " the store wrote (log-<10 digits>.aof) and move the other away."
                )
        for path in logs:
            if _generation(path) != expected:
                missing = self.log_path(expected).name
                before = (
                    f"snapshot of generation {snapshot_generation}"
                    if snapshot_generation
                    else "start"
                )
                raise CorruptData(
                    f"{missing} is missing between the {before} and {path.name}: refusing to"
                    " start on a history with a hole (its writes would be lost silently)."
                    " Restore the data directory from a backup with all its files."
                )
            expected += 1

    def lock(self) -> int:
        """Hold an exclusive ``flock`` on ``store.lock`` until the returned descriptor closes.

        Two stores on one directory would each replay it, then write interleaved logs and
        snapshots: one's acknowledged writes vanish at the next start. The kernel drops the lock
        when the process dies (``kill -9`` too); the snapshot child closes its inherited copy
        (a lock belongs to the open file, so the parent keeps it).
        """
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"another store (pid {holder}) is using the data directory {self.root}: two"
                " stores on one directory lose each other's writes; refusing to start"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def restrict_modes(self) -> None:
        """Make existing data files owner-only: a snapshot written before files were created
        0600 (or files restored with looser modes) would otherwise stay readable by others
        until the next snapshot replaces it, which may be days away."""
        # Files only named like logs too: a damaged log set aside in place still holds data.
        for path in [self.snapshot, *self.root.glob("log-*.aof")]:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mode & 0o077:
                    os.chmod(path, FILE_MODE)
                    log.warning("data_file_mode_restricted", file=str(path))

    def next_generation(self) -> int:
        generations = [_generation(p) for p in self.logs()]
        return max([self.snapshot_generation(), *generations]) + 1

    def prune(self, up_to_generation: int) -> None:
        for path in self.logs():
            if _generation(path) <= up_to_generation:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # left for the next snapshot's pruning to retry
                    log.warning("log_prune_failed", file=str(path), error=str(exc))
        self.discard_partial_snapshot()

    def discard_partial_snapshot(self) -> None:
        """Remove what an unfinished snapshot wrote (it is never read)."""
        self.snapshot.with_name(SNAPSHOT + ".tmp").unlink(missing_ok=True)


def _cut_torn_tail(torn: TornTail, newer_logs: list[Path]) -> None:
    """Truncate a torn tail, which must end the history: the newer logs hold no whole entry.

    A torn tail usually ends the newest log. It can end an older one: a rotation creates log
    G+1 and syncs the directory at once, while G is synced later on the fsync thread; a power
    loss in between leaves G torn and G+1 empty (or holding only a torn tail of its own).

    A torn G followed by a G+1 holding entries can happen too: the kernel may write G+1's
    pages back before G's. Under ``always`` those entries were not acknowledged (every fsync
    of G+1 queues on the one fsync thread behind G's, and a reply waits for its log's fsync),
    but not always so: a job finishing after G's fsync failed is written to G+1 and may be
    acknowledged; under ``everysec`` and ``no`` they may have been acknowledged anyway.
    Replaying them after a cut G would replay a history with a hole, and dropping them would
    drop writes: neither is done silently, the store refuses to start.
    """
    tails = [torn]
    for path in newer_logs:  # all checked before anything is cut
        reader = EntryReader(path)
        if any(log_begins(changes) is None for changes in reader):  # a write: not its start
            raise CorruptData(
                f"{torn.path.name} has a torn tail at byte {torn.offset} ({torn.reason}), but"
                f" the newer log {path.name} holds entries; refusing to start. Move"
                f" {path.name} and any newer logs away to start without their writes, or"
                " restore the data directory from a backup."
            )
        if reader.torn is not None:
            tails.append(reader.torn)
    for tail in tails:
        tail.truncate()
    # Emptied, the first entries too: each says where the log before it ended, before the
    # cut, and the next start would take that for a log cut at an entry boundary once writes
    # follow (review: refused, after a torn tail cut and a failed start-up snapshot).
    _empty(newer_logs)


def _empty(logs: list[Path]) -> None:
    """Truncate ``logs`` to nothing (each holds no write, only where it began)."""
    for path in logs:
        with open(path, "r+b") as fh:
            fh.truncate(0)
            os.fsync(fh.fileno())
