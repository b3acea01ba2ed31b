"""/api/v1/join/{left}/{right}/{key}: inner joins, paginated, never leaking password hashes."""

from __future__ import annotations

import httpx
import pytest

from tests.support.factories import assert_error, create_order, create_record, create_user, token

pytestmark = pytest.mark.integration


def test_users_orders_on_user_id_matches_users_id(client: httpx.Client) -> None:
    first, second, lonely = create_user(client), create_user(client), create_user(client)
    orders = [create_order(client, first["id"]) for _ in range(3)]
    orders += [create_order(client, second["id"])]
    response = client.get(
        "/api/v1/join/users/orders/user_id",
        params={"id__in": f"{first['id']},{second['id']},{lonely['id']}", "per_page": 100},
    )
    assert response.status_code == 200
    body = response.json()
    pairs = [(row["users"]["id"], row["orders"]["id"]) for row in body["data"]]
    expected = [(o["user_id"], o["id"]) for o in orders]
    assert sorted(pairs) == sorted(expected)
    assert body["meta"]["total"] == 4
    assert all(set(row) == {"users", "orders"} for row in body["data"])
    assert "password" not in response.text and "$2b$" not in response.text
    assert response.headers["etag"].startswith('W/"')


def test_orders_users_reversed_and_paginated(client: httpx.Client) -> None:
    user = create_user(client)
    orders = [create_order(client, user["id"], quantity=q) for q in range(1, 6)]
    seen = []
    for page in (1, 2, 3):
        body = client.get(
            "/api/v1/join/orders/users/user_id",
            params={"user_id": user["id"], "per_page": 2, "page": page},
        ).json()
        assert body["meta"] == {"page": page, "per_page": 2, "total": 5}
        for row in body["data"]:
            assert row["users"]["id"] == user["id"]
            assert "password_hash" not in row["users"]
            seen.append(row["orders"]["id"])
    assert seen == [o["id"] for o in orders]


def test_generic_tables_join_on_a_shared_key(client: httpx.Client) -> None:
    left, right = f"l_{token()}", f"r_{token()}"
    a = create_record(client, left, sku="A", name="apple")
    create_record(client, left, sku="B", name="banana")
    stock = [create_record(client, right, sku="A", qty=n) for n in (1, 2)]
    create_record(client, right, sku="C", qty=9)
    body = client.get(f"/api/v1/join/{left}/{right}/sku").json()
    assert [(r[left]["id"], r[right]["id"]) for r in body["data"]] == [
        (a["id"], stock[0]["id"]),
        (a["id"], stock[1]["id"]),
    ]
    assert body["meta"]["total"] == 2


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/api/v1/join/users/orders/user%20id", {}, 400, "BAD_QUERY"),
        ("/api/v1/join/users;x/orders/user_id", {}, 400, "INVALID_TABLE_NAME"),
        ("/api/v1/join/users/ORDERS/user_id", {}, 400, "INVALID_TABLE_NAME"),
        ("/api/v1/join/users/users/id", {}, 400, "BAD_REQUEST"),
        ("/api/v1/join/users/orders/user_id", {"sort": "id:asc"}, 400, "BAD_QUERY"),
        ("/api/v1/join/users/orders/user_id", {"nope": "1"}, 400, "BAD_QUERY"),
        ("/api/v1/join/users/orders/user_id", {"per_page": "0"}, 422, "VALIDATION_ERROR"),
        ("/api/v1/join/users/no_such_table/user_id", {}, 404, "NOT_FOUND"),
    ],
)
def test_join_errors(
    client: httpx.Client, path: str, params: dict[str, str], status: int, code: str
) -> None:
    assert_error(client.get(path, params=params), status, code)


def test_join_on_a_hidden_field_is_refused(client: httpx.Client) -> None:
    """Joining on ``password_hash`` would match (and so reveal) hashes: 400, no rows."""
    table = f"rv_join_{token()}"
    create_record(client, table, password_hash="$2b$04$guess")
    for path in (
        f"/api/v1/join/{table}/users/password_hash",
        f"/api/v1/join/users/{table}/password_hash",
    ):
        error = assert_error(client.get(path), 400, "BAD_REQUEST")
        assert error["details"][0]["field"] == "password_hash"


@pytest.mark.parametrize(("plural", "singular"), [("addresses", "address"), ("boxes", "box")])
def test_a_key_named_after_a_plural_in_es_means_that_tables_id(
    client: httpx.Client, plural: str, singular: str
) -> None:
    """``addresses`` is not ``addresse``: ``<tag>_address_id`` names the addresses' ``id``."""
    tag = f"j{token()}"
    people, things = f"{tag}_people", f"{tag}_{plural}"
    key = f"{tag}_{singular}_id"
    thing = create_record(client, things, city="Oslo")
    person = create_record(client, people, name="Ada", **{key: thing["id"]})
    for left, right in ((people, things), (things, people)):
        body = client.get(f"/api/v1/join/{left}/{right}/{key}").json()
        assert body["meta"]["total"] == 1, body
        row = body["data"][0]
        assert (row[people]["id"], row[things]["id"]) == (person["id"], thing["id"])
