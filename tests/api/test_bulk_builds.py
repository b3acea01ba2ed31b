"""``records.create_records`` in-process: a bulk insert into users that fails validation on a
later record leaves no coroutine behind (an unawaited one printed a RuntimeWarning, a line
that is not JSON, into the service log)."""

from __future__ import annotations

import gc
import warnings

import pytest
from fastapi.exceptions import RequestValidationError

from api.services import records
from tests.support.engine import EngineStore
from tests.support.factories import user_payload


async def test_an_invalid_later_record_leaves_no_coroutine_unawaited() -> None:
    store = EngineStore()
    items = [user_payload(), user_payload(email="not-an-email")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RequestValidationError) as info:
            await records.create_records(store, "users", items, upsert=False)
        gc.collect()
    assert info.value.errors()[0]["loc"][:3] == ("body", "data", 1)
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert store.sent("batch") == []  # nothing reached the store
