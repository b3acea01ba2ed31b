"""``kv_set`` as a batch op: written with the batch's records, or not at all."""

from __future__ import annotations

from storeserver.engine import Engine
from storeserver.errors import LimitExceeded, VersionMismatch
from tests.support.engine import FakeClock, fail, run


def engine_with_record() -> tuple[Engine, FakeClock, str]:
    clock = FakeClock()
    engine = Engine(clock=clock, max_frame_bytes=64 * 1024)
    run(engine, "create_table", table="users")
    return engine, clock, str(run(engine, "insert", table="users", record={"role": "admin"})["id"])


def test_a_key_is_written_with_the_records_dated_by_the_store() -> None:
    engine, clock, rid = engine_with_record()
    patch = {"op": "patch", "table": "users", "id": rid, "changes": {"role": "user"}}
    reply = run(engine, "batch", ops=[patch, {"op": "kv_set", "key": "m", "stamp": True, "ttl": 9}])
    assert reply["results"][1] is True and "unchanged" not in reply
    assert run(engine, "kv_get", key="m") == clock.now
    assert ("kv_set", "m", clock.now, clock.now + 9) in engine.drain_changes()


def test_a_failed_batch_puts_its_keys_back() -> None:
    engine, _, rid = engine_with_record()
    run(engine, "kv_set", key="old", value=1, ttl=60)
    engine.drain_changes()
    ops = [
        {"op": "kv_set", "key": "old", "value": 2},
        {"op": "kv_set", "key": "new", "value": 3},
        {"op": "patch", "table": "users", "id": rid, "changes": {}, "expected_version": 7},
    ]
    error = fail(engine, VersionMismatch, "batch", ops=ops)
    assert error.details["index"] == 2
    assert run(engine, "kv_get_many", keys=["old", "new"]) == [1, None]
    assert engine.drain_changes() == []


def test_a_batch_whose_reply_is_too_big_puts_its_keys_back() -> None:
    engine, _, _ = engine_with_record()
    big = {"op": "insert", "table": "users", "record": {"blob": "x" * 20_000}}
    ops = [{"op": "kv_set", "key": "k", "value": 1}, big, big, big, big]
    fail(engine, LimitExceeded, "batch", ops=ops)
    assert run(engine, "kv_get", key="k") is None
