"""The number of values one record, patch or filter operand may hold (``records.MAX_VALUES``):
one request of millions of tiny maps held the store's only thread for seconds."""

from __future__ import annotations

import math
from typing import Any

import pytest

from storeserver.engine import Engine
from storeserver.errors import BadRequest, LimitExceeded
from storeserver.records import MAX_VALUES
from tests.support.engine import FakeClock, fail, run

TOO_MANY = {"reason": "values", "max": MAX_VALUES}


@pytest.fixture
def engine() -> Engine:
    return Engine(clock=FakeClock())


def fits(extra: int = 0) -> list[Any]:
    """A list that, as the value of one field of a record, makes it hold exactly
    ``MAX_VALUES`` values (the record, the field, the list's items) plus ``extra``."""
    return [{}] * (MAX_VALUES - 2 + extra)


def test_a_record_of_exactly_max_values_is_kept_and_one_more_is_refused(engine: Engine) -> None:
    stored = run(engine, "insert", table="t", record={"v": fits()})
    assert len(stored["v"]) == MAX_VALUES - 2
    error = fail(engine, LimitExceeded, "insert", table="t", record={"v": fits(1)})
    assert error.code == "LIMIT_EXCEEDED" and error.details == TOO_MANY
    assert str(MAX_VALUES) in error.message
    # scalars count as maps do, and so do a record's top-level fields
    fail(engine, LimitExceeded, "insert", table="t", record={"v": [0] * MAX_VALUES})
    many_fields = {f"f{n}": 0 for n in range(MAX_VALUES)}
    assert fail(engine, LimitExceeded, "insert", table="t", record=many_fields).details == TOO_MANY
    assert run(engine, "count", table="t") == 1


def test_the_count_is_checked_before_the_items_are_copied(engine: Engine) -> None:
    # A NaN after too many values: the count stops the copy before it reaches the NaN.
    record = {"v": [{"w": [*fits(), math.nan]}]}
    assert fail(engine, LimitExceeded, "insert", table="t", record=record).details == TOO_MANY
    # Within the count, the same NaN is the error.
    error = fail(engine, BadRequest, "insert", table="t", record={"v": [{}, math.nan]})
    assert error.details == {"reason": "value"}


def test_every_write_of_values_is_bounded(engine: Engine) -> None:
    run(engine, "insert", table="t", record={"id": "r", "n": 1})
    too_many = {"v": fits(1)}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("replace", {"id": "r", "record": too_many}),
        ("patch", {"id": "r", "changes": too_many}),
        ("patch", {"id": "r", "changes": {"deep": {"er": fits(1)}}}),
        ("insert", {"record": {"id": "r", **too_many}, "upsert": True}),
        ("update_where", {"changes": too_many}),
    ]
    for command, args in cases:
        error = fail(engine, LimitExceeded, command, table="t", **args)
        assert error.details == TOO_MANY, command
    error = fail(
        engine,
        LimitExceeded,
        "batch",
        ops=[
            {"op": "insert", "table": "t", "record": {"n": 2}},
            {"op": "insert", "table": "t", "record": too_many},
        ],
    )
    assert error.details == {**TOO_MANY, "scope": "batch", "index": 1, "op": "insert"}
    assert run(engine, "find", table="t", fields=["n"])["items"] == [{"id": "r", "n": 1}]


def test_a_filter_operand_is_bounded_too(engine: Engine) -> None:
    run(engine, "insert", table="t", record={"v": [1]})
    error = fail(engine, LimitExceeded, "find", table="t", where=[["v", "eq", [0] * MAX_VALUES]])
    assert error.details["reason"] == "values" and error.details["max"] == MAX_VALUES
    assert run(engine, "count", table="t", where=[["v", "eq", [1]]]) == 1


def test_a_filters_operands_are_bounded_together(engine: Engine) -> None:
    """Review: five operands just under the limit each passed, a request larger than any
    frame the store decodes (``protocol.MAX_REQUEST_ENTRIES``): the connection was dropped."""
    run(engine, "insert", table="t", record={"v": [1]})
    half = [0] * (MAX_VALUES // 2 - 1)  # with its list: half the limit
    where = [["v", "ne", half], ["v", "ne", half]]
    assert run(engine, "count", table="t", where=where) == 1  # exactly the limit
    for over in ([*where, ["v", "ne", [0]]], {"or": [*where, ["v", "eq", {"k": 1}]]}):
        error = fail(engine, LimitExceeded, "count", table="t", where=over)
        assert error.details.items() >= {**TOO_MANY, "scope": "filter", "arg": "where"}.items()
        assert "one filter's operands" in error.message


def test_update_where_rows_share_one_copy_of_the_changes(engine: Engine) -> None:
    for n in range(3):
        run(engine, "insert", table="t", record={"id": f"r{n}", "n": n})
    sent: dict[str, Any] = {"tags": ["a", {"b": 1}], "meta": {"k": "v", "n": None}}
    assert run(engine, "update_where", table="t", changes=sent) == {"matched": 3, "updated": 3}
    sent["tags"].append("later")  # the store holds its own copy, not the caller's lists
    rows = run(engine, "find", table="t")["items"]
    assert [r["tags"] for r in rows] == [["a", {"b": 1}]] * 3
    assert [r["meta"] for r in rows] == [{"k": "v"}] * 3  # None removes, as in a merge patch
    # The same changes again change nothing (no new version), shared values or not.
    assert run(engine, "update_where", table="t", changes=sent | {"tags": ["a", {"b": 1}]}) == {
        "matched": 3,
        "updated": 0,
    }


def test_a_batchs_ops_spend_one_budget(engine: Engine) -> None:
    """Per record alone, 25 records of 590,000 empty maps held the loop 14 s in one batch:
    the ops' values count together, and the op that crosses the limit fails it all."""
    third = MAX_VALUES // 3
    ops = [{"op": "insert", "table": "t", "record": {"v": [{}] * third}} for _ in range(2)]
    assert len(run(engine, "batch", ops=ops)["results"]) == 2
    ops.append({"op": "insert", "table": "t", "record": {"v": [0] * third}})
    error = fail(engine, LimitExceeded, "batch", ops=ops)
    assert error.details == {**TOO_MANY, "scope": "batch", "index": 2, "op": "insert"}
    assert run(engine, "count", table="t") == 2  # the first batch only: nothing of the second
    # Outside a batch each write has its own budget again.
    assert run(engine, "insert", table="t", record={"v": fits()})["v"]


@pytest.mark.parametrize("op", ["insert", "replace"])
def test_a_batchs_flat_records_spend_the_budget_too(engine: Engine, op: str) -> None:
    """QA: only records holding a map or a list spent from the batch's budget: four inserts of
    590,000 scalar fields each held the loop 4 s in one batch."""
    for rid in "abc":
        run(engine, "insert", table="t", record={"id": rid})
    ids = iter(range(10))

    def write(rid: str, fields: int) -> dict[str, Any]:
        record = {f"f{n}": n for n in range(fields)}
        if op == "insert":
            return {"op": "insert", "table": "t", "record": {**record, "id": f"{next(ids)}"}}
        return {"op": "replace", "table": "t", "id": rid, "record": record}

    half = MAX_VALUES // 2 - 10
    assert len(run(engine, "batch", ops=[write("a", half), write("b", half)])["results"]) == 2
    over = [write("a", half), write("b", half), write("c", 30)]
    error = fail(engine, LimitExceeded, "batch", ops=over)
    assert error.details == {**TOO_MANY, "scope": "batch", "index": 2, "op": op}
