"""POST /transaction: an admin's own address sent again unchanged is no change of email.

Saving a whole profile (every field, the email as it is) needs no ``current_password`` through
``PATCH /users/{id}`` or ``/data/users``; a transaction refused it (422, "your own email
changes only through PATCH /users/{id}") until it checked the address against the stored one.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.auth import Account, login, register
from tests.support.factories import assert_error

pytestmark = pytest.mark.integration

URL = "/api/v1/transaction"


def _promoted_admin(client: httpx.Client, anon: httpx.Client) -> Account:
    account = register(anon)
    promoted = client.patch(f"/api/v1/users/{account.id}", json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    return login(anon, account.user["email"], account.password)  # the role is in the token


def _patch_self(anon: httpx.Client, admin: Account, data: dict[str, Any]) -> httpx.Response:
    operation = {"op": "patch", "table": "users", "id": admin.id, "data": data}
    return anon.post(URL, json={"operations": [operation]}, headers=admin.headers)


def test_own_unchanged_email_in_a_transaction_is_accepted(
    client: httpx.Client, anon: httpx.Client
) -> None:
    admin = _promoted_admin(client, anon)
    email, before = admin.user["email"], admin.user["version"]
    profile = {"email": email, "full_name": "Saved Whole", "age": 41}
    response = _patch_self(anon, admin, profile)
    assert response.status_code == 200, response.text
    (result,) = response.json()["data"]["results"]
    assert result["email"] == email and result["full_name"] == "Saved Whole"
    assert result["age"] == 41 and result["version"] == before + 1
    # The email alone, sent again: nothing to write, and still no current_password asked for.
    alone = _patch_self(anon, admin, {"email": email})
    assert alone.status_code == 200, alone.text
    assert alone.json()["data"]["results"][0]["email"] == email
    login(anon, email, admin.password)  # the address still signs in


def test_as_through_patch_users_and_data_users(client: httpx.Client, anon: httpx.Client) -> None:
    """The three ways an admin writes their own record answer the same profile alike."""
    admin = _promoted_admin(client, anon)
    profile = {"email": admin.user["email"], "full_name": "Same Everywhere"}
    answers = [
        anon.patch(f"/api/v1/users/{admin.id}", json=profile, headers=admin.headers),
        anon.patch(f"/api/v1/data/users/{admin.id}", json={"data": profile}, headers=admin.headers),
        _patch_self(anon, admin, profile),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200], answers[2].text


@pytest.mark.parametrize("change", ["upper", "other"])
def test_a_change_of_own_email_is_still_refused(
    client: httpx.Client, anon: httpx.Client, change: str
) -> None:
    """Re-cased it is a change (the stored spelling changes), as another address is: both
    need current_password, which only PATCH /users/{id} takes."""
    admin = _promoted_admin(client, anon)
    email = admin.user["email"]
    sent = email.upper() if change == "upper" else f"moved-{admin.id[:8]}@example.com"
    response = _patch_self(anon, admin, {"email": sent, "full_name": "Not Written"})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.operations.0.data.email", error
    assert "current_password" in error["details"][0]["message"]
    me = anon.get("/api/v1/users/me", headers=admin.headers).json()["data"]
    assert me["email"] == email and me["full_name"] == admin.user["full_name"]


def test_an_invalid_own_email_is_refused_at_the_field(
    client: httpx.Client, anon: httpx.Client
) -> None:
    admin = _promoted_admin(client, anon)
    for sent in ("not an address", None):
        error = assert_error(_patch_self(anon, admin, {"email": sent}), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"].startswith("body.operations.0.data.email"), error


def test_the_stored_email_after_a_change_in_the_same_transaction_is_written(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """Review: the stored address is read before any op runs, so an op sending it back after
    an earlier op moved it was taken for "no change" and dropped: the move stayed."""
    user = register(anon)
    email, moved = user.user["email"], f"moved-{user.id[:8]}@example.com"
    operations = [
        {"op": "patch", "table": "users", "id": user.id, "data": {"email": moved}},
        {"op": "patch", "table": "users", "id": user.id, "data": {"email": email, "age": 30}},
    ]
    response = client.post(URL, json={"operations": operations})
    assert response.status_code == 200, response.text
    assert [r["email"] for r in response.json()["data"]["results"]] == [moved, email]
    stored = client.get(f"/api/v1/users/{user.id}").json()["data"]
    assert stored["email"] == email and stored["age"] == 30
    login(anon, email, user.password)
