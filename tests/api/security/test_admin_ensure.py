"""``ensure_admin`` against an in-process engine: it creates the ADMIN_EMAIL account, and
promotes an existing one only when no admin exists, so a demotion is never undone."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from api.auth.admin import ensure_admin
from api.logs import json_formatter
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


pytestmark = pytest.mark.usefixtures("structured_logs")  # conftest.py: named events


def events(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[dict[str, Any]]:
    """The api.auth lines at ``level`` or above as the JSON formatter writes them, cut down to
    ``event``, ``email`` and ``message``."""
    rendered = [
        orjson.loads(json_formatter().format(record))
        for record in caplog.records
        if record.name == "api.auth" and record.levelno >= level
    ]
    return [
        {k: v for k, v in line.items() if k in ("event", "email", "message")} for line in rendered
    ]


async def test_a_missing_account_is_created_as_admin(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
        await ensure_admin(store, EMAIL, PASSWORD)
    assert store.user(EMAIL)["role"] == "admin"
    # The bare event name, as operators' alerts match it; the account as a field.
    assert events(caplog) == [
        {"event": "admin_created", "email": EMAIL, "message": "created the administrator account"}
    ]


async def test_a_demoted_account_stays_demoted_while_another_admin_exists(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.insert_user("x@example.com", "admin", "x password here")
    store.insert_user(EMAIL, "user", PASSWORD)  # demoted by x, ADMIN_PASSWORD still its own
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
    assert store.user(EMAIL)["role"] == "user"
    assert not store.sent("patch") and not store.sent("kv_set")
    [warning] = events(caplog, logging.WARNING)
    assert warning["event"] == "admin_email_not_admin" and warning["email"] == EMAIL
    assert "left as is" in warning["message"]


async def test_an_account_is_promoted_when_no_admin_exists(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.insert_user(EMAIL, "user", PASSWORD)
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
        await ensure_admin(store, EMAIL, PASSWORD)  # the next worker: nothing left to do
    assert store.user(EMAIL)["role"] == "admin"
    assert [line["event"] for line in events(caplog)] == ["admin_promoted"]
    assert events(caplog)[0]["email"] == EMAIL


async def test_no_admin_and_another_password_is_not_promoted(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.insert_user(EMAIL, "user", "whoever registered it first")
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
    assert store.user(EMAIL)["role"] == "user"
    [line] = events(caplog, logging.ERROR)
    assert line["event"] == "admin_not_promoted" and line["email"] == EMAIL
    assert "not promoting" in line["message"]


async def test_an_admin_whose_password_is_not_admin_password_is_left_with_a_warning(
    store: AdminStore, caplog: pytest.LogCaptureFixture
) -> None:
    inserted = store.insert_user(EMAIL, "admin", "changed through the API")
    with caplog.at_level(logging.INFO, "api.auth"):
        await ensure_admin(store, EMAIL, PASSWORD)
    assert store.user(EMAIL)["version"] == inserted["version"]
    [warning] = events(caplog, logging.WARNING)
    assert warning["event"] == "admin_password_not_applied" and warning["email"] == EMAIL
    assert "change the password through the API" in warning["message"]


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
    [warning] = events(caplog, logging.WARNING)
    assert warning["event"] == "admin_email_missing" and warning["email"] == EMAIL
