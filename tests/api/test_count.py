"""GET /data/{table}/count: the list filters, answered with a number."""

from __future__ import annotations

import httpx
import pytest

from tests.support.auth import register
from tests.support.factories import assert_error, create_order, create_user, token

pytestmark = pytest.mark.integration


def count(client: httpx.Client, table: str, **params: str) -> int:
    response = client.get(f"/api/v1/data/{table}/count", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and set(body["data"]) == {"count"}
    return int(body["data"]["count"])


def test_count_with_list_filters(client: httpx.Client) -> None:
    table = f"cnt_{token()}"
    rows = [{"color": c, "n": i, "name": f"item-{i}"} for i, c in enumerate("rrgbr")]
    assert client.post(f"/api/v1/data/{table}", json={"data": rows}).status_code == 201
    assert count(client, table) == 5
    assert count(client, table, color="r") == 3
    assert count(client, table, color="r", n__gte="1") == 2
    assert count(client, table, color__in="g,b") == 2
    assert count(client, table, name__startswith="item-1") == 1
    assert count(client, table, n__exists="true") == 5
    assert count(client, table, missing__exists="false") == 5
    assert count(client, table, created_after="2000-01-01") == 5
    assert count(client, table, created_before="2000-01-01") == 0
    # Paging and sorting parameters mean nothing to a count.
    assert count(client, table, page="3", per_page="1", sort="n:desc") == 5
    listed = client.get(f"/api/v1/data/{table}", params={"color": "r"}).json()
    assert listed["meta"]["total"] == 3


def test_count_typed_tables(client: httpx.Client) -> None:
    user = create_user(client)
    for price in ("1.00", "2.50", "10.00"):
        create_order(client, user["id"], total_price=price)
    assert count(client, "orders", user_id=user["id"]) == 3
    assert count(client, "orders", user_id=user["id"], total_price__gt="2.00") == 2
    assert count(client, "users", email=user["email"]) == 1


def test_count_errors(client: httpx.Client, anon: httpx.Client) -> None:
    table = f"cnt_{token()}"
    assert_error(client.get(f"/api/v1/data/{table}/count"), 404, "NOT_FOUND")
    client.post(f"/api/v1/data/{table}", json={"data": {"a": 1}})
    error = assert_error(client.get(f"/api/v1/data/{table}/count?a__like=1"), 400, "BAD_QUERY")
    assert error["details"][0]["field"] == "a__like"
    assert_error(client.get("/api/v1/data/orders/count?quantity=many"), 422, "VALIDATION_ERROR")
    assert_error(client.get("/api/v1/data/users/count?password_hash=x"), 400, "BAD_QUERY")
    assert_error(client.get(f"/api/v1/data/{table}/count?a__exists=maybe"), 422)
    assert_error(client.get(f"/api/v1/data/{table}/count?created_after=soon"), 422)
    assert_error(client.get("/api/v1/data/Bad-Name/count"), 400, "INVALID_TABLE_NAME")
    assert_error(anon.get(f"/api/v1/data/{table}/count"), 401)
    account = register(anon)
    assert_error(anon.get(f"/api/v1/data/{table}/count", headers=account.headers), 403)
