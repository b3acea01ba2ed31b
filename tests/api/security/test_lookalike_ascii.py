"""Addresses that read as ASCII though they are not, against the real stack: refused with a 422
on the email field (registration, and a change of email by any route), while genuine
Cyrillic addresses register and accounts stored with such an address before keep signing in.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.auth import bearer, login, register
from tests.support.factories import PASSWORD, assert_error, token, user_payload
from tests.support.stack import Stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration
ME = "/api/v1/users/me"

# Each passes for the ASCII address after it; one script each, so no mixed-script refusal.
READ_AS_ASCII = [
    ("\u0455\u0441\u043e\u0440\u0435@example.com", "'scope'"),  # all Cyrillic
    ("\u0391\u0392\u0395@example.com", "'ABE'"),  # all Greek
    ("adm\u0131n@example.com", "'admin'"),  # dotless i
    ("\u0130NFO@example.com", "'INFO'"),  # dotted capital I: Turkish lowercases it to i
    ("x@\u0430\u0440\u0440\u04cf\u0435.com", "the domain label"),  # apple.com in Cyrillic
]


def assert_email_refused(response: httpx.Response, field: str, reading: str) -> None:
    error = assert_error(response, 422, "VALIDATION_ERROR")
    details = {detail["field"]: detail["message"] for detail in error["details"]}
    assert field in details, error
    assert "reads as the ASCII" in details[field] and reading in details[field], error
    assert "could pass for another" in details[field], error


@pytest.mark.parametrize(("email", "reading"), READ_AS_ASCII)
def test_addresses_that_read_as_ascii_are_refused_at_registration(
    anon: httpx.Client, email: str, reading: str
) -> None:
    response = anon.post("/api/v1/users", json=user_payload(email=email))
    assert_email_refused(response, "body.email", reading)


def test_they_are_refused_as_a_new_email_by_every_route(
    client: httpx.Client, anon: httpx.Client
) -> None:
    account = register(anon)
    for email, reading in READ_AS_ASCII:
        by_admin = client.patch(f"/api/v1/users/{account.id}", json={"email": email})
        assert_email_refused(by_admin, "body.email", reading)
        mine = {"email": email, "current_password": PASSWORD}
        by_owner = anon.patch(ME, json=mine, headers=account.headers)
        assert_email_refused(by_owner, "body.email", reading)
        data = client.patch(f"/api/v1/data/users/{account.id}", json={"data": {"email": email}})
        assert_email_refused(data, "body.data.email", reading)
        operation = {"op": "patch", "table": "users", "id": account.id, "data": {"email": email}}
        in_transaction = client.post("/api/v1/transaction", json={"operations": [operation]})
        assert_email_refused(in_transaction, "body.operations.0.data.email", reading)
    assert anon.get(ME, headers=account.headers).json()["data"]["email"] == account.user["email"]


@pytest.mark.parametrize(
    "local",
    [
        "\u0438\u0432\u0430\u043d",  # Cyrillic: и looks like no ASCII letter
        "\u0441\u043e\u043a",  # Cyrillic: к neither
        "k\u0131\u015f",  # a dotless i beside ş, which reads as no ASCII
    ],
)
def test_addresses_with_a_letter_that_reads_as_no_ascii_register(
    anon: httpx.Client, local: str
) -> None:
    unique = int(token(), 16)  # digits go with any script; hex letters would mix in Latin
    email = f"{local}.{unique}@example.com"
    response = anon.post("/api/v1/users", json=user_payload(email=email))
    assert response.status_code == 201, response.text
    assert response.json()["data"]["email"] == email
    login(anon, email, PASSWORD)


@pytest.mark.parametrize("local", ["adm\u0131n", "\u0455\u0441\u043e\u0440\u0435", "\u0430dmin"])
def test_an_account_stored_with_one_before_still_signs_in(
    stack: Stack, anon: httpx.Client, local: str
) -> None:
    """Only addresses given from now on are checked: the store's unique index and logins are
    as they were, and the account's other fields still change."""
    account = register(anon)
    existing = f"{local}.{int(token(), 16)}@example.com"
    changes = {"email": existing}
    store_call(stack, "patch", {"table": "users", "id": account.id, "changes": changes})
    again = login(anon, existing, PASSWORD)
    assert again.user["email"] == existing
    renamed = anon.patch(ME, json={"full_name": "Still Here"}, headers=bearer(again.access_token))
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["data"]["email"] == existing
