"""GET /api/v1/admin/audit: every mutation, attributed to its user and request."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.auth import Account, login_admin, register
from tests.support.factories import (
    PASSWORD,
    assert_error,
    create_order,
    create_record,
    create_user,
    token,
)
from tests.support.stack import Stack, running_stack, wait_until_ready
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration

AUDIT = "/api/v1/admin/audit"
Entry = dict[str, Any]


def audit_of(client: httpx.Client, **params: Any) -> list[Entry]:
    response = client.get(AUDIT, params={"per_page": 100, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["meta"]["total"] >= len(body["data"])
    items: list[Entry] = body["data"]
    return items


def by_request(client: httpx.Client, table: str, request_id: str) -> list[Entry]:
    """This table's entries written by one request, oldest first."""
    entries = [e for e in audit_of(client, table=table) if e["request_id"] == request_id]
    return entries[::-1]


def rid() -> str:
    return f"req-{token()}"


def test_generic_writes_are_attributed(client: httpx.Client, admin: Account) -> None:
    table = f"au_{token()}"
    url = f"/api/v1/data/{table}"
    ids = [rid() for _ in range(4)]
    created = client.post(
        url, json={"data": {"name": "a", "stock": 1}}, headers={"X-Request-ID": ids[0]}
    )
    record_id = created.json()["data"]["id"]
    client.patch(
        f"{url}/{record_id}", json={"data": {"stock": 2}}, headers={"X-Request-ID": ids[1]}
    )
    client.put(f"{url}/{record_id}", json={"data": {"name": "b"}}, headers={"X-Request-ID": ids[2]})
    client.delete(f"{url}/{record_id}", headers={"X-Request-ID": ids[3]})

    expected = [
        ("insert", {"name", "stock"}),
        ("patch", {"stock"}),
        ("replace", None),
        ("delete", None),
    ]
    for request_id, (op, fields) in zip(ids, expected, strict=True):
        [entry] = by_request(client, table, request_id)
        assert entry["op"] == op and entry["table"] == table
        assert entry["user_id"] == admin.id and entry["role"] == "admin"
        assert entry["record_id"] == record_id and entry["count"] == 1
        assert entry["filter"] is None
        if fields is not None:
            assert set(entry["fields"]) == fields
        assert {"seq", "at"} <= entry.keys()
    seqs = [e["seq"] for e in audit_of(client, table=table)]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == 4  # newest first


def test_typed_writes_carry_the_user_and_no_secrets(
    client: httpx.Client, anon: httpx.Client, stack: Stack
) -> None:
    user = register(anon)
    request_id = rid()
    order = anon.post(
        "/api/v1/orders",
        json={"user_id": user.id, "product_name": "Pen", "quantity": 1, "total_price": "2.50"},
        headers={**user.headers, "X-Request-ID": request_id},
    )
    assert order.status_code == 201, order.text
    [entry] = by_request(client, "orders", request_id)
    assert (entry["user_id"], entry["role"], entry["op"]) == (user.id, "user", "insert")
    assert entry["record_id"] == order.json()["data"]["id"]

    new_password = f"a brand new passphrase {token()}"
    request_id = rid()
    changed = anon.patch(
        f"/api/v1/users/{user.id}",
        json={"password": new_password, "current_password": PASSWORD},
        headers={**user.headers, "X-Request-ID": request_id},
    )
    assert changed.status_code == 200, changed.text
    [entry] = by_request(client, "users", request_id)
    assert (entry["user_id"], entry["op"], entry["record_id"]) == (user.id, "patch", user.id)
    assert "password_hash" in entry["fields"]  # the name of what changed, never its value

    stored = store_call(stack, "get", {"table": "users", "id": user.id, "include_hidden": True})
    text = client.get(AUDIT, params={"table": "users", "per_page": 100}).text
    for secret in (new_password, PASSWORD, stored["password_hash"]):
        assert secret not in text


def test_registration_is_attributed_to_an_anonymous_caller(
    client: httpx.Client, anon: httpx.Client
) -> None:
    request_id = rid()
    response = anon.post(
        "/api/v1/users",
        json={"email": f"{token()}@example.com", "full_name": "N", "password": PASSWORD},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 201
    [entry] = by_request(client, "users", request_id)
    assert entry["user_id"] is None and entry["role"] == "anonymous" and entry["op"] == "insert"
    assert PASSWORD not in str(entry)


def test_filter_index_and_schema_writes_are_audited(client: httpx.Client, admin: Account) -> None:
    table = f"au_{token()}"
    for n in (1, 1, 2):
        create_record(client, table, n=n)
    url = f"/api/v1/data/{table}"
    steps = [
        ("update_where", "PATCH", url, {"n": "1"}, {"data": {"x": True}}),
        ("create_index", "POST", f"{url}/indexes", None, {"field": "n"}),
        ("drop_index", "DELETE", f"{url}/indexes/n", None, None),
        ("set_schema", "PUT", f"{url}/schema", None, {"schema": {"type": "object"}}),
        ("delete_where", "DELETE", url, {"n": "1"}, None),
    ]
    for op, method, step_url, params, body in steps:
        request_id = rid()
        response = client.request(
            method, step_url, params=params, json=body, headers={"X-Request-ID": request_id}
        )
        assert response.status_code < 300, response.text
        [entry] = by_request(client, table, request_id)
        assert entry["op"] == op and entry["user_id"] == admin.id and entry["role"] == "admin"
        if op == "update_where":
            assert entry["count"] == 2 and entry["fields"] == ["x"]
            # The fields a filter tests, never its values (they may be sensitive).
            assert entry["filter"] == ["n"] and entry["record_id"] is None
        if op == "delete_where":
            assert entry["count"] == 2 and entry["filter"] == ["n"]


def test_transaction_bulk_and_import_writes_are_audited(
    client: httpx.Client, admin: Account
) -> None:
    table = f"au_{token()}"
    request_id = rid()
    operations = [
        {"op": "insert", "table": table, "data": {"id": "a", "n": 1}},
        {"op": "patch", "table": table, "id": "a", "data": {"n": 2}},
    ]
    response = client.post(
        "/api/v1/transaction",
        json={"operations": operations},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text
    entries = by_request(client, table, request_id)
    assert [(e["op"], e["record_id"]) for e in entries] == [("insert", "a"), ("patch", "a")]
    assert {(e["user_id"], e["role"]) for e in entries} == {(admin.id, "admin")}

    request_id = rid()
    bulk = client.post(
        f"/api/v1/data/{table}",
        json={"data": [{"n": 3}, {"n": 4}]},
        headers={"X-Request-ID": request_id},
    )
    assert bulk.status_code == 201, bulk.text
    assert [e["op"] for e in by_request(client, table, request_id)] == ["insert", "insert"]

    request_id = rid()
    imported = client.post(
        "/api/v1/batch/import",
        params={"table": table},
        content=b"name,n\nx,5\ny,6\n",
        headers={"Content-Type": "text/csv", "X-Request-ID": request_id},
    )
    assert imported.status_code == 200, imported.text
    entries = by_request(client, table, request_id)
    assert [e["op"] for e in entries] == ["insert", "insert"]
    assert all(e["user_id"] == admin.id and set(e["fields"]) >= {"name", "n"} for e in entries)


def test_orders_deleted_with_their_user_are_audited_under_orders(
    client: httpx.Client, admin: Account
) -> None:
    """QA: DELETE /users/{id}?cascade=true logged one entry under users; the orders that
    went with the user left nothing under ``table=orders``."""
    user = create_user(client)
    for _ in range(2):
        create_order(client, user["id"])
    request_id = rid()
    deleted = client.delete(
        f"/api/v1/users/{user['id']}",
        params={"cascade": "true"},
        headers={"X-Request-ID": request_id},
    )
    assert deleted.status_code == 204, deleted.text
    [own] = by_request(client, "users", request_id)
    assert (own["op"], own["record_id"], own["count"]) == ("delete", user["id"], 1)
    [cascaded] = by_request(client, "orders", request_id)
    assert (cascaded["op"], cascaded["record_id"], cascaded["count"]) == ("cascade_delete", None, 2)
    assert cascaded["user_id"] == admin.id and cascaded["seq"] > own["seq"]


def test_failed_writes_leave_no_entry(client: httpx.Client) -> None:
    table = f"au_{token()}"
    record = create_record(client, table, n=1)
    request_id = rid()
    response = client.patch(
        f"/api/v1/data/{table}/{record['id']}",
        json={"data": {"n": 2}},
        headers={"If-Match": 'W/"7"', "X-Request-ID": request_id},
    )
    assert response.status_code == 412
    assert by_request(client, table, request_id) == []


def test_filters_and_pagination(client: httpx.Client, admin: Account, anon: httpx.Client) -> None:
    table = f"au_{token()}"
    started = datetime.now(UTC) - timedelta(seconds=5)
    for n in range(5):
        create_record(client, table, n=n)

    response = client.get(AUDIT, params={"table": table, "per_page": 2})
    body = response.json()
    assert body["meta"] == {"page": 1, "per_page": 2, "total": 5}
    pages = [
        client.get(AUDIT, params={"table": table, "per_page": 2, "page": p}).json()["data"]
        for p in (1, 2, 3)
    ]
    seqs = [e["seq"] for page in pages for e in page]
    assert len(seqs) == 5 == len(set(seqs)) and seqs == sorted(seqs, reverse=True)

    assert len(audit_of(client, table=table, user_id=admin.id)) == 5
    assert audit_of(client, table=table, user_id="someone-else") == []
    assert len(audit_of(client, table=table, since=started.isoformat())) == 5
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert audit_of(client, table=table, since=future) == []
    assert audit_of(client, table=table, until="2000-01-01") == []
    assert len(audit_of(client, table=table, since="2000-01-01", until=future)) == 5

    assert_error(client.get(AUDIT, params={"since": "yesterday"}), 422)
    # Inclusive bounds, exact with finer digits (QA: since=<an entry's at>999Z, 0.999 us after
    # it, still listed it: rounded down), and nothing after a NUL is ignored.
    (newest, *_) = audit_of(client, table=table)
    at = newest["at"]
    assert [e["seq"] for e in audit_of(client, table=table, since=at)] == [newest["seq"]]
    assert audit_of(client, table=table, since=at[:-1] + "999Z") == []
    assert [e["seq"] for e in audit_of(client, table=table, until=at[:-1] + "999Z")][:1] == [
        newest["seq"]
    ]
    assert_error(client.get(AUDIT, params={"since": at + "\x00junk"}), 422)
    assert_error(client.get(AUDIT, params={"table": "Bad-Name"}), 400)
    assert_error(client.get(AUDIT, params={"per_page": 0}), 422)
    # a misspelt filter is refused, not ignored (which listed every table's entries)
    error = assert_error(client.get(AUDIT, params={"tabel": table}), 400, "BAD_QUERY")
    assert (
        error["details"] == [{"field": "tabel", "message": error["details"][0]["message"]}]
        and "page, per_page, since, table, until, user_id" in error["message"]
    )

    user = register(anon)
    assert_error(anon.get(AUDIT, headers=user.headers), 403, "FORBIDDEN")
    assert_error(anon.get(AUDIT), 401)


# -- retention and restarts, on a stack of its own ------------------------------------------------


@pytest.fixture(scope="module")
def small_audit() -> Iterator[tuple[Stack, Account]]:
    data_dir = Path(tempfile.mkdtemp(prefix="memdb-audit-"))
    env = {"STORE_AUDIT_MAX_ENTRIES": "5", "STORE_DATA_DIR": str(data_dir)}
    try:
        with (
            running_stack(workers=1, extra_env=env) as running,
            httpx.Client(base_url=running.base_url, timeout=10.0) as http,
        ):
            yield running, login_admin(http)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_retention_bound_and_restart(small_audit: tuple[Stack, Account]) -> None:
    stack, admin = small_audit
    table = f"au_{token()}"
    with httpx.Client(base_url=stack.base_url, timeout=10.0, headers=admin.headers) as client:
        ids = [create_record(client, table, n=n)["id"] for n in range(8)]
        body = client.get(AUDIT, params={"per_page": 100}).json()
        assert body["meta"]["total"] == 5
        assert [e["record_id"] for e in body["data"]] == ids[:2:-1]  # the newest five

        stack.restart_store()
        deadline = time.monotonic() + 20
        response: httpx.Response | None = None
        while time.monotonic() < deadline:
            try:
                response = client.get(AUDIT, params={"per_page": 100})
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                break
            time.sleep(0.2)
        wait_until_ready(stack, 20)
        assert response is not None and response.json()["data"] == body["data"]
