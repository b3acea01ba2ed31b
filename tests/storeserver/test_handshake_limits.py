"""Connections before their handshake, over real sockets: caps per listener and per peer
address, the error frame a refused or dropped peer gets, and what may follow a HELLO."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator

import pytest

from storeserver import client as client_module
from storeserver import connection, handshakes, probe
from storeserver.client import StoreClient
from storeserver.protocol import (
    HANDSHAKE_FRAME_SIZE,
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Request,
    Result,
    encode,
    encode_request,
)
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.storeserver.jobs import wait_until
from tests.support.stack import free_port

SECRET = "s3cret-for-the-handshake-tests"


@pytest.fixture
async def tcp_server(sock_dir) -> AsyncIterator[StoreServer]:
    """A store on a Unix socket and on TCP (127.0.0.1), with a secret."""
    settings = StoreSettings(
        socket=sock_dir / "t.sock", tcp=f"127.0.0.1:{free_port()}", secret=SECRET
    )
    server = StoreServer(settings)
    await server.start()
    yield server
    await server.shutdown()


def tcp_address(server: StoreServer) -> tuple[str, int]:
    assert server.settings.tcp is not None
    host, _, port = server.settings.tcp.rpartition(":")
    return host, int(port)


async def idle_peers(server: StoreServer, sources: list[str]) -> list[asyncio.StreamWriter]:
    """A TCP connection from each source address that sends nothing, accepted by the store."""
    host, port = tcp_address(server)
    already = len(server.connections)
    writers = []
    for source in sources:
        _, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        writers.append(writer)
    await wait_until(lambda: len(server.connections) == already + len(sources))
    return writers


async def refusal(server: StoreServer, source: str) -> list[object]:
    """What a new TCP peer from ``source`` reads before the store closes it."""
    host, port = tcp_address(server)
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        return list(FrameDecoder().feed(await asyncio.wait_for(reader.read(), 5)))
    finally:
        writer.close()


async def assert_unix_client_served(server: StoreServer) -> None:
    """A client on the Unix socket (an API worker's) connects and is answered."""
    local = StoreClient(f"unix:{server.settings.socket}", secret=SECRET)
    try:
        assert (await local.call("ping"))["pong"]
    finally:
        await local.close()


async def test_idle_network_peers_do_not_lock_out_the_unix_socket(tcp_server):
    """QA: 128 idle TCP peers refused every new client, API workers on the Unix socket too,
    for as long as they kept reconnecting. The slots are counted per listener."""
    limit = handshakes.MAX_HANDSHAKES
    per_address = handshakes.MAX_HANDSHAKES_PER_ADDRESS
    sources = [f"127.0.0.{2 + i // per_address}" for i in range(limit)]
    peers = await idle_peers(tcp_server, sources)
    try:
        full = Error(0, "STORE_BUSY", "too many connections in their handshake", {"max": limit})
        assert await refusal(tcp_server, "127.0.0.100") == [full]
        await assert_unix_client_served(tcp_server)
    finally:
        for writer in peers:
            writer.close()


async def test_one_address_takes_at_most_its_share_of_the_tcp_slots(tcp_server):
    per_address = handshakes.MAX_HANDSHAKES_PER_ADDRESS
    peers = await idle_peers(tcp_server, ["127.0.0.2"] * per_address)
    try:
        error = Error(
            0,
            "STORE_BUSY",
            "too many connections in their handshake from this address",
            {"max": per_address},
        )
        assert await refusal(tcp_server, "127.0.0.2") == [error]
        other = StoreClient(f"tcp://{tcp_server.settings.tcp}", secret=SECRET)  # 127.0.0.1
        try:
            assert (await other.call("ping"))["pong"]
        finally:
            await other.close()
        peers.pop().close()  # its slot is free again
        await wait_until(lambda: len(tcp_server.connections) == per_address - 1)
        (again,) = await idle_peers(tcp_server, ["127.0.0.2"])
        peers.append(again)
    finally:
        for writer in peers:
            writer.close()
    await wait_until(lambda: len(tcp_server.handshakes) == 0)
    assert tcp_server.handshakes.by_address == {}


async def test_greeted_network_peers_leave_the_unix_socket_its_reserve(tcp_server, monkeypatch):
    """QA: 4,096 TCP connections of one host held every client slot, and an API worker on
    the Unix socket got STORE_BUSY. TCP peers take at most MAX_CLIENTS - UNIX_RESERVED."""
    monkeypatch.setattr(connection, "MAX_CLIENTS", 40)
    monkeypatch.setattr(connection, "UNIX_RESERVED", 8)
    per_address = handshakes.MAX_HANDSHAKES_PER_ADDRESS
    peers = await idle_peers(tcp_server, [f"127.0.0.{2 + i // per_address}" for i in range(32)])
    try:
        full = Error(0, "STORE_BUSY", "too many clients over TCP", {"max": 32})
        assert await refusal(tcp_server, "127.0.0.100") == [full]
        await assert_unix_client_served(tcp_server)
        peers.pop().close()  # its slot is free again
        await wait_until(lambda: tcp_server.network_clients == 31)
        peers += await idle_peers(tcp_server, ["127.0.0.100"])
    finally:
        for writer in peers:
            writer.close()
    await wait_until(lambda: tcp_server.network_clients == 0)


def tcp_options(transport: asyncio.BaseTransport) -> tuple[int, int, int, int, int]:
    sock = transport.get_extra_info("socket")
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    )


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux socket options")
async def test_both_ends_of_a_tcp_connection_watch_for_a_vanished_peer(tcp_server):
    """QA: a host gone without a word (powered off, a flow a firewall forgot) left its
    connections open in the store for good, and left a worker sending into a dead flow for
    ~15 minutes of 504s. Both ends have the kernel probe an idle peer and end a connection
    whose data goes unacknowledged; the kernel's own behaviour is not simulated here."""
    client = StoreClient(f"tcp://{tcp_server.settings.tcp}", secret=SECRET)
    try:
        assert (await client.call("ping"))["pong"]
        assert client._conn is not None and client._conn.transport is not None
        idle, unacked = client_module.STORE_IDLE_S, client_module.STORE_UNACKED_S
        assert tcp_options(client._conn.transport) == (1, idle, idle // 3, 3, unacked * 1000)
        (accepted,) = [c for c in tcp_server.connections if c.transport is not None]
        idle, unacked = connection.PEER_IDLE_S, connection.PEER_UNACKED_S
        assert tcp_options(accepted.transport) == (1, idle, idle // 3, 3, unacked * 1000)
    finally:
        await client.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_the_probe_reaches_a_store_on_ipv6(sock_dir):
    """QA: the probe opened an AF_INET socket whatever the host: a store on ``[::1]``, which
    the client and the API reach, failed the documented health check."""
    address = f"[::1]:{free_port()}"
    server = StoreServer(StoreSettings(socket=sock_dir / "t.sock", tcp=address, secret=SECRET))
    await server.start()
    try:
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(
            None, functools.partial(probe.check, f"tcp://{address}", secret=SECRET)
        )
        assert found["ready"] is True
    finally:
        await server.shutdown()


async def raw_exchange(path: str, payload: bytes) -> list[object]:
    """Send bytes on a fresh Unix connection; the frames the store sent before closing it."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(payload)
        await writer.drain()
        return list(FrameDecoder().feed(await asyncio.wait_for(reader.read(), 5)))
    finally:
        writer.close()


async def test_a_request_before_the_hello_is_told_why_it_is_closed(server):
    """QA: it was closed with no frame, where a wrong version or secret gets one."""
    got = await raw_exchange(str(server.settings.socket), encode(Request(1, "ping", {})))
    reason = "unexpected Request message before the handshake"
    assert got == [Error(0, "PROTOCOL_ERROR", reason, {})]


async def test_a_big_request_in_the_same_write_as_the_hello_is_answered(server):
    """QA: HELLO plus a 10 KB request in one write was judged by the handshake's 4 KiB
    limit ("frame of 10026 bytes exceeds the limit of 4096 after the handshake")."""
    request = encode_request(1, "kv_set", {"key": "k", "value": "v" * 10_000})
    assert len(request) > HANDSHAKE_FRAME_SIZE
    reader, writer = await asyncio.open_unix_connection(str(server.settings.socket))
    try:
        writer.write(encode(Hello(PROTOCOL_VERSION, None)) + request)
        decoder, got = FrameDecoder(), []
        while len(got) < 2:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                break  # closed: what came is all there is
            got += decoder.feed(data)
    finally:
        writer.close()
    assert isinstance(got[0], Hello) and got[1] == Result(1, True)
