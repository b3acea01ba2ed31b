"""``storeserver.client.StoreClient`` without a real store: while it connects, and against
fake stores that answer another protocol version, never answer, or never read."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from storeserver import clientconnection
from storeserver.client import StoreClient, parse_address
from storeserver.clientconnection import ClientConnection
from storeserver.errors import (
    OutcomeUnknown,
    RecordTooLarge,
    SetupRefused,
    StoreBusy,
    StoreTimeout,
    StoreUnavailable,
)
from storeserver.protocol import PROTOCOL_VERSION, Hello, encode, encode_request
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings


async def test_a_caller_cancelled_mid_connect_does_not_abandon_the_attempt(
    tmp_path, monkeypatch
) -> None:
    """The caller that started the connection is cancelled (an ``asyncio.timeout`` around its
    call, as /metrics has): the attempt goes on, a task of its own, and the callers waiting on
    it get its outcome; no second attempt starts meanwhile."""
    opening, release = asyncio.Event(), asyncio.Event()
    attempts: list[int] = []

    async def slow_open(self: StoreClient) -> ClientConnection:
        attempts.append(1)
        opening.set()
        await release.wait()
        raise StoreUnavailable("cannot reach the store: refused")

    monkeypatch.setattr(StoreClient, "_open", slow_open)
    client = StoreClient(str(tmp_path / "store.sock"), timeout=1.0)
    first = asyncio.create_task(client.call("insert", {"table": "t", "record": {}}))
    await opening.wait()
    second = asyncio.create_task(client.call("insert", {"table": "t", "record": {}}))
    await asyncio.sleep(0)  # the second now waits on the same attempt
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0.01)
    assert not second.done()
    release.set()
    with pytest.raises(StoreUnavailable, match="refused"):
        await asyncio.wait_for(second, 2.0)
    assert attempts == [1]
    await client.close()


# -- against a fake store --------------------------------------------------------------------


class FakeStore:
    """A Unix server that reads a client's HELLO, answers ``hello`` (nothing if None), and
    then stops reading (past its stream's buffer) until it is closed."""

    def __init__(self, path: str, hello: bytes | None) -> None:
        self.path, self.hello = path, hello
        self.done = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        await reader.readexactly(length)
        if self.hello is not None:
            writer.write(self.hello)
        await self.done.wait()
        writer.close()

    async def __aenter__(self) -> FakeStore:
        self.server = await asyncio.start_unix_server(self._handle, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.done.set()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_store_of_another_protocol_version_is_refused(tmp_path) -> None:
    """QA: a HELLO naming protocol version 99 was taken, and calls went on over it."""
    async with FakeStore(str(tmp_path / "v99.sock"), encode(Hello(99, {}))) as store:
        client = StoreClient(store.path, timeout=1.0)
        with pytest.raises(StoreUnavailable, match="protocol version 99") as refused:
            await client.call("insert", {"table": "t", "record": {}})
        assert refused.value.details == {"version": 99}
        assert not client.connected
        await client.close()


async def test_a_connect_timeout_says_so(tmp_path) -> None:
    """QA: "cannot reach the store at X: " (a TimeoutError has no message)."""
    async with FakeStore(str(tmp_path / "mute.sock"), None) as store:
        client = StoreClient(store.path, connect_timeout=0.1)
        with pytest.raises(StoreUnavailable) as refused:
            await client.connect()
        assert (
            refused.value.message
            == f"cannot reach the store at {store.path}: timed out after 0.1 s"
        )
        await client.close()


async def test_calls_to_a_store_that_does_not_read_fail_fast_past_the_unsent_bound(
    tmp_path, monkeypatch
) -> None:
    """QA: 300 calls of 1 MB to a store that stopped reading all timed out, rightly, but the
    transport held 299 MB. Past ``MAX_UNSENT`` bytes waiting, calls fail at once, unsent."""
    monkeypatch.setattr(clientconnection, "MAX_UNSENT", 1 << 20)
    async with FakeStore(str(tmp_path / "deaf.sock"), encode(Hello(PROTOCOL_VERSION, {}))) as store:
        client = StoreClient(store.path, timeout=0.5)
        await client.connect()
        value = "v" * (256 * 1024)
        calls = [client.call("kv_set", {"key": f"k{i}", "value": value}) for i in range(40)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        busy = [r for r in results if isinstance(r, StoreBusy)]
        timed_out = [r for r in results if isinstance(r, StoreTimeout)]
        assert len(busy) + len(timed_out) == 40
        # All 40 were queued in one loop turn: those that found at most the bound waiting
        # went (and timed out), the rest were refused.
        frame = len(encode_request(1, "kv_set", {"key": "k0", "value": value}))
        went = (1 << 20) // frame + 1
        assert results[:went] == timed_out and results[went:] == busy
        assert client._conn is not None
        assert client._conn.unsent <= (1 << 20) + 300 * 1024
        assert busy[0].details["unsent_bytes"] > 1 << 20
        await client.close()


class HangUpStore(FakeStore):
    """Greets, reads one request frame, and hangs up without answering it (a store that
    crashed with the request in hand)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # the HELLO, then one request
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            await reader.readexactly(length)
            if self.hello is not None:
                writer.write(self.hello)
                self.hello = None
        writer.close()


@pytest.mark.parametrize("command", ["insert", "kv_set", "rate_hit", "batch"])
async def test_a_write_whose_connection_is_lost_after_it_was_sent_has_an_unknown_outcome(
    tmp_path, command: str
) -> None:
    """QA: 4 of 450 writes cut off by a store crash were in its log, and the API had said
    "retry shortly". A write lost in flight is ``OutcomeUnknown`` (still a kind of
    ``StoreUnavailable``), saying so in its details."""
    hello = encode(Hello(PROTOCOL_VERSION, {}))
    async with HangUpStore(str(tmp_path / "crash.sock"), hello) as store:
        client = StoreClient(store.path, timeout=2.0)
        with pytest.raises(OutcomeUnknown) as lost:
            await client.call(command, {"table": "t", "record": {}})
        assert lost.value.details == {"outcome": "unknown"}
        assert f"after {command!r} was sent" in lost.value.message
        assert isinstance(lost.value, StoreUnavailable)
        await client.close()


async def test_a_read_whose_connection_is_lost_is_plainly_unavailable(tmp_path) -> None:
    """A read changes nothing: retried within its budget, then ``StoreUnavailable``, not an
    unknown outcome."""
    hello = encode(Hello(PROTOCOL_VERSION, {}))
    async with HangUpStore(str(tmp_path / "crash.sock"), hello) as store:
        client = StoreClient(store.path, timeout=2.0, read_retry_budget=0.2)
        with pytest.raises(StoreUnavailable) as lost:
            await client.call("get", {"table": "t", "id": "x"})
        assert not isinstance(lost.value, OutcomeUnknown)
        assert lost.value.details == {}
        await client.close()


async def test_a_timed_out_write_says_its_outcome_is_unknown_and_a_read_does_not(
    tmp_path,
) -> None:
    async with FakeStore(str(tmp_path / "mute.sock"), encode(Hello(PROTOCOL_VERSION, {}))) as store:
        client = StoreClient(store.path, timeout=0.1)
        with pytest.raises(StoreTimeout) as write:
            await client.call("insert", {"table": "t", "record": {}})
        assert write.value.details == {"outcome": "unknown"}
        with pytest.raises(StoreTimeout) as read:
            await client.call("get", {"table": "t", "id": "x"})
        assert read.value.details == {}
        await client.close()


async def test_a_set_up_that_fails_on_a_reply_it_cannot_use_is_an_unavailable_store(
    tmp_path,
) -> None:
    """QA: a listener answering nil to everything made ``on_connect`` raise TypeError: the
    API answered 500, with no backoff, and leaked the connection of every attempt."""
    attempts: list[int] = []

    async def on_connect(call) -> None:  # type: ignore[no-untyped-def]
        attempts.append(1)
        raise TypeError("'NoneType' object is not subscriptable")

    async with FakeStore(str(tmp_path / "nil.sock"), encode(Hello(PROTOCOL_VERSION, {}))) as store:
        client = StoreClient(store.path, timeout=1.0, on_connect=on_connect)
        with pytest.raises(StoreUnavailable, match="set-up failed: TypeError"):
            await client.call("insert", {"table": "t", "record": {}})
        assert client._conn is None or client._conn.closed  # not kept
        with pytest.raises(StoreUnavailable, match="reconnecting"):  # the backoff holds
            await client.call("insert", {"table": "t", "record": {}})
        assert len(attempts) == 1
        await client.close()


class CountingStore(FakeStore):
    """A ``FakeStore`` that counts the connections it was given and still holds open."""

    def __init__(self, path: str, hello: bytes | None) -> None:
        super().__init__(path, hello)
        self.open = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            await reader.readexactly(length)
            writer.write(self.hello or b"")
            await reader.read()  # until the client closes or aborts
        finally:
            self.open -= 1
            writer.close()


def gated_set_up() -> tuple[asyncio.Event, Any]:
    """An ``on_connect`` that waits until the event is set (a slow set-up), and the event."""
    set_up = asyncio.Event()

    async def on_connect(call: Any) -> None:
        await set_up.wait()

    return set_up, on_connect


async def until_closed(store: CountingStore) -> int:
    """The store's open connections once they are all closed (or after ~1 s)."""
    for _ in range(100):
        if store.open == 0:
            break
        await asyncio.sleep(0.01)
    return store.open


async def test_callers_timing_out_during_a_slow_set_up_leave_one_connection(tmp_path) -> None:
    """QA: ``on_connect`` is slow (the admin's bcrypt check at a production cost); each
    /metrics scrape gave up after 1 s, abandoning its attempt with the connection open in the
    store: one more per scrape, and the worker never finished reconnecting."""
    set_up, on_connect = gated_set_up()
    hello = encode(Hello(PROTOCOL_VERSION, {}))
    async with CountingStore(str(tmp_path / "slow.sock"), hello) as store:
        client = StoreClient(store.path, timeout=1.0, on_connect=on_connect)
        for _ in range(5):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await client.call("ping")
        assert store.open == 1
        set_up.set()
        await asyncio.sleep(0.01)
        assert client.connected  # the attempt finished: the next call uses it
        await client.close()
        assert await until_closed(store) == 0


async def test_a_set_up_write_lost_in_flight_fails_the_callers_as_a_plain_outage(tmp_path) -> None:
    """QA: the store died under ``on_connect``'s own create_table: that write's unknown outcome
    reached the caller, whose registration was never sent, as 503 OUTCOME_UNKNOWN."""

    async def on_connect(call) -> None:  # type: ignore[no-untyped-def]
        await call("create_table", {"table": "users"})

    hello = encode(Hello(PROTOCOL_VERSION, {}))
    async with HangUpStore(str(tmp_path / "crash.sock"), hello) as store:
        client = StoreClient(store.path, timeout=2.0, on_connect=on_connect)
        with pytest.raises(StoreUnavailable, match="set-up failed") as lost:
            await client.call("insert", {"table": "users", "record": {}})
        assert not isinstance(lost.value, OutcomeUnknown)
        await client.close()


@pytest.mark.parametrize("error", [TypeError("nil"), RuntimeError("unknown hash scheme")])
async def test_any_set_up_failure_but_a_refusal_is_an_outage_with_backoff(
    tmp_path, error: Exception
) -> None:
    """QA: an admin hash of a scheme the set-up could not identify raised an exception the
    client handed on: every request a 500 and a new connection set-up, no backoff."""
    attempts: list[int] = []

    async def on_connect(call) -> None:  # type: ignore[no-untyped-def]
        attempts.append(1)
        raise error

    hello = encode(Hello(PROTOCOL_VERSION, {}))
    async with FakeStore(str(tmp_path / "s.sock"), hello) as store:
        client = StoreClient(store.path, timeout=1.0, on_connect=on_connect)
        insert = {"table": "t", "record": {}}  # a write: not retried within the call
        with pytest.raises(StoreUnavailable, match=type(error).__name__):
            await client.call("insert", insert)
        with pytest.raises(StoreUnavailable, match="reconnecting"):
            await client.call("insert", insert)
        assert attempts == [1]
        await client.close()


async def test_a_set_up_refusal_reaches_the_caller_as_it_is(tmp_path) -> None:
    class Refused(SetupRefused):
        pass

    async def on_connect(call) -> None:  # type: ignore[no-untyped-def]
        raise Refused("the store's table limit is below the API's tables")

    hello = encode(Hello(PROTOCOL_VERSION, {}))
    async with CountingStore(str(tmp_path / "s.sock"), hello) as store:
        client = StoreClient(store.path, timeout=1.0, on_connect=on_connect)
        with pytest.raises(Refused):
            await client.call("ping")
        await client.close()
        assert await until_closed(store) == 0  # its connection closed


async def test_closing_during_an_attempt_tells_its_callers_the_client_is_closed(
    tmp_path,
) -> None:
    """QA: ``close`` cancels the attempt, and each caller waiting on it got a CancelledError
    it had not asked for."""
    _, on_connect = gated_set_up()
    hello = encode(Hello(PROTOCOL_VERSION, {}))
    async with CountingStore(str(tmp_path / "slow.sock"), hello) as store:
        client = StoreClient(store.path, timeout=1.0, on_connect=on_connect)
        callers = [asyncio.create_task(client.call("ping")) for _ in range(3)]
        await asyncio.sleep(0.05)
        await client.close()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert all("closed" in r.message for r in results)  # type: ignore[union-attr]


async def test_a_request_past_the_frame_the_store_announced_is_refused_before_sending(
    sock_dir,
) -> None:
    """QA: with STORE_MAX_FRAME_BYTES under the client's 16 MiB, an oversized request was
    sent; the store closed the connection, and every call in flight on it failed
    (OUTCOME_UNKNOWN) with it. The client sends no frame past what the store's HELLO says."""
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock", max_frame_bytes=1 << 20))
    await server.start()
    client = StoreClient(f"unix:{server.settings.socket}", timeout=5.0)
    try:
        await client.connect()
        big = client.call("insert", {"table": "t", "record": {"blob": "x" * (2 << 20)}})
        small = [client.call("insert", {"table": "t", "record": {"n": n}}) for n in range(5)]
        outcomes = await asyncio.gather(big, *small, return_exceptions=True)
        assert isinstance(outcomes[0], RecordTooLarge)
        assert outcomes[0].details["max_frame_bytes"] == 1 << 20
        assert [o["n"] for o in outcomes[1:]] == list(range(5))  # type: ignore[index]
        assert await client.call("count", {"table": "t"}) == 5
    finally:
        await client.close()
        await server.shutdown()


async def test_a_request_larger_than_a_frame_is_too_large_not_bad(server) -> None:
    """The API lets a body up to MAX_BODY_BYTES (at most 1 GiB) in; one whose request is past
    the frame the client sends is 413 RECORD_TOO_LARGE there, not 400 BAD_REQUEST."""
    client = StoreClient(f"unix:{server.settings.socket}", timeout=2.0, max_frame_size=1 << 20)
    await client.connect()
    try:
        with pytest.raises(RecordTooLarge) as refused:
            await client.call("insert", {"table": "t", "record": {"blob": "x" * (1 << 20)}})
        assert refused.value.details["max_frame_bytes"] == 1 << 20
        assert await client.call("insert", {"table": "t", "record": {"blob": "x"}})  # still fine
    finally:
        await client.close()


async def test_a_connection_lost_right_after_its_handshake_fails_the_call_at_once(
    sock_dir,
) -> None:
    """A store that answers the HELLO and closes: the caller waiting for that connection got
    it already closed, and its frame was dropped: a write waited out its timeout as
    OUTCOME_UNKNOWN (QA). Nothing was sent, so it is STORE_UNAVAILABLE at once."""
    path = str(sock_dir / "fake.sock")

    async def hello_then_close(reader: Any, writer: Any) -> None:
        await reader.readexactly(4)
        writer.write(encode(Hello(PROTOCOL_VERSION, {"server": "fake"})))
        await writer.drain()
        writer.close()

    fake = await asyncio.start_unix_server(hello_then_close, path)
    client = StoreClient(f"unix:{path}", timeout=3.0)
    try:
        with pytest.raises(StoreUnavailable) as failed:  # not StoreTimeout, outcome unknown
            await client.call("insert", {"table": "t", "record": {"a": 1}})
        assert not isinstance(failed.value, OutcomeUnknown)
    finally:
        await client.close()
        fake.close()


class _RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


async def test_a_write_lost_before_its_frame_was_written_is_plainly_unavailable() -> None:
    """Frames wait in the outbox until the end of the loop turn. A connection lost in the turn
    a write was queued never carried it: the store cannot have applied it, so it is a plain
    ``StoreUnavailable`` (503 with Retry-After), not the unknown outcome of a write it read."""
    conn = ClientConnection(1 << 20)
    transport = _RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    sent = conn.send(1, b"first", "insert", 5.0)
    await asyncio.sleep(0)  # the turn ends: its frames are written
    queued = conn.send(2, b"second", "insert", 5.0)
    conn.connection_lost(None)
    await asyncio.sleep(0)
    assert transport.written == [b"first"]
    with pytest.raises(OutcomeUnknown):
        sent.result()
    with pytest.raises(StoreUnavailable) as lost:
        queued.result()
    assert not isinstance(lost.value, OutcomeUnknown)
    assert lost.value.details == {}


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("unix:/run/s.sock", ("unix", "/run/s.sock")),
        ("/run/s.sock", ("unix", "/run/s.sock")),
        ("run/store.sock", ("unix", "run/store.sock")),
        ("tcp://db:7000", ("tcp", ("db", 7000))),
        ("TCP://db:7000", ("tcp", ("db", 7000))),
        ("db:7000", ("tcp", ("db", 7000))),
        ("tcp://[::1]:7000", ("tcp", ("::1", 7000))),
    ],
)
def test_store_addresses(address: str, parsed: tuple[str, object]) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["http://h:80", "redis://h:6379", "db:70000", "db:", "tcp://h"])
def test_what_names_no_store_is_refused(address: str) -> None:
    """QA: http:// and redis:// URLs were taken as relative socket paths (found only after
    STORE_WAIT_SECONDS, as a store not ready); a port past 65535 raised OverflowError."""
    with pytest.raises(ValueError, match="not a store address"):
        parse_address(address)
