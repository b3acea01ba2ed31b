"""A change of your own email or password is written only at the version ``current_password``
was checked at (in-process, against an engine, with a write slipped in between the check and
the write: what a concurrent change does on a real stack)."""

from __future__ import annotations

from typing import Any

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from api.auth import sessions
from api.errors import ApiError
from api.schemas.users import UserUpdate
from api.services import passwords, users
from storeserver.errors import VersionMismatch
from tests.support.engine import EngineStore, run

PASSWORD = "correct horse battery"
HASHER = PasswordHash((BcryptHasher(rounds=4),))


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "password_hasher", lambda: HASHER)
    monkeypatch.setattr(sessions, "_announced", 0.0)


@pytest.fixture
def store() -> EngineStore:
    engine_store = EngineStore()
    admin = {"email": "admin@example.com", "role": "admin", "password_hash": "h"}
    run(engine_store.engine, "insert", table="users", record=admin)  # the last-admin rule
    return engine_store


def add_user(store: EngineStore) -> str:
    record = {"email": "ada@example.com", "role": "user", "password_hash": HASHER.hash(PASSWORD)}
    return str(run(store.engine, "insert", table="users", record=record)["id"])


def stored(store: EngineStore, user_id: str) -> dict[str, object]:
    return dict(run(store.engine, "get", table="users", id=user_id, include_hidden=True))


def slip_in_a_change(store: EngineStore, user_id: str, changes: dict[str, Any]) -> None:
    """Before the next patch (once): another request's change lands first."""

    def other_request() -> None:
        store.before.pop("patch")
        run(store.engine, "patch", table="users", id=user_id, changes=changes)

    store.before["patch"] = store.before["batch"] = other_request


@pytest.mark.parametrize(
    "fields",
    [
        {"password": "the other new passphrase"},
        {"email": "ada.king@example.com"},
        {"email": "ada.king@example.com", "password": "the other new passphrase"},
    ],
)
async def test_a_change_made_after_the_check_refuses_the_write(
    store: EngineStore, fields: dict[str, Any]
) -> None:
    user_id = add_user(store)
    won = {"password_hash": HASHER.hash("the first new passphrase")}
    slip_in_a_change(store, user_id, won)
    with pytest.raises(ApiError) as info:
        await users.update_own_account(
            store, user_id, UserUpdate.model_validate(fields), None, PASSWORD
        )
    assert (info.value.status_code, info.value.code) == (409, "CONFLICT")
    assert "current_password" in info.value.message
    assert [args["expected_version"] for args in store.sent_ops("patch")] == [1]
    after = stored(store, user_id)
    assert after["version"] == 2 and after["password_hash"] == won["password_hash"]
    assert after["email"] == "ada@example.com"  # the refused write left nothing behind


async def test_unchanged_since_the_check_the_change_is_made_at_that_version(
    store: EngineStore,
) -> None:
    user_id = add_user(store)
    payload = UserUpdate(email="ada.king@example.com", password="a new passphrase")
    updated = await users.update_own_account(store, user_id, payload, None, PASSWORD)
    assert updated["email"] == "ada.king@example.com" and updated["version"] == 2
    assert [args["expected_version"] for args in store.sent_ops("patch")] == [1]
    assert HASHER.verify("a new passphrase", str(stored(store, user_id)["password_hash"]))


async def test_a_wrong_current_password_writes_nothing(store: EngineStore) -> None:
    user_id = add_user(store)
    with pytest.raises(ApiError) as info:
        await users.update_own_account(
            store, user_id, UserUpdate(email="x@example.com"), None, "not my password"
        )
    assert (info.value.status_code, info.value.code) == (403, "WRONG_PASSWORD")
    assert store.sent_ops("patch") == [] and stored(store, user_id)["version"] == 1


async def test_with_if_match_the_clients_version_decides(store: EngineStore) -> None:
    """The client named a version: one that is not the checked one is 412 before any write,
    and a write slipped in is the store's 412 (VersionMismatch), as on every conditional
    write, not the 409 of a client that sent no condition."""
    user_id = add_user(store)
    payload = UserUpdate(email="ada.king@example.com")
    with pytest.raises(ApiError) as info:
        await users.update_own_account(store, user_id, payload, frozenset({7}), PASSWORD)
    assert (info.value.status_code, info.value.code) == (412, "PRECONDITION_FAILED")
    assert store.sent_ops("patch") == []
    slip_in_a_change(store, user_id, {"full_name": "Someone"})
    with pytest.raises(VersionMismatch):
        await users.update_own_account(store, user_id, payload, frozenset({1}), PASSWORD)
    assert stored(store, user_id)["email"] == "ada@example.com"


async def test_an_admins_own_role_and_email_change_is_refused_too(store: EngineStore) -> None:
    """A role in the patch takes the role path (``_patch_role``), which must not retry on a
    new read either: the checked version is the only one."""
    user_id = add_user(store)
    slip_in_a_change(store, user_id, {"password_hash": HASHER.hash("the first new passphrase")})
    payload = UserUpdate(email="ada.king@example.com", role="admin")
    with pytest.raises(ApiError) as info:
        await users.update_own_account(store, user_id, payload, None, PASSWORD)
    assert info.value.status_code == 409
    assert len(store.sent_ops("patch")) == 1 and stored(store, user_id)["role"] == "user"
