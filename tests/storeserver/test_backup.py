"""Backup and restore as deploy/README.md describes it: snapshot, copy, start from the copy."""

from __future__ import annotations

import shutil
import subprocess
import sys

from storeserver.client import StoreClient
from tests.storeserver.test_persistence import connect, dump_all, start_store


async def test_backup_copy_restores_the_same_state(sock_dir, tmp_path):
    data_dir = tmp_path / "data"
    store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
    client = await connect(store)
    for i in range(200):
        await client.call("insert", {"table": "t", "record": {"i": i}})
    backups = tmp_path / "backups"
    done = subprocess.run(
        [sys.executable, "-m", "storeserver.backup", "--address", store.address, "--dest",
         str(backups)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert '"backup_dir"' in done.stdout
    (backup_dir,) = backups.iterdir()
    # A write after the backup is not in it.
    await client.call("insert", {"table": "t", "record": {"i": "late"}})
    expected = await dump_all(client)
    expected["t"] = [r for r in expected["t"] if r["i"] != "late"]
    await client.close()
    assert store.stop() == 0
    store.close()

    # Restore: an empty data directory with the backed-up files, then start.
    restored_dir = tmp_path / "restored"
    shutil.copytree(backup_dir, restored_dir)
    restored = start_store(sock_dir, restored_dir)
    client = StoreClient(restored.address)
    assert await dump_all(client) == expected
    await client.close()
    restored.stop()
    restored.close()


def test_backup_without_persistence_fails_clearly(store_process):
    store = store_process()
    done = subprocess.run(
        [sys.executable, "-m", "storeserver.backup", "--address", store.address],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert "BAD_REQUEST" in done.stderr and "STORE_DATA_DIR" in done.stderr
