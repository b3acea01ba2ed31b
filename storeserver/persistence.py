"""Durability for the store: an append-only log of every change, and snapshots.

Design note
-----------
Files in ``STORE_DATA_DIR``:

- ``log-<generation>.aof``: append-only logs. Each entry holds the changes of one or more
  whole commands (those of one event-loop turn; a command is never split, so a batch is
  replayed whole or not at all): ``[length: u32][crc32: u32][msgpack list of changes]``, the
  changes being the engine's journal tuples (``Engine.drain_changes``).
- ``snapshot.mdb``: the whole state at some moment, in the same entry format; its first entry
  is ``[["meta", {"generation": G, ...}]]``, meaning "this includes every log up to G". From
  ``format`` 2 its last change is ``["meta", {"end": true, "changes": N, "generation": G}]``:
  a copy cut short at an entry boundary (every entry before the cut intact) is otherwise
  indistinguishable from a smaller state. Releases before it skip ``meta`` changes wherever
  they are (taking the generation from any in the first entry).

Start-up loads the snapshot, then replays the logs newer than G in order. A torn tail is cut
off with a warning, and with it every command of that loop turn (with ``always`` none of them
had been acknowledged). A torn tail is a bad last entry: cut short (a crash mid-write), or
bad and followed only by zero bytes (a file system that extended the file before its data
reached the disk). It normally ends the newest log; it may end an older one if every newer
log holds no whole entry (a power loss between a rotation and the old log's fsync), and then
those are cut too (``_cut_torn_tail``). A bad entry anywhere else, including a torn tail
followed by a log that holds entries, means real corruption and the store refuses to start
rather than serve half a history.

A snapshot is written by a forked child (as Redis's BGSAVE): the parent rotates to a new log
generation, forks, and goes on serving; the child writes ``snapshot.mdb.tmp`` from its
copy-on-write image, fsyncs it, renames it over ``snapshot.mdb`` and fsyncs the directory.
Once the child exits 0, the parent deletes the logs the snapshot covers. A crash at any point
leaves either the old snapshot with its logs or the new one with its logs.

These files hold every record (password hashes; in development the JWT signing key): each is
created owner-only (0600) whatever the umask, and a new data directory 0700.

Fsync policies (``STORE_FSYNC``), Redis's promises: ``always``: a write's reply is sent only
after its entry is on disk (group commit: one fsync covers every write made while the previous
one ran); ``everysec``: fsync once a second, so at most about a second is lost; ``no``: the OS
decides. Entries are written to the file at the end of each loop iteration (a page-cache write);
only ``fsync`` runs on a helper thread, which touches no store state.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from .errors import ProtocolError
from .protocol import pack_value, unpack_value

log = structlog.get_logger("storeserver.persistence")

_ENTRY = struct.Struct(">II")
SNAPSHOT = "snapshot.mdb"
LOCK = "store.lock"
SNAPSHOT_CHUNK = 1000  # changes per snapshot entry
FORMAT = 2  # 2: the snapshot ends with an end marker holding its number of changes
_MAX_ENTRY = 1 << 30
FILE_MODE = 0o600
DIR_MODE = 0o700


class CorruptData(RuntimeError):
    """A data file is damaged in a way that cannot be repaired safely."""


class DataDirBusy(RuntimeError):
    """Another store process holds the data directory."""


def encode_entry(changes: list[Any]) -> bytes:
    body = pack_value(changes)
    return _ENTRY.pack(len(body), zlib.crc32(body)) + body


@dataclass
class TornTail:
    """The damaged end of a file: where its last whole entry ends, and why the rest is bad."""

    path: Path
    offset: int
    reason: str
    lost_bytes: int

    def truncate(self) -> None:
        log.warning(
            "log_torn_tail_truncated",
            file=str(self.path),
            offset=self.offset,
            reason=self.reason,
            lost_bytes=self.lost_bytes,
        )
        with open(self.path, "r+b") as fh:
            fh.truncate(self.offset)
            os.fsync(fh.fileno())

    def corrupt(self) -> CorruptData:
        return _corrupt(self.path, self.offset, self.reason)


def _corrupt(path: Path, pos: int, problem: str) -> CorruptData:
    if path.name == SNAPSHOT:
        # Its logs continue it: with no snapshot they would replay over nothing (a hole).
        advice = "Restore the data directory (snapshot and logs together) from a backup."
    else:
        advice = (
            "Restore the data directory from a backup, or move the damaged log and every "
            "newer one away to start from the history before it (losing their writes)."
        )
    return CorruptData(
        f"{path.name} is corrupt at byte {pos} ({problem}); refusing to start. {advice}"
    )


class EntryReader:
    """The entries of one file, in order. Iteration stops at a torn tail (kept in ``torn``);
    damage followed by more entries' data raises ``CorruptData``.

    A torn tail is a bad last entry: cut short (a crash mid-append), or whose checksum or
    body is bad with nothing after it but zero bytes (some file systems extend the size of a
    file before its data reach the disk: XFS, ext4 with delayed allocation). A zero header
    reads as length 0, crc 0, which matches the empty body; no real entry is empty, nor
    starts with a zero byte, so zeros hide no entry.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.torn: TornTail | None = None

    def __iter__(self) -> Iterator[list[Any]]:
        data = self.path.read_bytes()
        pos, size = 0, len(data)
        while pos < size:
            problem = None
            end = size
            if size - pos < _ENTRY.size:
                problem = "incomplete header"
            else:
                length, crc = _ENTRY.unpack_from(data, pos)
                end = pos + _ENTRY.size + length
                if length > _MAX_ENTRY or end > size:
                    if _damaged_length(data, pos + _ENTRY.size, crc):
                        raise _corrupt(self.path, pos, "damaged length: whole entries follow")
                    problem, end = "incomplete entry", size
                elif zlib.crc32(data[pos + _ENTRY.size : end]) != crc:
                    problem = "checksum mismatch"
            if problem is None:
                try:
                    changes = unpack_value(data[pos + _ENTRY.size : end])
                except ProtocolError:
                    problem = "undecodable entry"
                else:
                    if not isinstance(changes, list):
                        problem = "malformed entry"
            if problem is not None:
                if end < size and data.count(0, end) == size - end:
                    problem += ", then only zero bytes"
                elif end < size:
                    raise _corrupt(self.path, pos, problem)  # more data after it: the middle
                self.torn = TornTail(self.path, pos, problem, size - pos)
                return
            yield changes
            pos = end


_LENGTH_CHECK_BYTES = 1 << 20
"""How far past a header whose length runs off the end of the file ``_damaged_length`` looks
for the entry its checksum describes (a byte at a time: ~0.3 s per MiB, and only then)."""


def _damaged_length(data: bytes, body: int, crc: int) -> bool:
    """Whether the bytes after a header whose length runs past the end of the file hold the
    entry its checksum covers: then the length field was damaged, the rest of the file is
    whole entries (the middle of a log, to refuse), not an append cut short (a torn tail,
    whose checksum covers bytes that never reached the file). Real entries are not empty."""
    running = 0
    for end in range(body + 1, min(len(data), body + _LENGTH_CHECK_BYTES) + 1):
        running = zlib.crc32(data[end - 1 : end], running)
        if running == crc:
            try:
                return isinstance(unpack_value(data[body:end]), list)
            except ProtocolError:
                continue
    return False


def read_entries(path: Path, *, allow_torn_tail: bool) -> Iterator[list[Any]]:
    """Yield each entry's change list. A torn tail is truncated (when allowed) with a warning."""
    reader = EntryReader(path)
    yield from reader
    if reader.torn is not None:
        if not allow_torn_tail:
            raise reader.torn.corrupt()
        reader.torn.truncate()


# macOS has no fdatasync (Python leaves it out there): fsync does the job, with more work.
_fdatasync = getattr(os, "fdatasync", os.fsync)


def read_snapshot(path: Path, apply: Any) -> tuple[int, int]:
    """Apply every change of a snapshot; ``(generation, changes)``. ``CorruptData`` if a
    snapshot of format 2 or later lacks its end marker or holds another number of changes."""
    generation, fmt, count = 0, 1, 0
    end: dict[str, Any] | None = None
    for index, changes in enumerate(read_entries(path, allow_torn_tail=False)):
        for change in changes:
            if end is not None:
                raise CorruptData(f"{path} has changes after its end marker; refusing to start")
            if change[0] == "meta":
                meta = change[1]
                if meta.get("end") is True:
                    end = meta
                elif index == 0:
                    generation, fmt = int(meta["generation"]), int(meta.get("format", 1))
                continue
            apply(tuple(change))
            count += 1
    if fmt >= 2 and (end is None or end.get("changes") != count):
        expected = "no end marker" if end is None else f"its end marker says {end['changes']}"
        raise CorruptData(
            f"{path} is cut short ({count} changes read, {expected}): a damaged or partial"
            " copy; refusing to start on part of the data. Restore it from a backup."
        )
    return generation, count


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(path: Path, generation: int, state: Iterable[tuple[Any, ...]]) -> int:
    """Write ``state`` to ``path`` atomically (tmp, fsync, rename, fsync dir); return bytes."""
    tmp = path.with_name(path.name + ".tmp")
    size = 0
    # A tmp file left by a crash keeps its mode if reopened: start from a new one, created
    # owner-only (os.replace keeps that mode for snapshot.mdb).
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            meta = {"generation": generation, "created_at": time.time(), "format": FORMAT}
            chunk: list[Any] = [("meta", meta)]
            count = 0
            for change in state:
                chunk.append(change)
                count += 1
                if len(chunk) >= SNAPSHOT_CHUNK:
                    size += fh.write(encode_entry(chunk))
                    chunk = []
            # With the generation again: a release before format 2 reads it from every
            # ``meta`` of the first entry, which is also the last in a small snapshot.
            end = {"end": True, "changes": count, "generation": generation}
            chunk.append(("meta", end))
            size += fh.write(encode_entry(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        # A snapshot that failed (disk full, most likely) must not leave its part behind:
        # that file alone could hold the space the log needs, and refuse every write.
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size


def _generation(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


@dataclass
class LoadReport:
    snapshot_generation: int = 0
    snapshot_changes: int = 0
    log_entries: int = 0
    logs: list[str] = field(default_factory=list)
    seconds: float = 0.0


class DataDir:
    """The files of one data directory: which logs exist, loading, rotating, pruning."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self.snapshot = root / SNAPSHOT

    def logs(self) -> list[Path]:
        return sorted(self.root.glob("log-*.aof"), key=_generation)

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
                body = fh.read(min(length, _MAX_ENTRY))
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
        self.restrict_modes()
        if self.snapshot.exists():
            report.snapshot_generation, report.snapshot_changes = read_snapshot(
                self.snapshot, apply
            )
        logs = self.logs_after(report.snapshot_generation)
        self.check_history(report.snapshot_generation, logs)
        for i, path in enumerate(logs):
            reader = EntryReader(path)
            for changes in reader:
                for change in changes:
                    apply(tuple(change))
                report.log_entries += 1
            report.logs.append(path.name)
            if reader.torn is not None:
                report.logs += [p.name for p in logs[i + 1 :]]
                _cut_torn_tail(reader.torn, logs[i + 1 :])
                break
        report.seconds = time.perf_counter() - started
        return report

    def check_history(self, snapshot_generation: int, logs: list[Path]) -> None:
        """The logs newer than the snapshot must follow it with no generation missing: a
        missing log is missing writes, and replaying the later logs over that hole makes a
        state that never was (a row's later patch without its insert). So a gap, a log
        removed, or a snapshot removed (with none, the history starts at log 1), refuses to
        start; ``storeserver.backup`` checks its copies the same way."""
        expected = snapshot_generation + 1
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
        for path in [self.snapshot, *self.logs()]:
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
                path.unlink(missing_ok=True)
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
        if next(iter(reader), None) is not None:
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


class AppendLog:
    """The open log file of the current generation."""

    def __init__(self, path: Path, generation: int) -> None:
        self.path = path
        self.generation = generation
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError:
            # No partial entry left behind (disk full midway): once the store recovers it writes
            # a newer log, and a torn entry is only tolerated where no entry follows it.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(data)

    def fsync(self) -> None:
        # fdatasync: the data and the file size (all an append needs to be read back), without
        # the timestamps fsync would also write: less work per group commit (Redis does the same).
        _fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def fork_snapshot(path: Path, generation: int, state: Iterable[tuple[Any, ...]]) -> int:
    """Fork a child that writes the snapshot and exits; return its pid (parent side).

    No ``gc.collect()`` first: over 1M records it held the loop for ~85 ms, more than the fork.
    Freezing moves every object out of the collector's reach (cheap), so neither side's
    collector walks, and thereby copies, the shared pages. The parent stays frozen: the store
    keeps its records out of the collector anyway (``collector.Freezer``).
    """
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # child: no event loop, no logging, no atexit: write and leave
        code = 1
        try:
            # Drop the inherited descriptors (the listening socket, clients, the log): a child
            # outliving a crashed store would otherwise keep accepting on its socket, so
            # clients would hang and the restarted store find it "already listening".
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            gc.disable()  # the collector would touch (and copy) every object's page
            write_snapshot(path, generation, state)
            code = 0
        except BaseException as exc:
            # The reason, so the parent's "snapshot_failed" is not the only trace: a line like
            # the store's others, written here rather than by its logger, whose lock and
            # buffered stdout another thread may have held at the fork. One small write: atomic.
            with contextlib.suppress(BaseException):
                os.write(1, _child_log_line("snapshot_child_failed", error=repr(exc)))
        finally:
            os._exit(code)
    return pid


_stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _child_log_line(event: str, **fields: Any) -> bytes:
    """An error line with the fields ``logs.configure_logging`` gives every other one."""
    process = structlog.contextvars.get_contextvars().get("process", "store")
    line = _stamp(None, "error", {**fields, "event": event, "process": process, "level": "error"})
    return orjson.dumps(line) + b"\n"
