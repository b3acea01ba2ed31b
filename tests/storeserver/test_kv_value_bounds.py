"""The size of a key's value (``keys.MAX_KV_VALUE_BYTES``, ``MAX_KV_VALUES``): ``kv_set`` is
taken over the memory limit, so its values must stay small; unbounded, three of 2 MB took the
store's RSS from 406 to 685 MB."""

from __future__ import annotations

from typing import Any

import pytest

from storeserver.client import StoreClient
from storeserver.engine import Engine
from storeserver.errors import LimitExceeded, MemoryLimit
from storeserver.keys import MAX_KV_VALUE_BYTES, MAX_KV_VALUES
from storeserver.memory import MemoryGauge
from storeserver.protocol import pack_value
from storeserver.server import StoreServer
from tests.support.engine import FakeClock, fail, run

BOUNDS = {"max_bytes": MAX_KV_VALUE_BYTES, "max_values": MAX_KV_VALUES}


@pytest.fixture
def engine() -> Engine:
    return Engine(clock=FakeClock())


def text_of(size: int) -> str:
    """A string that takes exactly ``size`` bytes encoded (with its 1 to 5 byte header)."""
    return next(
        text for header in (1, 2, 3, 5) if len(pack_value(text := "x" * (size - header))) == size
    )


def test_a_value_at_the_bounds_is_kept(engine: Engine) -> None:
    at_bytes = text_of(MAX_KV_VALUE_BYTES)
    at_values = [0] * (MAX_KV_VALUES - 1)
    for value in (at_bytes, at_values):
        assert run(engine, "kv_set", key="k", value=value) is True
        assert run(engine, "kv_get", key="k") == value


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (text_of(MAX_KV_VALUE_BYTES + 1), MAX_KV_VALUE_BYTES + 1),
        ([text_of(MAX_KV_VALUE_BYTES // 2)] * 2, None),  # bytes past the bound, few values
        ([0] * MAX_KV_VALUES, None),
        ([{}] * 2_000_000, None),  # the QA report's: 2 MB of empty maps
        ({"a": [[0] * 600] * 2}, None),
    ],
)
def test_a_bigger_value_is_refused_naming_the_bounds(
    engine: Engine, value: Any, size: int | None
) -> None:
    run(engine, "kv_set", key="k", value=1)
    error = fail(engine, LimitExceeded, "kv_set", key="k", value=value)
    assert error.code == "LIMIT_EXCEEDED"
    assert {k: error.details[k] for k in BOUNDS} == BOUNDS
    assert error.details["arg"] == "value"
    if size is not None:
        assert error.details["size"] == size
    assert str(MAX_KV_VALUE_BYTES) in error.message and str(MAX_KV_VALUES) in error.message
    assert run(engine, "kv_get", key="k") == 1
    assert engine.drain_changes() == [("kv_set", "k", 1, None)]


def test_an_eq_value_past_the_bounds_is_refused_as_eq(engine: Engine) -> None:
    run(engine, "kv_set", key="k", value=1)
    error = fail(engine, LimitExceeded, "kv_set", key="k", value=2, eq=[0] * MAX_KV_VALUES)
    assert error.details["arg"] == "eq"
    assert run(engine, "kv_get", key="k") == 1


async def test_small_keys_are_written_at_the_memory_limit_and_big_ones_refused(
    server: StoreServer, client: StoreClient
) -> None:
    # A gauge over its limit: RSS reads 2 GB against 1 GB.
    server.memory = MemoryGauge(
        10**9, rss_reader=lambda: 2 * 10**9, trimmer=lambda: None, reusable_reader=lambda: 0
    )
    with pytest.raises(MemoryLimit):
        await client.call("insert", {"table": "t", "record": {"n": 1}})
    # A logout's revocation mark and a refresh marker still go in.
    assert await client.call("kv_set", {"key": "revoked:u1", "stamp": True, "ttl": 60}) is True
    assert await client.call("kv_set", {"key": "refresh:s1", "value": "a" * 43}) is True
    with pytest.raises(LimitExceeded) as info:
        # Within the frame's entries (protocol.MAX_REQUEST_ENTRIES: each map here is two)
        await client.call("kv_set", {"key": "big", "value": [{}] * 1_000_000})
    assert info.value.details["arg"] == "value"
    assert await client.call("kv_get", {"key": "big"}) is None
