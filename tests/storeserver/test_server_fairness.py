"""One client must not hurt the others: bounded work per loop turn, bounded memory for a client
that does not read, errors that always fit a frame, throttled warnings, capped handshakes."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgpack
import pytest
from structlog.testing import capture_logs

from storeserver import builds, handshakes
from storeserver import connection as connection_module
from storeserver.client import StoreClient
from storeserver.errors import BadRequest, NotFound, StoreUnavailable
from storeserver.protocol import (
    HANDSHAKE_FRAME_SIZE,
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Result,
    encode,
    encode_request,
)
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.storeserver.jobs import RecordingTransport, connect, held_fsync, wait_until


def replies(transport: RecordingTransport) -> list[Any]:
    """What the server sent after its HELLO."""
    return FrameDecoder().feed(bytes(transport.data))[1:]


async def raw_exchange(path: str, payload: bytes) -> bytes:
    """Send bytes on a fresh connection; return what the server sent before closing it."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


# -- bounded work per connection per loop turn ---------------------------------------------


async def test_a_connection_runs_what_it_sent_one_budget_per_loop_turn(server, monkeypatch):
    """Past its budget a connection's requests wait for the next loop turn, the connection
    unread meanwhile; the replies come in order, and reading resumes once all have run."""
    monkeypatch.setattr(connection_module, "TURN_BUDGET", 0.0, raising=False)
    conn, transport = connect(server)
    conn.data_received(b"".join(encode_request(i, "ping", {}) for i in range(1, 6)))
    assert [m.request_id for m in replies(transport)] == [1]
    assert not transport.reading
    for _ in range(4):
        await asyncio.sleep(0)
    assert [m.request_id for m in replies(transport)] == [1, 2, 3, 4, 5]
    assert transport.reading


async def test_what_waits_stays_bytes_until_its_turn(server, monkeypatch):
    """A read of many small requests is decoded a batch at a time (a decoded request takes
    about ten times its bytes); each turn goes on where the last stopped."""
    monkeypatch.setattr(connection_module, "TURN_BUDGET", 0.0, raising=False)
    conn, transport = connect(server)
    frames = [encode_request(i, "ping", {}) for i in range(1, 301)]
    conn.data_received(b"".join(frames))
    assert [m.request_id for m in replies(transport)] == [1]
    assert conn.decoder.buffered == sum(len(f) for f in frames[connection_module.TURN_BATCH :])
    await wait_until(lambda: len(replies(transport)) == 300)
    assert [m.request_id for m in replies(transport)] == list(range(1, 301))
    assert transport.reading and conn.decoder.buffered == 0


async def test_a_pipelined_burst_lets_other_clients_in(server, client):
    """QA: 5,500 pipelined counts in one write made another connection's ping wait 34 s."""
    rows = [{"op": "insert", "table": "burst", "record": {"n": i}} for i in range(1000)]
    await client.call("batch", {"ops": rows})
    burst = 1000
    count = {"table": "burst", "where": [["n", "gt", -1]]}  # unindexed: every row, each time
    reader, writer = await asyncio.open_unix_connection(str(server.settings.socket))
    try:
        writer.write(encode(Hello(PROTOCOL_VERSION, None)))
        writer.write(b"".join(encode_request(i, "count", count) for i in range(1, burst + 1)))
        await writer.drain()

        assert (await client.call("ping"))["pong"]
        counted_by_then = server.op_stats.by_command["count"].count
        assert counted_by_then < burst / 2  # the ping did not wait for the whole burst

        decoder, got = FrameDecoder(), []
        while len(got) < burst + 1:
            got += decoder.feed(await asyncio.wait_for(reader.read(65536), 30))
        # A count that runs past 5 ms (a slow machine) goes on as a job and answers after
        # the quick ones behind it: every request is answered once, matched by its id.
        assert sorted(m.request_id for m in got[1:]) == list(range(1, burst + 1))
        assert all(isinstance(m, Result) and m.value == 1000 for m in got[1:])
    finally:
        writer.close()


async def test_a_read_gone_on_as_a_job_answers_after_quick_requests_behind_it(
    server, client, monkeypatch
):
    """A read still running after its first step (``builds.spill``; 5 ms, here none) goes on
    as a job: the quick requests sent behind it answer first, each matched by its id, and the
    read answers as of when it arrived, whatever is written meanwhile."""
    await client.call(
        "batch", {"ops": [{"op": "insert", "table": "t", "record": {"n": i}} for i in range(50)]}
    )
    monkeypatch.setattr(builds, "STEP_SECONDS", 0.0)
    reader, writer = await asyncio.open_unix_connection(str(server.settings.socket))
    try:
        writer.write(encode(Hello(PROTOCOL_VERSION, None)))
        writer.write(
            encode_request(1, "count", {"table": "t", "where": [["n", "gt", -1]]})
            + encode_request(2, "insert", {"table": "t", "record": {"n": 50}})
            + encode_request(3, "ping", {})
        )
        await writer.drain()
        decoder, got = FrameDecoder(), []
        while len(got) < 4:
            got += decoder.feed(await asyncio.wait_for(reader.read(65536), 10))
        assert [m.request_id for m in got[1:]] == [2, 3, 1]
        assert isinstance(got[3], Result) and got[3].value == 50
    finally:
        writer.close()


@pytest.fixture
async def always(sock_dir, tmp_path):
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="always")
    server = StoreServer(settings)
    assert server.durability is not None
    server.durability.load()
    server.durability.start(asyncio.get_running_loop())
    yield server
    server.durability.close()


async def test_under_fsync_always_later_turns_wait_behind_held_replies(always, monkeypatch):
    """STORE_FSYNC=always holds a write's reply until it is on disk; the reads pipelined
    behind it, run in later turns, are held behind it too: replies keep their order."""
    monkeypatch.setattr(connection_module, "TURN_BUDGET", 0.0, raising=False)
    dur = always.durability
    assert dur is not None and dur.log is not None
    on_disk = held_fsync(monkeypatch, dur.log)
    conn, transport = connect(always)
    try:
        conn.data_received(
            encode_request(1, "insert", {"table": "t", "record": {"id": "r0"}})
            + encode_request(2, "get", {"table": "t", "id": "r0"})
            + encode_request(3, "ping", {})
        )
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert replies(transport) == []  # all three turns ran; nothing is sent before the disk
    finally:
        on_disk.set()
    await wait_until(lambda: len(replies(transport)) == 3)
    assert [m.request_id for m in replies(transport)] == [1, 2, 3]
    assert conn.held == 0


# -- a client that does not read ------------------------------------------------------------


async def test_a_client_that_does_not_read_stops_its_requests_running(server, client):
    """QA: a connection that sent 460 KB of kv_get for a 20 KB value and never read took the
    store from 133 to 475 MB. Now what it sent waits, unrun, until it reads."""
    await client.call("kv_set", {"key": "big", "value": "v" * 20_000})
    sent = 2000
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, str(server.settings.socket))
    try:
        await loop.sock_sendall(sock, encode(Hello(PROTOCOL_VERSION, None)))
        frames = b"".join(encode_request(i, "kv_get", {"key": "big"}) for i in range(1, sent + 1))
        await loop.sock_sendall(sock, frames)
        await asyncio.sleep(0.5)
        ran = server.op_stats.by_command["kv_get"].count
        # The socket's buffers, the transport's (64 KiB) and one turn's replies (256 KiB):
        # some dozens of 20 KB replies, not 2,000 (40 MB).
        assert ran < 100
        buffered = [c.transport.get_write_buffer_size() for c in server.connections if c.transport]
        assert max(buffered) < 1 << 20

        decoder, got = FrameDecoder(), []
        while len(got) < sent + 1:
            got += decoder.feed(await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10))
        assert [m.request_id for m in got[1:]] == list(range(1, sent + 1))
        assert server.op_stats.by_command["kv_get"].count == sent
    finally:
        sock.close()


# -- errors always fit a frame --------------------------------------------------------------


async def test_an_error_quoting_a_huge_argument_is_cut_to_fit_a_frame(client):
    """QA: a 9 MB id made an 18 MB NOT_FOUND, over the client's 16 MiB frame limit: the
    client dropped the connection and every call in flight on it. A missing id is now quoted
    cut to an id's length (``records.no_record``); the frame's own cut of a huge error is
    tested in test_protocol (``encode_error``)."""
    await client.call("insert", {"table": "t", "record": {"id": "a"}})
    huge = client.call("get", {"table": "t", "id": "x" * 9_000_000}, timeout=10)
    others = [client.call("get", {"table": "t", "id": "a"}) for _ in range(5)]
    outcomes = await asyncio.gather(huge, *others, return_exceptions=True)
    error = outcomes[0]
    assert isinstance(error, NotFound)
    assert len(error.message) < 300
    assert error.details == {"table": "t", "id": "x" * 128 + "..."}
    assert [o["id"] for o in outcomes[1:]] == ["a"] * 5  # type: ignore[index]


async def test_a_bad_table_argument_is_quoted_briefly(client):
    """QA: table=[None]*3_000_000 made an 18 MB BAD_REQUEST (its whole repr, twice)."""
    with pytest.raises(BadRequest) as bad:
        # 2,000,000: more would pass the frame's entries (protocol.MAX_REQUEST_ENTRIES)
        await client.call("get", {"table": [None] * 2_000_000, "id": "x"}, timeout=10)
    assert bad.value.details["table"] == "[None, None, None, None, None, None, ...]"
    with pytest.raises(BadRequest) as unknown:
        await client.call("get", {"table": "t", "id": "x", "k" * 9_000_000: 1}, timeout=10)
    assert len(unknown.value.message) < 200 and len(unknown.value.details["arg"]) == 100
    assert (await client.call("ping"))["pong"]


# -- warnings any peer can cause --------------------------------------------------------------


async def test_dropped_client_warnings_are_throttled(sock_dir):
    """QA: wrong-secret connections in a loop wrote 63,591 client_dropped lines in 5 s."""
    srv = StoreServer(StoreSettings(socket=sock_dir / "a.sock", secret="right-secret"))
    await srv.start()
    wrong = encode(Hello(PROTOCOL_VERSION, "wrong"))
    try:
        with capture_logs() as logs:
            for _ in range(30):
                await raw_exchange(str(srv.settings.socket), wrong)
            await asyncio.sleep(1.1)  # the second ends: the summary line comes
    finally:
        await srv.shutdown()
    dropped = [x for x in logs if x["event"] == "client_dropped"]
    summaries = [x for x in logs if x["event"] == "client_dropped_suppressed"]
    assert dropped and len(dropped) <= 20  # 10 a second
    assert summaries and len(dropped) + sum(x["suppressed"] for x in summaries) == 30
    assert summaries[-1]["message"] == f"suppressed {summaries[-1]['suppressed']} more"
    assert summaries[-1]["last"]["reason"] == "authentication failed"


# -- peers that do not authenticate -----------------------------------------------------------


async def test_before_the_handshake_a_frame_may_hold_a_hello_only(server):
    """QA: 4,000 peers each sending 64 KiB less a byte of a frame took 256 MB."""
    assert HANDSHAKE_FRAME_SIZE == 4096
    with capture_logs() as logs:
        closed = await raw_exchange(str(server.settings.socket), struct.pack(">I", 5000))
    reason = "frame of 5000 bytes exceeds the limit of 4096 before the handshake"
    assert FrameDecoder().feed(closed) == [Error(0, "PROTOCOL_ERROR", reason, {})]
    (dropped,) = [x for x in logs if x["event"] == "client_dropped"]
    assert dropped["reason"] == reason


async def test_a_secret_longer_than_the_handshake_limit_still_connects(sock_dir):
    secret = "s" * 10_000
    srv = StoreServer(StoreSettings(socket=sock_dir / "l.sock", secret=secret))
    await srv.start()
    client = StoreClient(f"unix:{srv.settings.socket}", secret=secret)
    try:
        await client.connect()
        assert (await client.call("ping"))["pong"]
    finally:
        await client.close()
        await srv.shutdown()


async def test_connections_in_their_handshake_are_capped(server, monkeypatch):
    monkeypatch.setattr(handshakes, "MAX_HANDSHAKES", 3)
    path = str(server.settings.socket)
    silent = [(await asyncio.open_unix_connection(path))[1] for _ in range(3)]
    late = StoreClient(f"unix:{path}")
    try:
        await wait_until(lambda: len(server.connections) == 3)
        with capture_logs() as logs:
            refused = StoreClient(f"unix:{path}")
            with pytest.raises(StoreUnavailable, match="too many connections in their handshake"):
                await refused.connect()
        (line,) = [x for x in logs if x["event"] == "client_refused"]
        assert line["reason"] == "too many connections in their handshake"
        silent[0].close()
        await wait_until(lambda: len(server.connections) == 2)
        await late.connect()
        assert len(server.handshakes) == 2  # greeted: no longer counted
    finally:
        await late.close()
        for writer in silent:
            writer.close()


async def test_a_client_past_max_clients_is_told_why(server, client, monkeypatch):
    monkeypatch.setattr(connection_module, "MAX_CLIENTS", 1)
    data = await raw_exchange(str(server.settings.socket), b"")
    (error,) = FrameDecoder().feed(data)
    assert error == Error(0, "STORE_BUSY", "too many clients", {"max": 1})
    with pytest.raises(StoreUnavailable, match="too many clients"):
        await StoreClient(f"unix:{server.settings.socket}").connect()
    assert (await client.call("ping"))["pong"]


async def test_clients_are_refused_before_they_take_the_stores_own_open_files(server, client):
    """QA: under an open-file limit of 64, clients took every file: the store's next log could
    not be opened (every write refused) and clients past it were reset without a word."""
    server.open_file_clients = 1  # what open_file_clients() found room for
    data = await raw_exchange(str(server.settings.socket), b"")
    (error,) = FrameDecoder().feed(data)
    assert error == Error(0, "STORE_BUSY", "too many clients", {"max": 1})
    assert (await client.call("ping"))["pong"]


@pytest.mark.parametrize(
    ("limits", "raised_to", "clients"),
    [
        ((1024, 1024), None, 1024 - connection_module.FD_RESERVE),
        ((1024, 4096), (4096, 4096), 4096 - connection_module.FD_RESERVE),
        ((1024, 1_048_576), (4096 + connection_module.FD_RESERVE, 1_048_576), 4096),
        ((1_048_576, 1_048_576), None, 1_048_576 - connection_module.FD_RESERVE),
        ((40, 40), None, 8),
        ((20, 20), None, 1),
    ],
)
def test_the_open_file_limit_is_raised_as_far_as_clients_need(
    monkeypatch: pytest.MonkeyPatch,
    limits: tuple[int, int],
    raised_to: tuple[int, int] | None,
    clients: int,
) -> None:
    raised: list[tuple[int, int]] = []
    resource = connection_module.resource
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits)
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: raised.append(value))
    assert connection_module.open_file_clients() == clients
    assert raised == ([] if raised_to is None else [raised_to])


# -- contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ping", "stats", "snapshot"])
async def test_commands_the_server_answers_take_no_unknown_arguments(client, command):
    with pytest.raises(BadRequest, match="unknown argument 'bogus'") as bad:
        await client.call(command, {"bogus": 1})
    assert bad.value.details == {"arg": "bogus"}


async def test_a_hello_and_a_bad_frame_in_one_read(server):
    """The HELLO is answered, then the connection closed for what came after it."""
    hello = encode(Hello(PROTOCOL_VERSION, None))
    with capture_logs() as logs:
        data = await raw_exchange(
            str(server.settings.socket), hello + struct.pack(">I", 1) + b"\xc1"
        )
    answer, error = FrameDecoder().feed(data)
    assert isinstance(answer, Hello)
    reason = "undecodable frame: FormatError after the handshake"
    assert error == Error(0, "PROTOCOL_ERROR", reason, {})
    (dropped,) = [x for x in logs if x["event"] == "client_dropped"]
    assert dropped["reason"] == reason


@pytest.mark.parametrize("kind", [0.0, False])
async def test_a_request_kind_must_be_the_int_zero(server, kind):
    hello = encode(Hello(PROTOCOL_VERSION, None))
    body = msgpack.packb([kind, 1, "ping", {}])
    with capture_logs() as logs:
        data = await raw_exchange(
            str(server.settings.socket), hello + struct.pack(">I", len(body)) + body
        )
    hello, error = FrameDecoder().feed(data)  # no reply to it: the reason it is closed
    assert isinstance(hello, Hello)
    assert error == Error(0, "PROTOCOL_ERROR", "malformed message after the handshake", {})
    (dropped,) = [x for x in logs if x["event"] == "client_dropped"]
    assert dropped["reason"] == "malformed message after the handshake"
