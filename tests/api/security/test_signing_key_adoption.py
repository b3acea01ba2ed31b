"""The development signing key on every store (re)connection (in-process, against an engine).

A worker adopts the key the store holds; a store that came back empty gets a new one (every
token issued before is refused); with JWT_SECRET set the key is the setting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from starlette.datastructures import State

from api.auth.secret import SECRET_KEY
from api.auth.startup import adopt_store_secret, start_auth
from api.auth.tokens import InvalidToken, new_session_id
from api.settings import Settings
from storeserver.errors import StoreUnavailable
from tests.support.engine import EngineStore
from tests.support.events import named

JWT_SECRET = "3f9c1a7e5b2d8f4a6c0e9b1d7a3f5c8e2b4d6f0a"


async def started_worker(store: EngineStore, settings: Settings) -> State:
    state = State()
    await start_auth(state, store, settings)
    return state


pytestmark = pytest.mark.usefixtures("structured_logs")  # conftest.py: named events


def switch_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return named(caplog, "signing_key_switched")


async def test_a_store_holding_the_same_key_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, settings = EngineStore(), Settings()
    state = await started_worker(store, settings)
    tokens = state.tokens

    await adopt_store_secret(state, settings)(store.call)  # the store came back with its data

    assert state.tokens is tokens
    assert len(store.sent("kv_set")) == 1  # the first start's offer: none on reconnection
    assert switch_lines(caplog) == []


async def test_a_store_back_empty_gets_a_new_key_and_earlier_tokens_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings()
    state = await started_worker(EngineStore(), settings)
    before = state.tokens
    old = before.issue_pair("u1", "admin", new_session_id()).access_token
    before.verify(old, "access")  # cached by the old service

    empty = EngineStore()
    with caplog.at_level(logging.WARNING, logger="api.auth"):
        await adopt_store_secret(state, settings)(empty.call)

    assert state.tokens is not before
    assert state.tokens.secret == await empty.call("kv_get", {"key": SECRET_KEY})
    assert state.tokens.secret != before.secret
    with pytest.raises(InvalidToken):
        state.tokens.verify(old, "access")
    new = state.tokens.issue_pair("u1", "admin", new_session_id()).access_token
    assert state.tokens.verify(new, "access").subject == "u1"
    (line,) = switch_lines(caplog)
    assert line["level"] == "warning"
    assert "came back without it" in line["reason"]
    assert "previous key are refused" in line["message"]
    text = orjson.dumps(line).decode()
    assert before.secret not in text
    assert state.tokens.secret not in text


async def test_a_store_holding_another_key_is_adopted(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings()
    state = await started_worker(EngineStore(), settings)
    restored = EngineStore()
    other_key = "k" * 48
    await restored.call("kv_set", {"key": SECRET_KEY, "value": other_key})

    with caplog.at_level(logging.WARNING, logger="api.auth"):
        await adopt_store_secret(state, settings)(restored.call)

    assert state.tokens.secret == other_key
    assert restored.sent("kv_set") == [{"key": SECRET_KEY, "value": other_key}]  # no offer
    (line,) = switch_lines(caplog)
    assert "holds another one" in line["reason"]
    assert other_key not in orjson.dumps(line).decode()


async def test_workers_racing_on_an_empty_store_converge_on_one_key() -> None:
    settings = Settings()
    first = EngineStore()
    workers = [await started_worker(first, settings) for _ in range(3)]
    empty = EngineStore()

    async def interleaved(command: str, args: dict[str, Any]) -> Any:
        await asyncio.sleep(0)  # every worker reads "none" before any of them offers
        return await empty.call(command, args)

    await asyncio.gather(*(adopt_store_secret(w, settings)(interleaved) for w in workers))

    stored = await empty.call("kv_get", {"key": SECRET_KEY})
    assert {w.tokens.secret for w in workers} == {stored}
    assert len(empty.sent("kv_set")) == 3  # each offered; nx kept the first


async def test_with_jwt_secret_the_key_is_the_setting() -> None:
    settings = Settings(jwt_secret=SecretStr(JWT_SECRET))
    state = await started_worker(EngineStore(), settings)
    tokens = state.tokens
    empty = EngineStore()

    await adopt_store_secret(state, settings)(empty.call)

    assert state.tokens is tokens and tokens.secret == JWT_SECRET
    assert empty.calls == []


async def test_a_store_holding_an_unusable_key_fails_the_connection() -> None:
    settings = Settings()
    state = await started_worker(EngineStore(), settings)
    tokens = state.tokens
    broken = EngineStore()
    await broken.call("kv_set", {"key": SECRET_KEY, "value": "short"})

    with pytest.raises(StoreUnavailable):  # the client drops the connection: 503, retried
        await adopt_store_secret(state, settings)(broken.call)
    assert state.tokens is tokens
