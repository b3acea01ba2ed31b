"""Server and client over a real Unix socket (server in this test's loop)."""

from __future__ import annotations

import asyncio
import socket
import stat
import struct
import subprocess
import sys

import msgpack
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from storeserver.client import StoreClient
from storeserver.errors import (
    BadRequest,
    Conflict,
    LimitExceeded,
    MemoryLimit,
    NotFound,
    SecretRefused,
    StoreUnavailable,
    UnknownCommand,
)
from storeserver.memory import MemoryGauge
from storeserver.protocol import (
    HANDSHAKE_FRAME_SIZE,
    MAX_REQUEST_ENTRIES,
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Request,
    Result,
    encode,
)
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings


async def test_ping_reports_ready(client):
    result = await client.call("ping")
    assert result["pong"] is True and result["ready"] is True
    assert client.server_info["server"] == "memdb-store"


async def test_insert_then_get_round_trip(client):
    created = await client.call("insert", {"table": "t", "record": {"name": "ada", "n": 1}})
    assert created["version"] == 1
    fetched = await client.call("get", {"table": "t", "id": created["id"]})
    assert fetched == created


async def test_errors_arrive_as_their_classes(client):
    await client.call("create_table", {"table": "u", "indexes": [{"field": "e", "unique": True}]})
    await client.call("insert", {"table": "u", "record": {"e": "x"}})
    with pytest.raises(Conflict) as conflict:
        await client.call("insert", {"table": "u", "record": {"e": "x"}})
    assert conflict.value.details["reason"] == "unique"
    with pytest.raises(NotFound):
        await client.call("get", {"table": "u", "id": "nope"})
    with pytest.raises(UnknownCommand):
        await client.call("no_such_command", {})
    with pytest.raises(BadRequest):
        await client.call("get", {"table": "u"})  # missing id
    with pytest.raises(BadRequest):
        await client.call("get", {"table": 5, "id": []})  # wrong types


async def test_unencodable_arguments_fail_in_the_client(client):
    with pytest.raises(BadRequest):
        await client.call("insert", {"table": "t", "record": {"x": {1, 2}}})
    assert (await client.call("ping"))["pong"]


async def test_pipelined_concurrent_requests_from_many_tasks(client):
    async def writer(i: int) -> str:
        rec = await client.call("insert", {"table": "p", "record": {"i": i}})
        got = await client.call("get", {"table": "p", "id": rec["id"]})
        assert got["i"] == i
        return rec["id"]

    ids = await asyncio.gather(*(writer(i) for i in range(500)))
    assert len(set(ids)) == 500
    assert await client.call("count", {"table": "p"}) == 500


async def test_one_connection_carries_requests_in_flight(server):
    """Several requests written before any reply is read come back, matched by id."""
    reader, writer = await asyncio.open_unix_connection(str(server.settings.socket))
    writer.write(encode(Hello(PROTOCOL_VERSION, None)))
    writer.write(b"".join(encode(Request(i, "ping", {})) for i in range(10, 20)))
    await writer.drain()
    decoder = FrameDecoder()
    got: list = []
    while len(got) < 11:
        got += decoder.feed(await reader.read(65536))
    assert isinstance(got[0], Hello)
    assert [m.request_id for m in got[1:]] == list(range(10, 20))
    assert all(isinstance(m, Result) and m.value["pong"] for m in got[1:])
    writer.close()


async def _raw_exchange(path: str, payload: bytes) -> bytes:
    """Send bytes on a fresh connection; return what the server sent before closing."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # read() until EOF: the server closed us
    writer.close()
    return data


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # announces a 1 GB frame
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # undecodable body
        encode(Request(1, "ping", {})),  # a request before the handshake
        encode(Hello(PROTOCOL_VERSION + 1, None)),  # wrong version
        encode(Hello(PROTOCOL_VERSION, None)) + struct.pack(">I", 2**31),  # oversized frame
    ],
)
async def test_garbage_closes_only_that_connection(server, client, garbage):
    await _raw_exchange(str(server.settings.socket), garbage)
    # The well-behaved client on its own connection is unaffected.
    assert (await client.call("ping"))["pong"]
    rec = await client.call("insert", {"table": "g", "record": {"ok": True}})
    assert (await client.call("get", {"table": "g", "id": rec["id"]}))["ok"] is True


async def test_an_ungreeted_connection_may_send_only_a_small_frame(server, client):
    """A peer that has not authenticated cannot make the store buffer a big frame: its header
    alone closes the connection, with the reason logged and sent to it."""
    from structlog.testing import capture_logs

    announced = HANDSHAKE_FRAME_SIZE + 1  # far below STORE_MAX_FRAME_BYTES (16 MiB)
    with capture_logs() as logs:
        closed = await _raw_exchange(
            str(server.settings.socket), struct.pack(">I", announced) + b"\x00" * 1000
        )
    reason = (
        f"frame of {announced} bytes exceeds the limit of {HANDSHAKE_FRAME_SIZE}"
        " before the handshake"
    )
    assert FrameDecoder().feed(closed) == [Error(0, "PROTOCOL_ERROR", reason, {})]
    (dropped,) = [x for x in logs if x.get("event") == "client_dropped"]
    assert dropped["reason"] == reason
    # Once greeted, a connection takes frames up to the full limit.
    big = "x" * (2 * HANDSHAKE_FRAME_SIZE)
    rec = await client.call("insert", {"table": "big", "record": {"big": big}})
    assert (await client.call("get", {"table": "big", "id": rec["id"]}))["big"] == big


async def test_a_connection_not_greeted_in_time_is_closed(sock_dir):
    """STORE_HANDSHAKE_TIMEOUT: silent and half-sent handshakes are closed with a logged
    reason; a greeted connection is not, however long it stays idle."""
    from structlog.testing import capture_logs

    srv = StoreServer(StoreSettings(socket=sock_dir / "h.sock", handshake_timeout=0.2))
    await srv.start()
    good = StoreClient(f"unix:{srv.settings.socket}")
    try:
        await good.connect()
        path = str(srv.settings.socket)
        hello = encode(Hello(PROTOCOL_VERSION, None))
        with capture_logs() as logs:
            silent, partial = await asyncio.gather(
                _raw_exchange(path, b""), _raw_exchange(path, hello[:-1])
            )
        told = Error(0, "PROTOCOL_ERROR", "no handshake within 0.2 s", {})
        assert FrameDecoder().feed(silent) == FrameDecoder().feed(partial) == [told]
        reasons = [x["reason"] for x in logs if x.get("event") == "client_dropped"]
        assert reasons == ["no handshake within 0.2 s"] * 2
        assert len(srv.connections) == 1
        await asyncio.sleep(0.3)  # the greeted client outlives the timeout
        assert (await good.call("ping"))["pong"]
    finally:
        await good.close()
        await srv.shutdown()


def test_handshake_timeout_is_a_setting(monkeypatch):
    assert StoreSettings().handshake_timeout == 10.0
    monkeypatch.setenv("STORE_HANDSHAKE_TIMEOUT", "2.5")
    assert StoreSettings().handshake_timeout == 2.5
    monkeypatch.setenv("STORE_HANDSHAKE_TIMEOUT", "0")
    with pytest.raises(ValueError, match="handshake_timeout"):
        StoreSettings()


async def test_socket_is_owner_only(server):
    mode = stat.S_IMODE(server.settings.socket.stat().st_mode)
    assert mode == 0o600


async def test_secret_is_required_when_set(sock_dir):
    srv = StoreServer(StoreSettings(socket=sock_dir / "a.sock", secret="right-secret"))
    await srv.start()
    try:
        # A StoreUnavailable to requests, but its own class: no retry mends it (QA).
        with pytest.raises(SecretRefused, match="STORE_SECRET is missing or not the store's"):
            await StoreClient(f"unix:{srv.settings.socket}", secret="wrong").connect()
        with pytest.raises(SecretRefused):
            await StoreClient(f"unix:{srv.settings.socket}").connect()
        good = StoreClient(f"unix:{srv.settings.socket}", secret="right-secret")
        await good.connect()
        assert (await good.call("ping"))["pong"]
        await good.close()
    finally:
        await srv.shutdown()


async def test_memory_limit_refuses_writes_and_serves_reads(server, client):
    rec = await client.call("insert", {"table": "m", "record": {"a": 1}})
    server.memory = MemoryGauge(limit_bytes=1)  # any process is over one byte
    with capture_logs() as logs:
        for n in range(3):
            with pytest.raises(MemoryLimit):
                await client.call("insert", {"table": "m", "record": {"a": n}})
        assert (await client.call("get", {"table": "m", "id": rec["id"]}))["a"] == 1
        server.memory.limit = 1 << 50  # room again
        await client.call("insert", {"table": "m", "record": {"a": 9}})
        await client.call("insert", {"table": "m", "record": {"a": 10}})
    # one line per crossing, not one per refused write
    events = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("memory_")]
    assert events == [("memory_limit_reached", "warning"), ("memory_limit_cleared", "info")]


async def test_over_the_memory_limit_a_batch_of_deletes_and_marks_goes_on(server, client):
    """The API deletes a user and ends their sessions in one batch (delete + kv_set stamp):
    over the limit it is taken, as the two commands alone would be; a batch that adds a
    record is not."""
    rec = await client.call("insert", {"table": "m", "record": {"a": 1}})
    server.memory = MemoryGauge(limit_bytes=1)  # any process is over one byte
    mark = {"op": "kv_set", "key": "auth:user-not-before:x", "stamp": True, "ttl": 60}
    with pytest.raises(MemoryLimit):
        await client.call(
            "batch", {"ops": [{"op": "insert", "table": "m", "record": {"a": 2}}, mark]}
        )
    valued = {"op": "kv_set", "key": "k", "value": "v" * 1000}
    with pytest.raises(MemoryLimit):  # values, not marks: they add data
        await client.call(
            "batch", {"ops": [{"op": "delete", "table": "m", "id": rec["id"]}, valued]}
        )
    await client.call("batch", {"ops": [{"op": "delete", "table": "m", "id": rec["id"]}, mark]})
    with pytest.raises(NotFound):
        await client.call("get", {"table": "m", "id": rec["id"]})
    assert await client.call("kv_get", {"key": "auth:user-not-before:x"}) is not None


async def test_a_second_server_refuses_a_live_socket(server):
    other = StoreServer(StoreSettings(socket=server.settings.socket))
    with pytest.raises(RuntimeError, match=r"already listening on .*, or starting"):
        await other.start()
    # Refused by the socket's lock, which the first keeps (review: the second one's close of
    # its own descriptor dropped this process's lock): another process cannot take it.
    lock = f"{server.settings.socket}.lock"
    probe = (
        "import fcntl, os, sys\n"
        f"fd = os.open({lock!r}, os.O_RDWR)\n"
        "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n"
        "    sys.exit(3)\n"
    )
    taken = subprocess.run([sys.executable, "-c", probe], check=False, timeout=30)
    assert taken.returncode == 3


async def test_stale_socket_file_is_replaced(sock_dir):
    path = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    srv = StoreServer(StoreSettings(socket=path))
    await srv.start()
    c = StoreClient(f"unix:{path}")
    assert (await c.call("ping"))["pong"]
    await c.close()
    await srv.shutdown()
    assert not path.exists()


async def test_client_refuses_to_call_after_close(client):
    await client.close()
    with pytest.raises(StoreUnavailable):
        await client.call("ping")


async def test_unreachable_store_fails_fast(sock_dir):
    c = StoreClient(f"unix:{sock_dir / 'absent.sock'}", read_retry_budget=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable):
        await c.call("get", {"table": "t", "id": "x"})
    with pytest.raises(StoreUnavailable):
        await c.call("insert", {"table": "t", "record": {}})
    assert loop.time() - started < 2.0  # bounded, not a hang (generous for slow machines)


def test_msgpack_reply_frame_is_well_formed():
    data = encode(Result(5, {"a": 1}))
    (length,) = struct.unpack(">I", data[:4])
    assert msgpack.unpackb(data[4 : 4 + length]) == [1, 5, {"a": 1}]


async def test_probe_reports_ready_and_absent(server, sock_dir):
    from storeserver import probe

    loop = asyncio.get_running_loop()
    address = f"unix:{server.settings.socket}"
    # The probe is blocking; run it off this loop, which also serves the store.
    result = await loop.run_in_executor(None, probe.ping, address)
    assert result is not None and result["ready"] is True
    assert await loop.run_in_executor(None, probe.ping, f"unix:{sock_dir / 'none.sock'}") is None


def test_socket_mode_is_read_as_octal(monkeypatch):
    monkeypatch.setenv("STORE_SOCKET_MODE", "0660")
    assert StoreSettings().socket_mode == 0o660
    monkeypatch.setenv("STORE_SOCKET_MODE", "999")
    with pytest.raises(ValueError, match="octal"):
        StoreSettings()


@pytest.mark.parametrize(
    ("given", "level"),
    [("info", "INFO"), ("Warning", "WARNING"), ("critical", "CRITICAL"), ("DEBUG", "DEBUG")],
)
def test_log_level_is_read_in_any_case(monkeypatch, given, level):
    # compose passes the API's LOG_LEVEL (usually lower case) as STORE_LOG_LEVEL.
    monkeypatch.setenv("STORE_LOG_LEVEL", given)
    assert StoreSettings().log_level == level


def test_an_unknown_log_level_is_refused(monkeypatch):
    monkeypatch.setenv("STORE_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="log_level"):
        StoreSettings()


async def test_slow_commands_are_logged_with_the_callers_request_id(server, client):
    from structlog.testing import capture_logs

    from storeserver.client import current_request_id

    server._slow_s = 0.0  # every command counts as slow here
    token = current_request_id.set("req-abc.123")
    try:
        with capture_logs() as logs:
            rec = await client.call("insert", {"table": "slow", "record": {"x": 1}})
    finally:
        current_request_id.reset(token)
    # The engine never saw the extra argument (it rejects unknown ones), and the log names it.
    assert rec["x"] == 1 and "_request_id" not in rec
    slow = [x for x in logs if x.get("event") == "slow_command" and x["command"] == "insert"]
    assert slow and slow[-1]["request_id"] == "req-abc.123"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STORE_MAX_MEMORY", "-1"),  # was read as "no limit"
        ("STORE_SLOW_MS", "-5"),  # logged every command as slow
        ("STORE_MAX_FRAME_BYTES", "100"),  # would refuse the API's own requests
        ("STORE_FSYNC", "sometimes"),
    ],
)
def test_unusable_store_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("STORE_").lower()):
        StoreSettings()


def test_store_fsync_takes_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORE_FSYNC", "ALWAYS")
    assert StoreSettings().fsync == "always"


async def test_over_the_memory_limit_internal_records_may_still_change(server, client):
    """The API's job records (``_jobs``): a running job records its progress and its end, a
    queued one its cancellation; no new one starts, and other tables' records stay put."""
    job = await client.call("insert", {"table": "_jobs", "record": {"state": "queued"}})
    rec = await client.call("insert", {"table": "m", "record": {"a": 1}})
    server.memory = MemoryGauge(limit_bytes=1)  # any process is over one byte
    patched = await client.call(
        "patch", {"table": "_jobs", "id": job["id"], "changes": {"state": "running"}}
    )
    assert patched["state"] == "running"
    where = [["id", "eq", job["id"]], ["state", "in", ["running"]]]
    done = await client.call(
        "update_where", {"table": "_jobs", "where": where, "changes": {"state": "failed"}}
    )
    assert done["matched"] == 1
    with pytest.raises(MemoryLimit):
        await client.call("insert", {"table": "_jobs", "record": {"state": "queued"}})
    with pytest.raises(MemoryLimit):
        await client.call("patch", {"table": "m", "id": rec["id"], "changes": {"a": 2}})
    with pytest.raises(MemoryLimit):
        await client.call("update_where", {"table": "m", "where": None, "changes": {"a": 2}})


async def test_a_request_of_too_many_values_is_refused_alone(server, client: StoreClient) -> None:
    """QA: a record of 2.5 million numbers (a 5 MB JSON body) passed the frame size but not the
    store's count of entries, which closes the connection: every call in flight on it failed."""
    await client.call("create_table", {"table": "t"})
    connections = set(server.connections)
    huge = {"table": "t", "record": {"a": [0] * (MAX_REQUEST_ENTRIES + 1)}}
    with pytest.raises(LimitExceeded) as refused:
        await client.call("insert", huge)
    assert refused.value.details == {"max_entries": MAX_REQUEST_ENTRIES}
    await client.call("kv_set", {"key": "k", "value": "v"})
    assert await client.call("kv_get", {"key": "k"}) == "v"
    assert server.connections == connections  # the same one: it was not closed
    assert (await client.call("count", {"table": "t"})) == 0
