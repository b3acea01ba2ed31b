"""A PATCH that would grow a record past the store's value limit (``records.MAX_VALUES``) gets
what an oversized insert gets: 400 ``LIMIT_EXCEEDED``, nothing changed. Before, two PATCHes
each under the limit (a 1 MiB body holds at most 2**19 values) built a record over it."""

from __future__ import annotations

import httpx
import pytest

from storeserver.errors import LimitExceeded
from storeserver.records import MAX_VALUES
from tests.support.factories import assert_error, token
from tests.support.stack import Stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration

HALF = MAX_VALUES // 2  # values a field holding a list of HALF - 1 zeros adds (~600 KB of JSON)


def test_a_patch_past_the_value_limit_is_refused_as_an_oversized_insert(
    stack: Stack, client: httpx.Client
) -> None:
    table = f"values_{token()}"
    url = f"/api/v1/data/{table}"
    created = client.post(url, json={"data": {"id": "h", "a": [0] * (HALF - 1)}})
    assert created.status_code == 201, created.text
    # The store's error for an insert of the record the PATCH would make (the API cannot send
    # one: its body limit is below the store's value limit).
    with pytest.raises(LimitExceeded) as insert:
        store_call(
            stack,
            "insert",
            {"table": table, "record": {"a": [0] * (HALF - 1), "b": [0] * (HALF - 1)}},
        )

    response = client.patch(f"{url}/h", json={"data": {"b": [0] * (HALF - 1)}})
    error = assert_error(response, 400, "LIMIT_EXCEEDED")
    assert error["message"] == insert.value.message
    assert error["details"] == [{"reason": "values", "max": MAX_VALUES}]

    record = client.get(f"{url}/h").json()["data"]
    assert record["version"] == 1 and "b" not in record
    # Within the limit the same PATCH is taken: the record is then exactly at it.
    fits = client.patch(f"{url}/h", json={"data": {"b": [0] * (HALF - 2)}})
    assert fits.status_code == 200, fits.text
    assert fits.json()["data"]["version"] == 2
