"""POST /transaction: atomic multi-table writes, references to earlier results, every error."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.auth import Account, login, register
from tests.support.factories import (
    PASSWORD,
    assert_error,
    create_order,
    create_record,
    create_user,
    token,
    user_payload,
)
from tests.support.stack import Stack
from tests.support.workers import close_all, pinned_clients

pytestmark = pytest.mark.integration

URL = "/api/v1/transaction"


def run(client: httpx.Client, *operations: dict[str, Any]) -> httpx.Response:
    # ASCII JSON: a lone surrogate travels as its escape (\ud800), as a client may send it.
    body = json.dumps({"operations": list(operations)})
    return client.post(URL, content=body, headers={"Content-Type": "application/json"})


def test_user_and_orders_in_one_call(client: httpx.Client, anon: httpx.Client) -> None:
    payload = user_payload()
    order = {"product_name": "Widget", "quantity": 2, "total_price": "19.98"}
    response = run(
        client,
        {"op": "insert", "table": "users", "data": payload},
        {"op": "insert", "table": "orders", "data": {**order, "user_id": {"$ref": "0.id"}}},
        {"op": "insert", "table": "orders", "data": {**order, "user_id": {"$ref": "0.id"}}},
        {"op": "patch", "table": "orders", "id": {"$ref": "2.id"}, "data": {"quantity": 5}},
    )
    assert response.status_code == 200, response.text
    user, first, second, patched = response.json()["data"]["results"]
    assert "password_hash" not in user and "password" not in user and user["role"] == "user"
    assert first["user_id"] == second["user_id"] == user["id"]
    assert first["total_price"] == "19.98" and first["order_date"]
    assert patched["id"] == second["id"] and patched["quantity"] == 5 and patched["version"] == 2
    account = login(anon, payload["email"], PASSWORD)  # hashed like a registration
    mine = anon.get("/api/v1/orders", headers=account.headers).json()
    assert mine["meta"]["total"] == 2


def test_generic_operations_and_versions(client: httpx.Client) -> None:
    table = f"tx_{token()}"
    create_record(client, table, id="a", n=1)
    response = run(
        client,
        {"op": "patch", "table": table, "id": "a", "data": {"n": 2}, "expected_version": 1},
        {"op": "replace", "table": table, "id": "a", "data": {"m": 3}, "expected_version": 2},
        {"op": "insert", "table": table, "data": {"id": "b", "copy": {"$ref": "1.m"}}},
        {"op": "insert", "table": table, "data": {"id": "a", "n": 9}, "upsert": True},
        {"op": "delete", "table": table, "id": "b"},
    )
    assert response.status_code == 200, response.text
    results = response.json()["data"]["results"]
    assert results[0]["n"] == 2 and results[1] == {**results[1], "m": 3, "version": 3}
    assert "n" not in results[1] and results[2]["copy"] == 3
    assert results[3]["version"] == 4 and results[3]["n"] == 9
    assert results[4] == {"id": "b", "cascaded": 0}
    assert_error(client.get(f"/api/v1/data/{table}/b"), 404)


def test_a_replace_or_patch_ignores_an_id_in_its_data_as_put_and_patch_do(
    client: httpx.Client,
) -> None:
    """The op's ``id`` names the record; one in ``data`` (a record read back whole, even a
    reserved name) is ignored, as PUT and PATCH ignore theirs (QA: a 422 here, 200 there)."""
    table = f"tx_{token()}"
    create_record(client, table, id="r1", a=1)
    response = run(
        client,
        {"op": "patch", "table": table, "id": "r1", "data": {"id": "count", "a": 2}},
        {"op": "replace", "table": table, "id": "r1", "data": {"id": "bad id!", "b": 3}},
    )
    assert response.status_code == 200, response.text
    patched, replaced = response.json()["data"]["results"]
    assert (patched["id"], patched["a"]) == ("r1", 2)
    assert (replaced["id"], replaced["b"]) == ("r1", 3) and "a" not in replaced


def test_password_change_in_a_transaction_ends_sessions(
    client: httpx.Client, anon: httpx.Client
) -> None:
    account = register(anon)
    assert anon.get("/api/v1/users/me", headers=account.headers).status_code == 200
    change = {"op": "patch", "table": "users", "id": account.id, "data": {"password": "x" * 12}}
    assert run(client, change).status_code == 200
    assert_error(anon.get("/api/v1/users/me", headers=account.headers), 401)
    login(anon, account.user["email"], "x" * 12)


@pytest.fixture
async def pinned(stack: Stack, admin: Account) -> AsyncIterator[list[httpx.AsyncClient]]:
    clients = await pinned_clients(stack.base_url, workers=2, per_worker=3, headers=admin.headers)
    yield [client for row in zip(*clients.values(), strict=False) for client in row]
    await close_all(clients)


async def test_failing_fifth_operation_leaves_nothing(pinned: list[httpx.AsyncClient]) -> None:
    writer, reader = pinned[0], pinned[1]
    table = f"tx_{token()}"
    user = (await writer.post("/api/v1/users", json=user_payload())).json()["data"]
    seeded = await writer.post(f"/api/v1/data/{table}", json={"data": {"id": "z", "n": 0}})
    assert seeded.status_code == 201
    operations = [
        {"op": "insert", "table": table, "data": {"id": "a"}},
        {"op": "patch", "table": table, "id": "z", "data": {"n": 1}},
        {"op": "patch", "table": "users", "id": user["id"], "data": {"full_name": "Changed"}},
        {"op": "insert", "table": f"{table}_new", "data": {"id": "c"}},
        {"op": "insert", "table": table, "data": {"id": "z"}},  # duplicate id: fails
    ]
    response = await writer.post(URL, json={"operations": operations})
    error = assert_error(response, 409, "ALREADY_EXISTS")
    assert error["details"][0] | {"index": 4, "op": "insert", "table": table} == error["details"][0]
    assert "operation 4 (insert" in error["message"]
    assert writer.headers is not None
    assert (
        response.headers["x-worker-pid"]
        != (await reader.get("/api/v1/health")).headers["x-worker-pid"]
    )
    count = await reader.get(f"/api/v1/data/{table}/count")
    assert count.json()["data"]["count"] == 1
    assert (await reader.get(f"/api/v1/data/{table}/z")).json()["data"]["version"] == 1
    assert (await reader.get(f"/api/v1/data/{table}/a")).status_code == 404
    assert (await reader.get(f"/api/v1/data/{table}_new")).status_code == 404
    read = (await reader.get(f"/api/v1/users/{user['id']}")).json()["data"]
    assert read["full_name"] == user["full_name"] and read["version"] == 1


async def test_concurrent_transactions_never_interleave(pinned: list[httpx.AsyncClient]) -> None:
    table = f"tx_{token()}"
    first = pinned[0]
    pair = [{"id": "a", "k": 0}, {"id": "b", "k": 0}]
    assert (await first.post(f"/api/v1/data/{table}", json={"data": pair})).status_code == 201
    # Readers and writers on their own connections (one worker each way), so neither waits
    # for the other's connection.
    readers, writers, rounds = pinned[:2], pinned[2:], 30
    seen: list[tuple[Any, ...]] = []
    done = asyncio.Event()

    async def write(k: int) -> None:
        ids = ["a", "b"] if k % 2 else ["b", "a"]
        ops = [{"op": "patch", "table": table, "id": i, "data": {"k": k, "by": k}} for i in ids]
        response = await writers[k % len(writers)].post(URL, json={"operations": ops})
        assert response.status_code == 200, response.text

    async def read(client: httpx.AsyncClient) -> None:
        query = {"filter": {"field": "id", "op": "in", "value": ["a", "b"]}, "sort": "id:asc"}
        while not done.is_set():
            items = (await client.post(f"/api/v1/data/{table}/query", json=query)).json()["data"]
            seen.append(tuple((r["k"], r["version"]) for r in items))

    tasks = [asyncio.create_task(read(client)) for client in readers]
    try:
        await asyncio.gather(*(write(k) for k in range(1, rounds + 1)))
    finally:
        done.set()
        await asyncio.gather(*tasks)
    assert seen and all(a == b for a, b in seen), seen
    final = (await first.post(f"/api/v1/data/{table}/query", json={})).json()["data"]
    assert {r["version"] for r in final} == {rounds + 1}
    assert final[0]["k"] == final[1]["k"] == final[0]["by"]


def _detail(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    error = assert_error(response, status, code)
    detail: dict[str, Any] = error["details"][0]
    return detail


def test_failures_name_the_operation(client: httpx.Client) -> None:
    table = f"tx_{token()}"
    create_record(client, table, id="a", n=1)
    user = create_user(client)
    create_order(client, user["id"])
    ok = {"op": "patch", "table": table, "id": "a", "data": {"n": 2}}

    stale = {**ok, "expected_version": 7}
    detail = _detail(run(client, ok, stale), 412, "PRECONDITION_FAILED")
    assert detail["index"] == 1 and detail["op"] == "patch" and detail["current"] == 2

    missing = {"op": "delete", "table": table, "id": "nope"}
    assert _detail(run(client, ok, missing), 404, "NOT_FOUND")["index"] == 1

    taken = {"op": "insert", "table": "users", "data": user_payload(email=user["email"])}
    detail = _detail(run(client, ok, taken), 409, "ALREADY_EXISTS")
    assert detail["index"] == 1 and detail["field"] == "email" and detail["table"] == "users"

    orphan = {
        "op": "insert",
        "table": "orders",
        "data": {
            "user_id": "00000000-0000-4000-8000-000000000000",
            "product_name": "p",
            "quantity": 1,
            "total_price": "1.00",
        },
    }
    assert _detail(run(client, orphan), 409, "FOREIGN_KEY_VIOLATION")["index"] == 0
    dependants = {"op": "delete", "table": "users", "id": user["id"]}
    response = run(client, ok, dependants)
    assert _detail(response, 409, "HAS_DEPENDANTS")["index"] == 1
    assert '"cascade": true' in response.json()["error"]["message"]  # the way out (QA)

    bad_email = {"op": "insert", "table": "users", "data": user_payload(email="not-an-email")}
    detail = _detail(run(client, ok, bad_email), 422, "VALIDATION_ERROR")
    assert detail["field"] == "body.operations.1.data.email"
    bad_ref = {"op": "insert", "table": table, "data": {"x": {"$ref": "5.id"}}}
    detail = _detail(run(client, ok, bad_ref), 422, "VALIDATION_ERROR")
    assert detail["field"] == "body.operations.1.data.x.$ref"
    ref_in_typed = {
        "op": "patch",
        "table": "users",
        "id": user["id"],
        "data": {"full_name": {"$ref": "0.id"}},
    }
    detail = _detail(run(client, ok, ref_in_typed), 422, "VALIDATION_ERROR")
    assert detail["field"] == "body.operations.1.data.full_name"
    no_path = {"op": "insert", "table": table, "data": {"x": {"$ref": "0.nothing.here"}}}
    assert _detail(run(client, ok, no_path), 400, "BAD_REQUEST")["index"] == 1
    schema = {"schema": {"properties": {"n": {"minimum": 0}}}}
    assert client.put(f"/api/v1/data/{table}/schema", json=schema).status_code == 200
    below = {**ok, "data": {"n": -1}}  # QA: a schema's 422 did not name the operation
    detail = _detail(run(client, ok, below), 422, "VALIDATION_ERROR")
    assert detail["field"] == "body.operations.1.data.n"
    assert (detail["index"], detail["op"], detail["table"]) == (1, "patch", table)
    assert client.get(f"/api/v1/data/{table}/a").json()["data"]["version"] == 1


@pytest.mark.parametrize(
    ("operation", "field"),
    [
        ({"op": "patch", "table": "t", "data": {}}, "body.operations.0.id"),
        ({"op": "insert", "table": "t", "id": "a", "data": {}}, "body.operations.0.id"),
        ({"op": "insert", "table": "t"}, "body.operations.0.data"),
        ({"op": "delete", "table": "t", "id": "a", "data": {}}, "body.operations.0.data"),
        (
            {"op": "insert", "table": "t", "data": {}, "expected_version": 1},
            "body.operations.0.expected_version",
        ),
        (
            {"op": "patch", "table": "t", "id": "a", "data": {}, "cascade": True},
            "body.operations.0.cascade",
        ),
        (
            {"op": "insert", "table": "users", "data": {}, "upsert": True},
            "body.operations.0.upsert",
        ),
        ({"op": "delete", "table": "t", "id": {"$ref": "0.id"}}, "body.operations.0.id"),
        ({"op": "delete", "table": "t", "id": {"a": "b"}}, "body.operations.0.id"),
        # QA: one detail at id, not one per member of its union ("id.str")
        ({"op": "patch", "table": "t", "id": 5, "data": {}}, "body.operations.0.id"),
        ({"op": "delete", "table": "t", "id": {"$ref": 0}}, "body.operations.0.id"),
        ({"op": "merge", "table": "t", "id": "a"}, "body.operations.0.op"),
        ({"op": "delete", "table": "_audit", "id": "a"}, "body.operations.0.table"),
        ({"op": "insert", "table": "t", "data": {"id": "a/b"}}, "body.operations.0.data.id"),
        # QA: flags took 1, 0 and "yes" as booleans (the integers are strict)
        ({"op": "delete", "table": "t", "id": "a", "cascade": 1}, "body.operations.0.cascade"),
        ({"op": "insert", "table": "t", "data": {}, "upsert": "yes"}, "body.operations.0.upsert"),
        # QA: a lone surrogate reached the store's encoder (400 quoting its error)
        ({"op": "patch", "table": "t", "id": "\ud800", "data": {}}, "body.operations.0.id"),
        ({"op": "delete", "table": "t", "id": {"$ref": "0.\udc00"}}, "body.operations.0.id"),
        # QA: true was read as version 1, "2" and 3.0 as 2 and 3, and each patch written
        *(
            (
                {"op": "patch", "table": "t", "id": "a", "data": {}, "expected_version": loose},
                "body.operations.0.expected_version",
            )
            for loose in (True, "2", 3.0)
        ),
    ],
)
def test_malformed_operations(client: httpx.Client, operation: dict[str, Any], field: str) -> None:
    error = assert_error(run(client, operation), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == field, error


def test_limits_and_access(client: httpx.Client, anon: httpx.Client) -> None:
    insert = {"op": "insert", "table": f"tx_{token()}", "data": {}}
    assert_error(client.post(URL, json={"operations": []}), 422, "VALIDATION_ERROR")
    assert_error(client.post(URL, json={"operations": [insert] * 101}), 422, "VALIDATION_ERROR")
    users = [{"op": "insert", "table": "users", "data": user_payload()} for _ in range(21)]
    assert_error(client.post(URL, json={"operations": users}), 400, "LIMIT_EXCEEDED")
    assert_error(client.post(URL, content=b"[]", headers={"Content-Type": "text/plain"}), 415)
    assert_error(anon.post(URL, json={"operations": [insert]}), 401)
    account = register(anon)
    response = anon.post(URL, json={"operations": [insert]}, headers=account.headers)
    assert_error(response, 403, "FORBIDDEN")


@pytest.mark.parametrize("bad_id", ["a/b", "..", "has space", "count", "schema", "indexes"])
def test_an_id_taken_from_a_reference_follows_the_id_rules(
    client: httpx.Client, bad_id: str
) -> None:
    """A literal id like these is a 422; one copied by ``{"$ref": "0.p"}`` is checked by the
    store (else a record no /data/{table}/{id} could address): 400, nothing applied."""
    table = f"tx_{token()}"
    operations = [
        {"op": "insert", "table": table, "data": {"id": "src", "p": bad_id}},
        {"op": "insert", "table": table, "data": {"id": {"$ref": "0.p"}}},
    ]
    detail = _detail(client.post(URL, json={"operations": operations}), 400, "BAD_REQUEST")
    assert detail["index"] == 1 and detail["arg"] == "id"
    assert client.get(f"/api/v1/data/{table}").status_code == 404
    operations[0]["data"] = {"id": "src", "p": "fine-id_1"}
    response = client.post(URL, json={"operations": operations})
    assert response.status_code == 200, response.text
    assert client.get(f"/api/v1/data/{table}/fine-id_1").status_code == 200


def test_a_reference_cannot_copy_a_password_hash(client: httpx.Client) -> None:
    """A ``$ref`` to a user's ``password_hash`` names nothing (the insert's result is the
    public record), so the hash cannot be copied into a readable table."""
    table = f"rv_hash_{token()}"
    user = {"email": f"rv-{token()}@example.com", "full_name": "R", "password": PASSWORD}
    operations = [
        {"op": "insert", "table": "users", "data": user},
        {"op": "insert", "table": table, "data": {"h": {"$ref": "0.password_hash"}}},
    ]
    response = client.post("/api/v1/transaction", json={"operations": operations})
    error = assert_error(response, 400, "BAD_REQUEST")
    assert error["details"][0]["index"] == 1
    assert "$2" not in response.text
    assert client.get(f"/api/v1/data/{table}").status_code == 404  # nothing applied


@pytest.mark.parametrize(
    ("first", "ref"),
    [
        ({"op": "insert", "table": "scratch_refs", "data": {"u": None}}, "0.u"),  # a null
        ({"op": "insert", "table": "scratch_refs", "data": {"u": "x"}}, "0.id"),  # not a user's
        ({"op": "insert", "table": "users", "data": None}, "0.email"),  # a user's, not the id
    ],
)
def test_an_order_references_only_a_user_id(
    client: httpx.Client, first: dict[str, Any], ref: str
) -> None:
    """The store's foreign key lets a null through (as SQL does): a reference to anything but
    a user's id could make an order without a user, which no other route allows."""
    if first["table"] == "users":
        first = {**first, "data": user_payload()}
    order = {"product_name": "Orphan", "quantity": 1, "total_price": "2.00"}
    victim = create_order(client, create_user(client)["id"])
    for second in (
        {"op": "insert", "table": "orders", "data": {**order, "user_id": {"$ref": ref}}},
        {"op": "patch", "table": "orders", "id": victim["id"], "data": {"user_id": {"$ref": ref}}},
    ):
        error = assert_error(run(client, first, second), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == "body.operations.1.data.user_id.$ref", error
        assert "may only reference the id of a users record" in error["details"][0]["message"]
    assert (
        client.get(f"/api/v1/orders/{victim['id']}").json()["data"]["user_id"] == victim["user_id"]
    )


def _promoted_admin(client: httpx.Client, anon: httpx.Client) -> Account:
    account = register(anon)
    promoted = client.patch(f"/api/v1/users/{account.id}", json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    return login(anon, account.user["email"], account.password)  # the role is in the token


def test_an_admin_changes_their_own_password_only_with_current_password(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """PATCH /users/{id} asks for current_password; /data/users and transactions must not be a
    way around it (a stolen access token would take the account over)."""
    admin = _promoted_admin(client, anon)
    me, headers = admin.id, admin.headers
    new = {"password": "a brand new passphrase"}
    full = {**user_payload(email=admin.user["email"]), **new}
    attempts = [
        anon.patch(f"/api/v1/data/users/{me}", json={"data": new}, headers=headers),
        anon.put(f"/api/v1/data/users/{me}", json={"data": full}, headers=headers),
        anon.post(URL, json={"operations": [{"op": "patch", "table": "users", "id": me, "data": new}]}, headers=headers),  # noqa: E501
        anon.post(URL, json={"operations": [{"op": "replace", "table": "users", "id": me, "data": full}]}, headers=headers),  # noqa: E501
        anon.post(URL, json={"operations": [  # the target named by a reference
            {"op": "patch", "table": "users", "id": me, "data": {"full_name": "Me"}},
            {"op": "patch", "table": "users", "id": {"$ref": "0.id"}, "data": new},
        ]}, headers=headers),
    ]  # fmt: skip
    # A new password ends sessions: named by a reference, refused at the id (as a role is).
    places = ["data.password"] * 4 + ["operations.1.id"]
    for response, place in zip(attempts, places, strict=True):
        error = assert_error(response, 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"].endswith(place), error
    login(anon, admin.user["email"], admin.password)  # unchanged
    # Another user's password: an admin's reset, as before.
    other = register(anon)
    reset = anon.patch(f"/api/v1/data/users/{other.id}", json={"data": new}, headers=headers)
    assert reset.status_code == 200, reset.text
    login(anon, other.user["email"], new["password"])


def test_an_admin_changes_their_own_email_only_with_current_password(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """The email signs in to the account as the password does: moved elsewhere by a stolen
    token, the owner could no longer log in (nor reset the password) with it."""
    admin = _promoted_admin(client, anon)
    me, headers = admin.id, admin.headers
    new = {"email": f"moved-{secrets.token_hex(4)}@example.com"}
    attempts = [
        anon.patch(f"/api/v1/data/users/{me}", json={"data": new}, headers=headers),
        anon.post(URL, json={"operations": [{"op": "patch", "table": "users", "id": me, "data": new}]}, headers=headers),  # noqa: E501
    ]  # fmt: skip
    for response in attempts:
        error = assert_error(response, 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"].endswith("data.email"), error
    login(anon, admin.user["email"], admin.password)  # unchanged
    other = register(anon)
    moved = anon.patch(f"/api/v1/data/users/{other.id}", json={"data": new}, headers=headers)
    assert moved.status_code == 200, moved.text
    login(anon, new["email"], other.password)
