"""Backup and restore as deploy/README.md describes it: snapshot, copy, start from the copy."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storeserver import backup
from storeserver.backup import copy_backup
from storeserver.client import StoreClient
from storeserver.datadir import DataDir
from storeserver.logfile import CorruptData, encode_entry
from storeserver.snapshots import write_snapshot
from tests.storeserver.test_persistence import connect, dump_all, mode, start_store, umask


async def test_backup_copy_restores_the_same_state(sock_dir, tmp_path):
    data_dir = tmp_path / "data"
    with umask(0o022):  # the usual default (0644 files, 0755 folders), for both processes
        store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
    client = await connect(store)
    for i in range(200):
        await client.call("insert", {"table": "t", "record": {"i": i}})
    backups = tmp_path / "backups"
    with umask(0o022):
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
    # The files hold every record and password hash: owner-only, and so are their copies.
    assert mode(data_dir) == 0o700 and mode(data_dir / "snapshot.mdb") == 0o600
    assert mode(backups) == mode(backup_dir) == 0o700
    copies = list(backup_dir.iterdir())
    assert copies and all(mode(f) == 0o600 for f in copies)

    # Restore: an empty data directory with the backed-up files, then start.
    restored_dir = tmp_path / "restored"
    shutil.copytree(backup_dir, restored_dir)
    restored = start_store(sock_dir, restored_dir)
    client = StoreClient(restored.address)
    assert await dump_all(client) == expected
    await client.close()
    restored.stop()
    restored.close()


def test_backup_copies_are_owner_only_and_keep_their_times(tmp_path):
    # Sources with looser modes (a snapshot written by an older version): the copies are
    # still 0600; the times are kept, as the restored snapshot's age counts from them.
    data = tmp_path / "data"
    data.mkdir()
    write_snapshot(data / "snapshot.mdb", 1, [])
    (data / "log-0000000002.aof").write_bytes(encode_entry([["kv_del", "k"]]))
    for source in data.iterdir():
        source.chmod(0o644)
        os.utime(source, (1_700_000_000, 1_700_000_000))
    with umask(0o022):
        target = copy_backup(data / "snapshot.mdb", tmp_path / "backups")
    assert mode(tmp_path / "backups") == mode(target) == 0o700
    for source in data.iterdir():
        copy = target / source.name
        assert copy.read_bytes() == source.read_bytes()
        assert mode(copy) == 0o600 and copy.stat().st_mtime == 1_700_000_000


def test_backup_without_persistence_fails_clearly(store_process):
    store = store_process()
    done = subprocess.run(
        [sys.executable, "-m", "storeserver.backup", "--address", store.address],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert "BAD_REQUEST" in done.stderr and "STORE_DATA_DIR" in done.stderr


def test_a_copy_that_misses_a_log_is_made_again(tmp_path, monkeypatch):
    """A compaction finishing while the snapshot is copied replaces it and prunes the logs it
    covers, so the logs listed afterwards start past the copied snapshot: that copy is
    dropped and made again (from the new snapshot)."""
    data = tmp_path / "data"
    data.mkdir()
    write_snapshot(data / "snapshot.mdb", 1, [])
    for generation in (2, 3):
        (data / f"log-{generation:010d}.aof").write_bytes(encode_entry([["kv_del", "k"]]))
    real_copy = backup.copy_private

    def copy_while_compacting(source, target):
        real_copy(source, target)
        if source.name == "snapshot.mdb" and not (data / "snapshot.mdb.done").exists():
            (data / "snapshot.mdb.done").touch()  # the compaction, once: snapshot 2, log 2 gone
            write_snapshot(data / "snapshot.mdb", 2, [])
            (data / "log-0000000002.aof").unlink()

    monkeypatch.setattr(backup, "copy_private", copy_while_compacting)
    target = copy_backup(data / "snapshot.mdb", tmp_path / "backups")
    assert [p.name for p in (tmp_path / "backups").iterdir()] == [target.name]  # one kept
    assert sorted(p.name for p in target.iterdir()) == ["log-0000000003.aof", "snapshot.mdb"]
    assert DataDir(target).snapshot_generation() == 2


def test_a_data_directory_with_a_hole_is_not_backed_up(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_snapshot(data / "snapshot.mdb", 1, [])
    (data / "log-0000000003.aof").write_bytes(encode_entry([["kv_del", "k"]]))  # 2 missing
    with pytest.raises(CorruptData, match=r"log-0000000002\.aof is missing"):
        copy_backup(data / "snapshot.mdb", tmp_path / "backups")
    assert list((tmp_path / "backups").iterdir()) == []


def test_a_snapshot_cut_short_is_not_backed_up(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_snapshot(data / "snapshot.mdb", 1, [("kv_set", f"k{n}", n, None) for n in range(1500)])
    whole = (data / "snapshot.mdb").read_bytes()
    first = 8 + int.from_bytes(whole[:4], "big")
    (data / "snapshot.mdb").write_bytes(whole[:first])  # the first entry of two, intact
    with pytest.raises(CorruptData, match="cut short"):
        copy_backup(data / "snapshot.mdb", tmp_path / "backups")
    assert list((tmp_path / "backups").iterdir()) == []


def frozen_backup(monkeypatch, data) -> None:
    """``main`` without a store: its snapshot is ``data``'s, and the clock stands still."""
    write_snapshot(data / "snapshot.mdb", 1, [("kv_set", "k", 1, None)])

    async def snapshot_taken(*args):
        return {"path": str(data / "snapshot.mdb")}

    monkeypatch.setattr(backup, "take_snapshot", snapshot_taken)
    monkeypatch.setattr(
        time, "gmtime", lambda *args: time.struct_time((2024, 5, 1, 12, 0, 0, 2, 122, 0))
    )


def test_two_backups_in_the_same_second_each_get_a_folder(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    frozen_backup(monkeypatch, data)
    dest = tmp_path / "backups"
    assert backup.main(["--dest", str(dest)]) == 0
    assert backup.main(["--dest", str(dest)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(o["backup_dir"]).name for o in out] == ["20240501T120000Z", "20240501T120000Z-2"]
    for folder in dest.iterdir():
        assert (folder / "snapshot.mdb").read_bytes() == (data / "snapshot.mdb").read_bytes()


def test_a_backup_that_cannot_be_written_says_why_in_one_line(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    frozen_backup(monkeypatch, data)
    (tmp_path / "backups").write_text("a file where the folder should be")
    assert backup.main(["--dest", str(tmp_path / "backups")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["error"] == "BACKUP_FAILED"


def test_a_copy_cut_short_by_the_disk_leaves_no_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    write_snapshot(data / "snapshot.mdb", 1, [])
    (data / "log-0000000002.aof").write_bytes(encode_entry([["kv_del", "k"]]))
    real_copy = backup.copy_private

    def full_at_the_log(source, target):
        if source.suffix == ".aof":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(source, target)

    monkeypatch.setattr(backup, "copy_private", full_at_the_log)
    with pytest.raises(OSError, match="No space left"):
        copy_backup(data / "snapshot.mdb", tmp_path / "backups")
    assert list((tmp_path / "backups").iterdir()) == []


def test_a_backup_is_synced_to_disk_before_it_is_reported(tmp_path, monkeypatch):
    """QA: no fsync at all; a host crash after the reported backup could leave empty files."""
    data = tmp_path / "data"
    data.mkdir()
    write_snapshot(data / "snapshot.mdb", 1, [])
    (data / "log-0000000002.aof").write_bytes(encode_entry([["kv_del", "k"]]))
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = copy_backup(data / "snapshot.mdb", tmp_path / "backups")
    files = {str(target / name) for name in ("snapshot.mdb", "log-0000000002.aof")}
    assert files <= set(synced)
    # each folder after the names it holds
    assert synced.index(str(target)) > max(synced.index(f) for f in files)
    assert synced.index(str(tmp_path / "backups")) > synced.index(str(target))
    assert str(tmp_path) in synced  # the backups folder's own name, made by this first backup


def test_a_backup_copies_the_store_s_logs_only(tmp_path):
    """A damaged log set aside in place (``log-0000000002.damaged.aof``) is not the store's:
    the store ignores it, and a backup leaves it out too."""
    data = tmp_path / "data"
    data.mkdir()
    write_snapshot(data / "snapshot.mdb", 1, [])
    (data / "log-0000000002.aof").write_bytes(encode_entry([["kv_del", "k"]]))
    (data / "log-0000000002.damaged.aof").write_bytes(b"set aside")
    target = copy_backup(data / "snapshot.mdb", tmp_path / "backups")
    assert sorted(p.name for p in target.iterdir()) == ["log-0000000002.aof", "snapshot.mdb"]


def test_a_log_set_aside_in_place_is_made_owner_only_too(tmp_path):
    """It still holds records: a start narrows its mode as it does the store's own files."""
    data = tmp_path / "data"
    data.mkdir()
    aside = data / "log-0000000002.damaged.aof"
    aside.write_bytes(b"records")
    aside.chmod(0o644)
    DataDir(data).restrict_modes()
    assert mode(aside) == 0o600


@pytest.mark.parametrize("address", ["tcp://h", "tcp://127.0.0.1:70000", "h:"])
def test_an_address_that_names_no_store_is_one_json_line(capsys, address: str) -> None:
    """QA: a traceback (ValueError, or OverflowError for a port past 65535) instead of the
    one JSON line every other failure prints."""
    assert backup.main(["--address", address]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line) == {
        "error": "BAD_ADDRESS",
        "message": f"not a store address: {address.removeprefix('tcp://')!r}",
    }


def test_an_empty_store_socket_is_unset(monkeypatch, capsys) -> None:
    """README: an empty variable counts as unset. ``STORE_SOCKET=`` was taken as the address
    '' (a traceback); it is the default, run/store.sock, as for the store itself."""
    monkeypatch.setenv("STORE_SOCKET", "")
    monkeypatch.chdir(Path("/"))  # no run/store.sock there
    assert backup.main([]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    failure = json.loads(line)
    assert failure["error"] == "STORE_UNAVAILABLE" and "run/store.sock" in failure["message"]
