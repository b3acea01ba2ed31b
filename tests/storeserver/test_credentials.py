"""Writes sent in the name of a credential that has ended are refused in the store.

The API checks a token as its request begins and sends the token's revocation keys and issue
time with every write (``_actor.credential``). QA: a demoted admin's transaction, authorised
before the demotion, still created an admin account 6.4 s after the demotion was answered.
The store checks the keys in the write's own turn (and before each step of a long write)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
from structlog.testing import capture_logs

from storeserver import audit, builds, selection
from storeserver import client as store_client
from storeserver.client import StoreClient, current_actor
from storeserver.engine import Engine
from storeserver.errors import BadRequest, CredentialRevoked
from storeserver.server import StoreServer
from tests.support.engine import T0, FakeClock, run

SESSION_KEY, USER_KEY = "auth:session-revoked:s1", "auth:user-not-before:u1"
CREDENTIAL = {"session_key": SESSION_KEY, "user_key": USER_KEY, "issued_at": T0 - 10}
ACTOR = {"user_id": "u1", "role": "admin", "credential": CREDENTIAL}


@pytest.fixture
def engine() -> Engine:
    engine = Engine(clock=FakeClock())
    run(engine, "insert", table="t", record={"n": 0})
    return engine


def insert_as(engine: Engine, actor: Any) -> Any:
    return engine.execute("insert", {"table": "t", "record": {"n": 1}}, actor=actor)


def test_a_write_for_a_live_credential_is_applied_and_audited_by_name(engine: Engine) -> None:
    run(engine, "kv_set", key=USER_KEY, value=T0 - 20)  # sessions ended before it was issued
    insert_as(engine, ACTOR)
    assert run(engine, "count", table="t") == 2
    entry = run(engine, "audit_list", table="t")["items"][0]  # the latest first
    assert (entry["op"], entry["user_id"], entry["role"]) == ("insert", "u1", "admin")
    assert "credential" not in entry


@pytest.mark.parametrize("mark", ["session", "user"])
def test_a_write_after_its_credential_ended_is_refused_and_changes_nothing(
    engine: Engine, mark: str
) -> None:
    if mark == "session":  # logged out: any value ends the session
        run(engine, "kv_set", key=SESSION_KEY, value=1)
    else:  # a password or role change, a deletion: dated by the store, after issued_at
        run(engine, "kv_set", key=USER_KEY, stamp=True)
    audited = len(run(engine, "audit_list", table="t")["items"])
    with pytest.raises(CredentialRevoked):
        insert_as(engine, ACTOR)
    assert run(engine, "count", table="t") == 1
    assert len(run(engine, "audit_list", table="t")["items"]) == audited


def test_a_user_mark_at_the_token_s_own_issue_time_ends_it(engine: Engine) -> None:
    """The API's rule (``check_not_revoked``): tokens issued at or before the mark."""
    run(engine, "kv_set", key=USER_KEY, value=T0 - 10)
    with pytest.raises(CredentialRevoked):
        insert_as(engine, ACTOR)


@pytest.mark.parametrize(
    "credential",
    [
        "s1",
        {"session_key": SESSION_KEY, "user_key": USER_KEY},
        {**CREDENTIAL, "extra": 1},
        {**CREDENTIAL, "session_key": 7},
        {**CREDENTIAL, "issued_at": "yesterday"},
        {**CREDENTIAL, "issued_at": True},
        # QA: NaN compares false with every mark, so a write issued "at NaN" passed them all
        {**CREDENTIAL, "issued_at": float("nan")},
        {**CREDENTIAL, "issued_at": float("inf")},
        {**CREDENTIAL, "issued_at": Decimal("NaN")},
    ],
)
def test_a_malformed_credential_is_a_bad_request_naming_the_actor(
    engine: Engine, credential: Any
) -> None:
    with pytest.raises(BadRequest) as info:
        insert_as(engine, {**ACTOR, "credential": credential})
    assert info.value.details == {"arg": "_actor"}
    assert run(engine, "count", table="t") == 1


def test_an_actor_with_other_fields_is_refused(engine: Engine) -> None:
    with pytest.raises(BadRequest) as info:
        insert_as(engine, {"user_id": "u1", "role": "admin", "token": "t"})
    assert info.value.details == {"arg": "_actor"}


# -- through the server ------------------------------------------------------------------------


async def test_a_long_write_stops_at_its_next_step_once_its_credential_ends(
    server: StoreServer, client: StoreClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selection, "CHUNK", 4)  # 100 steps for 400 rows
    monkeypatch.setattr(builds, "CHUNK", 4)
    await client.call(
        "batch",
        {"ops": [{"op": "insert", "table": "t", "record": {"k": i}} for i in range(400)]},
    )
    # The store's clock is the host's: the token was issued a second ago.
    credential = {**CREDENTIAL, "issued_at": time.time() - 1}
    token = current_actor.set({"user_id": "u1", "role": "admin", "credential": credential})
    try:
        write = asyncio.ensure_future(
            client.call("update_where", {"table": "t", "changes": {"x": 1}})
        )
        for _ in range(10_000):  # a loop turn at a time: the job takes many of them
            if server.jobs:
                break
            await asyncio.sleep(0)
        assert server.jobs == 1
    finally:
        current_actor.reset(token)
    # A logout from another caller, answered while the write runs.
    assert await client.call("kv_set", {"key": SESSION_KEY, "stamp": True}) is True
    with pytest.raises(CredentialRevoked):
        await write
    assert await client.call("count", {"table": "t", "where": [["x", "eq", 1]]}) == 0


async def test_a_store_that_does_not_check_credentials_gets_the_actor_without_one(
    server: StoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier release's store takes ``_actor`` as {user_id, role} only and says nothing
    of credentials in its HELLO: the client leaves the credential out, and writes go on."""
    monkeypatch.setattr(audit, "_ACTOR_KEYS", frozenset({"user_id", "role"}))
    real_info = StoreServer.server_info

    def older_info(self: StoreServer) -> dict[str, Any]:
        info = real_info(self)
        del info["checks_credentials"]
        return info

    monkeypatch.setattr(StoreServer, "server_info", older_info)
    monkeypatch.setattr(store_client, "_credentials_unchecked_told", False)
    client = StoreClient(f"unix:{server.settings.socket}", timeout=5.0)
    token = current_actor.set(ACTOR)
    try:
        with capture_logs() as logs:
            for n in range(3):
                record = await client.call("insert", {"table": "t", "record": {"n": n}})
                assert record["n"] == n
        assert client.server_info.get("checks_credentials") is None
        # QA: the guarantee was off without a word; said once per worker, as other fallbacks.
        told = [e for e in logs if e["event"] == "credentials_not_checked"]
        assert len(told) == 1 and told[0]["log_level"] == "warning"
    finally:
        current_actor.reset(token)
        await client.close()


async def test_the_store_says_it_checks_credentials(client: StoreClient) -> None:
    assert client.server_info["checks_credentials"] is True


async def test_a_connection_s_set_up_is_not_made_in_the_name_of_the_caller_that_opens_it(
    server: StoreServer, client: StoreClient
) -> None:
    """Review: the set-up (``on_connect``: the API declares its tables, writes) ran in the
    context of whichever call found the connection gone; with that caller's session ended,
    the store refused the set-up and every call waiting on it got 503."""

    async def declare(call: Any) -> None:
        await call("create_table", {"table": "t"})

    declaring = StoreClient(f"unix:{server.settings.socket}", timeout=5.0, on_connect=declare)
    try:
        await client.call("kv_set", {"key": SESSION_KEY, "stamp": True})  # logged out
        token = current_actor.set(ACTOR)
        try:
            assert await declaring.call("count", {"table": "t"}) == 0  # connects, sets up
            with pytest.raises(CredentialRevoked):  # the caller's own writes are refused
                await declaring.call("insert", {"table": "t", "record": {}})
        finally:
            current_actor.reset(token)
    finally:
        await declaring.close()
