"""How long revocation marks are kept (in-process, against an engine).

Tokens are cut to the lifetime configured now, so lowering REFRESH_TOKEN_TTL shortens them;
but setting it back lets a token live to its own exp again. A mark set while the lifetime was
low must therefore outlive every token issued before, which the token horizon records.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from api.auth import sessions
from api.auth.tokens import Claims
from tests.support.engine import EngineStore, run

HOUR, FIVE_MINUTES = 3600, 300


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
