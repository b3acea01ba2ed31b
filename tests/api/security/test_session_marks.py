"""How long revocation marks are kept (in-process, against an engine).

Tokens are cut to the lifetime configured now, so lowering REFRESH_TOKEN_TTL shortens them;
but setting it back lets a token live to its own exp again. A mark set while the lifetime was
low must therefore outlive every token issued before, which the token horizon records.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest

from api.auth import sessions
from api.auth.tokens import Claims, InvalidToken, TokenService
from storeserver.errors import BadRequest, StoreUnavailable
from tests.support.engine import EngineStore, run
from tests.support.events import named
from tests.support.inprocess import in_process

HOUR, FIVE_MINUTES = 3600, 300


pytestmark = pytest.mark.usefixtures("structured_logs")  # conftest.py: named events


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> EngineStore:
    monkeypatch.setattr(sessions, "_announced", 0.0)  # a new worker
    return EngineStore()


def configure(monkeypatch: pytest.MonkeyPatch, refresh_ttl: int) -> None:
    settings = SimpleNamespace(refresh_token_ttl=refresh_ttl)
    monkeypatch.setattr(sessions, "get_settings", lambda: settings)


def kept_for(store: EngineStore, key: str) -> float:
    """Seconds from now until ``key`` expires in the store (from the engine's journal)."""
    changes: list[Any] = store.engine.drain_changes()
    (expires_at,) = [c[3] for c in changes if c[0] == "kv_set" and c[1] == key]
    return float(expires_at) - time.time()


async def test_marks_set_under_a_lowered_lifetime_outlive_the_tokens_issued_before(
    store: EngineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, HOUR)
    await sessions.announce_expiry(store, int(time.time()) + HOUR)  # a login at one hour
    configure(monkeypatch, FIVE_MINUTES)  # restarted with a lower lifetime
    store.engine.drain_changes()
    await sessions.revoke_session(store, "s1")
    assert kept_for(store, sessions.SESSION_REVOKED + "s1") > HOUR - 5
    await sessions.end_user_sessions(store, "u1")
    assert kept_for(store, sessions.USER_NOT_BEFORE + "u1") > HOUR - 5


async def test_without_older_tokens_marks_live_the_configured_lifetime(
    store: EngineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, FIVE_MINUTES)
    await sessions.announce_expiry(store, int(time.time()) + FIVE_MINUTES)
    store.engine.drain_changes()
    await sessions.revoke_session(store, "s1")
    assert FIVE_MINUTES - 5 < kept_for(store, sessions.SESSION_REVOKED + "s1") < 2 * FIVE_MINUTES


async def test_the_horizon_only_rises_and_is_written_about_once_a_minute(
    store: EngineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time())
    await sessions.announce_expiry(store, now + HOUR)
    await sessions.announce_expiry(store, now + HOUR + 30)  # within the step: no write
    assert len(store.sent("kv_set")) == 1
    monkeypatch.setattr(sessions, "_announced", 0.0)  # another worker, at a lower lifetime
    await sessions.announce_expiry(store, now + FIVE_MINUTES)
    assert run(store.engine, "kv_get", key=sessions.TOKEN_HORIZON) == now + HOUR + 60


async def test_a_used_refresh_token_is_remembered_until_its_own_exp(store: EngineStore) -> None:
    now = int(time.time())
    claims = Claims("u", "user", "s", "jti1", "refresh", now - 10, now + 290, now + HOUR)
    await sessions.consume_refresh_token(store, claims)
    assert kept_for(store, sessions.REFRESH_USED + "jti1") > HOUR - 5


async def test_a_session_key_outlives_every_refresh_token_it_replaced(store: EngineStore) -> None:
    """QA: a token signed for an hour, spent under a 5-minute lifetime, rotated twice: the
    session's key was kept only until the latest token's exp, and once it was gone the spent
    token (alive again with the hour setting back) rotated as an earlier release's session's."""
    now = int(time.time())
    first = Claims("u1", "user", "s1", "j1", "refresh", now - 10, now + 290, now + HOUR)
    second = Claims("u1", "user", "s1", "j2", "refresh", now - 5, now + 295, now + 295)
    third = Claims("u1", "user", "s1", "j3", "refresh", now, now + 300, now + 300)
    await sessions.open_session(store, "s1", first)
    assert await sessions.rotate_refresh_token(store, first, second) is None
    store.engine.drain_changes()
    assert await sessions.rotate_refresh_token(store, second, third) is None
    assert kept_for(store, sessions.SESSION_REFRESH + "s1") > HOUR - 5
    with pytest.raises(InvalidToken):  # spent: reuse, for as long as it could be presented
        await sessions.rotate_refresh_token(store, first, third)


async def test_without_a_horizon_marks_cover_an_earlier_release_tokens(
    store: EngineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No horizon yet (just upgraded, or every token expired): live tokens can only be an
    earlier release's, signed under its default 7-day lifetime, whatever is configured now."""
    configure(monkeypatch, FIVE_MINUTES)
    await sessions.revoke_session(store, "s1")
    assert kept_for(store, sessions.SESSION_REVOKED + "s1") > 7 * 86_400 - 5


async def test_a_store_without_kv_set_gt_does_not_stop_logins(
    store: EngineStore, caplog: pytest.LogCaptureFixture
) -> None:
    def older_store() -> None:
        raise BadRequest("unknown argument 'gt'", {"arg": "gt"})

    store.before["kv_set"] = older_store
    with caplog.at_level(logging.WARNING, "api.auth"):
        await sessions.announce_expiry(store, int(time.time()) + HOUR)
        await sessions.announce_expiry(store, int(time.time()) + HOUR + 1)
    (line,) = named(caplog, "token_horizon_not_kept")
    assert line["level"] == "warning" and "kv_set gt" in line["message"]


async def test_a_refresh_spends_its_token_only_after_the_horizon_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the store fails while the horizon is raised, the refresh token is still unspent:
    the client's retry works instead of counting as reuse and revoking the session."""
    from api.deps import get_store, get_tokens
    from api.main import create_app
    from api.settings import Settings

    monkeypatch.setattr(sessions, "_announced", 0.0)
    service = TokenService("unit-test-signing-key-0123456789-ABCDEFGH", 60, 3600)
    store = EngineStore()
    user = run(store.engine, "insert", table="users", record={"email": "a@b.co", "role": "user"})
    pair = service.issue_pair(str(user["id"]), "user", "s1", issued_at=time.time() - 1)
    failing = {"on": True}
    answer = store.call

    async def store_down_for_the_horizon(command: str, args: Any = None, **kw: Any) -> Any:
        if failing["on"] and (args or {}).get("key") == sessions.TOKEN_HORIZON:
            raise StoreUnavailable("store restarting")  # just as the horizon is raised
        return await answer(command, args, **kw)

    monkeypatch.setattr(store, "call", store_down_for_the_horizon)
    app = create_app(Settings())
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_tokens] = lambda: service
    body = {"refresh_token": pair.refresh_token}
    async with in_process(app) as http:
        first = await http.post("/api/v1/auth/refresh", json=body)
        assert first.status_code == 503, first.text
        failing["on"] = False
        retried = await http.post("/api/v1/auth/refresh", json=body)
    assert retried.status_code == 200, retried.text


async def test_a_reused_refresh_token_revokes_its_session_and_says_so_by_name(
    store: EngineStore, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(time.time())
    claims = Claims("u7", "user", "s7", "jti7", "refresh", now - 10, now + 290, now + HOUR)
    await sessions.consume_refresh_token(store, claims)
    with caplog.at_level(logging.WARNING, "api.auth"), pytest.raises(InvalidToken):
        await sessions.consume_refresh_token(store, claims)
    assert run(store.engine, "kv_get", key=sessions.SESSION_REVOKED + "s7") is not None
    (line,) = named(caplog, "refresh_token_reused")
    assert (line["session_id"], line["user_id"]) == ("s7", "u7")
