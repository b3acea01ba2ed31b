"""``update_where``/``delete_where`` over more rows than a chunk: the selection runs as a job
(``bulk.BulkWrite``) while other commands write, and the command changes exactly the rows
matching at its last step, all in that step, as if it had run whole there."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from storeserver import builds, selection
from storeserver import scheduler as scheduler_module
from storeserver.builds import Job
from storeserver.client import ACTOR_ARG, REQUEST_ID_ARG, StoreClient
from storeserver.connection import StoreConnection
from storeserver.engine import Engine
from storeserver.errors import (
    Conflict,
    LimitExceeded,
    MemoryLimit,
    PersistenceError,
    StoreError,
)
from storeserver.protocol import FrameDecoder, Request
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.storeserver.jobs import HeldReads, RecordingTransport, finish, wait_until

CHUNK = 4


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "CHUNK", CHUNK)
    monkeypatch.setattr(builds, "CHUNK", CHUNK)


def fresh(rows: int = 10, indexed: bool = False) -> Engine:
    # A clock standing still: stamps go up 1 µs a write, the same in a copy doing the same.
    engine = Engine(max_bulk_rows=50, clock=lambda: 1_700_000_000.0)
    engine.execute(
        "create_table",
        {
            "table": "t",
            "indexes": [{"field": "tag", "unique": True}, *([{"field": "k"}] if indexed else [])],
        },
    )
    for i in range(rows):
        engine.execute("insert", {"table": "t", "record": {"id": f"r{i}", "k": i % 3, "n": i}})
    engine.drain_changes()
    return engine


def rows(engine: Engine) -> dict[str, Any]:
    return {r["id"]: r for r in engine.execute("find", {"table": "t", "limit": 1000})["items"]}


BULK_WRITES = pytest.mark.parametrize(
    ("command", "args"),
    [
        ("update_where", {"changes": {"hit": True}}),
        ("delete_where", {}),
    ],
)


def meanwhile(engine: Engine) -> None:
    """Writes between the job's steps, each moving a row in or out of ``k == 0``."""
    engine.execute("patch", {"table": "t", "id": "r0", "changes": {"k": 1}})  # matched: leaves
    engine.execute("patch", {"table": "t", "id": "r8", "changes": {"k": 0}})  # not yet read: joins
    engine.execute("patch", {"table": "t", "id": "r1", "changes": {"k": 0}})  # read: joins
    engine.execute("delete", {"table": "t", "id": "r3"})  # matched: gone
    engine.execute("insert", {"table": "t", "record": {"id": "new", "k": 0, "n": 99}})


@pytest.mark.parametrize("indexed", [False, True])
@BULK_WRITES
def test_a_chunked_bulk_write_changes_the_rows_matching_at_its_last_step(
    command: str, args: dict[str, Any], indexed: bool
) -> None:
    engine = fresh(rows=20, indexed=indexed)  # k == 0: r0 r3 ... r18, more than a chunk
    expected = copy.deepcopy(engine)  # the same writes, then the command whole, at once
    call = {"table": "t", "where": [["k", "eq", 0]], **args}
    job = engine.execute(command, dict(call))
    assert isinstance(job, Job)
    assert engine.advance(job) == (False, None)
    meanwhile(engine)
    _, result = finish(engine, job)

    meanwhile(expected)
    expected.drain_changes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selection, "CHUNK", 1000)
        whole = expected.execute(command, dict(call))
    assert not isinstance(whole, Job)
    assert result == whole
    assert result in ({"matched": 8, "updated": 8}, {"deleted": 8, "cascaded": 0})
    after = rows(engine)
    assert after == rows(expected)
    if command == "update_where":
        hit = ["new", "r1", "r12", "r15", "r18", "r6", "r8", "r9"]
        assert sorted(i for i, r in after.items() if r.get("hit")) == hit
    else:
        assert sorted(i for i, r in after.items() if r["k"] == 0) == []
    assert engine.execute("stats", {})["tables"]["t"]["rows"] == len(after)
    assert not engine._catalog.tables["t"].watchers  # detached


@pytest.mark.parametrize("where", [[["k", "in", [0, 5]]], {"or": [["k", "eq", 0], ["k", "eq", 5]]}])
@BULK_WRITES
def test_rows_an_index_union_picked_may_change_before_the_first_step(
    command: str, args: dict[str, Any], where: Any
) -> None:
    """An ``in`` over several index buckets, or an ``or`` of indexed leaves, picks a list of
    ids when the command is read; the job's first step runs a loop turn later (QA: a row
    deleted in between was a KeyError, answered INTERNAL)."""
    engine = fresh(rows=40, indexed=True)  # k == 0: 14 rows, a union of buckets
    expected = copy.deepcopy(engine)
    call = {"table": "t", "where": where, **args}
    job = engine.execute(command, copy.deepcopy(call))
    assert isinstance(job, Job)
    meanwhile(engine)  # before its first step
    _, result = finish(engine, job)

    meanwhile(expected)
    expected.drain_changes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selection, "CHUNK", 1000)
        whole = expected.execute(command, copy.deepcopy(call))
    assert not isinstance(whole, Job)
    assert result == whole
    assert result in ({"matched": 15, "updated": 15}, {"deleted": 15, "cascaded": 0})
    assert rows(engine) == rows(expected)


def test_the_journal_of_a_chunked_bulk_write_replays_to_the_same_rows() -> None:
    engine = fresh()
    job = engine.execute(
        "update_where", {"table": "t", "where": [["n", "gte", 2]], "changes": {"x": 1}}
    )
    engine.advance(job)
    meanwhile(engine)
    finish(engine, job)
    replica = fresh()
    for change in engine.drain_changes():
        replica.apply_change(change)
    assert rows(replica) == rows(engine)


def test_max_rows_surely_exceeded_stops_the_selection_early_and_changes_nothing() -> None:
    engine = fresh(rows=40)
    before = rows(engine)
    job = engine.execute("update_where", {"table": "t", "changes": {"x": 1}, "max_rows": 5})
    assert isinstance(job, Job)
    assert engine.advance(job) == (False, None)  # 4 matches: the limit may still hold
    with pytest.raises(LimitExceeded) as info:
        engine.advance(job)  # 8 matches, no row written meanwhile: over 5 for sure
    assert info.value.details == {"arg": "max_rows", "matched": 8, "max": 5, "at_least": True}
    assert info.value.message == "at least 8 rows match, more than max_rows (5)"
    assert job.pos == 2 * CHUNK  # not read to the end
    assert rows(engine) == before
    assert engine.drain_changes() == []
    assert not engine._catalog.tables["t"].watchers


def test_max_rows_is_checked_on_the_rows_matching_at_the_last_step() -> None:
    engine = fresh()  # k == 0: r0 r3 r6 r9
    job = engine.execute("delete_where", {"table": "t", "where": [["k", "eq", 0]], "max_rows": 4})
    engine.advance(job)
    engine.execute("patch", {"table": "t", "id": "r1", "changes": {"k": 0}})  # a fifth
    with pytest.raises(LimitExceeded) as info:
        finish(engine, job)
    assert info.value.details["matched"] == 5
    assert len(rows(engine)) == 10


def test_a_chunked_bulk_write_failing_at_its_last_step_rolls_back_and_journals_nothing() -> None:
    engine = fresh()
    engine.execute("patch", {"table": "t", "id": "r9", "changes": {"tag": "taken"}})
    engine.drain_changes()
    before = rows(engine)
    job = engine.execute(
        "update_where", {"table": "t", "where": [["n", "lt", 9]], "changes": {"tag": "taken"}}
    )
    with pytest.raises(Conflict):
        finish(engine, job)
    assert rows(engine) == before
    assert engine.drain_changes() == []
    assert not engine._catalog.tables["t"].watchers


def test_a_chunked_bulk_write_is_audited_once_under_its_caller() -> None:
    engine = fresh()
    actor = {"user_id": "admin-1", "role": "admin"}
    job = engine.execute(
        "update_where",
        {"table": "t", "where": [["k", "eq", 1]], "changes": {"x": 1}},
        actor=actor,
        request_id="req-9",
    )
    engine.execute("insert", {"table": "t", "record": {"k": 1}})  # another caller, meanwhile
    finish(engine, job)
    entries = engine.execute("audit_list", {"table": "t", "limit": 2})["items"]
    bulk_entry = next(e for e in entries if e["op"] == "update_where")
    assert bulk_entry["user_id"] == "admin-1"
    assert bulk_entry["request_id"] == "req-9"
    assert bulk_entry["count"] == 4  # r1 r4 r7 and the row inserted meanwhile


def _emails_engine(casefold_index: bool) -> Engine:
    engine = Engine(clock=lambda: 1_700_000_000.0)
    indexes = [{"field": "email", "unique": True, "casefold": True}] if casefold_index else []
    engine.execute("create_table", {"table": "t", "indexes": indexes})
    for i in range(20):
        email = "A@X" if i == 0 else f"e{i}@x"
        engine.execute("insert", {"table": "t", "record": {"id": f"r{i}", "n": i, "email": email}})
    engine.drain_changes()
    return engine


@pytest.mark.parametrize(
    ("casefold_at_start", "where", "meanwhile"),
    [
        # no index at start: "a@x" is compared exactly; a casefold unique index is added
        # (create_table extends the table in one command) before the last step
        (
            False,
            [["email", "eq", "a@x"]],
            (
                "create_table",
                {"table": "t", "indexes": [{"field": "email", "unique": True, "casefold": True}]},
            ),
        ),
        # the casefold index is dropped before the last step: "A@X" no longer equals "a@x"
        (
            True,
            {"or": [["email", "eq", "a@x"], ["n", "eq", -1]]},
            ("drop_index", {"table": "t", "field": "email"}),
        ),
    ],
)
def test_a_chunked_delete_where_compares_as_the_table_does_at_its_last_step(
    monkeypatch: pytest.MonkeyPatch, casefold_at_start: bool, where: Any, meanwhile: Any
) -> None:
    """docs/STORE.md: the command "changes exactly the rows matching then", "as if it had run
    whole at its last step". Whether ``eq`` ignores case depends on the table's casefold
    unique indexes at the time; BulkWrite compiles its predicates (``predicate`` and ``full``)
    once, at the start, and keeps the earlier rows it matched without testing them again."""
    engine = _emails_engine(casefold_at_start)
    call = {"table": "t", "where": where}
    job = engine.execute("delete_where", copy.deepcopy(call))
    assert isinstance(job, Job)
    assert engine.advance(job) == (False, None)  # r0 is in the first chunk
    engine.execute(*meanwhile)
    engine.drain_changes()
    expected = copy.deepcopy(engine)  # the state at the job's last step
    _, result = finish(engine, job)
    monkeypatch.setattr(selection, "CHUNK", 1000)
    whole = expected.execute("delete_where", copy.deepcopy(call))
    assert not isinstance(whole, Job)
    assert result == whole
    assert set(engine._catalog.tables["t"].rows) == set(expected._catalog.tables["t"].rows)


# -- through the server ------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["persistence", "memory"])
async def test_a_bulk_write_in_progress_is_refused_when_the_store_stops_taking_writes(
    sock_dir, tmp_path, refusal: str
) -> None:
    """The checks a write passes when it starts (log writable, under the memory limit) are
    made again before each step of a long one: a failure meanwhile refuses it, unchanged."""
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="no")
    server = StoreServer(settings)
    await server.start()
    client = StoreClient(f"unix:{settings.socket}", timeout=5.0)
    try:
        await client.call(
            "batch",
            {"ops": [{"op": "insert", "table": "t", "record": {"k": i % 7}} for i in range(400)]},
        )
        write = asyncio.ensure_future(
            client.call("update_where", {"table": "t", "changes": {"x": 1}})
        )
        for _ in range(10_000):  # a loop turn at a time: the job takes 100 of them
            if server.jobs:
                break
            await asyncio.sleep(0)
        assert server.jobs == 1
        assert server.durability is not None
        if refusal == "persistence":
            server.durability.error = "log write failed: disk full"
            expected: type[StoreError] = PersistenceError
        else:
            server.memory.over_limit = lambda: True  # type: ignore[method-assign]
            expected = MemoryLimit
        with pytest.raises(expected):
            await write
        server.durability.error = None
        server.memory.over_limit = lambda: False  # type: ignore[method-assign]
        assert await client.call("count", {"table": "t", "where": [["x", "eq", 1]]}) == 0
        assert server.engine._catalog.tables["t"].watchers == ()
        # and once the store takes writes again, the same command goes through
        assert await client.call("update_where", {"table": "t", "changes": {"x": 1}}) == {
            "matched": 400,
            "updated": 400,
        }
    finally:
        await client.close()
        await server.shutdown()


async def test_a_long_bookkeeping_write_goes_on_over_the_memory_limit(sock_dir) -> None:
    """An internal table's ``update_where`` (the API's job records) is taken over the limit
    in steps as it is at once (QA: each step was checked without the command's arguments, so
    as a plain write, and refused); another table's is still refused."""
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"))
    await server.start()
    client = StoreClient(f"unix:{server.settings.socket}", timeout=5.0)
    try:
        for table in ("_jobs", "t"):
            ops = [{"op": "insert", "table": table, "record": {"k": i % 7}} for i in range(400)]
            await client.call("batch", {"ops": ops})
        server.memory.over_limit = lambda: True  # type: ignore[method-assign]
        call = {"table": "_jobs", "where": [["k", "eq", 3]], "changes": {"x": 1}}
        write = asyncio.ensure_future(client.call("update_where", call))
        for _ in range(10_000):
            if server.jobs:
                break
            await asyncio.sleep(0)
        assert server.jobs == 1  # in steps
        assert await write == {"matched": 57, "updated": 57}
        with pytest.raises(MemoryLimit):
            await client.call("update_where", {**call, "table": "t"})
    finally:
        await client.close()
        await server.shutdown()


async def test_a_bulk_write_takes_a_scan_turn_and_keeps_its_caller_while_it_waits(
    sock_dir, monkeypatch
) -> None:
    """A chunked ``*_where`` holds a candidate list as a long read does, so it shares their
    cap: past it, it waits as its request, tags included, and its audit entry names its caller
    once it runs."""
    monkeypatch.setattr(scheduler_module, "SCAN_JOBS", 1)
    engine = fresh(rows=20)
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"), engine=engine)
    held = HeldReads(engine)
    await server.start()
    conn = StoreConnection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.greeted = True
    try:
        assert server.handle(Request(1, "find", {"table": "t", "n": 1}), conn) is None
        args = {
            "table": "t",
            "where": [["k", "eq", 1]],
            "changes": {"x": 1},
            ACTOR_ARG: {"user_id": "admin-7", "role": "admin"},
            REQUEST_ID_ARG: "req-7",
        }
        assert server.handle(Request(2, "update_where", args), conn) is None
        assert [w.request.command for w in server.waiting] == ["update_where"]
        assert rows(engine)["r1"].get("x") is None  # nothing changed while it waits
        held.release = True
        await wait_until(lambda: server.jobs == 0 and not server.waiting)
        replies = {m.request_id: m for m in FrameDecoder().feed(bytes(transport.data))}
        assert replies[2].value == {"matched": 7, "updated": 7}
        entry = engine.execute("audit_list", {"table": "t", "limit": 1})["items"][0]
        assert (entry["op"], entry["user_id"], entry["request_id"]) == (
            "update_where",
            "admin-7",
            "req-7",
        )
        assert engine.execute("stats", {})["ops"]["update_where"] == 1
    finally:
        held.release = True
        await server.shutdown()


async def test_a_waited_write_done_at_once_is_held_until_on_disk_under_fsync_always(
    sock_dir, tmp_path, monkeypatch
) -> None:
    """A ``*_where`` set aside for a turn may run whole when handled again (its table shrank
    meanwhile); under STORE_FSYNC=always its reply still waits for the disk."""
    monkeypatch.setattr(scheduler_module, "SCAN_JOBS", 1)
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "d", fsync="always")
    server = StoreServer(settings)
    await server.start()
    held = HeldReads(server.engine)
    conn = StoreConnection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.greeted = True
    try:
        for i in range(10):
            record = {"id": f"r{i}", "k": 1}
            server.handle(Request(100 + i, "insert", {"table": "t", "record": record}), conn)
        assert server.handle(Request(1, "find", {"table": "t", "n": 1}), conn) is None
        update = Request(2, "update_where", {"table": "t", "changes": {"x": 1}})
        assert server.handle(update, conn) is None  # 10 rows > 4 per step: a scan, waits
        assert len(server.waiting) == 1
        for i in range(7):  # meanwhile the table shrinks below a step
            server.handle(Request(200 + i, "delete", {"table": "t", "id": f"r{i}"}), conn)
        held.release = True
        server.cancel_jobs(None)  # the read gives up its turn (no reply wanted)
        server.waiting.append(scheduler_module._Waiting(update, conn, 0.0))
        transport.data.clear()
        server.scheduler.admit_waiting()  # 3 rows left: done at once
        assert not transport.data  # not sent before the log is synced
        await wait_until(lambda: bool(transport.data))
        (reply,) = FrameDecoder().feed(bytes(transport.data))
        assert reply.request_id == 2 and reply.value == {"matched": 3, "updated": 3}
    finally:
        held.release = True
        await server.shutdown()
