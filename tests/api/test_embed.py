"""Embedded relations: GET /orders?expand=user and GET /users/{id}?embed=orders."""

from __future__ import annotations

import httpx
import pytest

from tests.support.auth import register
from tests.support.factories import assert_error, create_order, token
from tests.support.stack import Stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration


def test_orders_expand_user(client: httpx.Client, anon: httpx.Client) -> None:
    me, other = register(anon), register(anon)
    for _ in range(3):
        create_order(client, me.id)
    create_order(client, other.id)
    response = anon.get("/api/v1/orders", params={"expand": "user"}, headers=me.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["meta"]["total"] == 3
    for order in body["data"]:
        assert order["user"]["id"] == me.id and order["user"]["email"] == me.user["email"]
        assert "password_hash" not in order["user"]
    plain = anon.get("/api/v1/orders", headers=me.headers)
    assert "user" not in plain.json()["data"][0]
    assert plain.headers["etag"] != response.headers["etag"]

    both = client.get(
        "/api/v1/orders",
        params={"expand": "user", "user_id__in": f"{me.id},{other.id}", "sort": "user_id:asc"},
    ).json()["data"]
    assert {o["user"]["id"] for o in both} == {me.id, other.id}
    assert all(o["user"]["id"] == o["user_id"] for o in both)
    assert_error(client.get("/api/v1/orders", params={"expand": "orders"}), 422)


def test_query_expand_user_with_a_projection_without_user_id(
    client: httpx.Client, anon: httpx.Client
) -> None:
    me = register(anon)
    create_order(client, me.id)
    body = {"expand": "user", "fields": ["product_name"]}
    response = anon.post("/api/v1/orders/query", json=body, headers=me.headers)
    assert response.status_code == 200, response.text
    (order,) = response.json()["data"]
    assert order["user"]["id"] == me.id  # was null: the embed joins on the unasked user_id
    assert set(order) == {"id", "product_name", "user"}


def test_expand_is_one_lookup_not_one_per_order(client: httpx.Client, stack: Stack) -> None:
    me = register(client)
    for _ in range(10):
        create_order(client, me.id)
    before = store_call(stack, "stats", {})["ops"]
    response = client.get(
        "/api/v1/orders", params={"expand": "user", "user_id": me.id, "per_page": 10}
    )
    after = store_call(stack, "stats", {})["ops"]
    assert response.status_code == 200 and len(response.json()["data"]) == 10
    assert after["get_many"] - before["get_many"] == 1
    assert after.get("get", 0) - before.get("get", 0) < 10


def test_user_embed_orders_paginated(client: httpx.Client, anon: httpx.Client) -> None:
    me, other = register(anon), register(anon)
    orders = [create_order(client, me.id, product_name=f"p{i}") for i in range(5)]
    create_order(client, other.id)
    url = f"/api/v1/users/{me.id}"
    params = {"embed": "orders", "orders_page": "2", "orders_per_page": "2"}
    response = anon.get(url, params=params, headers=me.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"]["id"] == me.id and "password_hash" not in body["data"]
    assert [o["id"] for o in body["data"]["orders"]] == [o["id"] for o in orders[2:4]]
    assert body["meta"] == {"orders": {"page": 2, "per_page": 2, "total": 5}}

    etag = response.headers["etag"]
    cached = anon.get(url, params=params, headers={**me.headers, "If-None-Match": etag})
    assert cached.status_code == 304
    client.patch(f"/api/v1/orders/{orders[2]['id']}", json={"quantity": 9})
    changed = anon.get(url, params=params, headers={**me.headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["data"]["orders"][0]["quantity"] == 9

    plain = anon.get(url, headers=me.headers).json()
    assert "orders" not in plain["data"] and "meta" not in plain
    # Someone else's user is a 404 with or without the embed: nothing of theirs leaks.
    assert_error(anon.get(f"/api/v1/users/{other.id}", params=params, headers=me.headers), 404)
    assert client.get(f"/api/v1/users/{other.id}", params=params).status_code == 200
    assert_error(anon.get(url, params={"embed": "secrets"}, headers=me.headers), 422)
    assert_error(
        anon.get(url, params={**params, "orders_per_page": "101"}, headers=me.headers), 422
    )
    assert_error(anon.get(url, params={**params, "orders_page": "1_0"}, headers=me.headers), 422)
    assert_error(client.get(f"/api/v1/users/{token()}", params=params), 404)


def test_user_orders_expand_user(client: httpx.Client, anon: httpx.Client) -> None:
    me = register(anon)
    create_order(client, me.id)
    response = anon.get(
        f"/api/v1/users/{me.id}/orders", params={"expand": "user"}, headers=me.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["user"]["id"] == me.id


def test_one_order_expand_user(client: httpx.Client, anon: httpx.Client) -> None:
    me, other = register(anon), register(anon)
    order = create_order(client, me.id)
    url = f"/api/v1/orders/{order['id']}"
    response = anon.get(url, params={"expand": "user"}, headers=me.headers)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert {k: v for k, v in data.items() if k != "user"} == order
    assert data["user"] == anon.get(f"/api/v1/users/{me.id}", headers=me.headers).json()["data"]
    assert "password_hash" not in data["user"]

    # The tag covers the order and its user: a change to either is a new representation.
    plain = anon.get(url, headers=me.headers)
    etag = response.headers["etag"]
    assert etag != plain.headers["etag"] == f'W/"{order["version"]}"'
    again = {**me.headers, "If-None-Match": etag}
    assert anon.get(url, params={"expand": "user"}, headers=again).status_code == 304
    client.patch(f"/api/v1/users/{me.id}", json={"full_name": "Renamed"})
    renamed = anon.get(url, params={"expand": "user"}, headers=again)
    assert renamed.status_code == 200 and renamed.json()["data"]["user"]["full_name"] == "Renamed"

    # Not yours: the same 404 with or without expand; a bad value: 422.
    assert_error(anon.get(url, params={"expand": "user"}, headers=other.headers), 404)
    assert_error(anon.get(url, params={"expand": "orders"}, headers=me.headers), 422)


@pytest.mark.parametrize(
    "path",
    ["/api/v1/data/orders", "/api/v1/data/users", "/api/v1/users", "/api/v1/data/orders/count"],
)
def test_expand_where_nothing_embeds_is_400_naming_it(client: httpx.Client, path: str) -> None:
    """These lists embed nothing: ``expand`` was skipped in silence (a 200 without users)."""
    error = assert_error(client.get(path, params={"expand": "user"}), 400, "BAD_QUERY")
    assert error["details"] == [{"field": "expand", "message": "unknown field 'expand'"}]


def test_a_single_read_refuses_what_it_does_not_embed(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """A 200 without the user asked for told the client nothing (QA): each single-record read
    refuses the ``expand``/``embed`` it does not serve, and still serves the one it does."""
    me = register(anon)
    order = create_order(client, me.id)
    for path, name, value in [
        (f"/api/v1/data/orders/{order['id']}", "expand", "user"),
        (f"/api/v1/data/users/{me.id}", "embed", "orders"),
    ]:  # admin only
        error = assert_error(client.get(path, params={name: value}), 400, "BAD_QUERY")
        assert error["details"][0]["field"] == name, path
    refused = [
        (f"/api/v1/users/{me.id}", "expand", "user"),
        ("/api/v1/users/me", "expand", "user"),
        (f"/api/v1/orders/{order['id']}", "embed", "orders"),
        (f"/api/v1/orders/{order['id']}/user", "expand", "user"),
    ]
    for path, name, value in refused:
        error = assert_error(anon.get(path, params={name: value}, headers=me.headers), 400)
        assert error["code"] == "BAD_QUERY" and error["details"][0]["field"] == name, path
    # Who may read comes first (review): no token 401, someone else's order 404.
    for path, name, value in refused:
        assert_error(anon.get(path, params={name: value}), 401)
    other = register(anon)
    for path, name, value in refused[2:]:  # the orders
        assert_error(anon.get(path, params={name: value}, headers=other.headers), 404)
    served = anon.get(f"/api/v1/orders/{order['id']}?expand=user", headers=me.headers)
    assert served.json()["data"]["user"]["id"] == me.id
    mine = anon.get("/api/v1/users/me?embed=orders&_=1", headers=me.headers)
    assert mine.status_code == 200 and mine.json()["data"]["orders"][0]["id"] == order["id"]


def test_expand_is_a_plain_filter_on_a_generic_table(client: httpx.Client) -> None:
    table = f"t_{token()}"
    client.post(f"/api/v1/data/{table}", json={"data": {"expand": "user"}})
    client.post(f"/api/v1/data/{table}", json={"data": {"expand": "other"}})
    response = client.get(f"/api/v1/data/{table}", params={"expand": "user"})
    assert response.status_code == 200, response.text
    assert [r["expand"] for r in response.json()["data"]] == ["user"]
