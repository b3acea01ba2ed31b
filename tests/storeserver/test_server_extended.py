"""Server-side parts of issue 9: the ``_actor`` argument, long commands run as jobs, stats with
latency percentiles and slow commands, and the audit log and schemas surviving a restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from storeserver import builds
from storeserver import definitions as definitions_module
from storeserver.client import StoreClient, current_actor, current_request_id
from storeserver.errors import UnknownCommand, ValidationFailed
from storeserver.opstats import OpStats, _percentiles


async def test_actor_and_request_id_reach_the_audit_log(client: StoreClient) -> None:
    actor_token = current_actor.set({"user_id": "u-1", "role": "admin"})
    request_token = current_request_id.set("req-9")
    try:
        await client.call("insert", {"table": "t", "record": {"a": 1}})
        await client.call("find", {"table": "t"})  # reads carry no actor and are not audited
    finally:
        current_actor.reset(actor_token)
        current_request_id.reset(request_token)
    listed = await client.call("audit_list", {"user_id": "u-1"})
    assert listed["total"] == 1
    entry = listed["items"][0]
    assert (entry["role"], entry["request_id"], entry["op"]) == ("admin", "req-9", "insert")


async def test_a_long_index_build_lets_other_clients_in(
    server, client: StoreClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builds, "CHUNK", 50)
    monkeypatch.setattr(definitions_module, "CHUNK", 50)
    await client.call(
        "batch",
        {"ops": [{"op": "insert", "table": "t", "record": {"k": i % 7}} for i in range(1000)]},
    )
    build = asyncio.ensure_future(client.call("create_index", {"table": "t", "field": "k"}))
    await asyncio.sleep(0)  # the request is sent at the end of this loop turn
    # A write sent after it is answered while the build runs, and the index includes it.
    row = await client.call("insert", {"table": "t", "record": {"k": 3}})
    assert not build.done()
    assert server.jobs == 1
    assert await build == {"created": True}
    found = await client.call("find", {"table": "t", "where": [["k", "eq", 3]], "limit": 1000})
    assert row["id"] in [r["id"] for r in found["items"]] and found["total"] == 144
    stats = await client.call("stats")
    assert stats["jobs"] == 0 and stats["commands"]["create_index"]["count"] == 1


async def test_stats_report_percentiles_and_slow_commands(server, client: StoreClient) -> None:
    server._slow_s = 0.0  # every command is slow
    for _ in range(5):
        await client.call("list_tables")
    stats = await client.call("stats")
    entry = stats["commands"]["list_tables"]
    assert entry["count"] == 5 and 0 < entry["p50"] <= entry["p95"] <= entry["p99"] < 1
    assert stats["slow"][-1]["command"] == "list_tables" and len(stats["slow"]) <= 20
    assert {"max_memory", "clients", "uptime", "version", "persistence"} <= stats.keys()
    assert stats["audit"]["max_entries"] == 100_000


def test_percentiles_from_the_histogram() -> None:
    stats = OpStats()
    for _ in range(90):
        stats.add("get", 0.0001)
    for _ in range(10):
        stats.add("get", 0.01)
    entry = stats.as_dict()["get"]
    assert 0.00008 < entry["p50"] < 0.00012 and 0.008 < entry["p99"] < 0.012
    assert _percentiles([0] * 256, 0, (0.5,)) == [0.0]


async def test_audit_and_schema_survive_a_restart(store_process, tmp_path) -> None:
    env = {"STORE_DATA_DIR": str(tmp_path / "data"), "STORE_FSYNC": "always"}
    store = store_process(**env)
    client = StoreClient(store.address, timeout=5.0)
    token = current_actor.set({"user_id": "u-7", "role": "user"})
    try:
        await client.call("set_schema", {"table": "p", "schema": {"required": ["name"]}})
        await client.call("insert", {"table": "p", "record": {"name": "x"}})
        await client.call("update_where", {"table": "p", "changes": {"n": 1}})
    finally:
        current_actor.reset(token)
    await client.call("snapshot")
    await client.call("delete_where", {"table": "p", "where": [["n", "eq", 1]]})
    before = await client.call("audit_list")
    await client.close()
    assert store.stop() == 0
    store.close()

    restarted = store_process(**env)
    client = StoreClient(restarted.address, timeout=5.0)
    try:
        assert await client.call("audit_list") == before
        assert [i["op"] for i in before["items"]] == [
            "delete_where",
            "update_where",
            "insert",
            "set_schema",
        ]
        assert before["items"][1]["user_id"] == "u-7"
        with pytest.raises(ValidationFailed):
            await client.call("insert", {"table": "p", "record": {"other": 1}})
    finally:
        await client.close()


async def test_at_the_memory_limit_deletes_and_session_keys_go_on(server, client) -> None:
    from storeserver.errors import MemoryLimit

    first = await client.call("insert", {"table": "t", "record": {"a": 1}})
    server.memory.over_limit = lambda: True  # as if RSS were past STORE_MAX_MEMORY
    with pytest.raises(MemoryLimit):
        await client.call("insert", {"table": "t", "record": {"a": 2}})
    with pytest.raises(MemoryLimit):
        await client.call("create_table", {"table": "t"})
    assert (await client.call("get", {"table": "t", "id": first["id"]}))["a"] == 1
    assert await client.call("kv_set", {"key": "revoked:s", "value": 1, "ttl": 60}) is True
    await client.call("delete", {"table": "t", "id": first["id"]})  # room can be made
    assert await client.call("count", {"table": "t"}) == 0


async def test_jobs_take_turns_within_a_budget_per_loop_turn(server, monkeypatch) -> None:
    """Each pass of the job runner steps every job at most once, and stops early once its
    budget is used: many long reads never add up to one long stall for a short command. A
    job's first step runs there too, not while its request is read."""
    from storeserver import scheduler as scheduler_module
    from storeserver.builds import ChunkedRead
    from storeserver.protocol import Request

    steps: list[str] = []

    def long_read(name: str) -> Any:
        for _ in range(3):
            steps.append(name)
            yield
        return {"items": [], "total": 0}

    real_execute = server.engine.execute

    def execute(command: str, args: dict[str, Any], **kw: Any) -> Any:
        if command == "find":
            return ChunkedRead("find", long_read(args["table"]))
        return real_execute(command, args, **kw)

    monkeypatch.setattr(server.engine, "execute", execute)
    for name in ("a", "b", "c"):
        assert server.handle(Request(1, "find", {"table": name})) is None  # goes on as a job
    assert steps == [] and server.jobs == 3  # nothing ran while the requests were read

    server.scheduler._run_jobs()  # a generous budget: one step each, in turn
    assert steps == ["a", "b", "c"]
    monkeypatch.setattr(scheduler_module, "JOB_BUDGET", 0.0)
    server.scheduler._run_jobs()  # no budget after the first step: the next pass goes on from b
    server.scheduler._run_jobs()
    assert steps == ["a", "b", "c", "a", "b"]
    while server.jobs:
        server.scheduler._run_jobs()
    assert sorted(steps) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


async def test_unknown_command_names_are_counted_together(client: StoreClient) -> None:
    """Any client can send any name; one entry per name would grow the stats (and the API's
    metric labels made of them) without bound."""
    for n in range(3):
        with pytest.raises(UnknownCommand):
            await client.call(f"bogus_{n}", {})
    commands = (await client.call("stats"))["commands"]
    assert commands["unknown"]["count"] == 3
    assert not [name for name in commands if name.startswith("bogus")]


async def test_hello_uptime_counts_from_when_the_store_listens(server) -> None:
    """Review: counted from the process start, a store that took JOB_STALE_SECONDS to load its
    data said so in its first HELLO, and the API's job sweep gave live jobs no grace."""
    assert 0 <= server.server_info()["uptime_s"] < 60
    server.started_at -= 1000  # as if loading had taken 1000 s before it listened
    assert 0 <= server.server_info()["uptime_s"] < 60


async def test_stats_uptime_does_not_follow_the_wall_clock_back(server, monkeypatch) -> None:
    """QA: computed from time.time(), an NTP step back by an hour read as a restart to an alert
    on memdb_store_uptime_seconds going down."""
    before = server.server_stats()["uptime_s"]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    assert server.server_stats()["uptime_s"] >= before
