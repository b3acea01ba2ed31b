"""In production, no path sets the development admin password (in-process, against an engine).

Login refuses ``make run``'s admin password in production (it is public), so an account given
it could never log in: registration, a password change, and the admin-only ``/data/users``
and transaction writes answer 422 on the password field instead, and store nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher
from pydantic import SecretStr

from api.auth import sessions
from api.auth.tokens import TokenService
from api.main import create_app
from api.services import passwords
from api.settings import DEV_ADMIN_PASSWORD, Settings
from tests.support.auth import bearer
from tests.support.engine import EngineStore, run
from tests.support.factories import PASSWORD, assert_error, user_payload
from tests.support.inprocess import in_process

SERVICE = TokenService("unit-test-signing-key-0123456789-ABCDEFGH", 600, 3600)
PRODUCTION = Settings(env="production", jwt_secret=SecretStr(secrets.token_urlsafe(48)))
HASHER = PasswordHash((BcryptHasher(rounds=4),))
USERS, DATA, TRANSACTIONS = "/api/v1/users", "/api/v1/data/users", "/api/v1/transaction"


@pytest.fixture(autouse=True)
def cheap_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "password_hasher", lambda: HASHER)
    monkeypatch.setattr(sessions, "_announced", 0.0)


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's settings (``get_settings``), as a production worker reads them."""
    monkeypatch.setattr(passwords, "get_settings", lambda: PRODUCTION)


@pytest.fixture
def store() -> EngineStore:
    return EngineStore()


@pytest.fixture
async def http(store: EngineStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings())
    app.state.store, app.state.tokens = store, SERVICE  # as the lifespan would
    async with in_process(app) as client:
        yield client


def add_user(store: EngineStore, role: str) -> dict[str, Any]:
    record = {
        "email": f"{role}-{secrets.token_hex(4)}@example.com",
        "full_name": "X",
        "role": role,
        "password_hash": HASHER.hash(PASSWORD),
    }
    inserted: dict[str, Any] = run(store.engine, "insert", table="users", record=record)
    return inserted


def headers(user: dict[str, Any]) -> dict[str, str]:
    pair = SERVICE.issue_pair(user["id"], user["role"], "s", issued_at=time.time() - 1)
    return bearer(pair.access_token)


def refused(response: httpx.Response, field: str) -> None:
    error = assert_error(response, 422, "VALIDATION_ERROR")
    (detail,) = error["details"]
    assert detail["field"] == field
    assert "development admin password" in detail["message"]
    assert DEV_ADMIN_PASSWORD not in response.text


def hashes(store: EngineStore) -> list[str]:
    found = run(store.engine, "find", table="users", include_hidden=True, limit=100)
    return sorted(str(user["password_hash"]) for user in found["items"])


@pytest.mark.usefixtures("production")
async def test_registration_and_password_changes_refuse_it(
    store: EngineStore, http: httpx.AsyncClient
) -> None:
    admin, user = add_user(store, "admin"), add_user(store, "user")
    before = hashes(store)
    refused(await http.post(USERS, json=user_payload(password=DEV_ADMIN_PASSWORD)), "body.password")
    mine = {"password": DEV_ADMIN_PASSWORD, "current_password": PASSWORD}
    own = await http.patch(f"{USERS}/{user['id']}", json=mine, headers=headers(user))
    refused(own, "body.password")
    by_admin = await http.patch(
        f"{USERS}/{user['id']}", json={"password": DEV_ADMIN_PASSWORD}, headers=headers(admin)
    )
    refused(by_admin, "body.password")
    assert hashes(store) == before  # nothing created, nothing changed
    assert (await http.get(f"{USERS}/me", headers=headers(user))).status_code == 200  # not ended


@pytest.mark.usefixtures("production")
async def test_admin_writes_to_users_refuse_it(store: EngineStore, http: httpx.AsyncClient) -> None:
    admin, user = add_user(store, "admin"), add_user(store, "user")
    before = hashes(store)
    auth = headers(admin)
    new = user_payload(password=DEV_ADMIN_PASSWORD)
    fields: list[list[str]] = []
    for response in (
        await http.post(DATA, json={"data": new}, headers=auth),
        await http.post(DATA, json={"data": [user_payload(), new]}, headers=auth),
        await http.put(f"{DATA}/{user['id']}", json={"data": new}, headers=auth),
        await http.patch(
            f"{DATA}/{user['id']}", json={"data": {"password": DEV_ADMIN_PASSWORD}}, headers=auth
        ),
        await http.post(
            TRANSACTIONS,
            json={"operations": [{"op": "insert", "table": "users", "data": new}]},
            headers=auth,
        ),
        await http.post(
            TRANSACTIONS,
            json={
                "operations": [
                    {
                        "op": "patch",
                        "table": "users",
                        "id": user["id"],
                        "data": {"password": DEV_ADMIN_PASSWORD},
                    }
                ]
            },
            headers=auth,
        ),
    ):
        error = assert_error(response, 422, "VALIDATION_ERROR")
        fields.append([detail["field"] for detail in error["details"]])
    assert fields == [
        ["body.data.password"],
        ["body.data.1.password"],
        ["body.data.password"],
        ["body.data.password"],
        ["body.operations.0.data.password"],
        ["body.operations.0.data.password"],
    ]
    assert hashes(store) == before


async def test_in_development_it_is_an_ordinary_password(http: httpx.AsyncClient) -> None:
    """``make run``'s admin has it: development accounts may too."""
    response = await http.post(USERS, json=user_payload(password=DEV_ADMIN_PASSWORD))
    assert response.status_code == 201, response.text
