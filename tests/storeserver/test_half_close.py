"""A client that shuts down its writing side after its requests still gets every reply; one
that closes its socket does not keep its long commands running."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from storeserver import connection as connection_module
from storeserver.connection import StoreConnection
from storeserver.protocol import PROTOCOL_VERSION, FrameDecoder, Hello, Result, encode
from storeserver.protocol import encode_request as request
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.storeserver.jobs import HeldReads, RecordingTransport, wait_until
from tests.support.stack import free_port

HELLO = encode(Hello(PROTOCOL_VERSION, None))


async def half_close(path: str, payload: bytes) -> tuple[asyncio.StreamReader, Any]:
    """Connect, send ``payload``, shut down the writing side; the reader for the replies."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    return reader, writer


async def replies_until_closed(reader: asyncio.StreamReader) -> list[Any]:
    """Every frame the store sends, after its HELLO, until it closes the connection."""
    return FrameDecoder().feed(await asyncio.wait_for(reader.read(), 10))[1:]


async def test_a_long_command_sent_before_a_half_close_is_answered(server):
    """QA: a client that sent a long command and then half-closed (SHUT_WR) never got the
    reply: the store closed on EOF and dropped the job."""
    held = HeldReads(server.engine)
    reader, writer = await half_close(
        str(server.settings.socket), HELLO + request(7, "find", {"table": "t", "n": 3})
    )
    try:
        await wait_until(lambda: server.jobs == 1)
        held.release = True
        assert await replies_until_closed(reader) == [Result(7, {"items": [], "total": 3})]
    finally:
        writer.close()
    await wait_until(lambda: not server.connections)  # closed once nothing was owed


async def test_requests_left_for_later_turns_are_answered_after_a_half_close(server, monkeypatch):
    monkeypatch.setattr(connection_module, "TURN_BUDGET", 0.0)  # one request per turn
    burst = b"".join(request(i, "ping", {}) for i in range(1, 201))
    reader, writer = await half_close(str(server.settings.socket), HELLO + burst)
    try:
        got = await replies_until_closed(reader)
    finally:
        writer.close()
    assert [m.request_id for m in got] == list(range(1, 201))


async def test_a_held_write_reply_is_sent_after_a_half_close(sock_dir, tmp_path):
    """STORE_FSYNC=always holds a write's reply until it is on disk: it still goes out."""
    settings = StoreSettings(socket=sock_dir / "a.sock", data_dir=tmp_path / "d", fsync="always")
    server = StoreServer(settings)
    await server.start()
    try:
        insert = request(1, "insert", {"table": "t", "record": {"id": "r1"}})
        reader, writer = await half_close(str(settings.socket), HELLO + insert)
        try:
            (reply,) = await replies_until_closed(reader)
        finally:
            writer.close()
        assert reply.request_id == 1 and reply.value["id"] == "r1"
    finally:
        await server.shutdown()


async def test_a_closed_socket_abandons_its_long_commands_at_once(server):
    """A Unix peer that closed (not just shut down its writing side) reads nothing: its
    long reads stop now instead of running to the end for nobody."""
    held = HeldReads(server.engine)
    reader, writer = await asyncio.open_unix_connection(str(server.settings.socket))
    writer.write(HELLO + request(1, "find", {"table": "t", "n": 1}))
    # The HELLO's answer is read: a close with it unread would reach the store as a reset.
    decoder, answered = FrameDecoder(), []
    while not answered:
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "closed before its HELLO was answered"
        answered = decoder.feed(data)
    await wait_until(lambda: server.jobs == 1)
    writer.close()
    await wait_until(lambda: not server.connections)
    assert server.jobs == 0 and held.alive == 0


async def test_a_half_closed_tcp_connection_gets_its_long_commands_reply(sock_dir):
    secret = "s3cret-for-the-test"
    settings = StoreSettings(
        socket=sock_dir / "t.sock", tcp=f"127.0.0.1:{free_port()}", secret=secret
    )
    server = StoreServer(settings)
    held = HeldReads(server.engine)
    try:
        await server.start()
        assert settings.tcp is not None
        host, _, port = settings.tcp.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            encode(Hello(PROTOCOL_VERSION, secret)) + request(2, "find", {"table": "t", "n": 5})
        )
        writer.write_eof()
        try:
            await wait_until(lambda: server.jobs == 1)
            held.release = True
            assert await replies_until_closed(reader) == [Result(2, {"items": [], "total": 5})]
        finally:
            writer.close()
    finally:
        await server.shutdown()


class _SocketTransport(RecordingTransport):
    """A recording transport over one end of a real socket pair: the store asks the OS
    whether the peer (the other end) hung up."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


async def test_a_closed_socket_is_seen_while_its_pipelined_requests_wait(server, monkeypatch):
    """Reading is paused while a connection's requests wait for later turns, so the close
    of a client that pipelined 50 long reads was seen only once all were run or queued (QA:
    the store then ran them ~0.5 s for nobody). The next turn sees it and ends them."""
    monkeypatch.setattr(connection_module, "TURN_BUDGET", 0.0)  # one request per turn
    held = HeldReads(server.engine)
    ours, peer = socket.socketpair()
    transport = _SocketTransport(ours)
    conn = StoreConnection(server)
    conn.connection_made(transport)  # type: ignore[arg-type]
    try:
        finds = b"".join(request(i, "find", {"table": "t", "n": i}) for i in range(1, 51))
        conn.data_received(HELLO + finds)
        assert held.executed == 1 and conn._backlog  # the other 49 wait for later turns
        peer.close()
        await wait_until(lambda: transport.aborted)
        conn.connection_lost(None)  # as the real transport does after ``abort``
        assert server.jobs == 0 and held.alive == 0 and not server.scheduler.waiting
    finally:
        ours.close()
