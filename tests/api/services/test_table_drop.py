"""``api.services.tables.drop_table``: the store's refusals as the API's 409s, over a real
engine in-process (``EngineStore``)."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.services import tables
from storeserver.builds import CHUNK, Job
from tests.support.engine import EngineStore, run


async def refusal(store: EngineStore, table: str, force: bool = True) -> ApiError:
    with pytest.raises(ApiError) as info:
        await tables.drop_table(store, table, force)
    return info.value


async def test_a_long_write_running_on_the_table_is_table_busy() -> None:
    store = EngineStore()
    engine = store.engine
    for start in range(0, CHUNK + 1, 1000):
        ops = [
            {"op": "insert", "table": "big", "record": {"k": i}} for i in range(start, start + 1000)
        ]
        run(engine, "batch", ops=ops)
    job = engine.execute("create_index", {"table": "big", "field": "k", "unique": True})
    assert isinstance(job, Job)
    engine.advance(job)

    error = await refusal(store, "big")
    assert (error.status_code, error.code) == (409, "TABLE_BUSY")
    assert "create_index" in error.message

    engine.run_job(job)
    await tables.drop_table(store, "big", True)
    assert "big" not in run(engine, "list_tables")


@pytest.mark.parametrize("table", ["users", "orders", "_jobs"])
async def test_the_api_s_own_tables_are_refused_before_the_store_is_asked(table: str) -> None:
    store = EngineStore()
    error = await refusal(store, table)
    assert (error.status_code, error.code) == (409, "BUILT_IN_TABLE")
    assert store.sent("drop_table") == []


async def test_tables_the_store_keeps_are_built_in_too() -> None:
    # Declared by something other than this API (the store refuses: internal, keeps rows).
    store = EngineStore()
    run(store.engine, "create_table", table="_cache")
    run(
        store.engine,
        "create_table",
        table="staff",
        keep=[{"field": "on", "value": 1, "at_least": 1}],
    )
    for table in ("_cache", "staff"):
        error = await refusal(store, table)
        assert (error.status_code, error.code) == (409, "BUILT_IN_TABLE")
