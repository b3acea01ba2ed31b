"""A start that replayed several logs compacts them: every start opens a new log generation,
and a store restarted often with few writes kept one more file per start (QA: 20 ``kill -9``,
21 logs, no snapshot)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from storeserver.datadir import DataDir
from storeserver.engine import Engine
from storeserver.logfile import encode_entry
from storeserver.protocol import pack_value, unpack_value
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.storeserver.jobs import wait_until
from tests.storeserver.test_persistence import connect, dump_all, start_store


def state_of(root: Path) -> list[Any]:
    """What a store loading ``root`` holds (read without starting one)."""
    engine = Engine()
    DataDir(root).load(engine.apply_change)
    return unpack_value(pack_value([list(change) for change in engine.iter_state()]))


def write_history(root: Path, commands_per_log: list[list[tuple[str, dict[str, Any]]]]) -> None:
    """Log files 1..N, each holding the journal of its commands (one entry per command), as
    stores killed after those writes leave them."""
    root.mkdir(mode=0o700)
    engine = Engine()
    for generation, commands in enumerate(commands_per_log, start=1):
        data = b""
        for command, args in commands:
            engine.run_job(engine.execute(command, args))
            data += encode_entry([list(change) for change in engine.drain_changes()])
        DataDir(root).log_path(generation).write_bytes(data)


def names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != "store.lock")


HISTORY = [
    [
        ("create_table", {"table": "t", "indexes": [{"field": "k", "unique": True}]}),
        ("insert", {"table": "t", "record": {"id": "a", "k": 1}}),
    ],
    [("patch", {"table": "t", "id": "a", "changes": {"k": 2}})],
    [],  # a store killed before its first write
    [("insert", {"table": "u", "record": {"id": "b"}}), ("kv_set", {"key": "s", "value": 1})],
]


@pytest.fixture
async def start_server(sock_dir: Path) -> AsyncIterator[Callable[[Path], Awaitable[StoreServer]]]:
    """Start a persistent server in this loop on ``root``; shut down after the test, failed
    or not (a server left running holds the loop at its end)."""
    servers: list[StoreServer] = []

    async def start(root: Path) -> StoreServer:
        settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=root, fsync="no")
        server = StoreServer(settings)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        if server.ready:
            await server.shutdown()


async def test_a_start_that_replayed_several_logs_writes_a_snapshot_and_prunes_them(
    start_server: Any, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_history(root, HISTORY)
    before = state_of(root)
    assert names(root) == [f"log-000000000{g}.aof" for g in (1, 2, 3, 4)]

    with capture_logs() as logs:
        server = await start_server(root)
    assert server.durability is not None
    await wait_until(lambda: server.durability.last_snapshot is not None)
    assert [e["logs_replayed"] for e in logs if e["event"] == "compacting_after_start"] == [4]
    # Logs 1-4 replayed, log 5 opened at start and rotated by the snapshot: 6 takes the writes.
    assert names(root) == ["log-0000000006.aof", "snapshot.mdb"]
    assert server.durability.last_snapshot["generation"] == 5
    assert state_of(root) == before
    await server.shutdown()
    assert state_of(root) == before


async def test_a_start_that_replayed_one_log_does_not_snapshot(
    start_server: Any, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_history(root, HISTORY[:1])
    with capture_logs() as logs:
        server = await start_server(root)
    assert server.durability is not None
    assert server.durability.status()["snapshot_in_progress"] is False
    assert not [e for e in logs if e["event"] in ("compacting_after_start", "snapshot_started")]
    assert names(root) == ["log-0000000001.aof", "log-0000000002.aof"]
    await server.shutdown()


async def test_stores_killed_again_and_again_keep_a_bounded_data_directory(
    sock_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    for i in range(5):
        store = start_store(sock_dir, data_dir, STORE_FSYNC="always")
        client = await connect(store)
        await client.call("insert", {"table": "t", "record": {"id": f"r{i}"}})
        for _ in range(200):  # the compaction a start may have begun: let it end first
            if not (await client.call("stats"))["persistence"]["snapshot_in_progress"]:
                break
            await asyncio.sleep(0.05)
        await client.close()
        store.proc.send_signal(signal.SIGKILL)
        store.proc.wait()
        store.close()
        # At most the snapshot and the logs of two starts: never one more file per start.
        assert len(list(data_dir.glob("log-*.aof"))) <= 2, names(data_dir)

    store = start_store(sock_dir, data_dir)
    client = await connect(store)
    assert [r["id"] for r in (await dump_all(client))["t"]] == [f"r{i}" for i in range(5)]
    await client.close()
    assert store.stop() == 0
    store.close()
