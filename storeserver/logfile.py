"""The data files' entry format, reading entries back, and the log a running store appends to.

Every data file is a run of entries in one format (``snapshot.mdb`` too, see ``snapshots``).
This module holds that format, the reader that tells a torn tail from corruption, and the open
log file; it is separate from the snapshot (``snapshots``) and from the data directory
(``datadir``: which files exist, loading them at start-up), which both read through it.

- ``log-<generation>.aof``: append-only logs. Each entry holds the changes of one or more
  whole commands (those of one event-loop turn; a command is never split, so a batch is
  replayed whole or not at all): ``[length: u32][crc32: u32][msgpack list of changes]``, the
  changes being the engine's journal tuples (``Engine.drain_changes``).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .errors import ProtocolError
from .protocol import decoded_length, pack_value, unpack_value

log = structlog.get_logger("storeserver.logfile")

_ENTRY = struct.Struct(">II")
SNAPSHOT = "snapshot.mdb"  # here for the advice of a corrupt file's message (``_corrupt``)
MAX_ENTRY = (1 << 32) - 1
"""An entry's body may take any length its u32 header holds: the writers never make a
longer one (``encode_entry`` refuses it). The reader took at most 1 GiB, which a snapshot of
1,000 records of 1.1 MB each passed: written, then refused at start (the store could not
start again)."""
FILE_MODE = 0o600
DIR_MODE = 0o700


class CorruptData(RuntimeError):
    """A data file is damaged in a way that cannot be repaired safely."""


class EntryTooLarge(ValueError):
    """Changes that would encode to more than ``MAX_ENTRY`` bytes: not an entry."""


def encode_entry(changes: list[Any]) -> bytes:
    return encode_body(pack_value(changes))


def encode_packed(changes: list[bytes]) -> bytes:
    """``encode_entry`` of changes each encoded already (``pack_value``): the same bytes."""
    count = len(changes)
    if count < 16:
        header = bytes((0x90 | count,))
    elif count < 1 << 16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return encode_body(header + b"".join(changes))


def encode_body(body: bytes) -> bytes:
    """The entry of a body already encoded (a msgpack list of changes)."""
    if len(body) > MAX_ENTRY:
        raise EntryTooLarge(f"{len(body)} bytes of changes in one entry (at most {MAX_ENTRY})")
    return _ENTRY.pack(len(body), zlib.crc32(body)) + body


LOG_BEGINS = "log_begins"
"""The kind of a log's first entry, ``[LOG_BEGINS, generation, bytes]``: the log before it
(``generation``) held ``bytes`` when this one was opened. A power loss can cut that log's
tail at an entry boundary while this one's entries reached the disk; nothing in that log
shows the cut, so this entry does (``datadir.DataDir.load``)."""


def log_begins_entry(previous_generation: int, previous_bytes: int) -> bytes:
    return encode_entry([[LOG_BEGINS, previous_generation, previous_bytes]])


def log_begins(changes: list[Any]) -> tuple[int, int] | None:
    """``(generation, bytes)`` if ``changes`` (an entry) is a ``LOG_BEGINS`` entry."""
    if len(changes) != 1 or not isinstance(first := changes[0], list) or len(first) != 3:
        return None
    kind, generation, size = first
    if kind == LOG_BEGINS and type(generation) is int and type(size) is int:
        return generation, size
    return None


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
        self.end = 0  # where the whole entries read end (the file's size, or the torn tail's)

    def __iter__(self) -> Iterator[list[Any]]:
        data = self.path.read_bytes()
        pos, size = 0, len(data)
        self.end = size
        while pos < size:
            problem = None
            end = size
            if size - pos < _ENTRY.size:
                problem = "incomplete header"
            else:
                length, crc = _ENTRY.unpack_from(data, pos)
                end = pos + _ENTRY.size + length
                if end > size:
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
                self.end = pos
                return
            yield changes
            pos = end


def _damaged_length(data: bytes, body: int, crc: int) -> bool:
    """Whether the bytes after a header whose length runs past the end of the file hold a
    whole entry: then the length field was damaged, the rest of the file is that entry and
    more (the middle of a log, to refuse), not an append cut short (a torn tail, whose body
    never reached the file whole). The body is one msgpack value: where it ends is read from
    it, at any size (QA: looked for in the next 1 MiB only, a damaged length on a 1.6 MB
    entry passed for a torn tail, and 50 whole entries after it were cut with it). A body
    that decodes but whose checksum does not match is damage too if whole entries follow."""
    length = decoded_length(data, body)
    if length is None:
        return False
    end = body + length
    if zlib.crc32(data[body:end]) == crc:
        return True
    return end < len(data) and _whole_entries(data, end)


def _whole_entries(data: bytes, pos: int) -> bool:
    """Whether ``data[pos:]`` is one or more entries whose checksums match, to the end."""
    size = len(data)
    while pos + _ENTRY.size <= size:
        length, crc = _ENTRY.unpack_from(data, pos)
        end = pos + _ENTRY.size + length
        if not length or end > size or zlib.crc32(data[pos + _ENTRY.size : end]) != crc:
            return False
        if end == size:
            return True
        pos = end
    return False


def read_entries(path: Path, *, allow_torn_tail: bool) -> Iterator[list[Any]]:
    """Yield each entry's change list. A torn tail is truncated (when allowed) with a warning."""
    reader = EntryReader(path)
    yield from reader
    if reader.torn is not None:
        if not allow_torn_tail:
            raise reader.torn.corrupt()
        reader.torn.truncate()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# macOS has no fdatasync (Python leaves it out there): fsync does the job, with more work.
_fdatasync = getattr(os, "fdatasync", os.fsync)


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
