"""A failed login's log line names the username only by a keyed hash: a password pasted into
the username field must not be recoverable from the logs by hashing guesses (it was
sha256(casefold(name)), unsalted), while lines still correlate across workers (one key, the
signing secret every worker holds)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import orjson
import pytest

from api.auth.credentials import login_name_tag
from api.auth.tokens import TokenService
from api.deps import get_store, get_tokens
from api.logs import json_formatter
from api.main import create_app
from api.routes import auth as auth_routes
from api.settings import Settings
from storeserver.errors import StoreUnavailable
from tests.support.inprocess import in_process

SECRET = "s" * 48
PASTED = "Correct Horse Battery Staple"  # a password typed into the username field


class NoStore:
    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        raise StoreUnavailable("no store in this test")  # the login limiter fails open


def expected_tag(name: str, secret: str) -> str:
    key = hmac.new(secret.encode(), b"memdb-service failed-login name", hashlib.sha256).digest()
    return hmac.new(key, name.strip().casefold().encode(), hashlib.sha256).hexdigest()[:32]


async def failed_login_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, username: str
) -> dict[str, Any]:
    """The failed login's line, as the JSON formatter writes it."""

    async def check_credentials(store: Any, email: str, password: str) -> None:
        return None

    monkeypatch.setattr(auth_routes, "check_credentials", check_credentials)
    app = create_app(Settings())
    app.dependency_overrides[get_store] = NoStore
    service = TokenService(SECRET, access_ttl=60, refresh_ttl=3600)
    app.dependency_overrides[get_tokens] = lambda: service
    caplog.clear()
    with caplog.at_level(logging.INFO, "api.auth"):
        async with in_process(app) as http:
            form = {"username": username, "password": "pw12345678"}
            response = await http.post("/api/v1/auth/token", data=form)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "INVALID_CREDENTIALS"
    lines = [orjson.loads(json_formatter().format(r)) for r in caplog.records]
    [line] = [line for line in lines if line["logger"] == "api.auth"]
    assert isinstance(line, dict)
    return line


async def test_a_failed_login_logs_a_keyed_hash_of_the_username(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    line = await failed_login_line(monkeypatch, caplog, PASTED)
    text = orjson.dumps(line).decode()
    unkeyed = hashlib.sha256(PASTED.strip().casefold().encode()).hexdigest()[:32]
    assert unkeyed not in text
    assert PASTED.casefold() not in text.casefold()
    # The bare event name, the address and the tag as fields (an alert can match them).
    assert line["event"] == "login_failed" and line["level"] == "info"
    assert line["client"] == "127.0.0.1"
    assert line["user_tag"] == expected_tag(PASTED, SECRET)
    # The same name however typed: the same tag (lines of one name correlate).
    again = await failed_login_line(monkeypatch, caplog, f"  {PASTED.upper()} ")
    assert again["user_tag"] == line["user_tag"]


def test_the_tag_depends_on_the_key() -> None:
    tag = login_name_tag("ada@example.com", SECRET)
    assert len(tag) == 32 and tag == login_name_tag(" Ada@Example.com ", SECRET)
    assert tag != login_name_tag("ada@example.com", "t" * 48)
    assert tag != hashlib.sha256(b"ada@example.com").hexdigest()[:32]


class RecordingStore(NoStore):
    def __init__(self) -> None:
        self.keys: list[str] = []

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        if command == "rate_hit" and args is not None:
            self.keys.append(str(args["key"]))
        return await super().call(command, args, timeout=timeout)


async def test_the_per_username_login_limit_is_keyed_by_the_same_keyed_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rate-limit counter's key lives in the store (and in its stats and dumps): it holds
    the username only as the keyed tag, never a plain hash a guess could be checked against."""

    async def check_credentials(store: Any, email: str, password: str) -> None:
        return None

    monkeypatch.setattr(auth_routes, "check_credentials", check_credentials)
    store = RecordingStore()
    app = create_app(Settings())
    app.dependency_overrides[get_store] = lambda: store
    service = TokenService(SECRET, access_ttl=60, refresh_ttl=3600)
    app.dependency_overrides[get_tokens] = lambda: service
    async with in_process(app) as http:
        for name in (PASTED, f" {PASTED.upper()}"):
            form = {"username": name, "password": "pw12345678"}
            assert (await http.post("/api/v1/auth/token", data=form)).status_code == 401
    unkeyed = hashlib.sha256(PASTED.strip().casefold().encode()).hexdigest()[:32]
    assert store.keys and not any(unkeyed in key for key in store.keys)
    assert not any(PASTED.casefold() in key.casefold() for key in store.keys)
    user_keys = [key for key in store.keys if expected_tag(PASTED, SECRET) in key]
    assert len(user_keys) == 2 and user_keys[0] == user_keys[1]  # one counter however typed
