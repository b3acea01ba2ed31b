"""Which user updates end the user's sessions: a new password, or a role that actually
changes (in-process, against an engine, with writes slipped in between the service's calls)."""

from __future__ import annotations

from typing import Any

import pytest

from api.auth import sessions
from api.schemas.users import UserUpdate
from api.services import users
from storeserver.errors import VersionMismatch
from tests.support.engine import EngineStore, run


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> EngineStore:
    monkeypatch.setattr(sessions, "_announced", 0.0)
    engine_store = EngineStore()
    record = {"email": "admin@example.com", "role": "admin", "password_hash": "h"}
    run(engine_store.engine, "insert", table="users", record=record)  # the last-admin rule
    return engine_store


def add_user(store: EngineStore, **fields: Any) -> str:
    record = {"email": "user@example.com", "password_hash": "h", **fields}
    return str(run(store.engine, "insert", table="users", record=record)["id"])


def sessions_ended(store: EngineStore, user_id: str) -> bool:
    return run(store.engine, "kv_get", key=sessions.USER_NOT_BEFORE + user_id) is not None


@pytest.mark.parametrize(
    ("stored", "fields", "ends"),
    [
        ({"role": "user"}, {"role": "user"}, False),
        ({}, {"role": "user"}, False),  # no role stored reads as "user"
        ({"role": "user"}, {"role": "user", "full_name": "New Name"}, False),
        ({"role": "admin"}, {"role": "admin"}, False),
        ({"role": "user"}, {"role": "admin"}, True),
        ({"role": "admin"}, {"role": "user"}, True),
        ({}, {"role": "admin"}, True),
        ({"role": "user"}, {"full_name": "New Name"}, False),
    ],
)
async def test_sessions_end_only_when_the_role_changes(
    store: EngineStore, stored: dict[str, Any], fields: dict[str, Any], ends: bool
) -> None:
    user_id = add_user(store, **stored)
    updated = await users.update_user(store, user_id, UserUpdate(**fields), None)
    assert updated["role"] == fields.get("role", stored.get("role", "user"))
    assert sessions_ended(store, user_id) is ends


async def test_a_password_change_ends_sessions_even_with_the_same_role(store: EngineStore) -> None:
    user_id = add_user(store, role="user")
    payload = UserUpdate(role="user", password="an entirely new passphrase")
    await users.update_user(store, user_id, payload, None)
    assert sessions_ended(store, user_id)


async def test_a_role_change_slipped_in_before_the_patch_is_seen(store: EngineStore) -> None:
    """Read as "user", then another admin promotes the user before this patch (back to
    "user") lands: the patch, made at the version read, is refused and tried again on a new
    read, which sees "admin": the role does change, the sessions (tokens saying admin) end."""
    user_id = add_user(store, role="user")
    slipped: list[int] = []

    def promote_once() -> None:
        if not slipped:
            slipped.append(1)
            run(store.engine, "patch", table="users", id=user_id, changes={"role": "admin"})

    store.before["patch"] = store.before["batch"] = promote_once
    updated = await users.update_user(store, user_id, UserUpdate(role="user"), None)
    assert updated["role"] == "user" and updated["version"] == 3
    assert [args["expected_version"] for args in store.sent_ops("patch")] == [1, 2]
    assert sessions_ended(store, user_id)


async def test_writes_slipped_in_every_time_end_the_sessions_anyway(store: EngineStore) -> None:
    user_id = add_user(store, role="user")

    def touch() -> None:
        record = run(store.engine, "get", table="users", id=user_id)
        changes = {"age": int(record.get("age") or 0) + 1}
        run(store.engine, "patch", table="users", id=user_id, changes=changes)

    store.before["patch"] = store.before["batch"] = touch
    updated = await users.update_user(store, user_id, UserUpdate(role="user"), None)
    assert updated["role"] == "user"
    sent = store.sent_ops("patch")
    assert len(sent) == users.ROLE_PATCH_ATTEMPTS + 1 and "expected_version" not in sent[-1]
    assert sessions_ended(store, user_id)  # unknown whether it changed: the safe side


async def test_if_match_decides_a_role_patch(store: EngineStore) -> None:
    user_id = add_user(store, role="user")
    with pytest.raises(VersionMismatch):
        await users.update_user(store, user_id, UserUpdate(role="admin"), frozenset({7}))
    assert run(store.engine, "get", table="users", id=user_id)["role"] == "user"
    assert len(store.sent_ops("patch")) == 1  # the client's version: not tried again
    assert not sessions_ended(store, user_id)
    await users.update_user(store, user_id, UserUpdate(role="admin"), frozenset({1}))
    assert sessions_ended(store, user_id)
