"""``ensure_admin`` against an in-process engine: it creates the ADMIN_EMAIL account, and
promotes an existing one only when no admin exists, so a demotion is never undone."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from api.auth.admin import ensure_admin
from api.services import passwords
from tests.support.engine import EngineStore, run

EMAIL = "boss@example.com"
PASSWORD = "first boss passphrase"


class AdminStore(EngineStore):
    """With the users this module reads and writes."""

    def user(self, email: str) -> dict[str, Any]:
        found = run(self.engine, "find", table="users", where=[["email", "eq", email]])
        assert found["total"] == 1
        record: dict[str, Any] = found["items"][0]
        return record

    def insert_user(self, email: str, role: str, password: str) -> dict[str, Any]:
        record = {"email": email, "full_name": "X", "role": role}
        record["password_hash"] = passwords.password_hasher().hash(password)
        inserted: dict[str, Any] = run(self.engine, "insert", table="users", record=record)
        return inserted


@pytest.fixture(autouse=True)
def cheap_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = PasswordHash((BcryptHasher(rounds=4),))
    monkeypatch.setattr(passwords, "password_hasher", lambda: hasher)


@pytest.fixture
def store() -> AdminStore:
    return AdminStore()


async def test_a_missing_account_is_created_as_admin(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
        await ensure_admin(store, EMAIL, PASSWORD)
    assert store.user(EMAIL)["role"] == "admin"
    assert caplog.text.count("admin_created") == 1
    assert "admin_password_not_applied" not in caplog.text


async def test_a_demoted_account_stays_demoted_while_another_admin_exists(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.insert_user("x@example.com", "admin", "x password here")
    store.insert_user(EMAIL, "user", PASSWORD)  # demoted by x, ADMIN_PASSWORD still its own
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
    assert store.user(EMAIL)["role"] == "user"
    assert not store.sent("patch") and not store.sent("kv_set")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "admin_email_not_admin" in warnings[0].getMessage()
    assert "left as is" in warnings[0].getMessage()


async def test_an_account_is_promoted_when_no_admin_exists(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.insert_user(EMAIL, "user", PASSWORD)
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
        await ensure_admin(store, EMAIL, PASSWORD)  # the next worker: nothing left to do
    assert store.user(EMAIL)["role"] == "admin"
    assert caplog.text.count("admin_promoted") == 1


async def test_no_admin_and_another_password_is_not_promoted(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.insert_user(EMAIL, "user", "whoever registered it first")
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
    assert store.user(EMAIL)["role"] == "user"
    assert "not promoting" in caplog.text


async def test_an_admin_whose_password_is_not_admin_password_is_left_with_a_warning(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    inserted = store.insert_user(EMAIL, "admin", "changed through the API")
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
    assert store.user(EMAIL)["version"] == inserted["version"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "admin_password_not_applied" in warnings[0]
    assert "change the password through the API" in warnings[0]


async def test_an_admin_with_admin_password_logs_nothing(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.insert_user(EMAIL, "admin", PASSWORD)
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
    assert not caplog.records


async def test_a_deleted_account_stays_deleted_while_another_admin_exists(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    """An admin deleted the ADMIN_EMAIL account: the next worker start must not recreate it."""
    store.insert_user("x@example.com", "admin", "x password here")
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
    found = run(store.engine, "find", table="users", where=[["email", "eq", EMAIL]])
    assert found["total"] == 0 and not store.sent("insert")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "admin_email_missing" in warnings[0]
