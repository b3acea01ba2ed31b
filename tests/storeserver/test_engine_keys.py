"""``kv_set stamp`` (a value dated by the store's clock as it is written), ``kv_set eq`` (a
compare-and-set) and the argument named by a bad key in ``kv_get_many``'s ``keys`` or
``rate_hit``'s ``peek``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from storeserver.client import StoreClient
from storeserver.engine import Engine
from storeserver.errors import BadRequest
from tests.support.engine import T0, FakeClock, fail, run


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Engine:
    return Engine(clock=clock, max_in=5)


def test_kv_set_stamp_stores_the_clock_as_the_command_is_applied(
    engine: Engine, clock: FakeClock
) -> None:
    assert run(engine, "kv_set", key="mark", stamp=True, ttl=10) is True
    assert run(engine, "kv_get", key="mark") == T0
    clock.advance(2.5)
    assert run(engine, "kv_set", key="mark", stamp=True, ttl=10) is True
    assert run(engine, "kv_get", key="mark") == T0 + 2.5
    assert run(engine, "kv_set", key="mark", stamp=True, nx=True) is False  # present
    assert run(engine, "kv_set", key="plain", value=7, stamp=False) is True  # as without stamp
    assert engine.drain_changes() == [
        ("kv_set", "mark", T0, T0 + 10),
        ("kv_set", "mark", T0 + 2.5, T0 + 12.5),
        ("kv_set", "plain", 7, None),
    ]


def test_a_stamped_value_is_journaled_as_the_number_and_replayed_as_it(
    engine: Engine, clock: FakeClock
) -> None:
    run(engine, "kv_set", key="mark", stamp=True, ttl=60)
    run(engine, "kv_set", key="forever", stamp=True)
    journal = engine.drain_changes()
    clock.advance(30)  # a replay later reads a later clock: the values must not follow it
    replica = Engine(clock=clock)
    for change in journal:
        replica.apply_change(change)
    assert run(replica, "kv_get_many", keys=["mark", "forever"]) == [T0, T0]
    clock.advance(30)  # and the ttl counts from the write, not from the replay
    assert run(replica, "kv_get_many", keys=["mark", "forever"]) == [None, T0]


def test_a_replayed_write_that_has_expired_since_still_replaces_the_older_value(
    engine: Engine, clock: FakeClock
) -> None:
    """QA: a key overwritten with a short TTL came back with its older value after a crash
    (the log's expired write was skipped, not applied as the key's end)."""
    run(engine, "kv_set", key="revoked", value=111)
    run(engine, "kv_set", key="session", value="old", ttl=3600)
    snapshot = list(engine.iter_state())
    run(engine, "kv_set", key="revoked", value=222, ttl=1)
    run(engine, "kv_set", key="session", value="new", ttl=1)
    log = engine.drain_changes()[-2:]
    clock.advance(2)
    assert run(engine, "kv_get_many", keys=["revoked", "session"]) == [None, None]
    replica = Engine(clock=clock)
    for change in [*snapshot, *log]:  # a snapshot, then the log written after it
        replica.apply_change(change)
    assert run(replica, "kv_get_many", keys=["revoked", "session"]) == [None, None]


def test_kv_set_stamp_with_gt_keeps_a_later_value(engine: Engine) -> None:
    run(engine, "kv_set", key="h", value=T0 + 100)
    assert run(engine, "kv_set", key="h", stamp=True, gt=True) is False
    assert run(engine, "kv_get", key="h") == T0 + 100
    run(engine, "kv_set", key="h", value=T0 - 100)
    assert run(engine, "kv_set", key="h", stamp=True, gt=True) is True
    assert run(engine, "kv_get", key="h") == T0


@pytest.mark.parametrize(
    ("args", "arg"),
    [
        ({"key": "k", "stamp": True, "value": 1}, "value"),
        ({"key": "k", "stamp": True, "value": None}, "value"),  # present, even as null
        ({"key": "k", "stamp": False}, "value"),  # no stamp, no value
        ({"key": "k", "stamp": "yes"}, "stamp"),
        ({"key": "k", "stamp": 1}, "stamp"),
        ({"key": "k", "stamp": None}, "stamp"),
        ({"stamp": True}, "key"),
        ({"key": "k", "stamp": True, "ttl": 0}, "ttl"),
    ],
)
def test_kv_set_stamp_argument_errors_name_the_argument(
    engine: Engine, args: dict[str, Any], arg: str
) -> None:
    error = fail(engine, BadRequest, "kv_set", **args)
    assert error.details["arg"] == arg
    assert run(engine, "kv_get", key="k") is None
    assert engine.drain_changes() == []


async def test_kv_set_stamp_over_the_wire_is_the_store_process_clock(
    client: StoreClient,
) -> None:
    """The store and this process read the same clock (one host): the stamp falls between
    this process's readings before the call and after its answer."""
    before = time.time()
    assert await client.call("kv_set", {"key": "mark", "stamp": True, "ttl": 60}) is True
    after = time.time()
    stamped = await client.call("kv_get", {"key": "mark"})
    assert type(stamped) is float and before <= stamped <= after
    with pytest.raises(BadRequest) as info:
        await client.call("kv_set", {"key": "mark", "stamp": True, "value": 1.0})
    assert info.value.code == "BAD_REQUEST" and info.value.details["arg"] == "value"
    assert await client.call("kv_get", {"key": "mark"}) == stamped


# -- kv_set eq: compare-and-set ------------------------------------------------------------


def test_kv_set_eq_replaces_only_that_exact_present_value(engine: Engine, clock: FakeClock) -> None:
    assert run(engine, "kv_set", key="k", value="a", eq="a") is False  # absent
    run(engine, "kv_set", key="k", value="a", ttl=10)
    engine.drain_changes()
    assert run(engine, "kv_set", key="k", value="b", eq="x") is False  # another value
    assert run(engine, "kv_get", key="k") == "a"
    assert run(engine, "kv_set", key="k", value="b", eq="a", ttl=20) is True
    assert run(engine, "kv_get", key="k") == "b"
    assert run(engine, "kv_set", key="k", value="c", eq="a") is False  # already replaced
    assert engine.drain_changes() == [("kv_set", "k", "b", T0 + 20)]  # journaled as any set
    clock.advance(20)
    assert run(engine, "kv_set", key="k", value="c", eq="b") is False  # expired: absent


@pytest.mark.parametrize(
    ("stored", "eq"),
    [(1, True), (True, 1), (1, 1.0), ("1", 1), ([1], [True]), ({"a": 1}, {"a": 1.0}), (None, 0)],
)
def test_kv_set_eq_compares_types_too(engine: Engine, stored: Any, eq: Any) -> None:
    run(engine, "kv_set", key="k", value=stored)
    assert run(engine, "kv_set", key="k", value="new", eq=eq) is False
    assert run(engine, "kv_set", key="k", value="new", eq=stored) is True


def test_kv_set_eq_matches_a_stored_null(engine: Engine) -> None:
    assert run(engine, "kv_set", key="k", value="x", eq=None) is False  # absent is not null
    run(engine, "kv_set", key="k", value=None)
    assert run(engine, "kv_set", key="k", value="x", eq=None) is True


@pytest.mark.parametrize(
    ("args", "arg"),
    [
        ({"key": "k", "value": 2, "eq": 1, "nx": True}, "nx"),
        ({"key": "k", "value": 2, "eq": 1, "gt": True}, "gt"),
        ({"key": "k", "eq": 1, "stamp": True}, "stamp"),
        ({"key": "k", "value": 2, "eq": float("nan")}, "eq"),
        ({"key": "k", "value": 2, "eq": object()}, "eq"),
    ],
)
def test_kv_set_eq_argument_errors_name_the_argument(
    engine: Engine, args: dict[str, Any], arg: str
) -> None:
    run(engine, "kv_set", key="k", value=1)
    engine.drain_changes()
    error = fail(engine, BadRequest, "kv_set", **args)
    assert error.details["arg"] == arg
    assert run(engine, "kv_get", key="k") == 1
    assert engine.drain_changes() == []


def test_kv_set_eq_false_alongside_is_no_conflict(engine: Engine) -> None:
    run(engine, "kv_set", key="k", value=1)
    assert run(engine, "kv_set", key="k", value=2, eq=1, nx=False, gt=False, stamp=False) is True


async def test_kv_set_eq_over_the_wire(client: StoreClient) -> None:
    assert await client.call("kv_set", {"key": "s", "value": "j1", "ttl": 60}) is True
    assert await client.call("kv_set", {"key": "s", "value": "j2", "eq": "j1", "ttl": 60})
    assert await client.call("kv_set", {"key": "s", "value": "j3", "eq": "j1"}) is False
    assert await client.call("kv_get", {"key": "s"}) == "j2"
    with pytest.raises(BadRequest) as info:
        await client.call("kv_set", {"key": "s", "value": "j3", "eq": "j2", "nx": True})
    assert info.value.code == "BAD_REQUEST" and info.value.details["arg"] == "nx"


# -- the argument a bad key is reported under ---------------------------------------------


@pytest.mark.parametrize("bad", [1, "", "k" * 1025, None, ["a"]])
def test_a_bad_entry_of_kv_get_many_keys_names_keys(engine: Engine, bad: Any) -> None:
    error = fail(engine, BadRequest, "kv_get_many", keys=["fine", bad])
    assert error.details == {"arg": "keys", "index": 1}
    assert "keys" in error.message


@pytest.mark.parametrize("bad", [1, "", "k" * 1025, None])
def test_a_bad_entry_of_rate_hit_peek_names_peek(engine: Engine, bad: Any) -> None:
    error = fail(engine, BadRequest, "rate_hit", key="ip", limit=1, window=60, peek=[bad])
    assert error.details == {"arg": "peek", "index": 0}
    assert "peek" in error.message
    # Refused before the hit counted: the one hit allowed is still there.
    assert run(engine, "rate_hit", key="ip", limit=1, window=60)["allowed"] is True


def test_a_bad_key_argument_still_names_key(engine: Engine) -> None:
    assert fail(engine, BadRequest, "kv_get", key=5).details == {"arg": "key"}
    assert fail(engine, BadRequest, "rate_hit", key="", limit=1, window=1).details == {"arg": "key"}


MARKS = ["auth:session-revoked:s1", "auth:user-not-before:u1"]


@pytest.mark.parametrize(
    ("marks", "fallback"),
    [
        ({}, False),  # valid: the user is counted
        ({MARKS[0]: 1}, True),  # its session was ended
        ({MARKS[1]: T0 - 5}, True),  # the user's sessions ended after it was issued
        ({MARKS[1]: T0 - 20}, False),  # ...before it was issued: still valid
    ],
)
def test_rate_hit_counts_a_revoked_tokens_hit_against_the_fallback(
    engine: Engine, marks: dict[str, Any], fallback: bool
) -> None:
    """The API's rule for a token's marks, decided in the hit itself: a revoked token's
    request counts against the client's address, its user's counter untouched (QA: counted
    there, then taken back by a second command, a flood held the user's hits meanwhile)."""
    for key, value in marks.items():
        run(engine, "kv_set", key=key, value=value)
    args = {"limit": 5, "window": 60, "peek": MARKS, "issued_at": T0 - 10}
    result = run(engine, "rate_hit", key="user", fallback="ip", **args)
    assert result.get("fallback", False) is fallback
    assert result["peek"] == [marks.get(MARKS[0]), marks.get(MARKS[1])]
    counted, untouched = ("ip", "user") if fallback else ("user", "ip")
    assert run(engine, "rate_hit", key=counted, limit=5, window=60)["remaining"] == 3
    assert run(engine, "rate_hit", key=untouched, limit=5, window=60)["remaining"] == 4


@pytest.mark.parametrize(
    "args",
    [
        {"issued_at": T0, "fallback": "ip"},  # no peek
        {"peek": MARKS[:1], "issued_at": T0, "fallback": "ip"},  # not the two marks
        {"peek": MARKS, "issued_at": "now", "fallback": "ip"},
        {"peek": MARKS, "issued_at": float("nan"), "fallback": "ip"},  # QA: passed every mark
        {"peek": MARKS, "fallback": "ip"},
        {"peek": MARKS, "issued_at": T0},  # no fallback
    ],
)
def test_rate_hit_fallback_needs_its_arguments(engine: Engine, args: dict[str, Any]) -> None:
    error = fail(engine, BadRequest, "rate_hit", key="user", limit=1, window=60, **args)
    assert error.details["arg"] in ("issued_at", "fallback")
