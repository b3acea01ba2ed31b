"""/api/v1/data/{table}: generic records, and users/orders through the same services."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.factories import (
    PASSWORD,
    assert_error,
    create_record,
    create_user,
    token,
    user_payload,
)
from tests.support.stack import Stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration
JSON = {"content-type": "application/json"}


@pytest.fixture
def table() -> Iterator[str]:
    yield f"t_{token()}"


def test_generic_crud(client: httpx.Client, table: str) -> None:
    created = client.post(
        f"/api/v1/data/{table}", json={"data": {"name": "blue", "stock": 3, "meta": {"a": 1}}}
    )
    assert created.status_code == 201
    record = created.json()["data"]
    assert record["name"] == "blue" and record["version"] == 1
    url = f"/api/v1/data/{table}/{record['id']}"
    assert created.headers["location"] == url

    read = client.get(url)
    assert read.json()["data"] == record and read.headers["etag"] == 'W/"1"'
    assert client.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304

    patched = client.patch(url, json={"data": {"stock": None, "meta": {"b": 2}}})
    assert patched.status_code == 200
    data = patched.json()["data"]
    assert "stock" not in data and data["meta"] == {"a": 1, "b": 2} and data["version"] == 2

    replaced = client.put(url, json={"data": {"name": "red"}}, headers={"If-Match": 'W/"2"'})
    assert replaced.status_code == 200
    data = replaced.json()["data"]
    assert data["name"] == "red" and "meta" not in data and data["version"] == 3
    assert_error(client.put(url, json={"data": {"x": 1}}, headers={"If-Match": 'W/"2"'}), 412)

    assert client.delete(url).status_code == 204
    assert_error(client.get(url), 404, "NOT_FOUND")


def test_a_patch_that_changes_nothing_keeps_the_version_and_etag(
    client: httpx.Client, table: str
) -> None:
    made = client.post(f"/api/v1/data/{table}", json={"data": {"a": 1, "m": {"k": "v"}}})
    url = f"/api/v1/data/{table}/{made.json()['data']['id']}"
    for data in ({}, {"a": 1}, {"m": {"k": "v"}}):
        same = client.patch(url, json={"data": data}, headers={"If-Match": 'W/"1"'})
        assert same.status_code == 200, same.text
        assert same.headers["etag"] == 'W/"1"' and same.json()["data"]["version"] == 1
    changed = client.patch(url, json={"data": {"a": True}})  # not 1: a change
    assert changed.json()["data"]["version"] == 2


def test_a_record_created_again_under_its_id_gets_new_etags(
    client: httpx.Client, table: str
) -> None:
    """A cached copy (If-None-Match) or a held ETag (If-Match) of a deleted record must not
    fit the record created next under the same client-chosen id."""
    url = f"/api/v1/data/{table}/sku-1"
    assert client.post(f"/api/v1/data/{table}", json={"data": {"id": "sku-1", "n": 1}}).is_success
    assert client.patch(url, json={"data": {"n": 2}}).headers["etag"] == 'W/"2"'
    assert client.delete(url).status_code == 204
    again = client.post(f"/api/v1/data/{table}?upsert=true", json={"data": {"id": "sku-1", "n": 3}})
    assert again.status_code == 201, again.text
    assert again.headers["etag"] == 'W/"3"' and again.json()["data"]["version"] == 3
    fresh = client.get(url, headers={"If-None-Match": 'W/"2"'})
    assert fresh.status_code == 200 and fresh.json()["data"]["n"] == 3
    stale = client.patch(url, json={"data": {"n": 4}}, headers={"If-Match": 'W/"2"'})
    assert_error(stale, 412)


def test_a_stale_if_match_is_412_even_when_the_write_would_change_nothing(
    client: httpx.Client, table: str
) -> None:
    """Two clients holding W/"1" send the same change: the first makes version 2; the second
    is a no-op on version 2, but its condition is stale: 412, not a second 200."""
    made = client.post(f"/api/v1/data/{table}", json={"data": {"a": 1}})
    url = f"/api/v1/data/{table}/{made.json()['data']['id']}"
    stale = {"If-Match": 'W/"1"'}
    assert client.patch(url, json={"data": {"a": 2}}, headers=stale).status_code == 200
    assert_error(client.patch(url, json={"data": {"a": 2}}, headers=stale), 412)
    assert_error(client.put(url, json={"data": {"a": 2}}, headers=stale), 412)


def test_client_may_choose_an_id_once(client: httpx.Client, table: str) -> None:
    record = create_record(client, table, id="sku-1", name="first")
    assert record["id"] == "sku-1"
    again = client.post(f"/api/v1/data/{table}", json={"data": {"id": "sku-1"}})
    assert_error(again, 409, "ALREADY_EXISTS")
    for bad_id in (7, "", "a/b", "..", "x" * 129, "spa ce"):
        response = client.post(f"/api/v1/data/{table}", json={"data": {"id": bad_id}})
        assert_error(response, 422, "VALIDATION_ERROR")


def test_an_id_in_a_put_or_patch_body_is_ignored_whatever_it_holds(
    client: httpx.Client, table: str
) -> None:
    """write QA: the README says the path names the record, yet an id that is not a valid new
    one (a number, the reserved ``count`` a record read back may carry) made the write a 422."""
    url = f"/api/v1/data/{table}/" + create_record(client, table, id="a", x=0)["id"]
    for n, body_id in enumerate((5, "count", "bad id!", {"$ref": "0.id"}, "other"), start=1):
        for method in ("PATCH", "PUT"):
            response = client.request(method, url, json={"data": {"id": body_id, "x": n}})
            assert response.status_code == 200, (method, body_id, response.text)
            assert response.json()["data"]["id"] == "a"
    stored = client.get(url).json()["data"]
    assert stored["id"] == "a" and stored["x"] == 5
    assert client.get(f"/api/v1/data/{table}/count").json()["data"]["count"] == 1


def test_generic_filters_parse_json_scalars(client: httpx.Client, table: str) -> None:
    rows = [
        create_record(client, table, n=30, s="30", flag=True, color="red"),
        create_record(client, table, n=31, s="31", flag=False, color="blue"),
        create_record(client, table, n=5, s="x", flag=None, color="green"),
    ]

    def ids(**params: Any) -> list[str]:
        body = client.get(f"/api/v1/data/{table}", params=params).json()
        assert body["meta"]["total"] == len(body["data"])
        return [r["id"] for r in body["data"]]

    assert ids(n=30) == [rows[0]["id"]]
    assert ids(s='"30"') == [rows[0]["id"]]  # quoted: the string, not the number
    assert ids(s=30) == []
    assert ids(flag="true") == [rows[0]["id"]]
    assert ids(flag="null") == [rows[2]["id"]]
    assert ids(n__gte=30, sort="n:desc") == [rows[1]["id"], rows[0]["id"]]
    assert ids(color__in="red,green") == [rows[0]["id"], rows[2]["id"]]
    assert ids(color__contains="e") == [r["id"] for r in rows]
    assert ids(color__ne="red") == [rows[1]["id"], rows[2]["id"]]


def test_generic_list_paginates(client: httpx.Client, table: str) -> None:
    rows = [create_record(client, table, n=n) for n in range(7)]
    body = client.get(f"/api/v1/data/{table}", params={"page": 2, "per_page": 3}).json()
    assert body["meta"] == {"page": 2, "per_page": 3, "total": 7}
    assert [r["id"] for r in body["data"]] == [r["id"] for r in rows[3:6]]


HOSTILE = ["users;drop", "a" * 10_000, "ünïcode", "Users", "_internal", "1abc", "a-b"]


@pytest.mark.parametrize("name", HOSTILE, ids=lambda name: name[:12])
def test_hostile_table_names_are_400(client: httpx.Client, name: str) -> None:
    assert_error(client.get(f"/api/v1/data/{name}"), 400, "INVALID_TABLE_NAME")
    assert_error(client.get(f"/api/v1/data/{name}/x"), 400, "INVALID_TABLE_NAME")
    response = client.post(f"/api/v1/data/{name}", json={"data": {}})
    assert_error(response, 400, "INVALID_TABLE_NAME")


def test_path_traversal_never_reaches_a_table(client: httpx.Client) -> None:
    # "..%2Fx" decodes to "../x": the router sees table ".." and id "x", and refuses "..".
    assert_error(client.get("/api/v1/data/..%2Fx"), 400, "INVALID_TABLE_NAME")
    assert_error(client.post("/api/v1/data/..%2Fusers", json={"data": {}}), 405)
    assert_error(client.get("/api/v1/data/%2E%2E"), 400, "INVALID_TABLE_NAME")


def test_missing_table_and_record_are_404(client: httpx.Client, table: str) -> None:
    assert_error(client.get(f"/api/v1/data/{table}"), 404, "NOT_FOUND")
    create_record(client, table, a=1)
    assert_error(client.get(f"/api/v1/data/{table}/nope"), 404, "NOT_FOUND")
    assert_error(client.patch(f"/api/v1/data/{table}/nope", json={"data": {}}), 404)
    assert_error(client.delete(f"/api/v1/data/{table}/nope"), 404)


@pytest.mark.parametrize("body", [{}, {"data": []}, {"data": {"a": 1}, "extra": 1}, {"data": "x"}])
def test_body_must_be_a_data_object(client: httpx.Client, table: str, body: object) -> None:
    assert_error(client.post(f"/api/v1/data/{table}", json=body), 422, "VALIDATION_ERROR")


def test_users_through_generic_routes_use_the_user_service(
    client: httpx.Client, stack: Stack
) -> None:
    payload = user_payload()
    bad = client.post("/api/v1/data/users", json={"data": {**payload, "email": "nope"}})
    error = assert_error(bad, 422)
    assert "body.data.email" in {item["field"] for item in error["details"]}

    created = client.post("/api/v1/data/users", json={"data": payload})
    assert created.status_code == 201
    user = created.json()["data"]
    assert "password" not in created.text and PASSWORD not in created.text
    assert created.headers["location"] == f"/api/v1/data/users/{user['id']}"
    typed = client.get(f"/api/v1/users/{user['id']}").json()["data"]
    assert typed == user

    dup = client.post(
        "/api/v1/data/users", json={"data": {**payload, "email": payload["email"].upper()}}
    )
    assert_error(dup, 409, "ALREADY_EXISTS")

    # The stored hash is bcrypt, exactly as the typed route makes it.
    stored = store_call(stack, "get", {"table": "users", "id": user["id"], "include_hidden": True})
    assert stored["password_hash"].startswith("$2b$")
    assert "password" not in stored

    partial = client.put(f"/api/v1/data/users/{user['id']}", json={"data": {"full_name": "X"}})
    assert_error(partial, 422)  # PUT replaces: every UserCreate field is required
    listed = client.get("/api/v1/data/users", params={"email": user["email"]}).json()
    assert [u["id"] for u in listed["data"]] == [user["id"]]
    assert "password" not in str(listed)
    assert_error(client.get("/api/v1/data/users", params={"nope": 1}), 400, "BAD_QUERY")


def test_orders_through_generic_routes_keep_the_foreign_key(client: httpx.Client) -> None:
    user = create_user(client)
    missing = {
        "user_id": "00000000-0000-4000-8000-000000000000",
        "product_name": "W",
        "quantity": 1,
        "total_price": "1.00",
    }
    assert_error(
        client.post("/api/v1/data/orders", json={"data": missing}), 409, "FOREIGN_KEY_VIOLATION"
    )
    good = {**missing, "user_id": user["id"]}
    order = client.post("/api/v1/data/orders", json={"data": good}).json()["data"]
    assert order["total_price"] == "1.00" and order["order_date"]
    url = f"/api/v1/data/orders/{order['id']}"
    replaced = client.put(url, json={"data": {**good, "quantity": 4}}).json()["data"]
    assert replaced["quantity"] == 4 and replaced["order_date"] == order["order_date"]
    assert_error(client.delete(f"/api/v1/data/users/{user['id']}"), 409, "HAS_DEPENDANTS")
    cascade = client.delete(f"/api/v1/data/users/{user['id']}", params={"cascade": "true"})
    assert cascade.status_code == 204
    assert_error(client.get(url), 404)


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "Infinity", "-Infinity", "NaN"])
def test_non_finite_numbers_are_422_on_every_write(
    client: httpx.Client, table: str, literal: str
) -> None:
    """Python's json reads these, but no JSON answer or CSV export could give them back."""
    create_record(client, table, id="a", n=1)
    data = f"/api/v1/data/{table}"
    x = "§"  # where the literal goes
    operation = {"op": "insert", "table": table, "data": {"x": x}}
    writes: list[tuple[str, str, Any, str]] = [
        ("POST", data, {"data": {"x": x}}, "body.data.x"),
        ("POST", data, {"data": [{"n": 1}, {"x": [x]}]}, "body.data.1.x.0"),
        ("POST", f"{data}?upsert=true", {"data": {"id": "a", "x": x}}, "body.data.x"),
        ("PUT", f"{data}/a", {"data": {"m": {"x": x}}}, "body.data.m.x"),
        ("PATCH", f"{data}/a", {"data": {"x": x}}, "body.data.x"),
        ("PATCH", f"{data}?n=1", {"data": {"x": x}}, "body.data.x"),
        ("POST", "/api/v1/transaction", {"operations": [operation]}, "body.operations.0.data.x"),
    ]
    for method, url, body, field in writes:
        content = json.dumps(body).replace(json.dumps(x), literal)
        response = client.request(method, url, content=content, headers=JSON)
        error = assert_error(response, 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field, (method, url)
        assert error["details"][0]["message"] == "numbers must be finite"
    assert client.get(f"{data}/a").json()["data"]["version"] == 1  # nothing was written
