"""A password hashed at another bcrypt cost than BCRYPT_ROUNDS is rehashed at its next login,
so a wrong password for it costs what an unknown email costs (the dummy hash's cost).

In-process against an engine (versions, hidden fields) and on a real stack restarted with
another BCRYPT_ROUNDS over the same data directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from api.auth import credentials
from api.services import passwords
from storeserver.errors import MemoryLimit
from tests.support.auth import bearer, login
from tests.support.engine import EngineStore, run
from tests.support.events import named
from tests.support.factories import user_payload
from tests.support.stack import Stack, running_stack
from tests.support.storedirect import store_call

EMAIL = "ada@example.com"
PASSWORD = "ada's passphrase"


class LoginStore(EngineStore):
    """With the one account's stored hash at hand."""

    def stored_hash(self) -> str:
        found = run(
            self.engine,
            "find",
            table="users",
            where=[["email", "eq", EMAIL]],
            include_hidden=True,
        )
        return str(found["items"][0]["password_hash"])


def cost(password_hash: str) -> int:
    return int(password_hash.split("$")[2])


@pytest.fixture(autouse=True)
def configured_cost_5(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = PasswordHash((BcryptHasher(rounds=5),))
    monkeypatch.setattr(passwords, "password_hasher", lambda: hasher)


@pytest.fixture
def store() -> LoginStore:
    store = LoginStore()
    record = {
        "email": EMAIL,
        "full_name": "Ada",
        "password_hash": BcryptHasher(rounds=4).hash(PASSWORD),
    }
    run(store.engine, "insert", table="users", record=record)
    return store


async def test_a_login_rehashes_a_hash_of_another_cost_conditionally(store: LoginStore) -> None:
    assert await credentials.check_credentials(store, EMAIL, "wrong password") is None
    assert store.sent("patch") == []  # only a successful login knows the password
    user = await credentials.check_credentials(store, EMAIL, PASSWORD)
    assert user is not None
    (patch,) = store.sent("patch")
    assert patch["expected_version"] == user["version"]  # a change since the read wins
    assert set(patch["changes"]) == {"password_hash"}
    assert cost(store.stored_hash()) == 5
    assert passwords.password_hasher().verify(PASSWORD, store.stored_hash())
    # at the configured cost now: nothing more to do
    assert await credentials.check_credentials(store, EMAIL, PASSWORD) is not None
    assert len(store.sent("patch")) == 1


async def test_a_password_changed_during_the_login_is_kept(store: LoginStore) -> None:
    changed = BcryptHasher(rounds=5).hash("the new password")

    def change_password() -> None:
        del store.before["patch"]
        user_id = run(store.engine, "find", table="users")["items"][0]["id"]
        changes = {"password_hash": changed}
        run(store.engine, "patch", table="users", id=user_id, changes=changes)

    store.before["patch"] = change_password
    assert await credentials.check_credentials(store, EMAIL, PASSWORD) is not None
    assert store.stored_hash() == changed  # VERSION_MISMATCH: the rehash gave way


@pytest.mark.usefixtures("structured_logs")
async def test_a_store_at_its_memory_limit_still_lets_the_user_in(
    store: LoginStore, caplog: pytest.LogCaptureFixture
) -> None:
    def full() -> None:
        raise MemoryLimit("store memory limit reached")

    store.before["patch"] = full
    with caplog.at_level(logging.WARNING, "api.auth"):
        assert await credentials.check_credentials(store, EMAIL, PASSWORD) is not None
    assert cost(store.stored_hash()) == 4
    (line,) = named(caplog, "password_rehash_skipped")
    assert line["level"] == "warning" and line["reason"] == "MEMORY_LIMIT"


# --- on a real stack -------------------------------------------------------------------------


def _stored_cost(stack: Stack, email: str) -> int:
    args = {"table": "users", "where": [["email", "eq", email]], "include_hidden": True}
    return cost(store_call(stack, "find", args)["items"][0]["password_hash"])


@pytest.mark.integration
def test_raising_bcrypt_rounds_rehashes_at_the_next_login_and_keeps_sessions(
    tmp_path: Path,
) -> None:
    base = {"STORE_DATA_DIR": str(tmp_path), "STORE_FSYNC": "always"}
    payload = user_payload()
    email, password = payload["email"], payload["password"]
    with running_stack(workers=1, extra_env={**base, "BCRYPT_ROUNDS": "4"}) as first:
        with httpx.Client(base_url=first.base_url) as http:
            assert http.post("/api/v1/users", json=payload).status_code == 201
            earlier = login(http, email, password)
        assert _stored_cost(first, email) == 4
    second_env = {**base, "BCRYPT_ROUNDS": "6"}
    with (
        running_stack(workers=2, extra_env=second_env) as second,
        httpx.Client(base_url=second.base_url) as http,
    ):
        wrong = {"username": email, "password": "not the password"}
        assert http.post("/api/v1/auth/token", data=wrong).status_code == 401
        assert _stored_cost(second, email) == 4
        login(http, email, password)
        assert _stored_cost(second, email) == 6
        # the same password: the session opened before the rehash still works
        me = http.get("/api/v1/users/me", headers=bearer(earlier.access_token))
        assert me.status_code == 200, me.text
        login(http, email, password)  # the new hash checks
        assert _stored_cost(second, email) == 6
