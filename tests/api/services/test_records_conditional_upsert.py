"""``api.services.records.conditional_upsert`` over an in-process engine, with another client's
write slipped in between its steps (``EngineStore.before``)."""

from __future__ import annotations

import pytest

from api.conditions import WriteConditions
from api.errors import ApiError
from api.services.records import conditional_upsert
from tests.support.engine import EngineStore, run


async def test_a_create_lost_to_another_client_decides_the_conditions_again() -> None:
    """If-None-Match names version 55: the merge finds no record, and another client creates
    it before this one's insert. That record (version 1) satisfies the condition: merged, not
    412 "a record with this id exists" (QA, 11 of 40 racing upserts)."""
    store = EngineStore()

    def another_client_creates() -> None:
        del store.before["insert"]
        run(store.engine, "insert", table="t", record={"id": "x", "a": 1})

    run(store.engine, "create_table", table="t")
    store.before["insert"] = another_client_creates
    conditions = WriteConditions(if_none_match=frozenset({55}))
    record, created = await conditional_upsert(
        store,  # type: ignore[arg-type]
        "t",
        {"id": "x", "b": 2},
        conditions,
        False,
    )
    assert not created and (record["a"], record["b"], record["version"]) == (1, 2, 2)


async def test_if_match_with_if_none_match_any_says_they_cannot_both_hold() -> None:
    """QA: the record existed and If-Match matched, and the 412 said "there is no record with
    this id to merge into"."""
    store = EngineStore()
    run(store.engine, "insert", table="t", record={"id": "x", "a": 1})
    conditions = WriteConditions(if_match=frozenset({1}), none_match_any=True)
    with pytest.raises(ApiError) as refused:
        await conditional_upsert(store, "t", {"id": "x"}, conditions, False)  # type: ignore[arg-type]
    assert refused.value.status_code == 412
    assert "cannot both hold" in refused.value.message
    assert run(store.engine, "get", table="t", id="x")["version"] == 1


@pytest.mark.parametrize(
    "conditions",
    [WriteConditions(none_match_any=True), WriteConditions(if_none_match=frozenset({7}))],
)
async def test_a_conditional_upsert_creates_what_an_unconditional_one_would(
    conditions: WriteConditions,
) -> None:
    """QA: sent with If-None-Match, the create kept its nulls (a plain insert), which the same
    upsert sent again without conditions then merged away: version 2."""
    store = EngineStore()
    run(store.engine, "create_table", table="t")
    sent = {"id": "b1", "name": "w", "discount": None, "meta": {"color": None, "tags": [None]}}
    record, created = await conditional_upsert(store, "t", sent, conditions, False)  # type: ignore[arg-type]
    assert created and "discount" not in record
    assert record["meta"] == {"tags": [None]}
    again = run(store.engine, "insert", table="t", record=sent, upsert=True)
    assert again["version"] == 1
