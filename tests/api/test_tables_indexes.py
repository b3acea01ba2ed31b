"""GET|POST /api/v1/data/{table}/indexes, GET|DELETE /api/v1/data/{table}/indexes/{field}."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.auth import register
from tests.support.factories import assert_error, create_record, token
from tests.support.stack import Stack
from tests.support.storedirect import bulk_insert

pytestmark = pytest.mark.integration

keys = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["a", "b", "A", "1"])
tables = st.lists(st.fixed_dictionaries({}, optional={"k": keys, "n": st.integers(0, 5)}))


def indexes_url(table: str) -> str:
    return f"/api/v1/data/{table}/indexes"


def filtered_ids(client: httpx.Client, table: str, params: dict[str, str]) -> list[str]:
    """Every id matching the filter, in the table's order (all pages)."""
    ids: list[str] = []
    page = 1
    while True:
        response = client.get(
            f"/api/v1/data/{table}", params={**params, "page": page, "per_page": 100}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [item["id"] for item in body["data"]]
        if len(ids) >= body["meta"]["total"]:
            return ids
        page += 1


def query_param(value: Any) -> str:
    """How a list filter writes the value (generic tables read JSON scalars)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=tables, probes=st.lists(keys, min_size=1, max_size=4))
def test_an_index_does_not_change_results(
    client: httpx.Client, stack: Stack, records: list[dict[str, Any]], probes: list[Any]
) -> None:
    table = f"ix_{token()}"
    bulk_insert(stack, table, [{"seq": i, **r} for i, r in enumerate(records)] or [{"seq": -1}])
    queries = [{"k": query_param(v)} for v in probes]
    queries += [{"k__in": ",".join(query_param(v) for v in probes)}, {"k__in": "1,2", "n": "3"}]
    before = [filtered_ids(client, table, q) for q in queries]

    created = client.post(indexes_url(table), json={"field": "k"})
    assert created.status_code == 201, created.text
    assert created.json()["data"] == {"field": "k", "unique": False, "casefold": False}
    assert [filtered_ids(client, table, q) for q in queries] == before

    assert client.delete(f"{indexes_url(table)}/k").status_code == 204
    assert [filtered_ids(client, table, q) for q in queries] == before


def test_create_list_read_drop(client: httpx.Client) -> None:
    table = f"ix_{token()}"
    create_record(client, table, sku="A-1", stock=1)
    url = indexes_url(table)
    assert client.get(url).json()["data"] == []

    created = client.post(url, json={"field": "sku", "unique": True, "casefold": True})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"{url}/sku"
    spec = {"field": "sku", "unique": True, "casefold": True}
    assert client.get(url).json()["data"] == [spec]
    assert client.get(f"{url}/sku").json()["data"] == spec
    assert_error(client.get(f"{url}/stock"), 404)
    again = client.post(url, json={"field": "sku", "unique": True, "casefold": True})
    assert again.status_code == 200 and again.json()["data"] == spec

    # the unique index is enforced from now on (case-insensitively)
    assert_error(client.post(f"/api/v1/data/{table}", json={"data": {"sku": "a-1"}}), 409)
    found = client.get(f"/api/v1/data/{table}", params={"sku": '"a-1"'}).json()
    assert found["meta"]["total"] == 1

    assert client.delete(f"{url}/sku").status_code == 204
    assert client.get(url).json()["data"] == []
    assert_error(client.delete(f"{url}/sku"), 404, "NOT_FOUND")
    create_record(client, table, sku="a-1")  # no longer unique


def test_unique_index_over_duplicates_is_409_with_examples(client: httpx.Client) -> None:
    table = f"ix_{token()}"
    first = create_record(client, table, code="x")
    second = create_record(client, table, code="x")
    create_record(client, table, code="y")
    error = assert_error(
        client.post(indexes_url(table), json={"field": "code", "unique": True}),
        409,
        "DUPLICATE_VALUES",
    )
    [example] = error["details"]
    assert example["field"] == "code" and example["value"] == "x"
    assert sorted(example["ids"]) == sorted([first["id"], second["id"]])
    assert client.get(indexes_url(table)).json()["data"] == []  # nothing was built
    # a plain (non-unique) index over the same values is fine
    assert client.post(indexes_url(table), json={"field": "code"}).status_code == 201


def test_typed_tables_keep_their_built_in_indexes(client: httpx.Client) -> None:
    assert_error(client.delete(f"{indexes_url('users')}/email"), 400, "BUILT_IN_INDEX")
    assert_error(client.delete(f"{indexes_url('orders')}/user_id"), 400, "BUILT_IN_INDEX")
    assert_error(client.post(indexes_url("users"), json={"field": "email"}), 400, "BAD_INDEX")
    assert_error(client.post(indexes_url("users"), json={"field": "password_hash"}), 400)
    assert_error(
        client.post(indexes_url("orders"), json={"field": "product_name", "unique": True}), 400
    )
    users = client.get(indexes_url("users")).json()["data"]
    assert {"field": "email", "unique": True, "casefold": True} in users


def test_a_typed_table_takes_an_extra_plain_index(client: httpx.Client) -> None:
    url = indexes_url("orders")
    assert client.post(url, json={"field": "product_name"}).status_code in (200, 201)
    try:
        assert any(spec["field"] == "product_name" for spec in client.get(url).json()["data"])
    finally:
        assert client.delete(f"{url}/product_name").status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        {"field": "a.b"},
        {"field": ""},
        {"field": "x" * 65},
        {"field": "a", "other": 1},
        # QA: 1, 0 and "yes" were read as booleans, against the published boolean type
        {"field": "a", "unique": 1},
        {"field": "a", "unique": "yes"},
        {"field": "a", "unique": True, "casefold": 0},
    ],
)
def test_bad_index_bodies_are_422(client: httpx.Client, body: dict[str, Any]) -> None:
    table = f"ix_{token()}"
    create_record(client, table, a=1)
    assert_error(client.post(indexes_url(table), json=body), 422)
    assert client.get(indexes_url(table)).json()["data"] == []


def test_missing_table_and_bad_field(client: httpx.Client) -> None:
    assert_error(client.post(indexes_url(f"none_{token()}"), json={"field": "a"}), 404)
    assert_error(client.get(indexes_url(f"none_{token()}")), 404)
    assert_error(client.delete(f"{indexes_url('users')}/bad-name"), 400)


def test_index_routes_are_admin_only(client: httpx.Client, anon: httpx.Client) -> None:
    table = f"ix_{token()}"
    create_record(client, table, a=1)
    assert client.post(indexes_url(table), json={"field": "a"}).status_code == 201
    user = register(anon)
    for method, url, body in (
        ("GET", indexes_url(table), None),
        ("POST", indexes_url(table), {"field": "b"}),
        ("GET", f"{indexes_url(table)}/a", None),
        ("DELETE", f"{indexes_url(table)}/a", None),
    ):
        assert_error(anon.request(method, url, json=body, headers=user.headers), 403, "FORBIDDEN")
    assert client.get(indexes_url(table)).json()["data"][0]["field"] == "a"


def test_a_unique_index_on_version_is_enforced(client: httpx.Client) -> None:
    """The store checks unique values on the record as stored (``version`` stamped): the
    second row to reach version 2 is a 409, and the index never changes results."""
    table = f"ix_{token()}"
    create_record(client, table, id="a")
    created = client.post(indexes_url(table), json={"field": "version", "unique": True})
    assert created.status_code == 201, created.text
    assert client.patch(f"/api/v1/data/{table}/a", json={"data": {"n": 1}}).status_code == 200
    create_record(client, table, id="b")
    response = client.patch(f"/api/v1/data/{table}/b", json={"data": {"n": 1}})
    error = assert_error(response, 409, "ALREADY_EXISTS")
    assert error["details"][0]["field"] == "version"
    every = client.get(f"/api/v1/data/{table}").json()["data"]
    assert {item["id"]: item["version"] for item in every} == {"a": 2, "b": 1}
    assert filtered_ids(client, table, {"version": "2"}) == ["a"]
    count = client.get(f"/api/v1/data/{table}/count", params={"version": "2"}).json()["data"]
    assert count["count"] == 1


def test_casefold_index_needs_unique(client: httpx.Client) -> None:
    """A casefold index that is not unique is refused in the envelope (400)."""
    table = f"rv_cf_{token()}"
    create_record(client, table, k="X")
    response = client.post(f"/api/v1/data/{table}/indexes", json={"field": "k", "casefold": True})
    error = assert_error(response, 400, "BAD_REQUEST")
    # named by the body's field, not the store's argument (QA: "indexes: ...", {"arg": ...})
    assert error["details"] == [{"field": "body.casefold", "message": error["message"]}]
    response = client.post(f"/api/v1/data/{table}/indexes", json={"field": "id"})
    error = assert_error(response, 400, "BAD_REQUEST")
    assert error["details"] == [{"field": "body.field", "message": "id is always indexed"}]
