"""/api/v1/users against the real stack: success paths, errors, lists, ETags."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.auth import register
from tests.support.factories import (
    PASSWORD,
    assert_error,
    create_order,
    create_user,
    token,
    user_payload,
)
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
PUBLIC = {"id", "email", "full_name", "age", "role", "created_at", "updated_at", "version"}


def test_create_user_returns_201_location_etag_and_public_fields(client: httpx.Client) -> None:
    payload = user_payload()
    response = client.post("/api/v1/users", json=payload)
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "success"
    user = body["data"]
    assert set(user) == PUBLIC
    assert user["email"] == payload["email"] and user["version"] == 1
    assert response.headers["location"] == f"/api/v1/users/{user['id']}"
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["cache-control"] == "private, no-cache"
    assert "password" not in response.text and PASSWORD not in response.text


def test_read_user_and_conditional_get(client: httpx.Client) -> None:
    user = create_user(client)
    response = client.get(f"/api/v1/users/{user['id']}")
    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": user}
    etag = response.headers["etag"]
    again = client.get(f"/api/v1/users/{user['id']}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    stale = client.get(f"/api/v1/users/{user['id']}", headers={"If-None-Match": 'W/"99"'})
    assert stale.status_code == 200


def test_email_is_unique_case_insensitively(client: httpx.Client) -> None:
    user = create_user(client)
    response = client.post("/api/v1/users", json=user_payload(email=user["email"].upper()))
    error = assert_error(response, 409, "ALREADY_EXISTS")
    assert error["details"][0]["field"] == "email"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"email": "not-an-email"}, "body.email"),
        ({"full_name": ""}, "body.full_name"),
        ({"full_name": "x" * 101}, "body.full_name"),
        ({"age": 0}, "body.age"),
        ({"age": 150}, "body.age"),
        ({"age": "30"}, "body.age"),
        ({"password": "short"}, "body.password"),
        ({"password": "é" * 37}, "body.password"),  # 37 characters, 74 bytes: over bcrypt's 72
        ({"role": "superuser"}, "body.role"),
        ({"is_admin": True}, "body.is_admin"),
    ],
)
def test_create_user_validation_is_422_naming_the_field(
    client: httpx.Client, fields: dict[str, object], field: str
) -> None:
    response = client.post("/api/v1/users", json=user_payload(**fields))
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert field in {item["field"] for item in error["details"]}


def test_password_of_exactly_72_bytes_is_accepted(client: httpx.Client) -> None:
    response = client.post("/api/v1/users", json=user_payload(password="é" * 36))
    assert response.status_code == 201


def test_patch_user_and_if_match(client: httpx.Client) -> None:
    user = create_user(client)
    url = f"/api/v1/users/{user['id']}"
    response = client.patch(url, json={"full_name": "  Renamed  ", "age": None})
    assert response.status_code == 200
    patched = response.json()["data"]
    assert patched["full_name"] == "Renamed" and patched["age"] is None
    assert patched["version"] == 2 and response.headers["etag"] == 'W/"2"'

    stale = client.patch(url, json={"age": 40}, headers={"If-Match": 'W/"1"'})
    error = assert_error(stale, 412, "PRECONDITION_FAILED")
    assert error["details"][0]["current"] == 2
    fresh = client.patch(url, json={"age": 40}, headers={"If-Match": 'W/"2"'})
    assert fresh.status_code == 200 and fresh.json()["data"]["version"] == 3
    anything = client.patch(url, json={"age": 41}, headers={"If-Match": "*"})
    assert anything.status_code == 200
    assert_error(client.patch(url, json={"email": None}), 422, "VALIDATION_ERROR")


def test_patch_email_to_a_taken_one_is_409(client: httpx.Client) -> None:
    first, second = create_user(client), create_user(client)
    response = client.patch(f"/api/v1/users/{second['id']}", json={"email": first["email"]})
    assert_error(response, 409, "ALREADY_EXISTS")


def test_delete_user(client: httpx.Client) -> None:
    user = create_user(client)
    url = f"/api/v1/users/{user['id']}"
    assert_error(client.delete(url, headers={"If-Match": 'W/"7"'}), 412, "PRECONDITION_FAILED")
    response = client.delete(url, headers={"If-Match": 'W/"1"'})
    assert response.status_code == 204 and response.content == b""
    assert_error(client.get(url), 404, "NOT_FOUND")
    assert_error(client.delete(url), 404, "NOT_FOUND")


def test_delete_user_with_orders_needs_cascade(client: httpx.Client) -> None:
    user = create_user(client)
    order = create_order(client, user["id"])
    url = f"/api/v1/users/{user['id']}"
    error = assert_error(client.delete(url), 409, "HAS_DEPENDANTS")
    assert "?cascade=true" in error["message"]  # how to get past it
    assert client.delete(url, params={"cascade": "true"}).status_code == 204
    assert_error(client.get(f"/api/v1/orders/{order['id']}"), 404, "NOT_FOUND")


@pytest.mark.parametrize("header", ["1", "W/1", '"1', "v1"])
def test_a_malformed_if_match_is_412_showing_the_tag_form(
    client: httpx.Client, header: str
) -> None:
    """Not "does not match the current version": the version may well be 1."""
    url = f"/api/v1/users/{create_user(client)['id']}"
    error = assert_error(client.patch(url, json={"age": 40}, headers={"If-Match": header}), 412)
    assert "malformed" in error["message"] and 'W/"<version>"' in error["message"]
    assert error["details"][0]["field"] == "header.if-match"
    assert client.get(url).json()["data"]["version"] == 1  # nothing written
    assert client.patch(url, json={"age": 40}, headers={"If-Match": 'W/"1"'}).status_code == 200


def test_me_is_the_caller_on_every_user_route(anon: httpx.Client, client: httpx.Client) -> None:
    account = register(anon)
    me = "/api/v1/users/me"
    patched = anon.patch(me, json={"age": 41}, headers=account.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"]["id"] == account.id and patched.json()["data"]["age"] == 41
    order = create_order(client, account.id)
    orders = anon.get(f"{me}/orders", headers=account.headers)
    assert orders.status_code == 200 and [o["id"] for o in orders.json()["data"]] == [order["id"]]
    for method in ("PATCH", "DELETE"):
        assert_error(anon.request(method, me, json={"age": 42}), 401, "NOT_AUTHENTICATED")
    assert_error(anon.get(f"{me}/orders"), 401, "NOT_AUTHENTICATED")
    assert anon.delete(me, headers=account.headers, params={"cascade": "true"}).status_code == 204
    assert_error(client.get(f"/api/v1/users/{account.id}"), 404, "NOT_FOUND")
    assert_error(client.get(f"/api/v1/orders/{order['id']}"), 404, "NOT_FOUND")


@pytest.mark.parametrize("params", [{}, {"embed": "orders"}])
def test_me_varies_on_the_token(anon: httpx.Client, params: dict[str, str]) -> None:
    """Two new users are both at version 1: without Vary, a browser that changed account and
    revalidated /users/me with the first one's tag got a 304 and kept showing that user."""
    first, second = register(anon), register(anon)
    me = "/api/v1/users/me"
    seen = anon.get(me, params=params, headers=first.headers)
    assert "authorization" in seen.headers["vary"].lower()
    again = anon.get(
        me, params=params, headers={**first.headers, "If-None-Match": seen.headers["etag"]}
    )
    assert again.status_code == 304 and "authorization" in again.headers["vary"].lower()
    other = anon.get(me, params=params, headers=second.headers)
    assert other.json()["data"]["id"] == second.id
    assert "authorization" in other.headers["vary"].lower()


def test_me_takes_the_parameters_of_users_id_with_the_same_answers(
    anon: httpx.Client, client: httpx.Client
) -> None:
    """``GET /users/me`` was a route of its own without ``embed``: ``?embed=orders`` was
    ignored (no orders, no ``meta``) and ``?embed=bogus`` a 200 where ``/users/<id>`` is 422."""
    account = register(anon)
    orders = [create_order(client, account.id) for _ in range(3)]
    params = {"embed": "orders", "orders_page": "2", "orders_per_page": "2"}
    me = anon.get("/api/v1/users/me", params=params, headers=account.headers)
    by_id = anon.get(f"/api/v1/users/{account.id}", params=params, headers=account.headers)
    assert me.status_code == by_id.status_code == 200, me.text
    assert me.json() == by_id.json()
    assert [o["id"] for o in me.json()["data"]["orders"]] == [orders[2]["id"]]
    assert me.json()["meta"] == {"orders": {"page": 2, "per_page": 2, "total": 3}}
    assert me.headers["etag"] == by_id.headers["etag"]
    cached = anon.get(
        "/api/v1/users/me",
        params=params,
        headers={**account.headers, "If-None-Match": me.headers["etag"]},
    )
    assert cached.status_code == 304
    for bad in ({"embed": "bogus"}, {**params, "orders_per_page": "0"}):
        refused = anon.get("/api/v1/users/me", params=bad, headers=account.headers)
        error = assert_error(refused, 422, "VALIDATION_ERROR")
        same = anon.get(f"/api/v1/users/{account.id}", params=bad, headers=account.headers)
        assert error == assert_error(same, 422, "VALIDATION_ERROR")
    assert_error(anon.get("/api/v1/users/me", params={"embed": "bogus"}), 401)


def test_no_user_can_have_the_id_me(client: httpx.Client) -> None:
    """``me`` in a path is the caller: a user called that could never be addressed."""
    user = user_payload()
    created = client.post("/api/v1/data/users", json={"data": {**user, "id": "me"}})
    assert_error(created, 422, "VALIDATION_ERROR")
    insert = {"op": "insert", "table": "users", "data": {**user_payload(), "id": "me"}}
    in_a_transaction = client.post("/api/v1/transaction", json={"operations": [insert]})
    assert_error(in_a_transaction, 422, "VALIDATION_ERROR")
    assert_error(client.put("/api/v1/data/users/me", json={"data": user}), 404, "NOT_FOUND")


@pytest.mark.parametrize("path", ["/api/v1/users/nope", "/api/v1/users/nope/orders"])
def test_unknown_user_is_404(client: httpx.Client, path: str) -> None:
    assert_error(client.get(path), 404, "NOT_FOUND")


def test_user_orders_paginated_through_the_index(client: httpx.Client) -> None:
    user, other = create_user(client), create_user(client)
    mine = [create_order(client, user["id"], quantity=n) for n in range(1, 8)]
    create_order(client, other["id"])
    response = client.get(f"/api/v1/users/{user['id']}/orders", params={"per_page": 3, "page": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["meta"] == {"page": 2, "per_page": 3, "total": 7}
    assert [order["id"] for order in body["data"]] == [order["id"] for order in mine[3:6]]
    filtered = client.get(
        f"/api/v1/users/{user['id']}/orders", params={"quantity__gte": 5, "sort": "quantity:desc"}
    ).json()
    assert [order["quantity"] for order in filtered["data"]] == [7, 6, 5]


Population = tuple[str, list[dict[str, object]]]


@pytest.fixture(scope="module")
def population(stack: Stack) -> Population:
    """23 users under one unique email domain, so lists can be filtered to them."""
    domain = f"{token()}.example.com"
    with httpx.Client(base_url=stack.base_url) as http:
        users = [
            create_user(
                http, email=f"u{n:02d}@{domain}", full_name=f"Name {n % 5}", age=20 + (n * 7) % 30
            )
            for n in range(23)
        ]
    return domain, users


class TestListUsers:
    """Pagination, sort and filters checked against a reference computed here."""

    def list_(self, client: httpx.Client, domain: str, **params: Any) -> httpx.Response:
        return client.get("/api/v1/users", params={"email__contains": f"@{domain}", **params})

    def test_default_order_and_pages(self, client: httpx.Client, population: Population) -> None:
        domain, users = population
        seen = []
        for page in (1, 2, 3):
            body = self.list_(client, domain, page=page, per_page=10).json()
            assert body["meta"] == {"page": page, "per_page": 10, "total": 23}
            seen += body["data"]
        assert seen == users
        assert self.list_(client, domain, page=4, per_page=10).json()["data"] == []
        assert len(self.list_(client, domain).json()["data"]) == 20

    def test_null_in_a_query_string_finds_users_without_an_age(self, client: httpx.Client) -> None:
        domain = f"{token()}.example.com"
        with_age = create_user(client, email=f"a@{domain}", age=40)
        without = create_user(client, email=f"b@{domain}", age=None)
        found = {
            op: [u["id"] for u in self.list_(client, domain, **{key: "null"}).json()["data"]]
            for op, key in (("eq", "age"), ("ne", "age__ne"))
        }
        assert found == {"eq": [without["id"]], "ne": [with_age["id"]]}

    def test_sort_matches_reference(self, client: httpx.Client, population: Population) -> None:
        domain, users = population
        body = self.list_(client, domain, sort="age:desc,email:asc", per_page=100).json()
        expected = sorted(users, key=lambda u: str(u["email"]))
        expected = sorted(expected, key=lambda u: int(u["age"]), reverse=True)  # type: ignore[call-overload]
        assert [u["id"] for u in body["data"]] == [u["id"] for u in expected]

    @pytest.mark.parametrize(
        ("params", "keep"),
        [
            ({"age__gt": 35}, lambda u: u["age"] > 35),
            (
                {"age__lte": 30, "full_name": "Name 2"},
                lambda u: u["age"] <= 30 and u["full_name"] == "Name 2",
            ),
            ({"age__in": "20,27,34"}, lambda u: u["age"] in (20, 27, 34)),
            ({"age__ne": 27}, lambda u: u["age"] != 27),
            ({"full_name__contains": "e 3"}, lambda u: "e 3" in u["full_name"]),
        ],
    )
    def test_filters_match_reference(
        self,
        client: httpx.Client,
        population: Population,
        params: dict[str, object],
        keep: object,
    ) -> None:
        domain, users = population
        body = self.list_(client, domain, per_page=100, **params).json()
        expected = [u["id"] for u in users if keep(u)]  # type: ignore[operator]
        assert [u["id"] for u in body["data"]] == expected
        assert body["meta"]["total"] == len(expected)

    def test_created_after_and_before(self, client: httpx.Client, population: Population) -> None:
        domain, users = population
        middle = str(users[10]["created_at"])
        after = self.list_(client, domain, created_after=middle, per_page=100).json()
        assert [u["id"] for u in after["data"]] == [u["id"] for u in users[11:]]
        before = self.list_(client, domain, created_before=middle, per_page=100).json()
        assert [u["id"] for u in before["data"]] == [u["id"] for u in users[:10]]
        assert self.list_(client, domain, created_after="2999-01-01").json()["meta"]["total"] == 0

    def test_list_etag_and_304(self, client: httpx.Client, population: Population) -> None:
        domain, users = population
        first = self.list_(client, domain)
        etag = first.headers["etag"]
        assert etag.startswith('W/"')
        query = {"email__contains": f"@{domain}"}
        cached = client.get("/api/v1/users", params=query, headers={"If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b""
        renamed = client.patch(f"/api/v1/users/{users[0]['id']}", json={"full_name": "Renamed"})
        assert renamed.status_code == 200, renamed.text
        changed = client.get("/api/v1/users", params=query, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"nope": "1"}, 400, "nope"),
        ({"age__between": "1"}, 400, "age__between"),
        ({"password_hash__contains": "$2b"}, 400, "password_hash__contains"),
        ({"sort": "nope:asc"}, 400, "sort"),
        ({"sort": "age:up"}, 400, "sort"),
        ({"age": "old"}, 422, "query.age"),
        ({"created_after": "last tuesday"}, 422, "query.created_after"),
        ({"page": "0"}, 422, "query.page"),
        ({"per_page": "101"}, 422, "query.per_page"),
        ({"per_page": "x"}, 422, "query.per_page"),
        # QA: pydantic's lax int read "1_0" as 10 and took "1.0" and " 2"
        ({"page": "1_0"}, 422, "query.page"),
        ({"per_page": "1.0"}, 422, "query.per_page"),
        ({"page": " 2"}, 422, "query.page"),
        ({"page": "\u0661"}, 422, "query.page"),
    ],
)
def test_bad_list_queries(
    client: httpx.Client, params: dict[str, str], status: int, field: str
) -> None:
    error = assert_error(client.get("/api/v1/users", params=params), status)
    assert field in {item["field"] for item in error["details"]}


@pytest.mark.parametrize("field", ["email", "full_name", "password", "role"])
def test_a_null_in_a_user_update_is_422_except_age(client: httpx.Client, field: str) -> None:
    user = create_user(client)
    url = f"/api/v1/users/{user['id']}"
    error = assert_error(client.patch(url, json={field: None}), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == f"body.{field}"
    assert "may not be null" in error["details"][0]["message"]
    cleared = client.patch(url, json={"age": None})  # the one field null removes
    assert cleared.status_code == 200 and cleared.json()["data"]["age"] is None


def test_only_a_role_that_changes_ends_the_users_sessions(
    client: httpx.Client, anon: httpx.Client
) -> None:
    account = register(anon)
    url, me = f"/api/v1/users/{account.id}", "/api/v1/users/me"
    same = client.patch(url, json={"role": "user"})  # the role the user already has
    assert same.status_code == 200 and same.json()["data"]["role"] == "user"
    assert same.headers["etag"] == 'W/"1"'  # nothing written
    assert anon.get(me, headers=account.headers).status_code == 200
    renamed = client.patch(url, json={"role": "user", "full_name": "Still Plain"})
    assert renamed.status_code == 200 and renamed.headers["etag"] == 'W/"2"'
    assert anon.get(me, headers=account.headers).status_code == 200  # a new version, same role
    stale = client.patch(url, json={"role": "admin"}, headers={"If-Match": 'W/"1"'})
    assert_error(stale, 412, "PRECONDITION_FAILED")
    assert anon.get(me, headers=account.headers).status_code == 200
    promoted = client.patch(url, json={"role": "admin"}, headers={"If-Match": 'W/"2"'})
    assert promoted.status_code == 200 and promoted.json()["data"]["role"] == "admin"
    assert_error(anon.get(me, headers=account.headers), 401, "INVALID_TOKEN")
    demoted = client.patch(url, json={"role": "user"})  # as found: the stack is shared
    assert demoted.status_code == 200 and demoted.json()["data"]["role"] == "user"
