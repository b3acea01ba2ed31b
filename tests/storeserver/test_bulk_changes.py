"""``update_where`` checks its ``changes`` before it selects rows: a bad patch is refused
whatever the filter matches (it was accepted when the filter matched nothing)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from storeserver.engine import Engine
from storeserver.errors import BadRequest, LimitExceeded
from storeserver.records import MAX_VALUES
from tests.support.engine import FakeClock, fail, run

NOTHING = [["id", "eq", "none"]]


@pytest.fixture
def engine() -> Engine:
    e = Engine(clock=FakeClock())
    run(e, "insert", table="uw", record={"id": "r1"})
    return e


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"x": math.nan}, "NaN"),
        ({"x": 2**64 - 1}, "signed 64-bit range"),
        ({b"x": 1}, "keys must be strings"),
        ({"m": {"x": math.inf}}, "NaN"),
        ({"m": {1: 1}}, "keys must be strings"),
        ({"x": [{"y": object()}]}, "unsupported value type"),
    ],
)
@pytest.mark.parametrize("where", [NOTHING, None])
def test_bad_changes_are_refused_whatever_the_filter_matches(
    engine: Engine, changes: dict[Any, Any], reason: str, where: Any
) -> None:
    args = {"where": where} if where is not None else {}
    error = fail(engine, BadRequest, "update_where", table="uw", changes=changes, **args)
    assert error.code == "BAD_REQUEST" and reason in error.message
    assert error.details == {"reason": "value"}
    assert run(engine, "get", table="uw", id="r1")["version"] == 1


def test_too_many_values_are_refused_when_nothing_matches(engine: Engine) -> None:
    changes = {"x": [0] * MAX_VALUES}
    error = fail(engine, LimitExceeded, "update_where", table="uw", where=NOTHING, changes=changes)
    assert error.details == {"reason": "values", "max": MAX_VALUES}


def test_good_changes_matching_nothing_still_answer_zero(engine: Engine) -> None:
    result = run(engine, "update_where", table="uw", where=NOTHING, changes={"x": 1.5})
    assert result == {"matched": 0, "updated": 0}


def test_store_owned_fields_are_ignored_unchecked_as_patch_ignores_them(engine: Engine) -> None:
    changes = {"version": math.nan, "x": 1}
    assert run(engine, "update_where", table="uw", changes=changes) == {"matched": 1, "updated": 1}
    assert run(engine, "patch", table="uw", id="r1", changes=changes)["version"] == 2


def test_rows_sharing_a_value_and_rows_with_their_own_are_each_judged(engine: Engine) -> None:
    # r1's tags come from an update_where (r2 and r3 share that very value); r4 and r5 hold
    # equal values of their own, r6 a different one, r7 none.
    run(engine, "insert", table="uw", record={"id": "r2"})
    run(engine, "insert", table="uw", record={"id": "r3"})
    run(engine, "update_where", table="uw", changes={"tags": ["a", {"b": 1}]})
    run(engine, "insert", table="uw", record={"id": "r4", "tags": ["a", {"b": 1}]})
    run(engine, "insert", table="uw", record={"id": "r5", "tags": ["a", {"b": 1}]})
    run(engine, "insert", table="uw", record={"id": "r6", "tags": ["a", {"b": 2}]})
    run(engine, "insert", table="uw", record={"id": "r7"})
    changes = {"tags": ["a", {"b": 1}]}
    assert run(engine, "update_where", table="uw", changes=changes) == {
        "matched": 7,
        "updated": 2,
    }
    versions = {r["id"]: r["version"] for r in run(engine, "find", table="uw")["items"]}
    assert versions == {"r1": 2, "r2": 2, "r3": 2, "r4": 1, "r5": 1, "r6": 2, "r7": 2}
    # A nested map merges into each row's own: every row gets a map of its own, and the same
    # patch again changes none of them.
    for updated in (7, 0):
        result = run(engine, "update_where", table="uw", changes={"meta": {"x": 1, "y": None}})
        assert result == {"matched": 7, "updated": updated}
    assert {r["id"]: r["meta"] for r in run(engine, "find", table="uw")["items"]} == {
        f"r{n}": {"x": 1} for n in range(1, 8)
    }
