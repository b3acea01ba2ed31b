"""Scan cursors' lifetime: closed by their reader (``scan_close``), refused rather than evicted
at the cap, freed after ``STORE_SCAN_IDLE`` seconds unread."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from storeserver.client import READ_COMMANDS, StoreClient
from storeserver.engine import Engine
from storeserver.errors import BadRequest, NotFound, StoreBusy
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.support.engine import FakeClock, fail, run


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Engine:
    engine = Engine(clock=clock, journal=False)
    engine.execute("batch", {"ops": [{"op": "insert", "table": "t", "record": {}}] * 10})
    return engine


def open_cursor(engine: Engine) -> str:
    cursor: str = run(engine, "scan", table="t", limit=1)["cursor"]
    return cursor


def open_count(engine: Engine) -> int:
    count: int = run(engine, "stats")["cursors"]
    return count


# -- scan_close ---------------------------------------------------------------------------------


def test_scan_close_frees_the_cursor_at_once(engine: Engine) -> None:
    cursor, other = open_cursor(engine), open_cursor(engine)
    assert open_count(engine) == 2
    assert run(engine, "scan_close", cursor=cursor) is True
    assert open_count(engine) == 1
    err = fail(engine, NotFound, "scan", cursor=cursor, limit=1)
    assert err.details == {"cursor": cursor}
    assert run(engine, "scan", cursor=other, limit=1)["cursor"] == other  # the other goes on
    assert engine._scans._ids_held == 10  # the closed one's ids are released


def test_scan_close_is_idempotent(engine: Engine) -> None:
    cursor = open_cursor(engine)
    assert run(engine, "scan_close", cursor=cursor) is True
    assert run(engine, "scan_close", cursor=cursor) is False  # already closed
    assert run(engine, "scan_close", cursor="f" * 32) is False  # never was
    finished = run(engine, "scan", table="t", limit=100)
    assert finished["cursor"] is None and open_count(engine) == 0


@pytest.mark.parametrize(
    "args",
    [{}, {"cursor": ""}, {"cursor": 5}, {"cursor": None}, {"cursor": "c", "limit": 1}],
)
def test_scan_close_checks_its_arguments(engine: Engine, args: dict[str, Any]) -> None:
    cursor = open_cursor(engine)
    with pytest.raises(BadRequest):
        engine.execute("scan_close", args)
    assert open_count(engine) == 1 and run(engine, "scan", cursor=cursor, limit=1)["items"]


def test_scan_close_is_a_command_that_changes_no_data() -> None:
    assert "scan_close" in Engine.COMMANDS and "scan_close" not in Engine.WRITE_COMMANDS
    assert "scan_close" in READ_COMMANDS  # the client retries it like a read


async def test_scan_close_over_the_wire(client: StoreClient) -> None:
    await client.call("batch", {"ops": [{"op": "insert", "table": "t", "record": {}}] * 3})
    page = await client.call("scan", {"table": "t", "limit": 1})
    assert (await client.call("stats"))["cursors"] == 1
    assert await client.call("scan_close", {"cursor": page["cursor"]}) is True
    assert (await client.call("stats"))["cursors"] == 0
    with pytest.raises(NotFound):
        await client.call("scan", {"cursor": page["cursor"], "limit": 1})


# -- the cap: refuse the newcomer, never evict a cursor in use --------------------------------


def test_at_max_open_a_new_cursor_is_refused_and_none_is_evicted(
    engine: Engine, clock: FakeClock
) -> None:
    engine._scans._max_open = 3
    live = [open_cursor(engine) for _ in range(3)]
    for _ in range(5):  # a flood of opens (dropped downloads, say)
        err = fail(engine, StoreBusy, "scan", table="t", limit=1)
        assert err.details == {"max": 3}
    for cursor in live:  # every cursor in use reads on
        assert run(engine, "scan", cursor=cursor, limit=1)["cursor"] == cursor
    assert run(engine, "scan_close", cursor=live[0])
    assert open_cursor(engine)  # a closed cursor makes room
    clock.now += 61  # every cursor idle past the default 60 s: they make room too
    assert len({open_cursor(engine) for _ in range(3)}) == 3


def test_past_max_ids_a_new_cursor_is_refused_but_one_alone_may_pass_it(engine: Engine) -> None:
    engine._scans._max_ids = 15
    first = open_cursor(engine)  # 10 ids
    err = fail(engine, StoreBusy, "scan", table="t", limit=1)  # 20 > 15
    assert err.details == {"max": 15}
    assert run(engine, "scan", cursor=first, limit=1)["cursor"] == first
    run(engine, "scan_close", cursor=first)
    engine._scans._max_ids = 5
    assert open_cursor(engine)  # 10 ids, alone: a big table can still be scanned


# -- idle limit ---------------------------------------------------------------------------------


def test_the_idle_limit_is_the_engines_scan_idle(clock: FakeClock) -> None:
    engine = Engine(clock=clock, journal=False, scan_idle=300)
    engine.execute("batch", {"ops": [{"op": "insert", "table": "t", "record": {}}] * 3})
    cursor = open_cursor(engine)
    clock.now += 299  # past the old fixed 60 s
    assert run(engine, "scan", cursor=cursor, limit=1)["cursor"] == cursor  # use renews it
    clock.now += 300.5
    fail(engine, NotFound, "scan", cursor=cursor, limit=1)
    assert open_count(engine) == 0


def test_store_scan_idle_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert StoreSettings().scan_idle == 300.0
    monkeypatch.setenv("STORE_SCAN_IDLE", "0.5")
    assert StoreSettings().scan_idle == 0.5
    server = StoreServer(StoreSettings(socket=tmp_path / "s.sock", scan_idle=42))
    assert server.engine._scans._idle == 42
    for bad in ("0", "-1", "90000", "inf", "nan", "soon"):
        monkeypatch.setenv("STORE_SCAN_IDLE", bad)
        with pytest.raises(ValidationError, match="scan_idle"):
            StoreSettings()


async def test_an_idle_cursor_is_freed_without_another_scan(sock_dir: Path) -> None:
    """Freed on the server's timer, not only when the next scan opens or reads (each cursor
    holds its table's id list until then)."""
    server = StoreServer(StoreSettings(socket=sock_dir / "idle.sock", scan_idle=0.2))
    await server.start()
    client = StoreClient(f"unix:{sock_dir / 'idle.sock'}")
    try:
        await client.call("batch", {"ops": [{"op": "insert", "table": "t", "record": {}}] * 3})
        page = await client.call("scan", {"table": "t", "limit": 1})
        assert page["cursor"] is not None and (await client.call("stats"))["cursors"] == 1
        for _ in range(50):  # a failure bound, not a timing assertion: sweeps run every 0.1 s
            await asyncio.sleep(0.1)
            if (await client.call("stats"))["cursors"] == 0:
                break
        assert (await client.call("stats"))["cursors"] == 0
    finally:
        await client.close()
        await server.shutdown()


async def test_pages_waiting_to_be_read_do_not_hold_up_other_calls(
    client: StoreClient, server: StoreServer
) -> None:
    """QA: one connection per worker carried its exports' pages and every other call, and the
    store answers a connection in order: a one-record read waited behind every page (3-4 s
    with 30 exports), and pages passed their timeout (504s, downloads cut off). Pages go on
    a connection of their own: while they wait to be read, other calls are answered."""
    big = {"blob": "x" * 50_000}
    await client.call("batch", {"ops": [{"op": "insert", "table": "t", "record": big}] * 200})
    record = await client.call("insert", {"table": "small", "record": {"n": 1}})
    first = await client.call("scan", {"table": "t", "limit": 100})  # opens the pages' link
    streams = client._streams or client  # the connection the pages came on
    assert streams._conn is not None and streams._conn.transport is not None
    streams._conn.transport.pause_reading()  # a worker too busy to take its pages
    pages = [
        asyncio.ensure_future(client.call("scan", {"table": "t", "limit": 100}))
        for _ in range(20)  # ~100 MB of replies: far more than the socket buffers hold
    ]
    pages.append(asyncio.ensure_future(client.call("scan", {"cursor": first["cursor"]})))
    await asyncio.sleep(0.2)
    assert not any(page.done() for page in pages)
    got = await asyncio.wait_for(client.call("get", {"table": "small", "id": record["id"]}), 1)
    assert got["n"] == 1
    streams._conn.transport.resume_reading()
    replies = await asyncio.gather(*pages)
    assert all(reply["items"] for reply in replies)  # each page came, once read


# -- what a cursor returns ----------------------------------------------------------------------


def read_all(engine: Engine, first: dict[str, Any]) -> list[dict[str, Any]]:
    items, page = list(first["items"]), first
    while page["cursor"] is not None:
        page = run(engine, "scan", cursor=page["cursor"], limit=3)
        items += page["items"]
    return items


def test_a_record_deleted_and_made_again_after_the_opening_is_not_included(
    engine: Engine,
) -> None:
    """QA: a dump included a record deleted and re-inserted under its id after the dump began,
    with its new content: it did not last through the read, as a new one is not included."""
    engine.execute("insert", {"table": "t", "record": {"id": "kept", "n": 1}})
    engine.execute("insert", {"table": "t", "record": {"id": "again", "n": 1}})
    first = run(engine, "scan", table="t", limit=1)
    engine.execute("patch", {"table": "t", "id": "kept", "changes": {"n": 2}})
    engine.execute("delete", {"table": "t", "id": "again"})
    engine.execute("insert", {"table": "t", "record": {"id": "again", "n": 2}})
    engine.execute("insert", {"table": "t", "record": {"id": "new", "n": 2}})
    items = read_all(engine, first)
    by_id = {item["id"]: item for item in items}
    assert len(items) == len(by_id) == 11  # the ten, and "kept"
    assert by_id["kept"]["n"] == 2  # updated since: as it is now
    assert "again" not in by_id and "new" not in by_id


def test_a_field_hidden_after_the_opening_is_not_read_through_the_cursors_fields(
    engine: Engine,
) -> None:
    """QA: a cursor opened with ``fields=["name", "token"]`` went on returning ``token`` after
    ``create_table hidden`` made it hidden, where every other read leaves it out."""
    for i in range(3):
        engine.execute("insert", {"table": "t", "record": {"id": f"u{i}", "name": "n", "token": i}})
    first = run(engine, "scan", table="t", fields=["name", "token"], limit=11)
    assert first["items"][-1] == {"id": "u0", "name": "n", "token": 0}
    engine.execute("create_table", {"table": "t", "hidden": ["token"]})
    rest = read_all(engine, {"items": [], "cursor": first["cursor"]})
    assert rest == [{"id": "u1", "name": "n"}, {"id": "u2", "name": "n"}]


def test_a_delete_undone_leaves_the_record_in_the_read(engine: Engine) -> None:
    engine.execute("insert", {"table": "t", "record": {"id": "back", "n": 1}})
    first = run(engine, "scan", table="t", limit=1)
    ops = [{"op": "delete", "table": "t", "id": "back"}, {"op": "delete", "table": "t", "id": "x"}]
    fail(engine, NotFound, "batch", ops=ops)  # the second fails: the first is undone
    assert "back" in {item["id"] for item in read_all(engine, first)}


def test_a_store_loaded_from_its_journal_reads_what_it_loaded() -> None:
    """The cutoff of a cursor opened before any write: the latest timestamp loaded."""
    writer = Engine(clock=FakeClock(), journal=True)
    writer.execute("insert", {"table": "t", "record": {"id": "a"}})
    reader = Engine(clock=FakeClock(), journal=True)
    for change in writer.drain_changes():
        reader.apply_change(change)
    first = run(reader, "scan", table="t", limit=1)
    reader.execute("insert", {"table": "t", "record": {"id": "b"}})
    assert [item["id"] for item in read_all(reader, first)] == ["a"]
