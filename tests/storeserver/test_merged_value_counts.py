"""A record merged by a patch holds at most ``records.MAX_VALUES`` values, as an inserted one
does: before, each patch's ``changes`` was bounded but not the merged record, so repeated
patches each under the limit built records of several times it (``check_merged_values``)."""

from __future__ import annotations

from typing import Any

import pytest

from storeserver.engine import Engine
from storeserver.errors import LimitExceeded
from storeserver.records import MAX_VALUES
from tests.support.engine import FakeClock, fail, run

TOO_MANY = {"reason": "values", "max": MAX_VALUES}
HALF = MAX_VALUES // 2


@pytest.fixture
def engine() -> Engine:
    return Engine(clock=FakeClock())


def values(n: int) -> list[int]:
    """A list that, as a new field's value, adds ``n`` values to a record (the field, and the
    list's items: a list counts as its field's value)."""
    return [0] * (n - 1)


def stored(engine: Engine, rid: str = "r") -> dict[str, Any]:
    record: dict[str, Any] = run(engine, "get", table="t", id=rid)
    return record


def test_a_patch_may_fill_a_record_to_the_limit_and_not_past_it(engine: Engine) -> None:
    run(engine, "insert", table="t", record={"id": "r", "a": values(HALF)})  # 1 + HALF values
    # Exactly the limit, as an insert may hold: the record, its fields and their values; the
    # store-owned fields (id, version, timestamps) are not counted.
    run(engine, "patch", table="t", id="r", changes={"b": values(MAX_VALUES - 1 - HALF)})
    insert = fail(
        engine, LimitExceeded, "insert", table="t", record={"a": values(HALF), "b": values(HALF)}
    )
    error = fail(engine, LimitExceeded, "patch", table="t", id="r", changes={"c": 1})
    # The same error an oversized insert gets.
    assert (error.code, error.message, error.details) == (
        insert.code,
        insert.message,
        insert.details,
    )
    assert error.details == TOO_MANY
    record = stored(engine)
    assert record["version"] == 2 and "c" not in record


def test_repeated_patches_each_under_the_limit_stop_at_it(engine: Engine) -> None:
    """QA's case: patches of 250,000 values each grew one record without bound."""
    run(engine, "insert", table="t", record={"id": "r"})
    applied = 0
    for n in range(10):
        try:
            run(engine, "patch", table="t", id="r", changes={f"f{n}": values(250_000)})
        except LimitExceeded as exc:
            assert exc.details == TOO_MANY
            break
        applied += 1
    assert applied == 2  # a third would make 1 + 3 * 250,000 values
    assert sorted(k for k in stored(engine) if k.startswith("f")) == ["f0", "f1"]


def test_every_kind_of_merge_is_bounded(engine: Engine) -> None:
    run(engine, "insert", table="t", record={"id": "small", "n": 1})  # updated first
    run(engine, "insert", table="t", record={"id": "r", "m": {"deep": values(HALF)}})
    grow = {"m": {"more": values(HALF)}}  # nested maps merge: the record gets both lists
    cases: list[tuple[str, dict[str, Any]]] = [
        ("patch", {"id": "r", "changes": grow}),
        ("insert", {"record": {"id": "r", **grow}, "upsert": True}),
        # Every row or none: "small" stays as it was though it alone would take the patch.
        ("update_where", {"changes": grow}),
    ]
    for command, args in cases:
        error = fail(engine, LimitExceeded, command, table="t", **args)
        assert error.details == TOO_MANY, command
    assert stored(engine)["m"].keys() == {"deep"}
    small = stored(engine, "small")
    assert small["version"] == 1 and "m" not in small


def test_a_batchs_patches_are_bounded_per_record(engine: Engine) -> None:
    """Two patches of one batch within its one budget can still grow a record past the
    limit: the record's own count refuses it, and the batch is rolled back."""
    run(engine, "insert", table="t", record={"id": "r", "a": values(HALF)})
    third = MAX_VALUES // 3
    ops = [
        {"op": "insert", "table": "t", "record": {"id": "x"}},
        {"op": "patch", "table": "t", "id": "r", "changes": {"b": values(third)}},
        {"op": "patch", "table": "t", "id": "r", "changes": {"c": values(third)}},
    ]
    error = fail(engine, LimitExceeded, "batch", ops=ops)
    # The record's limit, not the batch's (no ``scope``): splitting the batch does not help.
    assert error.details == {**TOO_MANY, "index": 2, "op": "patch"}
    assert run(engine, "count", table="t") == 1 and stored(engine)["version"] == 1


def test_a_record_an_older_store_let_grow_past_the_limit_can_still_be_edited(
    engine: Engine,
) -> None:
    """A merge that only sets fields the record has to scalars, or removes fields, adds no
    values: it is taken (uncounted) even on such a record. One that adds values is refused
    until the record is back within the limit."""
    run(engine, "insert", table="t", record={"id": "r", "status": "new", "a": values(HALF)})
    state = list(engine.iter_state())
    (put,) = [c for c in state if c[0] == "put"]
    put[2]["b"] = values(HALF)  # as written by a store without the check (journal, snapshot)
    older = Engine(clock=FakeClock())
    for change in state:
        older.apply_change(change)
    run(older, "patch", table="t", id="r", changes={"status": "paid"})
    fail(older, LimitExceeded, "patch", table="t", id="r", changes={"new": 1})
    fail(older, LimitExceeded, "patch", table="t", id="r", changes={"status": [1]})
    run(older, "patch", table="t", id="r", changes={"a": None})  # removes HALF values
    assert run(older, "patch", table="t", id="r", changes={"new": 1})["version"] == 4
