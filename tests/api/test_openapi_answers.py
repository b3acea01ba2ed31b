"""Real answers checked against the OpenAPI document: each status must be one the operation
declares, with a body its schema accepts (a client generated from the document, such as
openapi-python-client's, raises on any other status)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jsonschema
import pytest

from tests.support.auth import register
from tests.support.factories import (
    create_order,
    create_user,
    order_payload,
    token,
    user_payload,
)
from tests.support.openapi import assert_documented

pytestmark = pytest.mark.integration
API = "/api/v1"


def test_an_upsert_that_only_merged_is_a_documented_200(
    client: httpx.Client, spec: dict[str, Any]
) -> None:
    url = f"{API}/data/oa_{token()}"
    created = client.post(url, params={"upsert": "true"}, json={"data": {"id": "a", "n": 1}})
    assert created.status_code == 201
    assert_documented(spec, created, "POST", "/data/{table}")
    merged = client.post(url, params={"upsert": "true"}, json={"data": {"id": "a", "n": 2}})
    assert merged.status_code == 200, merged.text
    assert_documented(spec, merged, "POST", "/data/{table}")
    bulk = client.post(url, params={"upsert": "true"}, json={"data": [{"id": "a", "n": 3}]})
    assert bulk.status_code == 200 and bulk.json()["meta"] == {"inserted": 0, "updated": 1}
    assert_documented(spec, bulk, "POST", "/data/{table}")


def test_conditional_answers_of_generic_tables_are_documented(
    client: httpx.Client, spec: dict[str, Any]
) -> None:
    url = f"{API}/data/oa_{token()}"
    record = client.post(url, json={"data": {"n": 1}}).json()["data"]
    listed = client.get(url)
    assert_documented(spec, listed, "GET", "/data/{table}")
    cached = client.get(url, headers={"If-None-Match": listed.headers["etag"]})
    assert cached.status_code == 304
    assert_documented(spec, cached, "GET", "/data/{table}")
    one = client.get(f"{url}/{record['id']}", headers={"If-None-Match": 'W/"1"'})
    assert one.status_code == 304
    assert_documented(spec, one, "GET", "/data/{table}/{record_id}")
    queried = client.post(f"{url}/query", json={})
    assert_documented(spec, queried, "POST", "/data/{table}/query")
    again = client.post(f"{url}/query", json={}, headers={"If-None-Match": queried.headers["etag"]})
    assert again.status_code == 412
    assert_documented(spec, again, "POST", "/data/{table}/query")


def test_an_unsupported_grant_type_is_a_documented_400(
    anon: httpx.Client, spec: dict[str, Any]
) -> None:
    form = {"grant_type": "client_credentials", "username": "a@example.com", "password": "x" * 8}
    response = anon.post(f"{API}/auth/token", data=form)
    assert response.status_code == 400
    assert_documented(spec, response, "POST", "/auth/token")


def test_writes_to_users_me_are_documented(anon: httpx.Client, spec: dict[str, Any]) -> None:
    headers = register(anon).headers
    patched = anon.patch(f"{API}/users/me", json={"age": 41}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert_documented(spec, patched, "PATCH", "/users/{user_id}")
    deleted = anon.delete(f"{API}/users/me", headers=headers)
    assert deleted.status_code == 204
    assert_documented(spec, deleted, "DELETE", "/users/{user_id}")


def test_a_too_deep_json_body_is_a_documented_400(anon: httpx.Client, spec: dict[str, Any]) -> None:
    deep = '{"email": ' + "[" * 5000 + "]" * 5000 + "}"
    headers = {"Content-Type": "application/json"}
    response = anon.post(f"{API}/users", content=deep, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == "BAD_REQUEST"
    assert_documented(spec, response, "POST", "/users")


def test_open_registration_is_documented_without_a_token(
    anon: httpx.Client, spec: dict[str, Any]
) -> None:
    """An anonymous sign-up is what the document allows: ``{}`` among the requirements."""
    security = spec["paths"][f"{API}/users"]["post"]["security"]
    assert {} in security
    created = anon.post(f"{API}/users", json=user_payload())
    assert created.status_code == 201, created.text
    assert_documented(spec, created, "POST", "/users")


def test_jobs_started_answer_a_documented_202_with_the_job(
    client: httpx.Client, spec: dict[str, Any]
) -> None:
    """Each 202 carries the job (``Envelope[JobPublic]``): the document declared no body."""
    table = f"oa_{token()}"
    client.post(f"{API}/data/{table}", json={"data": [{"n": 1}, {"n": 2}]})
    started = [
        ("GET", f"/dump/{table}", "/dump/{table}", None),
        ("GET", f"/batch/{table}/export", "/batch/{table}/export", None),
        ("PATCH", f"/data/{table}", "/data/{table}", {"data": {"n": 3}}),
        ("DELETE", f"/data/{table}", "/data/{table}", None),
    ]
    for method, url, path, body in started:
        params = {"async": "true", **({"all": "true"} if method != "GET" else {})}
        response = client.request(method, API + url, params=params, json=body)
        assert response.status_code == 202, (method, url, response.text)
        job = response.json()["data"]
        assert response.headers["location"] == f"{API}/jobs/{job['id']}"
        assert_documented(spec, response, method, path)
        finished = wait_for_job(client, job["id"])
        assert finished["state"] == "succeeded", finished


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"{API}/jobs/{job_id}").json()["data"]
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job stayed {job['state']}: {job}"
        time.sleep(0.05)


def test_conditional_answers_of_users_orders_and_joins_are_documented(
    client: httpx.Client, spec: dict[str, Any]
) -> None:
    """Every list (and an order's user) answers 304 to a matching If-None-Match, and every
    POST query 412: each is declared, so generated clients accept it."""
    user = create_user(client)
    order = create_order(client, user["id"])
    gets = [
        ("/users", "/users", {"email": user["email"]}),
        (f"/users/{user['id']}/orders", "/users/{user_id}/orders", {}),
        ("/orders", "/orders", {"user_id": user["id"]}),
        (f"/orders/{order['id']}/user", "/orders/{order_id}/user", {}),
        ("/join/users/orders/user_id", "/join/{left}/{right}/{key}", {"per_page": 1}),
    ]
    for url, path, params in gets:
        first = client.get(API + url, params=params)
        assert first.status_code == 200, (url, first.text)
        cached = client.get(
            API + url, params=params, headers={"If-None-Match": first.headers["etag"]}
        )
        assert cached.status_code == 304, url
        assert_documented(spec, cached, "GET", path)
    for url in ("/users/query", "/orders/query"):
        first = client.post(API + url, json={})
        assert_documented(spec, first, "POST", url)
        again = client.post(API + url, json={}, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 412, (url, again.text)
        assert_documented(spec, again, "POST", url)


FILTERED_LISTS = [
    ("/users", ("email", "full_name", "age")),
    ("/orders", ("user_id", "product_name", "total_price")),
    ("/users/{user_id}/orders", ("product_name", "total_price")),
    ("/data/{table}", ()),
    ("/join/{left}/{right}/{key}", ()),
]


@pytest.mark.parametrize(("path", "fields"), FILTERED_LISTS, ids=[p for p, _ in FILTERED_LISTS])
def test_list_filters_are_one_documented_object_parameter(
    spec: dict[str, Any], path: str, fields: tuple[str, ...]
) -> None:
    """The filters are read from the query string as a whole, so FastAPI listed none: a
    generated client or Swagger UI could not send them. Now one free-form object parameter,
    exploded in form style (each key its own query parameter), names the fields."""
    parameters = spec["paths"][API + path]["get"]["parameters"]
    (filters,) = [p for p in parameters if p["name"] == "filters"]
    assert (filters["in"], filters["style"], filters["explode"]) == ("query", "form", True)
    assert filters["schema"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert "`field__op=value`" in filters["description"]
    for field in fields:
        assert f"`{field}`" in filters["description"], field


def test_documented_filters_sent_as_documented_select(
    client: httpx.Client, spec: dict[str, Any]
) -> None:
    user = create_user(client)
    mine = [create_order(client, user["id"]) for _ in range(2)]
    create_order(client, create_user(client)["id"])
    parameters = spec["paths"][API + "/orders"]["get"]["parameters"]
    (filters,) = [p for p in parameters if p["name"] == "filters"]
    example = client.get(API + "/orders", params=filters["example"])
    assert example.status_code == 200, example.text
    assert_documented(spec, example, "GET", "/orders")
    # Form style, exploded: the object's keys are the query parameters themselves.
    chosen = {"user_id__in": f"{user['id']},{uuid.uuid4()}", "quantity__gte": "1"}
    answer = client.get(API + "/orders", params=chosen)
    assert answer.status_code == 200, answer.text
    assert {o["id"] for o in answer.json()["data"]} == {o["id"] for o in mine}


def test_reads_that_answer_304_document_if_none_match_and_etag(spec: dict[str, Any]) -> None:
    conditional = [
        (path, method, operation)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "304" in operation["responses"]
    ]
    assert len(conditional) >= 10
    for path, method, operation in conditional:
        names = [p["name"] for p in operation.get("parameters", [])]
        assert {"If-None-Match", "If-Match"} <= set(names), (method, path)
        assert "If-Match" in operation["responses"]["412"]["description"], (method, path)
        for status in ("200", "304"):
            assert "ETag" in operation["responses"][status]["headers"], (method, path, status)
    queries = [path for path in spec["paths"] if path.endswith("/query")]
    for path in queries:
        names = [p["name"] for p in spec["paths"][path]["post"].get("parameters", [])]
        assert {"If-None-Match", "If-Match"} <= set(names), path
    transaction = spec["paths"][API + "/transaction"]["post"]
    assert "If-None-Match" not in [p["name"] for p in transaction.get("parameters", [])]


def test_created_and_written_records_declare_their_location_and_etag(
    client: httpx.Client, spec: dict[str, Any]
) -> None:
    user = create_user(client)  # POST /users: 201 with Location and ETag
    created = client.post(f"{API}/orders", json=order_payload(user["id"]))
    assert created.status_code == 201 and {"location", "etag"} <= set(created.headers)
    assert_documented(spec, created, "POST", "/orders")
    url = f"{API}/orders/{created.json()['data']['id']}"
    patched = client.patch(url, json={"quantity": 3})
    assert patched.status_code == 200 and "etag" in patched.headers
    assert_documented(spec, patched, "PATCH", "/orders/{order_id}")
    registered = client.post(f"{API}/users", json=user_payload())
    assert registered.status_code == 201 and "location" in registered.headers
    assert_documented(spec, registered, "POST", "/users")
    table = f"{API}/data/oa_{token()}"
    record = client.post(table, json={"data": {"n": 1}})
    assert record.status_code == 201 and "location" in record.headers
    assert_documented(spec, record, "POST", "/data/{table}")
    path = f"{table}/{record.json()['data']['id']}"
    for method in ("PUT", "PATCH"):
        written = client.request(method, path, json={"data": {"n": 2}})
        assert written.status_code == 200 and "etag" in written.headers
        assert_documented(spec, written, method, "/data/{table}/{record_id}")
    index = client.post(f"{table}/indexes", json={"field": "n"})
    assert index.status_code == 201 and "location" in index.headers
    assert_documented(spec, index, "POST", "/data/{table}/indexes")


def test_refusals_declare_their_authenticate_header(
    anon: httpx.Client, spec: dict[str, Any]
) -> None:
    refused = anon.get(f"{API}/users/me")
    assert refused.status_code == 401 and "www-authenticate" in refused.headers
    assert_documented(spec, refused, "GET", "/users/me")
    form = {"username": f"nobody-{token()}@example.com", "password": "wrong-password"}
    guess = anon.post(f"{API}/auth/token", data=form)
    assert guess.status_code == 401 and "www-authenticate" in guess.headers
    assert_documented(spec, guess, "POST", "/auth/token")
    # A 429's Retry-After: tests/api/security/test_ratelimit.py (a stack with small limits).


def test_a_login_form_may_be_sent_as_multipart_as_documented(
    anon: httpx.Client, spec: dict[str, Any]
) -> None:
    content = spec["paths"][f"{API}/auth/token"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in content
    account = user_payload()
    assert anon.post(f"{API}/users", json=account).status_code == 201
    fields = {"username": (None, account["email"]), "password": (None, account["password"])}
    answer = anon.post(f"{API}/auth/token", files=fields)
    assert answer.status_code == 200, answer.text
    assert_documented(spec, answer, "POST", "/auth/token")


def test_a_user_with_embedded_orders_declares_the_page_in_meta(
    client: httpx.Client, spec: dict[str, Any]
) -> None:
    user = create_user(client)
    create_order(client, user["id"])
    answer = client.get(f"{API}/users/{user['id']}", params={"embed": "orders"})
    assert answer.status_code == 200 and answer.json()["meta"]["orders"]["total"] == 1
    assert_documented(spec, answer, "GET", "/users/{user_id}")
    schema = spec["paths"][f"{API}/users/{{user_id}}"]["get"]["responses"]["200"]["content"]
    name = schema["application/json"]["schema"]["$ref"].rpartition("/")[2]
    meta = spec["components"]["schemas"][name]["properties"]["meta"]
    strict = {**meta, "components": spec["components"]}
    with pytest.raises(jsonschema.ValidationError):  # the page is described, not any object
        jsonschema.Draft202012Validator(strict).validate({"orders": {"page": 0}})


def test_a_job_results_range_headers_are_declared(spec: dict[str, Any]) -> None:
    operation = spec["paths"][f"{API}/jobs/{{job_id}}/result"]["get"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"Range", "If-Range", "If-Modified-Since", "If-Unmodified-Since"} <= names
    for status in ("206", "416"):
        assert "Content-Range" in operation["responses"][status]["headers"], status
