"""Roles and ownership: anonymous / the owner A / another user B / an admin, on every route.

Every target belongs to user A. B asking for A's things gets exactly the 404 of a record that
does not exist; admin-only routes are 403 for users and 401 without a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.auth import Account, login_admin, register
from tests.support.factories import (
    PASSWORD,
    assert_error,
    order_payload,
    token,
    user_payload,
)

pytestmark = pytest.mark.integration
CALLERS = ("anonymous", "owner", "other", "admin")


@dataclass
class World:
    owner: Account
    other: Account
    admin: Account
    order: dict[str, Any]
    table: str
    record: dict[str, Any]

    def headers(self, caller: str) -> dict[str, str]:
        if caller == "anonymous":
            return {}
        account: Account = getattr(self, caller)
        return account.headers


@pytest.fixture
def world(anon: httpx.Client) -> World:
    owner, other, admin = register(anon), register(anon), login_admin(anon)
    order = anon.post("/api/v1/orders", json=order_payload(owner.id), headers=owner.headers).json()[
        "data"
    ]
    table = f"rbac_{token()}"
    record = anon.post(
        f"/api/v1/data/{table}", json={"data": {"n": 1}}, headers=admin.headers
    ).json()["data"]
    return World(owner, other, admin, order, table, record)


# (method, path, body) built from the world; expected status for anonymous, owner, other, admin.
ROUTES: list[tuple[str, str, Any, tuple[int, int, int, int]]] = [
    ("POST", "/api/v1/users", "new-user", (201, 201, 201, 201)),
    ("GET", "/api/v1/users", None, (401, 403, 403, 200)),
    ("GET", "/api/v1/users/me", None, (401, 200, 200, 200)),
    ("GET", "/api/v1/users/{owner}", None, (401, 200, 404, 200)),
    ("PATCH", "/api/v1/users/{owner}", {"full_name": "Changed"}, (401, 200, 404, 200)),
    ("DELETE", "/api/v1/users/{owner}?cascade=true", None, (401, 204, 404, 204)),
    ("GET", "/api/v1/users/{owner}/orders", None, (401, 200, 404, 200)),
    ("POST", "/api/v1/orders", "order-for-owner", (401, 201, 403, 201)),
    ("GET", "/api/v1/orders", None, (401, 200, 200, 200)),
    ("GET", "/api/v1/orders/{order}", None, (401, 200, 404, 200)),
    ("PATCH", "/api/v1/orders/{order}", {"quantity": 3}, (401, 200, 404, 200)),
    ("DELETE", "/api/v1/orders/{order}", None, (401, 204, 404, 204)),
    ("GET", "/api/v1/orders/{order}/user", None, (401, 200, 404, 200)),
    ("POST", "/api/v1/data/{table}", {"data": {"n": 2}}, (401, 403, 403, 201)),
    ("GET", "/api/v1/data/{table}", None, (401, 403, 403, 200)),
    ("GET", "/api/v1/data/{table}/{record}", None, (401, 403, 403, 200)),
    ("PUT", "/api/v1/data/{table}/{record}", {"data": {"n": 3}}, (401, 403, 403, 200)),
    ("PATCH", "/api/v1/data/{table}/{record}", {"data": {"n": 4}}, (401, 403, 403, 200)),
    ("DELETE", "/api/v1/data/{table}/{record}", None, (401, 403, 403, 204)),
    ("GET", "/api/v1/data/users", None, (401, 403, 403, 200)),
    ("GET", "/api/v1/join/users/orders/user_id", None, (401, 403, 403, 200)),
    ("GET", "/api/v1/dump/users", None, (401, 403, 403, 200)),
    ("POST", "/api/v1/auth/logout", None, (401, 204, 204, 204)),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "caller", "status"),
    [
        pytest.param(method, path, body, caller, expected[n], id=f"{caller}-{method}-{path}")
        for method, path, body, expected in ROUTES
        for n, caller in enumerate(CALLERS)
    ],
)
def test_access_matrix(
    anon: httpx.Client,
    world: World,
    method: str,
    path: str,
    body: Any,
    caller: str,
    status: int,
) -> None:
    url = path.format(
        owner=world.owner.id,
        order=world.order["id"],
        table=world.table,
        record=world.record["id"],
    )
    if body == "new-user":
        body = user_payload()
    elif body == "order-for-owner":
        body = order_payload(world.owner.id)
    response = anon.request(method, url, json=body, headers=world.headers(caller))
    assert response.status_code == status, response.text
    if status == 401:
        assert_error(response, 401, "NOT_AUTHENTICATED")
        assert response.headers["www-authenticate"] == "Bearer"
    elif status == 403:
        assert_error(response, 403, "FORBIDDEN")
    elif status == 404:
        # Indistinguishable from a record that does not exist.
        table, record_id = (
            ("orders", world.order["id"]) if "orders/" in url else ("users", world.owner.id)
        )
        error = assert_error(response, 404, "NOT_FOUND")
        assert error == {
            "code": "NOT_FOUND",
            "message": f"no record {record_id!r} in {table}",
            "details": [{"table": table, "id": record_id}],
        }


def test_someone_elses_record_looks_exactly_like_a_missing_one(
    anon: httpx.Client, world: World
) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    theirs = anon.get(f"/api/v1/users/{world.owner.id}", headers=world.other.headers)
    nobody = anon.get(f"/api/v1/users/{missing}", headers=world.admin.headers)
    a, b = theirs.json()["error"], nobody.json()["error"]
    assert a["message"].replace(world.owner.id, "X") == b["message"].replace(missing, "X")
    assert (theirs.status_code, a["code"]) == (nobody.status_code, b["code"])


def test_users_list_only_their_own_orders(anon: httpx.Client, world: World) -> None:
    anon.post("/api/v1/orders", json=order_payload(world.other.id), headers=world.other.headers)
    mine = anon.get("/api/v1/orders", headers=world.owner.headers).json()
    assert {o["user_id"] for o in mine["data"]} == {world.owner.id}
    assert mine["meta"]["total"] == 1
    # Asking for someone else's orders by filter just narrows your own list.
    sneaky = anon.get(
        "/api/v1/orders", params={"user_id": world.other.id}, headers=world.owner.headers
    ).json()
    assert sneaky["data"] == [] and sneaky["meta"]["total"] == 0
    everyone = anon.get(
        "/api/v1/orders",
        params={"user_id__in": f"{world.owner.id},{world.other.id}"},
        headers=world.admin.headers,
    ).json()
    assert everyone["meta"]["total"] == 2


def test_users_cannot_move_an_order_to_someone_else(anon: httpx.Client, world: World) -> None:
    url = f"/api/v1/orders/{world.order['id']}"
    moved = anon.patch(url, json={"user_id": world.other.id}, headers=world.owner.headers)
    assert_error(moved, 403, "FORBIDDEN")
    by_admin = anon.patch(url, json={"user_id": world.other.id}, headers=world.admin.headers)
    assert by_admin.status_code == 200
    assert_error(anon.get(url, headers=world.owner.headers), 404, "NOT_FOUND")
    assert anon.get(url, headers=world.other.headers).status_code == 200


# --- roles ---------------------------------------------------------------------------------


def test_registration_cannot_choose_a_role(anon: httpx.Client, world: World) -> None:
    assert_error(anon.post("/api/v1/users", json=user_payload(role="admin")), 403, "FORBIDDEN")
    as_user = anon.post(
        "/api/v1/users", json=user_payload(role="admin"), headers=world.owner.headers
    )
    assert_error(as_user, 403, "FORBIDDEN")
    plain = anon.post("/api/v1/users", json=user_payload(role="user"))
    assert plain.status_code == 201 and plain.json()["data"]["role"] == "user"
    default = anon.post("/api/v1/users", json=user_payload())
    assert default.json()["data"]["role"] == "user"
    made = anon.post("/api/v1/users", json=user_payload(role="admin"), headers=world.admin.headers)
    assert made.status_code == 201 and made.json()["data"]["role"] == "admin"


def test_only_an_admin_changes_roles_and_the_change_ends_sessions(
    anon: httpx.Client, world: World
) -> None:
    url = f"/api/v1/users/{world.owner.id}"
    selfish = anon.patch(url, json={"role": "admin"}, headers=world.owner.headers)
    assert_error(selfish, 403, "FORBIDDEN")
    # The same with preconditions that would fail: refused whatever they say (QA: 412).
    for condition in ({"If-None-Match": "*"}, {"If-Match": 'W/"99"'}):
        headers = {**world.owner.headers, **condition}
        assert_error(anon.patch(url, json={"role": "admin"}, headers=headers), 403, "FORBIDDEN")
    assert anon.get(url, headers=world.owner.headers).json()["data"]["role"] == "user"
    promoted = anon.patch(url, json={"role": "admin"}, headers=world.admin.headers)
    assert promoted.status_code == 200 and promoted.json()["data"]["role"] == "admin"
    # The old token said "user": it stops working, and a new login carries the new role.
    assert_error(anon.get("/api/v1/users/me", headers=world.owner.headers), 401, "INVALID_TOKEN")
    pair = anon.post(
        "/api/v1/auth/token", data={"username": world.owner.user["email"], "password": PASSWORD}
    ).json()
    fresh = {"Authorization": f"Bearer {pair['access_token']}"}
    assert anon.get("/api/v1/users", headers=fresh).status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/users/me", "/api/v1/users/{id}"])
def test_a_user_sending_back_their_own_role_changes_nothing_else_than_sent(
    anon: httpx.Client, path: str
) -> None:
    """A record read whole and written again holds the role: no change, not a 403 (services
    QA); any other role still is."""
    account = register(anon)
    url = path.format(id=account.id)
    same = anon.patch(url, json={"full_name": "Same Role", "role": "user"}, headers=account.headers)
    assert same.status_code == 200, same.text
    assert same.json()["data"]["full_name"] == "Same Role"
    assert anon.get("/api/v1/users/me", headers=account.headers).status_code == 200  # not ended
    assert_error(anon.patch(url, json={"role": "admin"}, headers=account.headers), 403, "FORBIDDEN")


def test_generic_routes_cannot_be_used_to_escalate(anon: httpx.Client, world: World) -> None:
    patch = anon.patch(
        f"/api/v1/data/users/{world.owner.id}",
        json={"data": {"role": "admin"}},
        headers=world.owner.headers,
    )
    assert_error(patch, 403, "FORBIDDEN")
    insert = anon.post(
        "/api/v1/data/users", json={"data": user_payload(role="admin")}, headers=world.other.headers
    )
    assert_error(insert, 403, "FORBIDDEN")


# --- password hashes never leave ---------------------------------------------------------------


def test_password_hashes_are_absent_from_every_response(anon: httpx.Client, world: World) -> None:
    admin, owner = world.admin.headers, world.owner.headers
    uid, oid = world.owner.id, world.order["id"]
    responses = [
        anon.post("/api/v1/users", json=user_payload()),
        anon.get("/api/v1/users/me", headers=owner),
        anon.get(f"/api/v1/users/{uid}", headers=owner),
        anon.patch(f"/api/v1/users/{uid}", json={"age": 44}, headers=owner),
        anon.get("/api/v1/users", params={"per_page": 100}, headers=admin),
        anon.get(f"/api/v1/orders/{oid}/user", headers=owner),
        anon.get("/api/v1/data/users", params={"per_page": 100}, headers=admin),
        anon.get(f"/api/v1/data/users/{uid}", headers=admin),
        anon.put(
            f"/api/v1/data/users/{uid}",
            json={"data": user_payload(email=world.owner.user["email"])},
            headers=admin,
        ),
        anon.get("/api/v1/join/users/orders/user_id", params={"per_page": 100}, headers=admin),
        anon.get("/api/v1/join/orders/users/user_id", params={"per_page": 100}, headers=admin),
        anon.get("/api/v1/dump/users", headers=admin),
        anon.get("/api/v1/dump/orders", headers=admin),
    ]
    for response in responses:
        assert response.status_code in (200, 201), (response.request.url, response.text)
        text = response.text
        assert "password" not in text and "$2b$" not in text, response.request.url
    assert uid in responses[11].text  # the dump did include the user


@pytest.mark.parametrize(
    "params",
    [
        {"password_hash": "x"},
        {"password_hash__contains": "$2b"},
        {"sort": "password_hash:asc"},
    ],
)
def test_hashes_cannot_be_probed_through_filters(
    client: httpx.Client, params: dict[str, str]
) -> None:
    for path in ("/api/v1/users", "/api/v1/data/users", "/api/v1/join/users/orders/user_id"):
        response = client.get(path, params=params)
        assert response.status_code == 400, (path, response.text)


@pytest.mark.parametrize(
    "path", ["/api/v1/users?created_before=", "/api/v1/orders?created_before="]
)
def test_no_token_is_401_before_any_word_about_the_query(anon: httpx.Client, path: str) -> None:
    assert_error(anon.get(path), 401, "NOT_AUTHENTICATED")


def test_a_body_that_is_not_json_gets_the_same_refusals(anon: httpx.Client, world: World) -> None:
    """FastAPI reads a JSON body before any dependency runs: a caller the route refuses must
    still hear its 401, 403 or 404, not a 422 about the body (those it lets in get the 422)."""
    routes = [
        (method, path, expected)
        for method, path, body, expected in ROUTES
        if body and body != "order-for-owner"  # its 403 is for the user_id in the body
    ]
    routes += [
        ("POST", "/api/v1/orders", (401, 422, 422, 422)),
        ("POST", "/api/v1/transaction", (401, 403, 403, 422)),
        ("POST", "/api/v1/users/query", (401, 403, 403, 422)),
        ("POST", "/api/v1/orders/query", (401, 422, 422, 422)),
        ("POST", "/api/v1/data/{table}/query", (401, 403, 403, 422)),
    ]
    bad = {"Content-Type": "application/json"}
    for method, path, expected in routes:
        url = path.format(
            owner=world.owner.id, order=world.order["id"], table=world.table,
            record=world.record["id"],
        )  # fmt: skip
        for caller, status in zip(CALLERS, expected, strict=True):
            want = status if status in (401, 403, 404) else 422
            headers = {**bad, **world.headers(caller)}
            response = anon.request(method, url, content=b"{bad", headers=headers)
            assert response.status_code == want, (caller, method, url, response.text)
            if want == 401:
                assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"
        forged = {**bad, "Authorization": "Bearer forged"}
        response = anon.request(method, url, content=b"{bad", headers=forged)
        assert_error(response, 401, "INVALID_TOKEN")
