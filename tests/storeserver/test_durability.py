"""The log's write path in-process: one entry per loop turn, a command never split."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from structlog.testing import capture_logs

from storeserver import connection, durability, finalsnapshot, logfile, snapshots, writepath
from storeserver.connection import StoreConnection
from storeserver.datadir import DataDir
from storeserver.engine import Engine
from storeserver.logfile import read_entries
from storeserver.protocol import (
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Result,
    encode,
    encode_request,
    pack_value,
)
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.storeserver.jobs import RecordingTransport, connect, wait_until


@pytest.fixture
async def persistent(sock_dir, tmp_path):
    """A persistent server fed by hand: each ``data_received`` call is one loop turn's input."""
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="no")
    server = StoreServer(settings)
    assert server.durability is not None
    server.durability.load()
    server.durability.start(asyncio.get_running_loop())
    conn = StoreConnection(server)
    conn.connection_made(RecordingTransport())  # type: ignore[arg-type]
    conn.data_received(encode(Hello(PROTOCOL_VERSION, None)))
    yield server, conn
    server.durability.close()


def inserts(ids: range) -> bytes:
    """Insert frames for records ``r<i>``, sent together (one read, one loop turn)."""
    return b"".join(
        encode_request(
            i, "insert", {"table": "t", "record": {"id": f"r{i}", "price": Decimal("1.50")}}
        )
        for i in ids
    )


def log_entries(server: StoreServer) -> list[list[Any]]:
    assert server.durability is not None and server.durability.log is not None
    return list(read_entries(server.durability.log.path, allow_torn_tail=False))


async def test_the_commands_of_one_loop_turn_share_one_entry(persistent):
    server, conn = persistent
    conn.data_received(inserts(range(5)))
    await asyncio.sleep(0)  # the end of the loop turn: the entry is written
    (entry,) = log_entries(server)
    assert [c[2]["id"] for c in entry if c[0] == "put"] == [f"r{i}" for i in range(5)]
    conn.data_received(inserts(range(5, 7)))  # a later turn
    await asyncio.sleep(0)
    assert len(log_entries(server)) == 2

    replayed = Engine()
    DataDir(server.durability.dir.root).load(replayed.apply_change)
    assert list(replayed.iter_state()) == list(server.engine.iter_state())


async def test_a_full_entry_is_closed_between_commands_never_inside_one(persistent, monkeypatch):
    server, conn = persistent
    monkeypatch.setattr(writepath, "ENTRY_CHANGES", 3)
    # All four in this loop turn: on a slow machine the 2 ms turn budget left the last for
    # the next turn, and the entries were counted before it ran.
    monkeypatch.setattr(connection, "TURN_BUDGET", float("inf"))
    conn.data_received(inserts(range(4)))  # each insert: put + audit (the first also creates t)
    await asyncio.sleep(0)
    entries = log_entries(server)
    assert len(entries) > 1
    for entry in entries:
        puts = [c[2]["id"] for c in entry if c[0] == "put"]
        audited = [c[1][7] for c in entry if c[0] == "audit"]
        assert puts == audited  # each command's put and its audit entry stay together
    assert sum(len(e) for e in entries) == 1 + 4 * 2


def replies(transport: RecordingTransport) -> list[Any]:
    """Every message the server sent on this connection so far (the HELLO first)."""
    return FrameDecoder().feed(bytes(transport.data))


def answered(transport: RecordingTransport) -> dict[int, Any]:
    """The replies so far by request id."""
    return {m.request_id: m for m in replies(transport) if isinstance(m, Result | Error)}


def disk_full(*args: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_failed_log_write_refuses_writes_keeps_reads_then_recovers(persistent, monkeypatch):
    server, conn = persistent
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (0.05,))
    dur = server.durability
    assert dur is not None and dur.log is not None
    transport = conn.transport
    conn.data_received(inserts(range(1)))
    await asyncio.sleep(0)

    monkeypatch.setattr(dur.log, "write", disk_full)
    monkeypatch.setattr(logfile.AppendLog, "__init__", disk_full)  # no new log either
    conn.data_received(inserts(range(1, 2)))  # applied, then its log write fails
    await asyncio.sleep(0)
    assert dur.error is not None and "No space left" in dur.error
    conn.data_received(inserts(range(2, 3)) + encode_request(50, "get", {"table": "t", "id": "r1"}))
    # On a loaded machine the get may wait for the next loop turn (a turn's time budget).
    await wait_until(lambda: 50 in answered(transport))
    refused, read = answered(transport)[2], answered(transport)[50]
    assert isinstance(refused, Error) and refused.code == "PERSISTENCE_ERROR"
    assert isinstance(read, Result) and read.value["id"] == "r1"  # reads go on
    await asyncio.sleep(0.3)  # attempts fail while no log can be opened
    assert dur.error is not None

    monkeypatch.undo()  # the disk has room again
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (0.05,))
    await wait_until(lambda: dur.error is None)
    conn.data_received(inserts(range(3, 4)))
    await asyncio.sleep(0)
    assert isinstance(replies(transport)[-1], Result)  # writes accepted again

    # The recovery snapshot holds the record whose log write failed; the new log the rest.
    replayed = Engine()
    DataDir(dur.dir.root).load(replayed.apply_change)
    assert list(replayed.iter_state()) == list(server.engine.iter_state())
    found = replayed.execute("get_many", {"table": "t", "ids": ["r0", "r1", "r2", "r3"]})
    assert [r and r["id"] for r in found] == ["r0", "r1", None, "r3"]


def test_a_write_that_fails_midway_leaves_no_partial_entry(tmp_path, monkeypatch):
    log_file = logfile.AppendLog(tmp_path / "log-0000000001.aof", 1)
    log_file.write(b"first entry")
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        monkeypatch.setattr(os, "write", disk_full)
        return real_write(fd, bytes(data[:3]))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        log_file.write(b"second entry")
    monkeypatch.undo()
    log_file.close()
    assert (tmp_path / "log-0000000001.aof").read_bytes() == b"first entry"


async def test_the_snapshot_loaded_at_start_counts_as_the_last_one(sock_dir, tmp_path):
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="no")
    first = StoreServer(settings)
    assert first.durability is not None
    first.durability.load()
    assert first.durability.status()["last_snapshot"] is None  # nothing on disk yet
    first.durability.start(asyncio.get_running_loop())
    first.durability.close()  # writes the shutdown snapshot

    again = StoreServer(settings)
    assert again.durability is not None
    again.durability.load()
    status = again.durability.status()
    assert status["last_snapshot"]["path"].endswith("snapshot.mdb")
    assert 0 <= status["last_snapshot_age_s"] < 60
    again.durability.start(asyncio.get_running_loop())
    again.durability.close()


# -- STORE_FSYNC=always: a reply only for a write known to be on disk ----------------------


@pytest.fixture
async def always(sock_dir, tmp_path, monkeypatch):
    """A persistent server with ``STORE_FSYNC=always``; recovery kept out of the way."""
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (30.0,))
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="always")
    server = StoreServer(settings)
    assert server.durability is not None
    server.durability.load()
    server.durability.start(asyncio.get_running_loop())
    yield server
    server.durability.close()


def acknowledged(transport: RecordingTransport) -> set[int]:
    return {m.request_id for m in replies(transport) if isinstance(m, Result)}


def insert(rid: int, ident: str) -> bytes:
    return encode_request(rid, "insert", {"table": "t", "record": {"id": ident}})


def on_disk(server: StoreServer, ids: list[str]) -> list[str | None]:
    """Which of ``ids`` a restart now would load."""
    assert server.durability is not None
    replayed = Engine()
    DataDir(server.durability.dir.root).load(replayed.apply_change)
    return [r and r["id"] for r in replayed.execute("get_many", {"table": "t", "ids": ids})]


async def test_a_write_whose_log_write_failed_is_never_acknowledged(always, monkeypatch):
    dur = always.durability
    assert dur is not None and dur.log is not None
    conn, transport = connect(always)
    conn.data_received(insert(1, "r0"))
    await wait_until(lambda: acknowledged(transport) == {1})

    monkeypatch.setattr(dur.log, "write", disk_full)
    conn.data_received(insert(2, "r1"))  # applied in memory; its log write fails
    await asyncio.sleep(0)
    assert dur.error is not None
    # The next rotation syncs the old log (which succeeds) while the snapshot, the only place
    # r1 could be, fails: its reply must not have waited for that fsync.
    write_snapshot = snapshots.write_snapshot
    monkeypatch.setattr(snapshots, "write_snapshot", disk_full)
    outcome: list[Any] = []
    dur.start_snapshot(outcome.append)
    await wait_until(lambda: bool(outcome))
    await asyncio.sleep(0.1)
    assert acknowledged(transport) == {1} and transport.aborted
    assert on_disk(always, ["r0", "r1"]) == ["r0", None]

    # The disk has room again: a snapshot forked after the failure clears it.
    monkeypatch.setattr(snapshots, "write_snapshot", write_snapshot)
    outcome.clear()
    dur.start_snapshot(outcome.append)
    await wait_until(lambda: bool(outcome))
    assert dur.error is None
    conn, transport = connect(always)
    conn.data_received(insert(3, "r2"))
    await wait_until(lambda: acknowledged(transport) == {3})
    assert on_disk(always, ["r0", "r1", "r2"]) == ["r0", "r1", "r2"]


async def test_a_reply_held_while_its_entry_waits_for_the_flush_is_sent_after_an_fsync_of_it(
    always, monkeypatch
):
    """An fsync may end between a command (its reply held, its changes pending) and the end
    of that loop turn's ``_flush``; the next fsync must not start before the entry is written
    (QA: it did, and the reply was sent when that fsync, which did not cover it, ended)."""
    dur = always.durability
    assert dur is not None and dur.log is not None
    first, first_transport = connect(always)
    second, second_transport = connect(always)
    release, real_fsync = threading.Event(), dur.log.fsync
    path = dur.log.path
    seen: list[bool] = []  # per fsync: r1 in the log file when it started

    def fsync() -> None:
        seen.append(b"r1" in path.read_bytes())
        if len(seen) == 1:
            release.wait(10)
        real_fsync()

    monkeypatch.setattr(dur.log, "fsync", fsync)
    first.data_received(insert(1, "r0"))  # written; its fsync starts and blocks
    await wait_until(lambda: bool(seen))
    dur._flush_scheduled = True  # the turn's flush is queued, to run after the fsync ends
    second.data_received(insert(2, "r1"))  # applied and held; its changes pending
    release.set()
    await wait_until(lambda: acknowledged(first_transport) == {1})
    await wait_until(lambda: acknowledged(second_transport) == {2})
    assert seen == [False, True]
    dur._flush()  # the queued flush: nothing left to write
    assert on_disk(always, ["r0", "r1"]) == ["r0", "r1"]


@pytest.mark.parametrize("rotate", ["before the failure", "after the failure"])
async def test_replies_held_while_a_failing_fsync_runs_are_never_acknowledged(
    always, monkeypatch, rotate
):
    dur = always.durability
    assert dur is not None and dur.log is not None
    first, first_transport = connect(always)
    second, second_transport = connect(always)
    first.data_received(insert(1, "r0"))
    await wait_until(lambda: acknowledged(first_transport) == {1})

    # The next fsync blocks until released, then fails (EIO); the kernel may then have
    # dropped the log's dirty pages, so the fsyncs after it, which succeed, prove nothing.
    release, calls, real_fsync = threading.Event(), [], dur.log.fsync

    def fsync_failing_once() -> None:
        calls.append(1)
        if len(calls) > 1:
            return real_fsync()
        release.wait(10)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(dur.log, "fsync", fsync_failing_once)
    first.data_received(insert(2, "r1"))  # written; its fsync starts and blocks
    await wait_until(lambda: bool(calls))
    second.data_received(insert(3, "r2"))  # written; held behind the fsync in flight
    await asyncio.sleep(0)
    outcome: list[Any] = []
    if rotate == "before the failure":  # the held reply waits for the old log's last fsync
        dur.start_snapshot(outcome.append)
    release.set()
    await wait_until(lambda: dur.error is not None)
    if rotate == "after the failure":
        dur.start_snapshot(outcome.append)
    await wait_until(lambda: bool(outcome))
    await asyncio.sleep(0.1)
    assert len(calls) == 2  # the old log was synced again, successfully
    assert acknowledged(first_transport) == {1} and first_transport.aborted
    assert acknowledged(second_transport) == set() and second_transport.aborted


async def test_a_snapshot_asked_for_after_a_failure_waits_for_one_forked_after_it(
    persistent, monkeypatch
):
    """backup QA: a snapshot asked for while the log was failing joined the running one,
    forked before the failure, and answered success: a backup (that snapshot and the logs)
    missed an acknowledged write the log never got. It waits for the next snapshot now."""
    server, conn = persistent
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (30.0,))  # only the asked-for snapshots
    dur = server.durability
    assert dur is not None
    real_write = snapshots.write_snapshot

    def slow_write(*args: Any) -> int:  # in the child: a large store's snapshot
        time.sleep(0.5)
        return real_write(*args)

    monkeypatch.setattr(snapshots, "write_snapshot", slow_write)
    conn.data_received(inserts(range(1)) + encode_request(70, "snapshot", {}))  # forks now
    await asyncio.sleep(0)
    assert dur.log is not None
    new_log = dur.log
    monkeypatch.setattr(new_log, "write", disk_full)
    conn.data_received(inserts(range(1, 2)))  # applied, its log write fails
    await asyncio.sleep(0)
    assert dur.error is not None
    monkeypatch.setattr(new_log, "write", logfile.AppendLog.write.__get__(new_log))  # room again
    conn.data_received(encode_request(71, "snapshot", {}))  # the backup's, during the failure
    await wait_until(lambda: 71 in answered(conn.transport), 10)
    answers = answered(conn.transport)
    assert isinstance(answers[70], Result) and isinstance(answers[71], Result)
    assert answers[71].value["generation"] > answers[70].value["generation"]
    assert dur.error is None  # the later snapshot holds everything: recovered
    backup = Engine()  # what a backup copies: the snapshot and the logs after it
    DataDir(dur.dir.root).load(backup.apply_change)
    found = backup.execute("get_many", {"table": "t", "ids": ["r0", "r1"]})
    assert [r and r["id"] for r in found] == ["r0", "r1"]


async def test_a_failed_snapshot_child_says_why(persistent, monkeypatch, capfd):
    """The child says why in a line on stdout like the store's others (timestamp and process
    included), and the parent's ``snapshot_failed`` gives its exit code (it gave a raw wait
    status: 256)."""
    _, conn = persistent
    monkeypatch.setattr(snapshots, "write_snapshot", disk_full)  # in the child: forked after
    with capture_logs() as logs:
        conn.data_received(encode_request(7, "snapshot", {}))
        await wait_until(lambda: any(e["event"] == "snapshot_failed" for e in logs))
    failed = next(e for e in logs if e["event"] == "snapshot_failed")
    assert failed["exit_code"] == 1 and "status" not in failed
    refused = replies(conn.transport)[-1]
    assert isinstance(refused, Error) and refused.code == "PERSISTENCE_ERROR"
    child = [json.loads(x) for x in capfd.readouterr().out.splitlines() if "snapshot_child" in x]
    assert child[0]["event"] == "snapshot_child_failed" and "No space left" in child[0]["error"]
    assert child[0]["level"] == "error" and child[0]["process"] == "store"
    assert datetime.fromisoformat(child[0]["timestamp"]).utcoffset() == timedelta(0)


async def test_a_snapshot_child_killed_by_a_signal_is_not_called_a_full_disk(
    persistent, monkeypatch
):
    """QA: a child the OOM killer ended answered "could not be written (disk full?)"."""
    _, conn = persistent

    def killed(*args: Any) -> None:  # in the child, forked after this
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(snapshots, "write_snapshot", killed)
    conn.data_received(encode_request(7, "snapshot", {}))
    await wait_until(lambda: 7 in answered(conn.transport))
    refused = answered(conn.transport)[7]
    assert isinstance(refused, Error) and refused.code == "PERSISTENCE_ERROR"
    assert "killed (SIGKILL" in refused.message and "disk" not in refused.message


def failing_log_begins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk, for the first entry of a new log only (``log_begins``)."""
    marker = b"\x00log-begins-marker"
    monkeypatch.setattr(durability, "log_begins_entry", lambda *args: marker)
    write = logfile.AppendLog.write

    def full_for_it(self: logfile.AppendLog, data: bytes) -> None:
        if data == marker:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, data)

    monkeypatch.setattr(logfile.AppendLog, "write", full_for_it)


def test_a_store_whose_disk_is_full_still_starts_without_its_logs_first_entry(
    tmp_path, monkeypatch
) -> None:
    """Review: the first entry of the log a start opens (where the replayed one ends) was
    written unguarded, and ENOSPC stopped the start: a full disk kept the store down, where
    it served reads before."""
    data_dir = DataDir(tmp_path / "data")
    data_dir.log_path(1).write_bytes(logfile.encode_entry([["kv_set", "k", "v", None]]))
    failing_log_begins(monkeypatch)
    dur = durability.Durability(tmp_path / "data", "no", Engine(journal=True), 1 << 30)
    with capture_logs() as logs:
        dur.load()
    try:
        assert [e["event"] for e in logs if e["event"] == "log_begins_not_written"]
        assert dur.log is not None and dur.log.size == 0  # nothing half-written
    finally:
        dur.close()


async def test_a_rotation_whose_first_entry_cannot_be_written_still_rotates(
    persistent, monkeypatch
) -> None:
    """Review: the rotation switched to the new log, then its first entry failed (ENOSPC):
    the old log was never synced or closed (its descriptor held for good, its space with it
    once pruned), and the snapshot was refused."""
    server, conn = persistent
    dur = server.durability
    assert dur is not None and dur.log is not None
    old = dur.log
    failing_log_begins(monkeypatch)
    conn.data_received(inserts(range(1, 2)) + encode_request(7, "snapshot", {}))
    await wait_until(lambda: 7 in answered(conn.transport))
    assert isinstance(answered(conn.transport)[7], Result)
    assert dur.log is not old
    with pytest.raises(OSError):  # closed on the fsync thread
        os.fstat(old.fd)


def no_process(*args: Any) -> int:
    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")


async def test_a_snapshot_that_cannot_fork_answers_and_the_connection_goes_on(
    persistent, monkeypatch
):
    """QA: a fork refused (EAGAIN under a pids limit, ENOMEM) escaped the connection's
    callback: the connection dropped, a write pipelined before the snapshot was reported
    OUTCOME_UNKNOWN though applied, and the snapshot's waiter was never answered."""
    _, conn = persistent
    monkeypatch.setattr(durability, "fork_snapshot", no_process)
    with capture_logs() as logs:
        conn.data_received(
            inserts(range(1, 2))
            + encode_request(7, "snapshot", {})
            + encode_request(8, "get", {"table": "t", "id": "r1"})
        )
        await wait_until(lambda: 8 in answered(conn.transport))
    got = answered(conn.transport)
    assert isinstance(got[1], Result) and got[8].value["id"] == "r1"  # the connection lives
    assert isinstance(got[7], Error) and got[7].code == "PERSISTENCE_ERROR"
    assert "could not start" in got[7].message
    [failed] = [e for e in logs if e["event"] == "snapshot_failed"]
    assert failed["reason"] == "fork" and "temporarily unavailable" in failed["error"]
    monkeypatch.undo()
    conn.data_received(encode_request(9, "snapshot", {}))  # once processes are free again
    await wait_until(lambda: 9 in answered(conn.transport))
    assert isinstance(answered(conn.transport)[9], Result)


async def test_recovery_goes_on_after_a_snapshot_that_cannot_fork(persistent, monkeypatch):
    """QA: recovery (after a failed log write) met a fork refused once and never tried again:
    writes stayed refused after the disk and the process limit had room again."""
    server, conn = persistent
    dur = server.durability
    assert dur is not None and dur.log is not None
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (0.05,))
    monkeypatch.setattr(dur.log, "write", disk_full)
    conn.data_received(inserts(range(1, 2)))  # applied, then its log write fails
    await asyncio.sleep(0)
    assert dur.error is not None
    monkeypatch.undo()  # the disk has room again, but no process can be forked for a while
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (0.05,))
    forks: list[int] = []

    def fails_twice(*args: Any) -> int:
        forks.append(1)
        if len(forks) <= 2:
            return no_process()
        return snapshots.fork_snapshot(*args)

    monkeypatch.setattr(durability, "fork_snapshot", fails_twice)
    await wait_until(lambda: dur.error is None)
    assert len(forks) >= 3
    conn.data_received(inserts(range(2, 3)))
    await wait_until(lambda: 2 in answered(conn.transport))
    assert isinstance(answered(conn.transport)[2], Result)  # writes accepted again


async def test_a_snapshot_whose_end_cannot_be_recorded_still_answers(persistent, monkeypatch):
    """An error after the child finished (pruning the old logs raised: QA, a stray file's name)
    was printed by the loop, and the snapshot's callers waited for ever: now they get an
    INTERNAL error, logged."""
    server, conn = persistent
    assert server.durability is not None

    def broken_prune(generation: int) -> None:
        raise ValueError("invalid literal for int() with base 10: 'old'")

    monkeypatch.setattr(server.durability.dir, "prune", broken_prune)
    with capture_logs() as logs:
        conn.data_received(encode_request(7, "snapshot", {}))
        await wait_until(lambda: len(replies(conn.transport)) > 1)  # the HELLO, then it
    refused = replies(conn.transport)[-1]
    assert isinstance(refused, Error) and refused.code == "INTERNAL"
    assert any(e["event"] == "snapshot_finish_failed" for e in logs)


async def test_a_turn_too_large_for_one_entry_fails_as_a_log_write(always, monkeypatch):
    """QA: nothing bounded an entry on the write side (a command is never split); one over the
    reader's limit was written and then refused, or lost. Past ``MAX_ENTRY`` (patched small
    here: it is 4 GiB) the turn is not logged and is handled as a failed log write; the
    snapshot that recovers closes its entries by bytes, so it is written."""
    dur = always.durability
    assert dur is not None
    monkeypatch.setattr(logfile, "MAX_ENTRY", 8_000)
    monkeypatch.setattr(snapshots, "SNAPSHOT_CHUNK_BYTES", 2_000)
    conn, transport = connect(always)
    conn.data_received(insert(1, "r0"))
    await wait_until(lambda: acknowledged(transport) == {1})
    big = [
        encode_request(n, "insert", {"table": "t", "record": {"id": f"big{n}", "pad": "x" * 5_000}})
        for n in (2, 3)
    ]
    conn.data_received(b"".join(big))  # one read, one loop turn: one entry of ~10 KB
    await wait_until(lambda: transport.aborted)
    assert dur.error is not None and "log entry not written" in dur.error
    assert acknowledged(transport) == {1}  # never acknowledged: in memory only
    assert on_disk(always, ["r0", "big2", "big3"]) == ["r0", None, None]
    outcome: list[Any] = []
    dur.start_snapshot(outcome.append)  # the recovery: the snapshot holds them
    await wait_until(lambda: bool(outcome))
    assert dur.error is None
    assert on_disk(always, ["r0", "big2", "big3"]) == ["r0", "big2", "big3"]


def test_snapshot_entries_are_closed_by_bytes_too(tmp_path, monkeypatch):
    """QA: 1,000 records of 1.1 MB each made one entry over the reader's 1 GiB: a snapshot
    the store then refused to start from."""
    monkeypatch.setattr(snapshots, "SNAPSHOT_CHUNK_BYTES", 10_000)
    engine = Engine()
    for n in range(20):
        engine.execute("insert", {"table": "t", "record": {"id": f"r{n}", "pad": "x" * 4_000}})
    path = tmp_path / "snapshot.mdb"
    snapshots.write_snapshot(path, 3, engine.iter_state())
    entries = list(read_entries(path, allow_torn_tail=False))
    puts = [sum(1 for change in entry if change[0] == "put") for entry in entries]
    assert sum(puts) == 20 and max(puts) == 3  # closed once past 10,000 bytes
    loaded = Engine()
    assert snapshots.read_snapshot(path, loaded.apply_change) == (3, len(list(engine.iter_state())))
    assert loaded.execute("find", {"table": "t"}) == engine.execute("find", {"table": "t"})


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65_535, 65_536])
def test_an_entry_of_changes_packed_one_by_one_is_the_same_bytes(count: int) -> None:
    changes = [("put", "t", {"id": f"r{n}", "n": n}) for n in range(count)]
    packed = [pack_value(change) for change in changes]
    assert logfile.encode_packed(packed) == logfile.encode_entry(changes)


async def test_a_connection_is_owed_a_bounded_number_of_snapshot_replies(persistent):
    """QA: snapshot requests wait outside the connection's flow control until the snapshot is
    on disk; a client pipelining them without reading grew the store by 225 bytes each."""
    from storeserver.server import SNAPSHOT_WAITERS

    _, conn = persistent
    transport = conn.transport
    asked = SNAPSHOT_WAITERS + 3
    conn.data_received(b"".join(encode_request(i, "snapshot", {}) for i in range(1, asked + 1)))

    def replies() -> list[Any]:  # to the requests, not the HELLO
        return [m for m in FrameDecoder().feed(bytes(transport.data)) if not isinstance(m, Hello)]

    await wait_until(lambda: len(replies()) == asked)
    got = replies()
    busy = [m for m in got if isinstance(m, Error)]
    assert [m.request_id for m in busy] == list(range(SNAPSHOT_WAITERS + 1, asked + 1))
    assert {(m.code, m.details["max"]) for m in busy} == {("STORE_BUSY", SNAPSHOT_WAITERS)}
    done = [m for m in got if isinstance(m, Result)]
    assert sorted(m.request_id for m in done) == list(range(1, SNAPSHOT_WAITERS + 1))
    assert conn.awaited == 0


@pytest.mark.parametrize("lone", [True, False])
async def test_a_writes_reply_goes_out_after_its_log_entry_is_written(persistent, lone):
    """QA: with everysec and no, replies went out at once and the log write came at the end
    of the loop turn, after other clients' commands: a kill -9 between them (18 ms behind a
    300k-row drop) lost acknowledged writes the page cache would have kept."""
    server, conn = persistent
    transport = conn.transport
    log_file = server.durability.log
    sent_when_written: list[int] = []
    write = log_file.write

    def recording_write(data: bytes) -> None:
        sent_when_written.append(len(replies(transport)))
        write(data)

    log_file.write = recording_write  # type: ignore[method-assign]
    before = len(replies(transport))
    frames = inserts(range(1)) if lone else inserts(range(3))
    conn.data_received(frames)
    assert len(replies(transport)) == before  # held: not in the log yet
    await asyncio.sleep(0)  # the end of the loop turn: written, then answered
    assert sent_when_written == [before]
    assert len(replies(transport)) == before + (1 if lone else 3)
    conn.data_received(encode_request(99, "get", {"table": "t", "id": "r0"}))
    assert isinstance(answered(transport)[99], Result)  # a read is answered at once


@pytest.mark.parametrize("old_log_fsync", ["slow", "failing"])
async def test_a_rotation_sends_the_written_replies_in_order_and_keeps_them(
    persistent, monkeypatch, old_log_fsync
):
    """Review: under everysec and no, the replies held for the loop turn's log write were
    moved into the rotation's fsync of the old log: the connection's next reply went out
    first, and a failing fsync aborted the connection for a write the store had applied."""
    server, _ = persistent
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (30.0,))
    sync_and_close = durability._sync_and_close

    def slow_or_failing(old: Any) -> None:
        time.sleep(0.1)
        if old_log_fsync == "failing":
            raise OSError(errno.EIO, "Input/output error")
        sync_and_close(old)

    monkeypatch.setattr(durability, "_sync_and_close", slow_or_failing)
    writer, transport = connect(server)
    other, _ = connect(server)
    writer.data_received(encode_request(2, "insert", {"table": "t", "record": {"id": "r2"}}))
    other.data_received(encode_request(3, "snapshot", {}))  # rotates the log, same turn
    writer.data_received(encode_request(4, "get", {"table": "t", "id": "r2"}))
    await wait_until(lambda: len(answered(transport)) == 2)
    assert [m.request_id for m in replies(transport) if not isinstance(m, Hello)] == [2, 4]
    assert not transport.aborted and isinstance(answered(transport)[2], Result)


async def test_a_write_pipelined_before_a_failing_snapshot_is_never_acknowledged(
    always, monkeypatch
):
    """QA: under always, an insert and a snapshot read in one turn: the snapshot wrote the log
    mid-turn and the write failed, and the insert's reply, held after that, was sent once a
    later fsync succeeded, though its entry never reached the log."""
    dur = always.durability
    conn, transport = connect(always)
    conn.data_received(insert(1, "r0"))
    await wait_until(lambda: acknowledged(transport) == {1})
    monkeypatch.setattr(dur.log, "write", disk_full)
    conn.data_received(insert(2, "r1") + encode_request(3, "snapshot", {}))
    await wait_until(lambda: 3 in answered(transport))
    await asyncio.sleep(0.1)  # any fsync started since has ended
    assert answered(transport)[3].code == "PERSISTENCE_ERROR"
    assert acknowledged(transport) == {1} and transport.aborted
    assert on_disk(always, ["r0", "r1"]) == ["r0", None]


async def test_a_stop_waits_for_the_rotation_sync_of_held_replies_too(always, monkeypatch):
    """QA: a rotation queues the old log's sync beside the live log's fsync; the first to end
    cleared the "syncing" flag, so the stop's wait for held replies ended at once and closed
    the connection of a write the final snapshot then kept (its client: outcome unknown)."""
    dur = always.durability
    first, acked_first = connect(always)
    second, acked_second = connect(always)
    gate, fsync = threading.Event(), dur.log.fsync
    monkeypatch.setattr(dur.log, "fsync", lambda: (gate.wait(10), fsync()))
    sync_and_close = durability._sync_and_close
    monkeypatch.setattr(
        durability, "_sync_and_close", lambda old: (time.sleep(0.3), sync_and_close(old))
    )
    first.data_received(insert(1, "r0"))  # written; its fsync waits for the gate
    await asyncio.sleep(0.02)
    second.data_received(insert(2, "r1"))  # held behind that fsync
    await asyncio.sleep(0)  # its entry written
    outcome: list[Any] = []
    dur.start_snapshot(outcome.append)  # r1's reply now waits for the old log's sync
    gate.set()
    await wait_until(lambda: acknowledged(acked_first) == {1})
    await dur.settle(5.0)  # what the stop does before closing connections
    assert acknowledged(acked_second) == {2}
    await wait_until(lambda: bool(outcome))


async def stopping_while_an_fsync_fails(sock_dir, tmp_path, monkeypatch) -> Any:
    """An everysec store with one acknowledged write whose once-a-second fsync is failing
    (after 0.2 s) as its stop begins: its ``Durability``, the stop's own fsync a success."""
    monkeypatch.setattr(durability, "RECOVERY_DELAYS", (30.0,))
    settings = StoreSettings(
        socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="everysec"
    )
    server = StoreServer(settings)
    dur = server.durability
    assert dur is not None
    dur.load()
    dur.start(asyncio.get_running_loop())
    conn, transport = connect(server)
    conn.data_received(insert(1, "r0"))
    await wait_until(lambda: acknowledged(transport) == {1})
    fsyncs: list[int] = []
    fsync = dur.log.fsync

    def failing_once() -> None:  # Linux reports a failed fsync once: the next one succeeds
        fsyncs.append(1)
        if len(fsyncs) == 1:
            time.sleep(0.2)
            raise OSError(errno.EIO, "Input/output error")
        fsync()

    monkeypatch.setattr(dur.log, "fsync", failing_once)
    dur._every_second()  # the once-a-second fsync starts, and the stop comes meanwhile
    await asyncio.sleep(0.01)
    return dur


async def test_a_stop_sees_a_background_fsync_that_failed_meanwhile(
    sock_dir, tmp_path, monkeypatch
):
    """QA: a SIGTERM while everysec's fsync failed: the stop fsynced the log again (Linux then
    reports success), counted no write as unsaved, and did not retry its final snapshot."""
    monkeypatch.setattr(finalsnapshot, "STOP_RETRY_SECONDS", 0.2)
    monkeypatch.setattr(finalsnapshot, "STOP_RETRY_INTERVAL", 0.05)
    dur = await stopping_while_an_fsync_fails(sock_dir, tmp_path, monkeypatch)
    monkeypatch.setattr(finalsnapshot, "write_snapshot", disk_full)
    with capture_logs() as logs, pytest.raises(finalsnapshot.WritesLost):
        dur.close()
    assert dur.unsaved_writes == 1
    assert [e["event"] for e in logs][-1] == "writes_lost"


async def test_a_stop_that_saved_everything_stays_clean_after_it(sock_dir, tmp_path, monkeypatch):
    """QA: after the stop took a failed fsync's outcome and its final snapshot saved every
    write, the loop still ran that fsync's own callback, which failed the store again."""
    dur = await stopping_while_an_fsync_fails(sock_dir, tmp_path, monkeypatch)
    with capture_logs() as logs:
        dur.close()
        await asyncio.sleep(0.05)  # the loop goes on after the stop (asyncio.run's end)
    assert dur.error is None and dur.unsaved_writes == 0
    assert [e["event"] for e in logs][-1] == "snapshot_written"
