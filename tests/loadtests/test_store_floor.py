"""``loadtests.store_floor``: the no-work server ``make bench-store`` measures the floor with."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loadtests import store_floor
from loadtests.store_results import build_rows
from storeserver.protocol import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    Request,
    Result,
    encode,
)


def test_every_frame_gets_the_canned_get_reply_whatever_the_reads(tmp_path: Path) -> None:
    async def exchange() -> list[object]:
        path = str(tmp_path / "floor.sock")
        loop = asyncio.get_running_loop()
        reply = store_floor.canned_reply()
        server = await loop.create_unix_server(lambda: store_floor.FloorConnection(reply), path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            frames = encode(Hello(PROTOCOL_VERSION, None))
            frames += b"".join(
                encode(Request(i, "get", {"table": "t", "id": "x"})) for i in (1, 2, 3)
            )
            # Split mid-frame: the server must keep the partial frame and answer it later.
            writer.write(frames[:7])
            await writer.drain()
            writer.write(frames[7:])
            await writer.drain()
            data = await reader.readexactly(4 * len(reply))
            writer.close()
            await writer.wait_closed()
        return FrameDecoder().feed(data)

    messages = asyncio.run(exchange())
    assert len(messages) == 4
    for message in messages:
        assert isinstance(message, Result)
        record = message.value
        assert record["id"] == "o0000001" and record["version"] == 1
        assert {"created_at", "updated_at", "total_price"} <= set(record)


def _case(server: str, command: str, depth: int, cpu: float) -> dict[str, object]:
    return {
        "server": server,
        "command": command,
        "depth": depth,
        "server_cpu_us": cpu,
        "ops_per_s": 1000.0,
    }


def test_the_floor_rows_sit_beside_the_get_rows_with_the_work_above_the_floor() -> None:
    data = {
        "load": {"connections": 50, "pipeline": 16},
        "store_cases": [
            _case("store", kind, depth, cpu)
            for depth, cpu in ((1, 19.0), (16, 8.5))
            for kind in ("get", "insert")
        ],
        "redis_cases": [
            _case("redis", command, depth, 5.0) for depth in (1, 16) for command in ("GET", "SET")
        ],
        "floor_cases": [_case("floor", "get", 1, 12.0), _case("floor", "get", 16, 2.5)],
    }
    rows = {row.figure: row for row in build_rows(data)}
    floor = rows["floor: uvloop server, canned get reply, no work, not pipelined"]
    assert floor.ours == 12.0 and floor.anchor == 5.0
    assert rows["store CPU per get above that floor, not pipelined"].ours == 7.0
    assert rows["store CPU per get above that floor, 16 in flight/conn"].ours == 6.0
    # Without a floor run (an older results file) there are no floor rows.
    del data["floor_cases"]
    assert not [f for f in (r.figure for r in build_rows(data)) if "floor" in f]
