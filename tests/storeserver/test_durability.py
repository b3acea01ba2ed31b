"""The log's write path in-process: one entry per loop turn, a command never split."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from storeserver import durability
from storeserver.engine import Engine
from storeserver.persistence import DataDir, read_entries
from storeserver.protocol import PROTOCOL_VERSION, Hello, encode, encode_request
from storeserver.server import StoreConnection, StoreServer
from storeserver.settings import StoreSettings


class RecordingTransport:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.fixture
async def persistent(sock_dir, tmp_path):
    """A persistent server fed by hand: each ``data_received`` call is one loop turn's input."""
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="no")
    server = StoreServer(settings)
    assert server.durability is not None
    server.durability.load()
    server.durability.start(asyncio.get_running_loop())
    conn = StoreConnection(server)
    conn.connection_made(RecordingTransport())  # type: ignore[arg-type]
    conn.data_received(encode(Hello(PROTOCOL_VERSION, None)))
    yield server, conn
    server.durability.close()


def inserts(ids: range) -> bytes:
    """Insert frames for records ``r<i>``, sent together (one read, one loop turn)."""
    return b"".join(
        encode_request(
            i, "insert", {"table": "t", "record": {"id": f"r{i}", "price": Decimal("1.50")}}
        )
        for i in ids
    )


def log_entries(server: StoreServer) -> list[list[Any]]:
    assert server.durability is not None and server.durability.log is not None
    return list(read_entries(server.durability.log.path, allow_torn_tail=False))


async def test_the_commands_of_one_loop_turn_share_one_entry(persistent):
    server, conn = persistent
    conn.data_received(inserts(range(5)))
    await asyncio.sleep(0)  # the end of the loop turn: the entry is written
    (entry,) = log_entries(server)
    assert [c[2]["id"] for c in entry if c[0] == "put"] == [f"r{i}" for i in range(5)]
    conn.data_received(inserts(range(5, 7)))  # a later turn
    await asyncio.sleep(0)
    assert len(log_entries(server)) == 2

    replayed = Engine()
    DataDir(server.durability.dir.root).load(replayed.apply_change)
    assert list(replayed.iter_state()) == list(server.engine.iter_state())


async def test_a_full_entry_is_closed_between_commands_never_inside_one(persistent, monkeypatch):
    server, conn = persistent
    monkeypatch.setattr(durability, "ENTRY_CHANGES", 3)
    conn.data_received(inserts(range(4)))  # each insert: put + audit (the first also creates t)
    await asyncio.sleep(0)
    entries = log_entries(server)
    assert len(entries) > 1
    for entry in entries:
        puts = [c[2]["id"] for c in entry if c[0] == "put"]
        audited = [c[1][7] for c in entry if c[0] == "audit"]
        assert puts == audited  # each command's put and its audit entry stay together
    assert sum(len(e) for e in entries) == 1 + 4 * 2
