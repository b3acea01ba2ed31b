"""Upserts (``insert`` with ``upsert: true``) that change nothing are kept as ``patch`` keeps
them: same version and ``updated_at``, no journal or audit entry, alone or in a batch."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from storeserver.engine import Engine
from tests.support.engine import FakeClock, run


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Engine:
    e = Engine(clock=clock)
    e.execute(
        "create_table",
        {"table": "users", "indexes": [{"field": "email", "unique": True}], "hidden": ["secret"]},
    )
    return e


def upsert(engine: Engine, table: str, **record: Any) -> dict[str, Any]:
    result: dict[str, Any] = run(engine, "insert", table=table, record=record, upsert=True)
    return result


NO_OP_UPSERTS = [
    {"id": "u1"},
    {"id": "u1", "a": 1},
    {"id": "u1", "b": {"c": "x"}, "gone": None},  # a nested merge of what is there
    {"id": "u1", "version": 7, "created_at": "x"},  # store-owned: ignored
]


@pytest.mark.parametrize("record", NO_OP_UPSERTS)
def test_an_upsert_that_changes_nothing_keeps_the_record(
    engine: Engine, clock: FakeClock, record: dict[str, Any]
) -> None:
    """It wrote version + 1 with a new updated_at: caches and If-Match tags went stale."""
    made = upsert(engine, "t", id="u1", a=1, b={"c": "x"})
    engine.drain_changes()
    audited = engine.audit.seq
    clock.advance(5)
    assert upsert(engine, "t", **record) == made
    assert upsert(engine, "t", **record) == made
    assert engine.drain_changes() == [] and engine.audit.seq == audited  # no journal, no audit
    assert run(engine, "get", table="t", id="u1") == made


def test_a_no_op_upsert_answers_without_hidden_fields(engine: Engine) -> None:
    made = upsert(engine, "users", id="u1", email="a@x", secret="s")
    assert "secret" not in made
    assert upsert(engine, "users", id="u1", email="a@x", secret="s") == made


@pytest.mark.parametrize(("stored", "written"), [(1, 1.0), (1, True), (1, Decimal(1))])
def test_an_upsert_of_an_equal_value_stored_differently_is_a_change(
    engine: Engine, stored: Any, written: Any
) -> None:
    upsert(engine, "t", id="u1", a=stored)
    merged = upsert(engine, "t", id="u1", a=written)
    assert merged["version"] == 2 and repr(merged["a"]) == repr(written)


def test_a_no_op_upsert_in_a_batch_keeps_the_record_and_the_rest_happen(engine: Engine) -> None:
    made = upsert(engine, "t", id="u1", a=1)
    engine.drain_changes()
    ops = [
        {"op": "insert", "table": "t", "record": {"id": "u1", "a": 1}, "upsert": True},
        {"op": "insert", "table": "t", "record": {"id": "u2", "a": 2}, "upsert": True},
        {"op": "insert", "table": "t", "record": {"id": "u1", "a": 3}, "upsert": True},
    ]
    results = run(engine, "batch", ops=ops)["results"]
    assert results[0] == made
    assert (results[1]["version"], results[2]["version"], results[2]["a"]) == (1, 2, 3)
    puts = [c[2]["id"] for c in engine.drain_changes() if c[0] == "put"]
    assert puts == ["u2", "u1"]


@pytest.mark.parametrize("table", ["users", "new_table"])
def test_an_upsert_that_creates_drops_nulls_so_its_repeat_changes_nothing(
    engine: Engine, table: str
) -> None:
    """QA: the create kept ``{"discount": null, "meta": {"color": null}}`` as sent, and the
    same upsert again merged the nulls away (version 2, a new ETag): a retried upsert did not
    converge. It creates what its merge makes of an empty record (RFC 7396)."""
    sent = {"id": "u9", "name": "w", "discount": None, "meta": {"color": None, "tags": [None]}}
    made = upsert(engine, table, **sent)
    assert {k: made[k] for k in ("name", "meta")} == {"name": "w", "meta": {"tags": [None]}}
    assert "discount" not in made and made["version"] == 1
    again = upsert(engine, table, **sent)
    assert again == made
    plain = run(engine, "insert", table=table, record={"id": "p1", "discount": None})
    assert plain["discount"] is None  # a plain insert stores what it is sent


def test_an_upsert_that_creates_spends_a_batchs_value_budget_as_an_insert_does(
    engine: Engine,
) -> None:
    """QA: merged, then copied, its values were counted twice: a 350,000-value record (the
    budget is 600,000) went in as a batch's insert and was refused as a batch's upsert."""
    big = list(range(350_000))
    for n, upserting in enumerate((False, True)):
        op = {"op": "insert", "table": "t", "record": {"id": f"r{n}", "v": big}}
        if upserting:
            op["upsert"] = True
        run(engine, "batch", ops=[op])
        stored = run(engine, "get", table="t", id=f"r{n}")
        assert stored["v"] == big and stored["version"] == 1
