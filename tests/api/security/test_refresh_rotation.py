"""Refresh-token rotation keeps one key per session (``auth:session-refresh:<sid>``, replaced by
``kv_set eq``) instead of one "used" marker per refresh; sessions opened before that (no key)
still rotate once by their marker and then join. Against the real workers and store, plus
the store-without-``eq`` fallback in-process."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import jwt
import pytest

from api.auth import sessions
from api.auth.tokens import Claims, InvalidToken, TokenService, new_session_id
from api.logs import configure_logging
from storeserver.errors import BadRequest
from tests.support.auth import Account, bearer, register
from tests.support.engine import EngineStore, run
from tests.support.events import named
from tests.support.factories import assert_error
from tests.support.stack import Stack
from tests.support.storedirect import store_call

CHAIN = 50
WEEK = 7 * 86_400
SESSION_REFRESH = "auth:session-refresh:"  # the store keys, as written (a data-dir contract)
REFRESH_USED = "auth:refresh-used:"


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def sid_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sid"])


def refresh(http: httpx.Client, token: str) -> httpx.Response:
    return http.post("/api/v1/auth/refresh", json={"refresh_token": token})


def kv_keys(stack: Stack) -> int:
    return int(store_call(stack, "stats", {})["kv_keys"])


def session_key(stack: Stack, token: str) -> Any:
    """The id of the session's latest refresh token as its key holds it (``None``: no key).
    After a refresh the key holds a map: the id under ``jti``."""
    value = store_call(stack, "kv_get", {"key": SESSION_REFRESH + sid_of(token)})
    return value.get("jti") if isinstance(value, dict) else value


def used_markers(stack: Stack, tokens: list[str]) -> list[Any]:
    keys = [REFRESH_USED + jti_of(token) for token in tokens]
    values: list[Any] = store_call(stack, "kv_get_many", {"keys": keys})
    return values


# --- against the real workers ------------------------------------------------------------------


@pytest.mark.integration
def test_a_chain_of_refreshes_keeps_one_key_for_its_session(
    anon: httpx.Client, stack: Stack
) -> None:
    account = register(anon)
    before = kv_keys(stack)
    presented, token = [], account.refresh_token
    for _ in range(CHAIN):
        response = refresh(anon, token)
        assert response.status_code == 200, response.text
        presented.append(token)
        token = response.json()["refresh_token"]
    # No key per refresh: the session's one key names its latest token, and no marker is left
    # (other keys may only have expired meanwhile).
    assert kv_keys(stack) <= before
    assert session_key(stack, token) == jti_of(token)
    assert used_markers(stack, presented) == [None] * CHAIN
    assert (anon.get("/api/v1/users/me", headers=bearer(account.access_token))).is_success


@pytest.mark.integration
def test_a_token_from_the_middle_of_the_chain_revokes_the_session(
    anon: httpx.Client, stack: Stack
) -> None:
    account = register(anon)
    tokens = [account.refresh_token]
    for _ in range(5):
        response = refresh(anon, tokens[-1])
        assert response.status_code == 200, response.text
        tokens.append(response.json()["refresh_token"])
    assert_error(refresh(anon, tokens[2]), 401, "INVALID_TOKEN")
    # The whole session is over: its latest refresh token and its access tokens too.
    assert_error(refresh(anon, tokens[-1]), 401, "INVALID_TOKEN")
    me = anon.get("/api/v1/users/me", headers=bearer(account.access_token))
    assert_error(me, 401, "INVALID_TOKEN")


@pytest.fixture
def legacy(anon: httpx.Client, stack: Stack) -> tuple[Account, TokenService]:
    """A user, and a token service signing as the workers do (to open a session the way an
    earlier release did: tokens only, no session key)."""
    secret = store_call(stack, "kv_get", {"key": "auth:jwt-secret"})
    assert isinstance(secret, str)
    return register(anon), TokenService(secret, 3600, WEEK)


@pytest.mark.integration
def test_a_session_from_an_earlier_release_joins_at_its_first_refresh(
    anon: httpx.Client, stack: Stack, legacy: tuple[Account, TokenService]
) -> None:
    account, service = legacy
    old = service.issue_pair(account.id, "user", new_session_id(), issued_at=time.time() - 1)
    assert session_key(stack, old.refresh_token) is None
    first = refresh(anon, old.refresh_token)
    assert first.status_code == 200, first.text
    new_token = first.json()["refresh_token"]
    assert session_key(stack, old.refresh_token) == jti_of(new_token)  # joined
    assert used_markers(stack, [old.refresh_token]) == [1]  # decided by its marker, this once
    # Once its successor was used, the same earlier-release token again is reuse: the session
    # is revoked (before that, it would get the same successor: a repeated refresh).
    newer = refresh(anon, new_token)
    assert newer.status_code == 200, newer.text
    assert_error(refresh(anon, old.refresh_token), 401, "INVALID_TOKEN")
    assert_error(refresh(anon, newer.json()["refresh_token"]), 401, "INVALID_TOKEN")
    me = anon.get("/api/v1/users/me", headers=bearer(first.json()["access_token"]))
    assert_error(me, 401, "INVALID_TOKEN")


@pytest.mark.integration
def test_a_token_an_earlier_release_already_exchanged_is_still_reuse(
    anon: httpx.Client, stack: Stack, legacy: tuple[Account, TokenService]
) -> None:
    account, service = legacy
    old = service.issue_pair(account.id, "user", new_session_id(), issued_at=time.time() - 1)
    marker = REFRESH_USED + jti_of(old.refresh_token)
    assert store_call(stack, "kv_set", {"key": marker, "value": 1, "ttl": 600}) is True
    assert_error(refresh(anon, old.refresh_token), 401, "INVALID_TOKEN")
    assert session_key(stack, old.refresh_token) is None
    me = anon.get("/api/v1/users/me", headers=bearer(old.access_token))
    assert_error(me, 401, "INVALID_TOKEN")


# --- a store without kv_set eq (mid-upgrade), in-process ---------------------------------------


def claims(service: TokenService, token: str) -> Claims:
    return service.verify(token, "refresh")


async def test_a_store_without_kv_set_eq_still_rotates_once_and_keeps_the_key_current(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging("info")
    monkeypatch.setattr(sessions, "_said_no_eq", False)  # a new worker
    service = TokenService("unit-test-signing-key-0123456789-ABCDEFGH", 60, 3600)
    store = EngineStore()
    older = {"on": True}
    answer = store.call

    async def older_store(command: str, args: Any = None, **kw: Any) -> Any:
        if older["on"] and command == "kv_set" and "eq" in (args or {}):
            raise BadRequest("unknown argument 'eq'", {"arg": "eq"})
        return await answer(command, args, **kw)

    monkeypatch.setattr(store, "call", older_store)
    chain = [service.issue_pair("u1", "user", "s1").refresh_token]
    await sessions.open_session(store, "s1", claims(service, chain[0]))
    key = SESSION_REFRESH + "s1"
    with caplog.at_level(logging.WARNING, "api.auth"):
        for _ in range(2):
            chain.append(service.issue_pair("u1", "user", "s1").refresh_token)
            await sessions.rotate_refresh_token(
                store, claims(service, chain[-2]), claims(service, chain[-1])
            )
            assert run(store.engine, "kv_get", key=key)["jti"] == jti_of(chain[-1])
    (line,) = named(caplog, "refresh_rotation_by_marker")  # once per worker
    assert line["level"] == "warning" and "kv_set eq" in line["message"]
    # The store upgraded: the key it kept current decides from then on.
    older["on"] = False
    chain.append(service.issue_pair("u1", "user", "s1").refresh_token)
    await sessions.rotate_refresh_token(
        store, claims(service, chain[-2]), claims(service, chain[-1])
    )
    assert run(store.engine, "kv_get", key=key)["jti"] == jti_of(chain[-1])
    # Reuse of a token rotated by a store without eq, after the upgrade.
    with pytest.raises(InvalidToken):
        await sessions.rotate_refresh_token(
            store, claims(service, chain[0]), claims(service, chain[-1])
        )
    assert run(store.engine, "kv_get", key=sessions.SESSION_REVOKED + "s1") is not None


async def test_on_a_store_without_kv_set_eq_a_rotated_token_is_reuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key the older store still keeps tells a rotated token, which no marker names."""
    monkeypatch.setattr(sessions, "_said_no_eq", True)
    service = TokenService("unit-test-signing-key-0123456789-ABCDEFGH", 60, 3600)
    store = EngineStore()
    answer = store.call

    async def older_store(command: str, args: Any = None, **kw: Any) -> Any:
        if command == "kv_set" and "eq" in (args or {}):
            raise BadRequest("unknown argument 'eq'", {"arg": "eq"})
        return await answer(command, args, **kw)

    monkeypatch.setattr(store, "call", older_store)
    first = claims(service, service.issue_pair("u1", "user", "s1").refresh_token)
    second = claims(service, service.issue_pair("u1", "user", "s1").refresh_token)
    third = claims(service, service.issue_pair("u1", "user", "s1").refresh_token)
    await sessions.open_session(store, "s1", first)
    # Rotated by this release against an upgraded store (no marker for ``first``)...
    await answer("kv_set", {"key": SESSION_REFRESH + "s1", "value": second.token_id, "ttl": 60})
    # ...then presented again while a worker talks to an older store.
    with pytest.raises(InvalidToken):
        await sessions.rotate_refresh_token(store, first, third)
    assert run(store.engine, "kv_get", key=sessions.SESSION_REVOKED + "s1") is not None


# --- a refresh repeated (its answer lost, or sent twice) -------------------------------------


@pytest.mark.integration
def test_a_refresh_repeated_gets_the_same_successor_and_keeps_the_session(
    anon: httpx.Client, stack: Stack
) -> None:
    """QA: a refresh whose answer was lost (the store crashed after rotating: 503
    OUTCOME_UNKNOWN; or a 504) left the client only the old token, and sending it again
    revoked the session as reuse. Within REPEAT_SECONDS, while the successor is unused, the
    same successor comes back (with a new access token)."""
    account = register(anon)
    first = refresh(anon, account.refresh_token)
    assert first.status_code == 200, first.text
    again = refresh(anon, account.refresh_token)  # the client never saw ``first``
    assert again.status_code == 200, again.text
    assert again.json()["refresh_token"] == first.json()["refresh_token"]
    me = anon.get("/api/v1/users/me", headers=bearer(again.json()["access_token"]))
    assert me.status_code == 200
    onward = refresh(anon, again.json()["refresh_token"])
    assert onward.status_code == 200, onward.text
    # Its successor used, the first token is reuse: the session is revoked.
    assert_error(refresh(anon, account.refresh_token), 401, "INVALID_TOKEN")
    assert_error(refresh(anon, onward.json()["refresh_token"]), 401, "INVALID_TOKEN")


async def test_a_token_replaced_longer_ago_than_the_repeat_window_is_reuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = TokenService("unit-test-signing-key-0123456789-ABCDEFGH", 60, 3600)
    store = EngineStore()
    first, second, third = (
        claims(service, service.issue_pair("u1", "user", "s1").refresh_token) for _ in range(3)
    )
    await sessions.open_session(store, "s1", first)
    assert await sessions.rotate_refresh_token(store, first, second) is None
    repeated = await sessions.rotate_refresh_token(store, first, third)
    assert repeated == sessions.Successor(second.token_id, second.issued_at, "user")
    later = time.time() + sessions.REPEAT_SECONDS + 1
    monkeypatch.setattr(sessions.time, "time", lambda: later)
    with pytest.raises(InvalidToken):
        await sessions.rotate_refresh_token(store, first, third)
    assert run(store.engine, "kv_get", key=sessions.SESSION_REVOKED + "s1") is not None


def test_a_repeated_refresh_signs_the_same_refresh_token_again() -> None:
    """What makes the repeat safe to hand out: the successor, signed again from its id and
    iat, is the very token the first exchange gave (one token, rotated once)."""
    service = TokenService("unit-test-signing-key-0123456789-ABCDEFGH", 60, 3600)
    pair = service.issue_pair("u1", "user", "s1", issued_at=time.time() - 5)
    claims_of = pair.refresh_claims
    again = service.issue_pair(
        "u1", "user", "s1", issued_at=claims_of.issued_at, refresh_id=claims_of.token_id
    )
    assert again.refresh_token == pair.refresh_token
    assert again.access_token != pair.access_token


@pytest.mark.parametrize("fraction", [0.0, 0.4999999, 0.9999996, 0.9999999])
def test_a_repeat_signs_the_same_token_whatever_the_fraction_of_its_second(
    fraction: float,
) -> None:
    """QA: at a fraction of .9999995 or more, the first exp came from the unrounded time and the
    repeat's from the rounded iat: a second apart, another token."""
    service = TokenService("unit-test-signing-key-0123456789-ABCDEFGH", 60, 3600)
    at = float(int(time.time()) - 5) + fraction
    pair = service.issue_pair("u1", "user", "s1", issued_at=at)
    first = pair.refresh_claims
    again = service.issue_pair(
        "u1", "user", "s1", issued_at=first.issued_at, refresh_id=first.token_id
    )
    assert again.refresh_token == pair.refresh_token
