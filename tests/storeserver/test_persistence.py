"""Durability: the log and snapshot formats, and real store processes killed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from storeserver.client import StoreClient
from storeserver.datadir import DataDir
from storeserver.engine import Engine
from storeserver.errors import Conflict, StoreUnavailable
from storeserver.logfile import (
    AppendLog,
    CorruptData,
    encode_entry,
    log_begins_entry,
    read_entries,
)
from storeserver.snapshots import write_snapshot
from tests.support.procs import running
from tests.support.stack import ROOT
from tests.support.store import StoreProcess

# -- the entry format --------------------------------------------------------------------


def write_log(path: Path, entries: list[list]) -> bytes:
    data = b"".join(encode_entry(e) for e in entries)
    path.write_bytes(data)
    return data


ENTRIES = [
    [["put", "t", {"id": "a", "n": 1}]],
    [["put", "t", {"id": "b", "price": Decimal("9.99")}], ["delete", "t", "a"]],
    [["kv_set", "k", "v", None]],
]


def test_entries_round_trip(tmp_path):
    path = tmp_path / "log-0000000001.aof"
    write_log(path, ENTRIES)
    assert list(read_entries(path, allow_torn_tail=False)) == ENTRIES


@pytest.mark.parametrize("cut", [1, 5, 9, 12])
def test_torn_tail_is_truncated_to_the_last_whole_entry(tmp_path, cut):
    path = tmp_path / "log-0000000001.aof"
    data = write_log(path, ENTRIES)
    path.write_bytes(data[:-cut])
    assert list(read_entries(path, allow_torn_tail=True)) == ENTRIES[:2]
    assert path.read_bytes() == data[: len(data) - len(encode_entry(ENTRIES[2]))]


def test_torn_tail_is_corruption_when_not_allowed(tmp_path):
    path = tmp_path / "log-0000000001.aof"
    data = write_log(path, ENTRIES)
    path.write_bytes(data[:-3])
    with pytest.raises(CorruptData):
        list(read_entries(path, allow_torn_tail=False))


def test_damage_in_the_middle_refuses(tmp_path):
    path = tmp_path / "log-0000000001.aof"
    data = bytearray(write_log(path, ENTRIES))
    first = len(encode_entry(ENTRIES[0]))
    data[first + 12] ^= 0xFF  # inside the second entry's body: checksum mismatch, data follows
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match="corrupt at byte"):
        list(read_entries(path, allow_torn_tail=True))


@pytest.mark.parametrize("length", [0x00FFFFFF, 0xFFFFFFFF, 1000])
def test_a_damaged_length_in_the_middle_refuses(tmp_path, length):
    """A length running past the end of the file looks like an append cut short, but the
    entry its checksum covers is there, whole entries after it: the middle, not a torn tail
    (it was cut as one, losing every later acknowledged write)."""
    path = tmp_path / "log-0000000001.aof"
    data = bytearray(write_log(path, ENTRIES))
    first = len(encode_entry(ENTRIES[0]))
    data[first : first + 4] = length.to_bytes(4, "big")
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match="damaged length"):
        list(read_entries(path, allow_torn_tail=True))
    assert path.read_bytes() == bytes(data)  # nothing truncated


def test_a_damaged_length_on_an_entry_over_a_mib_refuses(tmp_path):
    """QA: the entry the checksum covers was looked for in the next 1 MiB only: a bit flipped
    in the length of a 1.6 MB entry (a batch of 1,000 records) passed for a torn tail, and the
    whole entries after it were cut with it."""
    path = tmp_path / "log-0000000001.aof"
    big = [["put", "t", {"id": f"r{n}", "text": "x" * 1600}] for n in range(1000)]
    data = bytearray(write_log(path, [ENTRIES[0], big, *ENTRIES[1:]]))
    first = len(encode_entry(ENTRIES[0]))
    data[first + 1] ^= 0x40  # the length's second byte: past the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match="damaged length"):
        list(read_entries(path, allow_torn_tail=True))
    assert path.read_bytes() == bytes(data)  # nothing truncated


def test_a_big_entry_cut_short_is_still_a_torn_tail(tmp_path):
    path = tmp_path / "log-0000000001.aof"
    big = [["put", "t", {"id": f"r{n}", "text": "x" * 1600}] for n in range(1000)]
    data = write_log(path, [*ENTRIES, big])
    path.write_bytes(data[: len(data) - 100_000])
    assert list(read_entries(path, allow_torn_tail=True)) == ENTRIES
    assert path.read_bytes() == data[: len(data) - len(encode_entry(big))]


@pytest.mark.parametrize(
    ("snapshot", "logs", "missing"),
    [(1, [2, 4], 3), (0, [2, 3], 1), (3, [5], 4)],  # (0: no snapshot, as if it was removed)
)
def test_a_history_with_a_hole_refuses(tmp_path, snapshot, logs, missing):
    if snapshot:
        write_snapshot(tmp_path / "snapshot.mdb", snapshot, [])
    for generation in logs:
        write_log(tmp_path / f"log-{generation:010d}.aof", ENTRIES[:1])
    with pytest.raises(CorruptData, match=rf"log-{missing:010d}\.aof is missing"):
        DataDir(tmp_path).load(lambda change: None)


def test_two_logs_of_one_generation_are_named_as_such(tmp_path):
    """QA: ``log-1.aof`` beside ``log-0000000001.aof`` was refused as log 2 "missing"."""
    for name in ("log-1.aof", "log-0000000001.aof", "log-0000000002.aof"):
        write_log(tmp_path / name, ENTRIES[:1])
    with pytest.raises(CorruptData, match=r"log-\S+ and log-\S+ are both log generation 1"):
        DataDir(tmp_path).load(lambda change: None)


@pytest.mark.parametrize("zeros", [8, 9, 4096])
def test_a_zero_filled_tail_is_a_torn_tail(tmp_path, zeros):
    # The file's size reached the disk, its data did not (XFS, ext4 with delayed allocation):
    # a zero header reads as length 0, crc 0, matching the empty body, which does not decode.
    path = tmp_path / "log-0000000001.aof"
    data = write_log(path, ENTRIES)
    path.write_bytes(data + bytes(zeros))
    with capture_logs() as logs:
        assert list(read_entries(path, allow_torn_tail=True)) == ENTRIES
    assert path.read_bytes() == data
    (warning,) = [e for e in logs if e["event"] == "log_torn_tail_truncated"]
    assert warning["offset"] == len(data) and warning["lost_bytes"] == zeros


def test_a_last_entry_zeroed_past_its_header_is_a_torn_tail(tmp_path):
    path = tmp_path / "log-0000000001.aof"
    data = write_log(path, ENTRIES)
    last = len(encode_entry(ENTRIES[2]))
    path.write_bytes(data[: len(data) - last + 9] + bytes(last - 9 + 512))  # header kept
    assert list(read_entries(path, allow_torn_tail=True)) == ENTRIES[:2]
    assert path.read_bytes() == data[: len(data) - last]


def test_a_zero_filled_tail_is_corruption_when_not_allowed(tmp_path):
    path = tmp_path / "log-0000000001.aof"
    path.write_bytes(write_log(path, ENTRIES) + bytes(64))
    with pytest.raises(CorruptData, match="then only zero bytes"):
        list(read_entries(path, allow_torn_tail=False))


def test_zeros_then_data_is_corruption_in_the_middle(tmp_path):
    path = tmp_path / "log-0000000001.aof"
    data = write_log(path, ENTRIES)
    path.write_bytes(data + bytes(64) + encode_entry(ENTRIES[0]))
    with pytest.raises(CorruptData, match="corrupt at byte"):
        list(read_entries(path, allow_torn_tail=True))


def replay(root: Path) -> Engine:
    engine = Engine()
    DataDir(root).load(engine.apply_change)
    return engine


def stamped(rid: str) -> dict:
    stamp = "2026-01-01T00:00:00.000001Z"
    return {"id": rid, "created_at": stamp, "updated_at": stamp, "version": 1}


@pytest.mark.parametrize("newer", [[b""], [b"", b""], [b"", bytes(100)], [b"\x00\x00\x01"]])
def test_a_torn_tail_followed_only_by_logs_without_entries_is_cut(tmp_path, newer):
    # A power loss between a rotation (log G+1 created, the directory synced) and the fsync
    # of log G, on the fsync thread: G is torn, the newer logs empty or torn themselves.
    data_dir = DataDir(tmp_path)
    whole = encode_entry([["put", "t", stamped("a")]])
    torn = encode_entry([["put", "t", stamped("b")]])[:-5]
    data_dir.log_path(1).write_bytes(whole + torn)
    for generation, content in enumerate(newer, start=2):
        data_dir.log_path(generation).write_bytes(content)
    with capture_logs() as logs:
        engine = replay(tmp_path)
    assert engine.execute("get_many", {"table": "t", "ids": ["a", "b"]})[1] is None
    assert data_dir.log_path(1).read_bytes() == whole
    assert all(data_dir.log_path(g).read_bytes() == b"" for g in range(2, 2 + len(newer)))
    cut = [e["file"] for e in logs if e["event"] == "log_torn_tail_truncated"]
    assert str(data_dir.log_path(1)) in cut


def test_a_torn_tail_followed_by_a_log_with_entries_refuses(tmp_path):
    data_dir = DataDir(tmp_path)
    torn = encode_entry([["put", "t", stamped("a")]])[:-5]
    data_dir.log_path(1).write_bytes(torn)
    data_dir.log_path(2).write_bytes(b"\x00\x00\x01")  # a torn tail only
    data_dir.log_path(3).write_bytes(encode_entry([["put", "t", stamped("b")]]))
    with pytest.raises(CorruptData, match=r"log-0000000003\.aof holds entries"):
        replay(tmp_path)
    # Nothing was cut.
    assert data_dir.log_path(1).read_bytes() == torn
    assert data_dir.log_path(2).read_bytes() == b"\x00\x00\x01"


def test_a_torn_tail_followed_by_a_log_holding_only_its_start_is_cut(tmp_path):
    """A log's first entry says where the one before it ended: not a write, so a torn log
    followed by a log holding only that is the torn end of the history, as before."""
    data_dir = DataDir(tmp_path)
    whole = encode_entry([["put", "t", stamped("a")]])
    data_dir.log_path(1).write_bytes(whole + encode_entry([["put", "t", stamped("b")]])[:-5])
    data_dir.log_path(2).write_bytes(log_begins_entry(1, len(whole) + 60))
    engine = replay(tmp_path)
    assert engine.execute("get_many", {"table": "t", "ids": ["a", "b"]})[1] is None
    assert data_dir.log_path(1).read_bytes() == whole


def test_a_torn_tail_cut_empties_the_newer_logs_so_later_starts_agree(tmp_path):
    """Review: after a torn tail was cut, a newer log holding only where it began (before
    the cut) was left as it was; once a later log held writes, the next start took the cut
    for a log cut at an entry boundary and refused."""
    data_dir = DataDir(tmp_path)
    whole = encode_entry([["put", "t", stamped("a")]])
    torn = encode_entry([["put", "t", stamped("b")]])
    data_dir.log_path(1).write_bytes(whole + torn[:-5])
    data_dir.log_path(2).write_bytes(log_begins_entry(1, len(whole + torn)))
    report = DataDir(tmp_path).load(Engine().apply_change)
    assert data_dir.log_path(2).read_bytes() == b"" and report.last_log == (2, 0)
    # The next start's log begins where log 2 ends now, and holds a write.
    data_dir.log_path(3).write_bytes(
        log_begins_entry(2, 0) + encode_entry([["put", "t", stamped("c")]])
    )
    engine = replay(tmp_path)  # no refusal
    found = engine.execute("get_many", {"table": "t", "ids": ["a", "b", "c"]})
    assert [r and r["id"] for r in found] == ["a", None, "c"]


def _cut_at_a_boundary(tmp_path: Path, newer: list[list]) -> tuple[DataDir, bytes]:
    """Log 1: insert a, insert b, delete a; its last entry lost at an entry boundary (a power
    loss before its fsync); log 2 begun when log 1 held all three, then ``newer`` entries."""
    data_dir = DataDir(tmp_path)
    entries = [
        encode_entry([["put", "t", stamped("a")]]),
        encode_entry([["put", "t", stamped("b")]]),
        encode_entry([["delete", "t", "a"]]),
    ]
    data_dir.log_path(1).write_bytes(b"".join(entries[:2]))
    begins = log_begins_entry(1, sum(map(len, entries)))
    data_dir.log_path(2).write_bytes(begins + b"".join(encode_entry(e) for e in newer))
    return data_dir, begins


def test_a_log_cut_at_an_entry_boundary_before_a_log_with_writes_refuses(tmp_path):
    """QA: nothing in a log cut at an entry boundary shows the cut, and the next log's writes
    were replayed over it: a started store held a row deleted before the newer writes (a
    state that never was). The next log's first entry says where the log ended."""
    data_dir, begins = _cut_at_a_boundary(tmp_path, [[["put", "t", stamped("c")]]])
    with pytest.raises(
        CorruptData, match=r"log-0000000001\.aof holds \d+ bytes, but log-0000000002"
    ):
        replay(tmp_path)
    assert data_dir.log_path(2).read_bytes().startswith(begins)  # nothing was cut


def test_a_log_cut_at_an_entry_boundary_that_ends_the_history_starts_with_a_warning(tmp_path):
    """The newer log holds no write (only where it began): the lost end is the end of the
    history, as a torn tail's would be. Warned, and the newer log emptied, so the next start
    does not find the cut again behind the writes this one logs."""
    data_dir, _ = _cut_at_a_boundary(tmp_path, [])
    with capture_logs() as logs:
        engine = replay(tmp_path)
    assert [r["id"] for r in engine.execute("find", {"table": "t"})["items"]] == ["a", "b"]
    [lost] = [e for e in logs if e["event"] == "log_tail_lost"]
    assert lost["file"] == str(data_dir.log_path(1)) and lost["bytes"] < lost["expected_bytes"]
    assert data_dir.log_path(2).read_bytes() == b""
    report = DataDir(tmp_path).load(Engine().apply_change)  # again: nothing to warn of
    assert report.last_log == (2, 0)


# -- file modes ---------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run with ``mask`` as the process umask (0o022, the usual default, gives 0644 files)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_files_are_owner_only_whatever_the_umask(tmp_path):
    """The snapshot holds every password hash: created 0600 (as the log), even over a tmp
    file a crash left with a looser mode; a new data directory is 0700."""
    root = tmp_path / "data"
    with umask(0o022):
        data_dir = DataDir(root)
        stale = root / "snapshot.mdb.tmp"
        stale.write_bytes(b"left by a crash")
        stale.chmod(0o644)
        write_snapshot(data_dir.snapshot, 1, [("put", "t", stamped("a"))])
        log_file = AppendLog(data_dir.log_path(2), 2)
        log_file.close()
    assert mode(root) == 0o700
    assert mode(data_dir.snapshot) == 0o600 and mode(data_dir.log_path(2)) == 0o600
    assert not stale.exists()


def test_loading_restricts_data_files_written_with_looser_modes(tmp_path):
    # A snapshot written before snapshots were created 0600, or files restored with cp.
    data_dir = DataDir(tmp_path)
    write_snapshot(data_dir.snapshot, 1, [("put", "t", stamped("a"))])
    write_log(data_dir.log_path(2), [[["put", "t", stamped("b")]]])
    data_dir.snapshot.chmod(0o644)
    data_dir.log_path(2).chmod(0o640)
    with capture_logs() as logs:
        engine = replay(tmp_path)
    assert engine.execute("count", {"table": "t"}) == 2
    assert mode(data_dir.snapshot) == 0o600 and mode(data_dir.log_path(2)) == 0o600
    restricted = [e["file"] for e in logs if e["event"] == "data_file_mode_restricted"]
    assert restricted == [str(data_dir.snapshot), str(data_dir.log_path(2))]


# -- real processes ----------------------------------------------------------------------


async def dump_all(client: StoreClient) -> dict[str, list[dict]]:
    """Every table's records in creation order, through the scan cursor."""
    state: dict[str, list[dict]] = {}
    for table in sorted(await client.call("list_tables")):
        rows: list[dict] = []
        page = await client.call("scan", {"table": table, "limit": 500})
        rows += page["items"]
        while page["cursor"] is not None:
            page = await client.call("scan", {"cursor": page["cursor"], "limit": 500})
            rows += page["items"]
        state[table] = rows
    return state


def start_store(sock_dir: Path, data_dir: Path, **env: str) -> StoreProcess:
    return StoreProcess(sock_dir / "d.sock", env={"STORE_DATA_DIR": str(data_dir), **env}).start()


async def connect(store: StoreProcess) -> StoreClient:
    client = StoreClient(store.address, timeout=5.0)
    await client.connect()
    return client


def events(store: StoreProcess) -> list[dict]:
    return [json.loads(x) for x in store.output().splitlines() if x.startswith("{")]


async def test_kill_9_with_fsync_always_keeps_every_acknowledged_write(sock_dir, tmp_path):
    data_dir = tmp_path / "data"
    store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
    client = await connect(store)
    await client.call("create_table", {"table": "acks"})
    acked: dict[str, dict] = {}
    batches: list[list[str]] = []
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            record = {"id": f"w{w}-{i}", "payload": "x" * (i % 50), "price": Decimal(f"{i}.01")}
            try:
                if i % 10 == 0:  # an atomic batch of five: all or nothing after the crash
                    ids = [f"{record['id']}-{k}" for k in range(5)]
                    ops = [{"op": "insert", "table": "acks", "record": {"id": x}} for x in ids]
                    batches.append(ids)
                    await client.call("batch", {"ops": ops})
                    for x in ids:
                        acked[x] = {"id": x}
                else:
                    await client.call("insert", {"table": "acks", "record": record})
                    acked[record["id"]] = record
            except StoreUnavailable:
                return

    tasks = [asyncio.create_task(writer(w)) for w in range(20)]
    await asyncio.sleep(1.0)
    store.proc.send_signal(signal.SIGKILL)
    store.proc.wait()
    stop.set()
    await asyncio.gather(*tasks)
    await client.close()
    store.close()
    assert len(acked) > 200  # the test wrote for real

    store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
    client = await connect(store)
    rows = {r["id"]: r for r in (await dump_all(client))["acks"]}
    for rid, sent in acked.items():
        assert rid in rows, f"acknowledged write {rid} was lost"
        assert {k: rows[rid][k] for k in sent} == sent
    # At most the writes in flight at the kill (20 writers, 5 rows a batch) are extra.
    assert len(rows) - len(acked) <= 20 * 5
    for ids in batches:
        present = [x in rows for x in ids]
        assert all(present) or not any(present), "a batch was half applied"
    await client.close()
    assert store.stop() == 0
    store.close()


async def test_snapshot_plus_log_replay_equals_the_state_before_a_crash(sock_dir, tmp_path):
    data_dir = tmp_path / "data"
    store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
    client = await connect(store)
    await client.call(
        "create_table", {"table": "users", "indexes": [{"field": "email", "unique": True}]}
    )
    for i in range(300):
        await client.call("insert", {"table": "users", "record": {"email": f"u{i}@x", "n": i}})
    snap = await client.call("snapshot", timeout=60)
    assert snap["bytes"] > 0 and Path(snap["path"]).exists()
    # After the snapshot: more inserts, updates, deletes and a key with no expiry.
    rows = (await dump_all(client))["users"]
    for row in rows[:50]:
        await client.call("patch", {"table": "users", "id": row["id"], "changes": {"n": -1}})
    for row in rows[50:80]:
        await client.call("delete", {"table": "users", "id": row["id"]})
    await client.call("insert", {"table": "other", "record": {"x": [1, {"y": None}]}})
    await client.call("kv_set", {"key": "revoked:abc", "value": True})
    before = await dump_all(client)
    store.proc.send_signal(signal.SIGKILL)
    store.proc.wait()
    await client.close()
    store.close()

    store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
    client = await connect(store)
    assert await dump_all(client) == before
    assert await client.call("kv_get", {"key": "revoked:abc"}) is True
    # The unique index was rebuilt too.
    with pytest.raises(Conflict):
        await client.call("insert", {"table": "users", "record": {"email": "u100@x"}})
    await client.close()
    assert store.stop() == 0
    store.close()


async def test_compaction_and_clean_shutdown_keep_the_state(sock_dir, tmp_path):
    data_dir = tmp_path / "data"
    env = {"STORE_FSYNC": "no", "STORE_LOG_REWRITE_BYTES": "20000"}
    store = start_store(sock_dir, data_dir, **env)
    client = await connect(store)
    for i in range(2000):
        await client.call("insert", {"table": "t", "record": {"i": i, "pad": "p" * 40}})
    for _ in range(100):  # let the background snapshots finish
        if not (await client.call("stats"))["persistence"]["snapshot_in_progress"]:
            break
        await asyncio.sleep(0.05)
    before = await dump_all(client)
    await client.close()
    assert store.stop(signal.SIGTERM) == 0
    written = [e for e in events(store) if e["event"] == "snapshot_written"]
    store.close()
    assert any(e["on"] == "background" for e in written), "the log was never compacted"
    assert written[-1]["on"] == "shutdown"
    # After the shutdown snapshot every log it covers is gone.
    assert len(list(data_dir.glob("log-*.aof"))) <= 1

    store = start_store(sock_dir, data_dir, **env)
    client = await connect(store)
    assert await dump_all(client) == before
    await client.close()
    store.stop()
    store.close()


async def test_torn_tail_starts_with_a_warning_and_loses_only_that_entry(sock_dir, tmp_path):
    data_dir = tmp_path / "data"
    store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
    client = await connect(store)
    for i in range(10):
        await client.call("insert", {"table": "t", "record": {"id": f"r{i}"}})
    store.proc.send_signal(signal.SIGKILL)
    store.proc.wait()
    await client.close()
    store.close()
    (newest,) = sorted(data_dir.glob("log-*.aof"))[-1:]
    newest.write_bytes(newest.read_bytes()[:-7])

    store = start_store(sock_dir, data_dir)
    client = await connect(store)
    ids = [r["id"] for r in (await dump_all(client))["t"]]
    assert ids == [f"r{i}" for i in range(9)]
    await client.close()
    store.stop()
    assert any(e["event"] == "log_torn_tail_truncated" for e in events(store))
    store.close()


async def test_corrupt_middle_refuses_to_start_with_a_clear_message(sock_dir, tmp_path):
    data_dir = tmp_path / "data"
    store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
    client = await connect(store)
    for i in range(10):
        await client.call("insert", {"table": "t", "record": {"id": f"r{i}", "pad": "z" * 30}})
    store.proc.send_signal(signal.SIGKILL)
    store.proc.wait()
    await client.close()
    store.close()
    (newest,) = sorted(data_dir.glob("log-*.aof"))[-1:]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))

    refused = StoreProcess(sock_dir / "d.sock", env={"STORE_DATA_DIR": str(data_dir)})
    with pytest.raises(RuntimeError, match="exited early"):
        refused.start()
    assert refused.proc.returncode == 3  # refuses to start: not to be restarted
    failure = [e for e in events(refused) if e["event"] == "store_failed_to_start"]
    refused.close()
    assert failure and "corrupt at byte" in failure[0]["error"]


async def test_a_log_cut_at_an_entry_boundary_behind_newer_writes_refuses(sock_dir, tmp_path):
    """QA's case, with real stores: a start's new log records where the log it replayed
    ends, so that log losing its last entry (a power loss before its fsync: simulated by
    cutting it) while the newer log's writes reached the disk refuses, rather than bringing
    back the row that last entry deleted."""
    data_dir = tmp_path / "data"
    store = start_store(sock_dir, data_dir, STORE_FSYNC="everysec")
    client = await connect(store)
    for rid in ("a", "b"):
        await client.call("insert", {"table": "t", "record": {"id": rid}})
    await client.call("delete", {"table": "t", "id": "a"})
    await client.close()
    store.proc.send_signal(signal.SIGKILL)
    store.proc.wait()
    store.close()
    store = start_store(sock_dir, data_dir, STORE_FSYNC="everysec")  # opens log 2
    client = await connect(store)
    await client.call("insert", {"table": "t", "record": {"id": "c"}})
    await asyncio.sleep(1.5)  # everysec: on disk (a clean stop would snapshot and prune)
    await client.close()
    store.proc.send_signal(signal.SIGKILL)
    store.proc.wait()
    store.close()
    first = data_dir / "log-0000000001.aof"
    *_, delete = read_entries(first, allow_torn_tail=False)
    assert delete[0] == ["delete", "t", "a"]  # (and its audit entry)
    whole = first.read_bytes()
    first.write_bytes(whole[: -len(encode_entry(delete))])  # lost at an entry boundary

    refused = StoreProcess(sock_dir / "d.sock", env={"STORE_DATA_DIR": str(data_dir)})
    with pytest.raises(RuntimeError, match="exited early"):
        refused.start()
    assert refused.proc.returncode == 3
    failure = [e for e in events(refused) if e["event"] == "store_failed_to_start"]
    refused.close()
    assert failure and "it lost its end" in failure[0]["error"]


async def test_a_second_store_on_the_same_data_directory_refuses_to_start(sock_dir, tmp_path):
    """Two stores on one directory (another socket) would each write logs and snapshots, and
    one's acknowledged writes would be gone at the next start."""
    data_dir = tmp_path / "data"
    with contextlib.ExitStack() as running:  # every store stopped, also when a check fails

        def started(store: StoreProcess) -> StoreProcess:
            running.callback(store.close)
            running.callback(lambda: store.proc is None or store.stop(signal.SIGKILL))
            return store.start()

        first = started(StoreProcess(sock_dir / "d.sock", env={"STORE_DATA_DIR": str(data_dir)}))
        second = StoreProcess(sock_dir / "other.sock", env={"STORE_DATA_DIR": str(data_dir)})
        with pytest.raises(RuntimeError, match="exited early"):
            started(second)
        assert second.proc.returncode == 3
        failure = [e for e in events(second) if e["event"] == "store_failed_to_start"]
        assert failure and f"another store (pid {first.proc.pid})" in failure[0]["error"]
        # the kernel frees the lock with its holder, even killed
        first.stop(signal.SIGKILL)
        again = started(
            StoreProcess(sock_dir / "other.sock", env={"STORE_DATA_DIR": str(data_dir)})
        )
        client = await connect(again)
        assert (await client.call("ping", {}))["ready"] is True
        await client.close()


def snapshot_of(rows: int, path: Path) -> list[bytes]:
    """A snapshot of ``rows`` puts; returns its entries' bytes (several: SNAPSHOT_CHUNK)."""
    write_snapshot(path, 1, [("put", "t", stamped(f"r{n}")) for n in range(rows)])
    data, entries, pos = path.read_bytes(), [], 0
    while pos < len(data):
        end = pos + 8 + int.from_bytes(data[pos : pos + 4], "big")
        entries.append(data[pos:end])
        pos = end
    return entries


@pytest.mark.parametrize("kept", [1, 2])
def test_a_snapshot_cut_at_an_entry_boundary_refuses(tmp_path, kept):
    """Every entry before the cut is intact, so only the end marker tells a cut copy (a
    partial restore, a disk fault) from a smaller state."""
    entries = snapshot_of(2500, tmp_path / "snapshot.mdb")
    assert len(entries) == 3
    (tmp_path / "snapshot.mdb").write_bytes(b"".join(entries[:kept]))
    with pytest.raises(CorruptData, match=rf"cut short \({kept * 1000 - 1} changes read"):
        replay(tmp_path)
    (tmp_path / "snapshot.mdb").write_bytes(b"".join(entries))
    assert replay(tmp_path).execute("count", {"table": "t"}) == 2500


def test_a_damaged_snapshot_advises_a_restore_not_moving_logs(tmp_path):
    entries = snapshot_of(1500, tmp_path / "snapshot.mdb")
    damaged = bytearray(entries[0])
    damaged[20] ^= 0xFF
    (tmp_path / "snapshot.mdb").write_bytes(bytes(damaged) + entries[1])
    with pytest.raises(CorruptData, match=r"snapshot\.mdb is corrupt") as refused:
        replay(tmp_path)
    assert "from a backup" in str(refused.value) and "move" not in str(refused.value)


def test_a_snapshot_end_marker_must_be_last_and_count_right(tmp_path):
    path = tmp_path / "snapshot.mdb"
    entries = snapshot_of(3, path)
    path.write_bytes(b"".join(entries) + encode_entry([["put", "t", stamped("late")]]))
    with pytest.raises(CorruptData, match="after its end marker"):
        replay(tmp_path)
    meta = {"generation": 1, "format": 2}
    end = {"end": True, "changes": 5}
    path.write_bytes(encode_entry([["meta", meta], ["put", "t", stamped("a")], ["meta", end]]))
    with pytest.raises(CorruptData, match="its end marker says 5"):
        replay(tmp_path)


def test_a_snapshot_of_format_1_has_no_end_marker_and_loads(tmp_path):
    """Snapshots written before the end marker load as they always did."""
    meta = {"generation": 4, "format": 1}
    rows = [["put", "t", stamped(rid)] for rid in "ab"]
    (tmp_path / "snapshot.mdb").write_bytes(encode_entry([["meta", meta], *rows]))
    report = DataDir(tmp_path).load(lambda change: None)
    assert (report.snapshot_generation, report.snapshot_changes) == (4, 2)


def test_a_snapshot_that_fails_leaves_no_part_and_the_old_one_whole(tmp_path):
    """A failed snapshot (disk full) must not leave snapshot.mdb.tmp: that file alone could
    hold the space the log needs and refuse every write."""
    path = tmp_path / "snapshot.mdb"
    write_snapshot(path, 1, [("put", "t", {"id": "a"})])
    before = path.read_bytes()

    def state():
        yield ("put", "t", {"id": "b"})
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_snapshot(path, 2, state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.mdb"]
    assert path.read_bytes() == before


def test_the_snapshot_child_keeps_no_inherited_descriptor(tmp_path):
    """A child that outlives a crashed store must not keep its listening socket (clients
    connect and hang; the restarted store finds the socket in use)."""
    import socket

    from storeserver.snapshots import fork_snapshot

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "s.sock"))
    listener.listen()
    fd = listener.fileno()

    def state():  # runs in the child
        try:
            os.fstat(fd)
            seen = "open"
        except OSError:
            seen = "closed"
        yield ("put", "t", {"id": seen})

    try:
        pid = fork_snapshot(tmp_path / "snapshot.mdb", 1, state())
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        listener.close()
    [entry] = read_entries(tmp_path / "snapshot.mdb", allow_torn_tail=False)
    assert entry[1] == ["put", "t", {"id": "closed"}]


_SLOW_SNAPSHOT_STORE = """
import sys, time
from pathlib import Path
from storeserver.snapshots import fork_snapshot

def state():  # the child: a big data set on a slow disk
    yield ("put", "t", {"id": "a"})
    time.sleep(60)
    yield ("put", "t", {"id": "b"})

print(fork_snapshot(Path(sys.argv[1]), 2, state()), flush=True)
time.sleep(60)
"""


def test_a_snapshot_child_dies_with_its_store(tmp_path):
    """QA: a snapshot child outlived its store's kill -9, then renamed ``snapshot.mdb.tmp``
    over ``snapshot.mdb`` while the restarted store was writing its own there: the complete
    snapshot became a fragment that refused the next start. The child now dies with it."""
    path = tmp_path / "snapshot.mdb"
    path.write_bytes(b"the previous snapshot")
    store = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SNAPSHOT_STORE, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(store.stdout.readline())
        os.kill(store.pid, signal.SIGKILL)
        store.wait(10)
        deadline = time.monotonic() + 10  # a failure bound, not a timing check
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not running(child), "the snapshot child outlived its store"
    finally:
        store.kill()
        store.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    assert path.read_bytes() == b"the previous snapshot"


def test_a_data_directory_that_is_a_file_is_named_as_such(tmp_path):
    """QA: the refusal read only "[Errno 17] File exists"."""
    in_the_way = tmp_path / "data"
    in_the_way.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"STORE_DATA_DIR .*data is a file"):
        DataDir(in_the_way)


async def test_files_only_named_like_logs_are_left_alone(sock_dir, tmp_path):
    """QA: a damaged log set aside in place (``log-0000000001.damaged.aof``) made start-up
    fail with a traceback (exit 1), and ``log-old.aof`` put there while the store ran made
    every snapshot hang (the pruning after it raised in a loop callback) and the stop exit 1.
    Such files are not the store's: a warning names them, and nothing reads or removes them."""
    data_dir = tmp_path / "data"
    store = start_store(sock_dir, data_dir)
    client = await connect(store)
    await client.call("insert", {"table": "t", "record": {"id": "a"}})
    (data_dir / "log-old.aof").write_bytes(b"not a log")
    written = await asyncio.wait_for(client.call("snapshot"), 10)
    assert written["generation"] >= 1
    await client.close()
    assert store.stop(signal.SIGTERM) == 0
    store.close()

    (data_dir / "log-0000000001.damaged.aof").write_bytes(b"")
    store = start_store(sock_dir, data_dir)
    client = await connect(store)
    assert (await client.call("get", {"table": "t", "id": "a"}))["id"] == "a"
    await client.close()
    assert store.stop(signal.SIGTERM) == 0
    (warned,) = [e for e in events(store) if e["event"] == "data_dir_foreign_files"]
    store.close()
    assert warned["files"] == ["log-0000000001.damaged.aof", "log-old.aof"]
    assert (data_dir / "log-old.aof").read_bytes() == b"not a log"
