"""The guard across a development signing-key switch (in-process, against an engine).

The switch happens while the guard's rate-limit hit is on its way: the store connection comes
back during it and ``adopt_store_secret`` replaces ``state.tokens``. The token is checked
again with the key the worker signs with now, both ways: one valid only under the old key is
refused, and one valid only under the new key (issued by a worker that switched first) is
accepted, counted against its user and checked against its revocation marks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.auth import sessions
from api.auth.tokens import TokenService
from api.main import create_app
from api.settings import Settings
from tests.support.auth import bearer
from tests.support.engine import EngineStore, run
from tests.support.factories import assert_error
from tests.support.inprocess import in_process

OLD = TokenService("the-key-before-the-store-came-back-0123456789", 600, 3600)
NEW = TokenService("the-key-the-store-holds-now-0123456789-ABCDEF", 600, 3600)
ME = "/api/v1/users/me"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> EngineStore:
    monkeypatch.setattr(sessions, "_announced", 0.0)
    return EngineStore()


@pytest.fixture
def app(store: EngineStore) -> FastAPI:
    app = create_app(Settings())
    app.state.store, app.state.tokens = store, OLD  # as the lifespan would, before the switch

    def reconnect_switches_keys() -> None:
        if len(store.sent("rate_hit")) == 1:  # the request's first hit reconnects
            app.state.tokens = NEW

    store.before["rate_hit"] = reconnect_switches_keys
    return app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(app) as client:
        yield client


def add_user(store: EngineStore) -> str:
    record = {"email": "gina@example.com", "full_name": "Gina", "role": "user"}
    return str(run(store.engine, "insert", table="users", record=record)["id"])


def token(service: TokenService, user_id: str) -> str:
    return service.issue_pair(user_id, "user", "s1", issued_at=time.time() - 1).access_token


def hits(store: EngineStore) -> list[dict[str, Any]]:
    return store.sent("rate_hit")


async def test_a_token_of_the_key_switched_to_during_the_request_is_accepted(
    store: EngineStore, http: httpx.AsyncClient
) -> None:
    user_id = add_user(store)
    response = await http.get(ME, headers=bearer(token(NEW, user_id)))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["id"] == user_id
    first, second = hits(store)
    assert "peek" not in first and "/ip/" in first["key"]  # it did not verify: the address
    # Then as any valid token: its user's hit with its revocation marks, the address's back.
    assert f"/user/{user_id}/" in second["key"] and second["refund"] == first["key"]
    assert second["peek"] == [sessions.SESSION_REVOKED + "s1", sessions.USER_NOT_BEFORE + user_id]


async def test_a_revoked_token_of_the_new_key_is_still_refused(
    store: EngineStore, http: httpx.AsyncClient
) -> None:
    user_id = add_user(store)
    sent = token(NEW, user_id)
    await sessions.end_user_sessions(store, user_id)  # a password change, after its issue
    response = await http.get(ME, headers=bearer(sent))
    assert_error(response, 401, "INVALID_TOKEN")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    first, second = hits(store)
    assert "/ip/" in first["key"] and f"/user/{user_id}/" in second["key"]
    # The store, seeing the marks end it, counted the second hit on the address (``fallback``)
    # and took the first one back: counted anonymous once, its user not at all.
    assert second["refund"] == first["key"] == second["fallback"]


async def test_a_revoked_token_never_holds_a_hit_of_its_user(
    store: EngineStore, http: httpx.AsyncClient
) -> None:
    """QA: the guard counted a revoked token's request against its user, read the marks,
    then took the hit back in a second command; between the two, each replay of a leaked
    token its user had logged out held one of the user's hits, and a flood of them put the
    user's live session at 429. The store now decides in the hit itself."""
    store.before.pop("rate_hit")  # no key switch here
    app_tokens = OLD
    user_id = add_user(store)
    revoked = app_tokens.issue_pair(user_id, "user", "s1", issued_at=time.time() - 1)
    live = app_tokens.issue_pair(user_id, "user", "s2", issued_at=time.time() - 1)
    await sessions.revoke_session(store, "s1")  # logout of the leaked session
    user_key = ""
    held: list[int] = []

    def users_count_now() -> None:  # at each hit, what the user's counter holds
        windows = store.engine._rates._windows
        held.append(windows[user_key][1] if user_key in windows else 0)

    store.before["rate_hit"] = users_count_now
    live_answer = await http.get(ME, headers=bearer(live.access_token))
    assert live_answer.status_code == 200
    user_key = hits(store)[-1]["key"]
    left = int(live_answer.headers["x-rate-limit-remaining"])
    held.clear()
    for _ in range(3):
        assert_error(await http.get(ME, headers=bearer(revoked.access_token)), 401, "INVALID_TOKEN")
    assert held == [1, 1, 1]  # one hit per request, the user's count never raised
    assert all(args["fallback"] and "/ip/" in args["fallback"] for args in hits(store)[-3:])
    again = await http.get(ME, headers=bearer(live.access_token))
    assert int(again.headers["x-rate-limit-remaining"]) == left - 1


async def test_a_token_of_the_key_switched_from_during_the_request_is_refused(
    store: EngineStore, http: httpx.AsyncClient
) -> None:
    user_id = add_user(store)
    response = await http.get(ME, headers=bearer(token(OLD, user_id)))
    assert_error(response, 401, "INVALID_TOKEN")
    first, second = hits(store)
    assert f"/user/{user_id}/" in first["key"] and "peek" in first
    assert "/ip/" in second["key"] and second["refund"] == first["key"]


async def test_a_token_no_key_signed_is_refused_with_one_hit_on_the_address(
    store: EngineStore, http: httpx.AsyncClient
) -> None:
    forged = TokenService("some-other-key-nobody-holds-0123456789-XYZ", 600, 3600)
    response = await http.get(ME, headers=bearer(token(forged, add_user(store))))
    assert_error(response, 401, "INVALID_TOKEN")
    (only,) = hits(store)
    assert "/ip/" in only["key"] and "refund" not in only
