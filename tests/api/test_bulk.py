"""POST /data/{table} with a list: one atomic store batch; ?upsert=true merges on id."""

from __future__ import annotations

import httpx
import pytest

from tests.support.auth import login
from tests.support.factories import PASSWORD, assert_error, create_user, token, user_payload

pytestmark = pytest.mark.integration


def bulk(client: httpx.Client, table: str, data: object, **params: str) -> httpx.Response:
    return client.post(f"/api/v1/data/{table}", json={"data": data}, params=params)


def total(client: httpx.Client, table: str) -> int:
    return int(client.get(f"/api/v1/data/{table}/count").json()["data"]["count"])


def test_bulk_insert_is_one_atomic_write(client: httpx.Client) -> None:
    table = f"bulk_{token()}"
    response = bulk(client, table, [{"id": "a", "n": 1}, {"n": 2}, {"nested": {"x": [1, 2]}}])
    assert response.status_code == 201, response.text
    body = response.json()
    assert [r.get("n") for r in body["data"]] == [1, 2, None]
    assert body["data"][0]["id"] == "a" and all(r["version"] == 1 for r in body["data"])
    assert body["meta"] == {"inserted": 3, "updated": 0}

    failing = bulk(client, table, [{"id": "b"}, {"id": "c"}, {"id": "a"}, {"id": "d"}])
    error = assert_error(failing, 409, "ALREADY_EXISTS")
    assert error["details"][0]["index"] == 2 and error["details"][0]["op"] == "insert"
    assert "record 2" in error["message"]
    assert total(client, table) == 3
    assert_error(client.get(f"/api/v1/data/{table}/b"), 404)

    schema = {"schema": {"properties": {"n": {"minimum": 0}}}}
    assert client.put(f"/api/v1/data/{table}/schema", json=schema).status_code == 200
    refused = assert_error(bulk(client, table, [{"n": 1}, {"n": -1}]), 422, "VALIDATION_ERROR")
    detail = refused["details"][0]  # the schema's error names the record too (review)
    assert detail["field"] == "body.data.1.n"
    assert (detail["index"], detail["op"], detail["table"]) == (1, "insert", table)
    assert total(client, table) == 3


def test_upsert_merges_on_id(client: httpx.Client) -> None:
    table = f"bulk_{token()}"
    bulk(client, table, [{"id": "a", "n": 1, "meta": {"x": 1}}])
    response = bulk(
        client, table, [{"id": "a", "meta": {"y": 2}}, {"id": "b", "n": 5}], upsert="true"
    )
    assert response.status_code == 201, response.text
    first, second = response.json()["data"]
    assert first["version"] == 2 and first["n"] == 1 and first["meta"] == {"x": 1, "y": 2}
    assert second["version"] == 1
    assert response.json()["meta"] == {"inserted": 1, "updated": 1}

    single = bulk(client, table, {"id": "a", "n": None}, upsert="true")
    assert single.status_code == 200 and "n" not in single.json()["data"]
    assert single.headers["etag"] == 'W/"3"'
    created = bulk(client, table, {"id": "c"}, upsert="true")
    assert created.status_code == 201 and created.headers["location"].endswith(f"/{table}/c")
    assert_error(bulk(client, table, {"id": "c"}), 409, "ALREADY_EXISTS")
    # A list that only merged created nothing: 200, as a single merged record.
    merged = bulk(client, table, [{"id": "a", "n": 7}, {"id": "b", "n": 8}], upsert="true")
    assert merged.status_code == 200, merged.text
    assert merged.json()["meta"] == {"inserted": 0, "updated": 2}


def test_typed_tables_validate_every_record(client: httpx.Client, anon: httpx.Client) -> None:
    payloads = [user_payload(), user_payload()]
    response = bulk(client, "users", payloads)
    assert response.status_code == 201, response.text
    users = response.json()["data"]
    assert all("password_hash" not in u and u["role"] == "user" for u in users)
    login(anon, payloads[1]["email"], PASSWORD)  # the password was hashed and works

    owner = create_user(client)["id"]
    order = {"user_id": owner, "product_name": "p", "quantity": 1, "total_price": "2.50"}
    bad = {**order, "total_price": "-1"}
    error = assert_error(bulk(client, "orders", [order, bad]), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.data.1.total_price"
    assert client.get("/api/v1/data/orders/count", params={"user_id": owner}).json() == {
        "status": "success",
        "data": {"count": 0},
    }
    stored = bulk(client, "orders", [order, order]).json()["data"]
    assert [o["total_price"] for o in stored] == ["2.50", "2.50"]
    assert all(o["order_date"] for o in stored)
    orphan = {**order, "user_id": "00000000-0000-4000-8000-000000000000"}
    error = assert_error(bulk(client, "orders", [order, orphan]), 409, "FOREIGN_KEY_VIOLATION")
    assert error["details"][0]["index"] == 1
    assert_error(bulk(client, "orders", [order], upsert="true"), 400, "BAD_REQUEST")
    duplicate = [payloads[0] | {"email": payloads[0]["email"].upper()}]
    assert_error(bulk(client, "users", duplicate), 409, "ALREADY_EXISTS")


def test_bulk_limits_and_validation(client: httpx.Client) -> None:
    table = f"bulk_{token()}"
    assert_error(bulk(client, table, []), 422, "VALIDATION_ERROR")
    too_many = assert_error(bulk(client, table, [{"n": 1}] * 1001), 422, "VALIDATION_ERROR")
    # Only the list's own problem (an untagged union also said "not a valid dictionary").
    assert [(d["field"], d["type"]) for d in too_many["details"]] == [("body.data", "too_long")]
    assert_error(bulk(client, table, [{"n": 1}, 5]), 422, "VALIDATION_ERROR")
    error = assert_error(bulk(client, table, [{"n": 1}, {"n": 2**64}]), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.data.1.n"
    error = assert_error(bulk(client, table, [{"id": "ok"}, {"id": "a/b"}]), 422)
    assert error["details"][0]["field"] == "body.data.1.id"
    many = [user_payload() for _ in range(21)]
    assert_error(bulk(client, "users", many), 400, "LIMIT_EXCEEDED")
    assert_error(client.get(f"/api/v1/data/{table}"), 404)  # nothing was created


def test_with_refs_records_may_refer_to_earlier_ones(client: httpx.Client) -> None:
    table = f"bulk_{token()}"
    response = bulk(client, table, [{"name": "parent"}, {"parent": {"$ref": "0.id"}}], refs="true")
    assert response.status_code == 201, response.text
    parent, child = response.json()["data"]
    assert child["parent"] == parent["id"]
    error = assert_error(bulk(client, table, [{"x": {"$ref": "1.id"}}, {}], refs="true"), 422)
    assert error["details"][0]["field"] == "body.data.0.x.$ref"
    kept = bulk(client, table, [{"doc": {"$ref": "#/a", "type": "object"}}], refs="true")
    assert kept.json()["data"][0]["doc"] == {"$ref": "#/a", "type": "object"}


REF_SHAPED = [
    {"id": "a", "m": {"$ref": "0.id"}},
    {"id": "b", "m": {"$ref": "#/defs/x"}, "l": [{"$ref": "5.id"}]},
    {"id": "c", "m": {"$ref": "0.m"}, "deep": {"x": {"$ref": "1.id"}}},
]


@pytest.mark.parametrize("params", [{}, {"refs": "false"}, {"upsert": "true"}])
def test_without_refs_records_are_written_as_sent(
    client: httpx.Client, params: dict[str, str]
) -> None:
    """Without refs=true a {"$ref": ...} map is data, as in a single POST or a CSV import:
    a dump reloads unchanged, and a JSON Schema fragment is no malformed reference."""
    table = f"bulk_{token()}"
    response = bulk(client, table, REF_SHAPED, **params)
    assert response.status_code == 201, response.text
    assert [strip(r) for r in response.json()["data"]] == REF_SHAPED
    listed = client.get(f"/api/v1/data/{table}", params={"sort": "id:asc"}).json()["data"]
    assert [strip(r) for r in listed] == REF_SHAPED


def test_without_refs_a_ref_shaped_id_is_an_invalid_id(client: httpx.Client) -> None:
    table = f"bulk_{token()}"
    response = bulk(client, table, [{"id": "src"}, {"id": {"$ref": "0.id"}}])
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.data.1.id"
    assert_error(client.get(f"/api/v1/data/{table}"), 404)  # nothing was created


@pytest.mark.parametrize("params", [{"refs": "true"}, {"refs": "true", "upsert": "true"}])
def test_a_reference_in_a_single_record_is_a_422_as_in_a_list(
    client: httpx.Client, params: dict[str, str]
) -> None:
    """QA: with refs=true a single record's {"$ref": ...} was written as data, the flag
    ignored; a single record has no earlier one to take values of."""
    table = f"bulk_{token()}"
    url = f"/api/v1/data/{table}"
    one = client.post(url, params=params, json={"data": {"a": {"$ref": "0.x"}}})
    assert assert_error(one, 422)["details"][0]["field"] == "body.data.a.$ref"
    listed = client.post(url, params=params, json={"data": [{"a": {"$ref": "0.x"}}]})
    assert assert_error(listed, 422)["details"][0]["field"] == "body.data.0.a.$ref"
    assert_error(client.get(url), 404)  # nothing was created
    plain = client.post(url, params=params, json={"data": {"a": 1}})  # no reference: written
    assert plain.status_code == 201, plain.text


def test_refs_must_be_a_boolean(client: httpx.Client) -> None:
    error = assert_error(bulk(client, f"bulk_{token()}", [{}], refs="maybe"), 422)
    assert error["details"][0]["field"] == "query.refs"


def strip(record: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in record.items() if k not in ("created_at", "updated_at", "version")}


@pytest.mark.parametrize("bad_id", ["a/b", "..", "has space", "count", "schema", "indexes"])
def test_an_id_taken_from_a_reference_follows_the_id_rules(
    client: httpx.Client, bad_id: str
) -> None:
    """Record 1 takes its id from record 0 (``$ref``): the store checks it as the API checks a
    literal one, so no record gets an id no /data/{table}/{id} could address."""
    table = f"bulk_{token()}"
    records = [{"id": "src", "p": bad_id}, {"id": {"$ref": "0.p"}}]
    response = bulk(client, table, records, refs="true")
    error = assert_error(response, 400, "BAD_REQUEST")
    assert error["details"][0]["index"] == 1
    assert_error(client.get(f"/api/v1/data/{table}"), 404)  # nothing was created
