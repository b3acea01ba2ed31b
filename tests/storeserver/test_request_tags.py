"""The tags any command may carry (``_request_id``, ``_actor``): bounded, removed before the
command runs, on the commands the connection answers itself too; and every command counted."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from api.auth import tokens
from api.middleware import SANE_REQUEST_ID, new_request_id
from storeserver.client import StoreClient, current_actor, current_request_id
from storeserver.errors import BadRequest
from storeserver.records import MAX_ID_LENGTH
from storeserver.requesttags import MAX_TAG_CHARS


async def test_a_request_id_longer_than_the_bound_is_refused_naming_it(server, client):
    """QA: a 3 MB ``_request_id`` went into every slow_command line and the slow list, and
    ``stats`` was LIMIT_EXCEEDED until 20 newer slow commands pushed it out."""
    server._slow_s = 0.0  # every command is slow: each would be logged with its tag
    token = current_request_id.set("r" * (MAX_TAG_CHARS + 1))
    try:
        with capture_logs() as logs, pytest.raises(BadRequest) as bad:
            await client.call("kv_set", {"key": "k", "value": 1})
    finally:
        current_request_id.reset(token)
    assert bad.value.details == {"arg": "_request_id", "max": MAX_TAG_CHARS}
    assert "_request_id" in bad.value.message
    assert await client.call("kv_get", {"key": "k"}) is None  # not run
    slow = [x for x in logs if x["event"] == "slow_command"]
    assert slow and all(x["request_id"] is None for x in slow)
    stats = await client.call("stats")
    assert all(entry["request_id"] is None for entry in stats["slow"])


async def test_a_request_id_of_the_bound_is_kept(server, client):
    server._slow_s = 0.0
    tag = "r" * MAX_TAG_CHARS
    token = current_request_id.set(tag)
    try:
        assert await client.call("kv_set", {"key": "k", "value": 1}) is True
    finally:
        current_request_id.reset(token)
    assert (await client.call("stats"))["slow"][-1]["request_id"] == tag  # kv_set's


@pytest.mark.parametrize("field", ["user_id", "role"])
async def test_an_actor_field_longer_than_the_bound_is_refused_naming_it(client, field):
    actor = {"user_id": "u-1", "role": "admin", field: "x" * (MAX_TAG_CHARS + 1)}
    token = current_actor.set(actor)
    try:
        with pytest.raises(BadRequest) as bad:
            await client.call("insert", {"table": "t", "record": {"id": "a"}})
    finally:
        current_actor.reset(token)
    assert bad.value.details == {"arg": "_actor", "max": MAX_TAG_CHARS}
    assert (await client.call("audit_list", {}))["total"] == 0  # nothing written


async def test_a_request_id_must_be_a_string(client):
    with pytest.raises(BadRequest) as bad:
        await client.call("ping", {"_request_id": ["x"] * 1000})
    assert bad.value.details["arg"] == "_request_id"


def test_the_api_sends_no_tag_longer_than_the_store_takes():
    """Request ids: a client's X-Request-Id is kept only up to the bound, else one of 32
    characters is made. Actors: roles are short, and user ids are record ids (at most 128
    characters, ``records.MAX_ID_LENGTH``) read from token subjects checked to that length."""
    assert SANE_REQUEST_ID.fullmatch("r" * MAX_TAG_CHARS)
    assert not SANE_REQUEST_ID.fullmatch("r" * (MAX_TAG_CHARS + 1))
    assert len(new_request_id()) <= MAX_TAG_CHARS
    assert max(len(role) for role in tokens.ROLES) <= MAX_TAG_CHARS
    assert MAX_ID_LENGTH <= MAX_TAG_CHARS


# -- the commands the connection answers itself -------------------------------------------


async def test_cancel_takes_the_tags_any_command_may_carry(client: StoreClient):
    """QA: ``cancel {"request": 5, "_request_id": "r1"}`` was BAD_REQUEST "cancel takes
    request": the connection ran it past the server's tag removal."""
    args = {"request": 5, "_request_id": "r1", "_actor": {"user_id": None, "role": None}}
    assert await client.call("cancel", args) == {"cancelled": False}
    with pytest.raises(BadRequest, match="cancel takes request"):
        await client.call("cancel", {"request": 5, "bogus": 1})
    with pytest.raises(BadRequest) as bad:
        await client.call("cancel", {"request": 5, "_request_id": "r" * (MAX_TAG_CHARS + 1)})
    assert bad.value.details["arg"] == "_request_id"


async def test_cancel_and_snapshot_are_counted_in_the_stats(client: StoreClient):
    await client.call("cancel", {"request": 5})
    await client.call("cancel", {"request": 6})
    with pytest.raises(BadRequest, match="persistence is off"):
        await client.call("snapshot", {"_request_id": "r1"})
    commands = (await client.call("stats"))["commands"]
    assert commands["cancel"]["count"] == 2 and commands["snapshot"]["count"] == 1
