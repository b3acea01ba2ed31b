"""An upsert that merges values the record holds already changes nothing, as a PATCH: same
version, updated_at and ETag, and ``meta`` counts it as neither inserted nor updated."""

from __future__ import annotations

import httpx
import pytest

from tests.support.factories import assert_error, create_record, token

pytestmark = pytest.mark.integration


@pytest.fixture
def url(client: httpx.Client) -> str:
    table = f"t_{token()}"
    create_record(client, table, id="u1", a=1)
    return f"/api/v1/data/{table}"


def test_a_single_upsert_of_the_values_stored_is_200_and_keeps_the_etag(
    client: httpx.Client, url: str
) -> None:
    made = client.get(f"{url}/u1")
    for _ in range(2):
        same = client.post(url, params={"upsert": "true"}, json={"data": {"id": "u1", "a": 1}})
        assert same.status_code == 200, same.text
        assert same.headers["etag"] == made.headers["etag"] == 'W/"1"'
        assert same.json()["data"] == made.json()["data"]
    merged = client.post(url, params={"upsert": "true"}, json={"data": {"id": "u1", "a": 2}})
    assert merged.status_code == 200 and merged.headers["etag"] == 'W/"2"'


def test_a_bulk_upsert_counts_only_what_it_wrote(client: httpx.Client, url: str) -> None:
    same = [{"id": "u1", "a": 1}]
    for _ in range(2):
        answer = client.post(url, params={"upsert": "true"}, json={"data": same})
        assert answer.status_code == 200, answer.text
        assert answer.json()["meta"] == {"inserted": 0, "updated": 0}
        assert answer.json()["data"][0]["version"] == 1
    mixed = [{"id": "u1", "a": 1}, {"id": "u1", "a": 2}, {"id": "u2", "a": 1}]
    answer = client.post(url, params={"upsert": "true"}, json={"data": mixed})
    assert answer.status_code == 201, answer.text
    assert answer.json()["meta"] == {"inserted": 1, "updated": 1}
    assert [r["version"] for r in answer.json()["data"]] == [1, 2, 1]


def test_a_single_upsert_error_is_the_single_inserts(client: httpx.Client, url: str) -> None:
    """Sent as a batch of one: its errors name no batch index or op."""
    schema = {"properties": {"a": {"type": "integer"}}}
    assert client.put(f"{url}/schema", json={"schema": schema}).status_code == 200
    answer = client.post(url, params={"upsert": "true"}, json={"data": {"id": "u1", "a": "x"}})
    error = answer.json()["error"]
    assert answer.status_code == 422, answer.text
    assert error["details"] == [{"field": "body.data.a", "message": "'x' is not of type 'integer'"}]
    assert "record 0" not in error["message"]


def test_an_upsert_evaluates_if_none_match_and_if_match(client: httpx.Client, url: str) -> None:
    """QA: both headers were ignored, so the usual "create only if absent" idiom merged into
    the record there. RFC 9110 §13.1: evaluated before the method acts."""
    upsert = {"upsert": "true"}
    absent = {"If-None-Match": "*"}
    refused = client.post(url, params=upsert, headers=absent, json={"data": {"id": "u1", "a": 9}})
    assert_error(refused, 412, "PRECONDITION_FAILED")
    assert client.get(f"{url}/u1").json()["data"]["a"] == 1  # nothing written
    made = client.post(url, params=upsert, headers=absent, json={"data": {"id": "u2", "a": 2}})
    assert made.status_code == 201 and made.headers["etag"] == 'W/"1"'

    stale = client.post(
        url, params=upsert, headers={"If-Match": 'W/"7"'}, json={"data": {"id": "u1", "a": 9}}
    )
    assert_error(stale, 412, "PRECONDITION_FAILED")
    merged = client.post(
        url, params=upsert, headers={"If-Match": 'W/"1"'}, json={"data": {"id": "u1", "b": 2}}
    )
    assert merged.status_code == 200 and merged.json()["data"]["a"] == 1
    assert merged.json()["data"]["b"] == 2 and merged.headers["etag"] == 'W/"2"'
    for match in ("*", 'W/"1"'):  # If-Match on a record that is not there: nothing to merge
        missing = client.post(
            url, params=upsert, headers={"If-Match": match}, json={"data": {"id": "u9", "a": 1}}
        )
        assert_error(missing, 412, "PRECONDITION_FAILED")
        assert client.get(f"{url}/u9").status_code == 404
    not_at = client.post(
        url, params=upsert, headers={"If-None-Match": 'W/"2"'}, json={"data": {"id": "u1", "c": 3}}
    )
    assert_error(not_at, 412, "PRECONDITION_FAILED")
    assert_error(
        client.post(url, params=upsert, headers=absent, json={"data": [{"id": "u5"}]}),
        400,
        "BAD_REQUEST",
    )
    plain = client.post(url, headers={"If-Match": 'W/"7"'}, json={"data": {"id": "u6"}})
    assert plain.status_code == 201  # a create without upsert ignores both, as documented
