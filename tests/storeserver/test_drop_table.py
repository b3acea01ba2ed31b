"""``drop_table``: the slot, rows, indexes, schema and declarations go; refusals; what happens
to cursors and long commands on the table; the journal, replay and snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from storeserver.builds import CHUNK, Job
from storeserver.engine import Engine
from storeserver.errors import BadRequest, Conflict, LimitExceeded, NotFound
from storeserver.protocol import pack_value, unpack_value
from tests.support.engine import fail, run

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}


def replayed(entries: list[tuple[Any, ...]]) -> Engine:
    """A new engine fed ``entries`` through msgpack, as the log and snapshot files hold them."""
    engine = Engine()
    for change in entries:
        engine.apply_change(tuple(unpack_value(pack_value(list(change)))))
    return engine


def state(engine: Engine) -> list[Any]:
    """Everything a snapshot holds, compared through msgpack (tuples and lists alike)."""
    return unpack_value(pack_value([list(change) for change in engine.iter_state()]))


def fill(engine: Engine, table: str, rows: int) -> None:
    for start in range(0, rows, 1000):
        ops = [
            {"op": "insert", "table": table, "record": {"n": i % 7, "k": f"k{i}"}}
            for i in range(start, min(rows, start + 1000))
        ]
        run(engine, "batch", ops=ops)


def test_a_dropped_table_frees_its_slot_under_the_cap() -> None:
    # The QA soak: short-lived tables, each emptied afterwards, filled the cap for good.
    engine = Engine(max_tables=3)
    run(engine, "create_table", table="users")
    run(engine, "create_table", table="orders")
    for cycle in range(10):
        name = f"t_{cycle}"
        record = run(engine, "insert", table=name, record={"n": cycle})
        err = fail(engine, LimitExceeded, "insert", table="one_too_many", record={})
        assert err.details["reason"] == "tables"
        run(engine, "delete", table=name, id=record["id"])
        assert run(engine, "drop_table", table=name) == {"dropped": True, "rows": 0}
    assert sorted(run(engine, "list_tables")) == ["orders", "users"]
    run(engine, "create_table", table="fresh")  # the slot is free


def test_a_table_created_again_after_a_drop_is_fresh() -> None:
    engine = Engine()
    run(
        engine,
        "create_table",
        table="t",
        indexes=[{"field": "k", "unique": True}, {"field": "n"}],
        hidden=["secret"],
    )
    run(engine, "set_schema", table="t", schema=SCHEMA)
    run(engine, "insert", table="t", record={"id": "a", "k": "x", "n": 1, "secret": "s"})
    assert run(engine, "drop_table", table="t", force=True) == {"dropped": True, "rows": 1}
    fail(engine, NotFound, "find", table="t")
    fail(engine, NotFound, "list_indexes", table="t")

    run(engine, "create_table", table="t")
    assert run(engine, "find", table="t") == {"items": [], "total": 0}
    assert run(engine, "list_indexes", table="t") == []
    assert run(engine, "describe", table="t")["schema"] is None
    # Nothing of the old declarations holds: the unique value, the schema, the hidden field.
    run(engine, "insert", table="t", record={"k": "x", "n": "not an integer", "secret": "s"})
    run(engine, "insert", table="t", record={"k": "x"})
    assert [r["secret"] for r in run(engine, "find", table="t")["items"] if "secret" in r] == ["s"]
    assert engine.stats()["tables"]["t"] == {
        "rows": 2,
        "indexes": [],
        "foreign_keys": [],
        "hidden": [],
    }


def test_refusals_change_nothing() -> None:
    engine = Engine()
    run(
        engine,
        "create_table",
        table="users",
        indexes=[{"field": "email", "unique": True}],
        keep=[{"field": "role", "value": "admin", "at_least": 1}],
    )
    run(engine, "create_table", table="teams")
    run(
        engine,
        "create_table",
        table="orders",
        foreign_keys=[{"field": "team_id", "table": "teams"}],
    )
    run(engine, "create_table", table="_jobs")
    run(engine, "insert", table="teams", record={"id": "red"})
    engine.drain_changes()
    audited = len(engine.audit)
    before = state(engine)

    err = fail(engine, Conflict, "drop_table", table="_jobs")
    assert err.details == {"reason": "internal", "table": "_jobs"}
    err = fail(engine, Conflict, "drop_table", table="users", force=True)
    assert err.details["reason"] == "keep_rows" and "users must keep" in err.message
    err = fail(engine, Conflict, "drop_table", table="teams", force=True)
    assert err.details["reason"] == "referenced"
    assert err.details["referenced_by"] == [{"table": "orders", "field": "team_id"}]
    assert "orders.team_id" in err.message
    err = fail(engine, Conflict, "drop_table", table="teams")  # referenced comes first
    assert err.details["reason"] == "referenced"
    run(engine, "insert", table="orders", record={"team_id": "red"})
    engine.drain_changes()
    before = state(engine)
    audited = len(engine.audit)
    err = fail(engine, Conflict, "drop_table", table="orders")
    assert err.details == {"reason": "not_empty", "table": "orders", "rows": 1}
    assert "force" in err.message
    fail(engine, NotFound, "drop_table", table="nothing")
    fail(engine, BadRequest, "drop_table", table="orders", force="yes")
    fail(engine, BadRequest, "drop_table", table="orders", cascade=True)
    fail(engine, BadRequest, "drop_table")

    assert state(engine) == before
    assert engine.drain_changes() == []
    assert len(engine.audit) == audited


def test_dropping_the_referencing_table_frees_the_referenced_one() -> None:
    engine = Engine()
    run(engine, "insert", table="teams", record={"id": "red"})
    run(
        engine,
        "create_table",
        table="orders",
        foreign_keys=[{"field": "team_id", "table": "teams"}],
    )
    run(engine, "insert", table="orders", record={"team_id": "red"})
    fail(engine, Conflict, "delete", table="teams", id="red")  # it has dependants
    run(engine, "drop_table", table="orders", force=True)
    assert run(engine, "delete", table="teams", id="red") == {"id": "red", "cascaded": 0}
    run(engine, "drop_table", table="teams")
    assert run(engine, "list_tables") == []


def test_a_table_referencing_itself_can_be_dropped() -> None:
    engine = Engine()
    run(engine, "create_table", table="nodes", foreign_keys=[{"field": "parent", "table": "nodes"}])
    root = run(engine, "insert", table="nodes", record={})
    run(engine, "insert", table="nodes", record={"parent": root["id"]})
    assert run(engine, "drop_table", table="nodes", force=True)["rows"] == 2
    assert engine._catalog.referrers == {}
    run(engine, "create_table", table="nodes")
    run(engine, "insert", table="nodes", record={"parent": "anything"})  # no foreign key now


def test_the_drop_is_audited_with_the_rows_it_took() -> None:
    engine = Engine()
    fill(engine, "t", 3)
    engine.execute(
        "drop_table", {"table": "t", "force": True}, actor={"user_id": "u1", "role": "admin"}
    )
    entry = run(engine, "audit_list", table="t")["items"][0]
    assert {k: entry[k] for k in ("op", "table", "record_id", "count", "user_id")} == {
        "op": "drop_table",
        "table": "t",
        "record_id": None,
        "count": 3,
        "user_id": "u1",
    }


def test_open_scan_cursors_over_the_table_are_closed() -> None:
    engine = Engine()
    fill(engine, "t", 30)
    fill(engine, "other", 30)
    page = run(engine, "scan", table="t", limit=10)
    kept = run(engine, "scan", table="other", limit=10)
    assert engine.stats()["cursors"] == 2
    run(engine, "drop_table", table="t", force=True)
    assert engine.stats()["cursors"] == 1
    # Created again under the same name: the old cursor must not read the new rows either.
    fill(engine, "t", 30)
    err = fail(engine, NotFound, "scan", cursor=page["cursor"])
    assert "table dropped" in err.message
    assert len(run(engine, "scan", cursor=kept["cursor"], limit=10)["items"]) == 10


def long_command(engine: Engine, command: str) -> Job:
    args: dict[str, Any] = {
        "create_index": {"table": "big", "field": "k", "unique": True},
        "set_schema": {"table": "big", "schema": SCHEMA},
        "update_where": {"table": "big", "where": [["n", "eq", 1]], "changes": {"m": 1}},
        "delete_where": {"table": "big", "where": [["n", "eq", 1]]},
    }[command]
    job = engine.execute(command, args)
    assert isinstance(job, Job)
    return job


@pytest.fixture(scope="module")
def big_rows() -> list[tuple[Any, ...]]:
    """A table of more rows than one step reads (so those commands run as jobs), as entries."""
    engine = Engine()
    fill(engine, "big", CHUNK + 1)
    return list(engine.iter_state())


@pytest.mark.parametrize("command", ["create_index", "set_schema", "update_where", "delete_where"])
def test_the_drop_waits_for_long_writes_on_the_table(
    big_rows: list[tuple[Any, ...]], command: str
) -> None:
    # Each would finish on rows no longer in the catalog: an index build journals the table's
    # spec, a schema check its schema, a *_where its rows: a replay would bring the table back.
    engine = Engine()
    for change in big_rows:
        engine.apply_change(change)
    job = long_command(engine, command)
    engine.advance(job)
    err = fail(engine, Conflict, "drop_table", table="big", force=True)
    assert err.details == {"reason": "busy", "table": "big", "commands": [command]}
    assert command in err.message
    engine.run_job(job)
    engine.drain_changes()
    assert run(engine, "drop_table", table="big", force=True)["dropped"] is True
    highest = 2 if command == "update_where" else 1
    assert engine.drain_changes()[0] == ("drop_table", "big", highest)


def test_a_cancelled_long_write_no_longer_holds_the_table(big_rows: list[tuple[Any, ...]]) -> None:
    engine = Engine()
    for change in big_rows:
        engine.apply_change(change)
    job = long_command(engine, "create_index")
    engine.advance(job)
    job.abort()  # what the server does when its client cancels or leaves
    run(engine, "drop_table", table="big", force=True)
    assert run(engine, "list_tables") == []


def test_a_long_read_in_progress_finishes_on_the_rows_it_started_with(
    big_rows: list[tuple[Any, ...]],
) -> None:
    engine = Engine()
    for change in big_rows:
        engine.apply_change(change)
    job = engine.execute("count", {"table": "big", "where": [["k", "startswith", "k"]]})
    assert isinstance(job, Job)
    engine.advance(job)
    run(engine, "drop_table", table="big", force=True)
    assert engine.run_job(job) == CHUNK + 1


def test_replaying_the_log_or_the_snapshot_after_a_drop_equals_the_state() -> None:
    engine = Engine()
    run(engine, "create_table", table="keep", indexes=[{"field": "k"}])
    fill(engine, "keep", 5)
    run(engine, "create_table", table="gone", indexes=[{"field": "k", "unique": True}])
    run(engine, "set_schema", table="gone", schema=SCHEMA)
    fill(engine, "gone", 5)
    run(engine, "kv_set", key="k", value=1)
    snapshot_before = list(engine.iter_state())
    earlier = engine.drain_changes()
    run(engine, "drop_table", table="gone", force=True)
    run(engine, "insert", table="gone", record={"id": "new", "n": "text"})
    log = engine.drain_changes()
    assert [c for c in log if c[0] == "drop_table"] == [("drop_table", "gone", 1)]

    expected = state(engine)
    assert state(replayed(earlier + log)) == expected  # the whole history from the logs
    assert state(replayed(snapshot_before + log)) == expected  # a snapshot, then the log
    snapshot_after = list(engine.iter_state())  # a snapshot simply no longer holds it
    assert state(replayed(snapshot_after)) == expected
    again = replayed(snapshot_after)
    assert run(again, "list_indexes", table="gone") == []
    assert run(again, "get", table="gone", id="new")["n"] == "text"


def test_a_table_created_again_never_gives_an_old_records_version() -> None:
    # Versions are ETags: a record created again under the id a record of the dropped table
    # had must not match that record's cached tags (If-None-Match, If-Match).
    engine = Engine()
    run(engine, "insert", table="t", record={"id": "x", "n": 1})
    for n in (2, 3):
        run(engine, "patch", table="t", id="x", changes={"n": n})
    run(engine, "drop_table", table="t", force=True)
    snapshot = list(engine.iter_state())
    assert ("dropped_floor", "t", 3) in snapshot  # kept for that name
    log = engine.drain_changes()

    for copy in (engine, replayed(log), replayed(snapshot)):
        run(copy, "create_table", table="t")
        assert run(copy, "insert", table="t", record={"id": "x"})["version"] == 4
        assert run(copy, "insert", table="t", record={})["version"] == 1  # a new id: from 1
    assert state(replayed(list(engine.iter_state()))) == state(engine)


def test_an_insert_that_creates_the_table_again_starts_above_the_dropped_versions() -> None:
    engine = Engine()
    run(engine, "insert", table="t", record={"id": "x", "n": 1})
    run(engine, "patch", table="t", id="x", changes={"n": 2})
    run(engine, "drop_table", table="t", force=True)
    log = engine.drain_changes()
    for copy in (engine, replayed(log)):
        # No create_table first: the insert creates the table, its first record included.
        assert run(copy, "insert", table="t", record={"id": "x"})["version"] == 3
    assert state(replayed(list(engine.iter_state()))) == state(engine)


def test_a_drop_leaves_the_versions_of_other_tables_alone() -> None:
    # The floor is the dropped name's: a new table under another name starts at 1 (it was a
    # catalog-wide floor, and every table created after any drop started above it).
    engine = Engine()
    run(engine, "insert", table="t", record={"id": "x", "n": 1})
    run(engine, "patch", table="t", id="x", changes={"n": 2})
    run(engine, "drop_table", table="t", force=True)
    log = engine.drain_changes()
    for copy in (engine, replayed(log), replayed(list(engine.iter_state()))):
        assert run(copy, "insert", table="u", record={"id": "x"})["version"] == 1
        run(copy, "create_table", table="v")
        assert run(copy, "insert", table="v", record={"id": "x"})["version"] == 1


def test_drop_table_frees_memory_so_it_is_allowed_over_the_limit() -> None:
    assert "drop_table" in Engine.WRITE_COMMANDS
    assert "drop_table" not in Engine.GROWING_COMMANDS
