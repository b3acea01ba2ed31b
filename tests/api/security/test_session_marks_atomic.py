"""A password or role change, or a deletion, and the end of the user's sessions are one store
command (in-process, against an engine whose reply to that write is lost).

Sent as two commands, a store that stalled between them (the worker answering 504) applied
the change and never got the mark: every old token went on working, a demoted admin's with
the admin role. Here the store applies the write and the worker hears nothing back (504
STORE_TIMEOUT): whatever was applied, the old tokens must be refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.auth import sessions
from api.auth.tokens import TokenPair, TokenService
from api.main import create_app
from api.settings import Settings
from storeserver.errors import BadRequest, StoreTimeout
from tests.support.auth import bearer
from tests.support.engine import EngineStore, run
from tests.support.events import named
from tests.support.factories import assert_error
from tests.support.inprocess import in_process

SECRET = "unit-test-signing-key-0123456789-ABCDEFGH"
WRITES = frozenset({"batch", "patch", "replace", "delete", "kv_set"})

pytestmark = pytest.mark.usefixtures("structured_logs")  # conftest.py: named events


class LossyStore(EngineStore):
    """Once ``lose_next_write`` is set, the next write is applied and its reply lost (the
    store stalled past STORE_TIMEOUT, then went on): the caller gets ``StoreTimeout``."""

    lose_next_write = False

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        result = await super().call(command, args, timeout=timeout)
        if self.lose_next_write and command in WRITES:
            self.lose_next_write = False
            raise StoreTimeout("the store did not answer in time", {})
        return result


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> LossyStore:
    monkeypatch.setattr(sessions, "_announced", 0.0)  # a new worker
    monkeypatch.setattr(sessions, "_said_marks_apart", False, raising=False)
    return LossyStore()


@pytest.fixture
def service() -> TokenService:
    return TokenService(SECRET, 60, 3600)


@pytest.fixture
async def http(store: LossyStore, service: TokenService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings())
    app.state.store, app.state.tokens = store, service  # as the lifespan would
    async with in_process(app) as client:
        yield client


def add_user(store: EngineStore, email: str, role: str) -> str:
    record = {"email": email, "role": role, "password_hash": "not a hash"}
    return str(run(store.engine, "insert", table="users", record=record)["id"])


def signed_in(service: TokenService, user_id: str, role: str) -> TokenPair:
    return service.issue_pair(user_id, role, f"s-{user_id}", issued_at=time.time() - 1)


def stored(store: EngineStore, user_id: str) -> dict[str, Any]:
    return dict(run(store.engine, "get", table="users", id=user_id, include_hidden=True))


async def assert_refused(http: httpx.AsyncClient, pair: TokenPair) -> None:
    me = await http.get("/api/v1/users/me", headers=bearer(pair.access_token))
    assert_error(me, 401, "INVALID_TOKEN")
    refreshed = await http.post("/api/v1/auth/refresh", json={"refresh_token": pair.refresh_token})
    assert_error(refreshed, 401, "INVALID_TOKEN")


async def test_a_password_change_whose_reply_is_lost_still_ends_the_sessions(
    store: LossyStore, service: TokenService, http: httpx.AsyncClient
) -> None:
    admin = signed_in(service, add_user(store, "admin@example.com", "admin"), "admin")
    user_id = add_user(store, "user@example.com", "user")
    user = signed_in(service, user_id, "user")
    store.lose_next_write = True
    changed = await http.patch(
        f"/api/v1/users/{user_id}",
        json={"password": "an entirely new passphrase"},
        headers=bearer(admin.access_token),
    )
    assert_error(changed, 504, "STORE_TIMEOUT")
    assert stored(store, user_id)["password_hash"] != "not a hash"  # applied all the same
    await assert_refused(http, user)


async def test_a_demoted_admin_whose_demotion_reply_is_lost_keeps_no_admin_token(
    store: LossyStore, service: TokenService, http: httpx.AsyncClient
) -> None:
    admin = signed_in(service, add_user(store, "admin@example.com", "admin"), "admin")
    other_id = add_user(store, "other@example.com", "admin")
    other = signed_in(service, other_id, "admin")
    store.lose_next_write = True
    demoted = await http.patch(
        f"/api/v1/users/{other_id}", json={"role": "user"}, headers=bearer(admin.access_token)
    )
    assert_error(demoted, 504, "STORE_TIMEOUT")
    assert stored(store, other_id)["role"] == "user"
    listed = await http.get("/api/v1/users", headers=bearer(other.access_token))
    assert_error(listed, 401, "INVALID_TOKEN")
    await assert_refused(http, other)


async def test_a_deletion_whose_reply_is_lost_ends_the_sessions(
    store: LossyStore, service: TokenService, http: httpx.AsyncClient
) -> None:
    admin = signed_in(service, add_user(store, "admin@example.com", "admin"), "admin")
    user_id = add_user(store, "user@example.com", "user")
    user = signed_in(service, user_id, "user")
    store.lose_next_write = True
    deleted = await http.delete(f"/api/v1/users/{user_id}", headers=bearer(admin.access_token))
    assert_error(deleted, 504, "STORE_TIMEOUT")
    mark = run(store.engine, "kv_get", key=sessions.USER_NOT_BEFORE + user_id)
    assert isinstance(mark, float)
    await assert_refused(http, user)


async def test_a_transaction_whose_reply_is_lost_ends_the_sessions_it_changed(
    store: LossyStore, service: TokenService, http: httpx.AsyncClient
) -> None:
    admin = signed_in(service, add_user(store, "admin@example.com", "admin"), "admin")
    other_id = add_user(store, "other@example.com", "admin")
    other = signed_in(service, other_id, "admin")
    store.lose_next_write = True
    operations = [{"op": "patch", "table": "users", "id": other_id, "data": {"role": "user"}}]
    answered = await http.post(
        "/api/v1/transaction",
        json={"operations": operations},
        headers=bearer(admin.access_token),
    )
    assert_error(answered, 504, "STORE_TIMEOUT")
    assert stored(store, other_id)["role"] == "user"
    await assert_refused(http, other)


async def test_a_transaction_cannot_end_the_sessions_of_a_user_named_by_reference(
    store: LossyStore, service: TokenService, http: httpx.AsyncClient
) -> None:
    """The mark's key is made before the store resolves a reference: such an op is refused
    (as a password set on a referenced user is) rather than its mark made apart."""
    admin = signed_in(service, add_user(store, "admin@example.com", "admin"), "admin")
    other_id = add_user(store, "other@example.com", "admin")
    operations = [
        {"op": "patch", "table": "users", "id": other_id, "data": {"full_name": "Other"}},
        {"op": "patch", "table": "users", "id": {"$ref": "0.id"}, "data": {"role": "user"}},
    ]
    answered = await http.post(
        "/api/v1/transaction", json={"operations": operations}, headers=bearer(admin.access_token)
    )
    error = assert_error(answered, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.operations.1.id", error
    assert stored(store, other_id)["role"] == "admin" and store.sent("batch") == []


@pytest.mark.parametrize(
    ("op", "data"),
    [
        ("patch", {"password": "a-new-password-1"}),
        (
            "replace",
            {"email": "other@example.com", "full_name": "O", "password": "a-new-password-1"},
        ),
    ],
)
async def test_a_password_set_or_replace_by_reference_is_refused_at_its_id(
    store: LossyStore, service: TokenService, http: httpx.AsyncClient, op: str, data: dict
) -> None:
    """QA: these end the user's sessions too, yet were refused at ``data.password`` (the
    sign-in check ran first), where the README says such an op is refused at its ``id``."""
    admin = signed_in(service, add_user(store, "admin@example.com", "admin"), "admin")
    other_id = add_user(store, "other@example.com", "user")
    operations = [
        {"op": "patch", "table": "users", "id": other_id, "data": {"full_name": "Other"}},
        {"op": op, "table": "users", "id": {"$ref": "0.id"}, "data": data},
    ]
    answered = await http.post(
        "/api/v1/transaction", json={"operations": operations}, headers=bearer(admin.access_token)
    )
    error = assert_error(answered, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.operations.1.id", error
    assert store.sent("batch") == []


async def test_the_mark_goes_in_the_batch_of_the_change(store: LossyStore) -> None:
    user_id = add_user(store, "user@example.com", "user")
    patch = {"op": "patch", "table": "users", "id": user_id, "changes": {"role": "admin"}}
    reply = await sessions.write_ending_sessions(store, [patch], [user_id])
    assert [result["role"] for result in reply["results"]] == ["admin"]  # the mark's left out
    ((sent),) = store.sent("batch")
    mark = sent["ops"][1]
    assert mark["op"] == "kv_set" and mark["key"] == sessions.USER_NOT_BEFORE + user_id
    assert mark["stamp"] is True and "value" not in mark  # the store's clock
    assert store.sent("kv_set") == []


async def test_a_store_without_keys_in_batches_still_gets_the_marks(
    store: LossyStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store of an earlier release refuses a kv_set op (mid-upgrade): the write, then the
    mark, as before, rather than every password change refused until it is upgraded."""
    answer = store.call

    async def older_store(command: str, args: Any = None, **kw: Any) -> Any:
        ops = (args or {}).get("ops", [])
        for index, op in enumerate(ops if command == "batch" else []):
            if op["op"] == "kv_set":
                message = "each op is {op: insert|replace|patch|delete, ...}"
                raise BadRequest(message, {"arg": "ops", "index": index, "op": "kv_set"})
        return await answer(command, args, **kw)

    monkeypatch.setattr(store, "call", older_store)
    user_id = add_user(store, "user@example.com", "user")
    patch = {"op": "patch", "table": "users", "id": user_id, "changes": {"role": "admin"}}
    reply = await sessions.write_ending_sessions(store, [patch], [user_id])
    assert reply["results"][0]["role"] == "admin"
    assert isinstance(run(store.engine, "kv_get", key=sessions.USER_NOT_BEFORE + user_id), float)
    (line,) = named(caplog, "revocation_mark_not_atomic")
    assert line["level"] == "warning"
