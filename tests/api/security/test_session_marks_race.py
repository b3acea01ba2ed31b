"""A refresh racing a password change (in-process, against an engine), made deterministic.

The refresh dates its new tokens before it reads the user's revocation mark. If the mark is
dated before its write reaches the store, a refresh can start after that date yet read the
store before the write: it sees no mark and its tokens, dated after the mark, are never
refused. The store dating the mark as it writes it (``kv_set stamp``) closes that window.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from api.auth import sessions
from api.auth.tokens import TokenService
from api.main import create_app
from api.settings import Settings
from storeserver.errors import BadRequest
from tests.support.auth import bearer
from tests.support.engine import EngineStore, run
from tests.support.events import named
from tests.support.factories import assert_error
from tests.support.inprocess import in_process

SECRET = "unit-test-signing-key-0123456789-ABCDEFGH"
GUARD = 10  # seconds: only so that a broken sequence fails instead of hanging


pytestmark = pytest.mark.usefixtures("structured_logs")  # conftest.py: named events


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> EngineStore:
    monkeypatch.setattr(sessions, "_announced", 0.0)  # a new worker
    return EngineStore()


def add_user(store: EngineStore, email: str, role: str) -> str:
    record = {"email": email, "role": role, "password_hash": "not a hash"}
    return str(run(store.engine, "insert", table="users", record=record)["id"])


async def test_a_refresh_that_read_before_the_password_change_landed_does_not_survive_it(
    store: EngineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = TokenService(SECRET, 60, 3600)
    admin_id = add_user(store, "admin@example.com", "admin")
    user_id = add_user(store, "user@example.com", "user")
    admin = service.issue_pair(admin_id, "admin", "s-admin", issued_at=time.time() - 1)
    user = service.issue_pair(user_id, "user", "s-user", issued_at=time.time() - 1)
    mark = sessions.USER_NOT_BEFORE + user_id
    mark_on_its_way, refresh_has_read = asyncio.Event(), asyncio.Event()
    answer = store.call

    async def slow_mark(command: str, args: Any = None, **kw: Any) -> Any:
        """The password change's mark is held on its way to the store until the refresh
        has read the user's marks (a busy store, a worker descheduled: QA saw 0.5 s)."""
        args = args or {}
        # The mark goes alone, or in one batch with the change (api.auth.sessions).
        batched = command == "batch" and any(op.get("key") == mark for op in args["ops"])
        if (command == "kv_set" and args.get("key") == mark) or batched:
            mark_on_its_way.set()
            await asyncio.wait_for(refresh_has_read.wait(), GUARD)
        result = await answer(command, args, **kw)
        if command == "kv_get_many" and mark in args["keys"] and mark_on_its_way.is_set():
            refresh_has_read.set()
        return result

    monkeypatch.setattr(store, "call", slow_mark)
    app = create_app(Settings())
    app.state.store, app.state.tokens = store, service  # as the lifespan would
    async with in_process(app) as http:
        change = asyncio.create_task(
            http.patch(
                f"/api/v1/users/{user_id}",
                json={"password": "an entirely new passphrase"},
                headers=bearer(admin.access_token),
            )
        )
        await asyncio.wait_for(mark_on_its_way.wait(), GUARD)
        # Begins after the change was decided; reads the store before the mark arrives.
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
        )
        assert refreshed.status_code == 200, refreshed.text  # no mark yet: it had not landed
        changed = await asyncio.wait_for(change, GUARD)
        assert changed.status_code == 200, changed.text
        assert refresh_has_read.is_set()
        # The pair that refresh handed out is refused like every token from before the change.
        pair = refreshed.json()
        again = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert_error(again, 401, "INVALID_TOKEN")
        me = await http.get("/api/v1/users/me", headers=bearer(pair["access_token"]))
        assert_error(me, 401, "INVALID_TOKEN")
        # The admin's own session goes on.
        assert (await http.get("/api/v1/users/me", headers=bearer(admin.access_token))).is_success


async def test_marks_are_dated_by_the_store_as_it_writes_them(store: EngineStore) -> None:
    await sessions.end_user_sessions(store, "u1")
    await sessions.revoke_session(store, "s1")
    sent = store.sent("kv_set")
    assert [args["key"] for args in sent] == [
        sessions.USER_NOT_BEFORE + "u1",
        sessions.SESSION_REVOKED + "s1",
    ]
    assert all(args.get("stamp") is True and "value" not in args for args in sent)
    marks = run(store.engine, "kv_get_many", keys=[args["key"] for args in sent])
    assert all(type(value) is float for value in marks)


async def test_a_store_without_kv_set_stamp_still_gets_the_mark(
    store: EngineStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store of an earlier release (mid-upgrade) refuses ``stamp``: the mark is still set,
    dated by the worker as before, rather than the password change leaving sessions open."""
    answer = store.call

    async def older_store(command: str, args: Any = None, **kw: Any) -> Any:
        if command == "kv_set" and "stamp" in (args or {}):
            raise BadRequest("unknown argument 'stamp'", {"arg": "stamp"})
        return await answer(command, args, **kw)

    monkeypatch.setattr(store, "call", older_store)
    before = time.time()
    await sessions.end_user_sessions(store, "u1")
    mark = run(store.engine, "kv_get", key=sessions.USER_NOT_BEFORE + "u1")
    assert isinstance(mark, float) and mark >= before
    (line,) = named(caplog, "revocation_mark_worker_clock")
    assert line["level"] == "warning" and "kv_set stamp" in line["message"]


async def test_other_store_errors_of_a_mark_are_not_hidden(
    store: EngineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = store.call
    tries: list[dict[str, Any]] = []

    async def refusing(command: str, args: Any = None, **kw: Any) -> Any:
        if command == "kv_set":
            tries.append(args)
            raise BadRequest("ttl must be a positive number", {"arg": "ttl"})
        return await answer(command, args, **kw)

    monkeypatch.setattr(store, "call", refusing)
    with pytest.raises(BadRequest):
        await sessions.end_user_sessions(store, "u1")
    assert len(tries) == 1  # not retried with the worker's clock: that is for "stamp" only
