"""An account stored with an address the checks refuse now (made before them: a dotless i, an
all-Cyrillic local part that reads as ASCII) saves a whole profile, its email sent again
exactly as stored, on every route that writes users: 200, and the email is not written. A
different lookalike address is still refused (422 at the field).

Against the real stack; the legacy address is written straight into the store, as one made
before the checks would be.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.auth import Account, login, register
from tests.support.factories import PASSWORD, assert_error, token, user_payload
from tests.support.stack import Stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration
ME = "/api/v1/users/me"
AUDIT = "/api/v1/admin/audit"
TRANSACTION = "/api/v1/transaction"
# Local parts each of whose characters passes for ASCII: the dotless i, Cyrillic "scope".
LEGACY_LOCALS = ["adm\u0131n", "\u0455\u0441\u043e\u0440\u0435"]


def lookalike(local: str) -> str:
    """A new address of that kind (digits go with any script; hex letters would mix in Latin)."""
    return f"{local}.{int(token(), 16)}@example.com"


def assert_reads_as_ascii(response: httpx.Response, field: str) -> None:
    error = assert_error(response, 422, "VALIDATION_ERROR")
    details = {detail["field"]: detail["message"] for detail in error["details"]}
    assert field in details and "reads as the ASCII" in details[field], error


def legacy_account(stack: Stack, anon: httpx.Client, local: str) -> Account:
    """A registered account whose stored email is one that registration refuses now."""
    email = lookalike(local)
    refused = anon.post("/api/v1/users", json=user_payload(email=email))
    assert_reads_as_ascii(refused, "body.email")  # what makes the account "legacy"
    account = register(anon)
    changes = {"email": email}
    store_call(stack, "patch", {"table": "users", "id": account.id, "changes": changes})
    return login(anon, email, PASSWORD)


def promoted(client: httpx.Client, anon: httpx.Client, account: Account) -> Account:
    """The account made an admin, with a new session (the role is in the token)."""
    answer = client.patch(f"/api/v1/users/{account.id}", json={"role": "admin"})
    assert answer.status_code == 200, answer.text
    return login(anon, account.user["email"], PASSWORD)


def fields_written(client: httpx.Client, request_id: str) -> list[str]:
    """The fields of the users write that request made (the store audits only real writes)."""
    found = client.get(AUDIT, params={"table": "users", "per_page": 100})
    assert found.status_code == 200, found.text
    (entry,) = [e for e in found.json()["data"] if e["request_id"] == request_id]
    fields: list[str] = entry["fields"]
    return fields


def saved(response: httpx.Response, email: str) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    data: dict[str, Any] = body["data"]
    if "results" in data:  # a transaction
        (data,) = data["results"]
    assert data["email"] == email, data
    return data


def stored_email(stack: Stack, user_id: str) -> str:
    email: str = store_call(stack, "get", {"table": "users", "id": user_id})["email"]
    return email


@pytest.mark.parametrize("local", LEGACY_LOCALS)
def test_patch_users_saves_the_profile_with_the_stored_address(
    stack: Stack, client: httpx.Client, anon: httpx.Client, local: str
) -> None:
    owner = legacy_account(stack, anon, local)
    email, headers = owner.user["email"], owner.headers
    request_id = f"req-{token()}"
    form = {"email": email, "full_name": "Saved Whole", "age": 41}
    answer = anon.patch(ME, json=form, headers={**headers, "X-Request-ID": request_id})
    data = saved(answer, email)
    assert (data["full_name"], data["age"]) == ("Saved Whole", 41)
    assert "email" not in fields_written(client, request_id)
    alone = saved(anon.patch(ME, json={"email": email}, headers=headers), email)
    assert alone["version"] == data["version"]  # nothing else to write: no write
    by_admin = client.patch(f"/api/v1/users/{owner.id}", json={**form, "full_name": "By Admin"})
    assert saved(by_admin, email)["full_name"] == "By Admin"
    # Another address of that kind is a new one: every check, whoever sends it.
    other = lookalike(local)
    mine = {"email": other, "current_password": PASSWORD}
    assert_reads_as_ascii(anon.patch(ME, json=mine, headers=headers), "body.email")
    refused = client.patch(f"/api/v1/users/{owner.id}", json={"email": other})
    assert_reads_as_ascii(refused, "body.email")
    assert stored_email(stack, owner.id) == email
    login(anon, email, PASSWORD)


@pytest.mark.parametrize("local", LEGACY_LOCALS)
def test_data_users_patch_and_put_save_it(
    stack: Stack, client: httpx.Client, anon: httpx.Client, local: str
) -> None:
    owner = promoted(client, anon, legacy_account(stack, anon, local))
    email, url = owner.user["email"], f"/api/v1/data/users/{owner.id}"
    request_id = f"req-{token()}"
    own = {"data": {"email": email, "full_name": "Kept"}}
    answer = anon.patch(url, json=own, headers={**owner.headers, "X-Request-ID": request_id})
    assert saved(answer, email)["full_name"] == "Kept"
    assert "email" not in fields_written(client, request_id)
    # An admin replacing the record, the stored address sent as it is.
    new_password = f"a brand new passphrase {token()}"
    whole = {"email": email, "full_name": "Replaced", "age": 50, "password": new_password}
    request_id = f"req-{token()}"
    replaced = client.put(url, json={"data": whole}, headers={"X-Request-ID": request_id})
    assert saved(replaced, email)["full_name"] == "Replaced"
    assert "email" not in fields_written(client, request_id)
    login(anon, email, new_password)
    other = lookalike(local)
    patched = client.patch(url, json={"data": {"email": other}})
    assert_reads_as_ascii(patched, "body.data.email")
    put = client.put(url, json={"data": {**whole, "email": other}})
    assert_reads_as_ascii(put, "body.data.email")
    assert stored_email(stack, owner.id) == email


@pytest.mark.parametrize("local", LEGACY_LOCALS)
def test_transactions_save_it(
    stack: Stack, client: httpx.Client, anon: httpx.Client, local: str
) -> None:
    owner = promoted(client, anon, legacy_account(stack, anon, local))
    email = owner.user["email"]

    def operation(op: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"operations": [{"op": op, "table": "users", "id": owner.id, "data": data}]}

    request_id = f"req-{token()}"
    own = operation("patch", {"email": email, "full_name": "In A Transaction"})
    answer = anon.post(TRANSACTION, json=own, headers={**owner.headers, "X-Request-ID": request_id})
    assert saved(answer, email)["full_name"] == "In A Transaction"
    assert "email" not in fields_written(client, request_id)
    by_admin = client.post(TRANSACTION, json=operation("patch", {"email": email, "age": 33}))
    assert saved(by_admin, email)["age"] == 33
    new_password = f"a brand new passphrase {token()}"
    whole = {"email": email, "full_name": "Replaced", "password": new_password}
    request_id = f"req-{token()}"
    replaced = client.post(
        TRANSACTION, json=operation("replace", whole), headers={"X-Request-ID": request_id}
    )
    assert saved(replaced, email)["full_name"] == "Replaced"
    assert "email" not in fields_written(client, request_id)
    other = lookalike(local)
    for op, data in (("patch", {"email": other}), ("replace", {**whole, "email": other})):
        refused = client.post(TRANSACTION, json=operation(op, data))
        assert_reads_as_ascii(refused, "body.operations.0.data.email")
    assert stored_email(stack, owner.id) == email
    login(anon, email, new_password)
