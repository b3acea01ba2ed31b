"""Data this release cannot apply (an entry kind of a newer release, a malformed entry) makes
the store refuse to start (exit 3, ``store_failed_to_start``), as for corrupt data, instead of
a traceback and exit 1 at every restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from storeserver import __main__ as store_main
from storeserver.datadir import DataDir
from storeserver.engine import Engine
from storeserver.logfile import CorruptData, encode_entry
from storeserver.snapshots import write_snapshot
from tests.support.store import StoreProcess

STAMP = "2026-01-01T00:00:00.000001Z"
ROW = ("put", "t", {"id": "a", "created_at": STAMP, "updated_at": STAMP, "version": 1})
NEWER = ("future_kind", "x", 1)


def write_log(data_dir: Path, *changes: tuple) -> Path:
    data_dir.mkdir(exist_ok=True)
    path = data_dir / "log-0000000001.aof"
    path.write_bytes(b"".join(encode_entry([change]) for change in changes))
    return path


def write_snapshot_of(data_dir: Path, *changes: tuple) -> Path:
    data_dir.mkdir(exist_ok=True)
    path = data_dir / "snapshot.mdb"
    write_snapshot(path, 1, list(changes))
    return path


def refused_start(sock_dir: Path, data_dir: Path) -> tuple[int, dict]:
    """Start ``python -m storeserver`` on ``data_dir``; its exit code and last line."""
    store = StoreProcess(sock_dir / "u.sock", env={"STORE_DATA_DIR": str(data_dir)})
    try:
        with pytest.raises(RuntimeError, match="exited early"):
            store.start()
        lines = store.output().splitlines()
    finally:
        store.close()
    assert store.proc is not None
    return store.proc.returncode, json.loads(lines[-1])


@pytest.mark.parametrize("write", [write_log, write_snapshot_of], ids=["log", "snapshot"])
def test_an_entry_of_a_newer_release_refuses_to_start(sock_dir, tmp_path, write):
    data_dir = tmp_path / "data"
    path = write(data_dir, ROW, NEWER)
    code, last = refused_start(sock_dir, data_dir)
    assert code == store_main.EXIT_REFUSED_TO_START
    assert last["event"] == "store_failed_to_start"
    assert last["error"] == (
        f"{path} holds an entry this release does not know ('future_kind'): it was written by"
        " a newer release; refusing to start. Start that release, or restore a backup made by"
        " this one."
    )


@pytest.mark.parametrize("write", [write_log, write_snapshot_of], ids=["log", "snapshot"])
@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (("put", "t"), "('put': ValueError: not enough values to unpack"),
        (("delete",), "('delete': ValueError: not enough values to unpack"),
        ((), "([]: IndexError"),  # msgpack reads a tuple back as a list
    ],
)
def test_a_malformed_entry_refuses_to_start_naming_its_kind(tmp_path, write, entry, problem):
    data_dir = tmp_path / "data"
    path = write(data_dir, ROW, entry)
    with pytest.raises(CorruptData) as refused:
        DataDir(data_dir).load(Engine().apply_change)
    message = str(refused.value)
    assert message.startswith(f"{path} holds an entry this release cannot apply {problem}")
    assert "damaged or was written by a newer release; refusing to start" in message


# The store process with a store error raised while it starts (none known to remain).
STORE_ERROR_AT_START = """
import sys
from storeserver.__main__ import main
from storeserver.errors import InternalError
from storeserver.server import StoreServer

async def start(self):
    raise InternalError("replayed state is inconsistent")

StoreServer.start = start
sys.exit(main(sys.argv[1:]))
"""


def test_a_store_error_while_starting_refuses_to_start(sock_dir):
    """Any store error raised while starting is a refusal too: not a traceback and exit 1."""
    command = [sys.executable, "-c", STORE_ERROR_AT_START, "--socket", str(sock_dir / "x.sock")]
    done = subprocess.run(command, capture_output=True, timeout=30, check=False)
    assert done.returncode == store_main.EXIT_REFUSED_TO_START
    last = json.loads(done.stdout.splitlines()[-1])
    assert (last["event"], last["error"]) == (
        "store_failed_to_start",
        "replayed state is inconsistent",
    )
