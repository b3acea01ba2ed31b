"""``python -m storeserver.backup``: snapshot the running store and copy its files aside.

The store writes a snapshot (``snapshot`` command) and answers once it is on disk; this then
copies ``snapshot.mdb`` and the store's logs (``DataDir.logs``: not a file only named like one) into
``<dest>/<UTC timestamp>/`` (``-2``, ``-3``... appended when a backup of the same second
has that name already), each file and folder synced to disk before the backup is reported.
Restore = stop the store, put those files in an empty
``STORE_DATA_DIR``, start it (deploy/README.md, "Backup and restore"). The copies hold every
record and password hash, so they are owner-only as in the data directory: files 0600, the
folders this creates 0700.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .client import StoreClient
from .datadir import DataDir
from .errors import StoreError
from .logfile import DIR_MODE, FILE_MODE, CorruptData, fsync_dir
from .snapshots import read_snapshot


async def take_snapshot(address: str, secret: str | None, timeout: float) -> dict[str, Any]:
    client = StoreClient(address, secret=secret, timeout=timeout)
    try:
        await client.connect()
        result: dict[str, Any] = await client.call("snapshot", {})
        return result
    finally:
        await client.close()


COPY_ATTEMPTS = 3


def _skip(change: tuple[Any, ...]) -> None:
    """A backup's snapshot is read whole to check it, not applied."""


def copy_backup(snapshot: Path, dest: Path) -> Path:
    """Copy the snapshot and the logs newer than it into a new timestamped folder.

    The store goes on meanwhile: a compaction finishing during the copy replaces the snapshot
    and prunes the logs it covers, so the logs listed after the (older) snapshot was copied
    may start past its generation. The copy is checked as the store checks a data directory
    at start (``DataDir.check_history``) and made again; ``CorruptData`` if it never holds.
    """
    try:
        dest.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        pass  # made by an earlier backup (or one beside this)
    else:
        fsync_dir(dest.parent)  # its name, as each backup's own folder's below
    for attempt in range(1, COPY_ATTEMPTS + 1):
        target = new_folder(dest, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        try:
            copy_and_check(snapshot, target)
        except CorruptData:
            shutil.rmtree(target)
            if attempt == COPY_ATTEMPTS:
                raise
            continue
        except BaseException:
            # A part copy (disk full, interrupted) must not sit there looking like a backup.
            shutil.rmtree(target, ignore_errors=True)
            raise
        fsync_dir(dest)  # the folder's name, once its files are on disk (``copy_and_check``)
        return target
    raise AssertionError("unreachable")


def copy_and_check(snapshot: Path, target: Path) -> None:
    copy_private(snapshot, target / snapshot.name)
    for log_file in DataDir(snapshot.parent).logs():  # the store's own, not files named alike
        with contextlib.suppress(FileNotFoundError):  # pruned since the listing
            copy_private(log_file, target / log_file.name)
    copied = DataDir(target)
    generation = copied.snapshot_generation()
    copied.check_history(generation, copied.logs_after(generation))
    read_snapshot(copied.snapshot, _skip)  # whole, with its end marker
    fsync_dir(target)  # the files' names (their contents: ``copy_private``)


def new_folder(dest: Path, name: str) -> Path:
    """Create ``dest/name``, or ``name-2``, ``name-3``... when taken: two backups within one
    second (or one run beside another) each get their own folder."""
    for suffix in itertools.count(1):
        target = dest / (name if suffix == 1 else f"{name}-{suffix}")
        try:
            target.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        return target
    raise AssertionError("unreachable")


def copy_private(source: Path, target: Path) -> None:
    """Copy ``source`` into a new owner-only file, keeping its times: a restored snapshot's
    age counts from its modification time. (``shutil.copy2`` would copy the source's mode,
    and create the file under the umask first.)"""
    with open(source, "rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            # On disk before the backup is reported made (QA: no fsync at all, so a host
            # crash after "backup_dir" could leave empty or partial files).
            out.flush()
            os.fsync(out.fileno())
    info = source.stat()
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storeserver.backup")
    # STORE_SOCKET= (empty) is unset, as for every setting
    parser.add_argument("--address", default=os.environ.get("STORE_SOCKET") or "run/store.sock")
    parser.add_argument("--dest", type=Path, help="copy the files into DEST/<timestamp>/")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    try:
        info = asyncio.run(
            take_snapshot(args.address, os.environ.get("STORE_SECRET"), args.timeout)
        )
    except StoreError as exc:
        print(json.dumps({"error": exc.code, "message": exc.message}), file=sys.stderr)
        return 1
    except ValueError as exc:  # --address (or STORE_SOCKET) that names no store
        print(json.dumps({"error": "BAD_ADDRESS", "message": str(exc)}), file=sys.stderr)
        return 2
    if args.dest is not None:
        try:
            info["backup_dir"] = str(copy_backup(Path(info["path"]), args.dest))
        except CorruptData as exc:
            print(json.dumps({"error": "BACKUP_INCOMPLETE", "message": str(exc)}), file=sys.stderr)
            return 1
        except OSError as exc:  # the destination not writable, its disk full...
            print(json.dumps({"error": "BACKUP_FAILED", "message": str(exc)}), file=sys.stderr)
            return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
