"""The snapshot: writing it atomically, in a forked child, and reading it back.

Separate from the log (``logfile``, whose entry format it uses) and from the data directory
(``datadir``, which loads it at start-up before replaying the logs): the fork and the atomic
replace are a concern of their own.

- ``snapshot.mdb``: the whole state at some moment, in the same entry format; its first entry
  is ``[["meta", {"generation": G, ...}]]``, meaning "this includes every log up to G". From
  ``format`` 2 its last change is ``["meta", {"end": true, "changes": N, "generation": G}]``:
  a copy cut short at an entry boundary (every entry before the cut intact) is otherwise
  indistinguishable from a smaller state. Releases before it skip ``meta`` changes wherever
  they are (taking the generation from any in the first entry).

A snapshot is written by a forked child (as Redis's BGSAVE): the parent rotates to a new log
generation, forks, and goes on serving; the child writes ``snapshot.mdb.tmp`` from its
copy-on-write image, fsyncs it, renames it over ``snapshot.mdb`` and fsyncs the directory.
Once the child exits 0, the parent deletes the logs the snapshot covers. A crash at any point
leaves either the old snapshot with its logs or the new one with its logs. The child dies with
the store that forked it (``_die_with``): it must never rename over the files of the store
that replaced it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import structlog

from .journal import REPLAY_ERRORS, unreadable_entry
from .logfile import (
    DIR_MODE,
    FILE_MODE,
    CorruptData,
    encode_body,
    encode_packed,
    fsync_dir,
    read_entries,
)
from .parentdeath import end_with_parent
from .protocol import pack_value

log = structlog.get_logger("storeserver.snapshots")

SNAPSHOT_CHUNK = 1000  # changes per snapshot entry at most
SNAPSHOT_CHUNK_BYTES = 64 << 20
"""A chunk of changes that encodes to more is written as entries of about this many bytes
(``_write_entries``; records of a few MB each: 1,000 of them made entries of over 1 GiB)."""
FORMAT = 2  # 2: the snapshot ends with an end marker holding its number of changes


def read_snapshot(path: Path, apply: Any) -> tuple[int, int]:
    """Apply every change of a snapshot; ``(generation, changes)``. ``CorruptData`` if a
    snapshot of format 2 or later lacks its end marker or holds another number of changes,
    or if a change cannot be applied (``journal.unreadable_entry``)."""
    generation, fmt, count = 0, 1, 0
    end: dict[str, Any] | None = None
    change: Any = None
    try:
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
    except REPLAY_ERRORS as exc:  # an entry kind of a newer release, a malformed entry
        raise unreadable_entry(path, change, exc) from exc
    if fmt >= 2 and (end is None or end.get("changes") != count):
        expected = "no end marker" if end is None else f"its end marker says {end['changes']}"
        raise CorruptData(
            f"{path} is cut short ({count} changes read, {expected}): a damaged or partial"
            " copy; refusing to start on part of the data. Restore it from a backup."
        )
    return generation, count


def ensure_snapshot_dir(path: Path) -> None:
    """Make the data directory again if it was removed under the running store (its open log
    then goes to a removed file), so a snapshot keeps what memory holds instead of failing:
    the stop's final one left nothing on disk (QA). Called in the store, not a forked child,
    which does not log."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        log.warning("data_dir_recreated", path=str(path.parent))


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
                    size += _write_entries(fh, chunk)
                    chunk = []
            # With the generation again: a release before format 2 reads it from every
            # ``meta`` of the first entry, which is also the last in a small snapshot.
            end = {"end": True, "changes": count, "generation": generation}
            chunk.append(("meta", end))
            size += _write_entries(fh, chunk)
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


def _write_entries(fh: Any, chunk: list[Any]) -> int:
    """Write ``chunk`` as one entry, or as several of about ``SNAPSHOT_CHUNK_BYTES`` each if it
    encodes to more (big records: 1,000 of 1.1 MB each made an entry the reader refused).
    Those chunks are encoded twice, the second time a change at a time; the others once."""
    body = pack_value(chunk)
    if len(body) <= SNAPSHOT_CHUNK_BYTES:
        return fh.write(encode_body(body))
    size = held = 0
    part: list[bytes] = []
    for change in chunk:
        packed = pack_value(change)
        part.append(packed)
        held += len(packed)
        if held >= SNAPSHOT_CHUNK_BYTES:
            size += fh.write(encode_packed(part))
            part, held = [], 0
    return size + (fh.write(encode_packed(part)) if part else 0)


def fork_snapshot(path: Path, generation: int, state: Iterable[tuple[Any, ...]]) -> int:
    """Fork a child that writes the snapshot and exits; return its pid (parent side).

    No ``gc.collect()`` first: over 1M records it held the loop for ~85 ms, more than the fork.
    Freezing moves every object out of the collector's reach (cheap), so neither side's
    collector walks, and thereby copies, the shared pages. The parent stays frozen: the store
    keeps its records out of the collector anyway (``collector.Freezer``).
    """
    ensure_snapshot_dir(path)
    gc.freeze()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child: no event loop, no logging, no atexit: write and leave
        code = 1
        try:
            _die_with(parent)
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


def _die_with(parent: int) -> None:
    """Have the kernel kill this snapshot child when the store that forked it dies, and
    leave now if it already has. A child that outlived a crashed store went on writing, then
    renamed ``snapshot.mdb.tmp`` over ``snapshot.mdb``: by then the name was the restarted
    store's own snapshot in progress, and the complete snapshot was replaced by a fragment
    that refused the next start (QA; its logs were pruned: data only in a backup)."""
    if not end_with_parent(parent, signal.SIGKILL):
        os._exit(1)


_stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _child_log_line(event: str, **fields: Any) -> bytes:
    """An error line with the fields ``logs.configure_logging`` gives every other one."""
    process = structlog.contextvars.get_contextvars().get("process", "store")
    line = _stamp(None, "error", {**fields, "event": event, "process": process, "level": "error"})
    return orjson.dumps(line) + b"\n"
