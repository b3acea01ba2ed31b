"""Stopping with writes only memory holds (a full disk): the final snapshot is retried."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from storeserver import durability, finalsnapshot, snapshots
from storeserver.client import StoreClient
from storeserver.datadir import DataDir
from storeserver.engine import Engine
from storeserver.errors import StoreError
from storeserver.probe import wait_for_socket
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.storeserver.jobs import held_fsync, wait_until
from tests.storeserver.test_durability import acknowledged, connect, disk_full, insert


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(finalsnapshot, "STOP_RETRY_SECONDS", 0.3, raising=False)
    monkeypatch.setattr(finalsnapshot, "STOP_RETRY_INTERVAL", 0.05, raising=False)
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (30.0,))  # no recovery meanwhile


async def started(sock_dir, tmp_path, fsync: str) -> StoreServer:
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync=fsync)
    server = StoreServer(settings)
    assert server.durability is not None
    server.durability.load()
    server.durability.start(asyncio.get_running_loop())
    return server


async def lose_a_write(server: StoreServer, monkeypatch) -> None:
    """r0 reaches the log; r1 is applied, then its log write fails (the disk is full)."""
    dur = server.durability
    assert dur is not None and dur.log is not None
    conn, transport = connect(server)
    conn.data_received(insert(1, "r0"))
    await asyncio.sleep(0.05)
    monkeypatch.setattr(dur.log, "write", disk_full)
    conn.data_received(insert(2, "r1"))
    await asyncio.sleep(0.05)
    assert dur.error is not None
    expected = {1, 2} if dur.policy == "everysec" else {1}  # always: r1's reply was aborted
    assert acknowledged(transport) == expected


def on_disk(server: StoreServer) -> list[str | None]:
    assert server.durability is not None
    replayed = Engine()
    DataDir(server.durability.dir.root).load(replayed.apply_change)
    found = replayed.execute("get_many", {"table": "t", "ids": ["r0", "r1"]})
    return [r and r["id"] for r in found]


@pytest.mark.parametrize(
    ("fsync", "kind"), [("everysec", "acknowledged"), ("always", "unacknowledged")]
)
async def test_a_stop_that_cannot_save_unsaved_writes_retries_then_says_they_are_lost(
    sock_dir, tmp_path, monkeypatch, quick_retries, fsync, kind
):
    server = await started(sock_dir, tmp_path, fsync)
    await lose_a_write(server, monkeypatch)
    monkeypatch.setattr(finalsnapshot, "write_snapshot", disk_full)
    assert server.durability is not None
    with capture_logs() as logs, pytest.raises(finalsnapshot.WritesLost) as lost:
        server.durability.close()
    assert lost.value.count == server.durability.unsaved_writes == 1
    critical = [e for e in logs if e["log_level"] == "critical"]
    retries, last = critical[:-1], critical[-1]
    assert len(retries) >= 3 and {e["event"] for e in retries} == {"final_snapshot_failed"}
    assert all(e["writes"] == 1 and "free space in" in e["message"] for e in retries)
    assert retries[0]["message"].startswith(f"1 {kind} writes are not on disk")
    assert last["event"] == "writes_lost" and last["message"] == f"1 {kind} writes lost"
    assert "No space left" in last["error"]
    assert on_disk(server) == ["r0", None]
    assert server.durability._lock is None  # the directory is let go all the same


async def test_space_freed_during_the_retries_saves_every_write(
    sock_dir, tmp_path, monkeypatch, quick_retries
):
    server = await started(sock_dir, tmp_path, "everysec")
    await lose_a_write(server, monkeypatch)
    real, calls = finalsnapshot.write_snapshot, []

    def full_twice(*args: Any) -> int:
        calls.append(1)
        if len(calls) <= 2:
            disk_full()
        return real(*args)

    monkeypatch.setattr(finalsnapshot, "write_snapshot", full_twice)
    assert server.durability is not None
    with capture_logs() as logs:
        server.durability.close()  # no exception: saved
    events = [e["event"] for e in logs]
    assert events.count("final_snapshot_failed") == 2
    assert "writes_lost" not in events and events[-1] == "snapshot_written"
    assert on_disk(server) == ["r0", "r1"]


async def test_a_failed_final_snapshot_with_every_write_in_the_logs_fails_at_once(
    sock_dir, tmp_path, monkeypatch, quick_retries
):
    """Nothing to save (the next start replays the logs): no retries, the error as before."""
    monkeypatch.setattr(finalsnapshot, "STOP_RETRY_SECONDS", 30.0, raising=False)
    server = await started(sock_dir, tmp_path, "everysec")
    conn, _ = connect(server)
    conn.data_received(insert(1, "r0"))
    await asyncio.sleep(0.05)
    monkeypatch.setattr(finalsnapshot, "write_snapshot", disk_full)
    assert server.durability is not None
    with capture_logs() as logs, pytest.raises(OSError, match="No space left"):
        server.durability.close()
    assert not [e for e in logs if e["log_level"] == "critical"]
    assert on_disk(server) == ["r0", None]


# The real process, its log writes and final snapshot failing as on a full disk.
STORE_WITH_A_FULL_DISK = """
import errno, sys
from storeserver import durability, finalsnapshot, logfile
from storeserver.__main__ import main

def disk_full(*args):
    raise OSError(errno.ENOSPC, "No space left on device")

finalsnapshot.STOP_RETRY_SECONDS = 0.5
durability.RECOVERY_DELAYS = (60.0,)
finalsnapshot.write_snapshot = disk_full  # the final snapshot
logfile.AppendLog.write = disk_full
sys.exit(main(sys.argv[1:]))
"""


async def test_the_store_process_exits_4_naming_the_acknowledged_writes_lost(sock_dir, tmp_path):
    socket_path = sock_dir / "full.sock"
    env = {**os.environ, "STORE_DATA_DIR": str(tmp_path / "data"), "STORE_FSYNC": "everysec"}
    command = [sys.executable, "-c", STORE_WITH_A_FULL_DISK, "--socket", str(socket_path)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(socket_path, proc=proc)
        client = StoreClient(f"unix:{socket_path}", timeout=2.0)
        await client.call("insert", {"table": "t", "record": {"id": "r0"}})  # acknowledged
        await client.close()
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 4
    assert not socket_path.exists()
    lines = [json.loads(line) for line in output.decode().splitlines() if line.strip()]
    assert lines[-1]["event"] == "writes_lost" and lines[-1]["level"] == "critical"
    assert lines[-1]["message"] == "1 acknowledged writes lost"
    assert any(line["event"] == "final_snapshot_failed" for line in lines)
    assert "store_stop_failed" not in [line["event"] for line in lines]


async def test_a_failed_fsync_at_stop_counts_every_write_not_yet_synced(
    sock_dir, tmp_path, monkeypatch, quick_retries
):
    """After a failed fsync the kernel may drop every page not yet synced: r0, written to the
    log but never synced (``no``), is one of the writes only memory surely holds."""
    server = await started(sock_dir, tmp_path, "no")
    dur = server.durability
    assert dur is not None and dur.log is not None
    conn, transport = connect(server)
    conn.data_received(insert(1, "r0"))
    await asyncio.sleep(0.05)
    assert acknowledged(transport) == {1}
    monkeypatch.setattr(dur.log, "fsync", disk_full)
    monkeypatch.setattr(finalsnapshot, "write_snapshot", disk_full)
    with capture_logs() as logs, pytest.raises(finalsnapshot.WritesLost):
        dur.close()
    assert (
        logs[-1]["event"] == "writes_lost" and logs[-1]["message"] == "1 acknowledged writes lost"
    )


async def test_after_a_recovery_nothing_is_unsaved_and_a_failed_stop_does_not_wait(
    sock_dir, tmp_path, monkeypatch, quick_retries
):
    server = await started(sock_dir, tmp_path, "everysec")
    await lose_a_write(server, monkeypatch)
    dur = server.durability
    assert dur is not None
    monkeypatch.undo()  # the disk has room again: a snapshot forked now holds r1
    outcome: list[Any] = []
    dur.start_snapshot(outcome.append)
    await wait_until(lambda: bool(outcome))
    assert dur.error is None and dur.unsaved_writes == 0
    monkeypatch.setattr(finalsnapshot, "STOP_RETRY_SECONDS", 30.0)
    monkeypatch.setattr(finalsnapshot, "write_snapshot", disk_full)
    with capture_logs() as logs, pytest.raises(OSError, match="No space left"):
        dur.close()
    assert not [e for e in logs if e["log_level"] == "critical"]
    assert on_disk(server) == ["r0", "r1"]


async def test_a_data_directory_removed_while_running_is_made_again_at_the_stop(
    store_process, tmp_path
) -> None:
    """QA: with the data directory removed under a running store, writes went to a removed
    log and the final snapshot failed (ENOENT): everything was gone at the next start, and the
    stop line said the logs held every write. The snapshot now makes the directory again."""
    data = tmp_path / "data"
    proc = store_process(STORE_DATA_DIR=str(data), STORE_FSYNC="always")

    async def write(ids: list[str], snapshot: bool = False) -> None:
        client = StoreClient(proc.address, timeout=10.0)
        await client.connect()
        try:
            for rid in ids:
                await client.call("insert", {"table": "t", "record": {"id": rid}})
            if snapshot:  # a background snapshot makes it again too (its new log goes there)
                info = await client.call("snapshot", {})
                assert info["path"] == str(data / "snapshot.mdb")
        finally:
            await client.close()

    await write(["before"])
    for path in sorted(data.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    data.rmdir()
    await write(["after"], snapshot=True)
    for path in sorted(data.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    data.rmdir()
    await write(["later"])
    assert proc.stop() == 0, proc.output()
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    assert any(line["event"] == "data_dir_recreated" for line in lines), lines

    again = store_process(STORE_DATA_DIR=str(data))
    client = StoreClient(again.address, timeout=10.0)
    await client.connect()
    try:
        found = await client.call("find", {"table": "t"})
    finally:
        await client.close()
    assert sorted(r["id"] for r in found["items"]) == ["after", "before", "later"]


@pytest.mark.timeout(60)
async def test_a_stop_kills_a_running_snapshot_child_instead_of_waiting_for_it(
    sock_dir, tmp_path, monkeypatch
):
    """As Redis's SHUTDOWN aborts a BGSAVE: the final snapshot holds everything (QA: a child
    stopped or stuck on its disk held the store's SIGTERM for good)."""
    server = await started(sock_dir, tmp_path, "no")
    dur = server.durability
    assert dur is not None
    conn, transport = connect(server)
    conn.data_received(insert(1, "r0"))
    await wait_until(lambda: acknowledged(transport) == {1})
    monkeypatch.setattr(snapshots, "write_snapshot", lambda *args: time.sleep(3600))
    outcome: list[Any] = []
    dur.start_snapshot(outcome.append)  # the child sleeps in its write
    child = dur._child
    assert child is not None
    monkeypatch.undo()  # the final snapshot, in this process, writes for real
    with capture_logs() as lines:
        dur.close()
    assert "snapshot_child_stopped" in [line["event"] for line in lines]
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError)
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # reaped
    assert on_disk(server) == ["r0", None]
    assert not (dur.dir.root / "snapshot.mdb.tmp").exists()


async def test_a_clean_stop_sends_the_replies_waiting_for_the_disk(
    sock_dir, tmp_path, monkeypatch
) -> None:
    """QA: under STORE_FSYNC=always a stop closed the connections while replies waited for
    their fsync: the clients saw an unknown outcome for writes the final snapshot kept."""
    server = await started(sock_dir, tmp_path, "always")
    dur = server.durability
    assert dur is not None and dur.log is not None
    disk = held_fsync(monkeypatch, dur.log)
    conn, transport = connect(server)
    # As a real transport: what was written before close() still goes, nothing after.
    transport.close = lambda: setattr(transport, "aborted", True)  # type: ignore[method-assign]
    conn.data_received(insert(1, "r0"))
    await asyncio.sleep(0.05)
    assert acknowledged(transport) == set()  # held for the disk
    stopping = asyncio.create_task(server.shutdown())
    await asyncio.sleep(0.05)
    conn.data_received(insert(2, "r1"))  # read during the stop: not run
    disk.set()
    await stopping
    assert acknowledged(transport) == {1}
    assert on_disk(server) == ["r0", None]


async def test_everysec_starts_no_fsync_while_its_last_one_runs(
    sock_dir, tmp_path, monkeypatch
) -> None:
    """Review: on a disk slower than a second per fsync, one more was queued every second
    for as long as it stayed slow."""
    server = await started(sock_dir, tmp_path, "everysec")
    dur = server.durability
    assert dur is not None and dur.log is not None
    calls: list[int] = []
    disk = held_fsync(monkeypatch, dur.log, calls)
    try:
        for _ in range(3):  # three seconds' ticks, the disk stuck, writes coming
            dur._dirty = True
            dur._every_second()
            await asyncio.sleep(0.02)
        disk.set()
        await asyncio.sleep(0.2)  # what was queued behind the stuck one has run by now
        assert len(calls) == 1
        dur._dirty = True
        dur._every_second()  # the next tick syncs again
        await wait_until(lambda: len(calls) == 2)
    finally:
        disk.set()
        await server.shutdown()


async def test_a_stop_whose_log_write_fails_does_not_acknowledge_the_held_write(
    sock_dir, tmp_path, monkeypatch
) -> None:
    """The stop's wait for held replies (``settle``) writes what is pending first: if that
    fails, the replies are aborted as any failed write's are, never sent."""
    server = await started(sock_dir, tmp_path, "always")
    dur = server.durability
    assert dur is not None and dur.log is not None
    conn, transport = connect(server)
    conn.data_received(insert(1, "r0"))  # applied; its entry is written at the turn's end
    monkeypatch.setattr(dur.log, "write", disk_full)
    await server.shutdown()
    assert acknowledged(transport) == set() and transport.aborted
