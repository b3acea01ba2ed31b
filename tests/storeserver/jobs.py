"""Driving the store server by hand in tests: long commands' jobs, a transport that records
what the server sends, and waiting for a condition on the running loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from storeserver.builds import ChunkedRead
from storeserver.connection import StoreConnection
from storeserver.engine import Engine
from storeserver.protocol import PROTOCOL_VERSION, FrameDecoder, Hello, encode
from storeserver.server import StoreServer


def finish(engine: Engine, job: Any) -> tuple[int, Any]:
    """``(steps taken, result)`` of advancing ``job`` until it is done."""
    steps, done, result = 0, False, None
    while not done:
        done, result = engine.advance(job)
        steps += 1
    return steps, result


class RecordingTransport:
    """What ``StoreConnection`` writes, kept; nothing goes out once aborted (as a real one)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.aborted = False
        self.reading = True  # flow control: the server pauses reading while requests wait

    def write(self, data: bytes) -> None:
        if not self.aborted:
            self.data += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def sent_ids(transport: RecordingTransport) -> list[int]:
    """The request ids of the replies written to ``transport`` so far, in order."""
    return [m.request_id for m in FrameDecoder().feed(bytes(transport.data))]


async def wait_until(condition: Any, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


class HeldReads:
    """``engine.execute`` answering every ``find`` that names ``n`` with a long read that
    steps until released, then answers ``total: n`` (holding a stand-in for a candidate
    list meanwhile); counts those finds executed. Other commands run as usual."""

    def __init__(self, engine: Engine) -> None:
        self.executed = 0
        self.alive = 0  # long reads made and not yet closed (each would hold a row list)
        self.release = False
        real_execute = engine.execute

        def execute(command: str, args: dict[str, Any], **kw: Any) -> Any:
            if command == "find" and "n" in args:
                self.executed += 1
                return ChunkedRead("find", self._read(args["n"]))
            return real_execute(command, args, **kw)

        engine.execute = execute  # type: ignore[method-assign]

    def _read(self, n: int) -> Any:
        self.alive += 1
        try:
            while not self.release:
                yield
            return {"items": [], "total": n}
        finally:
            self.alive -= 1


def connect(server: StoreServer) -> tuple[StoreConnection, RecordingTransport]:
    """A greeted connection to ``server`` over a recording transport (no socket)."""
    transport = RecordingTransport()
    conn = StoreConnection(server)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(encode(Hello(PROTOCOL_VERSION, None)))
    return conn, transport


def held_fsync(
    monkeypatch: pytest.MonkeyPatch, log: Any, calls: list[int] | None = None
) -> threading.Event:
    """A slow disk: ``log.fsync`` waits (at most 10 s) until the returned event is set, then
    syncs; each call is counted in ``calls`` as it starts."""
    disk, fsync = threading.Event(), log.fsync

    def slow_fsync() -> None:
        if calls is not None:
            calls.append(1)
        disk.wait(10)
        fsync()

    monkeypatch.setattr(log, "fsync", slow_fsync)
    return disk
