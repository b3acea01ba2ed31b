"""``api.services.tables.describe_table``: a description too large for one store reply."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.services import tables
from storeserver.errors import LimitExceeded
from tests.support.engine import EngineStore, run


async def test_a_description_past_the_frame_limit_names_the_sample_not_a_page() -> None:
    """QA: 20 rows of 4,000 distinct long keys each: the store's "ask for a smaller page"
    reached the client, on a route that has no pages; ``?sample=`` is what helps."""
    store = EngineStore()
    run(store.engine, "insert", table="wide", record={"a": 1})

    def too_large() -> None:  # as the server refuses a reply past its frame limit
        raise LimitExceeded(
            "the reply would exceed the maximum frame size; ask for a smaller page",
            {"max_frame_bytes": 16 * 2**20},
        )

    store.before["describe"] = too_large
    with pytest.raises(ApiError) as info:
        await tables.describe_table(store, "wide", None)
    error = info.value
    assert (error.status_code, error.code) == (400, "LIMIT_EXCEEDED")
    assert "?sample=" in error.message and "page" not in error.message
    assert error.details == [{"field": "query.sample", "max_frame_bytes": 16 * 2**20}]
    del store.before["describe"]
    described = await tables.describe_table(store, "wide", None)
    assert described["typed"] is False and described["rows"] == 1
