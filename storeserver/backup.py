"""``python -m storeserver.backup``: snapshot the running store and copy its files aside.

The store writes a snapshot (``snapshot`` command) and answers once it is on disk; this then
copies ``snapshot.mdb`` and any log written since (``log-*.aof`` of a newer generation) into
``<dest>/<UTC timestamp>/``. Restore = stop the store, put those files in an empty
``STORE_DATA_DIR``, start it (deploy/README.md, "Backup and restore").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .client import StoreClient
from .errors import StoreError


async def take_snapshot(address: str, secret: str | None, timeout: float) -> dict[str, Any]:
    client = StoreClient(address, secret=secret, timeout=timeout)
    try:
        await client.connect()
        result: dict[str, Any] = await client.call("snapshot", {})
        return result
    finally:
        await client.close()


def copy_backup(snapshot: Path, dest: Path) -> Path:
    """Copy the snapshot and the logs newer than it into a new timestamped folder."""
    target = dest / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target.mkdir(parents=True, exist_ok=False)
    shutil.copy2(snapshot, target / snapshot.name)
    for log_file in sorted(snapshot.parent.glob("log-*.aof")):
        shutil.copy2(log_file, target / log_file.name)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storeserver.backup")
    parser.add_argument("--address", default=os.environ.get("STORE_SOCKET", "run/store.sock"))
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
    if args.dest is not None:
        info["backup_dir"] = str(copy_backup(Path(info["path"]), args.dest))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
