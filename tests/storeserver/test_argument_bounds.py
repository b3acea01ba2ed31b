"""Bounds on the size of a command's arguments that the frame limits alone left open: each
held the store's only thread for seconds (QA, 2026-11-23), or failed as INTERNAL."""

from __future__ import annotations

from typing import Any

import pytest

from storeserver.aggregation import MAX_GROUP_BY, MAX_METRICS
from storeserver.arguments import MAX_OFFSET
from storeserver.catalog import MAX_INDEXES
from storeserver.engine import Engine
from storeserver.errors import BadRequest, LimitExceeded
from storeserver.query import MAX_SORT_FIELDS
from storeserver.schemas import MAX_SCHEMA_VALUES
from tests.support.engine import FakeClock, fail, run


@pytest.fixture
def engine() -> Engine:
    engine = Engine(clock=FakeClock())
    for n in range(3):
        run(engine, "insert", table="t", record={"id": f"r{n}", "a": n, "b": n % 2})
    return engine


def fields(count: int) -> list[str]:
    return [f"f{n}" for n in range(count)]


def test_a_table_has_at_most_max_indexes(engine: Engine) -> None:
    """40,000 indexes in one create_table held the loop 3.4 s; 100,000 took 26 s."""
    indexes = [{"field": f} for f in fields(MAX_INDEXES - 1)]  # and the one added below
    run(engine, "create_table", table="t", indexes=indexes)
    run(engine, "create_index", table="t", field="last")
    error = fail(engine, LimitExceeded, "create_index", table="t", field="one_more")
    assert error.details == {"arg": "indexes", "max": MAX_INDEXES, "table": "t"}
    fail(engine, LimitExceeded, "create_table", table="t", indexes=[{"field": "x"}])
    run(engine, "create_index", table="t", field="f0")  # the same index again: nothing new
    too_many = [{"field": f} for f in fields(MAX_INDEXES + 1)]
    fail(engine, LimitExceeded, "create_table", table="u", indexes=too_many)
    run(engine, "create_table", table="p")
    keys = [{"field": f, "table": "p"} for f in fields(MAX_INDEXES + 1)]
    error = fail(engine, LimitExceeded, "create_table", table="v", foreign_keys=keys)
    assert error.details["arg"] in ("indexes", "foreign_keys")  # each key is indexed too


def test_aggregate_bounds_its_group_fields_and_metrics(engine: Engine) -> None:
    """100,000 group fields over 2,000 rows held the loop 29 s and kept 1.2 GB."""
    groups = run(engine, "aggregate", table="t", group_by=fields(MAX_GROUP_BY))
    assert len(groups["items"]) == 1
    error = fail(engine, LimitExceeded, "aggregate", table="t", group_by=fields(MAX_GROUP_BY + 1))
    assert error.details == {"arg": "group_by", "max": MAX_GROUP_BY}
    metrics = [{"op": "sum", "field": "a", "as": f"m{n}"} for n in range(MAX_METRICS + 1)]
    run(engine, "aggregate", table="t", metrics=metrics[:-1])
    error = fail(engine, LimitExceeded, "aggregate", table="t", metrics=metrics)
    assert error.details == {"arg": "metrics", "max": MAX_METRICS}


def test_a_sort_has_at_most_max_sort_fields(engine: Engine) -> None:
    sort = [[f, "asc"] for f in fields(MAX_SORT_FIELDS)]
    assert run(engine, "find", table="t", sort=sort)["total"] == 3
    error = fail(engine, LimitExceeded, "find", table="t", sort=[*sort, ["a", "desc"]])
    assert error.details == {"arg": "sort", "max": MAX_SORT_FIELDS}


@pytest.mark.parametrize("offset", [MAX_OFFSET + 1, 2**63 - 100, 2**64 - 1])
def test_an_offset_past_any_table_is_refused_not_an_internal_error(
    engine: Engine, offset: int
) -> None:
    assert run(engine, "find", table="t", offset=MAX_OFFSET)["items"] == []
    error = fail(engine, LimitExceeded, "find", table="t", offset=offset)
    assert error.details == {"arg": "offset", "max": MAX_OFFSET}


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_values_are_quoted_briefly_in_errors(engine: Engine) -> None:
    """A list ~1,000 deep as a metric's op or a $ref failed as INTERNAL (RecursionError)."""
    deep = _nested(990)
    error = fail(engine, BadRequest, "aggregate", table="t", metrics=[{"op": deep, "as": "m"}])
    assert len(error.message) < 200
    ops = [
        {"op": "insert", "table": "t", "record": {"id": "n1"}},
        {"op": "insert", "table": "t", "record": {"id": "n2", "x": {"$ref": deep}}},
    ]
    error = fail(engine, BadRequest, "batch", ops=ops)
    assert len(error.message) < 200 and run(engine, "count", table="t") == 3


def test_a_schema_holds_at_most_max_schema_values(engine: Engine) -> None:
    """{"type": [[], [], ...]} of 100,000 items held the loop ~3 s in jsonschema's check."""
    codes = {"type": "object", "properties": {"c": {"enum": list(range(MAX_SCHEMA_VALUES - 10))}}}
    run(engine, "set_schema", table="t", schema=codes)  # a big enum still fits
    error = fail(engine, LimitExceeded, "set_schema", table="t", schema={"type": [[]] * 30_000})
    assert error.details == {"arg": "schema", "max": MAX_SCHEMA_VALUES}
